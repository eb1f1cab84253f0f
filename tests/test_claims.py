"""Sample claims on the SQLite store: the claim rule, leases, a dead holder, the schema
migration of an older store, and two real ``mmsafe run`` processes on one run directory
(every sample sent exactly once; one SIGKILLed mid-run: the other finishes, 0 lost)."""

from __future__ import annotations

import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

from _multiproc import MODEL, read_results, two_runs
from conftest import make_benchmark
from mmsafe.store.base import decide_claim, lease_seconds, this_host
from mmsafe.store.sqlite import SCHEMA_VERSION, SQLiteRunStore
from mmsafe.types import Response, Sample


def _sample(i: int) -> Sample:
    return Sample(id=f"s{i}", question="q", messages=[{"role": "user", "content": f"Sample {i}"}], scenario="x")


@pytest.fixture
def two(tmp_path):
    a, b = SQLiteRunStore(tmp_path / "run.sqlite"), SQLiteRunStore(tmp_path / "run.sqlite")
    a.begin_claims(30.0)
    b.begin_claims(30.0)
    yield a, b
    a.close()
    b.close()


def test_a_sample_is_claimed_by_one_process_and_never_sent_again_once_finished(two):
    a, b = two
    assert a.claim("s1", "j").outcome == "claimed"
    c = b.claim("s1", "j")
    assert c.outcome == "held" and c.holder and c.holder.endswith(a._me().token)
    a.save_response(_sample(1), Response(sample_id="s1", text="hi"), [])
    a.finish_claim("s1")
    assert b.claim("s1", "j").outcome == "finished"  # done since b started: b does not send it
    assert a.claim("s2", "j").outcome == "claimed" and a.renew_claims() == 1


def test_a_rerun_claims_what_an_earlier_run_finished_and_sees_what_is_stored(tmp_path):
    a = SQLiteRunStore(tmp_path / "run.sqlite")
    a.begin_claims(30.0)
    a.claim("s1", "j")
    a.save_response(_sample(1), Response(sample_id="s1", error="boom"), [])
    a.finish_claim("s1")
    a.close()
    time.sleep(0.01)
    b = SQLiteRunStore(tmp_path / "run.sqlite")
    b.begin_claims(30.0)
    c = b.claim("s1", "j")  # a failure of an earlier run is retried by the next one
    assert c.outcome == "claimed" and not c.response_ok and not c.judged
    b.close()


def test_an_expired_lease_is_taken_over_and_a_live_one_elsewhere_is_not(two):
    a, b = two
    a._lease = 0.05
    assert a.claim("s1", "j").outcome == "claimed"
    time.sleep(0.1)  # a stopped renewing (frozen or dead on another host)
    assert b.claim("s1", "j").outcome == "claimed"
    assert a.claim("s1", "j").outcome == "held"  # and a is now the one that waits
    # a holder on another host with a live lease: held, whatever its pid
    b.db.execute("INSERT INTO claims VALUES ('s9', 'elsewhere:1:t', 'elsewhere', 1, ?, NULL)", (time.time() + 60,))
    assert a.claim("s9", "j").outcome == "held"


def test_a_dead_holder_on_this_host_is_taken_over_without_waiting_for_its_lease(two):
    a, b = two
    p = subprocess.Popen([sys.executable, "-c", "pass"])
    p.wait()  # a pid that is gone
    host = this_host()
    a.db.execute("INSERT INTO claims VALUES ('s1', ?, ?, ?, ?, NULL)",
                 (f"{host}:{p.pid}:dead", host, p.pid, time.time() + 3600))
    assert b.claim("s1", "j").outcome == "claimed"
    # the same host name in another pid namespace (a container on the host's network): its pids
    # are not ours to check, so only its lease can free the sample
    other_ns = host.split("/")[0] + "/0000beef"
    a.db.execute("INSERT INTO claims VALUES ('s2', ?, ?, ?, ?, NULL)",
                 (f"{other_ns}:{p.pid}:x", other_ns, p.pid, time.time() + 3600))
    assert b.claim("s2", "j").outcome == "held"


def test_the_claim_rule():
    now, started = 100.0, 50.0
    assert decide_claim(None, "me", now, started) == "claimed"
    assert decide_claim(("x:1:t", "x", 1, 200.0, None), "me", now, started) == "held"
    assert decide_claim(("x:1:t", "x", 1, 99.0, None), "me", now, started) == "claimed"  # lease expired
    assert decide_claim(("me", "x", 1, 200.0, None), "me", now, started) == "claimed"  # ours
    assert decide_claim(("x:1:t", "x", 1, 200.0, 60.0), "me", now, started) == "finished"
    assert decide_claim(("x:1:t", "x", 1, 200.0, 40.0), "me", now, started) == "claimed"  # an earlier run's


def test_lease_from_the_environment(monkeypatch):
    monkeypatch.setenv("MMSAFE_CLAIM_LEASE_S", "2.5")
    assert lease_seconds() == 2.5
    monkeypatch.setenv("MMSAFE_CLAIM_LEASE_S", "soon")
    with pytest.raises(Exception, match="MMSAFE_CLAIM_LEASE_S='soon'"):
        lease_seconds()


