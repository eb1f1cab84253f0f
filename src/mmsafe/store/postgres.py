"""PostgreSQL implementation of the run store (``mmsafe run --store postgresql://…``).

One database holds many runs, one PostgreSQL schema per run (``mmsafe_<run>``), each with
the same tables as a SQLite run (``meta``, ``responses``, ``requests``, ``judges``,
``verdicts``, ``claims``) and its ``schema_version`` in ``meta``; ``public.mmsafe_runs``
lists them. Several processes, on one host or many, may work on one run at once: each
sample is claimed with a lease before it is sent (:meth:`PostgresRunStore.claim`, one
round trip: a server-side function that locks the claim row with ``FOR UPDATE SKIP
LOCKED``), so a sample is sent by one process only; a holder renews its leases while it
runs, and the claims of a holder that died expire and are taken over.

Writes are committed by a writer thread with its own connection, a batch per transaction
(the run's event loop never waits for a round trip per reply); a run awaits
:meth:`PostgresRunStore.durable` before it counts a sample as done. Sessions use
``synchronous_commit = off``: a commit returns before the server's WAL is on disk. A
client killed at any point loses nothing committed; a *server* crash may lose the last
fraction of a second of commits (those samples are sent again by the next run, as with
SQLite's ``synchronous=NORMAL`` on a power cut).

Passwords never reach a file: the run directory's ``store.json`` holds the URL without
it; libpq reads it from ``PGPASSWORD``, ``~/.pgpass`` or ``MMSAFE_STORE_URL``.
"""

from __future__ import annotations

import asyncio
import hashlib
import re
import threading
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit, urlunsplit

import orjson

from mmsafe.store.base import Claim, Holder, RunStore, StoreError, holder_dead, lease_seconds, ledger_from_rows
from mmsafe.store.sqlite import TABLES, _scalar, is_control
from mmsafe.types import JudgeIdentity, Response, Sample, Usage, Verdict

if TYPE_CHECKING:
    import psycopg

SCHEMA_VERSION = 2  # the same numbering as the SQLite store's (2: claims)
PAGE = 5000

_DDL = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS responses (
  sample_id TEXT PRIMARY KEY, seq BIGINT NOT NULL, grp TEXT, scenario TEXT, category TEXT, method TEXT,
  turns BIGINT, question TEXT, status TEXT NOT NULL, text TEXT, error TEXT, model TEXT, finish_reason TEXT,
  input_tokens BIGINT, output_tokens BIGINT, cost_usd DOUBLE PRECISION, latency_ms DOUBLE PRECISION,
  attempts BIGINT, cached BIGINT, created DOUBLE PRECISION, extra TEXT, control TEXT);
CREATE INDEX IF NOT EXISTS responses_seq ON responses(seq);
CREATE TABLE IF NOT EXISTS requests (
  id BIGSERIAL PRIMARY KEY, sample_id TEXT, role TEXT NOT NULL, model TEXT, status TEXT NOT NULL,
  error TEXT, http_status BIGINT, input_tokens BIGINT, output_tokens BIGINT, cost_usd DOUBLE PRECISION,
  latency_ms DOUBLE PRECISION, created DOUBLE PRECISION);
CREATE TABLE IF NOT EXISTS judges (judge_id TEXT PRIMARY KEY, identity TEXT NOT NULL, created DOUBLE PRECISION);
CREATE TABLE IF NOT EXISTS verdicts (
  sample_id TEXT NOT NULL, judge_id TEXT NOT NULL, label TEXT NOT NULL, score DOUBLE PRECISION,
  rating DOUBLE PRECISION, parse_status TEXT, rationale TEXT, raw TEXT, categories TEXT,
  cost_usd DOUBLE PRECISION, input_tokens BIGINT, output_tokens BIGINT, created DOUBLE PRECISION, extra TEXT,
  PRIMARY KEY (sample_id, judge_id));
"""

# schema_version -> the statements that bring the version before it up to it
MIGRATIONS: dict[int, str] = {
    2: """
