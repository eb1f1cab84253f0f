"""Random access to a benchmark's samples by id, and its image assets.

:class:`SampleIndex` scans ``samples.jsonl`` once, keeping only ``id → (offset, length)``
(a few dozen bytes per sample), and then reads a single line per lookup. Asset paths are
checked against the benchmark root (no ``..``, no absolute paths, no symlink escaping).
"""

from __future__ import annotations

import base64
import io
import os
import threading
from pathlib import Path
from typing import Any

import orjson

from mmsafe.datasets import DatasetError, open_benchmark
from mmsafe.types import ImagePart, Sample

IMAGE_MIMES = {"png": "image/png", "jpg": "image/jpeg", "jpeg": "image/jpeg", "gif": "image/gif",
               "webp": "image/webp", "bmp": "image/bmp"}
AUDIO_MIMES = {"wav": "audio/wav", "mp3": "audio/mpeg", "flac": "audio/flac", "ogg": "audio/ogg",
               "m4a": "audio/mp4"}
VIDEO_MIMES = {"mp4": "video/mp4", "webm": "video/webm"}  # gif is served as an image


class SampleIndex:
    """id → sample, over one benchmark directory, built lazily on first lookup."""

    def __init__(self, root: Path | str):
        self.bench = open_benchmark(root)
        self.root = self.bench.root
        self._offsets: dict[str, tuple[int, int]] | None = None
        self._lock = threading.Lock()

    def _build(self) -> dict[str, tuple[int, int]]:
        offsets: dict[str, tuple[int, int]] = {}
        with open(self.bench.samples_path, "rb") as f:
            pos = 0
            for line in f:
                n = len(line)
                s = line.strip()
                if s:
                    try:
                        sid = orjson.loads(s).get("id")
                    except (orjson.JSONDecodeError, AttributeError):
                        sid = None
                    if isinstance(sid, str):
                        offsets.setdefault(sid, (pos, n))
                pos += n
        return offsets

    @property
    def offsets(self) -> dict[str, tuple[int, int]]:
        """Sample id -> (byte offset, length) in ``samples.jsonl``, built on first use (once, thread-safe)."""
        if self._offsets is None:
            with self._lock:
                if self._offsets is None:
                    self._offsets = self._build()
        return self._offsets

    def __contains__(self, sample_id: str) -> bool:
        return sample_id in self.offsets

    def get(self, sample_id: str) -> Sample | None:
        """The sample with this id, read from its line; None when unknown or unreadable."""
        loc = self.offsets.get(sample_id)
        if loc is None:
            return None
        with open(self.bench.samples_path, "rb") as f:
            f.seek(loc[0])
            line = f.read(loc[1])
        try:
            return Sample.model_validate_json(line)
        except ValueError:
            return None

    def asset_file(self, rel: str) -> Path | None:
        """The file for an asset path as written in a sample, or None when it is not a
        plain path inside the root (``..``, absolute, symlink out) or not an image/audio."""
        if not rel or "\x00" in rel or "\\" in rel or len(rel) > 1024:
            return None
        try:
            part = ImagePart(path=rel)
        except ValueError:
            return None
        ext = rel.rsplit(".", 1)[-1].lower() if "." in rel else ""
        if ext not in IMAGE_MIMES and ext not in AUDIO_MIMES and ext not in VIDEO_MIMES:
            return None
        try:
            p = self.bench.asset_path(part)
            return p if p.is_file() else None
        except (DatasetError, ValueError, OSError):
            return None


def mime_of(path: str) -> str | None:
    """The image, audio or video MIME type of a file name, or None."""
    ext = path.rsplit(".", 1)[-1].lower() if "." in path else ""
    return IMAGE_MIMES.get(ext) or AUDIO_MIMES.get(ext) or VIDEO_MIMES.get(ext)


def thumbnail_data_uri(path: Path, max_side: int = 320) -> str | None:
    """A small PNG/JPEG data URI of an image file (None when Pillow cannot read it)."""
    from PIL import Image

    try:
        with Image.open(path) as im:
            im.load()
            im.thumbnail((max_side, max_side))
            buf = io.BytesIO()
            if im.mode in ("RGBA", "LA", "P", "L", "1"):
                im.save(buf, format="PNG", optimize=True)
                mime = "image/png"
            else:
                im.convert("RGB").save(buf, format="JPEG", quality=80)
                mime = "image/jpeg"
    except Exception:  # Pillow raises many types for bad files
        return None
    return f"data:{mime};base64," + base64.b64encode(buf.getvalue()).decode()


def poster_data_uri(path: Path, max_side: int = 320) -> str | None:
    """A small PNG data URI of a video's poster frame (:func:`mmsafe.media.video.poster_frame`),
    or None when the file cannot be read (or PyAV is missing for mp4/webm)."""
    from PIL import Image

    from mmsafe.media.video import poster_frame
    from mmsafe.types import InputError

    try:
        png = poster_frame(str(path))
        with Image.open(io.BytesIO(png)) as im:
            im.thumbnail((max_side, max_side))
            buf = io.BytesIO()
            im.save(buf, format="PNG", optimize=True)
    except (InputError, OSError, ValueError):
        return None
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


def render_messages(sample: Sample | None, index: SampleIndex | None) -> list[dict[str, Any]]:
    """Messages as plain dicts ``{"role", "parts": [{"type": "text"|"image"|"audio"|"video", ...}]}``
    (a video part also carries ``poster``: a PNG data URI of its poster frame, or None)."""
    if sample is None:
        return []
    out = []
    for m in sample.messages:
        parts: list[dict[str, Any]] = []
        if isinstance(m.content, str):
            parts.append({"type": "text", "text": m.content})
        else:
            for p in m.content:
                if p.type == "text":
                    parts.append({"type": "text", "text": p.text})
                else:
                    f = index.asset_file(p.path) if p.path and index is not None else None
                    parts.append({"type": p.type, "path": p.path, "uri": p.uri, "sha256": p.sha256,
                                  "mime": p.mime or (mime_of(p.path) if p.path else None), "available": f is not None})
                    if p.type == "video":  # a still that stands for the clip (report and viewer)
                        parts[-1]["poster"] = poster_data_uri(f) if f is not None else None
        out.append({"role": m.role, "parts": parts})
    return out


def open_index(benchmark_path: Path | str | None) -> SampleIndex | None:
    """A sample index of the benchmark folder, or None when there is none (moved, deleted, unreadable)."""
    if not benchmark_path or not os.path.isdir(benchmark_path):
        return None
    try:
        return SampleIndex(benchmark_path)
    except DatasetError:
        return None


__all__ = ["SampleIndex", "open_index", "render_messages", "thumbnail_data_uri", "poster_data_uri", "mime_of"]