_V1 = """
CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE responses (
  sample_id TEXT PRIMARY KEY, seq INTEGER NOT NULL, grp TEXT, scenario TEXT, category TEXT, method TEXT,
  turns INTEGER, question TEXT, status TEXT NOT NULL, text TEXT, error TEXT, model TEXT, finish_reason TEXT,
  input_tokens INTEGER, output_tokens INTEGER, cost_usd REAL, latency_ms REAL, attempts INTEGER,
  cached INTEGER, created REAL, extra TEXT, control TEXT);
CREATE TABLE requests (
  id INTEGER PRIMARY KEY AUTOINCREMENT, sample_id TEXT, role TEXT NOT NULL, model TEXT, status TEXT NOT NULL,
  error TEXT, http_status INTEGER, input_tokens INTEGER, output_tokens INTEGER, cost_usd REAL,
  latency_ms REAL, created REAL);
CREATE TABLE judges (judge_id TEXT PRIMARY KEY, identity TEXT NOT NULL, created REAL);
CREATE TABLE verdicts (
  sample_id TEXT NOT NULL, judge_id TEXT NOT NULL, label TEXT NOT NULL, score REAL, rating REAL,
  parse_status TEXT, rationale TEXT, raw TEXT, categories TEXT, cost_usd REAL, input_tokens INTEGER,
  output_tokens INTEGER, created REAL, extra TEXT, PRIMARY KEY (sample_id, judge_id));
INSERT INTO meta VALUES ('schema_version', '1');
INSERT INTO responses (sample_id, seq, grp, status, text) VALUES ('s0', 0, 'g', 'ok', 'old reply');
"""


def test_a_store_written_by_an_older_version_is_migrated_when_opened_for_writing(tmp_path):
    path = tmp_path / "run.sqlite"
    with sqlite3.connect(path) as db:
        db.executescript(_V1)
    ro = SQLiteRunStore(path, readonly=True)  # a reader needs no migration and makes none
    assert ro.get_meta("schema_version") == 1 and ro.counts()["ok"] == 1
    ro.close()
    st = SQLiteRunStore(path)
    assert st.get_meta("schema_version") == SCHEMA_VERSION == 2
    st.begin_claims()
    assert st.claim("s0", "j").response_ok  # the old reply is there; claims work on the migrated store
    st.close()
    with sqlite3.connect(path) as db:
        db.execute("UPDATE meta SET value='99' WHERE key='schema_version'")
    with pytest.raises(Exception, match="store schema 99 is newer than this mmsafe"):
        SQLiteRunStore(path)


def _store_counts(run: Path) -> tuple[int, int, int]:
    with sqlite3.connect(run / "run.sqlite") as db:
        responses = db.execute("SELECT COUNT(*) FROM responses WHERE status='ok'").fetchone()[0]
        target_rows = db.execute("SELECT COUNT(*) FROM requests WHERE role='target'").fetchone()[0]
        holders = db.execute("SELECT COUNT(DISTINCT holder) FROM claims").fetchone()[0]
    return responses, target_rows, holders


@pytest.mark.slow
def test_two_processes_on_one_run_directory_send_each_sample_once(llm, tmp_path):
    n = 80
    bench = make_benchmark(tmp_path / "b", n=n, image=False)
    out = tmp_path / "run"
    r = two_runs(bench, llm, (out, out), n)
    assert r.codes == [0, 0], r.outputs
    assert sorted(r.sent) == sorted(f"s{i}" for i in range(n)) and set(r.sent.values()) == {1}  # 976 -> 80
    responses, target_rows, holders = _store_counts(out)
    assert (responses, target_rows) == (n, n)  # nothing written twice
    assert holders == 2  # both did part of the work
    assert sum("done by another process working on this run" in o for o in r.outputs) >= 1, r.outputs
    rows = read_results(out)
    assert len(rows) == n and len({x["id"] for x in rows}) == n


@pytest.mark.slow
def test_sigkill_of_one_process_the_other_finishes_nothing_lost(llm, tmp_path):
    n, conc = 80, 2
    bench = make_benchmark(tmp_path / "b", n=n, image=False)
    out = tmp_path / "run"
    r = two_runs(bench, llm, (out, out), n, conc=conc, kill_after=n // 3)
    assert r.codes[0] == -signal.SIGKILL and r.codes[1] == 0, r.outputs
    assert set(r.sent) == {f"s{i}" for i in range(n)}  # 0 lost
    resent = sum(r.sent.values()) - n
    assert resent <= conc  # at most the killed process's in-flight requests
    responses, target_rows, _ = _store_counts(out)
    assert (responses, target_rows) == (n, n)
    rows = read_results(out)
    assert len(rows) == n and all(x["error"] is None and x["response"] for x in rows)
    assert llm.count(MODEL) == n + resent
