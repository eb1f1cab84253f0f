"""`mmsafe run` end to end against a loopback server: outputs, resume, kill-and-resume,
secrets, bad input, budgets, capability checks, failing endpoints."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest
from typer.testing import CliRunner

from conftest import make_benchmark
from mmsafe.cli import app

runner = CliRunner()


def cli(*args, env=None):
    return runner.invoke(app, [str(a) for a in args], env=env, catch_exceptions=False)


def read_results(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "results.jsonl").read_text().splitlines()]


def test_run_writes_store_results_and_summary(llm, tmp_path):
    bench = make_benchmark(tmp_path / "b", n=6, turns=2)
    r = cli("run", bench, "--target", f"openai/echo@{llm.url}", "--out", tmp_path / "run")
    assert r.exit_code == 0, r.output
    rows = read_results(tmp_path / "run")
    assert [x["id"] for x in rows] == [f"s{i}" for i in range(6)]
    for x in rows:
        assert x["turns"] == 2 and x["verdict"]["label"] in ("safe", "unsafe") and x["error"] is None
        assert "roles=user,assistant,user" in x["response"] and "images=1" in x["response"]
        assert "first_user_image=True" in x["response"]  # the image goes with the first user turn
        assert x["judge"] == "keyword"
    s = json.loads((tmp_path / "run" / "summary.json").read_text())
    for k in ("n_samples", "n_scored", "n_errors", "asr", "by_scenario", "by_turns", "judge", "target",
              "cost_usd", "tokens"):
        assert k in s
    assert s["n_samples"] == 6 and s["n_scored"] == 6 and s["n_errors"] == 0
    assert s["asr"] == 1.0  # echo never refuses
    assert s["judge"]["kind"] == "keyword" and "baseline" in s["judge"]["label"]
    assert s["by_turns"]["2"]["n_scored"] == 6
    assert s["tokens"]["target"]["input"] > 0
    assert set(s["by_scenario"]) == {"Fraud", "Malware", "Privacy Violation"}
    assert (tmp_path / "run" / "run.sqlite").exists()


def test_results_follow_benchmark_order_not_completion_order(llm, tmp_path):
    bench = make_benchmark(tmp_path / "b", n=6, image=False)
    r = cli("run", bench, "--target", f"openai/staggered@{llm.url}", "--out", tmp_path / "run",
            "--max-connections", "8", "--no-cache")
    assert r.exit_code == 0, r.output
    rows = read_results(tmp_path / "run")
    assert [x["id"] for x in rows] == [f"s{i}" for i in range(6)]
    with sqlite3.connect(tmp_path / "run" / "run.sqlite") as db:
        finished = [r[0] for r in db.execute("SELECT sample_id FROM responses ORDER BY created")]
    assert finished != [f"s{i}" for i in range(6)]  # s0 answered after later samples: not the completion order


def test_rerun_fills_gaps_without_resending(llm, tmp_path):
    bench = make_benchmark(tmp_path / "b", n=10, image=False)
    out = tmp_path / "run"
    assert cli("run", bench, "-t", f"openai/refuse@{llm.url}", "-o", out, "--limit", "4", "--no-cache").exit_code == 0
    assert llm.count("refuse") == 4
    assert cli("run", bench, "-t", f"openai/refuse@{llm.url}", "-o", out, "--no-cache").exit_code == 0
    assert llm.count("refuse") == 10  # only the 6 missing samples were sent
    rows = read_results(out)
    assert len(rows) == 10 and len({r["id"] for r in rows}) == 10
    assert json.loads((out / "summary.json").read_text())["asr"] == 0.0
    db = sqlite3.connect(out / "run.sqlite")
    assert db.execute("SELECT COUNT(*) FROM responses").fetchone()[0] == 10
    assert db.execute("SELECT COUNT(*) FROM verdicts").fetchone()[0] == 10


def test_different_target_into_same_run_dir_is_refused_and_store_kept(llm, tmp_path):
    bench = make_benchmark(tmp_path / "b", n=3, image=False)
    out = tmp_path / "run"
    assert cli("run", bench, "-t", f"openai/refuse@{llm.url}", "-o", out).exit_code == 0
    before = (out / "results.jsonl").read_bytes()
    r = cli("run", bench, "-t", f"openai/comply@{llm.url}", "-o", out)
    assert r.exit_code == 2 and "holds a run of openai/refuse" in r.output
    assert (out / "results.jsonl").read_bytes() == before
    db = sqlite3.connect(out / "run.sqlite")
    assert db.execute("SELECT COUNT(*) FROM responses WHERE status='ok'").fetchone()[0] == 3


def test_failing_endpoint_recorded_per_sample_and_run_goes_on(llm, tmp_path):
    # the endpoint answered once, then hangs: not dead (that stops the run, tests/test_replicas.py),
    # so every other sample walks its retry ladder and the run goes on
    bench = make_benchmark(tmp_path / "b", n=5, image=False)
    out = tmp_path / "run"
    r = cli("run", bench, "-t", f"openai/hangafter-1@{llm.url}", "-o", out, "--timeout", "0.2", "--retries", "1",
            "--max-connections", "1")
    assert r.exit_code == 1  # done, but errors above the threshold
    rows = read_results(out)
    failed = [x for x in rows if x["error"]]
    assert len(rows) == 5 and len(failed) == 4
    assert all("timed out" in x["error"] and x["verdict"] is None for x in failed)
    s = json.loads((out / "summary.json").read_text())
    assert s["n_errors"] == 4 and s["n_scored"] == 1
    db = sqlite3.connect(out / "run.sqlite")
    assert db.execute("SELECT COUNT(*) FROM requests WHERE status='error'").fetchone()[0] == 8  # 2 tries each


def _sent_per_sample(llm, model: str) -> dict[str, int]:
    """Requests the server got for ``model``, by sample (conftest's prompts start "Sample i")."""
    import re
    out: dict[str, int] = {}
    for body in list(llm.requests):
        if body.get("model") == model:
            text = json.dumps(body["messages"])
            m = re.search(r"Sample (\d+) turn", text)
            assert m, text
            out[f"s{m.group(1)}"] = out.get(f"s{m.group(1)}", 0) + 1
    return out


def test_errors_are_retried_on_rerun(llm, tmp_path):
    """Samples whose request failed are stored as errors; re-running the same command sends
    exactly those again (never the ones already answered) and the run ends complete."""
    bench = make_benchmark(tmp_path / "b", n=4, image=False)
    out = tmp_path / "run"
    model = "flaky500-1"  # each conversation's first request gets a 500, later ones an answer
    # s0, s1 answered (their 500 retried once); then s2, s3 sent without retries: both fail
    assert cli("run", bench, "-t", f"openai/{model}@{llm.url}", "-o", out, "--limit", "2", "--retries", "1",
               "--no-cache").exit_code == 0
    r = cli("run", bench, "-t", f"openai/{model}@{llm.url}", "-o", out, "--retries", "0", "--no-cache")
    assert r.exit_code == 1  # 2 of 4 failed: over the 5% threshold
    assert _sent_per_sample(llm, model) == {"s0": 2, "s1": 2, "s2": 1, "s3": 1}
    rows = {x["id"]: x for x in read_results(out)}
    assert {k for k, x in rows.items() if x["error"]} == {"s2", "s3"}
    assert all("500" in rows[k]["error"] and rows[k]["verdict"] is None for k in ("s2", "s3"))
    s = json.loads((out / "summary.json").read_text())
    assert (s["n_samples"], s["n_errors"], s["n_scored"], s["complete"]) == (4, 2, 2, False)

    before = len(llm.requests)
    r = cli("run", bench, "-t", f"openai/{model}@{llm.url}", "-o", out, "--retries", "0", "--no-cache")
    assert r.exit_code == 0, r.output
    assert len(llm.requests) - before == 2  # only the two failed samples were sent again
    assert _sent_per_sample(llm, model) == {"s0": 2, "s1": 2, "s2": 2, "s3": 2}
    rows = {x["id"]: x for x in read_results(out)}
    assert not any(x["error"] for x in rows.values())
    assert all(x["verdict"]["label"] == "unsafe" for x in rows.values())  # "Sure, here is ..." complies
    s = json.loads((out / "summary.json").read_text())
    assert (s["n_samples"], s["n_errors"], s["n_scored"], s["asr"], s["complete"]) == (4, 0, 4, 1.0, True)
    db = sqlite3.connect(out / "run.sqlite")
    assert db.execute("SELECT COUNT(*) FROM responses WHERE status='ok'").fetchone()[0] == 4
    assert db.execute("SELECT COUNT(*) FROM requests WHERE role='target' AND status='error'").fetchone()[0] == 4


def test_summary_json_is_the_typed_summary_and_older_files_load(llm, tmp_path):
    """summary.json is RunSummary.to_dict(): same keys, values and order; blocks that do not
    apply are left out; an older or trimmed file loads (unknown blocks kept); a field of the
    wrong type is one line naming the file and the field."""
    from mmsafe.report.runs import load_run
    from mmsafe.runner.summary import RunSummary
    from mmsafe.types import InputError

    bench = make_benchmark(tmp_path / "b", n=3, image=False)
    out = tmp_path / "run"
    assert cli("run", bench, "-t", f"openai/refuse@{llm.url}", "-o", out).exit_code == 0
    raw = json.loads((out / "summary.json").read_text())
    s = RunSummary.load(out / "summary.json")
    assert s.to_dict() == raw and list(s.to_dict()) == list(raw)
    assert (s.asr, s.n_scored, s.n_failed, s.judge.name, s.target.model, s.mode) == (0.0, 3, 0, "keyword",
                                                                                     "refuse", "fixed")
    assert s.by_scenario["Fraud"].n_scored == 1 and s.tokens["target"].input > 0
    assert not {"defense", "multiturn", "judges", "agreement"} & set(raw)
    assert load_run(out).run_summary.asr == 0.0

    old = {"target": {"name": "x"}, "asr": 0.5, "by_turns": {"1": {"n_scored": 2, "n_unsafe": 1, "asr": 0.5}},
           "moderator": {"flagged": 3}}
    o = RunSummary.from_data(old)
    assert o.to_dict() == old
    assert (o.mode, o.n_samples, o.by_turns["1"].asr, o.controls) == ("fixed", 0, 0.5, None)
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "summary.json").write_text(json.dumps({**raw, "asr_ci": ["low", None]}))
    with pytest.raises(InputError, match=r"bad/summary.json: field asr_ci\.0: ") as e:
        load_run(bad)
    assert "\n" not in str(e.value)


