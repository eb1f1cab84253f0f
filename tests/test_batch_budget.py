"""`mmsafe run --batch --max-cost`: each line's worst case at batch prices is reserved before the
batch is submitted; what does not fit stays pending (no reply, no error, not sent live) and the
run stops with the max_cost reason; a re-run with a larger budget sends only those. And the
response cache is honoured both ways: a cached request is not submitted, a batch reply is cached."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import pytest
from typer.testing import CliRunner

from _batch_server import BatchServer
from conftest import make_benchmark
from mmsafe.cli import app

runner = CliRunner()
BATCH = ("--batch", "--batch-poll", "0.05", "--judge", "keyword")


def cli(*args):
    return runner.invoke(app, [str(a) for a in args], catch_exceptions=False)


@pytest.fixture
def srv():
    s = BatchServer().start()
    yield s
    s.stop()


def _rows(run_dir: Path) -> list[dict]:
    return [json.loads(x) for x in (run_dir / "results.jsonl").read_text().splitlines()]


def _meta(run_dir: Path, key: str):
    with sqlite3.connect(run_dir / "run.sqlite") as db:
        row = db.execute("SELECT value FROM meta WHERE key=?", (key,)).fetchone()
    return None if row is None else json.loads(row[0])


def _sample_of(line: dict) -> str:
    """The benchmark sample a batch line asks about (its last user turn)."""
    return line["body"]["messages"][-1]["content"].split(" turn ")[0]


def test_budget_bounds_what_a_batch_submits_and_a_larger_one_finishes(srv, tmp_path):
    bench = make_benchmark(tmp_path / "b", n=6, image=False)
    models = tmp_path / "models.yaml"
    # output at $2/M live, so $1/M through the batch API (no batch price given: 50%); input free; with
    # max_tokens 100 each line's worst case is exactly $0.0001 at batch prices: $0.00035 fits 3 lines
    models.write_text(f"models:\n  m:\n    spec: openai/m@{srv.url}\n    params: {{max_tokens: 100}}\n"
                      "    price: {input: 0.0, output: 2.0}\n")
    out = tmp_path / "run"
    r = cli("run", bench, "-t", "m", "--models", models, "-o", out, "--max-cost", "0.00035", *BATCH)
    text = " ".join(r.output.split())
    assert r.exit_code == 1, r.output  # done, but not complete: as a live run stopped by its budget
    assert len(srv.batches) == 1 and len(srv.lines) == 3 and srv.live == 0  # the rest not sent live either
    assert "--max-cost $0.00035: 3 sample(s) not submitted" in text and "re-run with a larger --max-cost" in text
    assert "stopped:" in text
    s = json.loads((out / "summary.json").read_text())
    assert s["stopped"] == "max_cost" and s["complete"] is False
    assert s["n_samples"] == 3 and s["n_errors"] == 0 and s["cost_usd"] <= 0.00035
    assert len(_rows(out)) == 3  # the pending samples have no reply and no error stored
    why = _meta(out, "batch_budget")
    assert why["pending"] == 3 and why["budget_usd"] == 0.00035 and "not submitted" in why["reason"]
    first = {_sample_of(x) for x in srv.lines}
    assert len(first) == 3

    # a larger budget: only the 3 pending samples go out, in a second batch; nothing is submitted twice
    r2 = cli("run", bench, "-t", "m", "--models", models, "-o", out, "--max-cost", "1", *BATCH)
    assert r2.exit_code == 0, r2.output
    assert len(srv.batches) == 2 and len(srv.lines) == 6 and srv.live == 0
    assert {_sample_of(x) for x in srv.lines[3:]}.isdisjoint(first)
    s2 = json.loads((out / "summary.json").read_text())
    assert s2["complete"] is True and s2.get("stopped") is None and s2["n_samples"] == 6
    assert [x["id"] for x in _rows(out)] == [f"s{i}" for i in range(6)]
    assert _meta(out, "batch_budget") is None


def test_no_line_fits_nothing_is_submitted(srv, tmp_path):
    bench = make_benchmark(tmp_path / "b", n=2, image=False)
    models = tmp_path / "models.yaml"
    models.write_text(f"models:\n  m:\n    spec: openai/m@{srv.url}\n    params: {{max_tokens: 100}}\n"
                      "    price: {input: 0.0, output: 2.0}\n")
    r = cli("run", bench, "-t", "m", "--models", models, "-o", tmp_path / "run", "--max-cost", "0.00005", *BATCH)
    assert r.exit_code == 1
    assert not srv.batches and not srv.lines and srv.live == 0
    assert "2 sample(s) not submitted" in " ".join(r.output.split())


def test_the_response_cache_is_honoured_both_ways(srv, tmp_path):
    bench = make_benchmark(tmp_path / "b", n=4, image=True)
    t = f"openai/m@{srv.url}"
    # a live run fills the cache; a batch run of the same requests submits nothing and stores the same replies
    assert cli("run", bench, "-t", t, "-o", tmp_path / "live", "--judge", "keyword").exit_code == 0
    assert srv.live == 4
    r = cli("run", bench, "-t", t, "-o", tmp_path / "batch", *BATCH)
    assert r.exit_code == 0, r.output
    assert not srv.batches and not srv.lines and srv.live == 4
    assert "batch: 4 replies (4 from the response cache) from 0 batch(es)" in " ".join(r.output.split())
    a, b = _rows(tmp_path / "live"), _rows(tmp_path / "batch")
    assert [x["response"] for x in a] == [x["response"] for x in b]
    # --no-cache: submitted as usual; its replies go into the cache only when the cache is on
    r = cli("run", bench, "-t", t, "-o", tmp_path / "nocache", "--no-cache", *BATCH)
    assert r.exit_code == 0 and len(srv.lines) == 4
    # a batch run's replies go into the cache: a live run of the same (new) requests then sends nothing
    bench2 = make_benchmark(tmp_path / "b2", n=3, image=False, name="other")
    r = cli("run", bench2, "-t", t, "-o", tmp_path / "batch2", *BATCH)
    assert r.exit_code == 0 and len(srv.lines) == 7
    assert cli("run", bench2, "-t", t, "-o", tmp_path / "live2", "--judge", "keyword").exit_code == 0
    assert srv.live == 4, "the live run sent requests the batch had already answered"
    assert [x["response"] for x in _rows(tmp_path / "batch2")] == [x["response"] for x in _rows(tmp_path / "live2")]


def test_judge_batch_honours_the_response_cache(srv, tmp_path):
    import shutil
    bench = make_benchmark(tmp_path / "b", n=4, image=False)
    out = tmp_path / "run"
    assert cli("run", bench, "-t", f"openai/m@{srv.url}", "-o", out, "--no-cache", *BATCH).exit_code == 0
    for name in ("live", "batch", "nocache"):
        shutil.copytree(out, tmp_path / name)
    n_batches, judge = len(srv.batches), f"rubric:openai/judge-r@{srv.url}"
    # a live judge fills the cache: the same judge through the batch API then submits nothing
    assert cli("judge", tmp_path / "live", "--judge", judge, "--primary").exit_code == 0
    assert srv.live == 4
    r = cli("judge", tmp_path / "batch", "--judge", judge, "--primary", "--batch", "--batch-poll", "0.05")
    assert r.exit_code == 0, r.output
    assert len(srv.batches) == n_batches and srv.live == 4
    a, b = _rows(tmp_path / "batch"), _rows(tmp_path / "live")
    assert [x["verdict"]["label"] for x in a] == [x["verdict"]["label"] for x in b]
    assert {x["judge"] for x in a} == {judge} and {x["verdict"]["label"] for x in a} == {"safe", "unsafe"}
    # --no-cache: the same calls are submitted
    r = cli("judge", tmp_path / "nocache", "--judge", judge, "--batch", "--batch-poll", "0.05", "--no-cache")
    assert r.exit_code == 0 and len(srv.batches) == n_batches + 1 and len(srv.lines) == 4 + 4
    # and batch answers go into the cache: another judge's batch, then the same judge live, sends nothing
    judge2 = f"rubric:openai/judge-s@{srv.url}"
    assert cli("judge", out, "--judge", judge2, "--batch", "--batch-poll", "0.05").exit_code == 0
    assert len(srv.batches) == n_batches + 2
    assert cli("judge", tmp_path / "live", "--judge", judge2).exit_code == 0
    assert srv.live == 4, "the live judge re-sent calls a batch had answered"
