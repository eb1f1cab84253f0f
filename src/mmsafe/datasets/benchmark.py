"""The benchmark directory: atomic, streaming writer and streaming reader.

Layout of a benchmark directory::

    <root>/
      benchmark.json      BenchmarkManifest (name, taxonomy, counts, provenance, ...)
      samples.jsonl       one Sample per line
      assets/<sha256>.<ext>   content-addressed images and audio

``ImagePart.path`` / ``AudioPart.path`` are relative to ``<root>`` (``assets/ab12...png``)
and carry ``sha256`` and ``mime``. :class:`BenchmarkWriter` builds the directory in a
temporary sibling and renames it into place only when everything succeeded;
:func:`open_benchmark` reads it back one line at a time.
"""

from __future__ import annotations

import hashlib
import io
import os
import shutil
import uuid
import wave
from collections.abc import Collection, Iterator
from pathlib import Path
from typing import Any, Literal

import orjson
from PIL import Image
from pydantic import ValidationError

from mmsafe.types import (
    FORMAT_VERSION,
    MAX_ASSET_BYTES,
    AssetError,
    AudioPart,
    BenchmarkCounts,
    BenchmarkManifest,
    ImagePart,
    Sample,
    VideoPart,
    asset_file,
    read_asset,
)

from .errors import DatasetError, describe_validation_error

__all__ = [
    "MANIFEST_FILE",
    "SAMPLES_FILE",
    "ASSETS_DIR",
    "Benchmark",
    "BenchmarkWriter",
    "open_benchmark",
    "inspect_image",
    "inspect_audio",
    "inspect_video",
]

MANIFEST_FILE = "benchmark.json"
SAMPLES_FILE = "samples.jsonl"
ASSETS_DIR = "assets"

# Pillow format name -> file extension used for the stored copy.
_IMAGE_EXT = {"JPEG": "jpg", "PNG": "png", "WEBP": "webp", "GIF": "gif", "BMP": "bmp",
              "TIFF": "tif", "MPO": "jpg", "ICO": "ico"}


# --------------------------------------------------------------------------- asset checks


def inspect_image(data: bytes, name: str = "<bytes>") -> tuple[str, str]:
    """Check that ``data`` is an image Pillow can open and ``verify()``.

    Returns ``(extension, mime)``; raises :class:`DatasetError` naming ``name`` for
    anything Pillow refuses (unknown format, truncated or corrupt data, decompression bomb).
    """
    try:
        with Image.open(io.BytesIO(data)) as im:
            fmt = im.format or ""
            im.verify()
    except Image.DecompressionBombError as e:
        raise DatasetError(f"{name}: image refused as a decompression bomb ({e})") from None
    except Exception as e:  # Pillow raises many types (OSError, SyntaxError, ValueError...)
        reason = str(e) or type(e).__name__
        raise DatasetError(f"{name}: not a valid image ({reason})") from None
    ext = _IMAGE_EXT.get(fmt, fmt.lower() or "img")
    mime = Image.MIME.get(fmt) or f"image/{ext}"
    return ext, mime


def inspect_audio(data: bytes, name: str = "<bytes>") -> tuple[str, str]:
    """Recognise WAV, MP3, FLAC, OGG and MP4/M4A audio; returns ``(extension, mime)``.

    WAV files are opened with :mod:`wave` so that truncated or corrupt headers are
    refused (non-PCM encodings that :mod:`wave` cannot decode are accepted as long as
    the RIFF/WAVE header is intact).
    """
    head = data[:12]
    if head[:4] == b"RIFF" and head[8:12] == b"WAVE":
        try:
            with wave.open(io.BytesIO(data)) as w:
                w.getnframes()
        except wave.Error as e:
            if "unknown format" not in str(e):
                raise DatasetError(f"{name}: not a valid WAV file ({e})") from None
        except EOFError:
            raise DatasetError(f"{name}: not a valid WAV file (truncated)") from None
        return "wav", "audio/wav"
    if head[:4] == b"fLaC":
        return "flac", "audio/flac"
    if head[:4] == b"OggS":
        return "ogg", "audio/ogg"
    if head[4:8] == b"ftyp":
        return "m4a", "audio/mp4"
    if head[:3] == b"ID3" or (len(head) > 1 and head[0] == 0xFF and head[1] & 0xE0 == 0xE0):
        return "mp3", "audio/mpeg"
    raise DatasetError(f"{name}: not a recognised audio file (wav, mp3, flac, ogg, m4a)")


