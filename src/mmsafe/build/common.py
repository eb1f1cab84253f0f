"""What the build agents share: the work directory (items + content-addressed assets),
an agent context (model clients with a ledger of their own, wall time), JSON parsing of
LLM replies, and turning a work item into a :class:`~mmsafe.types.Sample`.

A work *item* is a plain dict (one JSON line)::

    id, scenario, category, question      the underlying harmful request
    text                                  the user-facing prompt text
    images: [assets/<sha>.png], audio: [assets/<sha>.wav]   relative to the work dir
    image_spec: {kind: t2i|keyphrase|figstep|composite|text|blank|unrelated, text|prompt}
    pair_type: plain|image_harm|text_harm|split|conflict
    method: None or the augmentation method; parent: id of the item it derives from
    source: generated|pool:<name>; scores: {feasibility, harmfulness, applicability, weighted, reasons}
    provenance: {...}
"""

from __future__ import annotations

import asyncio
import hashlib
import inspect
import io
import os
import re
import threading
import time
from collections.abc import Awaitable, Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

import orjson
from PIL import Image

from mmsafe.models import CostLedger, ModelClient, ResponseCache, build_provider, resolve_endpoint
from mmsafe.types import AudioPart, ImagePart, InputError, Message, Sample, TextPart

from .config import BuildConfig, ModelRef

# which ModelClient role (ledger/cost role, models-file role) each build model key uses
MODEL_ROLES = {"generator": "generator", "paraphraser": "generator", "translator": "generator",
               "scorer": "judge", "critic": "judge", "classifier": "judge", "merger": "generator",
               "reference": "target"}


class BuildError(InputError):
    """A build cannot go on (missing model, missing input stage, ...)."""


# --------------------------------------------------------------------------- work dir


IMAGE_EXT = {"PNG": "png", "JPEG": "jpg", "WEBP": "webp", "GIF": "gif", "BMP": "bmp"}  # PIL format -> file ext


class WorkDir:
    """``<work>/assets/<sha256>.<ext>`` shared by all stages; ``<work>/<stage>/items.jsonl``,
    ``report.json`` and ``done.json`` per stage; ``<work>/cache.sqlite`` the LLM reply cache."""

    def __init__(self, root: Path):
        self.root = Path(root)
        (self.root / "assets").mkdir(parents=True, exist_ok=True)

    def stage_dir(self, stage: str) -> Path:
        """A stage's folder (created when missing)."""
        d = self.root / stage
        d.mkdir(parents=True, exist_ok=True)
        return d

    def items_path(self, stage: str) -> Path:
        """Where a stage's output items are written (``<stage>/items.jsonl``)."""
        return self.root / stage / "items.jsonl"

    def has_items(self, stage: str) -> bool:
        """True when the stage finished (``done.json``) and its items are there."""
        return (self.root / stage / "done.json").is_file() and self.items_path(stage).is_file()

    def iter_items(self, stage: str) -> Iterator[dict[str, Any]]:
        """Stream a stage's output items; a BuildError when that stage has not run."""
        p = self.items_path(stage)
        if not p.is_file():
            raise BuildError(f"{p}: missing; run the '{stage}' stage first")
        with open(p, "rb") as f:
            for line in f:
                if line.strip():
                    yield orjson.loads(line)

    def read_items(self, stage: str) -> list[dict[str, Any]]:
        """A stage's output items as a list."""
        return list(self.iter_items(stage))

    def write_items(self, stage: str, items: Iterable[dict[str, Any]]) -> tuple[int, str]:
        """Write atomically; returns (count, sha256 of the file)."""
        p = self.items_path(stage)
        p.parent.mkdir(parents=True, exist_ok=True)
        tmp = p.with_suffix(".tmp")
        h = hashlib.sha256()
        n = 0
        with open(tmp, "wb") as f:
            for it in items:
                line = orjson.dumps(it, option=orjson.OPT_SORT_KEYS) + b"\n"
                h.update(line)
                f.write(line)
                n += 1
        tmp.replace(p)
        return n, h.hexdigest()

    def put_bytes(self, data: bytes, ext: str) -> str:
        """Store bytes content-addressed under ``assets/`` (atomic; written once); returns the relative path."""
        sha = hashlib.sha256(data).hexdigest()
        rel = f"assets/{sha}.{ext}"
        p = self.root / rel
        if not p.exists():
            # unique temp name: stages write from worker threads, and two items can make the same bytes
            tmp = p.with_name(f"{p.name}.{os.getpid()}.{threading.get_ident()}.tmp")
            tmp.write_bytes(data)
            tmp.replace(p)
        return rel

    def put_image(self, img: Image.Image | bytes) -> str:
        """Store an image (a PIL image as PNG; bytes in their own format); returns the relative path."""
        if isinstance(img, Image.Image):
            buf = io.BytesIO()
            img.convert("RGB").save(buf, format="PNG", compress_level=1)
            return self.put_bytes(buf.getvalue(), "png")
        with Image.open(io.BytesIO(img)) as im:  # keep the endpoint's format (PNG, JPEG, WebP ...)
            ext = IMAGE_EXT.get(im.format or "", "png")
        return self.put_bytes(img, ext)

    def open_image(self, rel: str) -> Image.Image:
        """A stored image, loaded as RGB."""
        with Image.open(self.root / rel) as im:
            im.load()
            return im.convert("RGB")

    def part(self, rel: str) -> ImagePart | AudioPart:
        """The image or audio part for a stored asset (sha256 and MIME type from its name)."""
        sha = Path(rel).stem
        ext = rel.rsplit(".", 1)[-1].lower()
        if ext in ("wav", "mp3", "flac", "ogg", "m4a"):
            return AudioPart(path=rel, sha256=sha, mime="audio/mpeg" if ext == "mp3" else f"audio/{ext}")
        mime = {"jpg": "image/jpeg", "jpeg": "image/jpeg"}.get(ext, f"image/{ext}")
        return ImagePart(path=rel, sha256=sha, mime=mime)


