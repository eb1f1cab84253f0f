"""SafeMT importer: ``N_turn.json`` files of multi-turn dialogues with one image.

Published layout (github.com/Happy-Corpse/SafeMT): ``Data/{1,2,4}_turn.json`` with the
images under ``Data/images/<scenario>/``; ``src`` may be the repository root, ``Data/``
or one ``N_turn.json``. Each file is a JSON list of ``{"id", "scenario", "image_path",
"dialogue": [{"role", "content"}...]}`` (older releases add ``"question"``); the
dialogue has N user turns and N-1 assistant turns and ends with a user turn. Several
files become one benchmark: sample id ``f"{id}/t{N}"``, ``turns=N``,
``metadata["group"] = id``. The image, resolved relative to the JSON file's directory,
is attached to the first user turn before its text.

The underlying request (``Sample.question``) is the record's ``question`` field when
present, else the 1-turn dialogue of the same group when that dialogue is aligned with
this one, else the last user turn; ``metadata["question_source"]`` says which.

Alignment across lengths (see :mod:`._align`): each longer dialogue is checked against
its group's 1-turn record (text similarity, scenario, image). ``metadata["si_aligned"]``
and ``metadata["si_group"]`` carry the result (a misaligned dialogue gets its own
``si_group``), and ``provenance["alignment"]`` lists the misaligned groups; the Safety
Index groups by them by default (:func:`mmsafe.metrics.safety_index`, ``grouping``).
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
from ._align import (
    DEFAULT_MARGIN,
    DEFAULT_MIN_SIM,
    AlignmentItem,
    AlignmentResult,
    alignment_block,
    check_alignment,
)
from ._common import (
    MediaGaps,
    asset_from_ref,
    make_manifest,
    require_path,
    resolve_inside,
    source_entry,
)

__all__ = ["import_safemt", "SAFEMT_SCENARIOS", "safemt_files"]

SAFEMT_SCENARIOS = [
    "Illegal Activity", "Violence", "Hate Speech", "Malware", "Physical Harm", "Economic Harm",
    "Fraud", "Sex", "Political", "Privacy Violation", "Legal Opinion", "Financial Advice",
    "Health Consultation", "Animal Abuse", "Bias", "Threat", "Satire",
]

_FILE_RE = re.compile(r"^(\d+)_turn\.json$")
_KNOWN_KEYS = {"id", "scenario", "image_path", "dialogue", "question", "category", "method"}
_DATA_DIRS = ("Data", "data")


def safemt_files(src: Path) -> list[tuple[int, Path]]:
    """The ``(N, path)`` pairs of a SafeMT directory (the repository root, its ``Data/``
    folder or any folder of ``N_turn.json`` files) or of a single ``N_turn.json``, by N."""
    if src.is_dir():
        for d in (src, *(src / sub for sub in _DATA_DIRS)):
            if not d.is_dir():
                continue
            found = sorted((int(m.group(1)), p) for p in d.iterdir()
                           if p.is_file() and (m := _FILE_RE.match(p.name)))
            if found:
                return found
        raise DatasetError(f"{src}: no SafeMT files (N_turn.json) in this directory or its Data/")
    m = _FILE_RE.match(src.name)
    if not m:
        raise DatasetError(f"{src}: not a SafeMT file (expected a name like 4_turn.json)")
    return [(int(m.group(1)), src)]


class _Record:
    """One validated SafeMT record (before it becomes a Sample)."""

    __slots__ = ("i", "image", "messages", "n", "path", "rec", "rid", "scenario")

    def __init__(self, n: int, path: Path, i: int, rid: str, scenario: str | None,
                 image: str | None, messages: list[Message], rec: dict[str, Any]):
        self.n, self.path, self.i, self.rid = n, path, i, rid
        self.scenario, self.image, self.messages, self.rec = scenario, image, messages, rec

    @property
    def sid(self) -> str:
        return f"{self.rid}/t{self.n}"

    @property
    def where(self) -> str:
        return f"{self.path}: record {self.i} (id={self.rid!r})"

    def user_text(self) -> str:
        return "\n".join(m.text for m in self.messages if m.role == "user")


def _load(path: Path) -> list[Any]:
    try:
        records = orjson.loads(path.read_bytes())
    except orjson.JSONDecodeError as e:
        raise DatasetError(f"{path}: invalid JSON ({e})") from None
    except OSError as e:
        raise DatasetError(f"{path}: cannot read ({e.strerror})") from None
    if not isinstance(records, list):
        raise DatasetError(f"{path}: expected a JSON list of records, got {type(records).__name__}")
    return records


def import_safemt(src: Path, out: Path, *, name: str | None = None, overwrite: bool = False,
                  lengths: Iterable[int] | None = None,
                  images_dir: Path | None = None, only_with_images: bool = False,
                  strict_media: bool = False,
                  align_margin: float = DEFAULT_MARGIN,
                  align_min_similarity: float = DEFAULT_MIN_SIM) -> BenchmarkManifest:
    """Import SafeMT ``N_turn.json`` files (the repository root, ``Data/``, or one file).

    Options: ``lengths`` keeps only those N; ``images_dir`` resolves ``image_path``
    against another directory than the JSON file's (paths may not escape it). A record
    whose image file is missing is imported without it and counted (one line in
    ``provenance["notes"]``); ``only_with_images`` skips such records instead and
    ``strict_media`` makes them an error. ``align_margin``/``align_min_similarity``
    tune the cross-length alignment check (see the module doc).
    Raises :class:`DatasetError` naming the file and record index for a malformed
    record, e.g. a dialogue that does not end with a user turn.
    """
    src = require_path(src)
    all_files = safemt_files(src)
    files = _select_lengths(src, all_files, lengths)
    # the 1-turn file is the reference for questions and alignment, even when not imported
    ref_file = _reference_file(src, all_files)
    manifest = make_manifest(
        name=name or "safemt", importer="safemt",
        sources=[source_entry(p, src if src.is_dir() else src.parent) for _, p in files],
        options={"lengths": sorted(n for n, _ in files),
                 "images_dir": str(images_dir) if images_dir else None,
                 "only_with_images": only_with_images or None,
                 "align_margin": align_margin if align_margin != DEFAULT_MARGIN else None,
                 "align_min_similarity": (align_min_similarity
                                          if align_min_similarity != DEFAULT_MIN_SIM else None)},
        description="SafeMT multi-turn multimodal safety dialogues "
                    f"(turn counts {', '.join(str(n) for n, _ in files)})",
        source="SafeMT (Zhu et al., ACL 2026)",
    )
    loaded = [_parse_record(rec, n, path, i) for n, path in files for i, rec in enumerate(_load(path))]
    refs = _references(loaded, files, ref_file)
    # alignment of every longer dialogue with its group's 1-turn record
    items = [AlignmentItem(sample_id=r.sid, group=r.rid, turns=r.n, text=r.user_text(),
                           scenario=r.scenario, image=r.image) for r in loaded if r.n != 1]
    result = None
    if refs and items:
        result = check_alignment({g: (r.messages[-1].text, r.scenario, r.image)
                                  for g, r in refs.items()}, items,
                                 margin=align_margin, min_sim=align_min_similarity)
    gaps = MediaGaps("safemt", "only_with_images", dropped=only_with_images)
    with BenchmarkWriter(out, manifest, overwrite=overwrite) as w:
        qsources = _write_samples(w, loaded, refs, result, gaps, images_dir, only_with_images)
        gaps.finish(w.manifest, strict=strict_media)
        w.manifest.provenance["question_source"] = qsources
        if result is not None:
            _record_alignment(w.manifest, alignment_block(result, items, margin=align_margin,
                                                          min_sim=align_min_similarity,
                                                          n_reference=len(refs)))
        elif ref_file is None:
            w.manifest.provenance["alignment"] = {"method": None,
                                                  "note": "no 1_turn.json: alignment not checked"}
    return w.manifest


def _select_lengths(src: Path, files: list[tuple[int, Path]],
                    lengths: Iterable[int] | None) -> list[tuple[int, Path]]:
    """The files of the requested lengths (all when ``lengths`` is None); none left is an error."""
    if lengths is None:
        return files
    keep = {int(n) for n in lengths}
    kept = [(n, p) for n, p in files if n in keep]
    if not kept:
        raise DatasetError(f"{src}: none of the lengths {sorted(keep)} are present")
    return kept


def _reference_file(src: Path, all_files: list[tuple[int, Path]]) -> Path | None:
    """The 1-turn file: among the source's files, else (for one file given) its sibling."""
    ref_file = next((p for n, p in all_files if n == 1), None)
    if ref_file is None and src.is_file():
        sib = src.parent / "1_turn.json"
        ref_file = sib if sib.is_file() else None
    return ref_file


