"""An OpenAI-compatible loopback server that *checks* the media it receives.

Every ``input_audio`` part is base64-decoded and must be the format it claims (a WAV that
:mod:`wave` opens with at least one frame, or an MP3 header); every ``video_url`` must be a
``data:video/...;base64`` URL whose bytes are that container; every ``image_url`` must be a
data URL Pillow can open. A part that fails is answered with HTTP 400 naming the problem
(which a run records as an error, never as a reply). The model name sets what a request
must carry: ``need-audio``, ``need-video``, ``need-image`` (at least one such part) or
``any``. What was received is recorded per request (sha256 of each decoded part)."""

from __future__ import annotations

import base64
import binascii
import hashlib
import io
import wave
from typing import Any

import orjson
from aiohttp import web

from _serve import ThreadedApp, chat_completion

REFUSAL = "I'm sorry, but I can't help with that."


def _data_url(url: str) -> tuple[str, bytes]:
    if not url.startswith("data:") or ";base64," not in url:
        raise ValueError(f"not a base64 data URL: {url[:40]!r}")
    head, _, b64 = url.partition(",")
    return head[5:].split(";", 1)[0], base64.b64decode(b64, validate=True)


def check_audio(data: bytes, fmt: str) -> float:
    """Seconds of audio in ``data`` (raises ValueError when it is not the ``fmt`` it claims)."""
    if fmt == "wav":
        if data[:4] != b"RIFF" or data[8:12] != b"WAVE":
            raise ValueError("input_audio format wav but no RIFF/WAVE header")
        try:
            with wave.open(io.BytesIO(data)) as w:
                n, rate = w.getnframes(), w.getframerate()
        except (wave.Error, EOFError) as e:
            raise ValueError(f"input_audio is not a readable WAV ({e})") from None
        if n <= 0 or rate <= 0:
            raise ValueError("input_audio WAV has no frames")
        return n / rate
    if fmt == "mp3":
        if not (data[:3] == b"ID3" or (data[0] == 0xFF and data[1] & 0xE0 == 0xE0)):
            raise ValueError("input_audio format mp3 but no MP3 header")
        return 0.0
    raise ValueError(f"input_audio format {fmt!r} is neither wav nor mp3")


def check_video(mime: str, data: bytes) -> None:
    """Raise ValueError unless ``data`` is the container ``mime`` names."""
    ok = {"video/mp4": data[4:8] == b"ftyp", "video/webm": data[:4] == b"\x1a\x45\xdf\xa3",
          "image/gif": data[:4] == b"GIF8"}.get(mime)
    if not ok:
        raise ValueError(f"video_url {mime}: bytes are not that container")


class MediaChecker(ThreadedApp):
    def __init__(self) -> None:
        super().__init__()
        self.received: list[dict[str, Any]] = []  # per accepted request
        self.rejected: list[str] = []

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def reset(self) -> None:
        with self._lock:
            self.received.clear()
            self.rejected.clear()

    def routes(self) -> list[web.RouteDef]:
        return [web.post("/v1/chat/completions", self._chat)]

    def _inspect(self, msgs: list[dict[str, Any]]) -> dict[str, Any]:
        got: dict[str, Any] = {"audio": [], "audio_seconds": [], "video": [], "images": [], "text": []}
        for m in msgs:
            content = m.get("content")
            if not isinstance(content, list):
                got["text"].append(content or "")
                continue
            for p in content:
                t = p.get("type")
                if t == "text":
                    got["text"].append(p["text"])
                elif t == "input_audio":
                    try:
                        data = base64.b64decode(p["input_audio"]["data"], validate=True)
                    except (binascii.Error, KeyError, TypeError) as e:
                        raise ValueError(f"input_audio data is not base64 ({e})") from None
                    got["audio_seconds"].append(check_audio(data, p["input_audio"].get("format", "")))
                    got["audio"].append(hashlib.sha256(data).hexdigest())
                elif t == "video_url":
                    mime, data = _data_url(p["video_url"]["url"])
                    check_video(mime, data)
                    got["video"].append((mime, hashlib.sha256(data).hexdigest()))
                elif t == "image_url":
                    from PIL import Image
                    mime, data = _data_url(p["image_url"]["url"])
                    with Image.open(io.BytesIO(data)) as im:
                        im.verify()
                    got["images"].append(hashlib.sha256(data).hexdigest())
                else:
                    raise ValueError(f"unknown content part type {t!r}")
        return got

    async def _chat(self, request: web.Request) -> web.Response:
        body = orjson.loads(await request.read())
        model = str(body.get("model"))
        try:
            got = self._inspect(body.get("messages") or [])
            need = {"need-audio": "audio", "need-video": "video", "need-image": "images"}.get(model)
            if need and not got[need]:
                raise ValueError(f"model {model}: the request carries no {need}")
        except Exception as e:  # any malformed part is the client's fault: 400
            with self._lock:
                self.rejected.append(str(e))
            return web.json_response({"error": {"message": str(e)}}, status=400)
        with self._lock:
            self.received.append(got)
        return chat_completion(model, body["messages"], REFUSAL)
