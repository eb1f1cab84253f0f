"""OpenAI Batch API (``/v1/files`` + ``/v1/batches``) for chat completions.

Each line of the uploaded JSONL is ``{"custom_id", "method": "POST", "url": "/v1/chat/completions",
"body"}`` where ``body`` is exactly what :class:`~mmsafe.models.openai_compat.OpenAIProvider` would
POST live (``{"model", "messages": provider.encode(...), **params}``). The batch carries
``metadata.mmsafe_job``: the client's idempotency marker, used to find a batch whose id was never
recorded (a crash between the POST and the store write) before submitting it again.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import aiohttp
import orjson

from mmsafe.models.base import ChatResult, Provider, ProviderError

TERMINAL = {"completed", "failed", "expired", "cancelled"}


@dataclass
class BatchState:
    """A remote batch's status: its state word, whether it is final, line counts and result files."""

    status: str
    terminal: bool
    counts: dict[str, int] = field(default_factory=dict)
    files: dict[str, str | None] = field(default_factory=dict)
    error: str | None = None


def _raise_for(status: int, raw: bytes, what: str) -> None:
    if status < 300:
        return
    try:
        err = orjson.loads(raw).get("error") or {}
        msg = str(err.get("message") or err)[:300] if isinstance(err, dict) else str(err)[:300]
    except Exception:
        msg = raw[:200].decode("utf-8", "replace")
    raise ProviderError(f"{what}: HTTP {status}: {msg}", status=status, retryable=status == 429 or status >= 500,
                        fatal=status in (401, 403, 404))


def parse_chat_body(data: dict[str, Any], model: str) -> ChatResult:
    """A chat.completion body (as a live call would get it) -> ChatResult."""
    choice = data["choices"][0]
    text = choice["message"].get("content")
    if isinstance(text, list):
        text = "".join(p.get("text", "") for p in text if isinstance(p, dict))
    usage = data.get("usage") or {}
    return ChatResult(text=text or "", finish_reason=choice.get("finish_reason"),
                      input_tokens=int(usage.get("prompt_tokens") or 0),
                      output_tokens=int(usage.get("completion_tokens") or 0), model=str(data.get("model") or model))


