"""Augmentation agent: derives jailbreak variants of each item.

* text — :mod:`mmsafe.attacks.transforms` (paraphrase, role-play, research framing, refusal
  suppression, prefix injection, base64, leetspeak, ROT13, translation); LLM transforms use
  ``models.paraphraser`` (or ``models.generator``).
* visual — :mod:`mmsafe.attacks.visual` (FigStep, FigStep-Pro, noise, blur, JPEG, rotation,
  blank and unrelated images).
* audio — the item's question spoken by espeak-ng (two voices) or an OpenAI-compatible
  speech endpoint, sent with the item's image and a short text prompt.

A variant has ``parent`` (the item's id), ``method`` and ``transform`` (provenance). A
failed transform (LLM refusal, a perturbation with no image, no TTS engine) is counted in
the report, never silently replaced by the input.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from typing import Any

from mmsafe.attacks import audio as audio_mod, transforms, visual

from .common import AgentContext, BuildError, item_id, stable_fraction


def _methods(ctx: AgentContext) -> list[str]:
    a = ctx.cfg.augment
    ms = [f"text:{m}" for m in a.text] + [f"visual:{m}" for m in a.visual]
    if a.audio.engine != "none":
        ms += [f"audio:{v}" for v in a.audio.voices]
    for m in a.text:  # registered text transforms (built-in or plugin) or module.path:Name
        try:
            transforms.check_text_transform(m)
        except ValueError as e:
            raise BuildError(f"augment.text: {e}") from None
    for m in a.visual:
        try:
            visual.lookup_visual(m)
        except ValueError as e:
            raise BuildError(f"augment.visual: {e}") from None
    if a.audio.engine == "espeak" and not audio_mod.espeak_available():
        raise BuildError("augment.audio.engine espeak: espeak-ng is not installed (apt-get install espeak-ng)")
    return ms


async def run_augment(ctx: AgentContext, items: list[dict[str, Any]]) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    a = ctx.cfg.augment
    seed = ctx.cfg.seed
    wd = ctx.wd
    methods = _methods(ctx)
    needs_llm = any(transforms.check_text_transform(m.split(":", 1)[1]) == "text-llm"
                    for m in methods if m.startswith("text:"))
    llm = await ctx.client("paraphraser", fallback="generator") if needs_llm else None
    rep: Counter = Counter()

    def plan(it: dict[str, Any]) -> list[str]:
        if not methods or stable_fraction("aug:" + it["id"], seed) >= a.fraction:
            return []
        if a.per_item is None or a.per_item >= len(methods):
            return list(methods)
        return sorted(methods, key=lambda m: stable_fraction(f"{m}:{it['id']}", seed))[: a.per_item]

    async def variant(it: dict[str, Any], m: str, lang: str | None = None) -> dict[str, Any] | None:
        kind, name = m.split(":", 1)
        tag = f"{m}:{lang}" if lang else m
        base = {k: v for k, v in it.items() if k not in ("image_provenance",)}
        v: dict[str, Any] = {**base, "id": item_id(it["id"], tag), "parent": it["id"],
                             "method": name if kind != "audio" else "tts", "transform": {"kind": kind, "name": name}}
        text = it.get("text") or it["question"]
        try:
            if kind == "text":
                r = await transforms.apply_text_transform(name, text, client=llm, seed=seed,
                                                          language=lang or "French")
                if not r.ok:
                    rep[f"failed_{name}_{r.error}"] += 1
                    return None
                v["text"] = r.text
                v["transform"].update(r.provenance)
            elif kind == "visual":
                instr = it["question"] if it.get("pair_type", "plain") == "plain" else text
                opts = a.visual_options.get(name, {})
                vseed = int(stable_fraction(tag + it["id"], seed) * 2**31)

                def render() -> tuple[list[str], str, dict[str, Any]]:
                    # CPU work (Pillow releases the GIL) off the event loop, so requests keep flowing
                    img = wd.open_image(it["images"][0]) if it.get("images") else None
                    r = visual.apply_visual(name, text=text, instruction=instr, image=img, seed=vseed, options=opts)
                    return [wd.put_image(x) for x in r.images], r.text, r.provenance

                v["images"], v["text"], prov = await asyncio.to_thread(render)
                v["transform"].update(prov)
            else:  # audio
                if a.audio.engine == "espeak":
                    data = await audio_mod.tts_espeak_async(it["question"], name)
                else:
                    if not a.audio.base_url:
                        raise BuildError("augment.audio.base_url is required for engine openai")
                    data = await audio_mod.tts_openai(it["question"], base_url=a.audio.base_url, model=a.audio.model,
                                                      voice=name, api_key_env=a.audio.api_key_env)
                ctx.extra["tts_calls"] += 1
                v["audio"] = [wd.put_bytes(data, "wav")]
                v["text"] = a.audio.prompt
                v["transform"].update({"engine": a.audio.engine, "voice": name,
                                       "duration_s": round(audio_mod.wav_duration(data), 3)})
        except (ValueError, audio_mod.AudioError, transforms.TransformError) as e:
            rep[f"failed_{name}"] += 1
            errs = ctx.extra.setdefault("augment_errors", [])
            if len(errs) < 20:
                errs.append(f"{it['id']}:{tag}: {e}"[:200])
            return None
        rep[f"ok_{name}"] += 1
        return v

    jobs = []
    for it in items:
        for m in plan(it):
            if m == "text:translate":
                for lang in a.languages:
                    jobs.append(variant(it, m, lang))
            else:
                jobs.append(variant(it, m))
    variants = [v for v in await ctx.gather(jobs) if v is not None]
    out = (list(items) if a.keep_original else []) + variants
    return out, {"input": len(items), "variants": len(variants), "items": len(out), "by_method": dict(rep)}