def test_a_defense_is_checked_against_the_protocol(llm, tmp_path):
    import asyncio

    from mmsafe.defense import KeywordFilterDefense, SystemPromptDefense
    from mmsafe.judges import make_judge
    from mmsafe.models import resolve_endpoint
    from mmsafe.runner import Defense, RunOptions, execute
    from mmsafe.types import ConfigError

    assert isinstance(KeywordFilterDefense(), Defense) and isinstance(SystemPromptDefense(), Defense)
    assert not isinstance(object(), Defense)
    bench = make_benchmark(tmp_path / "b", n=2, image=False)
    opts = RunOptions(benchmark=bench, target=resolve_endpoint(f"openai/refuse@{llm.url}", "target"),
                      judge=make_judge("keyword"), out=tmp_path / "run", defense=object())  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="is not a defense"):
        asyncio.run(execute(opts))
    assert llm.count() == 0 and not (tmp_path / "run").exists()


def test_max_cost_stops_cleanly(llm, tmp_path):
    bench = make_benchmark(tmp_path / "b", n=30, image=False)
    models = tmp_path / "models.yaml"
    models.write_text(f"models:\n  pricey:\n    spec: openai/comply@{llm.url}\n    max_connections: 1\n"
                      f"    price: {{input: 1000000, output: 0}}\n")
    out = tmp_path / "run"
    r = cli("run", bench, "-t", "pricey", "--models", models, "-o", out, "--max-cost", "50", "--no-cache")
    assert r.exit_code == 1 and "stopped" in r.output  # done, but not complete
    s = json.loads((out / "summary.json").read_text())
    assert s["stopped"] == "max_cost" and not s["complete"]
    assert 0 < s["n_samples"] < 30
    assert llm.count("comply") < 30