CREATE TABLE IF NOT EXISTS claims (sample_id TEXT PRIMARY KEY, holder TEXT NOT NULL, host TEXT, pid BIGINT,
  expires DOUBLE PRECISION NOT NULL, done_at DOUBLE PRECISION);
CREATE OR REPLACE FUNCTION mmsafe_claim(p_sid TEXT, p_holder TEXT, p_host TEXT, p_pid BIGINT,
    p_lease DOUBLE PRECISION, p_started DOUBLE PRECISION, p_judge TEXT)
  RETURNS TABLE(outcome TEXT, o_holder TEXT, o_host TEXT, o_pid BIGINT, resp_status TEXT, is_judged BOOLEAN)
  LANGUAGE plpgsql AS $f$
DECLARE
  r RECORD;
  t DOUBLE PRECISION := extract(epoch FROM clock_timestamp());
BEGIN
  -- a row another claimer has locked right now is skipped, not waited for
  SELECT c.holder, c.host, c.pid, c.expires, c.done_at INTO r FROM claims c
    WHERE c.sample_id = p_sid FOR UPDATE SKIP LOCKED;
  IF NOT FOUND THEN
    INSERT INTO claims VALUES (p_sid, p_holder, p_host, p_pid, t + p_lease, NULL) ON CONFLICT DO NOTHING;
    IF NOT FOUND THEN
      RETURN QUERY SELECT 'held'::TEXT, NULL::TEXT, NULL::TEXT, NULL::BIGINT, NULL::TEXT, FALSE;
      RETURN;
    END IF;
  ELSIF r.done_at IS NOT NULL AND r.done_at >= p_started THEN
    RETURN QUERY SELECT 'finished'::TEXT, r.holder, r.host, r.pid, NULL::TEXT, FALSE;
    RETURN;
  ELSIF r.done_at IS NULL AND r.holder <> p_holder AND r.expires >= t THEN
    RETURN QUERY SELECT 'held'::TEXT, r.holder, r.host, r.pid, NULL::TEXT, FALSE;
    RETURN;
  ELSE
    UPDATE claims SET holder = p_holder, host = p_host, pid = p_pid, expires = t + p_lease, done_at = NULL
      WHERE sample_id = p_sid;
  END IF;
  RETURN QUERY SELECT 'claimed'::TEXT, p_holder, p_host, p_pid,
    (SELECT s.status FROM responses s WHERE s.sample_id = p_sid),
    EXISTS (SELECT 1 FROM verdicts v WHERE v.sample_id = p_sid AND v.judge_id = p_judge
            AND v.parse_status <> 'error');
END
$f$;
""",
}

_NOW = "extract(epoch FROM clock_timestamp())"


def _dumps(v: Any) -> str:
    return orjson.dumps(v).decode()


def _loads(v: str | None) -> Any:
    return orjson.loads(v) if v else None


@dataclass(frozen=True)
class PgTarget:
    """A ``postgresql://`` store URL: what to connect with, what may be shown, which run."""

    conninfo: str  # as given (password included), without the #run fragment
    public: str  # without password or fragment: what store.json and messages hold
    run: str | None


def is_postgres_url(url: str) -> bool:
    """Does ``url`` name a PostgreSQL store (``postgresql://`` or ``postgres://``)?"""
    return url.startswith(("postgresql://", "postgres://"))


def parse_url(url: str, *, where: str = "--store") -> PgTarget:
    """Split ``postgresql://USER[:PASSWORD]@HOST[:PORT]/DB[?k=v][#RUN]``."""
    if not is_postgres_url(url):
        raise StoreError(f"{where} {_redact(url)!r}: expected postgresql://USER@HOST[:PORT]/DB[#RUN]")
    try:
        parts = urlsplit(url)
        _ = parts.port
    except ValueError as e:
        raise StoreError(f"{where} {_redact(url)!r}: {e}") from None
    run = parts.fragment or None
    base = parts._replace(fragment="")
    netloc = parts.netloc.rsplit("@", 1)
    if len(netloc) == 2 and ":" in netloc[0]:
        public_netloc = netloc[0].split(":", 1)[0] + "@" + netloc[1]
    else:
        public_netloc = parts.netloc
    public = urlunsplit(base._replace(netloc=public_netloc))
    return PgTarget(conninfo=urlunsplit(base), public=public, run=run)


