"""Anthropic Messages API through the official ``anthropic`` SDK (extra ``anthropic``).

The SDK's own retries are off (``max_retries=0``): the engine owns retries, backoff and
the adaptive limiter, so ``complete`` makes exactly one attempt and maps SDK errors to
:class:`~mmsafe.models.base.ProviderError`.

Wire format (``POST {base}/v1/messages``): the system prompt is the top-level
``system`` field (system messages in the conversation are folded into it), images are
``{"type": "image", "source": {"type": "base64", ...}}`` blocks, and consecutive
messages of the same role are merged, as the API requires alternating roles.
"""

from __future__ import annotations

import asyncio
import base64
import io
import os
import time
from pathlib import Path
from typing import Any

import anthropic  # ImportError here becomes "pip install 'mmsafe[anthropic]'" in the registry

from mmsafe.models.base import ChatResult, ConfigError, EndpointConfig, Provider, ProviderError
from mmsafe.models.openai_compat import _mime, parse_retry_after, video_frames_b64
from mmsafe.types import AssetError, ImagePart, Message, read_asset

DEFAULT_BASE_URL = "https://api.anthropic.com"
DEFAULT_MAX_TOKENS = 1024
# media types the Messages API takes; anything else is re-encoded to PNG
_API_IMAGE_TYPES = {"image/jpeg", "image/png", "image/gif", "image/webp"}
# OpenAI-style generation settings with no Anthropic equivalent (dropped, reported in extra)
_UNSUPPORTED_PARAMS = {"seed", "n", "frequency_penalty", "presence_penalty", "logprobs", "top_logprobs",
                       "response_format", "stream", "logit_bias", "user", "max_completion_tokens"}


def _base_url(cfg: EndpointConfig) -> str:
    url = (cfg.base_url or os.environ.get("ANTHROPIC_BASE_URL") or DEFAULT_BASE_URL).rstrip("/")
    # the SDK appends /v1/messages itself; accept a base URL written with /v1 as well
    return url.removesuffix("/v1")


def _image_block(p: ImagePart, root: Path | None) -> dict[str, Any]:
    if p.path is not None and root is not None:
        data, mime = read_asset(p, root), _mime(p)
    elif p.uri and p.uri.startswith("data:"):
        head, _, b64 = p.uri.partition(",")
        mime = head[5:].split(";", 1)[0] or "image/png"
        data = base64.b64decode(b64) if ";base64" in head else b64.encode()
    elif p.uri and p.uri.startswith(("http://", "https://")):
        return {"type": "image", "source": {"type": "url", "url": p.uri}}
    else:
        raise AssetError(f"{p.path or p.uri}: image has no local file or usable URI")
    if mime not in _API_IMAGE_TYPES:
        data, mime = _to_png(data, p), "image/png"
    return {"type": "image", "source": {"type": "base64", "media_type": mime,
                                        "data": base64.b64encode(data).decode()}}


def _to_png(data: bytes, p: ImagePart) -> bytes:
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(io.BytesIO(data)) as im:
            buf = io.BytesIO()
            im.convert("RGBA" if "A" in im.getbands() else "RGB").save(buf, format="PNG")
            return buf.getvalue()
    except (UnidentifiedImageError, OSError) as e:
        raise AssetError(f"{p.path or p.uri}: not a readable image ({e})") from None


