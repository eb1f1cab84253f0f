"""Google Gemini through the official ``google-genai`` SDK (extra ``google``).

``client.aio.models.generate_content`` makes the request
(``POST {base}/v1beta/models/{model}:generateContent``). The SDK's own retries are off
(``HttpRetryOptions(attempts=1)``, which also stops its implicit reconnect-and-retry):
the engine owns retries, so ``complete`` makes one attempt and maps SDK errors to
:class:`~mmsafe.models.base.ProviderError`.

Roles are ``user`` / ``model``; images, audio and video go as inline bytes parts; the system
prompt (and any system message in the conversation) goes in ``system_instruction``.
"""

from __future__ import annotations

import asyncio
import base64
import os
import re
import time
from pathlib import Path
from typing import Any

from google import genai  # ImportError here becomes "pip install 'mmsafe[google]'" in the registry
from google.genai import errors as genai_errors, types as gt

from mmsafe.models.base import ChatResult, ConfigError, EndpointConfig, Provider, ProviderError
from mmsafe.models.openai_compat import _mime, parse_retry_after, video_file
from mmsafe.types import AssetError, AssetPart, Message, VideoPart, read_asset

DEFAULT_BASE_URL = "https://generativelanguage.googleapis.com"
KEY_ENVS = ("GEMINI_API_KEY", "GOOGLE_API_KEY")
# OpenAI-style names -> GenerateContentConfig fields
_PARAM_MAP = {"max_tokens": "max_output_tokens", "max_completion_tokens": "max_output_tokens",
              "stop": "stop_sequences", "n": "candidate_count"}
_CONFIG_FIELDS = set(gt.GenerateContentConfig.model_fields) - {"http_options", "system_instruction",
                                                                 "should_return_http_response"}


def _base_url(cfg: EndpointConfig) -> tuple[str | None, str | None]:
    """-> (base URL for the SDK, API version named in it, e.g. ``v1beta``)."""
    url = cfg.base_url or os.environ.get("GOOGLE_GEMINI_BASE_URL")
    if not url:
        return None, None
    url = url.rstrip("/")
    # the SDK appends /{api_version}/models/...; a base URL written with the version picks it
    m = re.search(r"/(v\d+(?:alpha|beta)?\d*)$", url)
    version = None
    if m:
        version, url = m.group(1), url[:m.start()]
    return url + "/", version


def _part(p: AssetPart, root: Path | None) -> gt.Part:
    """An image, audio clip or video as inline bytes with its MIME type (Gemini takes all three natively)."""
    if p.path is not None and root is not None:
        if isinstance(p, VideoPart):
            video_file(p, root)  # limits and sha256, as for any target
        return gt.Part.from_bytes(data=read_asset(p, root, verify=True), mime_type=_mime(p))
    if p.uri and p.uri.startswith("data:"):
        head, _, b64 = p.uri.partition(",")
        mime = head[5:].split(";", 1)[0] or _mime(p)
        data = base64.b64decode(b64) if ";base64" in head else b64.encode()
        return gt.Part.from_bytes(data=data, mime_type=mime)
    if p.uri:
        return gt.Part.from_uri(file_uri=p.uri, mime_type=_mime(p))
    raise AssetError(f"{p.path}: asset has no local file or usable URI")


def encode_gemini_contents(messages: list[Message], root: Path | None,
                           system: str | None = None) -> dict[str, Any]:
    """-> ``{"system": str | None, "contents": [types.Content, ...]}`` (reads asset bytes now)."""
    sys_parts = [system] if system else []
    contents: list[gt.Content] = []
    for m in messages:
        if m.role == "system":
            if m.text:
                sys_parts.append(m.text)
            continue
        parts: list[gt.Part] = []
        if isinstance(m.content, str):
            if m.content:
                parts.append(gt.Part.from_text(text=m.content))
        else:
            for p in m.content:
                if p.type == "text":
                    if p.text:
                        parts.append(gt.Part.from_text(text=p.text))
                else:
                    parts.append(_part(p, root))
        if not parts:
            continue
        role = "model" if m.role == "assistant" else "user"
        if contents and contents[-1].role == role:
            contents[-1].parts.extend(parts)  # type: ignore[union-attr]  # set: every Content here is built with parts
        else:
            contents.append(gt.Content(role=role, parts=parts))
    return {"system": "\n\n".join(sys_parts) or None, "contents": contents}


