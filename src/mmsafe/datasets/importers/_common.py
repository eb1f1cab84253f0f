"""Helpers shared by the importers: provenance, CSV reading, safe asset references."""

from __future__ import annotations

import base64
import binascii
import csv
import hashlib
import re
import sys
from collections.abc import Iterable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from mmsafe import __version__
from mmsafe.types import MAX_ASSET_BYTES, AudioPart, BenchmarkManifest, ImagePart

from ..benchmark import BenchmarkWriter
from ..errors import DatasetError

# CSV fields in real benchmarks (HarmBench contexts) can exceed the 128 KiB default.
csv.field_size_limit(min(sys.maxsize, 2**31 - 1))

_DATA_URI = re.compile(
    r"^data:(?P<mime>[\w.+-]+/[\w.+-]+)?(?P<params>(;[^,;]*)*?)(?P<b64>;base64)?,", re.IGNORECASE)


def file_sha256(path: Path) -> str:
    """sha256 of a file, read in 1 MiB blocks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def source_entry(path: Path, base: Path | None = None) -> dict[str, Any]:
    """Provenance record of one source file: name (relative to ``base``), sha256, size."""
    try:
        name = path.relative_to(base).as_posix() if base is not None else path.name
    except ValueError:
        name = path.name
    return {"file": name, "sha256": file_sha256(path), "bytes": path.stat().st_size}


def _jsonable(v: Any) -> Any:
    if isinstance(v, (str, int, float, bool)) or v is None:
        return v
    if isinstance(v, Path):
        return v.as_posix()
    if isinstance(v, dict):
        return {str(k): _jsonable(x) for k, x in v.items()}
    if isinstance(v, (list, tuple, set, frozenset)):
        return [_jsonable(x) for x in v]
    return repr(v)


def make_manifest(*, name: str, importer: str, sources: Iterable[dict[str, Any]],
                  options: dict[str, Any] | None = None, description: str = "",
                  source: str | None = None, licence: str | None = None,
                  taxonomy: dict[str, Any] | None = None) -> BenchmarkManifest:
    """A manifest whose provenance names the importer, its options, the source files
    (with sha256), the mmsafe version and the import time."""
    return BenchmarkManifest(
        name=name,
        description=description,
        source=source,
        licence=licence,
        taxonomy=taxonomy or {},
        provenance={
            "importer": importer,
            "options": _jsonable({k: v for k, v in (options or {}).items() if v is not None}),
            "sources": list(sources),
            "mmsafe_version": __version__,
            "imported_at": datetime.now(UTC).isoformat(timespec="seconds"),
        },
    )


def require_path(src: Path | str, *, kind: str = "source") -> Path:
    p = Path(src)
    if not p.exists():
        raise DatasetError(f"{p}: {kind} not found")
    return p


# --------------------------------------------------------------------------- CSV


def csv_rows(path: Path, *, required: Iterable[str] = (),
             delimiter: str = ",") -> Iterator[tuple[int, dict[str, str]]]:
    """Stream a CSV with a header as ``(line_number, row)``.

    The line number is the line the record starts on (records may span lines). A BOM
    is ignored, header names are stripped, and missing ``required`` columns raise a
    :class:`DatasetError` naming the column.
    """
    try:
        fh = open(path, newline="", encoding="utf-8-sig")  # noqa: SIM115 (closed by the with below; an open error is one line)
    except OSError as e:
        raise DatasetError(f"{path}: cannot read ({e.strerror})") from None
    with fh:
        reader = csv.reader(fh, delimiter=delimiter)
        try:
            header = next(reader, None)
            if header is None:
                raise DatasetError(f"{path}: empty CSV file (no header)")
            header = [h.strip() for h in header]
            missing = [c for c in required if c not in header]
            if missing:
                raise DatasetError(f"{path}: missing required column {missing[0]!r} "
                                   f"(columns: {', '.join(header)})")
            start = reader.line_num + 1
            for row in reader:
                line = start
                start = reader.line_num + 1
                if not row or not any(c.strip() for c in row):
                    continue
                if len(row) > len(header):
                    raise DatasetError(f"{path}:{line}: {len(row)} fields but the header has "
                                       f"{len(header)}")
                yield line, {h: (row[i] if i < len(row) else "") for i, h in enumerate(header)}
        except csv.Error as e:
            raise DatasetError(f"{path}:{reader.line_num}: malformed CSV ({e})") from None
        except UnicodeDecodeError as e:
            raise DatasetError(f"{path}: not UTF-8 text ({e.reason} at byte {e.start})") from None


def read_csv_header(path: Path, delimiter: str = ",") -> list[str]:
    try:
        with open(path, newline="", encoding="utf-8-sig") as fh:
            header = next(csv.reader(fh, delimiter=delimiter), None)
    except OSError as e:
        raise DatasetError(f"{path}: cannot read ({e.strerror})") from None
    except (csv.Error, UnicodeDecodeError) as e:
        raise DatasetError(f"{path}:1: malformed CSV header ({e})") from None
    if header is None:
        raise DatasetError(f"{path}: empty CSV file (no header)")
    return [h.strip() for h in header]


# --------------------------------------------------------------------------- asset refs


def resolve_inside(base: Path, ref: str, where: str) -> Path:
    """Resolve ``ref`` against ``base``; refuse a path that escapes ``base``."""
    ref = ref.strip()
    if ref.startswith("file://"):
        ref = ref[len("file://"):]
    base_r = base.resolve()
    p = (base_r / ref).resolve()
    if p != base_r and base_r not in p.parents:
        raise DatasetError(f"{where}: path {ref!r} escapes the source directory {base}")
    return p


def decode_data_uri(uri: str, where: str) -> tuple[bytes, str | None]:
    """Decode a ``data:`` URI (base64 or percent-encoded) to bytes and its mime type."""
    m = _DATA_URI.match(uri)
    if not m:
        raise DatasetError(f"{where}: malformed data URI")
    payload = uri[m.end():]
    if m.group("b64"):
        if len(payload) * 3 // 4 > MAX_ASSET_BYTES + 4:
            raise DatasetError(f"{where}: data URI is over the {MAX_ASSET_BYTES}-byte limit")
        try:
            data = base64.b64decode(payload, validate=False)
        except (binascii.Error, ValueError) as e:
            raise DatasetError(f"{where}: data URI is not valid base64 ({e})") from None
    else:
        from urllib.parse import unquote_to_bytes

        data = unquote_to_bytes(payload)
    return data, (m.group("mime") or None)


def asset_from_ref(writer: BenchmarkWriter, ref: str, base: Path, where: str,
                   kind: str = "image",
                   cache: dict[tuple[str, str, str], ImagePart | AudioPart] | None = None,
                   ) -> ImagePart | AudioPart:
    """Turn an image/audio reference from a source file into a stored asset part.

    ``ref`` may be a ``data:`` URI (decoded and stored), an ``http(s)://`` URL (kept as a
    URI reference; nothing is downloaded), or a path relative to ``base`` that must stay
    inside ``base``. Missing, corrupt and oversized files raise :class:`DatasetError`
    naming ``where``. ``cache`` (a dict owned by one import) memoises path references,
    so a benchmark that repeats an image per row resolves and hashes it once.
    """
    ref = ref.strip()
    if not ref:
        raise DatasetError(f"{where}: empty {kind} reference")
    add = writer.add_image if kind == "image" else writer.add_audio
    low = ref[:12].lower()
    if low.startswith("data:"):
        data, _ = decode_data_uri(ref, where)
        return add(data, where=where, name="<data URI>")
    if low.startswith(("http://", "https://")):
        return ImagePart(uri=ref) if kind == "image" else AudioPart(uri=ref)
    key = (str(base), ref, kind)
    if cache is not None and key in cache:
        return cache[key]
    path = resolve_inside(base, ref, where)
    part = add(path, where=where, name=ref)
    if cache is not None:
        cache[key] = part
    return part


# --------------------------------------------------------------------------- layouts


def first_existing(candidates: Iterable[Path], *, kind: str = "dir") -> Path | None:
    """The first of ``candidates`` that exists as a directory (``kind="dir"``) or a file."""
    for p in candidates:
        if (p.is_dir() if kind == "dir" else p.is_file()):
            return p
    return None


# --------------------------------------------------------------------------- media gaps


class MediaGaps:
    """Counts the rows that should carry an image or audio file and the ones that lack it.

    An importer calls :meth:`row` once per row that names (or implies) a media file, and
    :meth:`finish` inside its writer's ``with`` block. ``finish`` records the counts in
    the manifest (``provenance["media"]``), adds the one-line note the CLI prints
    (``provenance["notes"]``) naming the option that keeps only complete rows, and with
    ``strict`` raises :class:`DatasetError` instead (so nothing is written).
    """

    def __init__(self, importer: str, restrict_option: str | None, *,
                 dropped: bool | Iterable[str] = False):
        self.importer = importer
        self.restrict_option = restrict_option
        # kinds whose rows are skipped when the file is missing (not imported text-only)
        self.dropped: set[str] = ({"image", "audio"} if dropped is True else
                                  set() if dropped is False else set(dropped))
        self.rows: dict[str, int] = {}
        self.missing: dict[str, int] = {}
        self.examples: dict[str, list[str]] = {}

    def row(self, kind: str, found: bool, where: str = "") -> None:
        """One row that should have a ``kind`` ("image"/"audio") file; ``found`` says if it does."""
        self.rows[kind] = self.rows.get(kind, 0) + 1
        if not found:
            self.missing[kind] = self.missing.get(kind, 0) + 1
            ex = self.examples.setdefault(kind, [])
            if len(ex) < 3 and where:
                ex.append(where)

    @property
    def n_missing(self) -> int:
        return sum(self.missing.values())

    def _counts(self, with_fate: bool) -> str:
        parts = []
        for kind, n in self.rows.items():
            miss = self.missing.get(kind, 0)
            if miss:
                fate = (" (skipped)" if kind in self.dropped else " (imported without it)") if with_fate else ""
                parts.append(f"{miss} of {n} rows have no {kind} file{fate}")
        return f"{self.importer}: {', '.join(parts)}"

    def line(self) -> str | None:
        """The one-line report of the gaps, or None when every row has its media."""
        if not self.n_missing:
            return None
        hint = (f"; --opt {self.restrict_option}=true keeps only the complete rows"
                if self.restrict_option and any(k not in self.dropped for k in self.missing)
                else "")
        return f"{self._counts(True)}{hint}; --strict-media makes this an error"

    def finish(self, manifest: BenchmarkManifest, *, strict: bool = False) -> None:
        """Record the counts in ``manifest``; raise under ``strict`` when a row lacks media."""
        media: dict[str, Any] = {
            kind: {"rows": n, "with_file": n - self.missing.get(kind, 0), "missing": self.missing.get(kind, 0),
                   **({"examples": self.examples[kind]} if self.examples.get(kind) else {})}
            for kind, n in self.rows.items()}
        if media:
            manifest.provenance["media"] = media
        line = self.line()
        if line is None:
            return
        if strict:
            first = next((ex[0] for ex in self.examples.values() if ex), "")
            raise DatasetError(f"{first + ': ' if first else ''}{self._counts(False)} "
                               "(--strict-media: every row must have its file)")
        notes = manifest.provenance.setdefault("notes", [])
        notes.append(line)
        if self.restrict_option:
            manifest.provenance["media"]["restrict_option"] = self.restrict_option
