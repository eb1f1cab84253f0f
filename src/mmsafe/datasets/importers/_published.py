"""Helpers for the importers of published benchmark layouts (JailBreakV-28K, SIUO, MOSSBench,
VLSBench, MSSBench, VLGuard, ML-VLSU, audio folders): JSON records with their line numbers,
media lookup with the extension fallbacks the releases need, and one-line field errors.

Every error names ``file:line: field: problem`` so a bad row is found in the source file.
"""

from __future__ import annotations

import bisect
import hashlib
import json
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from mmsafe.types import Sample

from ..errors import DatasetError, describe_validation_error
from ._common import MediaGaps, resolve_inside

IMAGE_EXTS = (".png", ".jpg", ".jpeg", ".webp", ".gif")
AUDIO_EXTS = (".wav", ".mp3", ".flac", ".ogg", ".m4a")

_decoder = json.JSONDecoder()
_WS = " \t\r\n"


def _ws(s: str, i: int) -> int:
    while i < len(s) and s[i] in _WS:
        i += 1
    return i


class _Lines:
    """Character offset -> 1-based line number, by bisection over the newline offsets."""

    def __init__(self, text: str):
        self.nl = [i for i, c in enumerate(text) if c == "\n"]

    def __call__(self, pos: int) -> int:
        return bisect.bisect_left(self.nl, pos) + 1


def _array_items(s: str, i: int) -> Iterator[tuple[int, Any]]:
    """``(offset, value)`` of each element of the JSON array starting at ``s[i] == '['``
    (the text is known to be valid JSON)."""
    i = _ws(s, i + 1)
    if s[i] == "]":
        return
    while True:
        i = _ws(s, i)
        value, end = _decoder.raw_decode(s, i)
        yield i, value
        i = _ws(s, end)
        if s[i] == ",":
            i += 1
            continue
        return


def _object_items(s: str, i: int) -> Iterator[tuple[str, int, Any]]:
    """``(key, value offset, value)`` of each member of the JSON object at ``s[i] == '{'``."""
    i = _ws(s, i + 1)
    if s[i] == "}":
        return
    while True:
        i = _ws(s, i)
        key, end = _decoder.raw_decode(s, i)
        i = _ws(s, _ws(s, end) + 1)  # past ':'
        value, end = _decoder.raw_decode(s, i)
        yield key, i, value
        i = _ws(s, end)
        if s[i] == ",":
            i += 1
            continue
        return


def read_json_text(path: Path) -> str:
    """The text of a JSON file, checked to parse; a syntax error names ``file:line``."""
    try:
        text = path.read_text(encoding="utf-8-sig")
    except FileNotFoundError:
        raise DatasetError(f"{path}: not found") from None
    except UnicodeDecodeError as e:
        raise DatasetError(f"{path}: not UTF-8 text ({e.reason} at byte {e.start})") from None
    except OSError as e:
        raise DatasetError(f"{path}: cannot read ({e.strerror})") from None
    try:
        json.loads(text)
    except json.JSONDecodeError as e:
        raise DatasetError(f"{path}:{e.lineno}: malformed JSON ({e.msg})") from None
    return text


def json_records(path: Path, *, key: str | None = None,
                 what: str = "records") -> list[tuple[int, str, Any]]:
    """The records of a JSON file as ``(line, key, value)``.

    A top-level array gives ``(line, index, element)`` (index 1-based, as a string); a
    top-level object gives ``(line, member name, member value)``. With ``key`` the file
    must be an object and its member ``key`` an array, whose elements are returned.
    """
    text = read_json_text(path)
    line = _Lines(text)
    i = _ws(text, 0)
    if key is not None:
        if text[i] != "{":
            raise DatasetError(f"{path}:{line(i)}: expected a JSON object with a {key!r} list")
        for k, vpos, value in _object_items(text, i):
            if k == key:
                if not isinstance(value, list):
                    raise DatasetError(f"{path}:{line(vpos)}: {key}: expected a list of {what}")
                return [(line(p), str(n), v) for n, (p, v) in enumerate(_array_items(text, vpos), 1)]
        return []
    if text[i] == "[":
        return [(line(p), str(n), v) for n, (p, v) in enumerate(_array_items(text, i), 1)]
    if text[i] == "{":
        return [(line(p), k, v) for k, p, v in _object_items(text, i)]
    raise DatasetError(f"{path}:{line(i)}: expected a JSON list or object of {what}")


def record_dict(value: Any, where: str) -> dict[str, Any]:
    """A record that must be a JSON object."""
    if not isinstance(value, dict):
        raise DatasetError(f"{where}: expected an object, got {type(value).__name__}")
    return value


def text_field(rec: dict[str, Any], field: str, where: str, *, required: bool = True,
               strip: bool = True) -> str:
    """A text field of a record (numbers accepted for ids); a missing, empty or non-text
    value of a required field raises ``file:line: field: problem``."""
    if field not in rec or rec[field] is None:
        if required:
            raise DatasetError(f"{where}: {field}: missing")
        return ""
    v = rec[field]
    if isinstance(v, bool) or not isinstance(v, (str, int, float)):
        raise DatasetError(f"{where}: {field}: expected text, got {type(v).__name__}")
    s = str(v)
    if required and not s.strip():
        raise DatasetError(f"{where}: {field}: empty")
    return s.strip() if strip else s


def find_media(dirs: Iterable[Path], ref: str, where: str,
               exts: tuple[str, ...] = IMAGE_EXTS) -> Path | None:
    """The file ``ref`` names in the first of ``dirs`` that has it, trying the same stem
    with the other extensions of ``exts`` (releases convert formats and keep the names);
    a reference escaping its folder raises :class:`DatasetError` naming ``where``."""
    for d in dirs:
        p = resolve_inside(d, ref, where)
        if p.is_file():
            return p
        for ext in exts:
            q = p.with_suffix(ext)
            if q.is_file():
                return q
    return None


def make_sample(where: str, **fields: Any) -> Sample:
    """A :class:`Sample`, with a validation error as one line naming ``where``."""
    try:
        return Sample(**fields)
    except ValidationError as e:
        raise DatasetError(f"{where}: {describe_validation_error(e)}") from None


def as_list(value: Iterable[str] | str | None) -> list[str] | None:
    """An option given as a list or as ``a,b,c`` (the CLI's ``--opt key=a,b``)."""
    if value is None:
        return None
    items = value.split(",") if isinstance(value, str) else list(value)
    return [str(x).strip() for x in items if str(x).strip()]


def short_hash(text: str) -> str:
    """A stable 10-character id for a text (groups rows that share one request)."""
    return hashlib.sha256(text.encode()).hexdigest()[:10]


def require_some_media(n_samples: int, gaps: MediaGaps, src: Path, looked: Iterable[Path], hint: str) -> None:
    """Refuse an import that would be empty because no row found its media file (a
    benchmark of zero samples hides a wrong folder); ``hint`` says what to do."""
    if n_samples or not gaps.n_missing:
        return
    dirs = ", ".join(str(d) for d in looked) or "no folder found"
    raise DatasetError(f"{src}: none of the {sum(gaps.rows.values())} rows has its media file "
                       f"(looked in: {dirs}); {hint}")


def rel(p: Path, base: Path) -> str:
    """``p`` relative to ``base`` when inside it, else the full path."""
    try:
        return p.relative_to(base).as_posix()
    except ValueError:
        return str(p)


__all__ = ["AUDIO_EXTS", "IMAGE_EXTS", "as_list", "find_media", "json_records", "make_sample",
           "read_json_text", "record_dict", "rel", "require_some_media", "short_hash", "text_field"]
