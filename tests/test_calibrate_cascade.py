"""`mmsafe calibrate` measures a cascade like any judge (agreement figures over the final verdicts,
plus the share each stage decided and its accuracy there), and counts an offline judge's
abstentions as abstentions: unscored, never errors and never 'safe'."""

from __future__ import annotations

import asyncio
import csv
import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from mmsafe.cli import app
from mmsafe.judges import make_judge
from mmsafe.types import Message, Response, Sample

pytest.importorskip("sklearn")  # the offline judge's model

runner = CliRunner()
REFUSAL = "I'm sorry, but I can't help with that request. [placeholder refusal]"
COMPLY = "Sure, here is an overview: 1. [placeholder step] 2. [placeholder step] 3. [placeholder step]"
# 4 refusals (label 0), then 6 compliant replies: 4 judged harmful by people (1), 2 not (0)
ROWS = [(f"Placeholder request {i}", REFUSAL, 0) for i in range(4)] + \
       [(f"Placeholder request {i}", COMPLY, 1 if i < 8 else 0) for i in range(4, 10)]


def cli(*args):
    return runner.invoke(app, [str(a) for a in args], catch_exceptions=False)


@pytest.fixture
def data(tmp_path) -> Path:
    p = tmp_path / "labelled.csv"
    with open(p, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["question", "response", "label"])
        w.writerows(ROWS)
    return p


@pytest.fixture(scope="module")
def band() -> str:
    """An abstention band that holds the compliant replies' offline scores and not the refusals'
    (computed from the model, so a retrained offline judge keeps the test meaningful)."""
    j = make_judge("offline")
    items = [(Sample(id=str(i), question=q, messages=[Message(role="user", content=q)]),
              Response(sample_id=str(i), text=r)) for i, (q, r, _) in enumerate(ROWS)]
    scores = [v.score for v, _ in asyncio.run(j.judge_many(items))]
    refusals, complies = scores[:4], scores[4:]
    assert max(refusals) < min(complies) and max(refusals) < 0.5  # the refusals are the offline judge's sure cases
    return f"{(max(refusals) + min(complies)) / 2},1"


def test_calibrate_a_cascade_reports_figures_and_the_share_per_stage(llm, data, band):
    llm.default_judge_reply = '{"verdict": "unsafe"}'  # the LLM stage calls every reply it sees harmful
    spec = f"cascade:offline?abstain={band}>rubric:openai/judge-cal@{llm.url}"
    r = cli("calibrate", "--judge", spec, "--data", data, "--json")
    assert r.exit_code == 0, r.output
    d = json.loads(r.stdout)
    # final verdicts: refusals safe (stage 1), the 6 compliant replies unsafe (stage 2): 4 tp, 2 fp, 4 tn
    assert (d["n"], d["n_scored"], d["n_unscored"]) == (10, 10, 0)
    assert (d["tp"], d["fp"], d["tn"], d["fn"]) == (4, 2, 4, 0)
    assert d["accuracy"] == pytest.approx(0.8) and d["kappa"] is not None
    assert llm.count("judge-cal") == 6  # only what the offline stage passed on reached the LLM
    c = d["cascade"]
    assert [s["decided"] for s in c["stages"]] == [4, 6]
    assert [s["share"] for s in c["stages"]] == [pytest.approx(0.4), pytest.approx(0.6)]
    assert c["stages"][0]["accuracy"] == 1.0 and c["stages"][1]["accuracy"] == pytest.approx(4 / 6)
    assert c["stages"][1]["judge"] == f"rubric:openai/judge-cal@{llm.url}"
    assert c["spared_last_stage"] == 4 and c["spared_share"] == pytest.approx(0.4)
    # cached by the cascade's identity: the re-run carries the same block and calls nobody
    r2 = cli("calibrate", "--judge", spec, "--data", data, "--json")
    d2 = json.loads(r2.stdout)
    assert d2["cached"] is True and d2["cascade"] == c and llm.count("judge-cal") == 6
    # the table shows the stages
    out = cli("calibrate", "--judge", spec, "--data", data).output
    assert "cascade stage" in out and "the last stage was spared 4 of 10 judgments (40.0%)" in out


def test_offline_abstentions_are_counted_as_such(data, band):
    r = cli("calibrate", "--judge", f"offline?abstain={band}", "--data", data, "--json", "--no-cache")
    assert r.exit_code == 0, r.output
    d = json.loads(r.stdout)
    # the 6 abstentions are neither scored as safe (they would be 2 tn + 4 fn) nor errors
    assert (d["n_scored"], d["n_unscored"], d["abstained"]) == (4, 6, 6)
    assert d["parse_status"] == {"ok": 4, "abstained": 6}
    assert (d["tp"], d["fp"], d["tn"], d["fn"]) == (0, 0, 4, 0) and d["coverage"] == pytest.approx(0.4)
    assert "not_cached" not in d and "cascade" not in d
    out = cli("calibrate", "--judge", f"offline?abstain={band}", "--data", data, "--no-cache").output
    assert "unscored=6" in out and "unscored by status: abstained 6" in out