def _duration_s(v: Any) -> float | None:
    """google.protobuf.Duration as JSON: "1.5s"."""
    if isinstance(v, str) and v.endswith("s"):
        try:
            return max(0.0, float(v[:-1]))
        except ValueError:
            return None
    return None


class GoogleProvider(Provider):
    """Gemini models; key from ``cfg.api_key_env`` or ``GEMINI_API_KEY`` / ``GOOGLE_API_KEY``,
    base URL from ``cfg.base_url`` or ``GOOGLE_GEMINI_BASE_URL`` (the SDK's own variable)."""

    def __init__(self, cfg: EndpointConfig):
        super().__init__(cfg)
        self.base_url, self.api_version = _base_url(cfg)
        self.key_env = cfg.api_key_env
        self._client: genai.Client | None = None

    def _key(self) -> str:
        if self.cfg.api_key_env:
            key = os.environ.get(self.cfg.api_key_env)
            if not key:
                raise ConfigError(f"{self.cfg.name}: API key missing: set the environment variable "
                                  f"{self.cfg.api_key_env}")
            return key
        for env in KEY_ENVS:
            if os.environ.get(env):
                self.key_env = env
                return os.environ[env]
        raise ConfigError(f"{self.cfg.name}: API key missing: set the environment variable "
                          f"{KEY_ENVS[0]} (or {KEY_ENVS[1]})")

    def check_credentials(self) -> None:
        """Fail before any request when no key is set (names the env var)."""
        self._key()

    async def start(self) -> None:
        """Check the key and create the Gemini client (the SDK's own retries off: the engine retries)."""
        key = self._key()
        if self._client is None:
            extra: dict[str, Any] = {}
            if hasattr(gt, "HttpRetryOptions"):  # newer SDKs: their retries off (and the implicit reconnect)
                extra["retry_options"] = gt.HttpRetryOptions(attempts=1)
            opts = gt.HttpOptions(base_url=self.base_url, api_version=self.api_version,
                                  timeout=int(self.cfg.timeout_s * 1000), headers=dict(self.cfg.headers) or None,
                                  **extra)
            self._client = genai.Client(api_key=key, vertexai=False, http_options=opts)

    async def close(self) -> None:
        """Close the Gemini client."""
        if self._client is not None:
            client, self._client = self._client, None
            try:
                if hasattr(client.aio, "aclose"):  # newer SDKs
                    await client.aio.aclose()
            finally:
                if hasattr(client, "close"):
                    client.close()

    def identity(self) -> dict[str, Any]:
        """Cache identity: provider, base URL, API version and model."""
        return {"provider": "google", "base_url": self.base_url or DEFAULT_BASE_URL,
                "api_version": self.api_version, "model": self.cfg.model}

    def encode(self, messages: list[Message], root: Path | None, system: str | None = None) -> Any:
        """The request's Gemini contents and system instruction (asset bytes are read now)."""
        return encode_gemini_contents(messages, root, system)

    def _config(self, payload: dict[str, Any], params: dict[str, Any]) -> tuple[gt.GenerateContentConfig, list[str]]:
        conf: dict[str, Any] = {}
        ignored: list[str] = []
        for k, v in params.items():
            name = _PARAM_MAP.get(k, k)
            if name not in _CONFIG_FIELDS:
                ignored.append(k)
                continue
            if name == "stop_sequences" and isinstance(v, str):
                v = [v]
            if v is not None:
                conf.setdefault(name, v)  # an explicit max_output_tokens wins over max_tokens
        if payload.get("system"):
            conf["system_instruction"] = payload["system"]
        try:
            return gt.GenerateContentConfig(**conf), sorted(ignored)
        except ValueError as e:
            raise ProviderError(f"invalid generation settings for google: {e}") from None

    async def complete(self, payload: Any, params: dict[str, Any], timeout_s: float) -> ChatResult:
        """One generate_content call; SDK errors raise ProviderError."""
        if self._client is None:
            await self.start()
        assert self._client is not None
        config, ignored = self._config(payload, params)
        t0 = time.perf_counter()
        try:
            resp = await asyncio.wait_for(
                self._client.aio.models.generate_content(model=self.cfg.model, contents=payload["contents"],
                                                         config=config),
                timeout_s)
        except TimeoutError:
            raise ProviderError(f"timed out after {timeout_s:g}s", retryable=True) from None
        except genai_errors.APIError as e:
            raise self._status_error(e) from None
        except ValueError as e:  # a 200 whose body is not JSON (UnknownApiResponseError is a ValueError)
            raise ProviderError(f"malformed response body: {type(e).__name__}: {str(e)[:200]}",
                                retryable=True) from None
        except OSError as e:  # aiohttp / httpx connection errors are OSError subclasses or wrap one
            raise ProviderError(f"connection error: {type(e).__name__}: {e}", retryable=True) from None
        except Exception as e:
            if _is_transport_error(e):
                raise ProviderError(f"connection error: {type(e).__name__}: {e}", retryable=True) from None
            raise
        latency = (time.perf_counter() - t0) * 1000
        res = self._result(resp, latency)
        if ignored:
            res.extra["ignored_params"] = ignored
        return res

    def _result(self, resp: gt.GenerateContentResponse, latency: float) -> ChatResult:
        um = resp.usage_metadata
        inp = int((um.prompt_token_count or 0) if um else 0)
        out = int(((um.candidates_token_count or 0) + (getattr(um, "thoughts_token_count", None) or 0))
                  if um else 0)  # thinking tokens are billed as output
        model = str(resp.model_version or self.cfg.model)
        if not resp.candidates:
            fb = resp.prompt_feedback
            reason = fb.block_reason if fb is not None else None
            if reason is None:
                raise ProviderError("malformed response: no candidates and no block reason", retryable=True)
            # the prompt itself was blocked: no text, an explicit finish reason
            r = getattr(reason, "value", str(reason))
            return ChatResult(text="", finish_reason=f"blocked:{r}".lower(), input_tokens=inp, output_tokens=out,
                              model=model, latency_ms=latency, extra={"block_reason": r})
        cand = resp.candidates[0]
        parts = (cand.content.parts if cand.content is not None else None) or []
        text = "".join(p.text for p in parts if p.text and not getattr(p, "thought", None))
        fr = cand.finish_reason
        finish = str(getattr(fr, "value", fr)).lower() if fr is not None else None
        return ChatResult(text=text, finish_reason=finish, input_tokens=inp, output_tokens=out, model=model,
                          latency_ms=latency)

    def _status_error(self, e: genai_errors.APIError) -> ProviderError:
        status = int(e.code or 0)
        msg = str(e.message or e.status or e)[:300]
        details = _details(e)
        retry_after = None
        headers = getattr(e.response, "headers", None)
        if headers is not None and hasattr(headers, "get"):
            retry_after = parse_retry_after(headers.get("Retry-After"))
        if retry_after is None:
            for d in details:
                if str(d.get("@type", "")).endswith("google.rpc.RetryInfo"):
                    retry_after = _duration_s(d.get("retryDelay"))
        key_env = self.key_env or KEY_ENVS[0]
        bad_key = any(d.get("reason") in ("API_KEY_INVALID", "API_KEY_SERVICE_BLOCKED") for d in details)
        if status in (401, 403) or bad_key:
            return ProviderError(f"HTTP {status}: the endpoint refused the credentials (key from ${key_env}): {msg}",
                                 status=status, fatal=True)
        if status == 429:
            return ProviderError(f"HTTP 429 rate limited: {msg}", status=status, retryable=True, overload=True,
                                 retry_after=retry_after)
        if status == 404:
            return ProviderError(f"HTTP 404: model {self.cfg.model!r} or route not found: {msg}",
                                 status=status, fatal=True)
        if status in (408, 409) or status >= 500:
            return ProviderError(f"HTTP {status}: {msg}", status=status, retryable=True,
                                 overload=status in (502, 503, 504), retry_after=retry_after)
        return ProviderError(f"HTTP {status}: {msg}", status=status)


def _details(e: genai_errors.APIError) -> list[dict[str, Any]]:
    d = e.details
    if isinstance(d, dict):
        d = d.get("error", d)
        d = d.get("details") if isinstance(d, dict) else None
    return [x for x in d if isinstance(x, dict)] if isinstance(d, list) else []


def _is_transport_error(e: BaseException) -> bool:
    """aiohttp.ClientError / httpx(2).TransportError without importing either up front."""
    for cls in type(e).__mro__:
        mod = cls.__module__.split(".", 1)[0]
        if (mod == "aiohttp" and cls.__name__ == "ClientError") or \
                (mod in ("httpx", "httpx2") and cls.__name__ in ("TransportError", "TimeoutException")):
            return True
    return False
