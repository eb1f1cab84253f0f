"""A loopback server for the batch tests: OpenAI Batch (``/v1/files``, ``/v1/batches``), Anthropic
Message Batches (``/v1/messages/batches``) and live ``/v1/chat/completions`` / ``/v1/messages``.

Replies are a function of the conversation only (:func:`reply_for`), so a batch run and a live run
on the same samples must store the same text. Controls: ``delay_s`` (a batch ends that long after
it was created), ``fail_lines`` (that many of the next batch lines, in order, end errored),
``expire_next`` (the next batch expires with only its first half answered). Counters:
``batches`` (every batch created), ``lines`` (every line received, in order), ``live`` (live calls).
"""

from __future__ import annotations

import datetime
import time
import uuid
from typing import Any

import orjson
from aiohttp import web

from _serve import ThreadedApp, text_of


def reply_for(messages: list[dict[str, Any]]) -> str:
    """The deterministic reply to a conversation: refuses the even samples, complies with the odd."""
    last = text_of(next(m for m in reversed(messages) if m.get("role") == "user").get("content"))
    n = sum(map(ord, last))
    return "I'm sorry, I can't help with that." if n % 2 == 0 else f"Sure, here is how: {last[:40]}"


def answer(model: str, messages: list[dict[str, Any]]) -> str:
    """A judge model (``judge-*``) says unsafe when the reply it is shown complies; a target replies."""
    if model.startswith("judge"):
        shown = " ".join(text_of(m.get("content")) for m in messages)
        return "unsafe" if "Sure, here is how" in shown else "safe"
    return reply_for(messages)


def _usage(messages: list[dict[str, Any]], out: str) -> tuple[int, int]:
    return sum(len(text_of(m.get("content"))) for m in messages) // 4 + 1, len(out) // 4 + 1


def chat_body(model: str, messages: list[dict[str, Any]]) -> dict[str, Any]:
    out = answer(model, messages)
    p, c = _usage(messages, out)
    return {"id": "chatcmpl-x", "object": "chat.completion", "model": model,
            "choices": [{"index": 0, "message": {"role": "assistant", "content": out}, "finish_reason": "stop"}],
            "usage": {"prompt_tokens": p, "completion_tokens": c, "total_tokens": p + c}}


def message_body(params: dict[str, Any]) -> dict[str, Any]:
    msgs = params["messages"]
    out = answer(params["model"], msgs)
    p, c = _usage(msgs, out)
    return {"id": "msg_x", "type": "message", "role": "assistant", "model": params["model"],
            "content": [{"type": "text", "text": out}], "stop_reason": "end_turn",
            "usage": {"input_tokens": p, "output_tokens": c}}


def _json(d: Any, status: int = 200) -> web.Response:
    return web.Response(body=orjson.dumps(d), status=status, content_type="application/json")