def inspect_video(data: bytes, name: str = "<bytes>") -> tuple[str, str]:
    """Recognise an MP4, WebM or GIF video by its header; returns ``(extension, mime)``.
    Decoding, frame count and duration are checked when a run starts (``mmsafe.media.video``)."""
    if data[4:8] == b"ftyp":
        return "mp4", "video/mp4"
    if data[:4] == b"\x1a\x45\xdf\xa3":
        return "webm", "video/webm"
    if data[:6] in (b"GIF87a", b"GIF89a"):
        return "gif", "image/gif"
    raise DatasetError(f"{name}: not a recognised video file (mp4, webm, gif)")


# --------------------------------------------------------------------------- atomic directories


def sibling_name(out: Path, tag: str) -> Path:
    """A fresh hidden name next to ``out`` (``.<name>.<random>.<tag>``)."""
    return out.parent / f".{out.name}.{uuid.uuid4().hex[:12]}.{tag}"


def make_sibling_dir(out: Path, tag: str) -> Path:
    """Create a hidden temporary directory next to ``out`` (same filesystem, so a rename
    is atomic; created with ``mkdir`` so the usual umask permissions apply)."""
    out.parent.mkdir(parents=True, exist_ok=True)
    d = sibling_name(out, tag)
    d.mkdir()
    return d


def swap_into_place(tmp: Path, out: Path) -> None:
    """Rename the finished directory ``tmp`` to ``out``.

    If ``out`` exists it is renamed aside first, the new one renamed in, and only then
    the old one deleted; if the second rename fails the old directory is put back.
    """
    if out.exists():
        old = sibling_name(out, "old")
        os.replace(out, old)
        try:
            os.replace(tmp, out)
        except BaseException:
            os.replace(old, out)
            raise
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(tmp, out)


# --------------------------------------------------------------------------- writer


