"""Any OpenAI-compatible chat endpoint (OpenAI, vLLM, SGLang, Ollama, LM Studio, TGI,
OpenRouter, ...) over aiohttp.

Why not the official SDK: per request it costs ~3 ms of CPU on this machine class
against ~0.3 ms for a raw aiohttp client (see ../shared DESIGN anchors); the harness
budget is 1 ms per request. The wire format is the public chat-completions one.
"""

from __future__ import annotations

import base64
import email.utils
import hashlib
import os
import re
import threading
import time
from collections import OrderedDict
from pathlib import Path
from typing import Any

import aiohttp
import orjson

from mmsafe.media.video import check_video, sample_frames
from mmsafe.models.base import ChatResult, ConfigError, EndpointConfig, Provider, ProviderError
from mmsafe.types import (
    VIDEO_MIME,
    AssetError,
    AssetPart,
    ImagePart,
    Message,
    VideoPart,
    asset_file,
    read_asset,
    verify_asset,
)

DEFAULT_BASE_URL = "https://api.openai.com/v1"
_IMAGE_MIME = {"png": "image/png", "jpg": "image/jpeg", "jpeg": "image/jpeg", "gif": "image/gif",
               "webp": "image/webp", "bmp": "image/bmp"}


def parse_retry_after(value: str | None) -> float | None:
    """Retry-After is either delta-seconds or an HTTP date."""
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        try:
            dt = email.utils.parsedate_to_datetime(value)
        except (TypeError, ValueError):
            return None
        return max(0.0, dt.timestamp() - time.time())


def _mime(part: AssetPart) -> str:
    if part.mime:
        return part.mime
    ext = (part.path or part.uri or "").rsplit(".", 1)[-1].lower()
    if isinstance(part, ImagePart):
        return _IMAGE_MIME.get(ext, "image/png")
    if isinstance(part, VideoPart):
        return VIDEO_MIME.get(ext, "video/mp4")
    return {"mp3": "audio/mpeg", "flac": "audio/flac", "ogg": "audio/ogg", "m4a": "audio/mp4"}.get(ext, "audio/wav")


_AUDIO_FORMAT = {"audio/wav": "wav", "audio/x-wav": "wav", "audio/wave": "wav", "audio/vnd.wave": "wav",
                 "audio/mpeg": "mp3", "audio/mp3": "mp3"}


def _audio_format(part: AssetPart) -> str:
    """``input_audio``'s ``format``: the chat-completions wire takes only wav and mp3; another
    encoding (flac, ogg, m4a) is an AssetError naming the file rather than bytes mislabelled as wav."""
    fmt = _AUDIO_FORMAT.get(_mime(part))
    if fmt is None:
        raise AssetError(f"{part.path or part.uri}: {_mime(part)} cannot be sent as input_audio "
                         "(OpenAI-compatible targets take wav or mp3; convert it first)")
    return fmt


_B64_LOCK = threading.Lock()
_B64_CACHE: OrderedDict[tuple[str, str, str], str] = OrderedDict()
_B64_MAX_CHARS = 16 * 1024 * 1024  # base64 text kept in all (LRU): recent images, re-sent within a stage
_b64_chars = 0
_B64_SEEN: OrderedDict[tuple[str, str, str], None] = OrderedDict()