class BatchServer(ThreadedApp):
    def __init__(self, delay_s: float = 0.0):
        super().__init__()
        self.delay_s = delay_s
        self.fail_lines = 0
        self.expire_next = False
        self.files: dict[str, bytes] = {}
        self.batches: list[dict[str, Any]] = []
        self.lines: list[dict[str, Any]] = []
        self.live = 0
        self.live_bodies: list[dict[str, Any]] = []
        self.headers: list[dict[str, str]] = []

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def routes(self) -> list[web.RouteDef]:
        return [web.post("/v1/files", self.upload), web.get("/v1/files/{id}/content", self.content),
                web.post("/v1/batches", self.create), web.get("/v1/batches", self.list_openai),
                web.get("/v1/batches/{id}", self.get_openai),
                web.post("/v1/messages/batches", self.create_anthropic),
                web.get("/v1/messages/batches", self.list_anthropic),
                web.get("/v1/messages/batches/{id}", self.get_anthropic),
                web.get("/v1/messages/batches/{id}/results", self.results_anthropic),
                web.post("/v1/chat/completions", self.live_chat), web.post("/v1/messages", self.live_message)]

    # -- shared: decide each line's fate when the batch is created
    def _new_batch(self, api: str, reqs: list[tuple[str, dict[str, Any]]], metadata: dict[str, Any]) -> dict:
        with self._lock:
            expire = self.expire_next
            self.expire_next = False
            fates = []
            for i, (cid, body) in enumerate(reqs):
                self.lines.append({"custom_id": cid, "body": body})
                if self.fail_lines > 0:
                    self.fail_lines -= 1
                    fates.append("errored")
                elif expire and i >= len(reqs) // 2:
                    fates.append("expired")
                else:
                    fates.append("succeeded")
            b = {"id": f"batch_{uuid.uuid4().hex[:12]}", "api": api, "created": time.time(), "reqs": reqs,
                 "fates": fates, "expire": expire, "metadata": metadata}
            self.batches.append(b)
        return b

    def _ended(self, b: dict[str, Any]) -> bool:
        return time.time() >= b["created"] + self.delay_s

    def _find(self, bid: str) -> dict[str, Any]:
        for b in self.batches:
            if b["id"] == bid:
                return b
        raise web.HTTPNotFound()

    # -- OpenAI
    async def upload(self, request: web.Request) -> web.Response:
        self.headers.append(dict(request.headers))
        form = await request.post()
        assert form.get("purpose") == "batch"
        f = form["file"]
        data = f.file.read() if hasattr(f, "file") else bytes(f)  # type: ignore[union-attr]
        fid = f"file-{uuid.uuid4().hex[:12]}"
        self.files[fid] = data
        return _json({"id": fid, "object": "file", "purpose": "batch", "bytes": len(data)})

    async def content(self, request: web.Request) -> web.Response:
        fid = request.match_info["id"]
        if fid not in self.files:
            raise web.HTTPNotFound()
        return web.Response(body=self.files[fid], content_type="application/octet-stream")

    async def create(self, request: web.Request) -> web.Response:
        d = await request.json()
        assert d["endpoint"] == "/v1/chat/completions" and d["completion_window"] == "24h"
        reqs = []
        for line in self.files[d["input_file_id"]].splitlines():
            rec = orjson.loads(line)
            assert rec["method"] == "POST" and rec["url"] == "/v1/chat/completions"
            reqs.append((rec["custom_id"], rec["body"]))
        b = self._new_batch("openai", reqs, d.get("metadata") or {})
        return _json(self._openai_view(b))

    def _openai_view(self, b: dict[str, Any]) -> dict[str, Any]:
        ended = self._ended(b)
        status = ("expired" if b["expire"] else "completed") if ended else "in_progress"
        view = {"id": b["id"], "object": "batch", "endpoint": "/v1/chat/completions", "status": status,
                "created_at": int(b["created"]), "metadata": b["metadata"], "output_file_id": None,
                "error_file_id": None,
                "request_counts": {"total": len(b["reqs"]),
                                   "completed": sum(f == "succeeded" for f in b["fates"]) if ended else 0,
                                   "failed": sum(f != "succeeded" for f in b["fates"]) if ended else 0}}
        if ended:
            if "out" not in b:
                out, errs = [], []
                for (cid, body), fate in zip(b["reqs"], b["fates"], strict=True):
                    if fate == "succeeded":
                        out.append({"id": "r", "custom_id": cid, "error": None, "response": {
                            "status_code": 200, "request_id": "q", "body": chat_body(body["model"],
                                                                                     body["messages"])}})
                    elif fate == "errored":
                        errs.append({"id": "r", "custom_id": cid, "error": None, "response": {
                            "status_code": 500, "request_id": "q",
                            "body": {"error": {"message": "server error", "type": "server_error"}}}})
                    else:
                        errs.append({"id": "r", "custom_id": cid, "response": None,
                                     "error": {"code": "batch_expired", "message": "expired before it ran"}})
                b["out"] = f"file-out-{b['id']}"
                b["err"] = f"file-err-{b['id']}" if errs else None
                self.files[b["out"]] = b"".join(orjson.dumps(x) + b"\n" for x in out)
                if errs:
                    self.files[b["err"]] = b"".join(orjson.dumps(x) + b"\n" for x in errs)
            view["output_file_id"], view["error_file_id"] = b["out"], b["err"]
        return view

    async def get_openai(self, request: web.Request) -> web.Response:
        return _json(self._openai_view(self._find(request.match_info["id"])))

    async def list_openai(self, request: web.Request) -> web.Response:
        data = [self._openai_view(b) for b in reversed(self.batches) if b["api"] == "openai"]
        return _json({"object": "list", "data": data, "has_more": False,
                      "last_id": data[-1]["id"] if data else None})

    async def live_chat(self, request: web.Request) -> web.Response:
        d = await request.json()
        self.live += 1
        self.live_bodies.append(d)
        return _json(chat_body(d["model"], d["messages"]))

    # -- Anthropic
    async def create_anthropic(self, request: web.Request) -> web.Response:
        self.headers.append(dict(request.headers))
        d = await request.json()
        b = self._new_batch("anthropic", [(r["custom_id"], r["params"]) for r in d["requests"]], {})
        return _json(self._anthropic_view(b))

    def _anthropic_view(self, b: dict[str, Any]) -> dict[str, Any]:
        ended = self._ended(b)
        counts = {"processing": 0 if ended else len(b["reqs"]), "succeeded": 0, "errored": 0, "canceled": 0,
                  "expired": 0}
        if ended:
            for f in b["fates"]:
                counts[f] += 1
        created = datetime.datetime.fromtimestamp(b["created"], tz=datetime.timezone.utc).isoformat()
        return {"id": b["id"], "type": "message_batch", "processing_status": "ended" if ended else "in_progress",
                "request_counts": counts, "created_at": created,
                "results_url": f"{self.base}/v1/messages/batches/{b['id']}/results" if ended else None}

    async def get_anthropic(self, request: web.Request) -> web.Response:
        return _json(self._anthropic_view(self._find(request.match_info["id"])))

    async def list_anthropic(self, request: web.Request) -> web.Response:
        data = [self._anthropic_view(b) for b in reversed(self.batches) if b["api"] == "anthropic"]
        return _json({"data": data, "has_more": False})

    async def results_anthropic(self, request: web.Request) -> web.Response:
        b = self._find(request.match_info["id"])
        lines = []
        for (cid, params), fate in zip(b["reqs"], b["fates"], strict=True):
            if fate == "succeeded":
                res: dict[str, Any] = {"type": "succeeded", "message": message_body(params)}
            elif fate == "errored":
                res = {"type": "errored", "error": {"type": "error", "error": {"type": "api_error",
                                                                               "message": "server error"}}}
            else:
                res = {"type": "expired"}
            lines.append({"custom_id": cid, "result": res})
        return web.Response(body=b"".join(orjson.dumps(x) + b"\n" for x in lines),
                            content_type="application/binary")

    async def live_message(self, request: web.Request) -> web.Response:
        d = await request.json()
        self.live += 1
        self.live_bodies.append(d)
        return _json(message_body(d))
