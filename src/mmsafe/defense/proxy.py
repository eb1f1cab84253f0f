"""``mmsafe serve-guard``: an OpenAI-compatible proxy that moderates each request and
forwards it to an upstream endpoint.

- ``POST /v1/chat/completions`` (streaming too) and ``GET /v1/models``;
- modes: ``inject`` (the detected scenario's safety policies are added to the system
  prompt), ``block`` (a refusal is returned without calling upstream), ``flag``
  (forwarded unchanged, decision in the ``X-MMSafe-Flagged`` header and the log);
- bearer-token auth with a token read from an environment variable; it refuses to
  start on a non-loopback address without one;
- a structured JSONL decision log without message bodies unless asked;
- ``GET /healthz`` (no auth) gives the request counters; ``GET /stats`` (behind the token
  when one is set) gives them too and, with a ``cascade:…`` moderator, the moderations each
  stage decided, their calls and cost, and the last stage's calls and cost the earlier
  stages spared (the run summary's ``defense.cascade`` block, counted since start); each
  decision-log record then carries its ``cascade`` record (deciding stage, calls, cost);
- upstream failures map to 502 (unreachable) / 504 (timeout) / the upstream's status.
"""

from __future__ import annotations

import hmac
import ipaddress
import os
import sys
import time
import uuid
from pathlib import Path
from typing import Any, TextIO, cast

import aiohttp
import orjson
from aiohttp import web

from mmsafe.defense.cascade import CascadeModerator, CascadeTally, stage_record
from mmsafe.defense.defenses import REFUSAL, ModeratorDefense
from mmsafe.models.base import ConfigError
from mmsafe.types import ImagePart, Message, Role, TextPart


def messages_from_openai(raw: Any, *, for_moderation: bool = False) -> list[Message]:
    """OpenAI chat messages -> mmsafe Messages (images as URI references).

    With ``for_moderation`` every message whose text reaches the model is kept so it
    can be moderated: system/developer and tool/function messages become user turns
    (their text is input the model will act on). Content of a shape we cannot read
    is refused (ValueError -> HTTP 400) rather than forwarded unmoderated."""
    if not isinstance(raw, list) or not raw:
        raise ValueError("'messages' must be a non-empty list")
    out = []
    for i, m in enumerate(raw):
        if not isinstance(m, dict):
            raise ValueError(f"messages[{i}] is not an object")
        role = m.get("role")
        if role == "developer":
            role = "system"
        if role in ("tool", "function"):
            if not for_moderation:
                continue
            role = "user"
        if role not in ("system", "user", "assistant"):
            raise ValueError(f"messages[{i}].role: unknown role {m.get('role')!r}")
        if for_moderation and role == "system":
            role = "user"
        msg_role = cast(Role, role)  # checked above: system, user or assistant
        c = m.get("content")
        if isinstance(c, dict):
            c = [c]
        if c is None or isinstance(c, str):
            out.append(Message(role=msg_role, content=c or ""))
            continue
        if not isinstance(c, list):
            raise ValueError(f"messages[{i}].content: expected a string or a list of parts")
        parts: list[Any] = []
        for j, p in enumerate(c):
            if not isinstance(p, dict):
                raise ValueError(f"messages[{i}].content[{j}]: expected an object")
            if p.get("type") == "text":
                parts.append(TextPart(text=str(p.get("text", ""))))
            elif p.get("type") == "image_url":
                url = (p.get("image_url") or {}).get("url")
                if url:
                    parts.append(ImagePart(uri=str(url)))
            elif p.get("type") not in ("input_audio", "file"):
                raise ValueError(f"messages[{i}].content[{j}].type: unsupported part {p.get('type')!r}")
        out.append(Message(role=msg_role, content=parts or ""))
    return out


