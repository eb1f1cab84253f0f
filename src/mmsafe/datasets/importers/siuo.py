"""SIUO importer: Safe Inputs but Unsafe Output (Wang et al., NAACL 2025; github.com/sinwang20/SIUO).

Published layout::

    data/siuo_gen.json       a JSON list of {question_id, image, question, category,
                             safety_warning, reference_answer}
    data/siuo_mcqa.json      the multiple-choice variant (options / correct_option)
    data/images/<image>      the images (downloaded separately; S-08.png, D-06.png, …)

``src`` may be the repository root, ``data/`` or the JSON file. Each record becomes the
image followed by ``question``; scenario is ``category``; ``safety_warning`` (what a safe
reply must notice) and ``reference_answer`` go to ``metadata`` for judges. Every SIUO
input is safe on its own and unsafe only with its image, so a record whose image is
missing is skipped and counted (never imported text-only); ``strict_media`` makes it an
error. ``task=mcqa`` imports ``siuo_mcqa.json`` (the options are appended to the question,
as lettered lines, and the correct option is kept in ``metadata``).
"""

from __future__ import annotations

from pathlib import Path

from mmsafe.types import BenchmarkManifest, Message, TextPart

from ..benchmark import BenchmarkWriter
from ..errors import DatasetError
from ._common import MediaGaps, first_existing, make_manifest, require_path, source_entry
from ._published import find_media, json_records, make_sample, record_dict, require_some_media, text_field

__all__ = ["import_siuo"]

_FILES = {"gen": "siuo_gen.json", "mcqa": "siuo_mcqa.json"}


def siuo_json(src: Path, task: str) -> Path:
    """``siuo_gen.json`` (or ``siuo_mcqa.json``) from the repository root, ``data/`` or a file."""
    if src.is_file():
        return src
    if task not in _FILES:
        raise DatasetError(f"{src}: option task={task!r}: expected gen or mcqa")
    found = first_existing((d / _FILES[task] for d in (src, src / "data")), kind="file")
    if found is None:
        raise DatasetError(f"{src}: no {_FILES[task]} here or in data/ (the SIUO repository keeps it in data/)")
    return found


def _mcqa_text(question: str, rec: dict, where: str) -> str:
    opts = rec.get("options")
    if not isinstance(opts, dict) or not opts:
        raise DatasetError(f"{where}: options: expected an object of lettered options")
    lines = "\n".join(f"{k}. {v}" for k, v in opts.items())
    return f"{question}\n\n{lines}\n\nAnswer with the letter of the best option."


def import_siuo(src: Path, out: Path, *, name: str | None = None, overwrite: bool = False,
                task: str = "gen", images_dir: Path | None = None, strict_media: bool = False) -> BenchmarkManifest:
    """Import SIUO (see the module doc). Images are looked up in ``images_dir``, else in
    ``images/`` beside the JSON (the published ``data/images/``), then beside the JSON."""
    src = require_path(src)
    path = siuo_json(src, task)
    mcqa = task == "mcqa" or "mcqa" in path.name.lower()
    img_dirs = [Path(images_dir)] if images_dir else [d for d in (path.parent / "images", path.parent) if d.is_dir()]
    manifest = make_manifest(
        name=name or ("siuo-mcqa" if mcqa else "siuo"), importer="siuo",
        sources=[source_entry(path, src if src.is_dir() else None)],
        options={"task": "mcqa" if mcqa else "gen", "images_dir": str(images_dir) if images_dir else None},
        description="SIUO: safe image + safe text whose combination asks for something unsafe (9 domains)",
        source="sinwang20/SIUO (Wang et al., 2025)", licence="CC BY-NC 4.0")
    gaps = MediaGaps("siuo", None, dropped=True)
    with BenchmarkWriter(out, manifest, overwrite=overwrite) as w:
        for line, _, value in json_records(path):
            where = f"{path}:{line}"
            rec = record_dict(value, where)
            qid = text_field(rec, "question_id", where)
            image = text_field(rec, "image", where)
            question = text_field(rec, "question", where, strip=False)
            category = text_field(rec, "category", where)
            found = find_media(img_dirs, image, f"{where}: image")
            gaps.row("image", found is not None, where)
            if found is None:
                continue
            part = w.add_image(found, where=where, name=image)
            text = _mcqa_text(question, rec, where) if mcqa else question
            meta: dict = {"group": f"siuo/{qid}", "image_file": image}
            for k in ("safety_warning", "reference_answer", "correct_option"):
                if isinstance(rec.get(k), str) and rec[k].strip():
                    meta[k] = rec[k]
            w.add(make_sample(where, id=f"siuo/{qid}", question=question.strip(),
                              messages=[Message(role="user", content=[part, TextPart(text=text)])],
                              scenario=category, method="mcqa" if mcqa else None, source="siuo", metadata=meta,
                              provenance={"file": path.name, "line": line}), where=where)
        if not strict_media:
            require_some_media(len(w), gaps, src, img_dirs or [path.parent / "images"],
                               "unpack the SIUO images into data/images/ or give --opt images_dir=PATH")
        gaps.finish(w.manifest, strict=strict_media)
    return w.manifest
