"""What a new user meets (issue 18): each reproduction from the issue, as a test.

File mistakes end in one line and exit 2 (never a traceback, never a temp file left behind); a
failed start claims nothing; nothing measured is exit 1 with the cause; checks come before any
spending; endpoint mistakes are named; progress shows off a terminal; ``--limit`` summaries
describe the selection; ``--max-cost`` is a ceiling.

Read-only folders: the tests run as root, and root ignores 0555 permissions, so a read-only
folder is made with ``chattr +i`` (immutable: even root cannot create, rename or delete in it;
the test is skipped on a file system without it). Where that is not enough the test says what
it simulates instead.
"""

from __future__ import annotations

import os
import re
import shutil
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from typer.testing import CliRunner

from conftest import make_benchmark
from mmsafe.cli import app
from mmsafe.errors import EXIT_USAGE

runner = CliRunner()


def mmsafe(*args: object, cwd: Path, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """The real console script in a subprocess (what a user sees: stderr, exit status, stray warnings)."""
    full = {**os.environ, "COLUMNS": "200", **(env or {})}  # conftest removed OPENAI_API_KEY
    return subprocess.run([sys.executable, "-m", "mmsafe.cli", *map(str, args)], capture_output=True, text=True,
                          timeout=180, cwd=cwd, env=full)


def one_line(stderr: str, *needles: str) -> str:
    """The single ``error: …`` line of stderr (no traceback, no unclosed session), with each needle in it."""
    lines = [ln for ln in stderr.splitlines() if ln.strip()]
    assert "Traceback" not in stderr and "Unclosed" not in stderr, stderr
    assert len(lines) == 1 and lines[0].startswith("error: "), stderr
    for n in needles:
        assert n in lines[0], lines[0]
    return lines[0]


def _chattr(flag: str, *paths: Path) -> bool:
    r = subprocess.run(["chattr", flag, *map(str, paths)], capture_output=True)
    return r.returncode == 0


@pytest.fixture
def immutable() -> Iterator[object]:
    """Make paths read-only even for root (chattr +i); undone after the test so tmp_path can be removed."""
    if shutil.which("chattr") is None:
        pytest.skip("chattr not available: cannot make a folder read-only for root")
    done: list[Path] = []

    def make(*paths: Path) -> None:
        if not _chattr("+i", *paths):
            pytest.skip("this file system does not support chattr +i (immutable)")
        done.extend(paths)

    yield make
    if done:
        _chattr("-i", *reversed(done))


@pytest.fixture(scope="module")
def bench_and_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A 4-sample benchmark and one finished mock run of it."""
    root = tmp_path_factory.mktemp("nu")
    bench = make_benchmark(root / "bench", n=4)
    with pytest.MonkeyPatch.context() as mp:  # the per-test cache isolation is not set up yet at module scope
        mp.setenv("MMSAFE_CACHE_DIR", str(root / "cache"))
        r = runner.invoke(app, ["run", str(bench), "-t", "mock/refuser", "-o", str(root / "run")])
    assert r.exit_code == 0, r.output
    return bench, root / "run"


def _no_temp_files(folder: Path) -> list[str]:
    return [p.name for p in folder.rglob("*.tmp")]


# --------------------------------------------------------------------------- 2. file mistakes


def test_read_only_output_folder_is_one_line_exit_2_for_run_import_report_export(bench_and_run, tmp_path,
                                                                                    immutable):
    bench, run = bench_and_run
    ro = tmp_path / "ro"
    ro.mkdir()
    immutable(ro)
    src = tmp_path / "q.csv"
    src.write_text("question,scenario\nHow to pick a lock?,Crime\n")
    cases = [
        (["run", bench, "-t", "mock/refuser", "-o", ro / "r"], ro / "r"),
        (["import", "csv", src, "--out", ro / "b"], ro / "b"),
        (["report", run, "--out", ro / "rep.html"], ro / "rep.html"),
        (["export", run, "--format", "csv", "--out", ro / "x.csv"], ro / "x.csv"),
    ]
    for args, dest in cases:
        r = runner.invoke(app, list(map(str, args)))
        assert r.exit_code == EXIT_USAGE, (args, r.output)
        assert r.exception is None or isinstance(r.exception, SystemExit), (args, r.exception)
        # the line names what the user asked for, not an atomic writer's temp name
        assert f"cannot write {dest}: permission denied" in r.output, (args, r.output)
        assert ".tmp" not in r.output
    assert list(ro.iterdir()) == []


def test_read_only_output_folder_for_demo(tmp_path, immutable):
    ro = tmp_path / "ro"
    ro.mkdir()
    immutable(ro)
    r = mmsafe("demo", "--out", ro / "demo", cwd=tmp_path)
    assert r.returncode == EXIT_USAGE
    one_line(r.stderr, f"cannot write {ro / 'demo'}: permission denied")


def test_resuming_or_rejudging_a_read_only_run_is_one_line(bench_and_run, tmp_path, immutable):
    bench, run = bench_and_run
    ro = tmp_path / "ro-run"
    shutil.copytree(run, ro)
    immutable(ro, *ro.iterdir())
    r = mmsafe("run", bench, "-t", "mock/refuser", "-o", ro, cwd=tmp_path)
    assert r.returncode == EXIT_USAGE, r.stderr
    one_line(r.stderr, f"cannot write {ro / 'run.sqlite'}", "read-only database")
    r = mmsafe("judge", ro, "--judge", "offline", cwd=tmp_path)
    assert r.returncode == EXIT_USAGE, r.stderr
    one_line(r.stderr, f"cannot write {ro / 'run.sqlite'}", "read-only database")


def test_report_out_on_a_folder_or_a_failed_write_leaves_no_temp_file(bench_and_run, tmp_path, monkeypatch):
    """The report writer itself (mmsafe.report.build_report, used by the CLI and the API) checks the folder and
    removes its temp file when the final rename fails (simulated: os.replace raising EACCES)."""
    from mmsafe.report import build_report
    _, run = bench_and_run
    (tmp_path / "d").mkdir()
    with pytest.raises(IsADirectoryError):
        build_report([run], tmp_path / "d")
    assert list((tmp_path / "d").iterdir()) == []

    def denied(src: object, dst: object) -> None:
        raise PermissionError(13, "Permission denied", str(dst))

    monkeypatch.setattr("mmsafe.report.html.os.replace", denied)
    with pytest.raises(PermissionError):
        build_report([run], tmp_path / "out.html")
    assert list(tmp_path.glob(".*tmp")) == [] and not (tmp_path / "out.html").exists()
    r = runner.invoke(app, ["report", str(run), "--out", str(tmp_path / "out.html")])
    assert r.exit_code == EXIT_USAGE and f"cannot write {tmp_path / 'out.html'}: permission denied" in r.output
    assert _no_temp_files(tmp_path) == []


def test_report_and_export_out_on_an_existing_folder_are_one_line(bench_and_run, tmp_path):
    _, run = bench_and_run
    (tmp_path / "d").mkdir()
    for args in (["report", str(run), "--out", str(tmp_path / "d")],
                 ["export", str(run), "--format", "csv", "--out", str(tmp_path / "d")]):
        r = runner.invoke(app, args)
        assert r.exit_code == EXIT_USAGE and f"cannot write {tmp_path / 'd'}: it is a folder" in r.output, r.output
    assert list((tmp_path / "d").iterdir()) == []


def test_demo_out_on_a_file_is_one_line(tmp_path):
    (tmp_path / "taken").write_text("x")
    r = runner.invoke(app, ["demo", "--out", str(tmp_path / "taken")])
    assert r.exit_code == EXIT_USAGE and "a file of that name exists" in r.output, r.output
    assert (tmp_path / "taken").read_text() == "x"


def test_view_on_a_busy_port_binds_before_printing_its_url(bench_and_run):
    _, run = bench_and_run
    with socket.create_server(("127.0.0.1", 0)) as busy:
        port = busy.getsockname()[1]
        r = runner.invoke(app, ["view", str(run), "--port", str(port)])
    assert r.exit_code == EXIT_USAGE, r.output
    assert "mmsafe viewer on" not in r.output  # no URL that points at the other server
    assert f"cannot serve on 127.0.0.1:{port}" in r.output and "in use" in r.output


# --------------------------------------------------------------------------- 3. a failed start claims nothing


def test_a_missing_key_claims_no_output_folder_and_the_corrected_command_runs(bench_and_run, tmp_path):
    bench, _ = bench_and_run
    out = tmp_path / "t1"
    r = mmsafe("run", bench, "--target", "openai/gpt-4o", "--out", out, cwd=tmp_path)
    assert r.returncode == EXIT_USAGE
    one_line(r.stderr, "API key missing", "OPENAI_API_KEY")
    assert not out.exists()  # nothing claimed: the corrected command may use the same --out
    r = runner.invoke(app, ["run", str(bench), "--target", "mock/refuser", "--out", str(out)])
    assert r.exit_code == 0, r.output


@pytest.mark.parametrize("extra", [
    ["--judge", "rubric:openai/gpt-4o"],
    ["--defense", "moderator:llm:openai/gpt-4o"],
    ["--mode", "adaptive", "--attacker", "openai/gpt-4o"],
], ids=["judge", "defense", "attacker"])
def test_a_missing_key_of_any_role_is_found_before_anything_is_written(bench_and_run, tmp_path, extra):
    bench, _ = bench_and_run
    out = tmp_path / "t2"
    r = mmsafe("run", bench, "-t", "mock/refuser", *extra, "--out", out, cwd=tmp_path)
    assert r.returncode == EXIT_USAGE
    one_line(r.stderr, "openai/gpt-4o: API key missing")  # and no "Unclosed client session"
    assert not out.exists()


def test_rejudge_with_a_juror_missing_its_key_is_one_line_and_stores_nothing(bench_and_run, tmp_path, llm):
    _, run = bench_and_run
    rd = tmp_path / "run"
    shutil.copytree(run, rd)
    before = (rd / "run.sqlite").read_bytes()
    r = mmsafe("judge", rd, "--judge", f"jury:openai/judge-a@{llm.url},openai/gpt-4o", cwd=tmp_path)
    assert r.returncode == EXIT_USAGE
    one_line(r.stderr, "openai/gpt-4o: API key missing")  # the first juror's session was never opened
    assert (rd / "run.sqlite").read_bytes() == before and llm.count() == 0


def test_defend_eval_checks_every_defense_key_before_the_baseline_run(bench_and_run, tmp_path):
    bench, _ = bench_and_run
    r = runner.invoke(app, ["defend-eval", str(bench), "-t", "mock/refuser", "-d", "keyword-filter",
                            "-d", "moderator:llm:openai/gpt-4o", "-o", str(tmp_path / "de")])
    assert r.exit_code == EXIT_USAGE and "API key missing" in r.output, r.output
    assert not (tmp_path / "de").exists()


# --------------------------------------------------------------------------- 6. endpoint mistakes


def test_a_base_url_without_its_scheme_is_named(bench_and_run, tmp_path):
    bench, _ = bench_and_run
    r = runner.invoke(app, ["run", str(bench), "-t", "openai/m@127.0.0.1:8000/v1", "-o", str(tmp_path / "r")])
    assert r.exit_code == EXIT_USAGE, r.output
    assert "needs its scheme: openai/m@http://127.0.0.1:8000/v1" in r.output and "API key" not in r.output
    assert not (tmp_path / "r").exists()
    from mmsafe.models import parse_spec
    assert parse_spec("google/claude-3-5-sonnet@20240620")["model"] == "claude-3-5-sonnet@20240620"  # a version


def test_a_base_url_without_v1_suggests_it(bench_and_run, tmp_path, llm):
    bench, _ = bench_and_run
    root_url = llm.url.removesuffix("/v1")
    r = mmsafe("run", bench, "-t", f"openai/comply@{root_url}", "-o", tmp_path / "r", cwd=tmp_path)
    assert r.returncode == EXIT_USAGE
    one_line(r.stderr, "HTTP 404", f"did you mean {root_url}/v1?")
    assert r.stdout.strip() == ""  # no empty summary first


def test_an_unreachable_port_names_the_cause_early(bench_and_run, tmp_path):
    bench, _ = bench_and_run
    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    r = mmsafe("run", bench, "-t", f"openai/m@http://127.0.0.1:{port}/v1", "-o", tmp_path / "r", cwd=tmp_path)
    assert r.returncode == EXIT_USAGE
    one_line(r.stderr, "endpoint unreachable", f"127.0.0.1:{port}", "Cannot connect")


# --------------------------------------------------------------------------- 4. nothing measured is not a success


def test_adaptive_run_with_every_attack_refused_is_exit_1_with_the_cause(tmp_path, llm):
    bench = make_benchmark(tmp_path / "b", n=3)
    r = runner.invoke(app, ["run", str(bench), "-t", f"openai/comply@{llm.url}", "--mode", "adaptive",
                            "--attacker", f"openai/refuse@{llm.url}", "--max-turns", "2", "-o", str(tmp_path / "r")])
    assert r.exit_code == 1, r.output
    assert "error: nothing measured: scored 0 of 3 samples" in r.output and "attacker refused 3" in r.output
    from mmsafe.runner.summary import RunSummary
    s = RunSummary.load(tmp_path / "r" / "summary.json")
    assert s.n_scored == 0 and s.asr is None  # summary.json is still written, with the counts


def test_rejudge_that_scores_nothing_is_exit_1_with_the_counts(bench_and_run, tmp_path, llm):
    _, run = bench_and_run
    rd = tmp_path / "run"
    shutil.copytree(run, rd)
    llm.default_judge_reply = "I would rather not say."  # no verdict a rubric parser can read
    try:
        r = runner.invoke(app, ["judge", str(rd), "--judge", f"rubric:openai/judge-x@{llm.url}"])
    finally:
        llm.default_judge_reply = "unsafe"
    assert r.exit_code == 1, r.output
    assert "nothing measured: judge rubric:openai/judge-x" in r.output and "scored 0 of 4 replies" in r.output
    assert "unscored 4" in r.output


@pytest.fixture(scope="module")
def build_srv():
    from _build_servers import BuildLLM
    s = BuildLLM().start()
    yield s
    s.stop()


def _build_yaml(tmp_path: Path, **cfg: object) -> Path:
    import yaml
    p = tmp_path / "build.yaml"
    p.write_text(yaml.safe_dump({"name": "nu", "generate": {"scenarios": ["fraud"], "candidates_per_scenario": 6,
                                                            "batch_size": 6, "top_k": 3}, **cfg}))
    return p


def test_build_that_keeps_no_item_is_exit_1_naming_the_stage_and_counts(tmp_path, build_srv):
    cfg = _build_yaml(tmp_path, models={"generator": build_srv.spec("gen-refuse"), "scorer": build_srv.spec("scorer")},
                      stages=["generate"])
    r = runner.invoke(app, ["build", "--config", str(cfg), "--out", str(tmp_path / "b")])
    assert r.exit_code == 1, r.output
    line = [ln for ln in r.output.splitlines() if ln.startswith("error:")]
    assert len(line) == 1 and "nothing built: stage generate kept 0 items" in line[0], r.output
    assert "calls" in line[0] and str(tmp_path / "b.work" / "generate" / "report.json") in line[0]


# --------------------------------------------------------------------------- 5. checks before spending


def test_build_checks_reference_models_before_the_first_call(tmp_path, build_srv):
    build_srv.reset()
    two = [build_srv.spec("ref-safe-a"), build_srv.spec("ref-mixed")]
    cfg = _build_yaml(tmp_path, models={"generator": build_srv.spec("gen"), "scorer": build_srv.spec("scorer")},
                      stages=["generate", "select"], select={"size": 3, "reference_models": two})
    r = runner.invoke(app, ["build", "--config", str(cfg), "--out", str(tmp_path / "b")])
    assert r.exit_code == EXIT_USAGE and "select.reference_models: needs at least 3 models, got 2" in r.output
    assert build_srv.requests == []  # not one LLM call was made (the build made 455 first)
    assert not (tmp_path / "b.work").exists()


def test_build_checks_every_model_key_before_the_first_call(tmp_path, build_srv):
    build_srv.reset()
    cfg = _build_yaml(tmp_path, models={"generator": build_srv.spec("gen"), "scorer": "openai/gpt-4o-mini"},
                      stages=["generate"])
    r = runner.invoke(app, ["build", "--config", str(cfg), "--out", str(tmp_path / "b")])
    assert r.exit_code == EXIT_USAGE, r.output
    assert "API key missing" in r.output and "models.scorer" in r.output
    assert build_srv.requests == []


# --------------------------------------------------------------------------- 8. --limit on a resumed run


def test_limit_on_a_resumed_run_summarises_the_selection_and_says_what_else_is_stored(tmp_path):
    bench = make_benchmark(tmp_path / "b", n=12, image=False)
    out = tmp_path / "r"
    assert runner.invoke(app, ["run", str(bench), "-t", "mock/mixed", "-o", str(out), "--limit", "10"]).exit_code == 0
    r = runner.invoke(app, ["run", str(bench), "-t", "mock/mixed", "-o", str(out), "--limit", "5"])
    assert r.exit_code == 0, r.output
    assert "scored 5/5" in r.output and "also holds 5 more sample(s)" in r.output
    import json
    s = json.loads((out / "summary.json").read_text())
    assert (s["n_samples"], s["selected"], s["n_scored"], s["stored_outside"]) == (5, 5, 5, 5)
    rows = [json.loads(x) for x in (out / "results.jsonl").read_text().splitlines()]
    assert [x["id"] for x in rows] == [f"s{i}" for i in range(5)]
    r = runner.invoke(app, ["run", str(bench), "-t", "mock/mixed", "-o", str(out)])  # the whole benchmark
    s = json.loads((out / "summary.json").read_text())
    assert r.exit_code == 0 and s["n_samples"] == 12 and "stored_outside" not in s


# --------------------------------------------------------------------------- 9. --max-cost is a ceiling


def test_max_cost_is_a_ceiling_and_one_figure_is_reported(tmp_path, llm):
    """Eight requests in flight at $0.001 a token: checking the spent total before each send let the issue's
    $0.50 budget stop at $0.629 (and the summary say $0.689); reserving each request's worst case first
    keeps the spent total under the budget, and the stop line and the summary give the same figure."""
    import json
    import sqlite3
    bench = make_benchmark(tmp_path / "b", n=60, image=False)
    models = tmp_path / "models.yaml"
    models.write_text(f"models:\n  pricey:\n    spec: openai/comply@{llm.url}\n    max_connections: 8\n"
                      "    price: {input: 1000, output: 1000}\n")
    out = tmp_path / "r"
    r = runner.invoke(app, ["run", str(bench), "-t", "pricey", "--models", str(models), "-o", str(out),
                            "--max-cost", "0.5", "--max-tokens", "32", "--no-cache"])
    assert r.exit_code == 1, r.output
    s = json.loads((out / "summary.json").read_text())
    assert s["stopped"] == "max_cost" and 0 < s["n_samples"] < 60
    assert 0.4 < s["cost_usd"] <= 0.5  # stopped near the budget, never past it
    assert f"--max-cost $0.5 reached: ${s['cost_usd']:.4f} spent" in r.output  # the summary's figure
    with sqlite3.connect(out / "run.sqlite") as db:
        logged = db.execute("SELECT SUM(cost_usd) FROM requests").fetchone()[0]
    assert logged == pytest.approx(s["cost_usd"], abs=1e-6)


def test_budget_reservation_holds_under_concurrency(llm):
    """The ledger itself: 40 concurrent requests against a budget that fits about 10 of them."""
    import asyncio

    from mmsafe.models import BudgetExceeded, CostLedger, ModelClient, Price, build_provider, resolve_endpoint
    from mmsafe.types import Message
    cfg = resolve_endpoint(f"openai/comply@{llm.url}", "target").model_copy(
        update={"price": Price(input=1000.0, output=1000.0), "params": {"max_tokens": 32}})
    ledger = CostLedger(max_cost_usd=0.3)

    async def go() -> list[object]:
        c = ModelClient(build_provider(cfg), "target", ledger)
        await c.start()
        try:
            return await asyncio.gather(*(c.chat([Message(role="user", content=f"question number {i} " * 3)])
                                          for i in range(40)), return_exceptions=True)
        finally:
            await c.close()

    res = asyncio.run(go())
    sent = [x for x in res if not isinstance(x, BaseException)]
    assert any(isinstance(x, BudgetExceeded) for x in res) and len(sent) >= 5
    assert ledger.total_cost <= 0.3 and ledger.reserved_usd == pytest.approx(0.0)


# --------------------------------------------------------------------------- 7. progress without a terminal


def test_run_off_a_terminal_prints_progress_lines_with_the_limited_total(tmp_path, llm):
    bench = make_benchmark(tmp_path / "b", n=12, image=False)
    r = mmsafe("run", bench, "-t", f"openai/slow-150@{llm.url}", "--limit", "6", "--max-connections", "1",
               "--no-cache", "-o", tmp_path / "r", cwd=tmp_path, env={"MMSAFE_PROGRESS_INTERVAL": "0.3"})
    assert r.returncode == 0, r.stderr
    lines = [ln for ln in r.stderr.splitlines() if ln.startswith("run openai/slow-150@")]
    assert len(lines) >= 2, r.stderr  # a line every 0.3 s during a ~1 s run, and the last one
    assert all(": " in ln and "/6 (" in ln.split(": ", 1)[1] for ln in lines)  # the --limit total from the start
    assert not re.search(r"\b\d+/12\b", r.stderr)
    assert lines[-1].split(": ", 1)[1].startswith("6/6 (100%)") and "errors 0" in lines[-1]


def test_progress_interval_zero_turns_the_lines_off(tmp_path):
    bench = make_benchmark(tmp_path / "b", n=2, image=False)
    r = mmsafe("run", bench, "-t", "mock/refuser", "-o", tmp_path / "r", cwd=tmp_path,
               env={"MMSAFE_PROGRESS_INTERVAL": "0"})
    assert r.returncode == 0 and r.stderr.strip() == "", r.stderr


def test_the_terminal_bar_shows_the_limited_total_from_the_start(tmp_path, monkeypatch):
    """In a terminal (simulated: a Rich console forced to terminal mode, writing to a buffer)."""
    import io

    from rich.console import Console
    buf = io.StringIO()
    monkeypatch.setattr("mmsafe.cli.progress.err", Console(file=buf, force_terminal=True, width=200))
    bench = make_benchmark(tmp_path / "b", n=12, image=False)
    r = runner.invoke(app, ["run", str(bench), "-t", "mock/refuser", "--limit", "3", "-o", str(tmp_path / "r")])
    assert r.exit_code == 0, r.output
    drawn = buf.getvalue()
    assert "3/3" in drawn and "/12" not in drawn


def _capture(prog: object, seen: list[str]) -> object:
    """A Reporter.emit that keeps the lines instead of printing them."""
    def emit(self: object) -> None:
        seen.append(prog.progress_line(self.label, self.stats))  # type: ignore[attr-defined]
        self.lines += 1  # type: ignore[attr-defined]
    return emit


def test_every_long_verb_reports_progress_off_a_terminal(tmp_path, monkeypatch, llm):
    """judge, calibrate, moderate, dialogues and defend-eval feed the same reporter (interval 0.05 s;
    the scripted server answers after 100 ms so each verb runs long enough for a line)."""
    import time as _time

    from mmsafe.cli import progress as prog
    seen: list[str] = []
    monkeypatch.setenv("MMSAFE_PROGRESS_INTERVAL", "0.05")
    monkeypatch.setattr(prog.Reporter, "emit", _capture(prog, seen))
    llm.latency_ms = 100
    bench = make_benchmark(tmp_path / "b", n=3, image=False)
    assert runner.invoke(app, ["run", str(bench), "-t", "mock/complier", "-o", str(tmp_path / "r")]).exit_code == 0
    data = tmp_path / "labels.csv"
    data.write_text("question,response,label\n" + "".join(f"q{i},Sure here it is {i},1\n" for i in range(3)))
    cases = {
        "judge": ["judge", str(tmp_path / "r"), "--judge", f"rubric:openai/judge-a@{llm.url}", "--no-cache"],
        "calibrate": ["calibrate", "--judge", f"rubric:openai/judge-b@{llm.url}", "--data", str(data), "--no-cache"],
        "moderate": ["moderate", str(bench), "--moderator", f"llm:openai/judge-c@{llm.url}"],
        "dialogues": ["dialogues", str(bench), "-g", f"openai/comply@{llm.url}", "-o", str(tmp_path / "d"),
                      "--lengths", "2", "--no-cache"],
        "defend-eval": ["defend-eval", str(bench), "-t", f"openai/comply@{llm.url}", "-d", "keyword-filter",
                        "-o", str(tmp_path / "de"), "--no-cache"],
    }
    totals = {"judge": 3, "calibrate": 3, "moderate": 3, "dialogues": 12, "defend-eval": 3}  # dialogues: 4 methods
    for verb, args in cases.items():
        seen.clear()
        t0 = _time.monotonic()
        r = runner.invoke(app, args)
        assert r.exception is None or isinstance(r.exception, SystemExit), (verb, r.output)
        assert seen, (verb, _time.monotonic() - t0, r.output)
        assert all(f"/{totals[verb]} (" in ln.rsplit(": ", 1)[-1] or ln.rsplit(": ", 1)[-1].startswith("0 done")
                   for ln in seen), (verb, seen)
        assert any(f"/{totals[verb]} (" in ln for ln in seen), (verb, seen)


def test_build_reports_its_stage_progress_off_a_terminal(tmp_path, monkeypatch, build_srv):
    from mmsafe.cli import progress as prog
    seen: list[str] = []
    monkeypatch.setenv("MMSAFE_PROGRESS_INTERVAL", "0.01")
    monkeypatch.setattr(prog.Reporter, "emit", _capture(prog, seen))
    # each call takes 100 ms, so the stage outlasts several ticks even when everything is warm (in a full
    # run the stage finished inside the first 50 ms tick and printed nothing)
    monkeypatch.setattr(build_srv, "latency_ms", 100.0)
    cfg = _build_yaml(tmp_path, models={"generator": build_srv.spec("gen"), "scorer": build_srv.spec("scorer")},
                      stages=["generate"])
    r = runner.invoke(app, ["build", "--config", str(cfg), "--out", str(tmp_path / "b")])
    assert r.exit_code == 0, r.output
    calls = [int(m.group(1)) for ln in seen if (m := re.match(r"build generate \(LLM calls\): (\d+) done", ln))]
    assert calls and calls[-1] > 0, seen  # the stage's calls, counted from its ledger