def _redact(url: str) -> str:
    return re.sub(r"(//[^:/@]*):[^@]*@", r"\1:***@", url)


def schema_name(run: str) -> str:
    """The PostgreSQL schema of run ``run``: ``mmsafe_`` + its name in [a-z0-9_] (a hash
    suffix when that changed the name, so two names never share a schema)."""
    clean = re.sub(r"[^a-z0-9_]+", "_", run.lower()).strip("_")[:40] or "run"
    if clean != run:
        clean += "_" + hashlib.sha256(run.encode()).hexdigest()[:8]
    return "mmsafe_" + clean


def _first_line(e: BaseException) -> str:
    return (str(e).strip().splitlines() or [type(e).__name__])[0]


class PostgresRunStore(RunStore):
    """One run in a schema of a PostgreSQL database (see the module doc)."""

    def __init__(self, url: str, run: str, *, readonly: bool = False):
        import psycopg

        self.target = parse_url(url)
        self.run = run
        self.schema = schema_name(run)
        self.readonly = readonly
        self._holder: Holder | None = None
        self._lease = 0.0
        self._started = 0.0
        self._w: _Writer | None = None
        try:
            self.conn: psycopg.Connection[tuple[Any, ...]] = psycopg.connect(
                self.target.conninfo, autocommit=True, connect_timeout=10)
        except psycopg.Error as e:
            raise StoreError(f"{self.target.public}: cannot connect to the PostgreSQL store ({_first_line(e)})") \
                from None
        try:
            self._setup()
        except psycopg.Error as e:
            self.conn.close()
            raise StoreError(f"{self.target.public}#{run}: {_first_line(e)}") from None

    def _setup(self) -> None:
        q = self._q
        exists = q("SELECT 1 FROM pg_namespace WHERE nspname = %s", (self.schema,)).fetchone() is not None
        if self.readonly:
            if not exists:
                raise StoreError(f"{self.target.public}: no mmsafe run {self.run!r} in this database"
                                 + self._known_runs())
            q(f'SET search_path TO "{self.schema}"')
            self._check_version(self.get_meta("schema_version"))
        else:
            with self.conn.transaction():
                # one process creates or migrates a run at a time (others wait here)
                q("SELECT pg_advisory_xact_lock(hashtext(%s))", ("mmsafe:" + self.schema,))
                q("CREATE TABLE IF NOT EXISTS public.mmsafe_runs (name TEXT PRIMARY KEY, schema TEXT NOT NULL,"
                  " created DOUBLE PRECISION)")
                q(f'CREATE SCHEMA IF NOT EXISTS "{self.schema}"')
                q(f'SET LOCAL search_path TO "{self.schema}"')
                q("INSERT INTO public.mmsafe_runs VALUES (%s, %s, %s) ON CONFLICT DO NOTHING",
                  (self.run, self.schema, time.time()))
                for stmt in _DDL.split(";"):
                    if stmt.strip():
                        q(stmt)
                v = self.get_meta("schema_version")
                self._check_version(v)
                for target in sorted(MIGRATIONS):
                    if v is None or target > v:
                        q(MIGRATIONS[target])
                if v != SCHEMA_VERSION:
                    self.set_meta("schema_version", SCHEMA_VERSION)
            q(f'SET search_path TO "{self.schema}"')
            q("SET synchronous_commit TO off")
        self._seq = self._q("SELECT COALESCE(MAX(seq), -1) FROM responses").fetchone()[0]  # type: ignore[index]
        self._bench_order = self.get_meta("seq_order") == "benchmark"
        if not self.readonly and not self._bench_order and self._seq == -1:
            self.set_meta("seq_order", "benchmark")
            self._bench_order = True

    def _check_version(self, v: Any) -> None:
        if v is not None and v > SCHEMA_VERSION:
            raise StoreError(f"{self.target.public}#{self.run}: store schema {v} is newer than this mmsafe "
                             f"({SCHEMA_VERSION})")

    def _known_runs(self) -> str:
        try:
            names = [r[0] for r in self._q("SELECT name FROM public.mmsafe_runs ORDER BY name LIMIT 20")]
        except Exception:
            return ""
        return f" (runs here: {', '.join(names)})" if names else " (it holds no mmsafe run)"

    def _q(self, sql: str, args: Iterable[Any] | None = None, *,
           flush: bool = True) -> psycopg.Cursor[tuple[Any, ...]]:
        if flush and self._w is not None:
            self._w.flush()  # read your own writes
        return self.conn.execute(sql, args)  # type: ignore[arg-type]

    # -- meta
    def get_meta(self, key: str) -> Any | None:
        row = self._q("SELECT value FROM meta WHERE key=%s", (key,)).fetchone()
        return orjson.loads(row[0]) if row else None

    def set_meta(self, key: str, value: Any) -> None:
        self._q("INSERT INTO meta VALUES (%s, %s) ON CONFLICT (key) DO UPDATE SET value = EXCLUDED.value",
                (key, _dumps(value)))

    # -- queries
    def ok_sample_ids(self) -> set[str]:
        return {r[0] for r in self._q("SELECT sample_id FROM responses WHERE status='ok'")}

    def judged_sample_ids(self, judge_id: str) -> set[str]:
        return {r[0] for r in self._q(
            "SELECT sample_id FROM verdicts WHERE judge_id=%s AND parse_status <> 'error'", (judge_id,))}

    def get_response(self, sample_id: str) -> Response | None:
        row = self._q(
            "SELECT text, error, model, finish_reason, input_tokens, output_tokens, cost_usd, latency_ms,"
            " attempts, cached, created, extra FROM responses WHERE sample_id=%s", (sample_id,)).fetchone()
        if row is None:
            return None
        return Response(sample_id=sample_id, text=row[0], error=row[1], model=row[2] or "", finish_reason=row[3],
                        usage=Usage(input_tokens=row[4] or 0, output_tokens=row[5] or 0), cost_usd=row[6] or 0.0,
                        latency_ms=row[7] or 0.0, attempts=row[8] or 0, cached=bool(row[9]), created=row[10],
                        extra=orjson.loads(row[11]) if row[11] else {})

    # -- writes: queued to a writer thread with its own connection, which commits whatever has
    # queued up as one transaction (a few ms of work at most): the run's event loop never waits
    # for a round trip per reply. Every read flushes first.
    def log_requests(self, requests: list[dict[str, Any]]) -> None:
        self._writer().put([(_INS_REQ, _req_row(r)) for r in requests])

    def save_response(self, sample: Sample, response: Response, requests: list[dict[str, Any]],
                      order: int | None = None) -> None:
        """As :meth:`SQLiteRunStore.save_response`: an ``ok`` response is never overwritten."""
        group = _scalar(sample.metadata.get("group", sample.id))
        group = group if group is None or isinstance(group, str) else str(group)  # SQLite's TEXT affinity
        control = "benign" if is_control(sample.metadata) else None
        status = "ok" if response.ok else "error"
        if order is None or not self._bench_order:
            self._seq += 1
            seq = self._seq
        else:
            seq = order
            self._seq = max(self._seq, order)
        row = (sample.id, seq, group, sample.scenario, sample.category,
               sample.method, sample.turns, sample.question, status, response.text, response.error,
               response.model, response.finish_reason, response.usage.input_tokens,
               response.usage.output_tokens, _float(response.cost_usd), _float(response.latency_ms),
               response.attempts, int(response.cached), _float(response.created),
               _dumps(response.extra) if response.extra else None, control)
        self._writer().put([*((_INS_REQ, _req_row(r)) for r in requests), (_UPSERT_RESPONSE, row)])

    def register_judge(self, identity: JudgeIdentity) -> str:
        jid = identity.id
        self._q("INSERT INTO judges VALUES (%s, %s, %s) ON CONFLICT DO NOTHING",
                (jid, identity.model_dump_json(), time.time()))
        return jid

    def save_verdict(self, verdict: Verdict, requests: list[dict[str, Any]]) -> None:
        row = (verdict.sample_id, verdict.judge_id, verdict.label, _float(verdict.score), _float(verdict.rating),
               verdict.parse_status, verdict.rationale, _dumps(verdict.raw) if verdict.raw else None,
               _dumps(verdict.categories) if verdict.categories else None, _float(verdict.cost_usd),
               verdict.usage.input_tokens, verdict.usage.output_tokens, _float(verdict.created),
               _dumps(verdict.extra) if verdict.extra else None)
        self._writer().put([*((_INS_REQ, _req_row(r)) for r in requests), (_UPSERT_VERDICT, row)])

    def flush(self) -> None:
        """Wait until every queued write is committed (raises what the writer hit, if anything)."""
        if self._w is not None:
            self._w.flush()

    async def durable(self) -> None:
        if self._w is not None:
            await self._w.durable()

    def _writer(self) -> _Writer:
        if self.readonly:
            raise StoreError(f"{self.target.public}#{self.run}: opened read-only")
        if self._w is None:
            self._w = _Writer(self.target, self.schema)
        return self._w

    # -- reads for results and summaries (streamed, a page at a time)
    def iter_rows(self, judge_id: str | None = None) -> Iterator[dict[str, Any]]:
        last: tuple[int, str] = (-(2 ** 62), "")
        while True:
            rows = self._q(
                "SELECT r.sample_id, r.grp, r.scenario, r.category, r.method, r.turns, r.question, r.status,"
                " r.text, r.error, r.model, r.input_tokens, r.output_tokens, r.cost_usd, r.latency_ms, r.cached,"
                " r.extra, r.control, r.finish_reason, v.label, v.score, v.rating, v.parse_status, v.rationale,"
                " v.categories, v.raw, v.extra, r.seq"
                " FROM responses r LEFT JOIN verdicts v ON v.sample_id = r.sample_id AND v.judge_id = %s"
                " WHERE (r.seq, r.sample_id) > (%s, %s) ORDER BY r.seq, r.sample_id LIMIT %s",
                (judge_id, last[0], last[1], PAGE)).fetchall()
            if not rows:
                return
            for row in rows:
                yield {
                    "sample_id": row[0], "group": row[1], "scenario": row[2], "category": row[3],
                    "method": row[4], "turns": row[5], "question": row[6], "status": row[7], "response": row[8],
                    "error": row[9], "model": row[10], "input_tokens": row[11], "output_tokens": row[12],
                    "cost_usd": row[13], "latency_ms": row[14], "cached": bool(row[15]),
                    "response_extra": _loads(row[16]), "control": row[17], "finish_reason": row[18],
                    "label": row[19], "score": row[20], "rating": row[21], "parse_status": row[22],
                    "rationale": row[23], "categories": orjson.loads(row[24]) if row[24] else [],
                    "judge_raw": _loads(row[25]), "verdict_extra": _loads(row[26]),
                }
            last = (rows[-1][27], rows[-1][0])

    def iter_verdict_labels(self) -> Iterator[tuple[str, str, str]]:
        for row in self._q(
                "SELECT v.sample_id, v.judge_id, v.label FROM verdicts v JOIN responses r ON r.sample_id = v.sample_id"
                " WHERE r.control IS NULL ORDER BY v.sample_id"):
            yield row[0], row[1], row[2]

    def judges(self) -> list[dict[str, Any]]:
        return [{"judge_id": jid, "identity": orjson.loads(ident), "created": created}
                for jid, ident, created in self._q("SELECT judge_id, identity, created FROM judges ORDER BY created")]

    def ledger(self) -> dict[str, dict[str, Any]]:
        return ledger_from_rows(self._q(
            "SELECT role, status, COUNT(*), SUM(input_tokens)::BIGINT, SUM(output_tokens)::BIGINT,"
            " SUM(cost_usd) FROM requests GROUP BY role, status ORDER BY role, status"))

    def counts(self) -> dict[str, int]:
        row = self._q("SELECT COUNT(*), COUNT(*) FILTER (WHERE status='ok') FROM responses").fetchone()
        n, ok = (row or (0, 0))
        return {"responses": n or 0, "ok": ok or 0, "errors": (n or 0) - (ok or 0)}

    # -- claims
    def begin_claims(self, lease_s: float | None = None) -> Holder:
        self._holder = Holder.here()
        self._lease = lease_s if lease_s is not None else lease_seconds()
        row = self._q(f"SELECT {_NOW}").fetchone()
        self._started = float(row[0]) if row else time.time()  # the server's clock: hosts' clocks may differ
        return self._holder

    def _me(self) -> Holder:
        if self._holder is None:
            raise RuntimeError("begin_claims() first")
        return self._holder

    def claim_many(self, sample_ids: list[str], judge_id: str) -> dict[str, Claim]:
        me = self._me()
        rows = self._q("SELECT u.id, c.* FROM unnest(%s::text[]) WITH ORDINALITY AS u(id, n),"
                       " LATERAL mmsafe_claim(u.id, %s, %s, %s, %s, %s, %s) AS c ORDER BY u.n",
                       (sample_ids, me.id, me.host, me.pid, self._lease, self._started, judge_id),
                       flush=False).fetchall()  # this process's queued writes never change its claims
        out: dict[str, Claim] = {}
        for sid, outcome, holder, host, pid, status, judged in rows:
            if outcome == "held" and holder is not None and holder_dead(host, pid):
                taken = self._q(
                    f"UPDATE claims SET holder=%s, host=%s, pid=%s, expires={_NOW} + %s, done_at=NULL"
                    " WHERE sample_id=%s AND holder=%s AND done_at IS NULL RETURNING"
                    " (SELECT s.status FROM responses s WHERE s.sample_id = claims.sample_id),"
                    " EXISTS (SELECT 1 FROM verdicts v WHERE v.sample_id = claims.sample_id AND v.judge_id = %s"
                    " AND v.parse_status <> 'error')",
                    (me.id, me.host, me.pid, self._lease, sid, holder, judge_id)).fetchone()
                if taken is not None:
                    outcome, status, judged = "claimed", taken[0], taken[1]
            if outcome == "claimed":
                out[sid] = Claim("claimed", response_ok=status == "ok", judged=bool(judged))
            else:
                out[sid] = Claim("finished" if outcome == "finished" else "held", holder=holder)
        return out

    def finish_claim(self, sample_id: str) -> None:
        self._writer().put([(_FINISH, (sample_id, self._me().id))])

    def renew_claims(self) -> int:
        return self._q(f"UPDATE claims SET expires={_NOW} + %s WHERE holder=%s AND done_at IS NULL",
                       (self._lease, self._me().id), flush=False).rowcount

    def release_claims(self) -> None:
        if self._holder is not None and not self.conn.closed:
            self._q("DELETE FROM claims WHERE holder=%s AND done_at IS NULL", (self._holder.id,))

    # -- copying (mmsafe store copy)
    def dump_tables(self) -> Iterator[tuple[str, list[str], Iterator[tuple[Any, ...]]]]:
        """(table, columns, rows) of every table, read in one REPEATABLE READ transaction
        (a consistent copy of a run still being written)."""
        with self.conn.transaction():
            self._q("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ")
            for table in TABLES:
                cols = [r[0] for r in self._q(
                    "SELECT column_name FROM information_schema.columns WHERE table_schema=%s AND table_name=%s"
                    " ORDER BY ordinal_position", (self.schema, table))]
                if not cols:
                    continue
                with self.conn.cursor(name=f"dump_{table}") as cur:
                    cur.itersize = PAGE
                    cur.execute(f"SELECT {', '.join(cols)} FROM {table}")
                    yield table, cols, iter(cur)

    def load_table(self, table: str, cols: list[str], rows: Iterable[tuple[Any, ...]]) -> int:
        """Append ``rows`` to ``table`` with COPY; returns how many."""
        n = 0
        with self.conn.transaction(), self.conn.cursor() as cur:
            with cur.copy(f"COPY {table} ({', '.join(cols)}) FROM STDIN") as cp:
                for r in rows:
                    cp.write_row(r)
                    n += 1
            if table == "requests":
                cur.execute("SELECT setval(pg_get_serial_sequence('requests', 'id'), COALESCE(MAX(id), 0) + 1,"
                            " false) FROM requests")
            if table == "responses":
                row = cur.execute("SELECT COALESCE(MAX(seq), -1) FROM responses").fetchone()
                self._seq = row[0] if row else -1
        return n

    def close(self) -> None:
        """Commit what is queued and close; a writer's close makes this process's next reader copy
        the run again."""
        try:
            if self._w is not None:
                self._w.close()
        finally:
            if not self.conn.closed:
                self.conn.close()
        if not self.readonly:
            from mmsafe.store.locate import forget_snapshots

            forget_snapshots(self.target.public, self.run)


