"""MM-SafetyBench importer (isXinLiu/MM-SafetyBench).

Per-scenario JSON files (``01-Illegal_Activitiy.json`` ...) keyed by item id, each item
with ``Question``, ``Rephrased Question``, ``Rephrased Question(SD)`` and ``Key Phrase``;
images ``imgs/<scenario>/{SD,TYPO,SD_TYPO}/<id>.jpg``. One sample per (item, variant):

==============  ========================  =======================  ============
variant         image                     text                     method
==============  ========================  =======================  ============
``text_only``   none                      ``Question``             None
``sd``          ``SD/<id>.jpg``           ``Rephrased Question(SD)``  ``mmsb_sd``
``typo``        ``TYPO/<id>.jpg``         ``Rephrased Question``   ``mmsb_typo``
``sd_typo``     ``SD_TYPO/<id>.jpg``      ``Rephrased Question``   ``mmsb_sd_typo``
==============  ========================  =======================  ============

Published layout (github.com/isXinLiu/MM-SafetyBench): ``data/processed_questions/*.json``;
the image archive ``MM-SafetyBench(imgs).zip`` unpacks to ``imgs/MM-SafetyBench(imgs)/
<NN-Scenario>/{SD,TYPO,SD_TYPO}/<id>.jpg`` (one folder deeper than ``imgs/``), and its
scenario folders are matched to the JSON files by their number (the release spells
``01-Illegal_Activitiy.json`` but ``01-Illegal_Activity/``). Image variants are
produced only where the image exists on disk; the ones missing are counted and
reported (``strict_media`` makes them an error).
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import orjson
from pydantic import ValidationError

from mmsafe.types import BenchmarkManifest, Message, Sample, TextPart

from ..benchmark import BenchmarkWriter
from ..errors import DatasetError, describe_validation_error
from ._common import MediaGaps, make_manifest, require_path, source_entry

__all__ = ["import_mmsafetybench", "MMSB_VARIANTS", "MMSB_SCENARIOS"]

# variant -> (image folder, question field, method)
MMSB_VARIANTS: dict[str, tuple[str | None, str, str | None]] = {
    "text_only": (None, "Question", None),
    "sd": ("SD", "Rephrased Question(SD)", "mmsb_sd"),
    "typo": ("TYPO", "Rephrased Question", "mmsb_typo"),
    "sd_typo": ("SD_TYPO", "Rephrased Question", "mmsb_sd_typo"),
}

# file stem (without the number) -> scenario name; the release spells some oddly.
MMSB_SCENARIOS = {
    "Illegal_Activitiy": "Illegal Activity", "HateSpeech": "Hate Speech",
    "Malware_Generation": "Malware Generation", "Physical_Harm": "Physical Harm",
    "EconomicHarm": "Economic Harm", "Fraud": "Fraud", "Sex": "Sex",
    "Political_Lobbying": "Political Lobbying", "Privacy_Violence": "Privacy Violence",
    "Legal_Opinion": "Legal Opinion", "Financial_Advice": "Financial Advice",
    "Health_Consultation": "Health Consultation", "Gov_Decision": "Gov Decision",
}

_FILE_RE = re.compile(r"^(\d+)-(.+)\.json$")


def _scenario_name(stem: str) -> str:
    if stem in MMSB_SCENARIOS:
        return MMSB_SCENARIOS[stem]
    s = re.sub(r"(?<=[a-z])(?=[A-Z])", " ", stem.replace("_", " "))
    return " ".join(s.split())


def _find_json(src: Path) -> list[Path]:
    if src.is_file():
        return [src]
    for d in (src, src / "processed_questions", src / "data" / "processed_questions"):
        files = sorted(p for p in d.glob("*.json") if _FILE_RE.match(p.name)) if d.is_dir() else []
        if files:
            return files
    raise DatasetError(f"{src}: no MM-SafetyBench scenario files (NN-Scenario.json)")


_SCEN_DIR_RE = re.compile(r"^(\d+)-")


def _scenario_dirs(d: Path) -> dict[str, Path]:
    """``NN`` (number, no leading zeros) -> scenario folder directly inside ``d``."""
    out: dict[str, Path] = {}
    if d.is_dir():
        for p in sorted(d.iterdir()):
            m = _SCEN_DIR_RE.match(p.name)
            if m and p.is_dir():
                out.setdefault(str(int(m.group(1))), p)
    return out


def _unnest(d: Path) -> Path:
    """``d`` or the folder below it that holds the scenario folders (the archive unpacks
    to ``imgs/MM-SafetyBench(imgs)/NN-Scenario/``), up to two levels down."""
    level = [d]
    for _ in range(3):
        for x in level:
            if _scenario_dirs(x):
                return x
        level = [c for x in level if x.is_dir() for c in sorted(x.iterdir()) if c.is_dir()]
    return d


def _find_imgs(src: Path, json_dir: Path) -> Path | None:
    for d in (src / "imgs", src / "data" / "imgs", json_dir / "imgs", json_dir.parent / "imgs",
              src / "MM-SafetyBench(imgs)", json_dir.parent / "MM-SafetyBench(imgs)"):
        if d.is_dir():
            return _unnest(d)
    return None


def import_mmsafetybench(src: Path, out: Path, *, name: str | None = None,
                         overwrite: bool = False, images_dir: Path | None = None,
                         variants: Iterable[str] = tuple(MMSB_VARIANTS),
                         strict_media: bool = False) -> BenchmarkManifest:
    """Import MM-SafetyBench from its root (or its ``processed_questions`` folder, or one
    scenario JSON). ``images_dir`` is the ``imgs`` folder (found automatically next to
    the JSON files or the root). ``variants`` restricts to some of
    ``text_only, sd, typo, sd_typo``. Sample ids are ``mmsb/<file stem>/<id>/<variant>``;
    ``metadata["group"]`` is ``<file stem>/<id>``.
    """
    src = require_path(src)
    variants = _check_variants(src, variants)
    files = _find_json(src)
    imgs = _unnest(Path(images_dir)) if images_dir else _find_imgs(
        src if src.is_dir() else src.parent, files[0].parent)
    scen_dirs = _scenario_dirs(imgs) if imgs else {}
    base = src if src.is_dir() else src.parent
    manifest = make_manifest(
        name=name or "mm-safetybench", importer="mmsafetybench",
        sources=[source_entry(p, base) for p in files],
        options={"variants": variants, "images_dir": str(images_dir) if images_dir else None},
        description="MM-SafetyBench: 13 scenarios, query-relevant images (SD, typography, "
                    "SD+typography) with rephrased questions",
        source="isXinLiu/MM-SafetyBench (Liu et al., 2024)",
    )
    counts = {v: 0 for v in variants}
    gaps = MediaGaps("mmsafetybench", None, dropped=True)
    with BenchmarkWriter(out, manifest, overwrite=overwrite) as w:
        for path in files:
            scenario, scen_dir = _file_scenario(path, imgs, scen_dirs)
            for item_id, item in _read_items(path).items():
                where = f"{path}: item {item_id!r}"
                question = _item_question(item, where)
                for v in variants:
                    content = _variant_content(w, gaps, path, scen_dir, item_id, item, v, question, where)
                    if content is None:
                        continue
                    w.add(_variant_sample(path, item_id, item, v, question, content, scenario, where),
                          where=where)
                    counts[v] += 1
        w.manifest.provenance["by_variant"] = counts
        _note_images(w.manifest, imgs, base, bool(gaps.rows), strict_media)
        gaps.finish(w.manifest, strict=strict_media)
    return w.manifest


def _check_variants(src: Path, variants: Iterable[str]) -> list[str]:
    """The requested variants as a list; an unknown one (or none at all) is an error."""
    variants = list(variants)
    bad = [v for v in variants if v not in MMSB_VARIANTS]
    if bad or not variants:
        raise DatasetError(f"{src}: unknown variant {bad[0] if bad else None!r} "
                           f"(choose from {', '.join(MMSB_VARIANTS)})")
    return variants


def _file_scenario(path: Path, imgs: Path | None, scen_dirs: dict[str, Path]) -> tuple[str, Path | None]:
    """A scenario file's scenario name and its image folder: ``imgs/<file stem>``, else the
    folder with the same number (the archive spells some names differently), else None."""
    m = _FILE_RE.match(path.name)
    stem = path.stem
    scenario = _scenario_name(m.group(2) if m else stem)
    scen_dir = (imgs / stem) if imgs and (imgs / stem).is_dir() else (
        scen_dirs.get(str(int(m.group(1)))) if m else None)
    return scenario, scen_dir


def _read_items(path: Path) -> dict[str, Any]:
    """The JSON object of one scenario file, keyed by item id."""
    try:
        items = orjson.loads(path.read_bytes())
    except orjson.JSONDecodeError as e:
        raise DatasetError(f"{path}: invalid JSON ({e})") from None
    if not isinstance(items, dict):
        raise DatasetError(f"{path}: expected an object keyed by item id")
    return items


def _item_question(item: Any, where: str) -> str:
    """An item's ``Question`` (an object with a non-empty ``Question`` is required)."""
    if not isinstance(item, dict):
        raise DatasetError(f"{where}: expected an object")
    question = item.get("Question")
    if not isinstance(question, str) or not question.strip():
        raise DatasetError(f"{where}: Question: missing or empty")
    return question


