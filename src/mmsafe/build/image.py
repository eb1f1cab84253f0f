"""Image agent: renders every item's ``image_spec`` into an image in the work dir.

Kinds: ``keyphrase`` / ``figstep`` / ``text`` (typography, Pillow, offline), ``blank``,
``unrelated`` (seeded abstract picture), ``t2i`` (text-to-image through an
OpenAI-images-compatible ``POST {base_url}/images/generations`` with ``b64_json``, or local
diffusers — the ``hf`` extra, imported lazily) and ``composite`` (t2i picture above the key
phrase, MM-SafetyBench SD+TYPO).

Critic loop (SafeBench): when ``models.critic`` is set, a vision model sees each t2i image
with the question and answers ``{"evokes": bool, "suggestion": str}``; while it says no, the
suggestion is folded into the prompt and the image regenerated, at most
``image.critic_rounds`` generations in all. Each image gets provenance: kind, generator,
every round's prompt, sha256 and critic verdict. Without a t2i endpoint a t2i spec falls
back to typography of its prompt (recorded as ``fallback``). With ``cache: true`` every
text-to-image result is remembered in ``<work>/t2i_cache/`` by (endpoint, size, prompt),
so re-running a crashed or changed image stage does not pay for the same picture twice.
"""

from __future__ import annotations

import asyncio
import base64
import io
import os
import random
from typing import Any

import aiohttp
from PIL import Image

from mmsafe.attacks import typography, visual
from mmsafe.models.openai_compat import parse_retry_after, remember_asset_b64

from .common import IMAGE_EXT, AgentContext, BuildError, extract_json, stable_fraction, user
from .config import T2IConfig
from .prompts import render


class T2IError(RuntimeError):
    """A text-to-image request that failed (after the client's retries) or returned no usable image."""

    pass


# Image payloads up to this size are decoded, checked and stored on the event loop: for a
# small image that is ~0.2 ms, less than handing it to a worker thread and back (in
# bench/bench_build.py the two hops per image cost more CPU than the work and made the
# worker threads fight the loop for the GIL). Larger ones (a 1024x1024 PNG is ~1-2 MB,
# several ms to verify and hash) go to a thread so the loop keeps serving.
INLINE_MAX_BYTES = 64 * 1024


async def _off_loop_if_large(nbytes: int, fn: Any, *args: Any) -> Any:
    if nbytes <= INLINE_MAX_BYTES:
        return fn(*args)
    return await asyncio.to_thread(fn, *args)