def asset_b64(part: AssetPart, root: Path) -> str:
    """An asset's base64 text, kept (LRU) once an image is sent a second time: the same image
    goes to several targets, jurors and turns, and re-reading and re-encoding it each time is
    pure overhead.
    A part with a sha256 is checked against it when first read (a file changed since the
    benchmark was written is an AssetError naming it, never a silently different image)."""
    global _b64_chars
    if not part.sha256 or part.path is None:
        return base64.b64encode(read_asset(part, root)).decode()
    key = (str(root), part.path, part.sha256)
    with _B64_LOCK:
        hit = _B64_CACHE.get(key)
        if hit is not None:
            _B64_CACHE.move_to_end(key)
            return hit
    b64 = base64.b64encode(read_asset(part, root, verify=True)).decode()
    if len(b64) <= _B64_MAX_CHARS // 16:
        with _B64_LOCK:
            # kept from its second use on: an image sent once (a plain run) costs no memory
            if key not in _B64_SEEN:
                _B64_SEEN[key] = None
                while len(_B64_SEEN) > 8192:
                    _B64_SEEN.popitem(last=False)
            elif key not in _B64_CACHE:
                _B64_CACHE[key] = b64
                _b64_chars += len(b64)
                while _b64_chars > _B64_MAX_CHARS and _B64_CACHE:
                    _b64_chars -= len(_B64_CACHE.popitem(last=False)[1])
    return b64


def remember_asset_b64(root: Path, rel: str, sha256: str, data: bytes) -> None:
    """Keep the base64 of an asset the caller has just written and will send next (the image
    agent's text-to-image result going to the critic): its first send then neither re-opens
    nor re-hashes the file (an open is ~0.5 ms on some filesystems). ``data`` must be the
    file's bytes; their sha256 is checked here, so the cache still serves only verified text."""
    global _b64_chars
    if hashlib.sha256(data).hexdigest() != sha256:
        raise ValueError(f"{rel}: bytes do not match sha256 {sha256[:12]}")
    b64 = base64.b64encode(data).decode()
    if len(b64) > _B64_MAX_CHARS // 16:
        return
    key = (str(root), rel, sha256)
    with _B64_LOCK:
        _B64_SEEN[key] = None
        if key not in _B64_CACHE:
            _B64_CACHE[key] = b64
            _b64_chars += len(b64)
            while _b64_chars > _B64_MAX_CHARS and _B64_CACHE:
                _b64_chars -= len(_B64_CACHE.popitem(last=False)[1])


_FRAMES_LOCK = threading.Lock()
_FRAMES_CACHE: OrderedDict[tuple[str, str, str, int], list[str]] = OrderedDict()


def video_file(part: VideoPart, root: Path) -> str:
    """The local file of a video part, checked: inside the root, matching its sha256, within the
    size and duration limits (AssetError naming it otherwise)."""
    verify_asset(part, root)
    p = asset_file(part, root)
    check_video(p, part.path)
    return p


def video_frames_b64(part: VideoPart, root: Path, n: int) -> list[str]:
    """``n`` frames sampled evenly from a local video, as base64 PNG (kept for the last 64 clips:
    the same clip goes to every turn and juror)."""
    if part.path is None:
        raise AssetError(f"{part.uri}: a video sent as frames must be a local file")
    key = (str(root), part.path, part.sha256 or "", n)
    with _FRAMES_LOCK:
        hit = _FRAMES_CACHE.get(key)
        if hit is not None:
            _FRAMES_CACHE.move_to_end(key)
            return hit
    verify_asset(part, root)
    frames = [base64.b64encode(b).decode() for b in sample_frames(asset_file(part, root), n, part.path)]
    with _FRAMES_LOCK:
        _FRAMES_CACHE[key] = frames
        while len(_FRAMES_CACHE) > 64:
            _FRAMES_CACHE.popitem(last=False)
    return frames


def _video_parts(p: VideoPart, root: Path | None, video_frames: int | None) -> list[dict[str, Any]]:
    if video_frames is not None:  # an image-only target: N sampled frames
        if root is None:
            raise AssetError(f"{p.uri}: a video sent as frames must be a local file")
        return [{"type": "image_url", "image_url": {"url": f"data:image/png;base64,{b64}"}}
                for b64 in video_frames_b64(p, root, video_frames)]
    if p.path is not None and root is not None:
        video_file(p, root)
        url = f"data:{_mime(p)};base64,{asset_b64(p, root)}"
    else:
        url = p.uri or ""
    return [{"type": "video_url", "video_url": {"url": url}}]


