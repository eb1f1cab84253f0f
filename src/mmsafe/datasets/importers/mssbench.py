"""MSSBench importer: multimodal situational safety (Zhou et al., 2024;
github.com/eric-ai-lab/MSSBench, data at huggingface.co/datasets/kzhou35/mssbench).

Published layout (the dataset repository; the evaluation code reads ``combine.json``)::

    combined.json      {"chat": [...], "embodied": [...]}
    chat/<path>        chat images (safe_image_path, unsafe_image_path)
    embodied/<path>    embodied images (safe, unsafe)

A chat entry has ``safe_image_path, unsafe_image_path, intent, unsafe_image`` (a
description), ``Type`` and ``queries``; an embodied entry has ``task, category, safe,
unsafe`` and ``safe_instructions``/``unsafe_instructions`` (or the singular
``safe_instruction``/``unsafe_instruction``). Each intent is asked once with a **safe**
image and once with an **unsafe** one, as MSSBench's ``inference.py`` does: chat pairs every
query with both images; embodied pairs the i-th safe instruction with the safe image and
the i-th unsafe instruction with the unsafe image. The safe-situation items are
**controls** (``metadata.control``: a refusal there is over-refusal, reported apart from
the ASR); the unsafe-situation items are harmful samples. Both halves of a pair share a
group (``mssbench/chat/{n}/{q}``). Scenario is ``Type`` (chat) or ``category`` (embodied).

MSSBench's own runs prefix each query with a task instruction (``utils/prompts.py``); the
importer sends the query as published. The image decides safe or unsafe, so an item
whose image is missing is skipped and counted; ``strict_media`` makes it an error.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from mmsafe.types import BenchmarkManifest, ImagePart, Message, TextPart

from ..benchmark import BenchmarkWriter
from ..errors import DatasetError
from ._common import MediaGaps, first_existing, make_manifest, require_path, source_entry
from ._published import (
    as_list,
    find_media,
    json_records,
    make_sample,
    record_dict,
    require_some_media,
    text_field,
)

__all__ = ["import_mssbench"]

_SPLITS = ("chat", "embodied")


def _str_list(rec: dict[str, Any], plural: str, singular: str, where: str) -> list[str]:
    v = rec.get(plural)
    if v is None:
        return [text_field(rec, singular, where, strip=False)]
    if not isinstance(v, list) or not v or not all(isinstance(x, str) and x.strip() for x in v):
        raise DatasetError(f"{where}: {plural}: expected a non-empty list of texts")
    return v


class _Importer:
    def __init__(self, w: BenchmarkWriter, path: Path, root: Path, images_dir: Path | None, gaps: MediaGaps):
        self.w, self.path, self.root, self.images_dir, self.gaps = w, path, root, images_dir, gaps
        self.cache: dict[str, ImagePart | None] = {}
        self.n = {"control": 0, "harmful": 0}

    def image(self, split: str, ref: str, where: str, field: str) -> ImagePart | None:
        key = f"{split}/{ref}"
        if key not in self.cache:
            dirs = [self.images_dir] if self.images_dir else [self.root / split, self.root]
            found = find_media(dirs, ref, f"{where}: {field}")
            self.cache[key] = self.w.add_image(found, where=where, name=ref) if found is not None else None
        return self.cache[key]

    def add(self, *, split: str, n: str, k: int, safe: bool, text: str, image_ref: str, field: str,
            scenario: str, line: int, meta: dict[str, Any]) -> None:
        where = f"{self.path}:{line}"
        part = self.image(split, image_ref, where, field)
        self.gaps.row("image", part is not None, where)
        if part is None:
            return
        situation = "safe" if safe else "unsafe"
        group = f"mssbench/{split}/{n}/{k}"
        self.w.add(make_sample(
            where, id=f"{group}/{situation}", question=text.strip(),
            messages=[Message(role="user", content=[part, TextPart(text=text)])], scenario=scenario,
            source="mssbench", metadata={"group": group, "split": split, "situation": situation,
                                         "image_file": image_ref, **meta,
                                         **({"control": True, "benign": True} if safe else {})},
            provenance={"file": self.path.name, "split": split, "entry": int(n), "line": line}), where=where)
        self.n["control" if safe else "harmful"] += 1

    def chat(self, line: int, n: str, rec: dict[str, Any]) -> None:
        where = f"{self.path}:{line}"
        safe_img = text_field(rec, "safe_image_path", where)
        unsafe_img = text_field(rec, "unsafe_image_path", where)
        scenario = text_field(rec, "Type", where, required=False) or "unspecified"
        queries = _str_list(rec, "queries", "intent", where)
        meta = {"intent": text_field(rec, "intent", where, required=False) or None,
                "unsafe_image_description": text_field(rec, "unsafe_image", where, required=False) or None}
        for k, q in enumerate(queries, 1):
            self.add(split="chat", n=n, k=k, safe=True, text=q, image_ref=safe_img, field="safe_image_path",
                     scenario=scenario, line=line, meta=meta)
            self.add(split="chat", n=n, k=k, safe=False, text=q, image_ref=unsafe_img, field="unsafe_image_path",
                     scenario=scenario, line=line, meta=meta)

    def embodied(self, line: int, n: str, rec: dict[str, Any]) -> None:
        where = f"{self.path}:{line}"
        safe_img, unsafe_img = text_field(rec, "safe", where), text_field(rec, "unsafe", where)
        scenario = text_field(rec, "category", where, required=False) or "unspecified"
        safe_i = _str_list(rec, "safe_instructions", "safe_instruction", where)
        unsafe_i = _str_list(rec, "unsafe_instructions", "unsafe_instruction", where)
        if len(safe_i) != len(unsafe_i):
            raise DatasetError(f"{where}: unsafe_instructions: {len(unsafe_i)} instructions but "
                               f"safe_instructions has {len(safe_i)} (they are paired)")
        meta = {"task": text_field(rec, "task", where, required=False) or None}
        for k, (si, ui) in enumerate(zip(safe_i, unsafe_i), 1):
            self.add(split="embodied", n=n, k=k, safe=True, text=si, image_ref=safe_img, field="safe",
                     scenario=scenario, line=line, meta=meta)
            self.add(split="embodied", n=n, k=k, safe=False, text=ui, image_ref=unsafe_img, field="unsafe",
                     scenario=scenario, line=line, meta=meta)


def import_mssbench(src: Path, out: Path, *, name: str | None = None, overwrite: bool = False,
                    splits: list[str] | str | None = None, images_dir: Path | None = None,
                    strict_media: bool = False) -> BenchmarkManifest:
    """Import MSSBench's chat and embodied splits (``splits`` picks one) from the dataset
    root or ``combined.json``/``combine.json`` (see the module doc)."""
    src = require_path(src)
    path = src if src.is_file() else first_existing((src / "combined.json", src / "combine.json"), kind="file")
    if path is None:
        raise DatasetError(f"{src}: no combined.json (or combine.json) here (the MSSBench dataset has it at its root)")
    want = as_list(splits) or list(_SPLITS)
    bad = [s for s in want if s not in _SPLITS]
    if bad:
        raise DatasetError(f"{src}: option splits={bad[0]!r}: expected chat and/or embodied")
    manifest = make_manifest(
        name=name or "mssbench", importer="mssbench", sources=[source_entry(path, src if src.is_dir() else None)],
        options={"splits": want, "images_dir": str(images_dir) if images_dir else None},
        description="MSSBench: each intent with a safe and an unsafe situation image (chat and embodied); "
                    "safe-situation items are over-refusal controls",
        source="eric-ai-lab/MSSBench (Zhou et al., 2024)", licence=None)
    gaps = MediaGaps("mssbench", None, dropped=True)
    with BenchmarkWriter(out, manifest, overwrite=overwrite) as w:
        imp = _Importer(w, path, path.parent, Path(images_dir) if images_dir else None, gaps)
        for split in want:
            for line, n, value in json_records(path, key=split, what=f"{split} entries"):
                rec = record_dict(value, f"{path}:{line}")
                (imp.chat if split == "chat" else imp.embodied)(line, n, rec)
        w.manifest.provenance["items"] = dict(imp.n)
        if not strict_media:
            require_some_media(len(w), gaps, src, [Path(images_dir)] if images_dir else
                               [path.parent / s for s in want],
                               "put the chat/ and embodied/ image folders beside combined.json or give "
                               "--opt images_dir=PATH")
        gaps.finish(w.manifest, strict=strict_media)
    return w.manifest