def _references(loaded: list[_Record], files: list[tuple[int, Path]],
                ref_file: Path | None) -> dict[str, _Record]:
    """Group id -> its 1-turn record (the first one of that id), read from the imported
    records or, when the 1-turn file is not imported, from ``ref_file``."""
    refs: dict[str, _Record] = {}
    if ref_file is not None:
        ref_records = ([r for r in loaded if r.n == 1] if any(n == 1 for n, _ in files)
                       else [_parse_record(rec, 1, ref_file, i)
                             for i, rec in enumerate(_load(ref_file))])
        for r in ref_records:
            refs.setdefault(r.rid, r)
    return refs


def _write_samples(w: BenchmarkWriter, loaded: list[_Record], refs: dict[str, _Record],
                   result: AlignmentResult | None, gaps: MediaGaps, images_dir: Path | None,
                   only_with_images: bool) -> dict[str, int]:
    """Write one sample per record (images shared across lengths); the count of each
    question source."""
    qsources: dict[str, int] = {}
    cache: dict = {}  # image reference -> stored part, shared by all lengths
    for r in loaded:
        aligned = True if result is None else result.aligned.get(r.sid, True)
        text_ok = result is None or "text" not in result.reasons.get(r.sid, [])
        question, qsrc = _question(r, refs, text_ok)
        qsources[qsrc] = qsources.get(qsrc, 0) + 1
        img_base = Path(images_dir) if images_dir else r.path.parent
        sample = _to_sample(w, r, img_base, cache, gaps, only_with_images, question, qsrc, aligned)
        if sample is not None:
            w.add(sample, where=r.where)
    return qsources