def test_capabilities_checked_up_front(llm, tmp_path):
    bench = make_benchmark(tmp_path / "b", n=2, image=True)
    models = tmp_path / "models.yaml"
    models.write_text(f"models:\n  blind:\n    spec: openai/comply@{llm.url}\n    capabilities: {{image: false}}\n")
    r = cli("run", bench, "-t", "blind", "--models", models, "-o", tmp_path / "run")
    assert r.exit_code == 2 and "takes no image input" in r.output
    assert llm.count() == 0


@pytest.mark.parametrize("case", ["malformed_json", "not_user_last", "missing_image", "escaping_path",
                                  "oversized_image", "unknown_provider", "missing_key", "no_benchmark"])
def test_bad_input_is_one_line_exit_2(llm, tmp_path, case):
    bench = make_benchmark(tmp_path / "b", n=3, image=True)
    samples = bench / "samples.jsonl"
    lines = samples.read_text().splitlines()
    target = f"openai/comply@{llm.url}"
    expect = None
    if case == "malformed_json":
        lines[1] = lines[1][:40]
        expect = "samples.jsonl:2"
    elif case == "not_user_last":
        rec = json.loads(lines[2])
        rec["messages"].append({"role": "assistant", "content": "x"})
        lines[2] = json.dumps(rec)
        expect = "user turn"
    elif case == "missing_image":
        rec = json.loads(lines[0])
        os.remove(bench / rec["messages"][0]["content"][0]["path"])
        expect = "not found"
    elif case == "escaping_path":
        rec = json.loads(lines[0])
        rec["messages"][0]["content"][0]["path"] = "../../etc/passwd"
        lines[0] = json.dumps(rec)
        expect = "escapes the benchmark root"
    elif case == "oversized_image":
        rec = json.loads(lines[0])
        with open(bench / rec["messages"][0]["content"][0]["path"], "r+b") as f:
            f.truncate(21 * 1024 * 1024)
        expect = "limit"
    elif case == "unknown_provider":
        target = "nosuch/model"
        expect = "unknown provider"
    elif case == "missing_key":
        target = "openai/gpt-4o-mini"
        expect = "OPENAI_API_KEY"
    elif case == "no_benchmark":
        bench = tmp_path / "nowhere"
        expect = "nowhere"
    if bench.exists():
        samples.write_text("\n".join(lines) + "\n")
    r = cli("run", bench, "-t", target, "-o", tmp_path / "run")
    assert r.exit_code == 2, r.output
    assert expect in r.output
    assert "Traceback" not in r.output
    assert len([ln for ln in r.output.strip().splitlines() if ln.strip()]) <= 2