class _Writer:
    """A thread with its own connection that commits queued statements in batches: all that
    queued while the previous batch was committing goes in one transaction (``executemany``
    per statement, pipelined: one round trip). :meth:`durable` lets a coroutine wait for its
    writes; a SIGKILL loses only what is queued, whose samples were not done yet (their claims
    are not marked finished either, so they are sent again)."""

    MAX_QUEUED = 20000

    def __init__(self, target: PgTarget, schema: str):
        import psycopg

        self.target = target
        try:
            self.conn = psycopg.connect(target.conninfo, autocommit=True, connect_timeout=10)
            self.conn.execute(f'SET search_path TO "{schema}"')
            self.conn.execute("SET synchronous_commit TO off")
        except psycopg.Error as e:
            raise StoreError(f"{target.public}: cannot connect to the PostgreSQL store ({_first_line(e)})") \
                from None
        self.ops: list[tuple[str, tuple[Any, ...]]] = []
        self.cv = threading.Condition()
        self.busy = False
        self.closing = False
        self.put_seq = self.done_seq = 0  # ops queued / committed so far
        self.waiters: list[tuple[int, asyncio.AbstractEventLoop, asyncio.Future[None]]] = []
        self.error: str | None = None
        self.thread = threading.Thread(target=self._loop, name="mmsafe-pg-writer", daemon=True)
        self.thread.start()

    def _exc(self) -> StoreError:
        return StoreError(f"{self.target.public}: a write to the PostgreSQL store failed ({self.error})")

    def _raise(self) -> None:
        if self.error is not None:
            raise self._exc()

    def put(self, ops: list[tuple[str, tuple[Any, ...]]]) -> None:
        with self.cv:
            self._raise()
            while len(self.ops) > self.MAX_QUEUED and self.error is None:
                self.cv.wait()
            self.ops.extend(ops)
            self.put_seq += len(ops)
            self.cv.notify_all()

    def flush(self) -> None:
        with self.cv:
            while (self.ops or self.busy) and self.error is None:
                self.cv.wait()
            self._raise()

    def _loop(self) -> None:
        while True:
            with self.cv:
                while not self.ops and not self.closing:
                    self.cv.wait()
                if not self.ops:
                    return
                batch, self.ops, self.busy, upto = self.ops, [], True, self.put_seq
                self.cv.notify_all()
            try:
                self._write(batch)
            except Exception as e:
                with self.cv:
                    self.error, self.busy = _first_line(e), False
                    self.cv.notify_all()
                    waiters, self.waiters = self.waiters, []
                for _, loop, fut in waiters:
                    loop.call_soon_threadsafe(_settle, fut, self._exc())
                return
            with self.cv:
                self.busy = False
                self.done_seq = upto
                self.cv.notify_all()
                ready = [w for w in self.waiters if w[0] <= upto]
                self.waiters = [w for w in self.waiters if w[0] > upto]
            for _, loop, fut in ready:
                loop.call_soon_threadsafe(_settle, fut, None)

    async def durable(self) -> None:
        with self.cv:
            self._raise()
            if self.done_seq >= self.put_seq:
                return
            loop = asyncio.get_running_loop()
            fut: asyncio.Future[None] = loop.create_future()
            self.waiters.append((self.put_seq, loop, fut))
        await fut

    def _write(self, batch: list[tuple[str, tuple[Any, ...]]]) -> None:
        groups: dict[str, list[tuple[Any, ...]]] = {}  # one transaction: the order between kinds is moot
        for sql, params in batch:
            groups.setdefault(sql, []).append(params)
        with self.conn.transaction(), self.conn.cursor() as cur:
            for sql, rows in groups.items():
                cur.executemany(sql, rows)

    def close(self) -> None:
        try:
            self.flush()
        finally:
            with self.cv:
                self.closing = True
                self.cv.notify_all()
            self.thread.join(timeout=30)
            self.conn.close()


