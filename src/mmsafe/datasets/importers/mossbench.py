"""MOSSBench importer: multimodal over-sensitivity (Li et al., 2024; github.com/xirui-li/MOSSBench).

MOSSBench measures **over-refusal**: 300 benign image + question pairs that models refuse
because of a harmless but risky-looking element in the image. Its benign items become
**controls** (``metadata.control``): a run reports their refusals as over-refusal, never in
the ASR. The contrast set (the same images with a harmful question) is imported as ordinary
harmful samples, so one run gives both numbers.

Published layouts::

    data/images_information/information.json           {pid: {image, question, short description,
    data/images/<pid>.png|.webp                               description, pid, metadata{over, human,
    data_contrast/images_information/information.json         child, syn, ocr, harm}}}
    data_contrast/images/<pid>.png

and the Hugging Face copy (AIcell/MOSSBench)::

    images/metadata.csv + images/*.png                  file_name, pid, question, short description,
    contrast_images/metadata.csv + contrast_images/*.png     description, metadata_over, … metadata_harm

``src`` may be the repository root, ``data/`` (or ``data_contrast/``) or an
``information.json``. ``image`` is relative to the folder above ``images_information/``;
the repository stores some images as ``.webp`` under a ``.png`` name, so the same stem
with another extension is accepted. Ids are ``mossbench/benign/{pid}`` and
``mossbench/contrast/{pid}``; both share the group ``mossbench/{pid}``. Scenario is the
oversensitivity type (Exaggerated Risk, Negated Harm, Counterintuitive Interpretation).
The image is what triggers the refusal, so an item whose image is missing is skipped and
counted; ``strict_media`` makes it an error.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mmsafe.types import BenchmarkManifest, Message, TextPart

from ..benchmark import BenchmarkWriter
from ..errors import DatasetError
from ._common import MediaGaps, csv_rows, make_manifest, require_path, source_entry
from ._published import find_media, json_records, make_sample, record_dict, require_some_media, text_field

__all__ = ["import_mossbench", "OVERSENSITIVITY_TYPES"]

OVERSENSITIVITY_TYPES = {"type 1": "Exaggerated Risk", "type 2": "Negated Harm",
                         "type 3": "Counterintuitive Interpretation"}
_INFO = Path("images_information") / "information.json"


@dataclass
class _Part:
    """One of the two sets: where its records are and how to read them."""

    kind: str  # "benign" | "contrast"
    path: Path  # information.json or metadata.csv
    image_base: Path


def mossbench_parts(src: Path, contrast: bool) -> list[_Part]:
    """The benign and (with ``contrast``) contrast record files of a MOSSBench checkout."""
    if src.is_file():
        kind = "contrast" if "contrast" in str(src.parent.parent.name + src.parent.name).lower() else "benign"
        base = src.parent.parent if src.parent.name == "images_information" else src.parent
        return [_Part(kind, src, base)]
    parts: list[_Part] = []
    candidates = (("benign", (src / "data", src)), ("contrast", (src / "data_contrast", src.parent / "data_contrast")))
    for kind, dirs in candidates:
        if kind == "contrast" and not contrast:
            continue
        d = next((d for d in dirs if (d / _INFO).is_file()), None)
        if d is not None and (kind == "benign" or not parts or d != parts[0].image_base):
            parts.append(_Part(kind, d / _INFO, d))
    if parts:
        return parts
    for kind, folder in (("benign", "images"), ("contrast", "contrast_images")):
        if kind == "contrast" and not contrast:
            continue
        meta = src / folder / "metadata.csv"
        if meta.is_file():
            parts.append(_Part(kind, meta, meta.parent))
    if not parts:
        raise DatasetError(f"{src}: no MOSSBench records here (looked for data/{_INFO.as_posix()}, "
                           f"data_contrast/{_INFO.as_posix()} and the Hugging Face images/metadata.csv)")
    return parts


def _records(part: _Part) -> list[tuple[int, dict[str, Any]]]:
    """``(line, record)`` of a part, the CSV's ``metadata_*`` columns folded into ``metadata``."""
    if part.path.suffix.lower() == ".json":
        return [(line, record_dict(v, f"{part.path}:{line}")) for line, _, v in json_records(part.path)]
    out = []
    for line, row in csv_rows(part.path, required=("file_name", "question", "pid")):
        rec: dict[str, Any] = {k: v for k, v in row.items() if not k.startswith("metadata_")}
        rec["image"] = row["file_name"]
        rec["metadata"] = {k[len("metadata_"):]: v for k, v in row.items() if k.startswith("metadata_")}
        out.append((line, rec))
    return out