class BenchmarkWriter:
    """Write a benchmark directory atomically, streaming samples to disk.

    Use as a context manager::

        with BenchmarkWriter(out, BenchmarkManifest(name="demo")) as w:
            img = w.add_image(Path("cat.png"))
            w.add(Sample(id="1", question=q, messages=[Message(role="user",
                         content=[img, TextPart(text=q)])]))

    Everything is written into a temporary sibling directory of ``out_dir``; only on a
    clean exit is it renamed to ``out_dir``. On an exception the temporary directory is
    removed and an existing benchmark at ``out_dir`` is left untouched. An existing
    ``out_dir`` is refused unless ``overwrite=True``; then the old directory is renamed
    aside, the new one renamed in, and the old one deleted. With ``overwrite=True`` a
    non-empty directory that is not a benchmark (no ``benchmark.json``) is still refused.

    ``manifest.counts`` is recomputed from the samples added; when ``manifest.taxonomy``
    is empty it is filled as ``{category or "uncategorised": [scenarios...]}``.

    Every method that can fail on bad input takes ``where=``, a location such as
    ``"data.csv:12"`` that prefixes the error message.
    """

    def __init__(self, out_dir: Path | str, manifest: BenchmarkManifest, overwrite: bool = False):
        self.out_dir = Path(out_dir)
        self.manifest = manifest
        self.overwrite = overwrite
        self._tmp: Path | None = None
        self._fh: io.BufferedWriter | None = None
        self._ids: set[str] = set()
        self._assets: dict[str, tuple[str, str, str]] = {}  # sha256 -> (relpath, mime, kind)
        self._asset_paths: set[str] = set()
        # (resolved file, size, mtime_ns, kind) -> sha256: a file added twice is read once
        self._path_cache: dict[tuple[str, int, int, str], str] = {}
        self._taxonomy: dict[str, set[str]] = {}
        self._done = False

    # -- lifecycle -----------------------------------------------------------------

    def __enter__(self) -> BenchmarkWriter:
        self.open()
        return self

    def __exit__(self, exc_type, exc, tb) -> Literal[False]:
        if exc_type is None:
            self.commit()
        else:
            self.abort()
        return False

    @property
    def tmp_dir(self) -> Path | None:
        """The temporary directory being written (None before ``open`` / after the end)."""
        return self._tmp

    def open(self) -> None:
        """Check the destination and create the temporary directory."""
        if self._tmp is not None or self._done:
            raise DatasetError(f"{self.out_dir}: writer already opened")
        self._check_destination()
        parent = self.out_dir.parent
        parent.mkdir(parents=True, exist_ok=True)
        self._tmp = make_sibling_dir(self.out_dir, "tmp")
        (self._tmp / ASSETS_DIR).mkdir()
        self._fh = open(self._tmp / SAMPLES_FILE, "wb")  # noqa: SIM115 (the writer closes it on close/abort)
        self._hash = hashlib.sha256()
        self.manifest.counts = BenchmarkCounts()

    def _check_destination(self) -> None:
        out = self.out_dir
        if not out.exists() and not out.is_symlink():
            return
        if not self.overwrite:
            raise DatasetError(f"{out}: already exists (pass overwrite=True to replace it)")
        if not out.is_dir() or out.is_symlink():
            raise DatasetError(f"{out}: exists and is not a directory; refusing to replace it")
        if not (out / MANIFEST_FILE).is_file() and any(out.iterdir()):
            raise DatasetError(f"{out}: is a non-empty directory that is not a benchmark; "
                               "refusing to replace it")

    def commit(self) -> BenchmarkManifest:
        """Finish: write the manifest and move the directory into place."""
        tmp = self._require_open()
        try:
            assert self._fh is not None
            self._fh.flush()
            os.fsync(self._fh.fileno())
            self._fh.close()
            self._fh = None
            m = self.manifest
            m.counts.n_assets = len(self._assets)
            m.samples_sha256 = self._hash.hexdigest()
            if not m.taxonomy:
                m.taxonomy = {k: sorted(v) for k, v in sorted(self._taxonomy.items())}
            with open(tmp / MANIFEST_FILE, "wb") as f:
                f.write(m.model_dump_json(indent=2).encode())
                f.write(b"\n")
                f.flush()
                os.fsync(f.fileno())
            self._swap_into_place(tmp)
        except BaseException:
            self.abort()
            raise
        self._tmp = None
        self._done = True
        return self.manifest

    def _swap_into_place(self, tmp: Path) -> None:
        if self.out_dir.exists():
            self._check_destination()  # it may have appeared while we were writing
        swap_into_place(tmp, self.out_dir)

    def abort(self) -> None:
        """Discard everything written so far; ``out_dir`` is left as it was."""
        if self._fh is not None:
            try:
                self._fh.close()
            finally:
                self._fh = None
        if self._tmp is not None:
            shutil.rmtree(self._tmp, ignore_errors=True)
            self._tmp = None
        self._done = True

    def _require_open(self) -> Path:
        if self._tmp is None:
            raise DatasetError(f"{self.out_dir}: writer is not open (use it as a context manager)")
        return self._tmp

    # -- assets --------------------------------------------------------------------

    def add_image(self, src: Path | str | bytes, *, where: str | None = None,
                  name: str | None = None) -> ImagePart:
        """Copy an image into ``assets/`` (deduplicated by sha256) and return its part.

        ``src`` is a file path or the image bytes. The file must exist, be readable,
        be at most ``MAX_ASSET_BYTES`` and pass Pillow's ``verify()``.
        """
        rel, sha, mime = self._add_asset(src, "image", where, name)
        return ImagePart(path=rel, sha256=sha, mime=mime)

    def add_audio(self, src: Path | str | bytes, *, where: str | None = None,
                  name: str | None = None) -> AudioPart:
        """Copy an audio file (wav, mp3, flac, ogg, m4a) into ``assets/`` and return its part."""
        rel, sha, mime = self._add_asset(src, "audio", where, name)
        return AudioPart(path=rel, sha256=sha, mime=mime)

    def add_video(self, src: Path | str | bytes, *, where: str | None = None,
                  name: str | None = None) -> VideoPart:
        """Copy a video (mp4, webm, gif) into ``assets/`` and return its part."""
        rel, sha, mime = self._add_asset(src, "video", where, name)
        return VideoPart(path=rel, sha256=sha, mime=mime)

    def _add_asset(self, src: Path | str | bytes, kind: str, where: str | None,
                   name: str | None) -> tuple[str, str, str]:
        tmp = self._require_open()
        prefix = f"{where}: {kind} " if where else ""
        if isinstance(src, (bytes, bytearray, memoryview)):
            data = bytes(src)
            label = f"{prefix}{name or '<bytes>'}"
            if len(data) > MAX_ASSET_BYTES:
                raise DatasetError(f"{label}: {len(data)} bytes is over the "
                                   f"{MAX_ASSET_BYTES}-byte limit")
        else:
            path = Path(src)
            label = f"{prefix}{name or path}"
            try:
                st = path.stat()
            except FileNotFoundError:
                raise DatasetError(f"{label}: file not found") from None
            except OSError as e:
                raise DatasetError(f"{label}: cannot stat ({e.strerror})") from None
            if not path.is_file():
                raise DatasetError(f"{label}: not a regular file")
            if st.st_size > MAX_ASSET_BYTES:
                raise DatasetError(f"{label}: {st.st_size} bytes is over the "
                                   f"{MAX_ASSET_BYTES}-byte limit")
            key = (str(path.resolve()), st.st_size, st.st_mtime_ns, kind)
            sha = self._path_cache.get(key)
            if sha is not None:
                rel, mime, _ = self._assets[sha]
                return rel, sha, mime
            try:
                data = path.read_bytes()
            except PermissionError:
                raise DatasetError(f"{label}: file not readable") from None
            except OSError as e:
                raise DatasetError(f"{label}: cannot read ({e.strerror})") from None
        sha = hashlib.sha256(data).hexdigest()
        known = self._assets.get(sha)
        if known is not None:
            rel, mime, known_kind = known
            if known_kind != kind:
                raise DatasetError(f"{label}: same bytes already added as {known_kind}")
        else:
            inspect = {"image": inspect_image, "video": inspect_video}.get(kind, inspect_audio)
            ext, mime = inspect(data, label)
            rel = f"{ASSETS_DIR}/{sha}.{ext}"
            (tmp / rel).write_bytes(data)
            self._assets[sha] = (rel, mime, kind)
            self._asset_paths.add(rel)
        if not isinstance(src, (bytes, bytearray, memoryview)):
            self._path_cache[key] = sha
        return rel, sha, mime

    # -- samples -------------------------------------------------------------------

    def add(self, sample: Sample | dict[str, Any], *, where: str | None = None) -> Sample:
        """Validate ``sample``, append it to ``samples.jsonl`` and update the counts.

        Duplicate ids are an error, and so is a local asset path that was not added
        with :meth:`add_image` / :meth:`add_audio` (URI-only assets are allowed).
        """
        self._require_open()
        loc = where or str(self.out_dir)
        if not isinstance(sample, Sample):
            try:
                sample = Sample.model_validate(sample)
            except ValidationError as e:
                raise DatasetError(f"{loc}: {describe_validation_error(e)}") from None
        if sample.id in self._ids:
            raise DatasetError(f"{loc}: duplicate sample id {sample.id!r}")
        for part in sample.assets():
            if part.path is not None and part.path not in self._asset_paths:
                raise DatasetError(f"{loc}: {part.path}: asset was not added to this benchmark "
                                   "(use add_image/add_audio/add_video)")
        assert self._fh is not None
        line = sample.model_dump_json(exclude_none=True).encode() + b"\n"
        self._fh.write(line)
        self._hash.update(line)
        self._ids.add(sample.id)
        self.manifest.counts.add(sample)
        self._taxonomy.setdefault(sample.category or "uncategorised", set()).add(sample.scenario)
        return sample

    def __len__(self) -> int:
        return len(self._ids)


