"""Copying a run between stores (``mmsafe store copy SRC DST``): SQLite <-> PostgreSQL.

Every table is copied as stored (request ids, sequence numbers, verdicts of every judge);
the claims of processes that were working on the run are not (they belong to those
processes). The destination must hold no run yet.
"""

from __future__ import annotations

from typing import Any

import orjson

from mmsafe.store.base import RunStore, StoreError

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


__all__ = ["copy_run"]
