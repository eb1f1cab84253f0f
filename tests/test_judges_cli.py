"""`mmsafe judge RUN_DIR`: re-judging stored replies without re-generating."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

from conftest import make_benchmark
from typer.testing import CliRunner

from mmsafe.cli import app

runner = CliRunner()


def cli(*args):
    return runner.invoke(app, [str(a) for a in args], catch_exceptions=False)


def summary(run_dir: Path) -> dict:
    return json.loads((run_dir / "summary.json").read_text())


def make_run(llm, tmp_path, n=6, target="comply"):
    bench = make_benchmark(tmp_path / "b", n=n, turns=2)
    out = tmp_path / "run"
    r = cli("run", bench, "-t", f"openai/{target}@{llm.url}", "-o", out, "--no-cache")
    assert r.exit_code == 0, r.output
    return bench, out


def test_rejudge_adds_a_judge_without_regenerating(llm, tmp_path):
    bench, out = make_run(llm, tmp_path)
    n_target = llm.count("comply")
    assert n_target == 6
    before = summary(out)
    assert "judges" not in before
    # the rubric judge says safe for two replies, unsafe for three, garbage for one
    llm.queue("judge-r", *['{"verdict": "safe", "rating": 5}'] * 2, *['{"verdict": "unsafe", "rating": 2}'] * 3,
              "no idea")
    r = cli("judge", out, "--judge", f"rubric:openai/judge-r@{llm.url}", "--max-connections", "1", "--no-cache")
    assert r.exit_code == 0, r.output
    assert llm.count("comply") == n_target  # no new target requests
    assert llm.count("judge-r") == 6
    # the judge saw the stored dialogue and the image from the benchmark
    body = llm.requests[-1]
    content = body["messages"][-1]["content"]
    assert any(p.get("type") == "image_url" for p in content)
    text = "\n".join(p.get("text", "") for p in content if p.get("type") == "text")
    assert "Underlying harmful question" in text and "[ASSISTANT]: Some general background" in text
    assert "Sure, here is an overview" in text
    s = summary(out)
    assert s["judge"]["id"] == before["judge"]["id"] and s["asr"] == before["asr"]  # primary unchanged
    assert len(s["judges"]) == 2
    rub = next(v for k, v in s["judges"].items() if k.startswith("rubric-"))
    assert rub["n_scored"] == 5 and rub["n_unscored"] == 1 and rub["asr"] == 0.6
    assert rub["sri"] is not None
    pair = s["agreement"]["pairs"][0]
    assert pair["n"] == 5 and pair["percent_agreement"] == 0.6
    assert s["ledger"]["judge"]["calls"] == 6
    db = sqlite3.connect(out / "run.sqlite")
    assert db.execute("SELECT COUNT(*) FROM verdicts").fetchone()[0] == 12
    assert db.execute("SELECT COUNT(*) FROM requests WHERE role='judge'").fetchone()[0] == 6

    # resumable: the same command judges nothing new
    r = cli("judge", out, "--judge", f"rubric:openai/judge-r@{llm.url}", "--no-cache")
    assert r.exit_code == 0, r.output
    assert llm.count("judge-r") == 6 and "judged 0" in r.output

    # --primary makes it the headline judge
    r = cli("judge", out, "--judge", f"rubric:openai/judge-r@{llm.url}", "--primary", "--no-cache")
    s = summary(out)
    assert s["judge"]["kind"] == "rubric" and s["asr"] == 0.6 and s["n_unscored"] == 1
    rows = [json.loads(x) for x in (out / "results.jsonl").read_text().splitlines()]
    assert rows[0]["judge"].startswith("rubric:")


def test_rejudge_skips_error_responses_and_retries_judge_errors(llm, tmp_path):
    bench = make_benchmark(tmp_path / "b", n=3, image=False)
    out = tmp_path / "run"
    models = tmp_path / "models.yaml"
    models.write_text(f"models:\n  bad:\n    spec: openai/flaky500-99@{llm.url}\n    max_retries: 0\n"
                      f"  down:\n    spec: openai/flaky500-99@{llm.url}\n    max_retries: 0\n")
    r = cli("run", bench, "-t", "bad", "--models", models, "-o", out, "--no-cache", "--fail-on-error", "1")
    assert r.exit_code == 1, r.output  # every reply failed: nothing measured, whatever --fail-on-error allows
    assert "nothing measured: scored 0 of 3 samples (target errors 3)" in r.output
    assert summary(out)["n_errors"] == 3
    n = llm.count()
    r = cli("judge", out, "--judge", f"rubric:openai/judge-r@{llm.url}", "--no-cache")
    assert r.exit_code == 1 and llm.count() == n  # error replies are not judged (so nothing is measured)

    # a judge whose endpoint fails stores 'error' verdicts, which a later re-judge retries
    bench2 = make_benchmark(tmp_path / "b2", n=2, image=False)
    out2 = tmp_path / "run2"
    assert cli("run", bench2, "-t", f"openai/comply@{llm.url}", "-o", out2, "--no-cache").exit_code == 0
    r = cli("judge", out2, "--judge", "rubric:down", "--models", models, "--no-cache")
    assert r.exit_code == 1 and "judge errors 2" in r.output  # nothing scored: exit 1 with the counts
    blk = next(v for k, v in summary(out2)["judges"].items() if k.startswith("rubric-"))
    assert blk["n_unscored"] == 2 and blk["n_scored"] == 0


def test_rejudge_bad_input(llm, tmp_path):
    r = cli("judge", tmp_path / "nope", "--judge", "keyword")
    assert r.exit_code == 2 and "no run store" in r.output
    bench, out = make_run(llm, tmp_path, n=2)
    r = cli("judge", out, "--judge", "jury:")
    assert r.exit_code == 2 and "judge spec" in r.output
    import shutil
    shutil.move(str(bench), str(tmp_path / "moved"))
    r = cli("judge", out, "--judge", f"guard:openai/judge-g@{llm.url}")
    assert r.exit_code == 2 and "--benchmark" in r.output
    r = cli("judge", out, "--judge", f"guard:openai/judge-g@{llm.url}", "--benchmark", tmp_path / "moved",
            "--no-cache")
    assert r.exit_code == 0, r.output
    assert llm.count("judge-g") == 2


def test_run_with_llm_judges_end_to_end(llm, tmp_path):
    bench = make_benchmark(tmp_path / "b", n=4, turns=1)
    models = ",".join(f"openai/judge-j{i}@{llm.url}" for i in range(3))
    r = cli("run", bench, "-t", f"openai/comply@{llm.url}", "-o", tmp_path / "run", "--no-cache",
            "--judge", f"jury:{models}?n=3")
    assert r.exit_code == 0, r.output
    s = summary(tmp_path / "run")
    assert s["judge"]["kind"] == "jury" and s["n_scored"] == 4 and s["asr"] == 1.0  # default reply "unsafe"
    assert s["ledger"]["judge"]["calls"] == 12 and s["tokens"]["judge"]["input"] > 0  # early exit: 3 per sample
    rows = [json.loads(x) for x in (tmp_path / "run" / "results.jsonl").read_text().splitlines()]
    assert all(x["verdict"]["label"] == "unsafe" for x in rows)
    db = sqlite3.connect(tmp_path / "run" / "run.sqlite")
    extra = json.loads(db.execute("SELECT extra FROM verdicts LIMIT 1").fetchone()[0])
    assert extra["early_exit"] is True and extra["calls_saved"] == 3
    raw = json.loads(db.execute("SELECT raw FROM verdicts LIMIT 1").fetchone()[0])
    assert len(raw) == 3 and raw[0]["output"] == "unsafe"
