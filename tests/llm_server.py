"""A scriptable OpenAI-compatible HTTP server on 127.0.0.1 for the tests.

It runs in its own thread and event loop so synchronous tests, async tests and CLI
subprocesses can all talk to it. The model name in a request picks the behaviour:

- ``refuse`` / ``comply`` / ``echo``: fixed replies (echo reports what was received)
- ``flaky429-N`` / ``flaky500-N``: the first N requests *per distinct conversation*
  fail with 429 (Retry-After: 0.05) / 500, then it answers like ``comply``
- ``malformed``: 200 with a body that is not JSON
- ``hang``: never answers
- ``hangafter-N``: answers the first N requests to this model like ``comply``, then never again
- ``slow-MS``: answers ``comply`` after MS milliseconds
- ``staggered``: answers ``comply`` after (10 - i) x 40 ms for a last user turn that starts
  "Sample i" (conftest's benchmarks), so earlier samples finish later
- ``judge-*``: returns the text queued with :meth:`ScriptedLLM.queue` for that model
  (or ``default_judge_reply``)

Every request body is recorded (``server.requests``).
"""

from __future__ import annotations

import asyncio
import collections
import re
import threading
import time
from typing import Any

import orjson
from aiohttp import web

from _serve import ThreadedApp, chat_completion
from _serve import text_of as _text




class ScriptedLLM(ThreadedApp):
    def __init__(self, latency_ms: float = 0.0, require_key: str | None = None):
        super().__init__()
        self.latency_ms = latency_ms
        self.require_key = require_key
        self.requests: list[dict[str, Any]] = []
        self.headers: list[dict[str, str]] = []
        self.fail_counts: collections.Counter = collections.Counter()
        self.queues: dict[str, collections.deque] = collections.defaultdict(collections.deque)
        self.default_judge_reply = "unsafe"

    # -- control
    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def reset(self) -> None:
        with self._lock:
            self.requests.clear()
            self.headers.clear()
            self.fail_counts.clear()
            self.queues.clear()
            self.default_judge_reply = "unsafe"  # a test that changed it must not change the next one's judge

    def queue(self, model: str, *replies: str) -> None:
        self.queues[model].extend(replies)

    def count(self, model: str | None = None) -> int:
        with self._lock:
            return sum(1 for r in self.requests if model is None or r.get("model") == model)

    # -- server
    async def _chat(self, request: web.Request) -> web.Response:
        body = orjson.loads(await request.read())
        with self._lock:
            self.requests.append(body)
            self.headers.append(dict(request.headers))
        if self.require_key is not None:
            if request.headers.get("Authorization") != f"Bearer {self.require_key}":
                return web.json_response({"error": {"message": "invalid api key"}}, status=401)
        if self.latency_ms:
            await asyncio.sleep(self.latency_ms / 1000)
        model = str(body.get("model", ""))
        msgs = body.get("messages") or []
        key = (model, orjson.dumps(msgs))
        if model.startswith("flaky429-") or model.startswith("flaky500-"):
            n = int(model.split("-", 1)[1])
            with self._lock:
                self.fail_counts[key] += 1
                seen = self.fail_counts[key]
            if seen <= n:
                if model.startswith("flaky429"):
                    return web.json_response({"error": {"message": "rate limited"}}, status=429,
                                             headers={"Retry-After": "0.05"})
                return web.json_response({"error": {"message": "boom"}}, status=500)
            model = "comply"
        if model == "malformed":
            return web.Response(body=b"<html>not json", content_type="application/json")
        if model == "empty":  # a reasoning model that spent max_tokens: content null, finish_reason length
            return web.Response(body=orjson.dumps({
                "id": "x", "object": "chat.completion", "created": int(time.time()), "model": model,
                "choices": [{"index": 0, "message": {"role": "assistant", "content": None},
                             "finish_reason": "length"}],
                "usage": {"prompt_tokens": 5, "completion_tokens": 64, "total_tokens": 69}}),
                content_type="application/json")
        if model.startswith("hangafter-"):
            with self._lock:
                self.fail_counts[(model, b"")] += 1
                seen = self.fail_counts[(model, b"")]
            model = "comply" if seen <= int(model.split("-", 1)[1]) else "hang"
        if model == "hang":
            await asyncio.sleep(3600)
        if model == "staggered":
            m = re.match(r"Sample (\d+)", _text(msgs[-1].get("content")) if msgs else "")
            await asyncio.sleep(max(0, 10 - int(m.group(1))) * 0.04 if m else 0)
            model = "comply"
        if model.startswith("slow-"):
            await asyncio.sleep(int(model.split("-", 1)[1]) / 1000)
            model = "comply"
        last_user = next((_text(m.get("content")) for m in reversed(msgs) if m.get("role") == "user"), "")
        if model == "refuse":
            out = "I'm sorry, but I can't help with that."
        elif model == "comply":
            out = "Sure, here is an overview: 1. [placeholder] 2. [placeholder]"
        elif model == "echo":
            imgs = [p for m in msgs if isinstance(m.get("content"), list) for p in m["content"]
                    if p.get("type") == "image_url"]
            first_user_has_image = any(
                isinstance(m.get("content"), list) and any(p.get("type") == "image_url" for p in m["content"])
                for m in msgs[:1] if m.get("role") == "user") or (
                len(msgs) > 1 and msgs[0].get("role") == "system" and isinstance(msgs[1].get("content"), list))
            out = (f"ECHO roles={','.join(m.get('role', '?') for m in msgs)} images={len(imgs)} "
                   f"first_user_image={first_user_has_image} last={last_user}")
        elif model.startswith("judge"):
            with self._lock:
                q = self.queues.get(model)
                out = q.popleft() if q else self.default_judge_reply
        else:
            return web.json_response({"error": {"message": f"model {model} not found"}}, status=404)
        return chat_completion(model, msgs, out)

    def routes(self) -> list[web.RouteDef]:
        return [web.post("/v1/chat/completions", self._chat), web.get("/v1/models", self._models)]

    async def _models(self, request: web.Request) -> web.Response:
        return web.json_response({"object": "list", "data": [{"id": "comply"}]})

if __name__ == "__main__":  # run standalone: python tests/llm_server.py PORT LATENCY_MS
    import sys
    srv = ScriptedLLM(latency_ms=float(sys.argv[2]) if len(sys.argv) > 2 else 0).start()
    print(srv.url, flush=True)
    threading.Event().wait()
