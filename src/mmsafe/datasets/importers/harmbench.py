"""HarmBench and JailbreakBench behaviour-CSV importers.

HarmBench (github.com/centerforaisafety/HarmBench): ``data/behavior_datasets/*.csv``
(``Behavior, FunctionalCategory, SemanticCategory, Tags, ContextString, BehaviorID``;
the multimodal CSV has ``Behavior, BehaviorID, FunctionalCategory, SemanticCategory,
ImageFileName, Source, ImageDescription, RedactedImageDescription, Tags``) with the
images in the sibling ``data/multimodal_behavior_images/`` (stored as ``.png`` even
where ``ImageFileName`` says ``.jpg``). ``src`` may be the repository root, ``data/``,
``behavior_datasets/`` (every ``*_all.csv``, or ``files``) or one CSV. A contextual
behaviour puts its context before the behaviour in the user turn, separated as
HarmBench itself does (``context\\n\\n---\\n\\nbehaviour``); a multimodal behaviour puts
its image before the text. Text is kept as published (no whitespace stripping).
Scenario is ``SemanticCategory``; sample id and group are ``BehaviorID``; the image
descriptions are kept in ``metadata`` (``image_description``,
``redacted_image_description``: HarmBench's classifier reads the redacted one as the
context of a multimodal behaviour, so a text-only judge can use it).

JailbreakBench JBB-Behaviors (``Index, Goal, Target, Behavior, Category, Source``, the
harmful or the benign CSV; older copies have an unnamed pandas index column instead of
``Index``, and some a lower-case header): the user turn is ``Goal``; scenario is
``Category``.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

from pydantic import ValidationError

from mmsafe.types import BenchmarkManifest, Message, Sample, TextPart

from ..benchmark import BenchmarkWriter
from ..errors import DatasetError, describe_validation_error
from ._common import (
    MediaGaps,
    csv_rows,
    first_existing,
    make_manifest,
    read_csv_header,
    require_path,
    resolve_inside,
    source_entry,
)

__all__ = ["import_harmbench", "import_jbb", "HARMBENCH_CONTEXT_SEPARATOR"]

HARMBENCH_CONTEXT_SEPARATOR = "\n\n---\n\n"


def _sample(where: str, **fields) -> Sample:
    try:
        return Sample(**fields)
    except ValidationError as e:
        raise DatasetError(f"{where}: {describe_validation_error(e)}") from None


_IMG_EXTS = (".png", ".jpg", ".jpeg", ".webp", ".gif")


def harmbench_csvs(src: Path, files: Iterable[str] | None = None) -> list[Path]:
    """The behaviour CSVs to import from a HarmBench checkout, ``data/``,
    ``behavior_datasets/`` or a CSV: ``files`` by name, else every ``*_all.csv``, else
    every CSV with ``Behavior`` and ``BehaviorID`` columns."""
    if src.is_file():
        return [src]
    d = first_existing((src / "data" / "behavior_datasets", src / "behavior_datasets", src))
    assert d is not None
    if files is not None:
        wanted = [d / f for f in files]
        missing = [p for p in wanted if not p.is_file()]
        if missing:
            raise DatasetError(f"{missing[0]}: not found (option files)")
        return wanted
    all_csvs = sorted(d.glob("*_all.csv"))
    if all_csvs:
        return all_csvs
    shaped = [p for p in sorted(d.glob("*.csv"))
              if {"Behavior", "BehaviorID"} <= set(read_csv_header(p))]
    if not shaped:
        raise DatasetError(f"{src}: no HarmBench behaviour CSVs here, in behavior_datasets/ or "
                           "in data/behavior_datasets/")
    return shaped


def harmbench_image_dirs(csv_path: Path) -> list[Path]:
    """Where ``ImageFileName`` is looked up: ``multimodal_behavior_images/`` beside the
    CSV or beside its folder (the published layout), then the CSV's folder."""
    return [d for d in (csv_path.parent / "multimodal_behavior_images",
                        csv_path.parent.parent / "multimodal_behavior_images", csv_path.parent)
            if d.is_dir()]


def _find_harmbench_image(dirs: list[Path], name: str, where: str) -> Path | None:
    for d in dirs:
        p = resolve_inside(d, name, where)
        if p.is_file():
            return p
        stem = p.with_suffix("")
        for ext in _IMG_EXTS:  # the release stores every image as .png whatever the name says
            q = stem.with_suffix(ext)
            if q.is_file():
                return q
    return None