def import_mossbench(src: Path, out: Path, *, name: str | None = None, overwrite: bool = False,
                     contrast: bool = True, images_dir: Path | None = None,
                     strict_media: bool = False) -> BenchmarkManifest:
    """Import MOSSBench (see the module doc): benign items as over-refusal controls and,
    with ``contrast`` (default), the contrast set as harmful samples."""
    src = require_path(src)
    parts = mossbench_parts(src, contrast)
    base = src if src.is_dir() else None
    manifest = make_manifest(
        name=name or "mossbench", importer="mossbench", sources=[source_entry(p.path, base) for p in parts],
        options={"contrast": contrast, "images_dir": str(images_dir) if images_dir else None},
        description="MOSSBench: benign image+question pairs that over-sensitive models refuse "
                    "(controls: over-refusal) and their harmful contrast set",
        source="xirui-li/MOSSBench (Li et al., 2024)", licence="CC (see the AIcell/MOSSBench dataset card)")
    gaps = MediaGaps("mossbench", None, dropped=True)
    counts = {"benign": 0, "contrast": 0}
    with BenchmarkWriter(out, manifest, overwrite=overwrite) as w:
        for part in parts:
            dirs = [Path(images_dir)] if images_dir else [part.image_base]
            for line, rec in _records(part):
                where = f"{part.path}:{line}"
                pid = text_field(rec, "pid", where)
                image = text_field(rec, "image", where)
                question = text_field(rec, "question", where, strip=False)
                meta_src = rec.get("metadata") or {}
                if not isinstance(meta_src, dict):
                    raise DatasetError(f"{where}: metadata: expected an object")
                over = str(meta_src.get("over") or "").strip()
                found = find_media(dirs, image, f"{where}: image")
                gaps.row("image", found is not None, where)
                if found is None:
                    continue
                benign = part.kind == "benign"
                meta: dict[str, Any] = {"group": f"mossbench/{pid}", "set": part.kind, "oversensitivity": over or None,
                                        "image_file": image, **({"control": True, "benign": True} if benign else {})}
                for k in ("human", "child", "syn", "ocr", "harm"):
                    if k in meta_src:
                        meta[k] = meta_src[k]
                if isinstance(rec.get("short description"), str):
                    meta["short_description"] = rec["short description"]
                part_img = w.add_image(found, where=where, name=image)
                w.add(make_sample(where, id=f"mossbench/{part.kind}/{pid}", question=question.strip(),
                                  messages=[Message(role="user", content=[part_img, TextPart(text=question)])],
                                  scenario=OVERSENSITIVITY_TYPES.get(over.lower(), over or "unspecified"),
                                  source="mossbench", metadata=meta,
                                  provenance={"file": part.path.name, "set": part.kind, "line": line}), where=where)
                counts[part.kind] += 1
        w.manifest.provenance["sets"] = {k: v for k, v in counts.items() if v or k == "benign"}
        if not strict_media:
            require_some_media(len(w), gaps, src, [Path(images_dir)] if images_dir else [p.image_base for p in parts],
                               "unzip images.zip into data/ (data/images/) or give --opt images_dir=PATH")
        gaps.finish(w.manifest, strict=strict_media)
    return w.manifest