# --------------------------------------------------------------------------- reader


class Benchmark:
    """A benchmark directory opened for reading. Samples are streamed, never all loaded."""

    def __init__(self, root: Path, manifest: BenchmarkManifest):
        self.root = root
        self.manifest = manifest

    @property
    def samples_path(self) -> Path:
        return self.root / SAMPLES_FILE

    @property
    def name(self) -> str:
        return self.manifest.name

    def __len__(self) -> int:
        return self.manifest.counts.n_samples

    def __iter__(self) -> Iterator[Sample]:
        return self.iter_samples()

    def __repr__(self) -> str:
        return f"Benchmark(name={self.manifest.name!r}, root={str(self.root)!r}, n={len(self)})"

    def iter_samples(self) -> Iterator[Sample]:
        """Yield samples one line at a time.

        Raises :class:`DatasetError` ``"<root>/samples.jsonl:<line>: <field>: <reason>"``
        for a malformed line (bad JSON, wrong field, a conversation that does not end in
        a user turn, ...). Blank lines are skipped.
        """
        for _, s in self.iter_indexed():
            yield s

    def iter_indexed(self, only: Collection[str] | None = None) -> Iterator[tuple[int, Sample]]:
        """``(position, sample)`` for every sample, as :meth:`iter_samples`; with ``only``, for
        the samples whose id is in it: the other lines are read for their id but not
        validated into samples (a Ray shard's few hundred samples out of a large file cost
        what they are, not what the file is). Positions count every sample either way."""
        path = self.samples_path
        try:
            fh = open(path, "rb")  # noqa: SIM115 (a with block below; opened here for the missing-file error)
        except FileNotFoundError:
            raise DatasetError(f"{path}: missing") from None
        with fh:
            i = 0
            for lineno, line in enumerate(fh, 1):
                if not line.strip():
                    continue
                if only is not None:
                    try:
                        rec = orjson.loads(line)
                        sid = rec.get("id") if isinstance(rec, dict) else None
                    except orjson.JSONDecodeError:
                        sid = None  # validated below, where its error names the line
                    if isinstance(sid, str) and sid not in only:
                        i += 1
                        continue
                try:
                    s = Sample.model_validate_json(line)
                except ValidationError as e:
                    raise DatasetError(f"{path}:{lineno}: {describe_validation_error(e)}") from None
                if only is None or s.id in only:
                    yield i, s
                i += 1

    def unchanged_since_written(self) -> bool:
        """True when samples.jsonl is byte-identical to what the writer validated and wrote
        (its sha256 is in the manifest), so a reader may skip re-validating it."""
        want = self.manifest.samples_sha256
        if not want:
            return False
        h = hashlib.sha256()
        try:
            with open(self.samples_path, "rb") as f:
                for chunk in iter(lambda: f.read(1 << 20), b""):
                    h.update(chunk)
        except OSError:
            return False
        return h.hexdigest() == want

    def iter_raw(self) -> Iterator[dict[str, Any]]:
        """Yield each line as a plain dict (orjson, no validation) — only for a file that
        :meth:`unchanged_since_written` vouches for."""
        with open(self.samples_path, "rb") as fh:
            for line in fh:
                if line.strip():
                    yield orjson.loads(line)

    def asset_path(self, part: ImagePart | AudioPart | VideoPart) -> Path:
        """The file of a stored asset, refusing paths (symlinks included) outside the root."""
        try:
            return Path(asset_file(part, self.root, follow_links=True))
        except AssetError as e:
            raise DatasetError(f"{self.root}: {e}") from None

    def read_asset(self, part: ImagePart | AudioPart | VideoPart, *, verify: bool = True) -> bytes:
        """Read a stored asset's bytes (checking its sha256 unless ``verify=False``)."""
        try:
            return read_asset(part, self.root, verify=verify)
        except AssetError as e:
            raise DatasetError(f"{self.root}: {e}") from None