def import_harmbench(src: Path, out: Path, *, name: str | None = None, overwrite: bool = False,
                     images_dir: Path | None = None,
                     functional_categories: Iterable[str] | None = None,
                     files: Iterable[str] | None = None, only_with_images: bool = False,
                     strict_media: bool = False) -> BenchmarkManifest:
    """Import HarmBench behaviours (text and/or multimodal) from the repository root,
    ``data/``, ``data/behavior_datasets/`` or one CSV (see the module doc).

    Images named by ``ImageFileName`` are looked up in ``images_dir`` (default:
    :func:`harmbench_image_dirs`). A row whose image is missing is imported text-only
    and reported (``only_with_images`` skips it, ``strict_media`` makes it an error).
    ``functional_categories`` keeps only those (e.g. ``["standard", "contextual"]``);
    ``files`` picks CSVs of a ``behavior_datasets`` folder by name.
    """
    src = require_path(src)
    csvs = harmbench_csvs(src, list(files) if files is not None else None)
    headers = {p: read_csv_header(p) for p in csvs}
    multimodal = any("ImageFileName" in h for h in headers.values())
    text = any("ImageFileName" not in h for h in headers.values())
    keep = {c.strip() for c in functional_categories} if functional_categories else None
    base = src if src.is_dir() else None
    manifest = make_manifest(
        name=name or ("harmbench-multimodal" if multimodal and not text else "harmbench"),
        importer="harmbench", sources=[source_entry(p, base) for p in csvs],
        options={"functional_categories": sorted(keep) if keep else None,
                 "images_dir": str(images_dir) if images_dir else None,
                 "files": list(files) if files is not None else None,
                 "only_with_images": only_with_images or None},
        description="HarmBench behaviours (Mazeika et al., 2024)",
        source="centerforaisafety/HarmBench", licence="MIT",
    )
    gaps = MediaGaps("harmbench", "only_with_images", dropped=only_with_images)
    with BenchmarkWriter(out, manifest, overwrite=overwrite) as w:
        for path in csvs:
            img_dirs = [Path(images_dir)] if images_dir else harmbench_image_dirs(path)
            for line, row in csv_rows(path, required=("Behavior", "BehaviorID")):
                sample = _harmbench_row(w, path, line, row, keep, img_dirs, gaps, only_with_images)
                if sample is not None:
                    w.add(sample, where=f"{path}:{line}")
        gaps.finish(w.manifest, strict=strict_media)
    return w.manifest


def _harmbench_row(w: BenchmarkWriter, path: Path, line: int, row: dict[str, str],
                   keep: set[str] | None, img_dirs: list[Path], gaps: MediaGaps,
                   only_with_images: bool) -> Sample | None:
    where = f"{path}:{line}"
    fc = row.get("FunctionalCategory", "").strip()
    if keep is not None and fc not in keep:
        return None
    behavior, bid = row["Behavior"], row["BehaviorID"].strip()
    if not behavior.strip():
        raise DatasetError(f"{where}: Behavior: empty")
    if not bid:
        raise DatasetError(f"{where}: BehaviorID: empty")
    context = row.get("ContextString", "")
    has_context = bool(context.strip())
    text = f"{context}{HARMBENCH_CONTEXT_SEPARATOR}{behavior}" if has_context else behavior
    content: list | str = text
    image = row.get("ImageFileName", "").strip()
    meta: dict = {"group": bid, "functional_category": fc or None,
                  "tags": [t.strip() for t in row.get("Tags", "").split(",") if t.strip()]}
    if has_context:
        meta["has_context"] = True
    if image:
        found = _find_harmbench_image(img_dirs, image, f"{where}: ImageFileName")
        gaps.row("image", found is not None, where)
        if found is not None:
            content = [w.add_image(found, where=where, name=image), TextPart(text=text)]
        elif only_with_images:
            return None
        meta["image_file"] = image
    for col, key in (("ImageDescription", "image_description"),
                     ("RedactedImageDescription", "redacted_image_description"),
                     ("Source", "image_source")):
        if row.get(col):
            meta[key] = row[col]
    return _sample(where, id=bid, question=behavior,
                   messages=[Message(role="user", content=content)],
                   scenario=row.get("SemanticCategory", "").strip() or "unspecified",
                   source="harmbench", metadata=meta,
                   provenance={"file": path.name, "line": line})


_JBB_COLUMNS = ("Index", "Goal", "Target", "Behavior", "Category", "Source")


