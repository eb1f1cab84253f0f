"""VLSBench importer: visual leakage-free multimodal safety (Hu et al., 2024;
huggingface.co/datasets/Foreshhh/vlsbench).

Published layout (the dataset repository)::

    data.json       a JSON list of {instruction_id, instruction, image_path, category,
                    sub_category, source, image_description, safety_reason}
    imgs.tar        the images; unpacked: imgs/<n>.png (what image_path names)

``src`` may be the repository root or ``data.json``; ``image_path`` (or ``image`` in copies
that renamed it) is relative to the JSON's folder. Each record becomes the image followed
by ``instruction``; scenario is ``category``, category ``sub_category``; ``source`` (how the
pair was made), ``image_description`` and ``safety_reason`` go to ``metadata``. VLSBench's
point is that the harm is in the image and not leaked into the text, so a record whose
image is missing is skipped and counted (never imported text-only); ``strict_media``
makes it an error.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from mmsafe.types import BenchmarkManifest, Message, TextPart

from ..benchmark import BenchmarkWriter
from ..errors import DatasetError
from ._common import MediaGaps, make_manifest, require_path, source_entry
from ._published import find_media, json_records, make_sample, record_dict, require_some_media, text_field

__all__ = ["import_vlsbench"]


def import_vlsbench(src: Path, out: Path, *, name: str | None = None, overwrite: bool = False,
                    images_dir: Path | None = None, strict_media: bool = False) -> BenchmarkManifest:
    """Import VLSBench from its repository root or ``data.json`` (see the module doc).
    Images are looked up in ``images_dir``, else beside the JSON (where ``imgs/`` unpacks)."""
    src = require_path(src)
    path = src if src.is_file() else src / "data.json"
    if not path.is_file():
        raise DatasetError(f"{src}: no data.json here (the VLSBench dataset repository has it at its root)")
    img_dirs = [Path(images_dir)] if images_dir else [path.parent]
    manifest = make_manifest(
        name=name or "vlsbench", importer="vlsbench", sources=[source_entry(path, src if src.is_dir() else None)],
        options={"images_dir": str(images_dir) if images_dir else None},
        description="VLSBench: image-text pairs whose harm is in the image, not leaked into the text",
        source="Foreshhh/vlsbench (Hu et al., 2024)", licence="Apache-2.0")
    gaps = MediaGaps("vlsbench", None, dropped=True)
    with BenchmarkWriter(out, manifest, overwrite=overwrite) as w:
        for line, _, value in json_records(path):
            where = f"{path}:{line}"
            rec = record_dict(value, where)
            iid = text_field(rec, "instruction_id", where)
            instruction = text_field(rec, "instruction", where, strip=False)
            field = "image_path" if "image_path" in rec or "image" not in rec else "image"
            image = text_field(rec, field, where)
            category = text_field(rec, "category", where)
            found = find_media(img_dirs, image, f"{where}: {field}")
            gaps.row("image", found is not None, where)
            if found is None:
                continue
            meta: dict[str, Any] = {"group": f"vlsbench/{iid}", "image_file": image}
            for k, key in (("source", "origin"), ("image_description", "image_description"),
                           ("safety_reason", "safety_reason")):
                if isinstance(rec.get(k), str) and rec[k].strip():
                    meta[key] = rec[k]
            part = w.add_image(found, where=where, name=image)
            sub = text_field(rec, "sub_category", where, required=False)
            w.add(make_sample(where, id=f"vlsbench/{iid}", question=instruction.strip(),
                              messages=[Message(role="user", content=[part, TextPart(text=instruction)])],
                              scenario=category, category=sub or None,
                              source="vlsbench", metadata=meta, provenance={"file": path.name, "line": line}),
                  where=where)
        if not strict_media:
            hint = ("unpack imgs.tar beside data.json (tar xf imgs.tar) or give --opt images_dir=PATH"
                    if (path.parent / "imgs.tar").is_file() or not (path.parent / "imgs").is_dir()
                    else "give --opt images_dir=PATH")
            require_some_media(len(w), gaps, src, img_dirs, hint)
        gaps.finish(w.manifest, strict=strict_media)
    return w.manifest