def is_loopback(host: str) -> bool:
    if host in ("localhost",):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class GuardProxy:
    def __init__(self, upstream: str, defense: ModeratorDefense, *, token: str | None = None,
                 upstream_key: str | None = None, log_path: Path | None = None, log_bodies: bool = False,
                 timeout_s: float = 300.0):
        self.upstream = upstream.rstrip("/")
        self.defense = defense
        self.token = token
        self.upstream_key = upstream_key
        self.log_path = log_path
        self.log_bodies = log_bodies
        self.timeout_s = timeout_s
        self._session: aiohttp.ClientSession | None = None
        self._log: TextIO | None = None
        self.stats = {"requests": 0, "flagged": 0, "blocked": 0, "moderation_errors": 0, "upstream_errors": 0}
        mod = defense.moderator
        self.cascade = CascadeTally() if isinstance(mod, CascadeModerator) else None
        self._stage_names = list(mod.specs) if isinstance(mod, CascadeModerator) else []

    # -- lifecycle
    async def on_startup(self, app: web.Application) -> None:
        self._session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0))
        await self.defense.start()
        self._log = open(self.log_path, "a", buffering=1) if self.log_path else None  # noqa: SIM115 (closed on cleanup)

    async def on_cleanup(self, app: web.Application) -> None:
        if self._session:
            await self._session.close()
        await self.defense.close()
        if self._log:
            self._log.close()

    def app(self) -> web.Application:
        app = web.Application(client_max_size=64 * 1024 * 1024, middlewares=[self._auth])
        app.add_routes([web.post("/v1/chat/completions", self.chat), web.get("/v1/models", self.models),
                        web.get("/healthz", self.health), web.get("/stats", self.stats_view)])
        app.on_startup.append(self.on_startup)
        app.on_cleanup.append(self.on_cleanup)
        return app

    @web.middleware
    async def _auth(self, request: web.Request, handler):
        if self.token is not None and request.path != "/healthz":
            got = request.headers.get("Authorization", "")
            if not hmac.compare_digest(got.encode(), f"Bearer {self.token}".encode()):
                return _error(401, "missing or invalid bearer token", "invalid_api_key")
        return await handler(request)

    # -- helpers
    def _upstream_headers(self, request: web.Request) -> dict[str, str]:
        h = {"Content-Type": "application/json"}
        if self.upstream_key:
            h["Authorization"] = f"Bearer {self.upstream_key}"
        return h

    def log(self, rec: dict[str, Any]) -> None:
        line = orjson.dumps(rec).decode()
        if self._log:
            self._log.write(line + "\n")
        else:
            print(line, file=sys.stderr, flush=True)

    # -- routes
    async def health(self, request: web.Request) -> web.Response:
        return web.json_response({"ok": True, **self.stats})

    def stats_dict(self) -> dict[str, Any]:
        """The counters since start; with a cascade moderator, ``cascade``: per deciding stage the
        moderations, calls and cost, and the last stage's calls and cost spared (estimated)."""
        out: dict[str, Any] = dict(self.stats)
        if self.cascade is not None:
            out["cascade"] = self.cascade.moderator_block(self._stage_names)
        return out

    async def stats_view(self, request: web.Request) -> web.Response:
        """``GET /stats``: :meth:`stats_dict` (behind the bearer token when one is set)."""
        return web.json_response({"ok": True, **self.stats_dict()})

    def _count_cascade(self, mod: Any, rec: dict[str, Any]) -> None:
        """Count a cascade moderation by its deciding stage, and note that stage in the decision record."""
        c = stage_record(mod) if self.cascade is not None and mod is not None else None
        if self.cascade is None or c is None:
            return
        self.cascade.add(c["stage"], cost=c["cost_usd"], calls=c["calls"], own_cost=c["stage_cost_usd"],
                         own_calls=c["stage_calls"])
        rec["cascade"] = {k: c[k] for k in ("stage", "moderator", "calls", "cost_usd")}

    async def models(self, request: web.Request) -> web.Response:
        assert self._session is not None
        try:
            async with self._session.get(self.upstream + "/models", headers=self._upstream_headers(request),
                                         timeout=aiohttp.ClientTimeout(total=30)) as r:
                return web.Response(body=await r.read(), status=r.status, content_type="application/json")
        except (TimeoutError, aiohttp.ClientError) as e:
            self.stats["upstream_errors"] += 1
            return _error(502, f"upstream unreachable: {type(e).__name__}", "upstream_error")

    async def chat(self, request: web.Request) -> web.StreamResponse:
        """Moderate one chat request, then block it, or forward it (with policies injected, or flagged)."""
        t0 = time.perf_counter()
        rid = "mmsafe-" + uuid.uuid4().hex[:16]
        self.stats["requests"] += 1
        try:
            body, msgs, view = _read_chat_body(await request.read())
        except (orjson.JSONDecodeError, ValueError) as e:
            return _error(400, f"invalid request: {str(e).splitlines()[0]}", "invalid_request_error")
        system = "\n".join(m.text for m in msgs if m.role == "system") or None
        dec = await self.defense.before(view, None, system)
        mod = dec.get("moderation")
        t_mod = (time.perf_counter() - t0) * 1000
        flagged = bool(mod and mod.flagged)
        failed = bool(mod and mod.flagged is None)
        self.stats["flagged"] += flagged
        self.stats["moderation_errors"] += failed
        rec = self._decision_record(rid, body, dec["action"], mod, t_mod)
        self._count_cascade(mod, rec)
        if dec["action"] == "block":
            self.stats["blocked"] += 1
            rec["upstream_status"] = None
            self.log(rec)
            return await _refusal(request, body, rid, "error" if failed else "1")
        if dec["action"] == "inject":
            others = [m for m in body["messages"] if m.get("role") not in ("system", "developer")]
            body = {**body, "messages": [{"role": "system", "content": dec["system"]}, *others]}
            rec["policies"] = dec.get("policies")
        headers = {"X-MMSafe-Action": dec["action"],
                   "X-MMSafe-Flagged": "error" if failed else ("1" if flagged else "0"), "X-MMSafe-Request-Id": rid}
        return await self._forward(request, body, rec, headers)

    def _decision_record(self, rid: str, body: dict[str, Any], action: str, mod: Any,
                         t_mod: float) -> dict[str, Any]:
        """The decision-log record of one request (the messages only with ``log_bodies``)."""
        rec: dict[str, Any] = {"ts": time.time(), "id": rid, "model": body.get("model"), "action": action,
                               "flagged": mod.flagged if mod else None, "score": mod.score if mod else None,
                               "scenario": mod.scenario if mod else None,
                               "moderation_error": mod.error if mod else None,
                               "moderation_ms": round(t_mod, 3), "stream": bool(body.get("stream"))}
        if self.log_bodies:
            rec["messages"] = body.get("messages")
        return rec

    def _upstream_failed(self, rec: dict[str, Any], status: int, message: str, code: str,
                         headers: dict[str, str]) -> web.Response:
        """Count and log an upstream failure -> the error reply (502 / 504)."""
        self.stats["upstream_errors"] += 1
        rec["upstream_status"] = status
        self.log(rec)
        return _error(status, message, code, headers)

    async def _forward(self, request: web.Request, body: dict[str, Any], rec: dict[str, Any],
                       headers: dict[str, str]) -> web.StreamResponse:
        """Send the request upstream and relay its reply (streamed or whole); upstream failures -> 502 / 504."""
        assert self._session is not None
        try:
            up = await self._session.post(self.upstream + "/chat/completions", data=orjson.dumps(body),
                                          headers=self._upstream_headers(request),
                                          timeout=aiohttp.ClientTimeout(total=self.timeout_s))
        except TimeoutError:
            return self._upstream_failed(rec, 504, "upstream timed out", "upstream_timeout", headers)
        except aiohttp.ClientError as e:
            return self._upstream_failed(rec, 502, f"upstream unreachable: {type(e).__name__}", "upstream_error",
                                         headers)
        try:
            rec["upstream_status"] = up.status
            ctype = up.headers.get("Content-Type", "application/json")
            if body.get("stream") and up.status == 200:
                return await self._relay_stream(request, up, rec, {**headers, "Content-Type": ctype,
                                                                   "Cache-Control": "no-cache"})
            data = await up.read()
            if up.status >= 400:
                self.stats["upstream_errors"] += 1
            self.log(rec)
            return web.Response(body=data, status=up.status, headers={**headers, "Content-Type": ctype})
        except TimeoutError:
            return self._upstream_failed(rec, 504, "upstream timed out", "upstream_timeout", headers)
        except aiohttp.ClientError as e:  # e.g. the upstream closed mid-body
            return self._upstream_failed(rec, 502, f"upstream reply broken: {type(e).__name__}", "upstream_error",
                                         headers)
        finally:
            up.release()

    async def _relay_stream(self, request: web.Request, up: aiohttp.ClientResponse, rec: dict[str, Any],
                            headers: dict[str, str]) -> web.StreamResponse:
        """Stream the upstream's reply through as it comes; a broken stream is counted and logged."""
        resp = web.StreamResponse(status=200, headers=headers)
        await resp.prepare(request)
        try:
            async for chunk in up.content.iter_any():
                await resp.write(chunk)
        except (TimeoutError, aiohttp.ClientError) as e:
            self.stats["upstream_errors"] += 1
            rec["stream_error"] = type(e).__name__
        await resp.write_eof()
        self.log(rec)
        return resp


