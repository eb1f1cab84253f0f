"""Video files: check them against the limits, sample frames, make a poster frame.

GIF is read with Pillow alone; mp4 and webm with PyAV (``pip install 'mmsafe[video]'``, a
wheel that ships its own FFmpeg libraries), imported only when such a file is read.
Every failure is an :class:`~mmsafe.types.AssetError` (or a ConfigError for the missing
extra) whose one line names the file: the CLI turns both into exit 2.
"""

from __future__ import annotations

import io
import os
from dataclasses import dataclass
from typing import Any

from mmsafe.types import MAX_VIDEO_BYTES, MAX_VIDEO_SECONDS, VIDEO_MIME, AssetError, ConfigError

MAX_FRAMES = 32
"""The most frames :func:`sample_frames` returns (each is an image part's worth of tokens)."""


@dataclass(frozen=True)
class VideoInfo:
    """What :func:`probe` read from a video file."""

    container: str  # mp4 | webm | gif
    duration_s: float
    frames: int  # 0 when the container does not say (webm) and nothing was decoded
    width: int
    height: int


def _container(path: str, name: str) -> str:
    ext = path.rsplit(".", 1)[-1].lower() if "." in os.path.basename(path) else ""
    if ext not in VIDEO_MIME:
        raise AssetError(f"{name}: not an mp4, webm or gif file")
    return ext


def _av(name: str) -> Any:
    try:
        import av
    except ImportError:
        raise ConfigError(f"{name}: reading mp4/webm video needs PyAV: pip install 'mmsafe[video]'") from None
    return av


def _bad(name: str, e: BaseException) -> AssetError:
    msg = str(e).splitlines()[0][:160] if str(e) else type(e).__name__
    return AssetError(f"{name}: not a readable video ({msg})")


def _png(im: Any) -> bytes:
    buf = io.BytesIO()
    im.convert("RGB").save(buf, format="PNG")
    return buf.getvalue()


# --------------------------------------------------------------------------- GIF (Pillow)


def _gif_info(path: str, name: str) -> VideoInfo:
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as im:
            if im.format != "GIF":
                raise AssetError(f"{name}: not a GIF file (Pillow reads it as {im.format})")
            n = int(getattr(im, "n_frames", 1))
            total_ms = 0
            for i in range(n):
                im.seek(i)
                total_ms += int(im.info.get("duration", 0) or 0)
            return VideoInfo("gif", total_ms / 1000.0, n, im.width, im.height)
    except (UnidentifiedImageError, OSError, EOFError, ValueError) as e:
        raise _bad(name, e) from None


def _gif_frames(path: str, name: str, indices: list[int]) -> list[bytes]:
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as im:
            out = []
            for i in indices:
                im.seek(i)
                out.append(_png(im))
            return out
    except (UnidentifiedImageError, OSError, EOFError, ValueError) as e:
        raise _bad(name, e) from None


# --------------------------------------------------------------------------- mp4 / webm (PyAV)


def _av_info(path: str, name: str, container: str) -> VideoInfo:
    av = _av(name)
    try:
        with av.open(path) as c:
            if not c.streams.video:
                raise AssetError(f"{name}: has no video stream")
            s = c.streams.video[0]
            if s.duration is not None and s.time_base is not None:
                dur = float(s.duration * s.time_base)
            elif c.duration is not None:
                dur = c.duration / 1_000_000
            else:
                dur = 0.0
            frames = int(s.frames or 0)
            if dur <= 0 or frames == 0:  # the container does not say: count by decoding
                n, last = 0, 0.0
                for f in c.decode(video=0):
                    n += 1
                    last = float(f.time or 0.0)
                frames = frames or n
                if dur <= 0 and n:
                    rate = float(s.average_rate or 0) or 25.0
                    dur = last + 1.0 / rate
            if frames == 0:
                raise AssetError(f"{name}: the video has no frames")
            return VideoInfo(container, dur, frames, int(s.codec_context.width), int(s.codec_context.height))
    except AssetError:
        raise
    except (av.FFmpegError, OSError, ValueError, IndexError) as e:
        raise _bad(name, e) from None


def _av_frames(path: str, name: str, times: list[float]) -> list[bytes]:
    av = _av(name)
    out: list[bytes] = []
    last: Any = None
    try:
        with av.open(path) as c:
            want = iter(times)
            t = next(want, None)
            for f in c.decode(video=0):
                last = f
                while t is not None and float(f.time or 0.0) >= t:
                    out.append(_png(f.to_image()))
                    t = next(want, None)
                if t is None:
                    break
    except (av.FFmpegError, OSError, ValueError) as e:
        raise _bad(name, e) from None
    if last is None:
        raise AssetError(f"{name}: the video has no frames")
    while len(out) < len(times):  # timestamps past the last frame: repeat it
        out.append(_png(last.to_image()))
    return out


# --------------------------------------------------------------------------- public


def probe(path: str, name: str | None = None) -> VideoInfo:
    """Container, duration, frame count and size of a video file (``name`` is how errors
    name it, e.g. its path in the benchmark). Raises AssetError for a file it cannot read."""
    name = name or path
    container = _container(path, name)
    if not os.path.isfile(path):
        raise AssetError(f"{name}: file not found")
    return _gif_info(path, name) if container == "gif" else _av_info(path, name, container)


def check_video(path: str, name: str | None = None, *, max_bytes: int = MAX_VIDEO_BYTES,
                max_seconds: float = MAX_VIDEO_SECONDS) -> VideoInfo:
    """:func:`probe` plus the limits: at most ``max_bytes`` and ``max_seconds``, at least one frame.
    The one place a video file is accepted or refused (preflight and send)."""
    name = name or path
    try:
        size = os.path.getsize(path)
    except OSError:
        raise AssetError(f"{name}: file not found") from None
    if size > max_bytes:
        raise AssetError(f"{name}: {size} bytes is over the {max_bytes}-byte video limit")
    info = probe(path, name)
    if info.duration_s > max_seconds:
        raise AssetError(f"{name}: {info.duration_s:.1f} s is over the {max_seconds:g}-second video limit")
    return info


def frame_times(duration_s: float, n: int) -> list[float]:
    """``n`` timestamps spread evenly over the clip: the middle of each of ``n`` equal segments."""
    return [(i + 0.5) * duration_s / n for i in range(n)]


def sample_frames(path: str, n: int = 8, name: str | None = None) -> list[bytes]:
    """``n`` frames (PNG bytes) spread evenly over the video (fewer when it has fewer frames;
    at most :data:`MAX_FRAMES`), for a target that takes images but not video."""
    name = name or path
    if n < 1:
        raise ValueError("sample_frames: n must be at least 1")
    info = check_video(path, name)
    n = min(n, MAX_FRAMES, info.frames)
    if info.container == "gif":
        return _gif_frames(path, name, [int((i + 0.5) * info.frames / n) for i in range(n)])
    return _av_frames(path, name, frame_times(info.duration_s, n))


def poster_frame(path: str, name: str | None = None) -> bytes:
    """One PNG that stands for the video in the report and viewer: the frame at 10 % of
    its length (past a fade-in, still near the start)."""
    name = name or path
    info = probe(path, name)
    if info.container == "gif":
        return _gif_frames(path, name, [int(info.frames * 0.1)])[0]
    return _av_frames(path, name, [info.duration_s * 0.1])[0]