class T2IClient:
    """OpenAI-images-compatible text-to-image (or local diffusers), with retries and a cap
    on concurrent requests; counts calls and cost into the agent's ledger extras."""

    def __init__(self, cfg: T2IConfig, ctx: AgentContext):
        self.cfg = cfg
        self.ctx = ctx
        self.sem = asyncio.Semaphore(max(1, cfg.max_connections))
        self._session: aiohttp.ClientSession | None = None
        self._pipe: Any = None
        self._lock = asyncio.Lock()

    @property
    def name(self) -> str:
        """The backend as ``diffusers/MODEL`` or ``openai-images/MODEL@URL``."""
        if self.cfg.kind == "diffusers":
            return f"diffusers/{self.cfg.diffusers_model}"
        return f"openai-images/{self.cfg.model}@{self.cfg.base_url}"

    async def close(self) -> None:
        """Close the HTTP session."""
        if self._session is not None:
            await self._session.close()
            self._session = None

    def _cache_file(self, prompt: str) -> Any:
        import hashlib
        key = hashlib.sha256("\x1f".join([self.cfg.kind, str(self.cfg.base_url), self.cfg.model,
                                          str(self.cfg.diffusers_model), self.cfg.size, str(self.cfg.steps),
                                          prompt]).encode()).hexdigest()
        return self.ctx.wd.root / "t2i_cache" / f"{key}.ref"

    async def generate(self, prompt: str) -> tuple[bytes, str]:
        """One image for ``prompt``, stored in the work dir: (its bytes, its work-dir path). An
        image already made for the same endpoint, size and prompt (an earlier or crashed run
        of this work dir) is reused, not paid for twice."""
        wd = self.ctx.wd
        cf = self._cache_file(prompt) if self.ctx.cfg.cache else None
        if cf is not None:
            def cached() -> tuple[bytes, str] | None:
                if cf.is_file():
                    rel = cf.read_text().strip()
                    if rel and (wd.root / rel).is_file():
                        return (wd.root / rel).read_bytes(), rel
                return None
            hit = await asyncio.to_thread(cached)
            if hit is not None:
                self.ctx.extra["image_cached"] = self.ctx.extra.get("image_cached", 0) + 1
                return hit
        data, ext = await self._generate(prompt)

        def store() -> str:  # file I/O in a thread: creating a file can take ~1 ms
            rel = wd.put_bytes(data, ext)
            if cf is not None:
                cf.parent.mkdir(exist_ok=True)
                tmp = cf.with_name(cf.name + f".{id(data)}.tmp")
                tmp.write_text(rel)
                tmp.replace(cf)
            return rel
        return data, await asyncio.to_thread(store)

    async def _generate(self, prompt: str) -> tuple[bytes, str]:
        if self.cfg.kind == "diffusers":
            return await self._diffusers(prompt)
        if not self.cfg.base_url:
            raise BuildError("image.t2i.base_url is required for kind openai")
        if self._session is None:
            self._session = aiohttp.ClientSession()
        headers = {"Content-Type": "application/json"}
        key = os.environ.get(self.cfg.api_key_env or "OPENAI_API_KEY")
        if key:
            headers["Authorization"] = f"Bearer {key}"
        body = {"model": self.cfg.model, "prompt": prompt, "n": 1, "size": self.cfg.size,
                "response_format": "b64_json"}
        url = self.cfg.base_url.rstrip("/") + "/images/generations"
        last = "no attempt"
        for attempt in range(self.cfg.max_retries + 1):
            async with self.sem:
                self.ctx.extra["image_calls"] += 1
                try:
                    async with self._session.post(url, json=body, headers=headers,
                                                  timeout=aiohttp.ClientTimeout(total=self.cfg.timeout_s)) as r:
                        raw = await r.read()
                        status = r.status
                        ra = parse_retry_after(r.headers.get("Retry-After"))
                except (TimeoutError, aiohttp.ClientError) as e:
                    status, raw, ra, last = 0, b"", None, f"connection error: {e}"
            if status == 200:
                try:
                    img = await _off_loop_if_large(len(raw), _decode_image, raw)  # PIL + base64
                except Exception as e:
                    raise T2IError(f"image endpoint returned no usable b64_json image ({e})") from None
                self.ctx.extra["image_cost_usd"] += self.cfg.price_per_image
                return img
            if status:
                last = f"HTTP {status}: {raw[:200]!r}"
            if status and status not in (408, 409, 429) and status < 500:
                break
            await asyncio.sleep(ra if ra is not None else min(8.0, 0.25 * 2 ** attempt) * random.uniform(0.5, 1))
        self.ctx.extra["image_errors"] = self.ctx.extra.get("image_errors", 0) + 1
        raise T2IError(last)

    async def _diffusers(self, prompt: str) -> tuple[bytes, str]:
        async with self._lock:
            if self._pipe is None:
                try:
                    import torch  # noqa: F401
                    from diffusers import AutoPipelineForText2Image
                except ImportError:
                    raise BuildError("image.t2i.kind diffusers needs: pip install diffusers torch") from None
                self._pipe = await asyncio.to_thread(AutoPipelineForText2Image.from_pretrained,
                                                     self.cfg.diffusers_model, local_files_only=True)
            w, h = (int(x) for x in self.cfg.size.split("x"))
            self.ctx.extra["image_calls"] += 1
            out = await asyncio.to_thread(lambda: self._pipe(prompt, width=w, height=h,
                                                             num_inference_steps=self.cfg.steps).images[0])
        buf = io.BytesIO()
        out.save(buf, format="PNG")
        return buf.getvalue(), "png"


def _decode_image(raw: bytes) -> tuple[bytes, str]:
    """The image bytes of an OpenAI-images ``b64_json`` reply, checked to be an image, and
    the file extension of its format (the endpoint's format is kept: PNG, JPEG, WebP ...)."""
    import orjson
    img = base64.b64decode(orjson.loads(raw)["data"][0]["b64_json"])
    with Image.open(io.BytesIO(img)) as im:
        ext = IMAGE_EXT.get(im.format or "", "png")
        im.verify()
    return img, ext


def parse_critic(text: str | None) -> tuple[bool, str]:
    """``(evokes, suggestion)`` from the critic's JSON reply; a ValueError when it is not that."""
    d = extract_json(text)
    if not isinstance(d, dict) or not isinstance(d.get("evokes"), bool):
        raise ValueError("expected {\"evokes\": true|false, ...}")
    return d["evokes"], str(d.get("suggestion") or "").strip()