def _read_chat_body(raw: bytes) -> tuple[dict[str, Any], list[Message], list[Message]]:
    """A chat request body -> (body, its messages, the moderation view of them); ValueError when malformed."""
    body = orjson.loads(raw)
    if not isinstance(body, dict):
        raise ValueError("body must be a JSON object")
    msgs = messages_from_openai(body.get("messages"))
    # everything the model will read is moderated: system and tool text included
    view = messages_from_openai(body.get("messages"), for_moderation=True)
    return body, msgs, view


def _error(status: int, message: str, code: str, headers: dict[str, str] | None = None) -> web.Response:
    return web.Response(body=orjson.dumps({"error": {"message": message, "type": code, "code": code}}),
                        status=status, content_type="application/json", headers=headers)


async def _refusal(request: web.Request, body: dict[str, Any], rid: str, flagged: str) -> web.StreamResponse:
    model = body.get("model") or "mmsafe-guard"
    now = int(time.time())
    headers = {"X-MMSafe-Action": "block", "X-MMSafe-Flagged": flagged, "X-MMSafe-Request-Id": rid}
    if body.get("stream"):
        resp = web.StreamResponse(status=200, headers={**headers, "Content-Type": "text/event-stream",
                                                       "Cache-Control": "no-cache"})
        await resp.prepare(request)
        for delta, finish in (({"role": "assistant", "content": REFUSAL}, None), ({}, "content_filter")):
            chunk = {"id": rid, "object": "chat.completion.chunk", "created": now, "model": model,
                     "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]}
            await resp.write(b"data: " + orjson.dumps(chunk) + b"\n\n")
        await resp.write(b"data: [DONE]\n\n")
        await resp.write_eof()
        return resp
    return web.Response(body=orjson.dumps({
        "id": rid, "object": "chat.completion", "created": now, "model": model,
        "choices": [{"index": 0, "message": {"role": "assistant", "content": REFUSAL},
                     "finish_reason": "content_filter"}],
        "usage": {"prompt_tokens": 0, "completion_tokens": 0, "total_tokens": 0}}),
        content_type="application/json", headers=headers)


def build_proxy(upstream: str, defense: ModeratorDefense, *, host: str, token_env: str,
                upstream_key_env: str | None, log_path: Path | None, log_bodies: bool) -> GuardProxy:
    token = os.environ.get(token_env) or None
    if token is None and not is_loopback(host):
        raise ConfigError(f"refusing to serve on non-loopback address {host} without a bearer token: "
                          f"set the environment variable {token_env}")
    upstream_key = None
    if upstream_key_env:
        upstream_key = os.environ.get(upstream_key_env)
        if not upstream_key:
            raise ConfigError(f"upstream API key missing: set the environment variable {upstream_key_env}")
    if not upstream.startswith(("http://", "https://")):
        raise ConfigError(f"--upstream {upstream!r}: expected an http(s):// base URL such as http://127.0.0.1:8000/v1")
    return GuardProxy(upstream, defense, token=token, upstream_key=upstream_key, log_path=log_path,
                      log_bodies=log_bodies)


__all__ = ["GuardProxy", "build_proxy", "is_loopback", "messages_from_openai"]
