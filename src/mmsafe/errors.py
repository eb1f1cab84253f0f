"""One map from the errors a command can end with to its exit status and one line.

The CLI's single ``guarded`` wrapper (:mod:`mmsafe.cli.app`) asks :func:`classify` about
every exception that leaves a command; a library user can use it the same way. Only the
errors listed here are mapped; anything else is a bug and keeps its traceback.

- exit 2, the error's own first line: :class:`~mmsafe.types.InputError` and its kinds
  (ConfigError, DatasetError, AssetError, PluginError); an ImportError that says
  ``pip install …`` (a missing extra).
- exit 2, ``endpoint NAME: …``: FatalProviderError (a bad key, an unknown model or route).
- exit 1, ``stopped: … re-run with a higher --max-cost``: BudgetExceeded.
- exit 2, ``cannot write FILE: permission denied`` (``read-only file system``, ``it is a
  folder, not a file``, ``a file of that name exists`` …): an ``OSError`` that names a file
  (PermissionError, IsADirectoryError, FileExistsError, NotADirectoryError,
  FileNotFoundError, a read-only or full file system).
- exit 2, ``cannot write FILE: read-only database``: sqlite3.OperationalError for a
  read-only or unopenable database (FILE found from the store that raised it).
- exit 130, ``interrupted: … re-run the same command to resume``: KeyboardInterrupt.

A command may add context to whatever leaves it with :func:`note` (e.g. "nothing written"),
which the one line then ends with.
"""

from __future__ import annotations

import builtins
import errno
import os
import re
import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType

from mmsafe.types import InputError

EXIT_OK = 0
"""The command did what was asked."""
EXIT_INCOMPLETE = 1
"""Done but incomplete: failures above the threshold, stopped by --max-cost, nothing measured."""
EXIT_USAGE = 2
"""Bad input: a file, line, field, option, endpoint or credential the user has to fix."""
EXIT_INTERRUPTED = 130
"""Interrupted (Ctrl-C); what finished is stored and a re-run resumes."""

# exception groups (asyncio.TaskGroup) exist from Python 3.11
_GROUP: type[BaseException] | None = getattr(builtins, "BaseExceptionGroup", None)

INTERRUPTED_LINE = "interrupted: what finished is stored; re-run the same command to resume"


@dataclass(frozen=True)
class Failure:
    """What a mapped error means for the user: the exit status and the one line to print."""

    code: int
    message: str


def first_line(exc: BaseException) -> str:
    """The first non-empty line of an error's message (its type name when it has none)."""
    for line in str(exc).splitlines():
        if line.strip():
            return line.strip()
    return type(exc).__name__


def _notes(exc: BaseException) -> str:
    notes = [n for n in getattr(exc, "__notes__", None) or [] if isinstance(n, str) and n.strip()]
    return "".join(f"; {n.strip()}" for n in notes)


def _provider_errors() -> tuple[type[BaseException], type[BaseException]]:
    # imported on demand: the engine pulls in aiohttp, which a failing `mmsafe --help` need not load
    from mmsafe.models.engine import BudgetExceeded, FatalProviderError
    return FatalProviderError, BudgetExceeded


_WRITE_ERRNOS = {
    errno.EACCES: "permission denied",
    errno.EPERM: "permission denied",
    errno.EROFS: "read-only file system",
    errno.ENOSPC: "no space left on the device",
    getattr(errno, "EDQUOT", -2): "disk quota exceeded",
    errno.EISDIR: "it is a folder, not a file",
    errno.EEXIST: "it already exists",
    errno.ENOTDIR: "a part of the path is a file, not a folder",
}


# the temp names atomic writers use next to their destination: .NAME.PID.tmp, NAME.PID.TID.tmp, .NAME.HEX.tmp
_TEMP_NAME = re.compile(r"^\.?(?P<name>.+?)(?:\.[0-9a-f]{2,32})+\.tmp$")


def shown_path(path: str) -> str:
    """``path`` as the user named it: an atomic writer's temp file is shown as its destination."""
    p = Path(path)
    m = _TEMP_NAME.match(p.name)
    return str(p.with_name(m["name"])) if m else path


