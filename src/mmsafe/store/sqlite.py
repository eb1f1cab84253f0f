"""SQLite (WAL) implementation of the run store."""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any, Literal, overload

import orjson

from mmsafe.store.base import (
    Claim,
    ClaimRow,
    Holder,
    RunStore,
    StoreError,
    decide_claim,
    lease_seconds,
    ledger_from_rows,
)
from mmsafe.types import JudgeIdentity, Response, Sample, Usage, Verdict

SCHEMA_VERSION = 2
"""1: meta, responses, requests, judges, verdicts. 2: + claims (several processes on one run)."""
STORE_FILE = "run.sqlite"
POINTER_FILE = "store.json"  # a run directory whose store lives elsewhere (PostgreSQL) names it here

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS responses (
  sample_id TEXT PRIMARY KEY, seq INTEGER NOT NULL, grp TEXT, scenario TEXT, category TEXT, method TEXT,
  turns INTEGER, question TEXT, status TEXT NOT NULL, text TEXT, error TEXT, model TEXT, finish_reason TEXT,
  input_tokens INTEGER, output_tokens INTEGER, cost_usd REAL, latency_ms REAL, attempts INTEGER,
  cached INTEGER, created REAL, extra TEXT, control TEXT);
CREATE INDEX IF NOT EXISTS responses_seq ON responses(seq);
CREATE TABLE IF NOT EXISTS requests (
  id INTEGER PRIMARY KEY AUTOINCREMENT, sample_id TEXT, role TEXT NOT NULL, model TEXT, status TEXT NOT NULL,
  error TEXT, http_status INTEGER, input_tokens INTEGER, output_tokens INTEGER, cost_usd REAL,
  latency_ms REAL, created REAL);
CREATE TABLE IF NOT EXISTS judges (judge_id TEXT PRIMARY KEY, identity TEXT NOT NULL, created REAL);
CREATE TABLE IF NOT EXISTS verdicts (
  sample_id TEXT NOT NULL, judge_id TEXT NOT NULL, label TEXT NOT NULL, score REAL, rating REAL,
  parse_status TEXT, rationale TEXT, raw TEXT, categories TEXT, cost_usd REAL, input_tokens INTEGER,
  output_tokens INTEGER, created REAL, extra TEXT, PRIMARY KEY (sample_id, judge_id));