def _jbb_rows(path: Path):
    """``(n, line, row, index)`` of a JBB-Behaviors CSV under any of its published headers:
    ``Index,Goal,...``, the older ``,Goal,...`` (an unnamed 0-based pandas index: the
    official Index is that + 1) or a lower-case copy. Column names are matched
    case-insensitively and returned in the official spelling."""
    header = read_csv_header(path)
    canon = {c.lower(): c for c in _JBB_COLUMNS}
    names = [canon.get(h.lower(), h) for h in header]
    if "Goal" not in names:
        raise DatasetError(f"{path}: missing required column 'Goal' (columns: {', '.join(header)})")
    unnamed = bool(header) and header[0] == "" and "Index" not in names
    offset: int | None = None
    for n, (line, raw) in enumerate(csv_rows(path), 1):
        row = {names[header.index(k)]: v for k, v in raw.items() if k in header}
        if unnamed:
            cell = raw.get("", "").strip()
            if not cell.lstrip("-").isdigit():
                raise DatasetError(f"{path}:{line}: (unnamed index column): {cell!r} is not an integer")
            if offset is None:  # a 0-based pandas index becomes the official 1-based Index
                offset = 1 if int(cell) == 0 else 0
            row["Index"] = str(int(cell) + offset)
        yield n, line, row, offset


def import_jbb(src: Path, out: Path, *, name: str | None = None, overwrite: bool = False,
               split: str | None = None, strict_media: bool = False) -> BenchmarkManifest:
    """Import JailbreakBench's JBB-Behaviors: a CSV, or a directory of them (e.g.
    ``harmful-behaviors.csv`` and ``benign-behaviors.csv``; also ``data/`` below it).

    ``split`` (``harmful``/``benign``) defaults to ``benign`` when the file name says so,
    else ``harmful``; it prefixes the id (``jbb/harmful/1``) and is recorded in metadata
    together with ``target``, ``behavior`` and the behaviour's ``origin`` (JBB ``Source``).
    Ids follow the official 1-based ``Index`` whichever header the file has.
    ``strict_media`` is accepted for uniformity (JBB has no media).
    """
    src = require_path(src)
    files = _jbb_files(src)
    base = src if src.is_dir() else None
    manifest = make_manifest(
        name=name or "jailbreakbench", importer="jbb",
        sources=[source_entry(p, base) for p in files], options={"split": split},
        description="JailbreakBench JBB-Behaviors (Chao et al., 2024)",
        source="JailbreakBench/jailbreakbench (JBB-Behaviors)", licence="MIT",
    )
    index_shift: dict[str, int] = {}
    with BenchmarkWriter(out, manifest, overwrite=overwrite) as w:
        for path in files:
            sp = split or ("benign" if "benign" in path.stem.lower() else "harmful")
            for n, line, row, offset in _jbb_rows(path):
                where = f"{path}:{line}"
                if offset is not None:
                    index_shift[path.name] = offset
                w.add(_jbb_sample(path, line, n, row, sp), where=where)
        if index_shift:
            w.manifest.provenance["unnamed_index_shift"] = index_shift
    return w.manifest


def _jbb_files(src: Path) -> list[Path]:
    """The CSVs to import: ``src`` itself, or every ``*.csv`` in the folder (or its ``data/``)."""
    if src.is_dir():
        d = next((x for x in (src, src / "data") if x.is_dir() and any(x.glob("*.csv"))), src)
        files = sorted(d.glob("*.csv"))
    else:
        files = [src]
    if not files:
        raise DatasetError(f"{src}: no CSV files")
    return files


def _jbb_sample(path: Path, line: int, n: int, row: dict[str, str], sp: str) -> Sample:
    """One JBB behaviour as a sample: the user turn is ``Goal`` (required), the id follows
    ``Index`` (else the row number), and a benign split marks the sample a control."""
    where = f"{path}:{line}"
    goal = row["Goal"].strip()
    if not goal:
        raise DatasetError(f"{where}: Goal: empty")
    idx = (row.get("Index") or "").strip() or str(n)
    sid = f"jbb/{sp}/{idx}"

    def cell(col: str) -> str | None:
        return (row.get(col) or "").strip() or None

    return _sample(where, id=sid, question=goal,
                   messages=[Message(role="user", content=goal)],
                   scenario=cell("Category") or "unspecified",
                   source="jailbreakbench",
                   metadata={"group": sid, "split": sp, "benign": sp == "benign",
                             **({"control": "benign"} if sp == "benign" else {}),
                             "behavior": cell("Behavior"),
                             "target": cell("Target"),
                             "origin": cell("Source")},
                   provenance={"file": path.name, "line": line})