def open_benchmark(path: Path | str) -> Benchmark:
    """Open a benchmark directory (or its ``benchmark.json``) for reading.

    Only the manifest is read here; samples stream from :meth:`Benchmark.iter_samples`.
    A missing or invalid ``benchmark.json``, a missing ``samples.jsonl`` or a manifest
    written by a newer format version raises :class:`DatasetError`.
    """
    p = Path(path)
    root = p.parent if p.name == MANIFEST_FILE and p.is_file() else p
    if not root.is_dir():
        raise DatasetError(f"{root}: no such benchmark directory")
    mpath = root / MANIFEST_FILE
    try:
        raw = mpath.read_bytes()
    except FileNotFoundError:
        raise DatasetError(f"{mpath}: missing (not a benchmark directory)") from None
    except OSError as e:
        raise DatasetError(f"{mpath}: cannot read ({e.strerror})") from None
    try:
        manifest = BenchmarkManifest.model_validate_json(raw)
    except ValidationError as e:
        raise DatasetError(f"{mpath}: {describe_validation_error(e, what='manifest')}") from None
    if manifest.format_version > FORMAT_VERSION:
        raise DatasetError(f"{mpath}: format_version {manifest.format_version} is newer than this "
                           f"mmsafe supports ({FORMAT_VERSION}); upgrade mmsafe")
    if not (root / SAMPLES_FILE).is_file():
        raise DatasetError(f"{root / SAMPLES_FILE}: missing")
    return Benchmark(root, manifest)