def encode_openai_messages(messages: list[Message], root: Path | None,
                           system: str | None = None, *, video_frames: int | None = None) -> list[dict[str, Any]]:
    """Messages as an OpenAI chat ``messages`` list (images as base64 data URLs, audio as ``input_audio``,
    video as a ``video_url`` data URL (vLLM/SGLang), or — ``video_frames=N``, for a target that takes only
    images — as N frames sampled evenly from the clip, each an ``image_url``)."""
    out: list[dict[str, Any]] = []
    if system:
        out.append({"role": "system", "content": system})
    for m in messages:
        if isinstance(m.content, str):
            out.append({"role": m.role, "content": m.content})
            continue
        parts: list[dict[str, Any]] = []
        for p in m.content:
            if p.type == "text":
                parts.append({"type": "text", "text": p.text})
            elif p.type == "image":
                if p.path is not None and root is not None:
                    url = f"data:{_mime(p)};base64,{asset_b64(p, root)}"
                else:
                    url = p.uri or ""
                parts.append({"type": "image_url", "image_url": {"url": url}})
            elif p.type == "audio":
                if p.path is not None and root is not None:
                    data = asset_b64(p, root)
                else:
                    raise ProviderError(f"audio part without a local file ({p.uri}) cannot be sent",
                                        fatal=False)
                parts.append({"type": "input_audio", "input_audio": {"data": data, "format": _audio_format(p)}})
            elif p.type == "video":
                parts.extend(_video_parts(p, root, video_frames))
        # assistant turns with only text are sent as plain strings (widest compatibility)
        if m.role != "user" and all(x["type"] == "text" for x in parts):
            out.append({"role": m.role, "content": "\n".join(x["text"] for x in parts)})
        else:
            out.append({"role": m.role, "content": parts})
    return out


