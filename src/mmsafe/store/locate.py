"""Where a run directory's store is: ``run.sqlite`` in it, or a PostgreSQL run it points to.

``mmsafe run … --store postgresql://USER@HOST/DB[#RUN] --out DIR`` writes ``DIR/store.json``
(``{"store": "postgresql", "url": …, "run": …}``, the URL without its password); every later
command on ``DIR`` (a resumed run, ``judge``) opens that PostgreSQL run. Readers (``report``,
``view``, ``export``) get a fresh local SQLite copy of it in ``DIR/run.sqlite``, marked as a
read-only copy, so they read a PostgreSQL run exactly as they read a SQLite one.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

import orjson

from mmsafe.store.base import RunStore, StoreError
from mmsafe.store.sqlite import POINTER_FILE, STORE_FILE, SQLiteRunStore

SNAPSHOT_TTL_S = 30.0
_snapshots: dict[tuple[str, str, str], float] = {}  # (url, run, dir) -> when this process last copied it


def has_store(run_dir: Path) -> bool:
    """Does ``run_dir`` hold a run store (``run.sqlite``, or ``store.json`` naming one)?"""
    return (run_dir / STORE_FILE).is_file() or (run_dir / POINTER_FILE).is_file()


def read_pointer(run_dir: Path) -> dict[str, Any] | None:
    """``run_dir/store.json`` checked, or None when there is none."""
    path = run_dir / POINTER_FILE
    if not path.is_file():
        return None
    try:
        d = orjson.loads(path.read_bytes())
    except (orjson.JSONDecodeError, OSError) as e:
        raise StoreError(f"{path}: not a store pointer ({e})") from None
    if not isinstance(d, dict) or d.get("store") != "postgresql" or not isinstance(d.get("url"), str) \
            or not isinstance(d.get("run"), str):
        raise StoreError(f"{path}: expected {{\"store\": \"postgresql\", \"url\": …, \"run\": …}}")
    return d


def _write_pointer(run_dir: Path, public_url: str, run: str) -> None:
    run_dir.mkdir(parents=True, exist_ok=True)
    path = run_dir / POINTER_FILE
    tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
    tmp.write_bytes(orjson.dumps({"store": "postgresql", "url": public_url, "run": run}, option=orjson.OPT_INDENT_2))
    os.replace(tmp, path)


def conninfo_for(public_url: str) -> str:
    """What to connect to ``public_url`` with: ``MMSAFE_STORE_URL`` when it names the same
    server and database (it may carry the password), else the URL itself (libpq then reads
    ``PGPASSWORD`` or ``~/.pgpass``)."""
    from mmsafe.store.postgres import is_postgres_url, parse_url

    env = os.environ.get("MMSAFE_STORE_URL")
    if env and is_postgres_url(env):
        t = parse_url(env, where="MMSAFE_STORE_URL")
        if t.public == public_url:
            return t.conninfo
    return public_url


def open_run_store(run_dir: Path, *, readonly: bool = False, url: str | None = None) -> RunStore:
    """See :func:`mmsafe.store.sqlite.open_store`."""
    pointer = read_pointer(run_dir)
    if url is not None:
        return _open_url(run_dir, url, pointer, readonly)
    if pointer is not None:
        if readonly:
            return snapshot(run_dir, pointer)
        from mmsafe.store.postgres import PostgresRunStore

        return PostgresRunStore(conninfo_for(pointer["url"]), pointer["run"])
    return SQLiteRunStore(run_dir / STORE_FILE, readonly=readonly)


def _open_url(run_dir: Path, url: str, pointer: dict[str, Any] | None, readonly: bool) -> RunStore:
    from mmsafe.store.postgres import PostgresRunStore, parse_url

    target = parse_url(url)
    run = target.run or (pointer["run"] if pointer else run_dir.resolve().name)
    if pointer is not None and (pointer["url"], pointer["run"]) != (target.public, run):
        raise StoreError(f"{run_dir}: its store is PostgreSQL run {pointer['run']!r} at {pointer['url']} "
                         f"({POINTER_FILE}), not {run!r} at {target.public}; use another --out")
    if pointer is None and (run_dir / STORE_FILE).is_file():
        raise StoreError(f"{run_dir}: holds a SQLite run ({STORE_FILE}); move it first (mmsafe store copy "
                         f"{run_dir} {target.public}#{run}) or use another --out")
    if readonly:
        return snapshot(run_dir, {"url": target.public, "run": run}, conninfo=target.conninfo)
    store = PostgresRunStore(target.conninfo, run)
    if pointer is None:
        try:
            _write_pointer(run_dir, target.public, run)
        except BaseException:
            store.close()
            raise
    return store


def _is_snapshot(path: Path) -> bool:
    try:
        s = SQLiteRunStore(path, readonly=True)
    except StoreError:
        return True  # unreadable: a torn copy at worst, replaced
    try:
        return bool(s.get_meta("snapshot_of"))
    finally:
        s.close()


def forget_snapshots(public_url: str, run: str) -> None:
    """A writer of this run closed: the next reader copies it again."""
    for k in [k for k in _snapshots if k[:2] == (public_url, run)]:
        del _snapshots[k]


def snapshot(run_dir: Path, pointer: dict[str, Any], *, conninfo: str | None = None) -> SQLiteRunStore:
    """A read-only SQLite copy of the PostgreSQL run ``pointer`` names, refreshed into
    ``run_dir/run.sqlite`` (atomically) unless this process copied it in the last
    :data:`SNAPSHOT_TTL_S` seconds and wrote nothing to it since."""
    from mmsafe.store.copy import copy_run
    from mmsafe.store.postgres import PostgresRunStore

    path = run_dir / STORE_FILE
    key = (pointer["url"], pointer["run"], str(run_dir.resolve()))
    fresh = _snapshots.get(key)
    if fresh is None or time.monotonic() - fresh > SNAPSHOT_TTL_S or not path.is_file():
        if path.is_file() and not _is_snapshot(path):
            raise StoreError(f"{run_dir}: holds both a SQLite run ({STORE_FILE}) and {POINTER_FILE}; "
                             f"remove the one that is not this run's")
        src = PostgresRunStore(conninfo or conninfo_for(pointer["url"]), pointer["run"], readonly=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        try:
            for p in (tmp, tmp.with_name(tmp.name + "-wal"), tmp.with_name(tmp.name + "-shm")):
                p.unlink(missing_ok=True)
            dst = SQLiteRunStore(tmp)
            try:
                copy_run(src, dst, where=str(path))
                dst.set_meta("snapshot_of", {"url": pointer["url"], "run": pointer["run"], "at": time.time()})
                dst.db.execute("PRAGMA journal_mode=DELETE")  # one self-contained file, never written again
            finally:
                dst.close()
            for p in (path.with_name(path.name + "-wal"), path.with_name(path.name + "-shm")):
                p.unlink(missing_ok=True)  # a previous copy's, read in WAL mode
            os.replace(tmp, path)
        except OSError as e:
            raise StoreError(f"{path}: cannot write the local copy of PostgreSQL run {pointer['run']!r} "
                             f"({e.strerror or e})") from None
        finally:
            src.close()
            tmp.unlink(missing_ok=True)
        _snapshots[key] = time.monotonic()
    return SQLiteRunStore(path, readonly=True)


__all__ = ["conninfo_for", "forget_snapshots", "has_store", "open_run_store", "read_pointer", "snapshot"]
