"""One way for the tests to serve an aiohttp app on 127.0.0.1: in its own thread and
event loop, so synchronous tests, async tests and CLI subprocesses can all reach it."""

from __future__ import annotations

import asyncio
import threading
import time
from typing import Any

import orjson
from aiohttp import web


def text_of(content: Any) -> str:
    """The text of an OpenAI message content (a string, or the text parts of a list)."""
    if isinstance(content, str):
        return content
    return " ".join(p.get("text", "") for p in content or [] if isinstance(p, dict) and p.get("type") == "text")


def chat_completion(model: str, msgs: list[dict[str, Any]], out: str) -> web.Response:
    """An OpenAI chat.completion reply carrying ``out``, with ~4-chars-per-token usage."""
    ptok = sum(len(text_of(m.get("content"))) for m in msgs) // 4 + 1
    ctok = len(out) // 4 + 1
    return web.Response(body=orjson.dumps({
        "id": "x", "object": "chat.completion", "created": int(time.time()), "model": model,
        "choices": [{"index": 0, "message": {"role": "assistant", "content": out}, "finish_reason": "stop"}],
        "usage": {"prompt_tokens": ptok, "completion_tokens": ctok, "total_tokens": ptok + ctok}}),
        content_type="application/json")


class ThreadedApp:
    """Subclasses give ``routes()``; ``start()`` serves them on an ephemeral port."""

    client_max_size = 256 * 1024 * 1024
    backlog = 1024
    # the standalone bench servers pass uvloop's: on a 2-core machine the server shares the CPU
    # with the client under test, so a cheaper server loop leaves the client more of it
    loop_factory = staticmethod(asyncio.new_event_loop)

    def __init__(self) -> None:
        self.loop: asyncio.AbstractEventLoop | None = None
        self.port: int | None = None
        self._runner: web.AppRunner | None = None
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()

    def routes(self) -> list[web.RouteDef]:
        raise NotImplementedError

    def start(self):
        ready = threading.Event()

        def run() -> None:
            self.loop = self.loop_factory()
            asyncio.set_event_loop(self.loop)
            app = web.Application(client_max_size=self.client_max_size)
            app.add_routes(self.routes())
            self._runner = web.AppRunner(app, access_log=None)
            self.loop.run_until_complete(self._runner.setup())
            site = web.TCPSite(self._runner, "127.0.0.1", 0, backlog=self.backlog)
            self.loop.run_until_complete(site.start())
            self.port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
            ready.set()
            self.loop.run_forever()

        self._thread = threading.Thread(target=run, daemon=True)
        self._thread.start()
        ready.wait(10)
        return self

    def stop(self) -> None:
        if self.loop is None:
            return

        async def shutdown() -> None:
            for t in asyncio.all_tasks():  # e.g. handlers still sleeping in a "hang" behaviour
                if t is not asyncio.current_task():
                    t.cancel()
            if self._runner is not None:
                await self._runner.cleanup()

        try:
            asyncio.run_coroutine_threadsafe(shutdown(), self.loop).result(5)
        except Exception:
            pass
        self.loop.call_soon_threadsafe(self.loop.stop)
        if self._thread:
            self._thread.join(5)
