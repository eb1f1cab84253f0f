"""`mmsafe run --batch` against a loopback server implementing the OpenAI Batch and Anthropic
Message Batches endpoints: same results as a live run, batch prices, kill and resume without a
second submission, partial failures retried, modes that cannot batch refused."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from typer.testing import CliRunner

from _batch_server import BatchServer, reply_for
from conftest import make_benchmark
from mmsafe.cli import app

runner = CliRunner()
MMSAFE = str(Path(sys.executable).parent / "mmsafe")


def cli(*args, env=None):
    return runner.invoke(app, [str(a) for a in args], env=env, catch_exceptions=False)


def rows(run_dir: Path) -> list[dict]:
    return [json.loads(x) for x in (run_dir / "results.jsonl").read_text().splitlines()]


@pytest.fixture
def srv():
    s = BatchServer().start()
    yield s
    s.stop()


def _batch(*extra):
    return ("--batch", "--batch-poll", "0.05", *extra)


def test_batch_run_stores_what_a_live_run_stores(srv, tmp_path):
    bench = make_benchmark(tmp_path / "b", n=6, image=True)
    t = f"openai/m@{srv.url}"
    assert cli("run", bench, "-t", t, "-o", tmp_path / "live", "--no-cache").exit_code == 0
    live_bodies = list(srv.live_bodies)
    assert srv.live == 6 and not srv.batches
    r = cli("run", bench, "-t", t, "-o", tmp_path / "batch", "--no-cache", *_batch())
    assert r.exit_code == 0, r.output
    assert srv.live == 6, "the batch run made live target calls"
    assert len(srv.batches) == 1 and len(srv.lines) == 6
    # each line's body is exactly the live request body (images included)
    assert sorted(json.dumps(x["body"], sort_keys=True) for x in srv.lines) == \
        sorted(json.dumps(b, sort_keys=True) for b in live_bodies)
    a, b = rows(tmp_path / "live"), rows(tmp_path / "batch")
    assert [x["id"] for x in a] == [x["id"] for x in b] == [f"s{i}" for i in range(6)]
    for x, y in zip(a, b, strict=True):
        assert x["response"] == y["response"] and x["error"] is None and y["error"] is None
        assert x["verdict"]["label"] == y["verdict"]["label"]
    labels = {x["verdict"]["label"] for x in b}
    assert labels == {"safe", "unsafe"}  # the mock refuses some, complies with others
    assert "batch: 6 replies from 1 batch(es)" in " ".join(r.output.split())


def _tokens(run_dir: Path) -> tuple[int, int, float]:
    import sqlite3
    with sqlite3.connect(run_dir / "run.sqlite") as db:
        i, o, c = db.execute("SELECT SUM(input_tokens), SUM(output_tokens), SUM(cost_usd) FROM responses").fetchone()
    return int(i), int(o), float(c)


@pytest.mark.parametrize("batch_price, factor", [(", batch_input: 0.5, batch_output: 1.0", None), ("", 0.5)])
def test_cost_at_batch_prices(srv, tmp_path, batch_price, factor):
    bench = make_benchmark(tmp_path / "b", n=4, image=False)
    models = tmp_path / "models.yaml"
    models.write_text(f"models:\n  m:\n    spec: openai/m@{srv.url}\n"
                      f"    price: {{input: 2.0, output: 4.0{batch_price}}}\n")
    out = tmp_path / "run"
    r = cli("run", bench, "-t", "m", "--models", models, "-o", out, *_batch())
    assert r.exit_code == 0, r.output
    i, o, stored = _tokens(out)
    bi, bo = (0.5, 1.0) if factor is None else (2.0 * factor, 4.0 * factor)
    expect = (i * bi + o * bo) / 1e6
    assert stored == pytest.approx(expect)
    summary = json.loads((out / "summary.json").read_text())
    assert summary["cost_usd"] == pytest.approx(expect)
    assert expect < (i * 2.0 + o * 4.0) / 1e6
    if factor is None:
        assert "batch prices from the models file" in " ".join(r.output.split())
    else:
        assert "50% of the live price assumed" in " ".join(r.output.split())


def _wait(pred, timeout=30.0):
    t0 = time.time()
    while not pred():
        if time.time() - t0 > timeout:
            raise AssertionError("timed out waiting")
        time.sleep(0.05)


@pytest.mark.parametrize("lost_id", [False, True])
def test_killed_after_submission_resumes_the_same_batch(tmp_path, lost_id):
    """SIGKILL once the batch is submitted; the re-run polls that batch: 1 submission, 0 duplicate lines.
    ``lost_id``: the kill came between the POST and the store write (the id was never recorded)."""
    srv = BatchServer(delay_s=3.0).start()
    try:
        bench = make_benchmark(tmp_path / "b", n=5, image=True)
        out = tmp_path / "run"
        cmd = [MMSAFE, "run", str(bench), "-t", f"openai/m@{srv.url}", "-o", str(out), "--no-cache", *_batch()]
        env = {**os.environ, "MMSAFE_PROGRESS_INTERVAL": "0"}
        p = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        try:
            from mmsafe.store import open_store

            def recorded() -> bool:
                if not srv.batches or not (out / "run.sqlite").exists():
                    return False
                st = open_store(out)
                try:
                    jobs = (st.get_meta("batch_jobs") or {}).get("jobs") or []
                    return bool(jobs) and jobs[0].get("remote") == srv.batches[0]["id"]
                finally:
                    st.close()
            _wait(recorded)
            p.send_signal(signal.SIGKILL)
            p.wait(10)
        finally:
            if p.poll() is None:
                p.kill()
        assert p.returncode == -signal.SIGKILL
        assert not (out / "results.jsonl").exists() or not rows(out)  # it died before any reply was stored
        if lost_id:
            st = open_store(out)
            rec = st.get_meta("batch_jobs")
            rec["jobs"][0].update(remote=None, state="submitting")
            st.set_meta("batch_jobs", rec)
            st.close()
        r = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=120)
        assert r.returncode == 0, r.stdout + r.stderr
        assert len(srv.batches) == 1, "submitted twice"
        ids = [x["custom_id"] for x in srv.lines]
        assert len(ids) == 5 and len(set(ids)) == 5
        assert srv.live == 0
        got = rows(out)
        assert [x["id"] for x in got] == [f"s{i}" for i in range(5)] and all(x["error"] is None for x in got)
    finally:
        srv.stop()


def test_a_large_selection_goes_out_as_several_batches(srv, tmp_path, monkeypatch):
    import mmsafe.runner.batch as batch_mod
    monkeypatch.setattr(batch_mod, "MAX_LINES", 3)
    bench = make_benchmark(tmp_path / "b", n=7, image=False)
    srv.fail_lines = 1
    out = tmp_path / "run"
    r = cli("run", bench, "-t", f"openai/m@{srv.url}", "-o", out, "--no-cache", *_batch())
    assert r.exit_code == 0, r.output
    assert [len(b["reqs"]) for b in srv.batches] == [3, 3, 1, 1] and srv.live == 0
    assert len({x["custom_id"] for x in srv.lines}) == 8
    assert [x["id"] for x in rows(out)] == [f"s{i}" for i in range(7)] and all(x["error"] is None for x in rows(out))


def test_a_second_batch_command_on_the_same_run_is_refused(srv, tmp_path):
    from mmsafe.store import open_store
    from mmsafe.store.base import this_host
    bench = make_benchmark(tmp_path / "b", n=2, image=False)
    out = tmp_path / "run"
    assert cli("run", bench, "-t", f"openai/m@{srv.url}", "-o", out, "--limit", "1", *_batch()).exit_code == 0
    other = subprocess.Popen(["sleep", "30"])  # a live process of this host stands for the other driver
    try:
        st = open_store(out)
        st.set_meta("batch_owner", {"host": this_host(), "pid": other.pid, "beat": time.time(), "poll_s": 30})
        st.close()
        r = cli("run", bench, "-t", f"openai/m@{srv.url}", "-o", out, *_batch())
        assert r.exit_code == 2 and f"pid {other.pid}" in r.output, r.output
        assert len(srv.batches) == 1
    finally:
        other.kill()
        other.wait()
    r = cli("run", bench, "-t", f"openai/m@{srv.url}", "-o", out, *_batch())  # its process is gone: taken over
    assert r.exit_code == 0, r.output
    assert len(srv.batches) == 2 and [len(b["reqs"]) for b in srv.batches] == [1, 1]


def test_partial_failures_are_retried_as_a_new_batch(srv, tmp_path):
    bench = make_benchmark(tmp_path / "b", n=6, image=False)
    srv.fail_lines = 2
    out = tmp_path / "run"
    r = cli("run", bench, "-t", f"openai/m@{srv.url}", "-o", out, "--no-cache", *_batch())
    assert r.exit_code == 0, r.output
    assert [len(b["reqs"]) for b in srv.batches] == [6, 2]
    retried = {x["custom_id"] for x in srv.lines[6:]}
    assert len(retried) == 2 and not retried & {x["custom_id"] for x in srv.lines[:2]}
    assert srv.live == 0
    got = rows(out)
    assert len(got) == 6 and all(x["error"] is None for x in got)


def test_expired_batch_lines_retried_and_live_fallback(srv, tmp_path):
    bench = make_benchmark(tmp_path / "b", n=6, image=False)
    srv.expire_next = True
    r = cli("run", bench, "-t", f"openai/m@{srv.url}", "-o", tmp_path / "r1", "--no-cache", *_batch())
    assert r.exit_code == 0, r.output
    assert [len(b["reqs"]) for b in srv.batches] == [6, 3] and srv.live == 0
    assert all(x["error"] is None for x in rows(tmp_path / "r1"))
    # --batch-fallback live: the failed lines become live calls instead of a new batch
    srv.fail_lines = 2
    r = cli("run", bench, "-t", f"openai/m@{srv.url}", "-o", tmp_path / "r2", "--no-cache",
            *_batch("--batch-fallback", "live"))
    assert r.exit_code == 0, r.output
    assert len(srv.batches) == 3 and srv.live == 2
    assert all(x["error"] is None for x in rows(tmp_path / "r2"))


def test_lines_that_keep_failing_are_reported_not_sent_live(srv, tmp_path):
    bench = make_benchmark(tmp_path / "b", n=3, image=False)
    srv.fail_lines = 100
    out = tmp_path / "run"
    r = cli("run", bench, "-t", f"openai/m@{srv.url}", "-o", out, "--no-cache", *_batch())
    assert r.exit_code == 1, r.output  # every sample failed
    assert len(srv.batches) == 3 and srv.live == 0  # MAX_ROUNDS batches, no live call
    got = rows(out)
    assert len(got) == 3 and all("HTTP 500" in (x["error"] or "") for x in got)


def test_anthropic_message_batches(srv, tmp_path, monkeypatch):
    pytest.importorskip("anthropic")
    monkeypatch.setenv("ANTHROPIC_API_KEY", "sk-ant-test-not-a-real-key")
    bench = make_benchmark(tmp_path / "b", n=4, image=True)
    srv.fail_lines = 1
    out = tmp_path / "run"
    r = cli("run", bench, "-t", f"anthropic/claude-x@{srv.base}", "-o", out, "--no-cache", *_batch())
    assert r.exit_code == 0, r.output
    assert [len(b["reqs"]) for b in srv.batches] == [4, 1] and srv.live == 0
    assert all(h.get("x-api-key") == "sk-ant-test-not-a-real-key" for h in srv.headers)
    for _, params in srv.batches[0]["reqs"]:
        assert params["model"] == "claude-x" and params["max_tokens"] > 0
        assert any(b["type"] == "image" for b in params["messages"][0]["content"])
    got = rows(out)
    by_id = {cid: p for b in srv.batches for cid, p in b["reqs"]}
    assert len(got) == 4 and all(x["error"] is None for x in got)
    assert {x["response"] for x in got} <= {reply_for(p["messages"]) for p in by_id.values()}
    assert "sk-ant-test" not in (out / "run.sqlite").read_bytes().decode("latin-1")


@pytest.mark.parametrize("target, args, msg", [("openai", ("--mode", "live"), "only --mode fixed"),
                                               ("openai", ("--batch-fallback", "never"), "--batch-fallback"),
                                               ("mock", (), "has no batch API")])
def test_what_cannot_batch_is_refused_in_one_line(srv, tmp_path, target, args, msg):
    bench = make_benchmark(tmp_path / "b", n=2, image=False)
    out = tmp_path / "run"
    spec = f"openai/m@{srv.url}" if target == "openai" else "mock/refuser"
    r = cli("run", bench, "-t", spec, "-o", out, *_batch(*args))
    assert r.exit_code == 2 and msg in r.output, r.output
    assert "Traceback" not in r.output and not out.exists()
    assert not srv.batches and not srv.live


def test_judge_batch_gives_the_live_judges_verdicts(srv, tmp_path):
    import shutil
    bench = make_benchmark(tmp_path / "b", n=6, image=True)
    out = tmp_path / "run"
    assert cli("run", bench, "-t", f"openai/m@{srv.url}", "-o", out, "--no-cache", *_batch()).exit_code == 0
    shutil.copytree(out, tmp_path / "live")
    judge = f"rubric:openai/judge-r@{srv.url}"
    srv.fail_lines = 1  # one judge line errors: retried in a second judge batch
    r = cli("judge", out, "--judge", judge, "--no-cache", *_batch())
    assert r.exit_code == 0, r.output
    assert [len(b["reqs"]) for b in srv.batches] == [6, 6, 1] and srv.live == 0
    assert all(x["body"]["model"] == "judge-r" for x in srv.lines[6:])
    live_before = srv.live
    r2 = cli("judge", tmp_path / "live", "--judge", judge, "--no-cache")
    assert r2.exit_code == 0, r2.output
    assert srv.live - live_before == 6
    # the batch lines are the live judge's requests, and the verdicts are the same
    assert sorted(json.dumps(x["body"], sort_keys=True) for x in srv.lines[6:12]) == \
        sorted(json.dumps(b, sort_keys=True) for b in srv.live_bodies[-6:])

    def verdicts(d: Path) -> list[tuple[str, str, str]]:
        from mmsafe.store import open_store
        st = open_store(d)
        try:
            return sorted(st.iter_verdict_labels())
        finally:
            st.close()
    vb, vl = verdicts(out), verdicts(tmp_path / "live")
    assert vb == vl and len(vb) == 12  # keyword and the rubric judge, 6 samples each
    rubric = [lab for _, j, lab in vb if j.startswith("rubric")]
    assert len(rubric) == 6 and set(rubric) == {"safe", "unsafe"}
    # re-running is a no-op: nothing submitted again
    r3 = cli("judge", out, "--judge", judge, "--no-cache", *_batch())
    assert r3.exit_code == 0 and len(srv.batches) == 3


def test_judge_batch_refuses_a_judge_without_llm_calls(srv, tmp_path):
    bench = make_benchmark(tmp_path / "b", n=2, image=False)
    out = tmp_path / "run"
    assert cli("run", bench, "-t", f"openai/m@{srv.url}", "-o", out, "--no-cache").exit_code == 0
    r = cli("judge", out, "--judge", "keyword", *_batch())
    assert r.exit_code == 2 and "makes no LLM calls" in r.output, r.output


def test_judge_batch_killed_and_resumed(tmp_path):
    """SIGKILL of `mmsafe judge --batch` once its batch is submitted; the re-run polls that batch."""
    srv = BatchServer().start()
    try:
        bench = make_benchmark(tmp_path / "b", n=4, image=False)
        out = tmp_path / "run"
        assert cli("run", bench, "-t", f"openai/m@{srv.url}", "-o", out, "--no-cache", *_batch()).exit_code == 0
        srv.delay_s = 3.0
        cmd = [MMSAFE, "judge", str(out), "--judge", f"rubric:openai/judge-r@{srv.url}", "--no-cache", *_batch()]
        env = {**os.environ, "MMSAFE_PROGRESS_INTERVAL": "0"}
        p = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        try:
            _wait(lambda: len(srv.batches) == 2)
            time.sleep(0.5)  # the id is written right after the POST returns
            p.send_signal(signal.SIGKILL)
            p.wait(10)
        finally:
            if p.poll() is None:
                p.kill()
        r = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=120)
        assert r.returncode == 0, r.stdout + r.stderr
        assert len(srv.batches) == 2 and len(srv.lines) == 8 and srv.live == 0
        from mmsafe.store import open_store
        st = open_store(out)
        try:
            labels = [lab for _, j, lab in st.iter_verdict_labels() if j.startswith("rubric")]
        finally:
            st.close()
        assert len(labels) == 4 and set(labels) <= {"safe", "unsafe"}
    finally:
        srv.stop()
