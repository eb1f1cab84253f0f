"""The PostgreSQL run store against a real PostgreSQL server started by the tests
(tests/_pg.py: initdb into a temporary directory, pg_ctl on a loopback port; skipped with
the reason where PostgreSQL or psycopg is absent).

What a user relies on: the store answers as the SQLite store does for the same writes;
two ``mmsafe run`` processes (as on two hosts: two run directories, one PostgreSQL run)
send each sample exactly once, and when one is SIGKILLed the other finishes it with
nothing lost; ``mmsafe store copy`` moves a run both ways unchanged; ``report``,
``judge``, ``export`` and the viewer read a PostgreSQL run as they read a SQLite one; no
password reaches a file.
"""

from __future__ import annotations

import json
import signal
import uuid
from pathlib import Path

import pytest
from typer.testing import CliRunner

import _pg
from _multiproc import MODEL, read_results, two_runs
from conftest import make_benchmark
from mmsafe.cli import app
from mmsafe.types import JudgeIdentity, Response, Sample, Usage, Verdict

runner = CliRunner()


def cli(*args, env=None):
    return runner.invoke(app, [str(a) for a in args], env=env, catch_exceptions=False)


@pytest.fixture(scope="module")
def pg() -> _pg.PgServer:
    try:
        return _pg.server()
    except _pg.Unavailable as e:
        pytest.skip(f"no PostgreSQL server for the tests: {e}")


def _run_name() -> str:
    return "t" + uuid.uuid4().hex[:10]