_INS_REQ = ("INSERT INTO requests (sample_id, role, model, status, error, http_status, input_tokens, output_tokens,"
            " cost_usd, latency_ms, created) VALUES (%s,%s,%s,%s,%s,%s,%s,%s,%s,%s,%s)")
_UPSERT_RESPONSE = (
    "INSERT INTO responses VALUES (%s,%s,%s,%s,%s,%s,%s,%s,%s,%s,%s,%s,%s,%s,%s,%s,%s,%s,%s,%s,%s,%s)"
    " ON CONFLICT (sample_id) DO UPDATE SET status=EXCLUDED.status, text=EXCLUDED.text,"
    " error=EXCLUDED.error, model=EXCLUDED.model, finish_reason=EXCLUDED.finish_reason,"
    " input_tokens=EXCLUDED.input_tokens, output_tokens=EXCLUDED.output_tokens,"
    " cost_usd=EXCLUDED.cost_usd, latency_ms=EXCLUDED.latency_ms, attempts=EXCLUDED.attempts,"
    " cached=EXCLUDED.cached, created=EXCLUDED.created, extra=EXCLUDED.extra"
    " WHERE responses.status <> 'ok'")
_UPSERT_VERDICT = (
    "INSERT INTO verdicts VALUES (%s,%s,%s,%s,%s,%s,%s,%s,%s,%s,%s,%s,%s,%s)"
    " ON CONFLICT (sample_id, judge_id) DO UPDATE SET label=EXCLUDED.label, score=EXCLUDED.score,"
    " rating=EXCLUDED.rating, parse_status=EXCLUDED.parse_status, rationale=EXCLUDED.rationale,"
    " raw=EXCLUDED.raw, categories=EXCLUDED.categories, cost_usd=EXCLUDED.cost_usd,"
    " input_tokens=EXCLUDED.input_tokens, output_tokens=EXCLUDED.output_tokens,"
    " created=EXCLUDED.created, extra=EXCLUDED.extra")
_FINISH = f"UPDATE claims SET done_at={_NOW} WHERE sample_id=%s AND holder=%s"


def _settle(fut: asyncio.Future[None], exc: BaseException | None) -> None:
    if not fut.done():
        if exc is None:
            fut.set_result(None)
        else:
            fut.set_exception(exc)


def _req_row(r: dict[str, Any]) -> tuple[Any, ...]:
    return (r.get("sample_id"), r["role"], r.get("model"), r["status"], r.get("error"), r.get("http_status"),
            r.get("input_tokens", 0), r.get("output_tokens", 0), _float(r.get("cost_usd", 0.0)),
            _float(r.get("latency_ms")), _float(r.get("created", time.time())))


def _float(v: Any) -> float | None:
    return None if v is None else float(v)