"""

# schema_version -> what brings a store of the version before it up to it (stores written by
# older mmsafe versions are migrated when opened for writing; readers need none of it)
MIGRATIONS: dict[int, str] = {
    2: "CREATE TABLE IF NOT EXISTS claims (sample_id TEXT PRIMARY KEY, holder TEXT NOT NULL, host TEXT,"
       " pid INTEGER, expires REAL NOT NULL, done_at REAL);",
}


def _dumps(v: Any) -> str:
    return orjson.dumps(v).decode()


def _scalar(v: Any) -> Any:
    return v if v is None or isinstance(v, (str, int, float)) else _dumps(v)


_CONTROL_TRUE = {"1", "true", "yes", "y", "benign", "control", "safe"}


def is_control(metadata: dict[str, Any]) -> bool:
    """Is this sample a benign control (kept out of ASR, reported as over-refusal)?
    ``metadata.control`` read leniently (CSV cells are strings: "0"/"false" are not controls)."""
    v = metadata.get("control")
    if isinstance(v, bool):
        return v
    if isinstance(v, (int, float)):
        return v == 1
    return isinstance(v, str) and v.strip().lower() in _CONTROL_TRUE


class SQLiteRunStore(RunStore):
    """The run store as one SQLite file (WAL mode): responses, verdicts, judges, request log, meta.

    ``readonly=True`` opens an existing store without writing to it (reports, the viewer).
    """

    def __init__(self, path: Path, *, readonly: bool = False):
        self.path = path
        self._holder: Holder | None = None
        self._lease = 0.0
        self._started = 0.0
        if readonly:
            if not path.exists():
                raise StoreError(f"{path}: no run store here")
            self.db = sqlite3.connect(f"file:{path}?mode=ro", uri=True, isolation_level=None)
        else:
            try:
                path.parent.mkdir(parents=True, exist_ok=True)
                # another process on the same run holds the write lock for a few ms at a time
                self.db = sqlite3.connect(str(path), isolation_level=None, timeout=60.0)
                self.db.execute("PRAGMA journal_mode=WAL")
                self.db.execute("PRAGMA synchronous=NORMAL")
                self.db.executescript(_SCHEMA)
            except (sqlite3.DatabaseError, OSError) as e:
                raise StoreError(f"{path}: not a usable mmsafe run store ({e})") from None
        try:
            v = self.get_meta("schema_version")
        except sqlite3.DatabaseError as e:
            raise StoreError(f"{path}: not a readable mmsafe run store ({e})") from None
        if v is not None and v > SCHEMA_VERSION:
            raise StoreError(f"{path}: store schema {v} is newer than this mmsafe ({SCHEMA_VERSION})")
        if not readonly:
            snap = self.get_meta("snapshot_of")
            if snap:
                raise StoreError(f"{path}: a read-only copy of PostgreSQL run {snap.get('run')!r} "
                                 f"({snap.get('url')}); write to that store (--store URL) instead")
            self._migrate()
        self._seq = (self.db.execute("SELECT COALESCE(MAX(seq), -1) FROM responses").fetchone()[0]
                     if not readonly else 0)
        # seq: the sample's position in the benchmark (stores made since results follow the
        # benchmark order); a store that already holds responses in completion order keeps
        # that, so seq stays unique (the viewer and the export page on it)
        self._bench_order = self.get_meta("seq_order") == "benchmark"
        if not readonly and not self._bench_order and self._seq == -1:
            self.set_meta("seq_order", "benchmark")
            self._bench_order = True

    def _migrate(self) -> None:
        """Bring the schema to :data:`SCHEMA_VERSION` (a new store: straight there)."""
        self.db.execute("BEGIN IMMEDIATE")
        try:
            v = self.get_meta("schema_version")  # again, under the write lock: another process may have done it
            for target in sorted(MIGRATIONS):
                if v is None or target > v:
                    for stmt in MIGRATIONS[target].split(";"):
                        if stmt.strip():
                            self.db.execute(stmt)
            if v != SCHEMA_VERSION:
                self.set_meta("schema_version", SCHEMA_VERSION)
            self.db.execute("COMMIT")
        except BaseException:
            self.db.execute("ROLLBACK")
            raise

    # -- meta
    def get_meta(self, key: str) -> Any | None:
        """The stored value for ``key`` (JSON-decoded), or None when unset."""
        row = self.db.execute("SELECT value FROM meta WHERE key=?", (key,)).fetchone()
        return orjson.loads(row[0]) if row else None

    def set_meta(self, key: str, value: Any) -> None:
        """Store ``value`` (JSON-encodable) under ``key``, replacing any earlier value."""
        self.db.execute("INSERT OR REPLACE INTO meta VALUES (?,?)", (key, _dumps(value)))

    # -- queries
    def ok_sample_ids(self) -> set[str]:
        """Samples whose target response is stored and successful."""
        return {r[0] for r in self.db.execute("SELECT sample_id FROM responses WHERE status='ok'")}

    def judged_sample_ids(self, judge_id: str) -> set[str]:
        """Samples with a (non-error) verdict from this judge."""
        return {r[0] for r in self.db.execute(
            "SELECT sample_id FROM verdicts WHERE judge_id=? AND parse_status != 'error'", (judge_id,))}

    def get_response(self, sample_id: str) -> Response | None:
        """The stored target response for a sample, or None."""
        row = self.db.execute(
            "SELECT text, error, model, finish_reason, input_tokens, output_tokens, cost_usd, latency_ms,"
            " attempts, cached, created, extra FROM responses WHERE sample_id=?", (sample_id,)).fetchone()
        if row is None:
            return None
        return Response(sample_id=sample_id, text=row[0], error=row[1], model=row[2] or "", finish_reason=row[3],
                        usage=Usage(input_tokens=row[4] or 0, output_tokens=row[5] or 0), cost_usd=row[6] or 0.0,
                        latency_ms=row[7] or 0.0, attempts=row[8] or 0, cached=bool(row[9]), created=row[10],
                        extra=orjson.loads(row[11]) if row[11] else {})

    # -- writes (each its own transaction)
    def _insert_requests(self, requests: list[dict[str, Any]]) -> None:
        if requests:
            self.db.executemany(
                "INSERT INTO requests (sample_id, role, model, status, error, http_status, input_tokens,"
                " output_tokens, cost_usd, latency_ms, created) VALUES (?,?,?,?,?,?,?,?,?,?,?)",
                [(r.get("sample_id"), r["role"], r.get("model"), r["status"], r.get("error"), r.get("http_status"),
                  r.get("input_tokens", 0), r.get("output_tokens", 0), r.get("cost_usd", 0.0),
                  r.get("latency_ms"), r.get("created", time.time())) for r in requests])

    def log_requests(self, requests: list[dict[str, Any]]) -> None:
        """Append entries to the request log in one transaction."""
        with self.db:
            self.db.execute("BEGIN")
            self._insert_requests(requests)

    def save_response(self, sample: Sample, response: Response, requests: list[dict[str, Any]],
                      order: int | None = None) -> None:
        """Store a sample's response (an ``ok`` one is never overwritten). ``order`` is the sample's
        position in the benchmark: results are read back in that order, whatever order the
        concurrent requests finished in (without it, in the order of saving)."""
        group = _scalar(sample.metadata.get("group", sample.id))
        control = "benign" if is_control(sample.metadata) else None
        status = "ok" if response.ok else "error"
        self.db.execute("BEGIN")
        try:
            self._insert_requests(requests)
            if order is None or not self._bench_order:
                self._seq += 1
                seq = self._seq
            else:
                seq = order
                self._seq = max(self._seq, order)
            self.db.execute(
                "INSERT INTO responses VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)"
                " ON CONFLICT(sample_id) DO UPDATE SET status=excluded.status, text=excluded.text,"
                " error=excluded.error, model=excluded.model, finish_reason=excluded.finish_reason,"
                " input_tokens=excluded.input_tokens, output_tokens=excluded.output_tokens,"
                " cost_usd=excluded.cost_usd, latency_ms=excluded.latency_ms, attempts=excluded.attempts,"
                " cached=excluded.cached, created=excluded.created, extra=excluded.extra"
                " WHERE responses.status != 'ok'",
                (sample.id, seq, group, sample.scenario, sample.category,
                 sample.method, sample.turns, sample.question, status, response.text, response.error,
                 response.model, response.finish_reason, response.usage.input_tokens,
                 response.usage.output_tokens, response.cost_usd, response.latency_ms, response.attempts,
                 int(response.cached), response.created, _dumps(response.extra) if response.extra else None,
                 control))
            self.db.execute("COMMIT")
        except BaseException:
            self.db.execute("ROLLBACK")
            raise

    def register_judge(self, identity: JudgeIdentity) -> str:
        """Record a judge's identity (idempotent) and return its judge id."""
        jid = identity.id
        self.db.execute("INSERT OR IGNORE INTO judges VALUES (?,?,?)",
                        (jid, identity.model_dump_json(), time.time()))
        return jid

    def save_verdict(self, verdict: Verdict, requests: list[dict[str, Any]]) -> None:
        """Store a verdict (replacing this judge's earlier one on the sample) and its requests, atomically."""
        self.db.execute("BEGIN")
        try:
            self._insert_requests(requests)
            self.db.execute(
                "INSERT OR REPLACE INTO verdicts VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?)",
                (verdict.sample_id, verdict.judge_id, verdict.label, verdict.score, verdict.rating,
                 verdict.parse_status, verdict.rationale, _dumps(verdict.raw) if verdict.raw else None,
                 _dumps(verdict.categories) if verdict.categories else None, verdict.cost_usd,
                 verdict.usage.input_tokens, verdict.usage.output_tokens, verdict.created,
                 _dumps(verdict.extra) if verdict.extra else None))
            self.db.execute("COMMIT")
        except BaseException:
            self.db.execute("ROLLBACK")
            raise

    # -- reads for results and summaries (streamed)
    def iter_rows(self, judge_id: str | None = None) -> Iterator[dict[str, Any]]:
        """Stream one row per stored sample (response fields + ``judge_id``'s verdict), in order."""
        cur = self.db.execute(
            "SELECT r.sample_id, r.grp, r.scenario, r.category, r.method, r.turns, r.question, r.status, r.text,"
            " r.error, r.model, r.input_tokens, r.output_tokens, r.cost_usd, r.latency_ms, r.cached, r.extra,"
            " r.control, r.finish_reason,"
            " v.label, v.score, v.rating, v.parse_status, v.rationale, v.categories, v.raw, v.extra"
            " FROM responses r LEFT JOIN verdicts v ON v.sample_id = r.sample_id AND v.judge_id = ?"
            " ORDER BY r.seq", (judge_id,))
        for row in cur:
            yield {
                "sample_id": row[0], "group": row[1], "scenario": row[2], "category": row[3], "method": row[4],
                "turns": row[5], "question": row[6], "status": row[7], "response": row[8], "error": row[9],
                "model": row[10], "input_tokens": row[11], "output_tokens": row[12], "cost_usd": row[13],
                "latency_ms": row[14], "cached": bool(row[15]),
                "response_extra": orjson.loads(row[16]) if row[16] else None,
                "control": row[17], "finish_reason": row[18],
                "label": row[19], "score": row[20], "rating": row[21], "parse_status": row[22],
                "rationale": row[23], "categories": orjson.loads(row[24]) if row[24] else [],
                "judge_raw": orjson.loads(row[25]) if row[25] else None,
                "verdict_extra": orjson.loads(row[26]) if row[26] else None,
            }

    def iter_verdict_labels(self) -> Iterator[tuple[str, str, str]]:
        """(sample_id, judge_id, label) for every stored verdict — for agreement between judges."""
        yield from self.db.execute(
            "SELECT v.sample_id, v.judge_id, v.label FROM verdicts v JOIN responses r ON r.sample_id = v.sample_id"
            " WHERE r.control IS NULL ORDER BY v.sample_id")  # benign controls are outside the ASR, here too

    def judges(self) -> list[dict[str, Any]]:
        """Every registered judge: ``judge_id``, ``identity`` and ``created``, oldest first."""
        out = []
        for jid, ident, created in self.db.execute("SELECT judge_id, identity, created FROM judges ORDER BY created"):
            out.append({"judge_id": jid, "identity": orjson.loads(ident), "created": created})
        return out

    def ledger(self) -> dict[str, dict[str, Any]]:
        """Calls, cached calls, errors, tokens and USD per role, from the request log."""
        return ledger_from_rows(self.db.execute(
            "SELECT role, status, COUNT(*), SUM(input_tokens), SUM(output_tokens), SUM(cost_usd)"
            " FROM requests GROUP BY role, status"))

    def counts(self) -> dict[str, int]:
        """Stored responses: ``responses``, ``ok`` and ``errors``."""
        n, ok = self.db.execute("SELECT COUNT(*), SUM(status='ok') FROM responses").fetchone()
        return {"responses": n or 0, "ok": ok or 0, "errors": (n or 0) - (ok or 0)}

    # -- claims (BEGIN IMMEDIATE: the claim is decided and written under the file's write lock)
    def begin_claims(self, lease_s: float | None = None) -> Holder:
        """Start claiming as this process (the lease defaults to :func:`mmsafe.store.base.lease_seconds`)."""
        self._holder = Holder.here()
        self._lease = lease_s if lease_s is not None else lease_seconds()
        self._started = time.time()
        return self._holder

    def _me(self) -> Holder:
        if self._holder is None:
            raise RuntimeError("begin_claims() first")
        return self._holder

    def claim_many(self, sample_ids: list[str], judge_id: str) -> dict[str, Claim]:
        """Claim several samples in one transaction (see :func:`mmsafe.store.base.decide_claim`)."""
        me = self._me()
        now = time.time()
        out: dict[str, Claim] = {}
        self.db.execute("BEGIN IMMEDIATE")
        try:
            for sid in sample_ids:
                row: ClaimRow | None = self.db.execute(
                    "SELECT holder, host, pid, expires, done_at FROM claims WHERE sample_id=?", (sid,)).fetchone()
                outcome = decide_claim(row, me.id, now, self._started)
                if outcome != "claimed":
                    out[sid] = Claim(outcome, holder=row[0] if row else None)
                    continue
                self.db.execute("INSERT OR REPLACE INTO claims VALUES (?,?,?,?,?,NULL)",
                                (sid, me.id, me.host, me.pid, now + self._lease))
                st = self.db.execute("SELECT status FROM responses WHERE sample_id=?", (sid,)).fetchone()
                judged = self.db.execute("SELECT 1 FROM verdicts WHERE sample_id=? AND judge_id=? AND"
                                         " parse_status != 'error'", (sid, judge_id)).fetchone()
                out[sid] = Claim("claimed", response_ok=st is not None and st[0] == "ok", judged=judged is not None)
            self.db.execute("COMMIT")
        except BaseException:
            self.db.execute("ROLLBACK")
            raise
        return out

    def finish_claim(self, sample_id: str) -> None:
        """This process is done with the sample (its reply and verdict, or its failure, are stored)."""
        self.db.execute("UPDATE claims SET done_at=? WHERE sample_id=? AND holder=?",
                        (time.time(), sample_id, self._me().id))

    def renew_claims(self) -> int:
        """Extend the lease of every unfinished claim this process holds; returns how many."""
        return self.db.execute("UPDATE claims SET expires=? WHERE holder=? AND done_at IS NULL",
                               (time.time() + self._lease, self._me().id)).rowcount

    def release_claims(self) -> None:
        """Give up the unfinished claims of this process: others may take them at once."""
        if self._holder is not None:
            self.db.execute("DELETE FROM claims WHERE holder=? AND done_at IS NULL", (self._holder.id,))

    # -- copying (mmsafe store copy)
    def dump_tables(self) -> Iterator[tuple[str, list[str], Iterator[tuple[Any, ...]]]]:
        """(table, columns, rows) of every table a run holds, for :func:`mmsafe.store.copy.copy_run`."""
        self.db.execute("BEGIN")  # one read transaction: a consistent copy of a run still being written
        try:
            for table in TABLES:
                cols = [r[1] for r in self.db.execute(f"PRAGMA table_info({table})")]
                if cols:
                    yield table, cols, iter(self.db.execute(f"SELECT {', '.join(cols)} FROM {table}"))
        finally:
            self.db.execute("COMMIT")

    def load_table(self, table: str, cols: list[str], rows: Iterable[tuple[Any, ...]]) -> int:
        """Append ``rows`` to ``table`` (one transaction); returns how many."""
        n = 0
        marks = ",".join("?" * len(cols))

        def counted() -> Iterator[tuple[Any, ...]]:
            nonlocal n
            for r in rows:
                n += 1
                yield r

        self.db.execute("BEGIN")
        try:
            self.db.executemany(f"INSERT INTO {table} ({', '.join(cols)}) VALUES ({marks})", counted())
            self.db.execute("COMMIT")
        except BaseException:
            self.db.execute("ROLLBACK")
            raise
        if table == "responses":
            self._seq = self.db.execute("SELECT COALESCE(MAX(seq), -1) FROM responses").fetchone()[0]
        return n

    def close(self) -> None:
        """Close the database connection."""
        self.db.close()


TABLES = ("meta", "judges", "responses", "verdicts", "requests", "claims")


@overload
def open_store(run_dir: Path, *, readonly: Literal[True], url: None = None) -> SQLiteRunStore: ...


@overload
def open_store(run_dir: Path, *, readonly: bool = False, url: str | None = None) -> RunStore: ...


def open_store(run_dir: Path, *, readonly: bool = False, url: str | None = None) -> RunStore:
    """The store of ``run_dir``: ``run.sqlite`` in it, or the PostgreSQL run its ``store.json``
    names, or (``url``: ``postgresql://…``) a PostgreSQL run, recorded in ``store.json``.

    A reader (``readonly``) of a PostgreSQL run gets a fresh local SQLite copy of it
    (``run.sqlite``, marked read-only), so the report, viewer and exports read it as they
    read any run."""
    from mmsafe.store.locate import open_run_store

    return open_run_store(run_dir, readonly=readonly, url=url)