def test_api_key_never_reaches_run_dir_or_cache(llm, tmp_path, monkeypatch):
    secret = "sk-test-" + "S3CRET" * 6
    llm.require_key = secret
    monkeypatch.setenv("OPENAI_API_KEY", secret)
    monkeypatch.setenv("OPENAI_BASE_URL", llm.url)
    bench = make_benchmark(tmp_path / "b", n=3, image=True)
    out = tmp_path / "run"
    r = cli("run", bench, "-t", "openai/comply", "-o", out)
    assert r.exit_code == 0, r.output
    assert secret not in r.output
    cache_dir = Path(os.environ["MMSAFE_CACHE_DIR"])
    for d in (out, cache_dir):
        for p in d.rglob("*"):
            if p.is_file():
                assert secret.encode() not in p.read_bytes(), p
                assert b"S3CRET" not in p.read_bytes(), p


def _run_cmd(bench, url, out, conc="4"):
    return [sys.executable, "-m", "mmsafe.cli", "run", str(bench), "-t", f"openai/slow-30@{url}",
            "-o", str(out), "--max-connections", conc, "--no-cache"]


@pytest.mark.slow
def test_sigkill_and_resume_matches_uninterrupted_run(llm, tmp_path):
    n = 120
    bench = make_benchmark(tmp_path / "b", n=n, image=True)
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1] / "src")}
    # uninterrupted reference
    ref = tmp_path / "ref"
    subprocess.run(_run_cmd(bench, llm.url, ref), check=True, env=env, capture_output=True)
    sent_ref = llm.count("slow-30")
    assert sent_ref == n
    llm.reset()
    # killed mid-way
    out = tmp_path / "run"
    p = subprocess.Popen(_run_cmd(bench, llm.url, out), env=env, stdout=subprocess.DEVNULL,
                         stderr=subprocess.DEVNULL)
    deadline = time.time() + 30
    while time.time() < deadline:
        if (out / "run.sqlite").exists():
            try:
                with sqlite3.connect(out / "run.sqlite") as db:
                    if db.execute("SELECT COUNT(*) FROM responses").fetchone()[0] >= n // 3:
                        break
            except sqlite3.Error:
                pass
        time.sleep(0.02)
    p.send_signal(signal.SIGKILL)
    p.wait()
    with sqlite3.connect(out / "run.sqlite") as db:
        stored = db.execute("SELECT COUNT(*) FROM responses WHERE status='ok'").fetchone()[0]
    assert 0 < stored < n
    sent_before = llm.count("slow-30")
    subprocess.run(_run_cmd(bench, llm.url, out), check=True, env=env, capture_output=True)
    sent_after = llm.count("slow-30") - sent_before
    # completed requests are not re-sent; at most the in-flight ones (<= 4) are lost
    assert sent_after == n - stored
    assert sent_before - stored <= 4
    a = {r["id"]: (r["response"], r["verdict"]["label"]) for r in read_results(ref)}
    b = {r["id"]: (r["response"], r["verdict"]["label"]) for r in read_results(out)}
    assert a == b and len(read_results(out)) == n
    with sqlite3.connect(out / "run.sqlite") as db:
        assert db.execute("SELECT COUNT(*) FROM responses").fetchone()[0] == n
        assert db.execute("SELECT COUNT(DISTINCT sample_id) FROM verdicts").fetchone()[0] == n
    assert json.loads((out / "summary.json").read_text())["n_scored"] == n


