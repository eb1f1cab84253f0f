"""`mmsafe judge --batch` with a cascade judge: the stages that call an LLM go through the batch API,
the cheap stage decides what it is sure of without a call, and the verdicts (with the stage that
decided) are the ones the same cascade gives live."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from typer.testing import CliRunner

from _batch_server import BatchServer
from conftest import make_benchmark
from mmsafe.cli import app

pytest.importorskip("sklearn")  # the offline judge's model

runner = CliRunner()


def cli(*args):
    return runner.invoke(app, [str(a) for a in args], catch_exceptions=False)


@pytest.fixture
def srv():
    s = BatchServer().start()
    yield s
    s.stop()


def _cascade_verdicts(run_dir: Path) -> list[tuple[str, str, int]]:
    """(sample, label, the stage that decided) of the run's primary judge, from its store."""
    from mmsafe.store import open_store
    st = open_store(run_dir)
    try:
        rows = list(st.iter_rows(st.get_meta("primary_judge")))
    finally:
        st.close()
    return sorted((r["sample_id"], r["label"], r["verdict_extra"]["cascade"]["stage"]) for r in rows)


def test_judge_batch_takes_a_cascade(srv, tmp_path):
    bench = make_benchmark(tmp_path / "b", n=6, image=False)
    out = tmp_path / "run"
    assert cli("run", bench, "-t", f"openai/m@{srv.url}", "-o", out, "--no-cache", "--judge", "keyword",
               "--batch", "--batch-poll", "0.05").exit_code == 0
    shutil.copytree(out, tmp_path / "live")
    n_batches = len(srv.batches)
    # an offline stage that abstains on everything: every sample reaches the rubric stage
    judge = f"cascade:offline?abstain=0,1>rubric:openai/judge-r@{srv.url}"
    r = cli("judge", out, "--judge", judge, "--primary", "--no-cache", "--batch", "--batch-poll", "0.05")
    assert r.exit_code == 0, r.output
    assert len(srv.batches) == n_batches + 1 and srv.live == 0
    assert [x["body"]["model"] for x in srv.lines[6:]] == ["judge-r"] * 6
    r2 = cli("judge", tmp_path / "live", "--judge", judge, "--primary", "--no-cache")
    assert r2.exit_code == 0, r2.output
    assert srv.live == 6
    batch, live = _cascade_verdicts(out), _cascade_verdicts(tmp_path / "live")
    assert batch == live and {stage for _, _, stage in batch} == {1}
    assert {label for _, label, _ in batch} == {"safe", "unsafe"}
    s = json.loads((out / "summary.json").read_text())
    assert [st["decided"] for st in s["cascade"]["stages"]] == [0, 6]
