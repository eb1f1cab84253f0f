"""Process-level settings for mmsafe's command-line jobs.

``run_async`` — the CLI's event loop: uvloop (libuv) when it is installed (a core
dependency on Linux and macOS), else asyncio's own. The harness is CPU-bound at high
request rates (a build's select stage keeps 192 requests in flight, one core drives them),
and uvloop's transports and callbacks cost less per request. ``MMSAFE_EVENT_LOOP=asyncio``
forces the standard loop (e.g. to rule the loop out when debugging).

``tune_gc`` — CPython's default collector thresholds (700, 10, 10) suit short scripts, not
an event loop that keeps thousands of requests in flight: every 700 container allocations
it walks the young objects, and full collections over the loaded modules, embedder
vocabularies and in-flight state took ~100 ms each in ``bench/bench_build.py`` (7 of them
in one 23-scenario build: 0.72 s of stalls, each one a whole 100 ms latency round with
nothing sent). The CLI freezes what exists at start-up (imported modules: never garbage)
and raises the thresholds; reference cycles are still collected, only less often.
Library users who call mmsafe from their own program keep their own settings.
"""

from __future__ import annotations

import asyncio
import gc
import importlib.util
import os
from collections.abc import Coroutine
from typing import Any, TypeVar

T = TypeVar("T")

# young collections every 50k net container allocations (not 700); a full collection after
# 20 young-generation passes, and only when the long-lived heap grew by 25 % (CPython's rule)
GC_THRESHOLDS = (50_000, 20, 20)


def tune_gc(freeze: bool = True) -> tuple[int, int, int]:
    """Raise the collector thresholds and (``freeze``) move every object alive now to the
    permanent generation. Returns the previous thresholds."""
    old = gc.get_threshold()
    if freeze:
        gc.collect()
        gc.freeze()
    gc.set_threshold(*GC_THRESHOLDS)
    return old


def event_loop_name() -> str:
    """"uvloop" or "asyncio": the loop ``run_async`` uses in this environment."""
    if os.environ.get("MMSAFE_EVENT_LOOP", "").strip().lower() == "asyncio":
        return "asyncio"
    return "uvloop" if importlib.util.find_spec("uvloop") is not None else "asyncio"


def run_async(coro: Coroutine[Any, Any, T]) -> T:
    """``asyncio.run(coro)`` on uvloop when available (see the module doc)."""
    if event_loop_name() == "uvloop":
        with asyncio.Runner(loop_factory=new_event_loop) as runner:
            return runner.run(coro)
    return asyncio.run(coro)


def new_event_loop() -> asyncio.AbstractEventLoop:
    """A fresh loop of the kind ``run_async`` uses (for servers started with their own runner)."""
    if event_loop_name() == "uvloop":
        import uvloop
        return uvloop.new_event_loop()
    return asyncio.new_event_loop()
