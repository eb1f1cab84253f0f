"""The CLI's process settings: event loop choice and collector thresholds."""

from __future__ import annotations

import asyncio
import gc
import subprocess
import sys

import pytest

from mmsafe import runtime


async def _loop_module() -> str:
    return type(asyncio.get_running_loop()).__module__


def test_run_async_uses_uvloop_when_installed_and_env_can_force_asyncio(monkeypatch):
    pytest.importorskip("uvloop")
    monkeypatch.delenv("MMSAFE_EVENT_LOOP", raising=False)
    assert runtime.event_loop_name() == "uvloop"
    assert runtime.run_async(_loop_module()).startswith("uvloop")
    monkeypatch.setenv("MMSAFE_EVENT_LOOP", "asyncio")
    assert runtime.event_loop_name() == "asyncio"
    assert runtime.run_async(_loop_module()).startswith("asyncio")


def test_run_async_returns_the_result_and_propagates_errors():
    async def boom() -> None:
        raise KeyError("x")
    assert runtime.run_async(asyncio.sleep(0, result=41)) == 41
    with pytest.raises(KeyError):
        runtime.run_async(boom())


def test_tune_gc_raises_thresholds_and_freezes_what_exists():
    # in a child process: the test runner's own collector settings stay as they are
    code = ("import gc; from mmsafe.runtime import tune_gc, GC_THRESHOLDS; old = tune_gc(); "
            "assert gc.get_threshold() == GC_THRESHOLDS and old == (700, 10, 10), (gc.get_threshold(), old); "
            "assert gc.get_freeze_count() > 1000; print('ok')")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0 and r.stdout.strip() == "ok", r.stderr
    assert gc.get_threshold()[0] < runtime.GC_THRESHOLDS[0]