async def run_image(ctx: AgentContext, items: list[dict[str, Any]]) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """The image stage: an image for each item that asks for one, and a report.

    Text-to-image (with the critic's rounds) when configured, else rendered here: typography,
    FigStep, key phrase, blank or unrelated images. A failed item keeps its ``image_error``.
    """
    cfg = ctx.cfg.image
    wd = ctx.wd
    t2i = T2IClient(cfg.t2i, ctx) if cfg.t2i is not None else None
    critic = await ctx.client("critic") if ctx.has("critic") else None
    report: dict[str, Any] = {"rendered": 0, "by_kind": {}, "critic_rounds": {}, "failed": 0, "fallback": 0,
                              "critic_unparsable": 0, "critic_accepted": 0, "critic_gave_up": 0}

    async def t2i_with_critic(it: dict[str, Any], prompt: str) -> tuple[bytes, str, dict[str, Any]]:
        """The accepted (or last) image: its bytes, its work-dir path and provenance."""
        assert t2i is not None
        rounds: list[dict[str, Any]] = []
        data = b""
        rel = ""
        for r in range(cfg.critic_rounds):
            data, rel = await t2i.generate(prompt)
            rec: dict[str, Any] = {"round": r + 1, "prompt": prompt, "sha256": rel.split("/")[1].split(".")[0]}
            rounds.append(rec)
            if critic is None:
                break
            # the critic gets this image next: its base64 from the bytes in hand, not re-read from disk
            remember_asset_b64(wd.root, rel, rec["sha256"], data)
            q = render("critic", question=it["question"].replace('"', "'"), prompt=prompt.replace('"', "'"))
            res = await critic.chat(user(q, [wd.part(rel)]), root=wd.root, params={"temperature": 0})
            try:
                if not res.ok:
                    raise ValueError(res.error or "no reply")
                evokes, suggestion = parse_critic(res.text)
            except ValueError as e:
                rec["critic"] = {"error": str(e), "raw": (res.text or "")[:200]}
                report["critic_unparsable"] += 1
                break
            rec["critic"] = {"evokes": evokes, "suggestion": suggestion}
            if evokes:
                report["critic_accepted"] += 1
                break
            if r == cfg.critic_rounds - 1:
                report["critic_gave_up"] += 1
                break
            prompt = f"{prompt}. {suggestion}" if suggestion else prompt
        n = str(len(rounds))
        report["critic_rounds"][n] = report["critic_rounds"].get(n, 0) + 1
        return data, rel, {"generator": t2i.name, "critic": critic.name if critic else None, "rounds": rounds}

    def render_local(it: dict[str, Any], spec: dict[str, Any]) -> tuple[str, dict[str, Any]]:
        """Offline kinds (and t2i kinds without an endpoint): Pillow work, run in a thread."""
        kind = spec.get("kind")
        extra: dict[str, Any] = {}
        if kind in ("t2i", "composite"):
            extra["fallback"] = "typography (no image.t2i configured)"
            if kind == "composite":
                img = typography.keyphrase_image(spec["text"])
            else:
                img = typography.text_image(spec["prompt"], size=cfg.typography_size, valign="center", align="center")
        elif kind == "keyphrase":
            img = typography.keyphrase_image(spec["text"])
        elif kind == "figstep":
            img = typography.figstep_image(spec["text"], size=cfg.typography_size)
        elif kind == "text":
            img = typography.text_image(spec["text"], size=cfg.typography_size, valign="center")
        elif kind == "blank":
            img = visual.blank_image(512)
        elif kind == "unrelated":
            seed = int(stable_fraction("unrelated:" + it["id"], ctx.cfg.seed) * 2**31)
            img = visual.unrelated_image(seed)
            extra["seed"] = seed
        else:
            raise ValueError(f"unknown image kind {kind!r}")
        return wd.put_image(img), extra

    async def one(it: dict[str, Any]) -> dict[str, Any]:
        spec = it.get("image_spec")
        if not spec or it.get("images"):
            return it
        kind = spec.get("kind")
        prov: dict[str, Any] = {"kind": kind}
        try:
            if kind not in ("t2i", "composite") or t2i is None:
                img_rel, extra = await asyncio.to_thread(render_local, it, spec)
                prov.update(extra)
                if extra.get("fallback"):
                    report["fallback"] += 1
            else:
                data, img_rel, p = await t2i_with_critic(it, spec["prompt"])
                prov.update(p)
                if kind == "composite":
                    def comp() -> str:
                        top = Image.open(io.BytesIO(data)).convert("RGB")
                        return wd.put_image(typography.composite_image(top, spec["text"]))
                    img_rel = await asyncio.to_thread(comp)
        except (T2IError, typography.TypographyError, ValueError, KeyError) as e:
            report["failed"] += 1
            return {**it, "image_error": f"{type(e).__name__}: {e}"}
        rel = img_rel
        prov["sha256"] = rel.split("/")[1].split(".")[0]
        report["rendered"] += 1
        report["by_kind"][kind] = report["by_kind"].get(kind, 0) + 1
        return {**it, "images": [rel], "image_provenance": prov}

    try:
        out = await ctx.gather(one(it) for it in items)
    finally:
        if t2i is not None:
            await t2i.close()
    kept = [it for it in out if "image_error" not in it]
    report["dropped_failed"] = len(out) - len(kept)
    report["items"] = len(kept)
    return kept, report
