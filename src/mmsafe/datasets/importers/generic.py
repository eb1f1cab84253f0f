"""Generic CSV and JSONL importers with a column mapping.

``mapping`` maps sample fields to source columns (keys)::

    {"question": "prompt", "id": "uid", "scenario": "category", "category": "...",
     "method": "...", "image": "img_col", "audio": "...", "group": "...",
     "messages": "conversation"}          # "turns" is accepted as an alias of "messages"

Unmapped fields fall back to same-named columns when present (``question``, ``id``,
``scenario`` ...); a column you map explicitly must exist. Columns not mapped to a
field are kept in ``metadata``.

Messages: a list in OpenAI chat format (``{"role", "content"}`` where content is a
string or parts ``{"type": "text", "text"}``, ``{"type": "image_url", "image_url":
{"url": path-or-data-URI}}``, ``{"type": "input_audio", "input_audio": {"data": base64,
"format": "wav"}}`` (or ``{"url": path}``), or mmsafe's own ``{"type": "image"|"audio",
"path"|"uri"}``), or a plain list of strings alternating user/assistant from a user
turn. In a CSV the cell holds that list as JSON. The conversation must end with a user
turn. An ``image``/``audio`` column is attached to the first user turn, before its text.

Relative asset paths are resolved against the source file's directory (or
``images_dir``) and may not escape it; ``http(s)://`` URLs are kept as URI references
(nothing is downloaded); ``data:`` URIs are decoded and stored.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
from pydantic import ValidationError

from mmsafe.types import AudioPart, BenchmarkManifest, ImagePart, Message, Sample, TextPart

from ..benchmark import BenchmarkWriter
from ..errors import DatasetError, describe_validation_error
from ._common import (
    asset_from_ref,
    csv_rows,
    decode_data_uri,
    make_manifest,
    read_csv_header,
    require_path,
    source_entry,
)

__all__ = ["import_csv", "import_jsonl", "MAPPING_FIELDS"]

MAPPING_FIELDS = ("id", "question", "scenario", "category", "method", "image", "audio", "group",
                  "messages")
_AUDIO_FORMATS = {"wav", "mp3", "flac", "ogg", "m4a", "mp4", "webm", "pcm16"}


def _resolve_mapping(mapping: dict[str, str] | None,
                     where: Path) -> tuple[dict[str, str], set[str]]:
    """Return (field -> column, fields mapped explicitly)."""
    m = dict(mapping or {})
    if "turns" in m:
        if "messages" in m:
            raise DatasetError(f"{where}: mapping has both 'turns' and 'messages'")
        m["messages"] = m.pop("turns")
    unknown = [k for k in m if k not in MAPPING_FIELDS]
    if unknown:
        raise DatasetError(f"{where}: unknown mapping key {unknown[0]!r} "
                           f"(known: {', '.join(MAPPING_FIELDS)}, turns)")
    bad = [k for k, v in m.items() if not isinstance(v, str) or not v]
    if bad:
        raise DatasetError(f"{where}: mapping[{bad[0]!r}] must be a column name")
    explicit = set(m)
    full = {f: f for f in MAPPING_FIELDS}
    full.update(m)
    return full, explicit


class _RowConverter:
    """Turns one source row (a dict) into a Sample; shared by CSV and JSONL."""

    def __init__(self, w: BenchmarkWriter, path: Path, mapping: dict[str, str],
                 explicit: set[str], base: Path, json_cells: bool, source: str):
        self.w, self.path, self.mapping, self.explicit = w, path, mapping, explicit
        self.base, self.json_cells, self.source = base, json_cells, source
        self.used = set(mapping.values())
        self.cache: dict = {}

    def _get(self, row: dict[str, Any], field: str, where: str) -> Any:
        col = self.mapping[field]
        if col not in row:
            if field in self.explicit:
                raise DatasetError(f"{where}: missing column {col!r} (mapped to {field})")
            return None
        v = row[col]
        if isinstance(v, str):
            v = v.strip()
        return None if v in ("", None) else v

    def convert(self, row: dict[str, Any], line: int, n: int) -> Sample:
        where = f"{self.path}:{line}"
        raw_msgs = self._get(row, "messages", where)
        question = self._get(row, "question", where)
        if raw_msgs is None and question is None:
            raise DatasetError(f"{where}: missing column {self.mapping['question']!r} "
                               "(the question; or give a messages column)")
        if raw_msgs is not None:
            messages = self._messages(raw_msgs, where)
        else:
            messages = [Message(role="user", content=str(question))]
        extra_parts: list[ImagePart | AudioPart] = []
        for kind in ("image", "audio"):
            ref = self._get(row, kind, where)
            if ref is not None:
                if not isinstance(ref, str):
                    raise DatasetError(f"{where}: {self.mapping[kind]}: expected a path or URI")
                extra_parts.append(asset_from_ref(self.w, ref, self.base, where, kind, self.cache))
        if extra_parts:
            first = next((m for m in messages if m.role == "user"), None)
            if first is None:
                raise DatasetError(f"{where}: messages: no user turn to attach the image to")
            parts = ([TextPart(text=first.content)] if isinstance(first.content, str)
                     else first.content)
            first.content = [*extra_parts, *parts]
        if question is None:
            question = next((m.text for m in reversed(messages) if m.role == "user"), "")
        sid = self._get(row, "id", where)
        sid = str(sid) if sid is not None else f"{self.path.stem}-{n}"
        group = self._get(row, "group", where)
        metadata = {k: v for k, v in row.items() if k not in self.used}
        metadata["group"] = str(group) if group is not None else sid
        try:
            return Sample(
                id=sid, question=str(question), messages=messages,
                scenario=str(self._get(row, "scenario", where) or "unspecified"),
                category=_opt_str(self._get(row, "category", where)),
                method=_opt_str(self._get(row, "method", where)),
                source=self.source, metadata=metadata,
                provenance={"file": self.path.name, "line": line},
            )
        except ValidationError as e:
            raise DatasetError(f"{where}: {describe_validation_error(e)}") from None

    # -- messages --------------------------------------------------------------------

    def _messages(self, raw: Any, where: str) -> list[Message]:
        col = self.mapping["messages"]
        if isinstance(raw, str) and self.json_cells:
            try:
                raw = orjson.loads(raw)
            except orjson.JSONDecodeError as e:
                raise DatasetError(f"{where}: {col}: not valid JSON ({e})") from None
        if not isinstance(raw, list) or not raw:
            raise DatasetError(f"{where}: {col}: expected a non-empty list of messages")
        out: list[Message] = []
        for j, m in enumerate(raw):
            loc = f"{where}: {col}.{j}"
            if isinstance(m, str):
                out.append(Message(role="user" if j % 2 == 0 else "assistant", content=m))
                continue
            if not isinstance(m, dict):
                raise DatasetError(f"{loc}: expected an object or a string")
            role = m.get("role")
            if role not in ("system", "user", "assistant"):
                raise DatasetError(f"{loc}.role: {role!r} is not system/user/assistant")
            content = self._content(m.get("content"), f"{loc}.content")
            out.append(Message(role=role, content=content))
        if out[-1].role != "user":
            raise DatasetError(f"{where}: {col}: conversation must end with a user turn")
        return out

    def _content(self, c: Any, loc: str) -> str | list:
        if isinstance(c, str):
            return c
        if not isinstance(c, list):
            raise DatasetError(f"{loc}: expected a string or a list of parts")
        parts: list = []
        for k, p in enumerate(c):
            ploc = f"{loc}.{k}"
            if isinstance(p, str):
                parts.append(TextPart(text=p))
                continue
            if not isinstance(p, dict):
                raise DatasetError(f"{ploc}: expected an object")
            t = p.get("type")
            if t == "text":
                if not isinstance(p.get("text"), str):
                    raise DatasetError(f"{ploc}.text: expected a string")
                parts.append(TextPart(text=p["text"]))
            elif t == "image_url":
                iu = p.get("image_url")
                url = iu.get("url") if isinstance(iu, dict) else iu
                if not isinstance(url, str):
                    raise DatasetError(f"{ploc}.image_url.url: expected a string")
                parts.append(asset_from_ref(self.w, url, self.base, ploc, "image", self.cache))
            elif t == "input_audio":
                ia = p.get("input_audio")
                if not isinstance(ia, dict):
                    raise DatasetError(f"{ploc}.input_audio: expected an object")
                if isinstance(ia.get("data"), str):
                    fmt = str(ia.get("format") or "wav").lower()
                    if fmt not in _AUDIO_FORMATS:
                        raise DatasetError(f"{ploc}.input_audio.format: unknown {fmt!r}")
                    data, _ = decode_data_uri(f"data:audio/{fmt};base64,{ia['data']}", ploc)
                    parts.append(self.w.add_audio(data, where=ploc, name="<input_audio>"))
                else:
                    ref = ia.get("url") or ia.get("path")
                    if not isinstance(ref, str):
                        raise DatasetError(f"{ploc}.input_audio: needs data or url")
                    parts.append(asset_from_ref(self.w, ref, self.base, ploc, "audio", self.cache))
            elif t in ("image", "audio"):
                ref = p.get("path") or p.get("uri") or p.get("url")
                if not isinstance(ref, str):
                    raise DatasetError(f"{ploc}: an {t} part needs path or uri")
                parts.append(asset_from_ref(self.w, ref, self.base, ploc, t, self.cache))
            else:
                raise DatasetError(f"{ploc}.type: unsupported content part type {t!r}")
        if not parts:
            raise DatasetError(f"{loc}: empty content")
        return parts


def _opt_str(v: Any) -> str | None:
    return None if v is None else str(v)


def _manifest(kind: str, src: Path, name: str | None, mapping: dict | None,
              images_dir: Path | None, source: str | None, licence: str | None,
              description: str, extra: dict | None = None):
    return make_manifest(
        name=name or src.stem, importer=kind, sources=[source_entry(src)],
        options={"mapping": mapping, "images_dir": str(images_dir) if images_dir else None,
                 **(extra or {})},
        description=description or f"imported from {src.name}",
        source=source or src.name, licence=licence,
    )


def import_csv(src: Path, out: Path, *, name: str | None = None, overwrite: bool = False,
               mapping: dict[str, str] | None = None, images_dir: Path | None = None,
               delimiter: str = ",", source: str | None = None, licence: str | None = None,
               description: str = "", strict_media: bool = False) -> BenchmarkManifest:
    """Import a CSV (with a header row) using a column ``mapping`` (see the module doc).

    A referenced image or audio file that is missing is always an error here, so
    ``strict_media`` (accepted for uniformity with the other importers) changes nothing.

    A mapped column missing from the header raises :class:`DatasetError` naming the
    column; a bad row raises one naming ``file:line``.
    """
    src = require_path(src)
    if not src.is_file():
        raise DatasetError(f"{src}: expected a CSV file")
    full, explicit = _resolve_mapping(mapping, src)
    header = read_csv_header(src, delimiter)
    for f in sorted(explicit):
        if full[f] not in header:
            raise DatasetError(f"{src}: missing column {full[f]!r} (mapped to {f}; "
                               f"columns: {', '.join(header)})")
    if full["question"] not in header and full["messages"] not in header:
        raise DatasetError(f"{src}: missing column {full['question']!r} (the question; "
                           f"columns: {', '.join(header)})")
    manifest = _manifest("csv", src, name, mapping, images_dir, source, licence, description,
                         {"delimiter": delimiter if delimiter != "," else None})
    base = Path(images_dir) if images_dir else src.parent
    with BenchmarkWriter(out, manifest, overwrite=overwrite) as w:
        conv = _RowConverter(w, src, full, explicit, base, json_cells=True, source=src.stem)
        for n, (line, row) in enumerate(csv_rows(src, delimiter=delimiter), 1):
            w.add(conv.convert(row, line, n), where=f"{src}:{line}")
    return w.manifest


def jsonl_rows(path: Path) -> Iterator[tuple[int, dict[str, Any]]]:
    """(line number, object) per non-blank line; DatasetError naming file:line otherwise."""
    try:
        fh = open(path, "rb")  # noqa: SIM115 (closed by the with below; an open error is one line)
    except OSError as e:
        raise DatasetError(f"{path}: cannot read ({e.strerror})") from None
    with fh:
        for line_no, line in enumerate(fh, 1):
            if not line.strip():
                continue
            try:
                row = orjson.loads(line)
            except orjson.JSONDecodeError as e:
                raise DatasetError(f"{path}:{line_no}: invalid JSON ({e})") from None
            if not isinstance(row, dict):
                raise DatasetError(f"{path}:{line_no}: expected a JSON object, "
                                   f"got {type(row).__name__}")
            yield line_no, row


def import_jsonl(src: Path, out: Path, *, name: str | None = None, overwrite: bool = False,
                 mapping: dict[str, str] | None = None, images_dir: Path | None = None,
                 source: str | None = None, licence: str | None = None,
                 description: str = "", strict_media: bool = False) -> BenchmarkManifest:
    """Import a JSON-lines file using a column ``mapping`` (see the module doc).

    A referenced image or audio file that is missing is always an error here, so
    ``strict_media`` (accepted for uniformity) changes nothing.

    Rows may carry ``messages`` in OpenAI chat format. A missing mapped key, bad JSON or
    bad asset raises :class:`DatasetError` naming ``file:line``.
    """
    src = require_path(src)
    if not src.is_file():
        raise DatasetError(f"{src}: expected a JSONL file")
    full, explicit = _resolve_mapping(mapping, src)
    manifest = _manifest("jsonl", src, name, mapping, images_dir, source, licence, description)
    base = Path(images_dir) if images_dir else src.parent
    with BenchmarkWriter(out, manifest, overwrite=overwrite) as w:
        conv = _RowConverter(w, src, full, explicit, base, json_cells=False, source=src.stem)
        for n, (line, row) in enumerate(jsonl_rows(src), 1):
            w.add(conv.convert(row, line, n), where=f"{src}:{line}")
    return w.manifest