class OpenAIBatch:
    """Submit, find, poll and read back one OpenAI-compatible endpoint's batches (raw aiohttp, the
    provider's own base URL and headers: the key never leaves them)."""

    kind = "openai"

    def __init__(self, provider: Provider):
        self.provider = provider
        self.base = str(getattr(provider, "base_url", "")).rstrip("/")
        self._session: aiohttp.ClientSession | None = None

    def _headers(self) -> dict[str, str]:
        # the provider's auth and extra headers, without its JSON content type (uploads are multipart)
        return {k: v for k, v in dict(getattr(self.provider, "_headers", {})).items() if k.lower() != "content-type"}

    async def start(self) -> None:
        """Check the key (via the provider) and open a session."""
        self.provider.check_credentials()
        if hasattr(self.provider, "start"):
            await self.provider.start()  # fills the provider's auth headers
        if self._session is None:
            self._session = aiohttp.ClientSession()

    async def close(self) -> None:
        """Close the session (and the provider's)."""
        if self._session is not None:
            await self._session.close()
            self._session = None
        await self.provider.close()

    def request_line(self, custom_id: str, payload: Any, params: dict[str, Any]) -> dict[str, Any]:
        """One JSONL line: the live request body, addressed to /v1/chat/completions."""
        body = {"model": self.provider.cfg.model, "messages": payload, **params}
        return {"custom_id": custom_id, "method": "POST", "url": "/v1/chat/completions", "body": body}

    async def _req(self, method: str, path: str, what: str, **kw: Any) -> bytes:
        assert self._session is not None
        try:
            async with self._session.request(method, self.base + path, headers=self._headers(),
                                             timeout=aiohttp.ClientTimeout(total=self.provider.cfg.timeout_s),
                                             **kw) as r:
                raw = await r.read()
                _raise_for(r.status, raw, what)
                return raw
        except aiohttp.ClientError as e:
            raise ProviderError(f"{what}: connection error: {type(e).__name__}: {e}", retryable=True) from None

    async def submit(self, lines: list[dict[str, Any]], tag: str) -> str:
        """Upload the JSONL and create the batch (tagged ``metadata.mmsafe_job=tag``) -> the batch id."""
        data = b"".join(orjson.dumps(ln) + b"\n" for ln in lines)
        form = aiohttp.FormData()
        form.add_field("purpose", "batch")
        form.add_field("file", data, filename=f"mmsafe-{tag}.jsonl", content_type="application/jsonl")
        f = orjson.loads(await self._req("POST", "/files", "batch file upload", data=form))
        b = orjson.loads(await self._req(
            "POST", "/batches", "batch create",
            json={"input_file_id": f["id"], "endpoint": "/v1/chat/completions", "completion_window": "24h",
                  "metadata": {"mmsafe_job": tag}}))
        return str(b["id"])

    async def find(self, tag: str, n_lines: int, after: float) -> str | None:
        """The id of a batch already created with this tag (listed newest first), or None."""
        cursor: str | None = None
        for _ in range(20):  # 2,000 batches back at most
            q = "?limit=100" + (f"&after={cursor}" if cursor else "")
            page = orjson.loads(await self._req("GET", "/batches" + q, "batch list"))
            for b in page.get("data") or []:
                if (b.get("metadata") or {}).get("mmsafe_job") == tag:
                    return str(b["id"])
                if b.get("created_at") and float(b["created_at"]) < after - 3600:
                    return None  # older than the submission: it was never created
            if not page.get("has_more") or not page.get("data"):
                return None
            cursor = page.get("last_id") or page["data"][-1]["id"]
        return None

    async def state(self, batch_id: str) -> BatchState:
        """``GET /batches/{id}``."""
        b = orjson.loads(await self._req("GET", f"/batches/{batch_id}", "batch status"))
        status = str(b.get("status"))
        errs = (b.get("errors") or {}).get("data") or []
        return BatchState(status=status, terminal=status in TERMINAL, counts=dict(b.get("request_counts") or {}),
                          files={"output": b.get("output_file_id"), "error": b.get("error_file_id")},
                          error="; ".join(str(e.get("message")) for e in errs)[:300] or None)

    async def results(self, st: BatchState) -> dict[str, ChatResult]:
        """custom_id -> ChatResult (``error`` set for a failed line) from the output and error files."""
        out: dict[str, ChatResult] = {}
        for key in ("output", "error"):
            fid = st.files.get(key)
            if not fid:
                continue
            raw = await self._req("GET", f"/files/{fid}/content", f"batch {key} file")
            for line in raw.splitlines():
                if not line.strip():
                    continue
                rec = orjson.loads(line)
                out[str(rec["custom_id"])] = self._line_result(rec)
        return out

    def _line_result(self, rec: dict[str, Any]) -> ChatResult:
        resp = rec.get("response") or {}
        err = rec.get("error")
        if err:
            msg = err.get("message") if isinstance(err, dict) else err
            code = err.get("code") if isinstance(err, dict) else None
            return ChatResult(text=None, error=f"batch line failed: {code or ''} {msg or ''}".strip())
        if resp.get("status_code") != 200:
            body = resp.get("body") or {}
            e = body.get("error") if isinstance(body, dict) else None
            msg = e.get("message") if isinstance(e, dict) else str(body)[:200]
            return ChatResult(text=None, error=f"batch line HTTP {resp.get('status_code')}: {msg}")
        try:
            return parse_chat_body(resp["body"], self.provider.cfg.model)
        except (KeyError, IndexError, TypeError, AttributeError):
            return ChatResult(text=None, error=f"batch line: malformed body {str(resp.get('body'))[:200]}")
