"""ML-VLSU importer: vision-language safety understanding (Palaskar et al., 2025; github.com/apple/ml-vlsu).

Published layout::

    data/VLSU.csv     prompt, image_grade, consensus_text_grade, consensus_combined_grade,
                      image_category, text_category, combined_category, web_path, uuid

The repository publishes **no images**: ``web_path`` is the image's web address. mmsafe never
fetches it (a run must not depend on, or leak prompts to, third-party hosts). Images you
downloaded yourself (ML-VLSU's ``utils/`` scripts) are looked up in ``images_dir``, else in
``images/`` beside the CSV, ``data/images/`` and ``images/`` at the root, as
``<uuid>.<ext>`` or under the file name at the end of ``web_path``. A row without a local
image is skipped and counted as missing media (the pair's meaning is compositional: the
text alone says little); ``strict_media`` makes it an error, and an import where no row
has its image is refused with what to do.

``consensus_combined_grade`` decides the role of a row: ``unsafe`` and ``borderline`` rows
are harmful samples; ``safe`` rows are **controls** (``metadata.control``: refusing them is
over-refusal, reported apart from the ASR); ``not_sure`` rows are left out and counted
(``grades`` changes which grades are imported as harmful, e.g. ``unsafe`` only). Scenario is
``combined_category``; the three grades, the categories, ``web_path`` and the severity
pattern ``{image}_{text}_{combined}`` go to ``metadata``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlparse

from mmsafe.types import BenchmarkManifest, Message, TextPart

from ..benchmark import BenchmarkWriter
from ..errors import DatasetError
from ._common import MediaGaps, csv_rows, first_existing, make_manifest, require_path, source_entry
from ._published import IMAGE_EXTS, as_list, make_sample, require_some_media

__all__ = ["import_mlvlsu", "VLSU_GRADES"]

VLSU_GRADES = ("safe", "unsafe", "borderline", "not_sure")
_REQUIRED = ("prompt", "web_path", "uuid", "image_grade", "consensus_text_grade", "consensus_combined_grade")


def _local_image(dirs: list[Path], uid: str, web_path: str) -> Path | None:
    names = [uid + ext for ext in IMAGE_EXTS]
    base = Path(unquote(urlparse(web_path).path)).name if web_path else ""
    if base and base not in (".", ".."):
        names.append(base)
    for d in dirs:
        for n in names:
            p = d / n
            if p.is_file():
                return p
    return None


def _row(w: BenchmarkWriter, path: Path, line: int, row: dict[str, str], harmful: set[str],
         img_dirs: list[Path], gaps: MediaGaps) -> str | None:
    """Add one VLSU.csv row; return its role (``harmful``/``control``), the grade it was
    left out for, or None when its image is missing."""
    where = f"{path}:{line}"
    g = {k: row[k].strip().lower() for k in ("image_grade", "consensus_text_grade", "consensus_combined_grade")}
    for k, v in g.items():
        if v not in VLSU_GRADES:
            raise DatasetError(f"{where}: {k}: {row[k]!r} is not a grade ({', '.join(VLSU_GRADES)})")
    prompt, uid, web = row["prompt"], row["uuid"].strip(), row["web_path"].strip()
    if not prompt.strip():
        raise DatasetError(f"{where}: prompt: empty")
    if not uid:
        raise DatasetError(f"{where}: uuid: empty")
    cg = g["consensus_combined_grade"]
    control = cg == "safe"
    if not control and cg not in harmful:
        return cg
    found = _local_image(img_dirs, uid, web)
    gaps.row("image", found is not None, where)
    if found is None:
        return None
    part = w.add_image(found, where=where, name=found.name)
    meta: dict[str, Any] = {
        "group": f"mlvlsu/{uid}", "image_grade": g["image_grade"], "text_grade": g["consensus_text_grade"],
        "combined_grade": cg, "pattern": "_".join(g.values()), "web_path": web or None,
        **{k: row[k].strip() for k in ("image_category", "text_category") if (row.get(k) or "").strip()},
        **({"control": True, "benign": True} if control else {})}
    w.add(make_sample(where, id=f"mlvlsu/{uid}", question=prompt.strip(),
                      messages=[Message(role="user", content=[part, TextPart(text=prompt)])],
                      scenario=(row.get("combined_category") or "").strip() or "unspecified",
                      source="ml-vlsu", metadata=meta, provenance={"file": path.name, "line": line}), where=where)
    return "control" if control else "harmful"


def import_mlvlsu(src: Path, out: Path, *, name: str | None = None, overwrite: bool = False,
                  images_dir: Path | None = None, grades: list[str] | str | None = None,
                  strict_media: bool = False) -> BenchmarkManifest:
    """Import ML-VLSU's ``VLSU.csv`` with locally downloaded images (see the module doc)."""
    src = require_path(src)
    path = src if src.is_file() else first_existing((src / "data" / "VLSU.csv", src / "VLSU.csv"), kind="file")
    if path is None:
        raise DatasetError(f"{src}: no VLSU.csv here or in data/ (the ml-vlsu repository keeps it in data/)")
    harmful = set(as_list(grades) or ["unsafe", "borderline"])
    bad = sorted(g for g in harmful if g not in VLSU_GRADES or g == "safe")
    if bad:
        raise DatasetError(f"{src}: option grades={bad[0]!r}: expected unsafe, borderline and/or not_sure "
                           "(safe rows are always controls)")
    root = src if src.is_dir() else path.parent
    img_dirs = [Path(images_dir)] if images_dir else [
        d for d in (path.parent / "images", root / "data" / "images", root / "images") if d.is_dir()]
    manifest = make_manifest(
        name=name or "ml-vlsu", importer="mlvlsu", sources=[source_entry(path, src if src.is_dir() else None)],
        options={"images_dir": str(images_dir) if images_dir else None, "grades": sorted(harmful)},
        description="ML-VLSU: image-text pairs graded for image, text and joint safety (15 harm categories); "
                    "safe pairs are over-refusal controls",
        source="apple/ml-vlsu (Palaskar et al., 2025)", licence="CC BY-NC-ND 4.0")
    gaps = MediaGaps("mlvlsu", None, dropped=True)
    left_out: dict[str, int] = {}
    roles = {"harmful": 0, "control": 0}
    with BenchmarkWriter(out, manifest, overwrite=overwrite) as w:
        for line, row in csv_rows(path, required=_REQUIRED):
            role = _row(w, path, line, row, harmful, img_dirs, gaps)
            if role in roles:
                roles[role] += 1
            elif role is not None:
                left_out[role] = left_out.get(role, 0) + 1
        w.manifest.provenance["roles"] = roles
        if left_out:
            w.manifest.provenance["left_out_grades"] = left_out
            w.manifest.provenance.setdefault("notes", []).append(
                "mlvlsu: left out " + ", ".join(f"{n} {k} rows" for k, n in sorted(left_out.items()))
                + " (consensus_combined_grade; --opt grades=… imports them as harmful)")
        if not strict_media:
            require_some_media(len(w), gaps, src, img_dirs or [path.parent / "images"],
                               "ML-VLSU publishes web_path URLs, which mmsafe does not fetch: download the images "
                               "(the repository's utils/ scripts) into images/ beside VLSU.csv as <uuid>.<ext>, "
                               "or give --opt images_dir=PATH")
        gaps.finish(w.manifest, strict=strict_media)
    return w.manifest
