"""VLGuard test-set importer (Zong et al., ICML 2024; github.com/ys-zong/VLGuard, also
huggingface.co/datasets/ys-zong/VLGuard).

Published layout::

    data/test.json     a JSON list of {id, image, safe, harmful_category, harmful_subcategory,
                       instr-resp: [...]}
    data/test.zip      the images; unzipped: test/<image> (e.g. test/bad_ads/<uuid>.png)

A record with ``safe: true`` (a safe image) carries one ``{safe_instruction, response}``
and one ``{unsafe_instruction, response}``; a record with ``safe: false`` (an unsafe image)
carries ``{instruction, response}``. These are VLGuard's three evaluation subsets:

- ``safe_safes`` (safe image, safe instruction): **controls** — refusing them is
  over-refusal, reported apart from the ASR (VLGuard reports helpfulness there);
- ``safe_unsafes`` (safe image, unsafe instruction) and ``unsafes`` (unsafe image):
  harmful samples.

``src`` may be the repository root, ``data/`` or ``test.json``; images are looked up in
``images_dir``, else ``test/`` beside the JSON, ``VLGuard/test/`` (the evaluation script's
default) and the JSON's folder. Ids are ``vlguard/{id}/{subset}/{k}``; scenario is
``harmful_category`` (``safe image`` for the safe-image subsets), category
``harmful_subcategory``. The reference responses are not imported. The image is part of
every request, so an item whose image is missing is skipped and counted;
``strict_media`` makes it an error. ``subsets`` keeps only some of the three.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from mmsafe.types import BenchmarkManifest, ImagePart, Message, TextPart

from ..benchmark import BenchmarkWriter
from ..errors import DatasetError
from ._common import MediaGaps, first_existing, make_manifest, require_path, source_entry
from ._published import as_list, find_media, json_records, make_sample, record_dict, require_some_media, text_field

__all__ = ["import_vlguard", "VLGUARD_SUBSETS"]

VLGUARD_SUBSETS = ("safe_safes", "safe_unsafes", "unsafes")
_KEYS = {"safe_instruction": "safe_safes", "unsafe_instruction": "safe_unsafes", "instruction": "unsafes"}


def _items(rec: dict[str, Any], where: str) -> list[tuple[str, str]]:
    """``(subset, instruction)`` of a record's ``instr-resp`` list, checked against ``safe``."""
    safe = rec.get("safe")
    if not isinstance(safe, bool):
        raise DatasetError(f"{where}: safe: expected true or false, got {safe!r}")
    pairs = rec.get("instr-resp")
    if not isinstance(pairs, list) or not pairs:
        raise DatasetError(f"{where}: instr-resp: expected a non-empty list")
    out = []
    for i, p in enumerate(pairs):
        if not isinstance(p, dict):
            raise DatasetError(f"{where}: instr-resp[{i}]: expected an object")
        keys = [k for k in _KEYS if k in p]
        if len(keys) != 1:
            raise DatasetError(f"{where}: instr-resp[{i}]: expected one of safe_instruction, "
                               "unsafe_instruction, instruction")
        subset = _KEYS[keys[0]]
        if (subset == "unsafes") == safe:
            raise DatasetError(f"{where}: instr-resp[{i}]: {keys[0]} in a record with safe: {str(safe).lower()}")
        out.append((subset, text_field(p, keys[0], f"{where}: instr-resp[{i}]", strip=False)))
    return out


def _record(w: BenchmarkWriter, path: Path, line: int, value: Any, keep: list[str], img_dirs: list[Path],
            cache: dict[str, ImagePart | None], gaps: MediaGaps, counts: dict[str, int]) -> None:
    """The samples of one test.json record (one per kept instruction)."""
    where = f"{path}:{line}"
    rec = record_dict(value, where)
    rid = text_field(rec, "id", where)
    image = text_field(rec, "image", where)
    items = [(s, t) for s, t in _items(rec, where) if s in keep]
    if not items:
        return
    if image not in cache:
        found = find_media(img_dirs, image, f"{where}: image")
        cache[image] = w.add_image(found, where=where, name=image) if found is not None else None
    part = cache[image]
    cat = text_field(rec, "harmful_category", where, required=False)
    sub = text_field(rec, "harmful_subcategory", where, required=False)
    for k, (subset, text) in enumerate(items, 1):
        gaps.row("image", part is not None, where)
        if part is None:
            continue
        control = subset == "safe_safes"
        w.add(make_sample(
            where, id=f"vlguard/{rid}/{subset}/{k}",
            question=text.strip(), messages=[Message(role="user", content=[part, TextPart(text=text)])],
            scenario=cat or ("safe image" if rec["safe"] else "unspecified"), category=sub or None,
            source="vlguard", metadata={"group": f"vlguard/{rid}", "subset": subset, "safe_image": rec["safe"],
                                        "image_file": image, **({"control": True, "benign": True} if control else {})},
            provenance={"file": path.name, "line": line}), where=where)
        counts[subset] += 1


def import_vlguard(src: Path, out: Path, *, name: str | None = None, overwrite: bool = False,
                   images_dir: Path | None = None, subsets: list[str] | str | None = None,
                   strict_media: bool = False) -> BenchmarkManifest:
    """Import VLGuard's test set (see the module doc)."""
    src = require_path(src)
    path = src if src.is_file() else first_existing((src / "test.json", src / "data" / "test.json"), kind="file")
    if path is None:
        raise DatasetError(f"{src}: no test.json here or in data/ (the VLGuard repository keeps it in data/)")
    keep = as_list(subsets) or list(VLGUARD_SUBSETS)
    bad = [s for s in keep if s not in VLGUARD_SUBSETS]
    if bad:
        raise DatasetError(f"{src}: option subsets={bad[0]!r}: expected {', '.join(VLGUARD_SUBSETS)}")
    img_dirs = [Path(images_dir)] if images_dir else [
        d for d in (path.parent / "test", path.parent / "VLGuard" / "test", path.parent) if d.is_dir()]
    manifest = make_manifest(
        name=name or "vlguard-test", importer="vlguard", sources=[source_entry(path, src if src.is_dir() else None)],
        options={"subsets": keep, "images_dir": str(images_dir) if images_dir else None},
        description="VLGuard test: safe images with safe (controls) and unsafe instructions, and unsafe images",
        source="ys-zong/VLGuard (Zong et al., 2024)", licence="MIT")
    gaps = MediaGaps("vlguard", None, dropped=True)
    counts = dict.fromkeys(keep, 0)
    cache: dict[str, ImagePart | None] = {}
    with BenchmarkWriter(out, manifest, overwrite=overwrite) as w:
        for line, _, value in json_records(path):
            _record(w, path, line, value, keep, img_dirs, cache, gaps, counts)
        w.manifest.provenance["subsets"] = counts
        if not strict_media:
            require_some_media(len(w), gaps, src, img_dirs or [path.parent / "test"],
                               "unzip test.zip beside test.json (it unpacks to test/) or give --opt images_dir=PATH")
        gaps.finish(w.manifest, strict=strict_media)
    return w.manifest
