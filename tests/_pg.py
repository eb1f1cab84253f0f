"""A throwaway PostgreSQL server for the tests (and bench/bench_scale.py).

Debian's ``postgresql`` package (``/usr/lib/postgresql/<N>/bin``): ``initdb`` into a
fresh temporary directory (as the ``postgres`` user when running as root), ``pg_ctl
start`` on a free loopback port with the unix socket in that directory, trust auth for
loopback only; stopped and removed at exit. :func:`server` returns one per process
(started on first use) or raises :class:`Unavailable` with the reason.
"""

from __future__ import annotations

import atexit
import glob
import os
import shutil
import socket
import subprocess
import tempfile
from pathlib import Path


class Unavailable(Exception):
    """No PostgreSQL server could be started here (the reason is the message)."""


def _bindir() -> Path | None:
    env = os.environ.get("MMSAFE_PG_BINDIR")
    if env:
        return Path(env)
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"), key=lambda p: int(p.split("/")[4]))
    return Path(found[-1]).parent if found else None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class PgServer:
    """One PostgreSQL cluster in a temporary directory."""

    def __init__(self, *, fsync: bool = False):
        bindir = _bindir()
        if bindir is None or not (bindir / "initdb").exists():
            raise Unavailable("PostgreSQL is not installed (apt-get install postgresql; "
                              "/usr/lib/postgresql/*/bin/initdb not found)")
        try:
            import psycopg  # noqa: F401
        except ImportError:
            raise Unavailable("psycopg is not installed (pip install 'mmsafe[postgres]')") from None
        self.bindir = bindir
        self.root = Path(tempfile.mkdtemp(prefix="mmsafe-pg-"))
        self.data = self.root / "data"
        self.port = _free_port()
        self.user: str | None = None
        if os.geteuid() == 0:
            import pwd
            try:
                pw = pwd.getpwnam("postgres")
            except KeyError:
                raise Unavailable("running as root and there is no 'postgres' user to run initdb as") from None
            os.chown(self.root, pw.pw_uid, pw.pw_gid)
            self.user = "postgres"
        self._run(["initdb", "-D", str(self.data), "-U", "postgres", "--auth=trust", "-E", "UTF8",
                   "--no-instructions"])
        opts = (f"-p {self.port} -k {self.root} -c listen_addresses=127.0.0.1 -c max_connections=100"
                + ("" if fsync else " -c fsync=off -c full_page_writes=off"))
        self._run(["pg_ctl", "-D", str(self.data), "-o", opts, "-l", str(self.root / "log"), "-w", "-t", "60",
                   "start"])
        self.started = True
        atexit.register(self.stop)

    def _run(self, cmd: list[str]) -> None:
        full = [str(self.bindir / cmd[0]), *cmd[1:]]
        if self.user:
            full = ["runuser", "-u", self.user, "--", *full]
        r = subprocess.run(full, capture_output=True, text=True, timeout=120)
        if r.returncode != 0:
            log = self.root / "log"
            tail = log.read_text(errors="replace")[-800:] if log.exists() else ""
            raise Unavailable(f"{cmd[0]} failed: {(r.stderr or r.stdout).strip()[-800:]} {tail}")

    @property
    def url(self) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/postgres"

    def run_url(self, run: str) -> str:
        return f"{self.url}#{run}"

    def stop(self) -> None:
        if getattr(self, "started", False):
            self.started = False
            try:
                self._run(["pg_ctl", "-D", str(self.data), "-m", "immediate", "-w", "stop"])
            except Unavailable:
                pass
        shutil.rmtree(self.root, ignore_errors=True)


_server: PgServer | None = None
_failure: str | None = None


def server() -> PgServer:
    """This process's server (started on first use); :class:`Unavailable` when it cannot be."""
    global _server, _failure
    if _failure is not None:
        raise Unavailable(_failure)
    if _server is None:
        try:
            _server = PgServer()
        except Unavailable as e:
            _failure = str(e)
            raise
    return _server