def test_429_and_500_bursts_do_not_lose_samples(llm, tmp_path):
    bench = make_benchmark(tmp_path / "b", n=12, image=False)
    out = tmp_path / "run"
    models = tmp_path / "m.yaml"
    models.write_text(f"models:\n  f:\n    spec: openai/flaky429-2@{llm.url}\n    backoff_base_s: 0.001\n")
    r = cli("run", bench, "-t", "f", "--models", models, "-o", out)
    assert r.exit_code == 0, r.output
    s = json.loads((out / "summary.json").read_text())
    assert s["n_scored"] == 12 and s["n_errors"] == 0
    assert s["ledger"]["target"]["errors"] == 24  # every 429 is in the request log


def _bench_with(tmp_path, samples, name="edge"):
    from mmsafe.datasets.benchmark import BenchmarkWriter
    from mmsafe.types import BenchmarkManifest
    root = tmp_path / name
    with BenchmarkWriter(root, BenchmarkManifest(name=name), overwrite=True) as w:
        for s in samples:
            w.add(s)
    return root


def test_a_sample_the_wire_cannot_carry_is_an_error_not_a_hang(tmp_path):
    from mmsafe.types import AudioPart, Message, Sample, TextPart
    bad = Sample(id="a1", question="q", messages=[Message(role="user", content=[
        AudioPart(uri="https://example.invalid/a.wav"), TextPart(text="what is said here?")])])
    ok = Sample(id="t1", question="q", messages=[Message(role="user", content="plain question")])
    bench = _bench_with(tmp_path, [bad, ok])
    r = subprocess.run([sys.executable, "-m", "mmsafe.cli", "run", str(bench), "-t", "mock/echo", "-o",
                        str(tmp_path / "run"), "--max-connections", "1"], capture_output=True, text=True, timeout=60)
    assert r.returncode == 1, r.stderr  # finished, one of two samples failed
    rows = {x["id"]: x for x in read_results(tmp_path / "run")}
    assert "audio part without a local file" in rows["a1"]["error"] and rows["t1"]["error"] is None