def encode_anthropic_messages(messages: list[Message], root: Path | None,
                              system: str | None = None, *, video_frames: int = 8) -> dict[str, Any]:
    """-> ``{"system": str | None, "messages": [...]}`` (reads asset bytes now); a video goes as
    ``video_frames`` PNG frames sampled evenly from it (the API takes images, not video)."""
    sys_parts = [system] if system else []
    out: list[dict[str, Any]] = []
    for m in messages:
        if m.role == "system":
            if m.text:
                sys_parts.append(m.text)
            continue
        blocks: list[dict[str, Any]] = []
        if isinstance(m.content, str):
            if m.content:
                blocks.append({"type": "text", "text": m.content})
        else:
            for p in m.content:
                if p.type == "text":
                    if p.text:  # the API rejects empty text blocks
                        blocks.append({"type": "text", "text": p.text})
                elif p.type == "image":
                    blocks.append(_image_block(p, root))
                elif p.type == "video":
                    if root is None:
                        raise AssetError(f"{p.uri}: a video sent as frames must be a local file")
                    blocks.extend({"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": b}}
                                  for b in video_frames_b64(p, root, video_frames))
                else:
                    raise AssetError(f"{p.path or p.uri}: the anthropic provider does not take audio input")
        if not blocks:
            continue
        if out and out[-1]["role"] == m.role:  # the API wants alternating roles: merge
            out[-1]["content"].extend(blocks)
        else:
            out.append({"role": m.role, "content": blocks})
    return {"system": "\n\n".join(sys_parts) or None, "messages": out}


def _retry_after(headers: Any) -> float | None:
    if headers is None:
        return None
    ms = headers.get("retry-after-ms")
    if ms:
        try:
            return max(0.0, float(ms) / 1000)
        except ValueError:
            pass
    return parse_retry_after(headers.get("retry-after"))