def _os_error_line(exc: OSError) -> str | None:
    name = exc.filename if exc.filename is not None else exc.filename2
    if name is None:
        return None
    path = shown_path(os.fsdecode(name) if isinstance(name, (bytes, os.PathLike)) else str(name))
    if exc.errno == errno.ENOENT:
        parent = Path(path).parent
        if str(parent) not in ("", ".") and not parent.exists():
            return f"cannot write {path}: its folder {parent} does not exist"
        return f"{path}: not found"
    if exc.errno == errno.EEXIST and os.path.isfile(path):
        return f"cannot create the folder {path}: a file of that name exists"
    reason = _WRITE_ERRNOS.get(exc.errno or -1)
    if reason is None:
        return None
    verb = "write"
    if exc.errno in (errno.EACCES, errno.EPERM) and os.path.exists(path) and not os.access(path, os.R_OK):
        verb = "read"
    return f"cannot {verb} {path}: {reason}"


def _sqlite_path(tb: TracebackType | None) -> str | None:
    """The database file an sqlite error came from: the innermost frame whose ``self.path``
    (or local ``path``) names one."""
    frames = []
    while tb is not None:
        frames.append(tb.tb_frame)
        tb = tb.tb_next
    for frame in reversed(frames):
        for cand in (getattr(frame.f_locals.get("self"), "path", None), frame.f_locals.get("path")):
            if isinstance(cand, (str, Path)) and str(cand).endswith((".sqlite", ".db", ".sqlite3")):
                return str(cand)
    return None


def _sqlite_line(exc: sqlite3.OperationalError) -> str | None:
    text = str(exc).lower()
    if "readonly database" in text or "read-only" in text:
        reason = "read-only database (its folder or file is not writable)"
    elif "unable to open database" in text:
        reason = "unable to open the database (check the folder exists and is writable)"
    else:
        return None
    return f"cannot write {_sqlite_path(exc.__traceback__) or 'the database'}: {reason}"


def classify(exc: BaseException) -> Failure | None:
    """The exit status and one line for ``exc``, or None when it is not a known, user-facing error.

    An exception group maps as its first mapped member.
    """
    if isinstance(exc, KeyboardInterrupt):
        return Failure(EXIT_INTERRUPTED, INTERRUPTED_LINE)
    if _GROUP is not None and isinstance(exc, _GROUP):
        for sub in getattr(exc, "exceptions", ()):
            found = classify(sub)
            if found is not None:
                return found
        return None
    if isinstance(exc, InputError):
        return Failure(EXIT_USAGE, first_line(exc) + _notes(exc))
    fatal, budget = _provider_errors()
    if isinstance(exc, fatal):
        line = first_line(exc)
        return Failure(EXIT_USAGE, (line if line.startswith("endpoint ") else f"endpoint {line}") + _notes(exc))
    if isinstance(exc, budget):
        return Failure(EXIT_INCOMPLETE, f"stopped: {first_line(exc)}{_notes(exc)}; re-run with a higher "
                                        "--max-cost to continue (finished requests come from the cache)")
    if isinstance(exc, ImportError) and "pip install" in str(exc):  # an optional extra, named in the message
        return Failure(EXIT_USAGE, first_line(exc) + _notes(exc))
    if isinstance(exc, OSError):
        fs_line = _os_error_line(exc)
        return None if fs_line is None else Failure(EXIT_USAGE, fs_line + _notes(exc))
    if isinstance(exc, sqlite3.OperationalError):
        db_line = _sqlite_line(exc)
        return None if db_line is None else Failure(EXIT_USAGE, db_line + _notes(exc))
    return None


@contextmanager
def note(text: str) -> Iterator[None]:
    """Add ``text`` to any error that leaves the block, so its one line says e.g. "nothing written"."""
    try:
        yield
    except BaseException as e:
        if not isinstance(e, (KeyboardInterrupt, SystemExit, GeneratorExit)):
            e.__notes__ = [*(getattr(e, "__notes__", None) or []), text]
        raise


__all__ = ["EXIT_INCOMPLETE", "EXIT_INTERRUPTED", "EXIT_OK", "EXIT_USAGE", "INTERRUPTED_LINE", "Failure", "classify",
           "first_line", "note", "shown_path"]