def item_id(*parts: Any) -> str:
    """A short stable id from the parts that define an item."""
    return hashlib.sha256("\x1f".join(str(p) for p in parts).encode()).hexdigest()[:16]


def item_to_sample(it: dict[str, Any], wd: WorkDir | None = None) -> Sample:
    """A work item as a single-turn Sample (asset paths relative to the work dir)."""
    parts: list[Any] = []
    for rel in it.get("images") or []:
        parts.append(wd.part(rel) if wd else ImagePart(path=rel))
    for rel in it.get("audio") or []:
        parts.append(wd.part(rel) if wd else AudioPart(path=rel))
    text = it.get("text") or it["question"]
    content: Any = [*parts, TextPart(text=text)] if parts else text
    meta = {k: it[k] for k in ("pair_type", "parent", "scores", "image_provenance", "transform", "selection")
            if it.get(k) is not None}
    return Sample(id=it["id"], question=it["question"], messages=[Message(role="user", content=content)],
                  scenario=it.get("scenario") or "unspecified", category=it.get("category"),
                  source=it.get("source") or "mmsafe-build", method=it.get("method"),
                  metadata=meta, provenance=it.get("provenance") or {})


# --------------------------------------------------------------------------- agents


class AgentContext:
    """One agent's model clients, sharing one ledger (calls, tokens, USD) and a wall clock."""

    def __init__(self, name: str, cfg: BuildConfig, wd: WorkDir, *, cache: ResponseCache | None = None,
                 budget_usd: float | None = None):
        self.name = name
        self.cfg = cfg
        self.wd = wd
        self.ledger = CostLedger(max_cost_usd=budget_usd if budget_usd is not None else cfg.max_cost)
        self.cache = cache
        self._clients: dict[str, ModelClient] = {}
        self.extra: dict[str, Any] = {"image_calls": 0, "image_cost_usd": 0.0, "tts_calls": 0}
        self.t0 = time.perf_counter()
        self.sem = asyncio.Semaphore(cfg.concurrency)

    def has(self, key: str) -> bool:
        """True when the build config names a model for ``key``."""
        return key in self.cfg.models

    def model_ref(self, key: str, fallback: str | None = None) -> ModelRef | None:
        """The config's model for ``key`` (else for ``fallback``), or None."""
        return self.cfg.models.get(key) or (self.cfg.models.get(fallback) if fallback else None)

    async def client(self, key: str, *, fallback: str | None = None, ref: ModelRef | None = None,
                     role: str | None = None) -> ModelClient:
        """The client for ``models.<key>`` (or ``fallback``); started on first use."""
        cache_key = key if ref is None else f"{key}:{ref.spec}"
        if cache_key in self._clients:
            return self._clients[cache_key]
        ref = ref or self.model_ref(key, fallback)
        if ref is None:
            raise BuildError(f"{self.name}: needs models.{key} in the build config")
        role = role or MODEL_ROLES.get(key, "generator")
        over = {k: v for k, v in ref.model_dump(exclude={"spec"}).items() if v is not None}
        mf = self.cfg.path(self.cfg.models_file)
        ecfg = resolve_endpoint(ref.spec, role, models_file=mf, **over)
        c = ModelClient(build_provider(ecfg), role, self.ledger, cache=self.cache if self.cfg.cache else None)
        if self.cfg.warm_start:
            # a build stage sends its whole batch at once: skip the limiter's slow start (which
            # costs ~2 round trips per stage); an overload (429/503) still halves the limit
            c.limiter.limit = float(c.limiter.cap)
        await c.start()
        self._clients[cache_key] = c
        return c

    async def close(self) -> None:
        """Close every client this agent started (errors while closing are ignored)."""
        for c in self._clients.values():
            try:
                await c.close()
            except Exception:
                pass
        self._clients.clear()

    def summary(self) -> dict[str, Any]:
        """Calls, cached calls, errors, tokens, USD and wall time of the agent, with a per-role breakdown."""
        tot: dict[str, Any] = {"calls": 0, "cached": 0, "errors": 0, "input_tokens": 0, "output_tokens": 0,
                               "cost_usd": 0.0}
        for r in self.ledger.roles.values():
            d = r.as_dict()
            for k in tot:
                tot[k] += d[k]
        tot["cost_usd"] = round(tot["cost_usd"] + self.extra.get("image_cost_usd", 0.0), 6)
        tot["wall_s"] = round(time.perf_counter() - self.t0, 3)
        tot["by_role"] = self.ledger.as_dict()
        tot.update({k: v for k, v in self.extra.items() if k != "image_cost_usd" and v})
        return tot

    async def gather(self, coros: Iterable[Awaitable[Any]]) -> list[Any]:
        """Run the calls at most ``concurrency`` at a time, in order; a failure or stop cancels the rest."""
        coros = list(coros)

        async def one(c: Awaitable[Any]) -> Any:
            async with self.sem:
                return await c
        tasks = [asyncio.ensure_future(one(c)) for c in coros]
        try:
            return list(await asyncio.gather(*tasks))
        except BaseException:  # a failure or a stop (budget): the stage's queued calls stop too
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            raise
        finally:  # calls cancelled before they started: closed, no "never awaited" warning
            for c in coros:
                if inspect.iscoroutine(c) and inspect.getcoroutinestate(c) == inspect.CORO_CREATED:
                    c.close()


