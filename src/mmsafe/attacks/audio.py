"""Text-to-speech for audio benchmark items (SafeBench speaks each question in two voices).

* offline: ``espeak-ng`` through a subprocess (``apt-get install espeak-ng``); the text is
  passed on stdin, never on the command line; output is 16-bit mono WAV.
* an OpenAI-compatible ``POST {base_url}/audio/speech`` endpoint
  (``{"model", "input", "voice", "response_format": "wav"}``).

:func:`wav_duration` checks what came back.
"""

from __future__ import annotations

import asyncio
import io
import os
import shutil
import subprocess
import tempfile
import wave
from typing import Any

import aiohttp

__all__ = ["ESPEAK_VOICES", "AudioError", "espeak_binary", "espeak_available", "tts_espeak",
           "tts_espeak_async", "tts_openai", "wav_duration"]

# two clearly different voices (SafeBench uses a male and a female voice)
ESPEAK_VOICES = ("en-us+m3", "en-gb+f3")


class AudioError(RuntimeError):
    """Speech could not be made (engine missing, failed, or no audio produced)."""

    pass


def espeak_binary() -> str | None:
    """The espeak-ng (or espeak) executable on PATH, or None."""
    return shutil.which("espeak-ng") or shutil.which("espeak")


def espeak_available() -> bool:
    """True when an espeak binary is on PATH."""
    return espeak_binary() is not None


def tts_espeak(text: str, voice: str = ESPEAK_VOICES[0], *, speed: int = 160, timeout_s: float = 60.0) -> bytes:
    """Speak ``text`` with espeak-ng and return WAV bytes. Raises AudioError when espeak-ng
    is missing, fails or produces no audio."""
    exe = espeak_binary()
    if exe is None:
        raise AudioError("espeak-ng not found: install it (apt-get install espeak-ng) or use an "
                         "OpenAI-compatible speech endpoint")
    if not text.strip():
        raise AudioError("empty text")
    fd, path = tempfile.mkstemp(suffix=".wav", prefix="mmsafe-tts-")
    os.close(fd)
    try:
        proc = subprocess.run([exe, "-v", voice, "-s", str(int(speed)), "-w", path, "--stdin"],
                              input=text.encode("utf-8"), capture_output=True, timeout=timeout_s)
        if proc.returncode != 0:
            raise AudioError(f"espeak-ng failed ({proc.returncode}): "
                             f"{proc.stderr.decode('utf-8', 'replace').strip()[:200]}")
        with open(path, "rb") as f:
            data = f.read()
    except subprocess.TimeoutExpired:
        raise AudioError(f"espeak-ng timed out after {timeout_s:g}s") from None
    finally:
        try:
            os.unlink(path)
        except OSError:
            pass
    if wav_duration(data) <= 0:
        raise AudioError("espeak-ng produced no audio")
    return data


async def tts_espeak_async(text: str, voice: str = ESPEAK_VOICES[0], **kw: Any) -> bytes:
    """:func:``tts_espeak`` in a worker thread."""
    return await asyncio.to_thread(tts_espeak, text, voice, **kw)


async def tts_openai(text: str, *, base_url: str, model: str = "tts-1", voice: str = "alloy",
                     api_key_env: str | None = None, timeout_s: float = 120.0,
                     session: aiohttp.ClientSession | None = None) -> bytes:
    """POST ``{base_url}/audio/speech`` and return the WAV bytes."""
    headers = {"Content-Type": "application/json"}
    key = os.environ.get(api_key_env or "OPENAI_API_KEY")
    if key:
        headers["Authorization"] = f"Bearer {key}"
    body = {"model": model, "input": text, "voice": voice, "response_format": "wav"}
    own = session is None
    s = session or aiohttp.ClientSession()
    try:
        async with s.post(base_url.rstrip("/") + "/audio/speech", json=body, headers=headers,
                          timeout=aiohttp.ClientTimeout(total=timeout_s)) as r:
            data = await r.read()
            if r.status != 200:
                raise AudioError(f"speech endpoint HTTP {r.status}: {data[:200]!r}")
    except aiohttp.ClientError as e:
        raise AudioError(f"speech endpoint connection error: {e}") from None
    finally:
        if own:
            await s.close()
    if wav_duration(data) <= 0:
        raise AudioError("speech endpoint returned no audio (or not WAV)")
    return data


def wav_duration(data: bytes) -> float:
    """Duration in seconds of WAV bytes (0.0 when unreadable). espeak-ng writes a header
    with an unknown length when streaming; the frame count is then derived from the size."""
    try:
        with wave.open(io.BytesIO(data)) as w:
            rate = w.getframerate()
            n = w.getnframes()
            width = w.getsampwidth() * w.getnchannels()
            if (n == 0 or n >= 0x7FFFFFF0 // max(width, 1)) and width:
                n = max(0, (len(data) - 44) // width)
            return n / float(rate) if rate else 0.0
    except (wave.Error, EOFError):
        return 0.0