def _fill(store) -> None:
    """The same writes, whatever the backend: replies (ok, error, a control, an int group,
    extras), verdicts of two judges, request rows."""
    jid = store.register_judge(JudgeIdentity(kind="keyword"))
    jid2 = store.register_judge(JudgeIdentity(kind="rubric", models=["m"]))
    for i in range(7):
        meta = {"group": i // 2 if i % 3 else f"g{i}", **({"control": "yes"} if i == 5 else {})}
        s = Sample(id=f"s{i}", question=f"q{i}", messages=[{"role": "user", "content": f"Sample {i}"}],
                   scenario=["Fraud", "Malware"][i % 2], category="c", metadata=meta)
        usage = Usage(input_tokens=10 + i, output_tokens=5)
        resp = (Response(sample_id=s.id, error="HTTP 500", created=500.0) if i == 3 else
                Response(sample_id=s.id, text=f"reply {i}", model="m", usage=usage, cost_usd=0.001 * i,
                         latency_ms=12.5, extra={"k": [i]} if i == 2 else {}, created=500.0 + i))
        reqs = [{"sample_id": s.id, "role": "target", "model": "m", "status": "ok" if resp.ok else "error",
                 "input_tokens": 10 + i, "output_tokens": 5, "cost_usd": 0.001 * i, "latency_ms": 12.5,
                 "created": 1000.0 + i}]
        store.save_response(s, resp, reqs, order=6 - i)  # saved in reverse: read back in benchmark order
        if resp.ok:
            store.save_verdict(Verdict(sample_id=s.id, judge_id=jid, label="unsafe" if i % 2 else "safe",
                                       score=float(i % 2), rationale="r", categories=["x"] if i == 1 else [],
                                       created=2000.0 + i), [])
            store.save_verdict(Verdict(sample_id=s.id, judge_id=jid2, label="safe", rating=3.0,
                                       created=3000.0 + i),
                               [{"sample_id": s.id, "role": "judge", "model": "m", "status": "ok",
                                 "input_tokens": 3, "output_tokens": 1, "cost_usd": 0.0005, "created": 1.0}])
    store.set_meta("config", {"x": [1, {"y": None}]})


def _view(store) -> dict:
    jids = [j["judge_id"] for j in store.judges()]
    return {"rows": [list(store.iter_rows(j)) for j in [*jids, None]], "ledger": store.ledger(),
            "counts": store.counts(), "labels": sorted(store.iter_verdict_labels()), "config": store.get_meta("config"),
            "ok": sorted(store.ok_sample_ids()), "judged": [sorted(store.judged_sample_ids(j)) for j in jids],
            "resp": store.get_response("s2"), "judges": [(j["judge_id"], j["identity"]) for j in store.judges()]}


def test_postgres_store_answers_as_the_sqlite_store_does(pg, tmp_path):
    from mmsafe.store.postgres import PostgresRunStore
    from mmsafe.store.sqlite import SQLiteRunStore

    lite, pgs = SQLiteRunStore(tmp_path / "run.sqlite"), PostgresRunStore(pg.url, _run_name())
    try:
        _fill(lite)
        _fill(pgs)
        a, b = _view(lite), _view(pgs)
        assert a["rows"][0][0]["sample_id"] == "s6" and a["rows"][0][2]["group"] == "2"  # as SQLite keeps them
        assert a == b
        assert pgs.get_meta("schema_version") == 2
    finally:
        lite.close()
        pgs.close()


def test_claims_on_postgres_one_holder_at_a_time_and_expired_leases_taken_over(pg):
    from mmsafe.store.postgres import PostgresRunStore

    run = _run_name()
    a, b = PostgresRunStore(pg.url, run), PostgresRunStore(pg.url, run)
    try:
        a.begin_claims(0.3)
        b.begin_claims(30.0)
        assert a.claim("s1", "j").outcome == "claimed"
        assert b.claim("s1", "j").outcome == "held"
        assert a.claim("s2", "j").outcome == "claimed"
        a.finish_claim("s2")
        a.flush()  # writes are committed by a writer thread, in batches
        assert b.claim("s2", "j").outcome == "finished"
        # a holder on another host that stops renewing: its lease runs out on the server's clock
        a.conn.execute("UPDATE claims SET host='elsewhere', pid=1 WHERE sample_id='s1'")
        import time
        time.sleep(0.4)
        assert b.claim("s1", "j").outcome == "claimed"
        assert b.renew_claims() == 1
    finally:
        a.close()
        b.close()


@pytest.mark.slow
def test_two_processes_on_one_postgres_run_send_each_sample_exactly_once(pg, llm, tmp_path):
    n = 80
    bench = make_benchmark(tmp_path / "b", n=n, image=False)
    run = _run_name()
    outs = (tmp_path / "host-a", tmp_path / "host-b")  # two hosts: each its own directory, one run
    r = two_runs(bench, llm, outs, n, store=pg.run_url(run))
    assert r.codes == [0, 0], r.outputs
    assert sorted(r.sent) == sorted(f"s{i}" for i in range(n)) and set(r.sent.values()) == {1}
    for out in outs:
        rows = read_results(out)
        assert len(rows) == n and len({x["id"] for x in rows}) == n  # each wrote the whole run's results
    import psycopg
    with psycopg.connect(pg.url) as db:
        db.execute(f"SET search_path TO {_schema(run)}")
        assert db.execute("SELECT COUNT(*) FROM responses WHERE status='ok'").fetchone()[0] == n
        assert db.execute("SELECT COUNT(*) FROM requests WHERE role='target'").fetchone()[0] == n
        assert db.execute("SELECT COUNT(DISTINCT holder) FROM claims").fetchone()[0] == 2  # both worked


def _schema(run: str) -> str:
    from mmsafe.store.postgres import schema_name
    return schema_name(run)


@pytest.mark.slow
def test_sigkill_of_one_process_on_a_postgres_run_the_other_finishes_nothing_lost(pg, llm, tmp_path):
    n, conc = 80, 2
    bench = make_benchmark(tmp_path / "b", n=n, image=False)
    run = _run_name()
    outs = (tmp_path / "host-a", tmp_path / "host-b")
    r = two_runs(bench, llm, outs, n, store=pg.run_url(run), conc=conc, kill_after=n // 3)
    assert r.codes[0] == -signal.SIGKILL and r.codes[1] == 0, r.outputs
    assert set(r.sent) == {f"s{i}" for i in range(n)}  # 0 lost
    resent = sum(r.sent.values()) - n
    assert resent <= conc and llm.count(MODEL) == n + resent  # at most the in-flight requests again
    rows = read_results(outs[1])
    assert len(rows) == n and all(x["error"] is None and x["response"] for x in rows)
    import psycopg
    with psycopg.connect(pg.url) as db:
        db.execute(f"SET search_path TO {_schema(run)}")
        assert db.execute("SELECT COUNT(*) FROM requests WHERE role='target'").fetchone()[0] == n  # not twice


def _export(run_dir: Path, tmp_path: Path, name: str) -> list[dict]:
    out = tmp_path / name
    r = cli("export", run_dir, "--format", "jsonl", "--out", out)
    assert r.exit_code == 0, r.output
    rows = [json.loads(x) for x in out.read_text().splitlines()]
    for x in rows:
        x.pop("run")
        x.pop("latency_ms")  # measured, so never equal between two runs
    return rows


def test_report_judge_export_and_viewer_read_a_postgres_run_as_a_sqlite_one(pg, llm, tmp_path):
    n = 6
    bench = make_benchmark(tmp_path / "b", n=n)
    lite, remote = tmp_path / "lite", tmp_path / "remote"
    secret_url = pg.url.replace("postgres@", "postgres:S3CRET-PW@") + "#" + _run_name()
    for out, extra in ((lite, []), (remote, ["--store", secret_url])):
        r = cli("run", bench, "-t", f"openai/comply@{llm.url}", "-o", out, "--no-cache", *extra)
        assert r.exit_code == 0, r.output
    pointer = json.loads((remote / "store.json").read_text())
    assert pointer["store"] == "postgresql" and "S3CRET" not in json.dumps(pointer)
    assert not (remote / "run.sqlite").exists()  # the run lives in PostgreSQL
    assert _export(remote, tmp_path, "r.jsonl") == _export(lite, tmp_path, "l.jsonl")
    # re-judge both with an LLM judge: the verdicts land in PostgreSQL, the summaries agree
    for out in (lite, remote):
        r = cli("judge", out, "--judge", f"rubric:openai/judge-a@{llm.url}", "--no-cache")
        assert r.exit_code == 0, r.output
    sl, sr = (json.loads((d / "summary.json").read_text()) for d in (lite, remote))
    assert sr["judges"].keys() == sl["judges"].keys() and len(sr["judges"]) == 2
    assert {k: v["asr"] for k, v in sr["judges"].items()} == {k: v["asr"] for k, v in sl["judges"].items()}
    assert _export(remote, tmp_path, "r2.jsonl") == _export(lite, tmp_path, "l2.jsonl")
    for out in (lite, remote):
        r = cli("report", out, "--out", tmp_path / f"{out.name}.html")
        assert r.exit_code == 0, r.output
    html = (tmp_path / "remote.html").read_text()
    assert "Sample 0 turn 0" in html or "s0" in html
    from mmsafe.report.viewer import Viewer
    v = Viewer([remote])
    (rv,) = v.runs.values()
    assert sum(c for _, c in rv.facets["scenario"]) == n and len(rv.judge_ids) == 2
    # the local copy is read-only: a run cannot be resumed into it by mistake
    from mmsafe.store.sqlite import SQLiteRunStore
    with pytest.raises(Exception, match="read-only copy of PostgreSQL run"):
        SQLiteRunStore(remote / "run.sqlite")
    for p in remote.rglob("*"):
        if p.is_file():
            assert b"S3CRET" not in p.read_bytes(), p


def test_store_copy_both_ways_keeps_the_run(pg, llm, tmp_path):
    n = 5
    bench = make_benchmark(tmp_path / "b", n=n)
    src = tmp_path / "src"
    assert cli("run", bench, "-t", f"openai/comply@{llm.url}", "-o", src, "--no-cache").exit_code == 0
    run = _run_name()
    r = cli("store", "copy", src, pg.run_url(run))
    assert r.exit_code == 0, r.output
    assert f"copied {n} replies, {n} verdicts" in r.output
    back = tmp_path / "back"
    r = cli("store", "copy", pg.run_url(run), back)
    assert r.exit_code == 0, r.output
    from mmsafe.store.sqlite import SQLiteRunStore
    a, b = SQLiteRunStore(src / "run.sqlite", readonly=True), SQLiteRunStore(back / "run.sqlite", readonly=True)
    try:
        va, vb = _view(a), _view(b)
        assert va == vb and len(va["rows"][0]) == n
        ids = [list(db.db.execute("SELECT id, sample_id, role FROM requests ORDER BY id")) for db in (a, b)]
        assert ids[0] == ids[1]
    finally:
        a.close()
        b.close()
    # the copy is a run like any other: report reads it, and a resumed run finds nothing left to send
    assert cli("report", back, "--out", tmp_path / "b.html").exit_code == 0
    before = llm.count("comply")
    assert cli("run", bench, "-t", f"openai/comply@{llm.url}", "-o", tmp_path / "pgrun", "--no-cache",
               "--store", pg.run_url(run)).exit_code == 0
    assert llm.count("comply") == before
    # into a store that already holds a run: refused, one line
    r = cli("store", "copy", src, pg.run_url(run))
    assert r.exit_code == 2 and "already holds a run" in r.output


def test_store_errors_are_one_line(pg, tmp_path, llm):
    bench = make_benchmark(tmp_path / "b", n=2)
    r = cli("run", bench, "-t", f"openai/comply@{llm.url}", "-o", tmp_path / "x", "--store", "mysql://h/db")
    assert r.exit_code == 2 and "expected postgresql://" in r.output
    r = cli("store", "copy", pg.url + "#nosuchrun", tmp_path / "y")
    assert r.exit_code == 2 and "no mmsafe run 'nosuchrun'" in r.output
    dead = f"postgresql://postgres@127.0.0.1:{_pg._free_port()}/postgres#x"
    r = cli("run", bench, "-t", f"openai/comply@{llm.url}", "-o", tmp_path / "z", "--store", dead)
    assert r.exit_code == 2 and "cannot connect to the PostgreSQL store" in r.output
    # a SQLite run directory is not silently shadowed by a PostgreSQL run
    assert cli("run", bench, "-t", f"openai/comply@{llm.url}", "-o", tmp_path / "s", "--no-cache").exit_code == 0
    r = cli("run", bench, "-t", f"openai/comply@{llm.url}", "-o", tmp_path / "s", "--store", pg.run_url("s2"))
    assert r.exit_code == 2 and "holds a SQLite run" in r.output and "mmsafe store copy" in r.output


def test_a_store_from_an_older_version_copies_into_postgres(pg, tmp_path):
    import sqlite3

    from test_claims import _V1
    old = tmp_path / "old"
    old.mkdir()
    with sqlite3.connect(old / "run.sqlite") as db:
        db.executescript(_V1)  # schema 1: no claims table, no seq_order
    run = _run_name()
    r = cli("store", "copy", old, pg.run_url(run))
    assert r.exit_code == 0 and "copied 1 replies" in r.output, r.output
    from mmsafe.store.postgres import PostgresRunStore
    st = PostgresRunStore(pg.url, run, readonly=True)
    try:
        assert st.get_meta("schema_version") == 2  # the destination's own schema
        assert st.get_meta("seq_order") == "completion"  # an old store's order is kept as it was
        assert [r["response"] for r in st.iter_rows(None)] == ["old reply"]
    finally:
        st.close()