# --------------------------------------------------------------------------- parsing

_FENCE = re.compile(r"```(?:json|JSON)?\s*(.*?)```", re.S)


def extract_json(text: str | None) -> Any:
    """The first JSON value in an LLM reply (fenced or bare). Raises ValueError."""
    if not text:
        raise ValueError("empty reply")
    cands = [m.group(1) for m in _FENCE.finditer(text)] + [text]
    for c in cands:
        c = c.strip()
        try:
            return orjson.loads(c)
        except orjson.JSONDecodeError:
            pass
        for open_, close in (("[", "]"), ("{", "}")):
            i, j = c.find(open_), c.rfind(close)
            if 0 <= i < j:
                try:
                    return orjson.loads(c[i:j + 1])
                except orjson.JSONDecodeError:
                    continue
    raise ValueError(f"no JSON in reply: {text[:120]!r}")


def user(text: str, images: Sequence[ImagePart | AudioPart] | None = None) -> list[Message]:
    """One user message: the text after the given image/audio parts (plain text when there are none)."""
    if images:
        return [Message(role="user", content=[*images, TextPart(text=text)])]
    return [Message(role="user", content=text)]


def stable_fraction(key: str, seed: int) -> float:
    """A deterministic number in [0, 1) for ``key`` (seeded sub-sampling)."""
    return int(hashlib.sha256(f"{seed}:{key}".encode()).hexdigest()[:12], 16) / float(16 ** 12)