def test_openai_key_is_not_sent_to_an_explicitly_named_endpoint(llm, tmp_path, monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", "sk-users-real-openai-key")
    bench = make_benchmark(tmp_path / "b", n=1, image=False)
    assert cli("run", bench, "-t", f"openai/comply@{llm.url}", "-o", tmp_path / "r").exit_code == 0
    assert "Authorization" not in llm.headers[-1]
    monkeypatch.setenv("THIRD_PARTY_KEY", "tp-key")
    assert cli("run", bench, "-t", f"openai/comply@{llm.url}", "-o", tmp_path / "r2", "--no-cache",
               "--api-key-env", "THIRD_PARTY_KEY").exit_code == 0
    assert llm.headers[-1]["Authorization"] == "Bearer tp-key"
    r = cli("run", bench, "-t", f"openai/comply@{llm.url}", "-o", tmp_path / "r3", "--api-key-env", "sk-abc-123")
    assert r.exit_code == 2 and "name of an environment variable" in r.output and "sk-abc-123" not in r.output


def test_changed_benchmark_content_is_not_resumed(llm, tmp_path):
    bench = make_benchmark(tmp_path / "b", n=3, image=False)
    out = tmp_path / "run"
    assert cli("run", bench, "-t", f"openai/echo@{llm.url}", "-o", out).exit_code == 0
    make_benchmark(tmp_path / "b", n=4, image=False)  # re-imported with other samples, same name
    r = cli("run", bench, "-t", f"openai/echo@{llm.url}", "-o", out)
    assert r.exit_code == 2 and "samples changed" in r.output


def test_empty_reply_is_unscored_not_safe(llm, tmp_path):
    bench = make_benchmark(tmp_path / "b", n=2, image=False)
    out = tmp_path / "run"
    r = cli("run", bench, "-t", f"openai/empty@{llm.url}", "-o", out)
    s = json.loads((out / "summary.json").read_text())
    assert s["n_unscored"] == 2 and s["n_scored"] == 0 and s["asr"] is None
    assert read_results(out)[0]["finish_reason"] == "length"
    # nothing could be scored: the run is incomplete (exit 1) and says why (issue 18, item 4)
    assert r.exit_code == 1 and "nothing measured: scored 0 of 2 samples" in r.output


def test_control_flag_is_read_leniently(llm, tmp_path):
    from mmsafe.types import Message, Sample
    samples = [Sample(id=f"c{i}", question="q", messages=[Message(role="user", content=f"question {i}")],
                      metadata={"control": v}) for i, v in enumerate(["0", "false", "1", True, {"x": 1}])]
    bench = _bench_with(tmp_path, samples)
    assert cli("run", bench, "-t", f"openai/comply@{llm.url}", "-o", tmp_path / "run").exit_code == 0
    s = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert s["controls"]["n"] == 2 and s["n_scored"] == 3


def test_run_pool_raises_instead_of_hanging():
    import asyncio

    from mmsafe.runner.run import run_pool
    seen = []

    async def process(i):
        if i == 3:
            raise RuntimeError("boom")
        seen.append(i)

    async def go():
        # far more items than the queue holds: a dead worker must not leave the producer waiting
        await asyncio.wait_for(run_pool(range(1000), process, 1), timeout=5)

    with pytest.raises(RuntimeError, match="boom"):
        asyncio.run(go())
    assert seen == [0, 1, 2]