def _record_alignment(manifest: BenchmarkManifest, block: dict[str, Any]) -> None:
    """The alignment block into the provenance, and a note naming misaligned groups."""
    manifest.provenance["alignment"] = block
    if block["n_misaligned"]:
        shown = ", ".join(block["misaligned_groups"][:5])
        more = len(block["misaligned_groups"]) - 5
        manifest.provenance.setdefault("notes", []).append(
            f"safemt: {block['n_misaligned']} of {block['n_checked']} longer dialogues do not "
            f"match their id's 1-turn request ({len(block['misaligned_groups'])} groups: "
            f"{shown}{f' and {more} more' if more > 0 else ''}); the Safety Index groups "
            "them apart (grouping 'aligned'); details in benchmark.json provenance.alignment")


def _question(r: _Record, refs: dict[str, _Record], text_ok: bool) -> tuple[str, str]:
    """The underlying request of a record and where it came from: the ``question`` field,
    else the group's 1-turn request when the dialogue's text matches it, else the last
    user turn."""
    q = r.rec.get("question")
    if isinstance(q, str) and q.strip():
        return q, "question_field"
    if r.n == 1:
        return r.messages[-1].text, "dialogue"
    ref = refs.get(r.rid)
    if ref is not None and text_ok:
        return ref.messages[-1].text, "1_turn"
    return r.messages[-1].text, "last_user_turn"


def _parse_record(rec: Any, n: int, path: Path, i: int) -> _Record:
    where = f"{path}: record {i}"
    if not isinstance(rec, dict):
        raise DatasetError(f"{where}: expected an object, got {type(rec).__name__}")
    rid = rec.get("id")
    if isinstance(rid, int) and not isinstance(rid, bool):
        rid = str(rid)
    if not isinstance(rid, str) or not rid.strip():
        raise DatasetError(f"{where}: id: missing or empty")
    where = f"{path}: record {i} (id={rid!r})"
    dialogue = rec.get("dialogue")
    if not isinstance(dialogue, list) or not dialogue:
        raise DatasetError(f"{where}: dialogue: missing or empty")
    messages: list[Message] = []
    for j, turn in enumerate(dialogue):
        if not isinstance(turn, dict):
            raise DatasetError(f"{where}: dialogue.{j}: expected an object")
        role, content = turn.get("role"), turn.get("content")
        if role not in ("user", "assistant", "system"):
            raise DatasetError(f"{where}: dialogue.{j}.role: {role!r} is not user/assistant")
        if not isinstance(content, str):
            raise DatasetError(f"{where}: dialogue.{j}.content: expected a string")
        messages.append(Message(role=role, content=content))
    if messages[-1].role != "user":
        raise DatasetError(f"{where}: dialogue does not end with a user turn")
    n_user = sum(1 for m in messages if m.role == "user")
    if n_user != n:
        raise DatasetError(f"{where}: dialogue has {n_user} user turns but the file is "
                           f"{path.name} ({n} turns)")
    image = rec.get("image_path")
    if image in (None, ""):
        image = None
    elif not isinstance(image, str):
        raise DatasetError(f"{where}: image_path: expected a string")
    scenario = rec.get("scenario")
    return _Record(n, path, i, rid, str(scenario) if scenario not in (None, "") else None,
                   image, messages, rec)


def _to_sample(w: BenchmarkWriter, r: _Record, img_base: Path, cache: dict, gaps: MediaGaps,
               only_with_images: bool, question: str, qsrc: str, aligned: bool) -> Sample | None:
    where = r.where
    messages = [m.model_copy(deep=True) for m in r.messages]
    if r.image is not None:
        low = r.image[:8].lower()
        present = True
        if not low.startswith(("data:", "http://", "https:/")):
            present = resolve_inside(img_base, r.image, where).is_file()
        gaps.row("image", present, where)
        if present:
            part = asset_from_ref(w, r.image, img_base, where, cache=cache)
            first = next(m for m in messages if m.role == "user")
            first.content = [part, TextPart(text=first.text)]
        elif only_with_images:
            return None
    metadata: dict[str, Any] = {"group": r.rid, "question_source": qsrc,
                                "si_group": r.rid if aligned else r.sid, "si_aligned": aligned}
    metadata.update({k: v for k, v in r.rec.items() if k not in _KNOWN_KEYS})
    try:
        return Sample(
            id=r.sid,
            question=question,
            messages=messages,
            scenario=r.scenario or "unspecified",
            category=r.rec.get("category") or None,
            method=r.rec.get("method") or None,
            source="safemt",
            turns=r.n,
            metadata=metadata,
            provenance={"file": r.path.name, "record": r.i},
        )
    except ValidationError as e:
        raise DatasetError(f"{where}: {describe_validation_error(e)}") from None
