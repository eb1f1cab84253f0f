"""Copying a run between stores (``mmsafe store copy SRC DST``): SQLite <-> PostgreSQL.

Every table is copied as stored (request ids, sequence numbers, verdicts of every judge);
the claims of processes that were working on the run are not (they belong to those
processes). The destination must hold no run yet.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson

from mmsafe.store.base import RunStore, StoreError
from mmsafe.store.sqlite import POINTER_FILE, STORE_FILE, SQLiteRunStore

SKIPPED_META = ("schema_version", "snapshot_of")  # the destination's own


def copy_run(src: RunStore, dst: RunStore, *, where: str = "DST") -> dict[str, int]:
    """Copy everything ``src`` holds into the empty ``dst``; returns rows copied per table."""
    if dst.get_meta("config") is not None or dst.counts()["responses"]:
        raise StoreError(f"{where}: already holds a run; copy into a new directory or run name")
    counts: dict[str, int] = {}
    seq_order: Any = None
    for table, cols, rows in src.dump_tables():
        if table == "claims":
            continue
        if table == "meta":
            n = 0
            for key, value in rows:
                if key in SKIPPED_META:
                    continue
                v = orjson.loads(value)
                if key == "seq_order":
                    seq_order = v
                dst.set_meta(key, v)
                n += 1
            counts[table] = n
            continue
        counts[table] = dst.load_table(table, cols, rows)
    if seq_order is None and counts.get("responses"):
        dst.set_meta("seq_order", "completion")  # a store from before benchmark order: keep its own order
    return counts


@dataclass
class CopyResult:
    """What ``mmsafe store copy`` did: rows per table, and the two ends as shown to the user."""

    counts: dict[str, int]
    src: str
    dst: str


def _open_src(src: str) -> tuple[RunStore, str, str]:
    """(store, shown name, default run name) of a copy's source."""
    from mmsafe.store.locate import conninfo_for, read_pointer
    from mmsafe.store.postgres import PostgresRunStore, is_postgres_url, parse_url

    if is_postgres_url(src):
        t = parse_url(src, where="SRC")
        if not t.run:
            raise StoreError(f"SRC {t.public}: name the run to copy: {t.public}#RUN")
        return PostgresRunStore(t.conninfo, t.run, readonly=True), f"{t.public}#{t.run}", t.run
    d = Path(src)
    if not d.is_dir():
        raise StoreError(f"SRC {src}: no such run directory (or a postgresql://…#RUN URL)")
    pointer = read_pointer(d)
    if pointer is not None:
        store = PostgresRunStore(conninfo_for(pointer["url"]), pointer["run"], readonly=True)
        return store, f"{pointer['url']}#{pointer['run']}", pointer["run"]
    if not (d / STORE_FILE).is_file():
        raise StoreError(f"SRC {src}: no run store here ({STORE_FILE} missing)")
    return SQLiteRunStore(d / STORE_FILE, readonly=True), str(d / STORE_FILE), d.resolve().name


def copy_between(src: str, dst: str) -> CopyResult:
    """``mmsafe store copy SRC DST``: SRC a run directory (SQLite, or one naming a PostgreSQL
    run) or ``postgresql://…#RUN``; DST a new run directory (written as SQLite, with the
    source directory's results.jsonl and summary.json when it has them) or
    ``postgresql://…[#RUN]`` (RUN: the source's run name), which must hold no run yet."""
    from mmsafe.store.postgres import PostgresRunStore, is_postgres_url, parse_url

    store, src_name, run = _open_src(src)
    try:
        if is_postgres_url(dst):
            t = parse_url(dst, where="DST")
            run = t.run or run
            out: RunStore = PostgresRunStore(t.conninfo, run)
            dst_name = f"{t.public}#{run}"
        else:
            d = Path(dst)
            if (d / STORE_FILE).exists() or (d / POINTER_FILE).exists():
                raise StoreError(f"DST {dst}: already holds a run; copy into a new directory")
            if d.exists() and not d.is_dir():
                raise StoreError(f"DST {dst}: exists and is not a directory")
            out = SQLiteRunStore(d / STORE_FILE)
            dst_name = str(d / STORE_FILE)
        try:
            counts = copy_run(store, out, where=f"DST {dst_name}")
        finally:
            out.close()
    finally:
        store.close()
    s, d2 = Path(src), Path(dst)
    if not is_postgres_url(src) and not is_postgres_url(dst) and s.is_dir():
        for name in ("summary.json", "results.jsonl"):
            if (s / name).is_file():
                shutil.copy2(s / name, d2 / name)
    return CopyResult(counts=counts, src=src_name, dst=dst_name)


__all__ = ["CopyResult", "copy_between", "copy_run"]
