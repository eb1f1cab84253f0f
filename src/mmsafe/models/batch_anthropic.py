"""Anthropic Message Batches (``POST /v1/messages/batches``, poll, ``results_url`` JSONL).

Each request is ``{"custom_id", "params"}`` where ``params`` is exactly the Messages API body the
live :class:`~mmsafe.models.anthropic_provider.AnthropicProvider` sends (its ``_request``). The API
takes no metadata on a batch, so a batch whose id was never recorded is found by its shape: created
after the submission was recorded, with the same number of requests (exactly one such batch).
"""

from __future__ import annotations

import datetime as _dt
import os
from typing import Any

import aiohttp
import orjson

from mmsafe.models.base import ChatResult, Provider, ProviderError
from mmsafe.models.batch_openai import BatchState, _raise_for

API_VERSION = "2023-06-01"


def _ts(v: Any) -> float:
    try:
        return _dt.datetime.fromisoformat(str(v).replace("Z", "+00:00")).timestamp()
    except ValueError:
        return 0.0


class AnthropicBatch:
    """Submit, find, poll and read back Anthropic Message Batches (raw aiohttp)."""

    kind = "anthropic"

    def __init__(self, provider: Provider):
        self.provider = provider
        self.base = str(getattr(provider, "base_url", "https://api.anthropic.com")).rstrip("/")
        self.key_env = str(getattr(provider, "key_env", "ANTHROPIC_API_KEY"))
        self._session: aiohttp.ClientSession | None = None

    def _headers(self) -> dict[str, str]:
        return {**self.provider.cfg.headers, "x-api-key": os.environ.get(self.key_env, ""),
                "anthropic-version": API_VERSION, "content-type": "application/json"}

    async def start(self) -> None:
        """Check the key and open a session."""
        self.provider.check_credentials()
        if self._session is None:
            self._session = aiohttp.ClientSession()

    async def close(self) -> None:
        """Close the session."""
        if self._session is not None:
            await self._session.close()
            self._session = None

    def request_line(self, custom_id: str, payload: Any, params: dict[str, Any]) -> dict[str, Any]:
        """One request: the live Messages API body as ``params``."""
        kwargs, extra_body, _ignored = self.provider._request(payload, params)  # type: ignore[attr-defined]
        return {"custom_id": custom_id, "params": {**kwargs, **extra_body}}

    async def _req(self, method: str, url: str, what: str, **kw: Any) -> bytes:
        assert self._session is not None
        try:
            async with self._session.request(method, url, headers=self._headers(),
                                             timeout=aiohttp.ClientTimeout(total=self.provider.cfg.timeout_s),
                                             **kw) as r:
                raw = await r.read()
                _raise_for(r.status, raw, what)
                return raw
        except aiohttp.ClientError as e:
            raise ProviderError(f"{what}: connection error: {type(e).__name__}: {e}", retryable=True) from None

    async def submit(self, lines: list[dict[str, Any]], tag: str) -> str:
        """Create the batch -> its id."""
        raw = await self._req("POST", self.base + "/v1/messages/batches", "batch create",
                              data=orjson.dumps({"requests": lines}))
        b = orjson.loads(raw)
        return str(b["id"])

    async def find(self, tag: str, n_lines: int, after: float) -> str | None:
        """The one batch created since ``after`` with ``n_lines`` requests, or None (none, or ambiguous)."""
        page = orjson.loads(await self._req("GET", self.base + "/v1/messages/batches?limit=100", "batch list"))
        hits = [b for b in page.get("data") or []
                if _ts(b.get("created_at")) >= after - 5 and sum((b.get("request_counts") or {}).values()) == n_lines]
        return str(hits[0]["id"]) if len(hits) == 1 else None

    async def state(self, batch_id: str) -> BatchState:
        """``GET /v1/messages/batches/{id}``: ``processing_status`` in_progress | canceling | ended."""
        b = orjson.loads(await self._req("GET", f"{self.base}/v1/messages/batches/{batch_id}", "batch status"))
        status = str(b.get("processing_status"))
        return BatchState(status=status, terminal=status == "ended", counts=dict(b.get("request_counts") or {}),
                          files={"results_url": b.get("results_url")})

    async def results(self, st: BatchState) -> dict[str, ChatResult]:
        """custom_id -> ChatResult from the results JSONL (errored / canceled / expired lines carry an error)."""
        url = st.files.get("results_url")
        out: dict[str, ChatResult] = {}
        if not url:
            return out
        raw = await self._req("GET", url, "batch results")
        for line in raw.splitlines():
            if not line.strip():
                continue
            rec = orjson.loads(line)
            res = rec.get("result") or {}
            kind = res.get("type")
            cid = str(rec["custom_id"])
            if kind != "succeeded":
                err = ((res.get("error") or {}).get("error") or res.get("error") or {})
                msg = err.get("message") if isinstance(err, dict) else err
                out[cid] = ChatResult(text=None, error=f"batch line {kind}: {msg or ''}".strip())
                continue
            m = res.get("message") or {}
            try:
                text = "".join(b.get("text", "") for b in m.get("content") or [] if b.get("type") == "text")
                u = m.get("usage") or {}
                out[cid] = ChatResult(text=text, finish_reason=m.get("stop_reason"),
                                      input_tokens=int(u.get("input_tokens") or 0),
                                      output_tokens=int(u.get("output_tokens") or 0),
                                      model=str(m.get("model") or self.provider.cfg.model))
            except (AttributeError, TypeError, ValueError):
                out[cid] = ChatResult(text=None, error=f"batch line: malformed message {str(m)[:200]}")
        return out
