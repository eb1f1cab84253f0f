"""Exporters: a benchmark directory -> flat JSONL, Parquet, Hugging Face ``datasets``, SafeMT.

Every exporter takes a :class:`Benchmark` (or a path to one), streams its samples and
writes atomically (a temporary sibling renamed into place); an existing output is
refused unless ``overwrite=True``.

The flat record (JSONL / Parquet / HF) is::

    id, question, scenario, category, method, turns, source, group, prompt,
    images: [paths], audios: [paths], messages (OpenAI chat format), metadata

Asset paths are relative to the benchmark root (``assets/<sha256>.<ext>``); URI-only
assets appear as their URI. ``prompt`` is the text of the final user turn.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import orjson

from mmsafe.types import AudioPart, ImagePart, Sample, TextPart, VideoPart

from .benchmark import Benchmark, make_sibling_dir, open_benchmark, swap_into_place
from .errors import DatasetError

__all__ = [
    "EXPORTERS",
    "export_benchmark",
    "export_hf",
    "export_jsonl",
    "export_parquet",
    "export_safemt",
    "flat_record",
    "openai_messages",
]

_BATCH = 1024


def _bench(bench: Benchmark | Path | str) -> Benchmark:
    return bench if isinstance(bench, Benchmark) else open_benchmark(bench)


def _ref(p: ImagePart | AudioPart | VideoPart) -> str:
    return p.path or p.uri or ""


def openai_messages(s: Sample) -> list[dict[str, Any]]:
    """The conversation in OpenAI chat format, assets referenced by path (or URI)."""
    out: list[dict[str, Any]] = []
    for m in s.messages:
        if isinstance(m.content, str):
            out.append({"role": m.role, "content": m.content})
            continue
        parts: list[dict[str, Any]] = []
        for p in m.content:
            if isinstance(p, TextPart):
                parts.append({"type": "text", "text": p.text})
            elif isinstance(p, ImagePart):
                parts.append({"type": "image_url", "image_url": {"url": _ref(p)}})
            elif isinstance(p, VideoPart):  # as the OpenAI-compatible provider sends it (vLLM/SGLang)
                parts.append({"type": "video_url", "video_url": {"url": _ref(p)}})
            else:
                parts.append({"type": "input_audio",
                              "input_audio": {"url": _ref(p), "format": _audio_format(p)}})
        out.append({"role": m.role, "content": parts})
    return out


_MIME_FORMAT = {"audio/wav": "wav", "audio/x-wav": "wav", "audio/mpeg": "mp3", "audio/flac": "flac",
                "audio/ogg": "ogg", "audio/mp4": "m4a"}


def _audio_format(p: AudioPart) -> str:
    if p.mime in _MIME_FORMAT:
        return _MIME_FORMAT[p.mime]
    last = _ref(p).rsplit("/", 1)[-1]
    return last.rsplit(".", 1)[-1].lower() if "." in last else "wav"


def flat_record(s: Sample) -> dict[str, Any]:
    """One sample as a flat, JSON-serialisable record (see the module docstring)."""
    assets = s.assets()
    last_user = next((m for m in reversed(s.messages) if m.role == "user"), None)
    return {
        "id": s.id,
        "question": s.question,
        "scenario": s.scenario,
        "category": s.category,
        "method": s.method,
        "turns": s.turns,
        "source": s.source,
        "group": str(s.metadata.get("group", s.id)),
        "prompt": last_user.text if last_user else "",
        "images": [_ref(a) for a in assets if isinstance(a, ImagePart)],
        "audios": [_ref(a) for a in assets if isinstance(a, AudioPart)],
        "messages": openai_messages(s),
        "metadata": s.metadata,
    }


# --------------------------------------------------------------------------- atomic output


def _check_out(out: Path, overwrite: bool, is_ours: Callable[[Path], bool] | None = None) -> None:
    if not out.exists():
        return
    if not overwrite:
        raise DatasetError(f"{out}: already exists (pass overwrite=True to replace it)")
    if out.is_dir() and is_ours is None:
        raise DatasetError(f"{out}: is a directory; refusing to replace it with a file")
    if is_ours is not None:
        if not out.is_dir():
            raise DatasetError(f"{out}: exists and is not a directory; refusing to replace it")
        if any(out.iterdir()) and not is_ours(out):
            raise DatasetError(f"{out}: non-empty directory that is not a previous export; "
                               "refusing to replace it")


@contextmanager
def _atomic_file(out: Path, overwrite: bool) -> Iterator[Path]:
    """Yield a temporary path next to ``out``; rename it to ``out`` on success."""
    out = Path(out)
    _check_out(out, overwrite)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.parent / f".{out.name}.{uuid.uuid4().hex[:12]}.tmp"
    try:
        yield tmp
        os.replace(tmp, out)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


@contextmanager
def _atomic_dir(out: Path, overwrite: bool, is_ours: Callable[[Path], bool]) -> Iterator[Path]:
    """Yield a temporary directory next to ``out``; swap it into place on success."""
    out = Path(out)
    _check_out(out, overwrite, is_ours)
    tmp = make_sibling_dir(out, "tmp")
    try:
        yield tmp
        swap_into_place(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


# --------------------------------------------------------------------------- exporters


def export_jsonl(bench: Benchmark | Path | str, out_path: Path | str, *,
                 overwrite: bool = False) -> int:
    """Write one flat JSON object per sample to ``out_path``; returns the sample count.

    Re-import with ``import_jsonl(out_path, ..., images_dir=bench.root)`` (the asset
    paths are relative to the benchmark root).
    """
    b = _bench(bench)
    n = 0
    with _atomic_file(Path(out_path), overwrite) as tmp, open(tmp, "wb") as f:
        for s in b.iter_samples():
            f.write(orjson.dumps(flat_record(s), option=orjson.OPT_NON_STR_KEYS))
            f.write(b"\n")
            n += 1
    return n


def _arrow_batch(pa, records: list[dict[str, Any]], schema):
    cols: dict[str, list] = {name: [] for name in schema.names}
    for r in records:
        for name in schema.names:
            v = r[name]
            if name in ("messages", "metadata"):
                v = orjson.dumps(v, option=orjson.OPT_NON_STR_KEYS).decode()
            cols[name].append(v)
    return pa.RecordBatch.from_pydict(cols, schema=schema)


def export_parquet(bench: Benchmark | Path | str, out_path: Path | str, *,
                   overwrite: bool = False) -> int:
    """Write the flat records to a Parquet file (``messages`` and ``metadata`` as JSON
    strings), streaming in batches; returns the sample count. Needs ``pyarrow``."""
    try:
        import pyarrow as pa
        import pyarrow.parquet as pq
    except ImportError:
        raise DatasetError(f"{out_path}: Parquet export needs pyarrow: "
                           "pip install 'mmsafe[parquet]'") from None
    b = _bench(bench)
    schema = pa.schema([
        ("id", pa.string()), ("question", pa.string()), ("scenario", pa.string()),
        ("category", pa.string()), ("method", pa.string()), ("turns", pa.int32()),
        ("source", pa.string()), ("group", pa.string()), ("prompt", pa.string()),
        ("images", pa.list_(pa.string())), ("audios", pa.list_(pa.string())),
        ("messages", pa.string()), ("metadata", pa.string()),
    ], metadata={b"mmsafe.benchmark": b.manifest.model_dump_json().encode()})
    n = 0
    with _atomic_file(Path(out_path), overwrite) as tmp, pq.ParquetWriter(str(tmp), schema) as writer:
        batch: list[dict[str, Any]] = []
        for s in b.iter_samples():
            batch.append(flat_record(s))
            if len(batch) >= _BATCH:
                writer.write_batch(_arrow_batch(pa, batch, schema))
                n += len(batch)
                batch = []
        if batch or n == 0:
            writer.write_batch(_arrow_batch(pa, batch, schema))
            n += len(batch)
    return n


def export_hf(bench: Benchmark | Path | str, out_dir: Path | str, *,
              overwrite: bool = False) -> int:
    """Save the benchmark as a Hugging Face ``datasets`` dataset (``save_to_disk``).

    Images are embedded as ``datasets.Image`` values (bytes + original path) and audio as
    ``datasets.Audio(decode=False)``, so the output is self-contained; ``messages`` and
    ``metadata`` are JSON strings. Needs ``datasets`` (``pip install 'mmsafe[datasets]'``).
    Returns the sample count.
    """
    try:
        import datasets
    except ImportError:
        raise DatasetError(f"{out_dir}: Hugging Face export needs the datasets library: "
                           "pip install 'mmsafe[datasets]'") from None
    b = _bench(bench)
    features = datasets.Features({
        "id": datasets.Value("string"), "question": datasets.Value("string"),
        "scenario": datasets.Value("string"), "category": datasets.Value("string"),
        "method": datasets.Value("string"), "turns": datasets.Value("int32"),
        "source": datasets.Value("string"), "group": datasets.Value("string"),
        "prompt": datasets.Value("string"),
        "images": datasets.Sequence(datasets.Image()),
        "audios": datasets.Sequence(datasets.Audio(decode=False)),
        "messages": datasets.Value("string"), "metadata": datasets.Value("string"),
    })
    root = b.root

    def rows(bench_root: str) -> Iterator[dict[str, Any]]:
        bb = open_benchmark(bench_root)
        for s in bb.iter_samples():
            r = flat_record(s)
            r["messages"] = orjson.dumps(r["messages"]).decode()
            r["metadata"] = orjson.dumps(r["metadata"], option=orjson.OPT_NON_STR_KEYS).decode()
            r["images"] = [_embed(bb, a) for a in s.assets() if isinstance(a, ImagePart)]
            r["audios"] = [_embed(bb, a) for a in s.assets() if isinstance(a, AudioPart)]
            yield r

    def is_ours(p: Path) -> bool:
        return (p / "dataset_info.json").is_file() or (p / "state.json").is_file()

    with tempfile.TemporaryDirectory(prefix="mmsafe-hf-cache-") as cache:
        ds = datasets.Dataset.from_generator(rows, features=features, cache_dir=cache,
                                             gen_kwargs={"bench_root": str(root)})
        with _atomic_dir(Path(out_dir), overwrite, is_ours) as tmp:
            ds.save_to_disk(str(tmp))
        n = len(ds)
        del ds
    return n


def _embed(b: Benchmark, a: ImagePart | AudioPart) -> dict[str, Any]:
    if a.path is None:
        return {"bytes": None, "path": a.uri}
    return {"bytes": b.read_asset(a), "path": a.path}


def export_safemt(bench: Benchmark | Path | str, out_dir: Path | str, *,
                  overwrite: bool = False, skip_unsupported: bool = False) -> dict[int, int]:
    """Write the benchmark in SafeMT's format: ``{N}_turn.json`` per user-turn count plus
    ``images/<sha256>.<ext>``; returns ``{N: number of records}``.

    The record id is ``metadata["group"]`` when the sample id is ``{group}/t{N}`` (so a
    SafeMT import round-trips exactly), else the sample id. A sample SafeMT cannot
    express (audio, more than one image, an image outside the first user turn, a
    URI-only image) raises :class:`DatasetError`, or is skipped with
    ``skip_unsupported=True``. Files are written as records stream in, not held in memory.
    """
    b = _bench(bench)
    counts: dict[int, int] = {}
    skipped = 0

    def is_ours(p: Path) -> bool:
        return any(p.glob("*_turn.json"))

    with _atomic_dir(Path(out_dir), overwrite, is_ours) as tmp:
        (tmp / "images").mkdir()
        files: dict[int, Any] = {}
        copied: set[str] = set()
        try:
            for s in b.iter_samples():
                try:
                    rec = _safemt_record(b, s, tmp, copied)
                except _Unsupported as e:
                    if skip_unsupported:
                        skipped += 1
                        continue
                    raise DatasetError(f"{b.samples_path}: sample {s.id!r}: cannot be written "
                                       f"as SafeMT ({e})") from None
                f = files.get(s.turns)
                if f is None:
                    f = files[s.turns] = open(tmp / f"{s.turns}_turn.json", "wb")  # noqa: SIM115 (closed in finally)
                    f.write(b"[\n")
                else:
                    f.write(b",\n")
                f.write(orjson.dumps(rec, option=orjson.OPT_NON_STR_KEYS))
                counts[s.turns] = counts.get(s.turns, 0) + 1
            for f in files.values():
                f.write(b"\n]\n")
        finally:
            for f in files.values():
                f.close()
    return dict(sorted(counts.items()))


class _Unsupported(Exception):
    pass


_SAFEMT_KEYS = {"id", "scenario", "image_path", "dialogue", "question", "category", "method"}


def _safemt_record(b: Benchmark, s: Sample, out: Path, copied: set[str]) -> dict[str, Any]:
    image: ImagePart | None = None
    first_user = True
    dialogue = []
    for m in s.messages:
        if isinstance(m.content, list):
            for p in m.content:
                if isinstance(p, AudioPart):
                    raise _Unsupported("it has audio")
                if isinstance(p, VideoPart):
                    raise _Unsupported("it has video")
                if isinstance(p, ImagePart):
                    if not (m.role == "user" and first_user):
                        raise _Unsupported("an image outside the first user turn")
                    if image is not None:
                        raise _Unsupported("more than one image")
                    if p.path is None:
                        raise _Unsupported("a URI-only image")
                    image = p
        dialogue.append({"role": m.role, "content": m.text})
        if m.role == "user":
            first_user = False
    group = s.metadata.get("group")
    rid = str(group) if group is not None and s.id == f"{group}/t{s.turns}" else s.id
    rec: dict[str, Any] = {"id": rid, "scenario": s.scenario}
    if image is not None and image.path is not None:  # (a URI-only image was refused above)
        name = Path(image.path).name  # assets/<sha256>.<ext>: unique by content
        if name not in copied:
            shutil.copyfile(b.asset_path(image), out / "images" / name)
            copied.add(name)
        rec["image_path"] = f"images/{name}"
    rec["dialogue"] = dialogue
    rec["question"] = s.question
    if s.category:
        rec["category"] = s.category
    if s.method:
        rec["method"] = s.method
    for k, v in s.metadata.items():
        if k != "group" and k not in _SAFEMT_KEYS:
            rec[k] = v
    return rec


def _benchmark_exporters() -> dict[str, Any]:
    """Format name -> registry entry for every exporter with ``of="benchmark"``
    (``benchmark-jsonl`` is named ``jsonl`` here; the prefix keeps it apart from the run exporter)."""
    from mmsafe.registry import PluginError, registry

    def of(e: Any) -> Any:
        try:
            return e.meta_or_attr("of", "runs")
        except PluginError:  # a broken plugin is not listed here; named, it fails with its own line
            return None

    entries = [e for e in registry("exporters").entries() if of(e) == "benchmark"]
    out: dict[str, Any] = {}
    for e in sorted(entries, key=lambda e: not e.name.startswith("benchmark-")):  # benchmark-KIND wins over KIND
        out.setdefault(e.name.removeprefix("benchmark-"), e)
    return out


class _Exporters:
    """Read-only name -> benchmark exporter view of the "exporters" registry (kept for older callers)."""

    def __contains__(self, kind: object) -> bool:
        return isinstance(kind, str) and kind in _benchmark_exporters()

    def __iter__(self) -> Iterator[str]:
        return iter(sorted(_benchmark_exporters()))

    def __getitem__(self, kind: str) -> Callable[..., Any]:
        e = _benchmark_exporters().get(kind)
        if e is None:
            raise KeyError(kind)
        return e.load()

    def __len__(self) -> int:
        return len(_benchmark_exporters())

    def keys(self) -> list[str]:
        """The format names."""
        return sorted(_benchmark_exporters())


EXPORTERS = _Exporters()
"""Benchmark exporters by format name (a view of the "exporters" registry, ``of="benchmark"``)."""


def export_benchmark(kind: str, bench: Benchmark | Path | str, out: Path | str, **opts: Any) -> Any:
    """Write ``bench`` in format ``kind``: a registered benchmark exporter (``benchmark-KIND`` or ``KIND``
    with ``of="benchmark"``; built-ins jsonl, parquet, hf, safemt) or ``module.path:function``
    (``fn(bench, out, **opts)``). An unknown kind raises :class:`DatasetError`."""
    from mmsafe.registry import is_reference, registry
    found = _benchmark_exporters()
    if kind in found:
        fn = found[kind].load()
    elif is_reference(kind):
        fn = registry("exporters").resolve(kind)
    else:
        reg = registry("exporters")
        for n in (f"benchmark-{kind}", kind):
            e = reg.entry(n)
            if e is not None and "of" not in e.meta:
                e.load()  # a broken plugin named here: its one-line PluginError, not "unknown"
        raise DatasetError(f"unknown export format {kind!r} (known: {', '.join(sorted(found))}; "
                           "or module.path:function)")
    return fn(bench, out, **opts)