class AnthropicProvider(Provider):
    """Claude models via ``AsyncAnthropic(max_retries=0)``; key from ``cfg.api_key_env`` or
    ``ANTHROPIC_API_KEY``, base URL from ``cfg.base_url`` or ``ANTHROPIC_BASE_URL``."""

    def __init__(self, cfg: EndpointConfig):
        super().__init__(cfg)
        self.base_url = _base_url(cfg)
        self.key_env = cfg.api_key_env or "ANTHROPIC_API_KEY"
        self._client: anthropic.AsyncAnthropic | None = None

    def check_credentials(self) -> None:
        """Fail before any request when the key's env var is empty (names it)."""
        if not os.environ.get(self.key_env):
            raise ConfigError(f"{self.cfg.name}: API key missing: set the environment variable {self.key_env}")

    async def start(self) -> None:
        self.check_credentials()
        key = os.environ[self.key_env]
        if self._client is None:
            self._client = anthropic.AsyncAnthropic(api_key=key, base_url=self.base_url, max_retries=0,
                                                    timeout=self.cfg.timeout_s,
                                                    default_headers=self.cfg.headers or None)

    async def close(self) -> None:
        if self._client is not None:
            await self._client.close()
            self._client = None

    def identity(self) -> dict[str, Any]:
        return {"provider": "anthropic", "base_url": self.base_url, "model": self.cfg.model}

    def encode(self, messages: list[Message], root: Path | None, system: str | None = None) -> Any:
        return encode_anthropic_messages(messages, root, system, video_frames=self.capabilities.video_frames)

    async def complete(self, payload: Any, params: dict[str, Any], timeout_s: float) -> ChatResult:
        """One Messages API call -> ChatResult; every failure becomes a ProviderError (retryable or not)."""
        if self._client is None:
            await self.start()
        assert self._client is not None
        kwargs, extra_body, ignored = self._request(payload, params)
        t0 = time.perf_counter()
        msg = await self._send(kwargs, extra_body, timeout_s)
        latency = (time.perf_counter() - t0) * 1000
        res = self._result(msg, latency)
        if ignored:
            res.extra["ignored_params"] = ignored
        return res

    def _request(self, payload: Any, params: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any], list[str]]:
        """The SDK arguments for one call -> (kwargs, extra body params, params ignored as unsupported)."""
        p = dict(params)
        mt, mct = p.pop("max_tokens", None), p.pop("max_completion_tokens", None)
        max_tokens = mt or mct or DEFAULT_MAX_TOKENS
        if "stop" in p:
            stop = p.pop("stop")
            if stop:
                p["stop_sequences"] = [stop] if isinstance(stop, str) else list(stop)
        ignored = sorted(k for k in p if k in _UNSUPPORTED_PARAMS)
        extra_body = {k: v for k, v in p.items() if k not in _UNSUPPORTED_PARAMS}
        kwargs: dict[str, Any] = {"model": self.cfg.model, "max_tokens": int(max_tokens),
                                  "messages": payload["messages"]}
        if payload.get("system"):
            kwargs["system"] = payload["system"]
        return kwargs, extra_body, ignored

    async def _send(self, kwargs: dict[str, Any], extra_body: dict[str, Any], timeout_s: float) -> Any:
        """Send one request -> the SDK's message; SDK errors mapped to ProviderErrors."""
        assert self._client is not None
        try:
            return await asyncio.wait_for(
                self._client.messages.create(**kwargs, extra_body=extra_body or None, timeout=timeout_s),
                timeout_s)
        except (TimeoutError, anthropic.APITimeoutError):
            raise ProviderError(f"timed out after {timeout_s:g}s", retryable=True) from None
        except anthropic.APIConnectionError as e:
            raise ProviderError(f"connection error: {e}", retryable=True) from None
        except anthropic.APIStatusError as e:
            raise self._status_error(e) from None
        except anthropic.APIResponseValidationError as e:
            raise ProviderError(f"malformed response body: {e}", status=e.status_code, retryable=True) from None
        except anthropic.AnthropicError as e:
            raise ProviderError(f"{type(e).__name__}: {e}") from None
        except ValueError as e:  # a 200 whose body is not JSON / not a message (the SDK lets it through)
            raise ProviderError(f"malformed response body: {type(e).__name__}: {str(e)[:200]}",
                                retryable=True) from None

    def _result(self, msg: Any, latency: float) -> ChatResult:
        """The SDK's message -> ChatResult (text blocks joined); a malformed one -> retryable ProviderError."""
        try:
            text = "".join(b.text for b in msg.content if getattr(b, "type", None) == "text")
            usage = msg.usage
            return ChatResult(text=text, finish_reason=msg.stop_reason,
                              input_tokens=int(usage.input_tokens or 0), output_tokens=int(usage.output_tokens or 0),
                              model=str(msg.model or self.cfg.model), latency_ms=latency)
        except (AttributeError, TypeError, ValueError):
            raise ProviderError(f"malformed response body: {str(msg)[:200]!r}", retryable=True) from None

    def _status_error(self, e: anthropic.APIStatusError) -> ProviderError:
        status = e.status_code
        body = e.body if isinstance(e.body, dict) else {}
        raw_err = body.get("error")
        err: dict[str, Any] = raw_err if isinstance(raw_err, dict) else {}
        # api_message / type exist on SDK 2.x errors; older SDKs only carry the body
        msg = str(getattr(e, "api_message", None) or err.get("message") or e.message or "")[:300]
        etype = str(getattr(e, "type", None) or err.get("type") or "")
        retry_after = _retry_after(getattr(e.response, "headers", None))
        if status == 429:
            return ProviderError(f"HTTP 429 rate limited: {msg}", status=status, retryable=True, overload=True,
                                 retry_after=retry_after)
        if status == 529 or etype == "overloaded_error":
            return ProviderError(f"HTTP {status} overloaded: {msg}", status=status, retryable=True, overload=True,
                                 retry_after=retry_after)
        if status in (401, 403):
            return ProviderError(f"HTTP {status}: the endpoint refused the credentials (key from ${self.key_env}): "
                                 f"{msg}", status=status, fatal=True)
        if status == 404:
            return ProviderError(f"HTTP 404: model {self.cfg.model!r} or route not found at {self.base_url}: {msg}",
                                 status=status, fatal=True)
        if status in (408, 409) or status >= 500:
            return ProviderError(f"HTTP {status}: {msg}", status=status, retryable=True,
                                 overload=status in (502, 503, 504), retry_after=retry_after)
        return ProviderError(f"HTTP {status}: {msg}", status=status)
