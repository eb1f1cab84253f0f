"""JailBreakV-28K importer (Luo et al., 2024; huggingface.co/datasets/JailbreakV-28K/JailBreakV-28k).

Published layout (the Hugging Face dataset repository)::

    JailBreakV_28K/JailBreakV_28K.csv        28,000 jailbreak text-image pairs
    JailBreakV_28K/mini_JailBreakV_28K.csv   the 280-row mini split
    JailBreakV_28K/RedTeam_2K.csv            the 2,000 underlying harmful queries (text only)
    JailBreakV_28K/<image folders>/…         llm_transfer_attack/, query_related/, figstep/, …

The pair CSVs have ``id, jailbreak_query, redteam_query, format, policy, image_path, from,
selected_mini, transfer_from_llm`` (older copies: ``transfer_attack_type``); ``image_path``
is relative to the CSV's folder. ``src`` may be the repository root, ``JailBreakV_28K/`` or
one CSV. ``split`` picks ``full`` (default when present), ``mini`` or ``redteam``. Earlier
revisions kept the CSVs and image folders at the repository root (garak's probe fetches
``<root>/<image_path>``); images are looked up beside the CSV, then one folder up.

Each row becomes one sample: the image, then ``jailbreak_query`` (the attack as sent);
``question`` is ``redteam_query`` (the underlying request, which judges read), scenario
``policy``, method ``format`` (``Template``, ``Persuade``, ``Logic``, ``figstep``, ``SD``,
``typo``, ``SD_typo``…). The jailbreak text is a request on its own, so a row whose image
is missing is imported text-only and reported (``only_with_images`` skips it,
``strict_media`` makes it an error).
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Any

from mmsafe.types import BenchmarkManifest, ImagePart, Message, Sample, TextPart

from ..benchmark import BenchmarkWriter
from ..errors import DatasetError
from ._common import MediaGaps, csv_rows, first_existing, make_manifest, require_path, source_entry
from ._published import as_list, find_media, make_sample, short_hash

__all__ = ["import_jailbreakv", "JAILBREAKV_FILES"]

JAILBREAKV_FILES = {"full": "JailBreakV_28K.csv", "mini": "mini_JailBreakV_28K.csv", "redteam": "RedTeam_2K.csv"}
_PAIR_COLUMNS = ("jailbreak_query", "redteam_query", "format", "policy", "image_path")


def jailbreakv_csv(src: Path, split: str | None) -> tuple[Path, str]:
    """The CSV to import and its split, from the repository root, ``JailBreakV_28K/`` or a file."""
    if src.is_file():
        low = src.name.lower()
        return src, split or ("mini" if low.startswith("mini") else "redteam" if "redteam" in low else "full")
    if split is not None and split not in JAILBREAKV_FILES:
        raise DatasetError(f"{src}: option split={split!r}: expected one of {', '.join(JAILBREAKV_FILES)}")
    order = [split] if split else ["full", "mini"]
    for sp in order:
        found = first_existing((d / JAILBREAKV_FILES[sp] for d in (src / "JailBreakV_28K", src)), kind="file")
        if found is not None:
            return found, sp
    names = " or ".join(JAILBREAKV_FILES[sp] for sp in order)
    raise DatasetError(f"{src}: no {names} here or in JailBreakV_28K/ (the dataset repository keeps them "
                       "in JailBreakV_28K/)")


def import_jailbreakv(src: Path, out: Path, *, name: str | None = None, overwrite: bool = False,
                      split: str | None = None, images_dir: Path | None = None,
                      formats: Iterable[str] | str | None = None, policies: Iterable[str] | str | None = None,
                      only_with_images: bool = False, strict_media: bool = False) -> BenchmarkManifest:
    """Import JailBreakV-28K (see the module doc). ``formats``/``policies`` keep only those
    values (comma-separated or a list); images are looked up in ``images_dir`` (default:
    the CSV's folder, where ``image_path`` points)."""
    src = require_path(src)
    csv_path, sp = jailbreakv_csv(src, split)
    keep_formats = set(as_list(formats) or ()) or None
    keep_policies = set(as_list(policies) or ()) or None
    img_dirs = [Path(images_dir)] if images_dir else (
        [csv_path.parent, csv_path.parent.parent] if csv_path.parent.name == "JailBreakV_28K" else [csv_path.parent])
    manifest = make_manifest(
        name=name or ("jailbreakv-28k" if sp == "full" else f"jailbreakv-28k-{sp}"), importer="jailbreakv",
        sources=[source_entry(csv_path, src if src.is_dir() else None)],
        options={"split": sp, "images_dir": str(images_dir) if images_dir else None,
                 "formats": sorted(keep_formats) if keep_formats else None,
                 "policies": sorted(keep_policies) if keep_policies else None,
                 "only_with_images": only_with_images or None},
        description="JailBreakV-28K: LLM-transfer and image-based jailbreaks of 2,000 RedTeam-2K queries "
                    "across 16 policies",
        source="JailbreakV-28K/JailBreakV-28k (Luo et al., 2024)", licence="MIT")
    gaps = MediaGaps("jailbreakv", "only_with_images", dropped=only_with_images)
    with BenchmarkWriter(out, manifest, overwrite=overwrite) as w:
        if sp == "redteam":
            _redteam(w, csv_path, keep_policies)
        else:
            cache: dict[str, ImagePart] = {}
            for line, row in csv_rows(csv_path, required=_PAIR_COLUMNS):
                fmt, policy = row["format"].strip(), row["policy"].strip()
                if (keep_formats and fmt not in keep_formats) or (keep_policies and policy not in keep_policies):
                    continue
                sample = _pair(w, csv_path, line, row, sp, img_dirs, gaps, cache, only_with_images)
                if sample is not None:
                    w.add(sample, where=f"{csv_path}:{line}")
        gaps.finish(w.manifest, strict=strict_media)
    return w.manifest


def _redteam(w: BenchmarkWriter, csv_path: Path, keep_policies: set[str] | None) -> None:
    """RedTeam-2K: ``id, question, policy, from``, text only."""
    for line, row in csv_rows(csv_path, required=("question", "policy")):
        where = f"{csv_path}:{line}"
        q = row["question"].strip()
        if not q:
            raise DatasetError(f"{where}: question: empty")
        policy = row["policy"].strip()
        if keep_policies and policy not in keep_policies:
            continue
        rid = (row.get("id") or "").strip() or str(line - 1)
        sid = f"jailbreakv/redteam/{rid}"
        w.add(make_sample(where, id=sid, question=q, messages=[Message(role="user", content=q)],
                          scenario=policy or "unspecified", source="jailbreakv-28k",
                          metadata={"group": f"jailbreakv/{short_hash(q)}", "split": "redteam",
                                    "origin": (row.get("from") or "").strip() or None},
                          provenance={"file": csv_path.name, "line": line}), where=where)


def _pair(w: BenchmarkWriter, csv_path: Path, line: int, row: dict[str, str], sp: str, img_dirs: list[Path],
          gaps: MediaGaps, cache: dict[str, ImagePart], only_with_images: bool) -> Sample | None:
    where = f"{csv_path}:{line}"
    jb, rq = row["jailbreak_query"], row["redteam_query"].strip()
    if not jb.strip():
        raise DatasetError(f"{where}: jailbreak_query: empty")
    if not rq:
        raise DatasetError(f"{where}: redteam_query: empty")
    fmt, policy, image = row["format"].strip(), row["policy"].strip(), row["image_path"].strip()
    rid = (row.get("id") or "").strip() or str(line - 1)
    content: str | list = jb
    if image:
        if image not in cache:
            found = find_media(img_dirs, image, f"{where}: image_path")
            if found is not None:
                cache[image] = w.add_image(found, where=where, name=image)
        gaps.row("image", image in cache, where)
        if image in cache:
            content = [cache[image], TextPart(text=jb)]
        elif only_with_images:
            return None
    meta: dict[str, Any] = {"group": f"jailbreakv/{short_hash(rq)}", "split": sp, "format": fmt or None,
            "origin": (row.get("from") or "").strip() or None, "image_path": image or None}
    for col in ("selected_mini", "transfer_from_llm", "transfer_attack_type"):
        v = (row.get(col) or "").strip()
        if v:
            meta[col] = {"true": True, "false": False}.get(v.lower(), v)
    return make_sample(where, id=f"jailbreakv/{rid}", question=rq, messages=[Message(role="user", content=content)],
                       scenario=policy or "unspecified", method=fmt or None, source="jailbreakv-28k",
                       metadata=meta, provenance={"file": csv_path.name, "line": line})