class OpenAIProvider(Provider):
    """POST {base_url}/chat/completions with a bearer key read from an env var at start."""

    def __init__(self, cfg: EndpointConfig):
        super().__init__(cfg)
        self.base_url = (cfg.base_url or os.environ.get("OPENAI_BASE_URL") or DEFAULT_BASE_URL).rstrip("/")
        self._session: aiohttp.ClientSession | None = None
        self._headers: dict[str, str] = {"Content-Type": "application/json", **cfg.headers}

    def check_credentials(self) -> None:
        """Fail before any request when a required key is absent (names the env var)."""
        env = self.cfg.api_key_env or "OPENAI_API_KEY"
        # $OPENAI_API_KEY goes only where the SDK would send it: the default endpoint or $OPENAI_BASE_URL.
        # An endpoint named explicitly (spec @URL, models file) gets a key only via its own api_key_env,
        # so a user's OpenAI key never reaches a third-party server by accident.
        implicit_ok = self.cfg.base_url is None
        if self.cfg.api_key_env is None and not implicit_ok:
            return
        key = os.environ.get(env)
        needs_key = self.cfg.api_key_env is not None or self.base_url == DEFAULT_BASE_URL
        if not key and needs_key:
            raise ConfigError(f"{self.cfg.name}: API key missing: set the environment variable {env}")
        if key:
            self._headers["Authorization"] = f"Bearer {key}"

    async def start(self) -> None:
        """Check the key and open the HTTP session (one connection pool per endpoint)."""
        self.check_credentials()
        if self._session is None:
            conn = aiohttp.TCPConnector(limit=max(1, self.cfg.max_connections), limit_per_host=0,
                                        ttl_dns_cache=300, enable_cleanup_closed=True)
            self._session = aiohttp.ClientSession(connector=conn, json_serialize=lambda o: orjson.dumps(o).decode(),
                                                  skip_auto_headers=("User-Agent",))

    async def close(self) -> None:
        """Close the HTTP session."""
        if self._session is not None:
            await self._session.close()
            self._session = None

    def identity(self) -> dict[str, Any]:
        """Cache identity: provider, base URL, model and the configured extra headers (the key is not one)."""
        return {**super().identity(), "provider": "openai", "base_url": self.base_url}

    def encode(self, messages: list[Message], root: Path | None, system: str | None = None) -> Any:
        """The request's ``messages`` list (asset bytes are read now); video goes as ``video_url`` when the
        target declares ``video``, else as ``video_frames`` sampled images."""
        caps = self.capabilities
        return encode_openai_messages(messages, root, system,
                                      video_frames=None if caps.video else caps.video_frames)

    async def complete(self, payload: Any, params: dict[str, Any], timeout_s: float) -> ChatResult:
        """One POST to ``/chat/completions``; HTTP and transport failures raise ProviderError."""
        if self._session is None:
            await self.start()
        assert self._session is not None
        body = {"model": self.cfg.model, "messages": payload, **params}
        t0 = time.perf_counter()
        try:
            async with self._session.post(self.base_url + "/chat/completions", data=orjson.dumps(body),
                                          headers=self._headers,
                                          timeout=aiohttp.ClientTimeout(total=timeout_s)) as resp:
                raw = await resp.read()
                status = resp.status
                retry_after = parse_retry_after(resp.headers.get("Retry-After"))
        except TimeoutError:
            raise ProviderError(f"timed out after {timeout_s:g}s", retryable=True) from None
        except aiohttp.ClientError as e:
            raise ProviderError(f"connection error: {type(e).__name__}: {e}", retryable=True) from None
        latency = (time.perf_counter() - t0) * 1000
        if status != 200:
            msg = _error_message(raw)
            if status == 429:
                raise ProviderError(f"HTTP 429 rate limited: {msg}", status=status, retryable=True,
                                    overload=True, retry_after=retry_after)
            if status in (408, 409) or status >= 500:
                raise ProviderError(f"HTTP {status}: {msg}", status=status, retryable=True,
                                    overload=status in (502, 503, 504, 529), retry_after=retry_after)
            if status in (401, 403):
                env = self.cfg.api_key_env or "OPENAI_API_KEY"
                raise ProviderError(f"HTTP {status}: the endpoint refused the credentials (key from ${env}): {msg}",
                                    status=status, fatal=True)
            if status == 404:
                hint = (f" (did you mean {self.base_url}/v1?)"
                        if not re.search(r"/v\d+(beta\d*|alpha\d*)?$", self.base_url) else "")
                raise ProviderError(f"HTTP 404: model or route not found at {self.base_url}{hint}: {msg}",
                                    status=status, fatal=True)
            raise ProviderError(f"HTTP {status}: {msg}", status=status)
        try:
            data = orjson.loads(raw)
            choice = data["choices"][0]
            text = choice["message"].get("content")
            if isinstance(text, list):  # some servers return content parts
                text = "".join(p.get("text", "") for p in text if isinstance(p, dict))
            usage = data.get("usage") or {}
        except (orjson.JSONDecodeError, KeyError, IndexError, TypeError, AttributeError):
            raise ProviderError(f"malformed response body: {raw[:200]!r}", status=status, retryable=True) from None
        if text is None:
            text = ""
        extra: dict[str, Any] = {}
        lp = choice.get("logprobs") if isinstance(choice, dict) else None
        if isinstance(lp, dict) and isinstance(lp.get("content"), list):
            # the first tokens' log-probabilities, when asked for (a guard's P(Yes) is read from the first)
            extra["logprobs"] = lp["content"][:8]
        return ChatResult(text=text, finish_reason=choice.get("finish_reason"),
                          input_tokens=int(usage.get("prompt_tokens") or 0),
                          output_tokens=int(usage.get("completion_tokens") or 0),
                          model=str(data.get("model") or self.cfg.model), latency_ms=latency, extra=extra)


def _error_message(raw: bytes) -> str:
    try:
        d = orjson.loads(raw)
        err = d.get("error", d)
        if isinstance(err, dict):
            return str(err.get("message") or err)[:300]
        return str(err)[:300]
    except Exception:
        return raw[:200].decode("utf-8", "replace")