def _variant_content(w: BenchmarkWriter, gaps: MediaGaps, path: Path, scen_dir: Path | None,
                     item_id: str, item: dict[str, Any], v: str, question: str,
                     where: str) -> list | str | None:
    """The user turn of one variant of an item: the question (text only) or the variant's
    image and rephrased question; None when that image is missing (counted)."""
    folder, field, _ = MMSB_VARIANTS[v]
    if folder is None:
        return question
    img = (scen_dir / folder / f"{item_id}.jpg") if scen_dir else None
    ok = img is not None and img.is_file()
    gaps.row("image", ok, f"{where}: {folder}/{item_id}.jpg")
    if not ok:
        return None
    assert img is not None
    text = item.get(field)
    if not isinstance(text, str) or not text.strip():
        raise DatasetError(f"{where}: {field}: missing or empty")
    part = w.add_image(img, where=where, name=f"{path.stem}/{folder}/{img.name}")
    return [part, TextPart(text=text)]


def _variant_sample(path: Path, item_id: str, item: dict[str, Any], v: str, question: str,
                    content: list | str, scenario: str, where: str) -> Sample:
    """The sample of one variant of an item (a validation error names the item)."""
    group = f"{path.stem}/{item_id}"
    try:
        return Sample(
            id=f"mmsb/{group}/{v}", question=question,
            messages=[Message(role="user", content=content)],
            scenario=scenario, method=MMSB_VARIANTS[v][2], source="mm-safetybench",
            metadata={"group": group, "variant": v, "key_phrase": item.get("Key Phrase")},
            provenance={"file": path.name, "item": item_id},
        )
    except ValidationError as e:
        raise DatasetError(f"{where}: {describe_validation_error(e)}") from None


def _note_images(manifest: BenchmarkManifest, imgs: Path | None, base: Path, any_image_rows: bool,
                 strict_media: bool) -> None:
    """Record the image folder used, or note that none was found while images were wanted."""
    if imgs is not None:
        manifest.provenance["images_dir"] = (imgs.relative_to(base).as_posix()
                                             if imgs.is_relative_to(base) else str(imgs))
    if imgs is None and any_image_rows and not strict_media:
        manifest.provenance.setdefault("notes", []).append(
            "mmsafetybench: no imgs/ folder found beside the questions or the root (unzip "
            "MM-SafetyBench(imgs).zip into data/imgs/, or --opt images_dir=PATH)")
