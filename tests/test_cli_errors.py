"""The one error map (mmsafe.errors) as a user meets it: each known error is one line on
stderr and its exit status, never a traceback — endpoints answering 401/404, file mistakes,
budgets, Ctrl-C."""

from __future__ import annotations

import builtins
import errno
import os
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest
from aiohttp import web
from typer.testing import CliRunner

from _serve import ThreadedApp
from conftest import make_benchmark
from mmsafe.cli import app
from mmsafe.errors import EXIT_INCOMPLETE, EXIT_INTERRUPTED, EXIT_USAGE, classify, note
from mmsafe.models import BudgetExceeded, FatalProviderError
from mmsafe.registry import PluginError
from mmsafe.types import AssetError, ConfigError, InputError

runner = CliRunner()


class StatusServer(ThreadedApp):
    """Answers every request with one HTTP status and an OpenAI-style error body."""

    def __init__(self, status: int):
        super().__init__()
        self.status = status

    def routes(self) -> list[web.RouteDef]:
        async def answer(request: web.Request) -> web.Response:
            return web.json_response({"error": {"message": f"test server says {self.status}"}}, status=self.status)
        return [web.route("*", "/{tail:.*}", answer)]

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"


@pytest.fixture(scope="module", params=[401, 404])
def failing(request):
    srv = StatusServer(request.param).start()
    yield srv
    srv.stop()


def mmsafe(*args: object, cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "OPENAI_API_KEY": "sk-test-not-a-real-key", "COLUMNS": "200"}
    return subprocess.run([sys.executable, "-m", "mmsafe.cli", *map(str, args)], capture_output=True, text=True,
                          timeout=120, cwd=cwd, env=env)


def assert_one_line(r: subprocess.CompletedProcess[str], code: int, *needles: str) -> str:
    lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
    assert r.returncode == code, (r.stdout, r.stderr)
    assert "Traceback" not in r.stderr + r.stdout, r.stderr
    assert "Unclosed" not in r.stderr, r.stderr  # no aiohttp session left open on the way out
    assert len(lines) == 1 and lines[0].startswith("error: "), r.stderr
    for n in needles:
        assert n in lines[0], lines[0]
    return lines[0]


# --------------------------------------------------------------------------- endpoints answering 401 / 404


def test_build_taxonomy_against_a_failing_endpoint_is_one_line_exit_2(failing, tmp_path):
    r = mmsafe("build", "taxonomy", "--panel", f"openai/m@{failing.url}", "--out", tmp_path / "t.yaml", cwd=tmp_path)
    line = assert_one_line(r, EXIT_USAGE, "endpoint openai/m@", str(failing.status))
    assert ("credentials" in line) if failing.status == 401 else ("not found" in line)
    assert not (tmp_path / "t.yaml").exists()


def test_dialogues_against_a_failing_endpoint_is_one_line_exit_2(failing, tmp_path):
    src = make_benchmark(tmp_path / "src", n=2, turns=1)
    r = mmsafe("dialogues", src, "-g", f"openai/gen@{failing.url}", "-o", tmp_path / "out", cwd=tmp_path)
    assert_one_line(r, EXIT_USAGE, "endpoint openai/gen@", str(failing.status), "nothing written")
    assert not (tmp_path / "out").exists()


def test_run_and_judge_against_a_failing_endpoint_are_one_line_exit_2(failing, tmp_path):
    bench = make_benchmark(tmp_path / "b", n=2)
    r = mmsafe("run", bench, "-t", f"openai/m@{failing.url}", "-o", tmp_path / "r1", cwd=tmp_path)
    assert_one_line(r, EXIT_USAGE, "endpoint openai/m@", str(failing.status))
    assert r.stdout.strip() == ""  # no empty summary before the error: nothing was measured
    r = mmsafe("run", bench, "-t", "mock/refuser", "--judge", f"rubric:openai/j@{failing.url}", "-o", tmp_path / "r2",
               cwd=tmp_path)
    assert_one_line(r, EXIT_USAGE, "endpoint openai/j@", str(failing.status))
    assert mmsafe("run", bench, "-t", "mock/refuser", "-o", tmp_path / "r3", cwd=tmp_path).returncode == 0
    r = mmsafe("judge", tmp_path / "r3", "--judge", f"rubric:openai/j@{failing.url}", cwd=tmp_path)
    assert_one_line(r, EXIT_USAGE, "endpoint openai/j@", str(failing.status))


# --------------------------------------------------------------------------- file mistakes


def test_demo_out_on_a_file_is_one_line_exit_2(tmp_path):
    (tmp_path / "taken").write_text("x")
    r = mmsafe("demo", "--out", "taken", cwd=tmp_path)
    assert_one_line(r, EXIT_USAGE, "taken", "a file of that name exists")


def test_report_and_export_out_on_a_folder_name_the_folder(tmp_path):
    (tmp_path / "d").mkdir()
    r = runner.invoke(app, ["report", str(tmp_path / "nowhere"), "--out", str(tmp_path / "d")])
    assert r.exit_code == EXIT_USAGE and "it is a folder" in r.output and str(tmp_path / "d") in r.output
    r = runner.invoke(app, ["export", str(tmp_path / "nowhere"), "--format", "csv", "--out", str(tmp_path / "d")])
    assert r.exit_code == EXIT_USAGE and "it is a folder" in r.output
    assert list((tmp_path / "d").iterdir()) == []  # nothing left behind


def test_permission_error_inside_a_command_is_one_line(tmp_path, monkeypatch):
    """Whatever a verb writes, a PermissionError ends as "cannot write FILE: permission denied", exit 2."""
    target = tmp_path / "ro" / "report.html"

    def denied(*a: object, **k: object) -> None:
        raise PermissionError(errno.EACCES, "Permission denied", str(target))

    monkeypatch.setattr("mmsafe.report.build_report", denied)
    r = runner.invoke(app, ["report", str(tmp_path), "--out", str(target)])
    assert r.exit_code == EXIT_USAGE, r.output
    assert f"cannot write {target}: permission denied" in r.output and "Traceback" not in r.output


@pytest.mark.skipif(os.name != "posix" or os.geteuid() == 0, reason="root writes into read-only folders")
def test_read_only_output_folder_for_import(tmp_path):
    src = tmp_path / "q.csv"
    src.write_text("question,scenario\nHow to pick a lock?,Crime\n")
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o555)
    try:
        r = mmsafe("import", "csv", src, "--out", ro / "bench", cwd=tmp_path)
    finally:
        ro.chmod(0o755)
    assert_one_line(r, EXIT_USAGE, "permission denied")


# --------------------------------------------------------------------------- the map itself


class _Store:
    def __init__(self, path: Path):
        self.path = path

    def write(self) -> None:
        db = sqlite3.connect(f"file:{self.path}?mode=ro", uri=True)
        try:
            db.execute("INSERT INTO t VALUES (1)")
        finally:
            db.close()


def test_classify_maps_each_known_error_to_its_code_and_line(tmp_path):
    f = classify(InputError("samples.jsonl:3: question: missing\nmore"))
    assert f is not None and f.message == "samples.jsonl:3: question: missing"
    for e in (ConfigError("c"), AssetError("a"), PluginError("p")):
        f = classify(e)
        assert f is not None and f.code == EXIT_USAGE
    f = classify(FatalProviderError("openai/m@http://x/v1: HTTP 401: refused"))
    assert f is not None and f.code == EXIT_USAGE and f.message.startswith("endpoint openai/m@http://x/v1: HTTP 401")
    f = classify(BudgetExceeded("budget of $1 spent ($1.0100)"))
    assert f is not None and f.code == EXIT_INCOMPLETE and "--max-cost" in f.message
    assert classify(KeyboardInterrupt()).code == EXIT_INTERRUPTED  # type: ignore[union-attr]
    f = classify(IsADirectoryError(errno.EISDIR, "Is a directory", str(tmp_path)))
    assert f is not None and f.message == f"cannot write {tmp_path}: it is a folder, not a file"
    f = classify(OSError(errno.EROFS, "Read-only file system", "/mnt/ro/run.sqlite"))
    assert f is not None and f.message == "cannot write /mnt/ro/run.sqlite: read-only file system"
    f = classify(FileNotFoundError(errno.ENOENT, "No such file", str(tmp_path / "no" / "such" / "f.csv")))
    assert f is not None and "does not exist" in f.message
    if sys.version_info >= (3, 11):
        group = getattr(builtins, "ExceptionGroup")  # noqa: B009  (a 3.11 name; ruff targets 3.10)
        f = classify(group("g", [ValueError("x"), InputError("inner")]))
        assert f is not None and f.message == "inner"
    # a real "attempt to write a readonly database", named by the store that raised it
    db = tmp_path / "run.sqlite"
    sqlite3.connect(db).execute("CREATE TABLE t (x)").connection.close()
    with pytest.raises(sqlite3.OperationalError) as info:
        _Store(db).write()
    f = classify(info.value)
    assert f is not None and f.code == EXIT_USAGE and f.message.startswith(f"cannot write {db}: read-only database")
    f = classify(ImportError("the minilm embedder needs: pip install 'mmsafe[offline]' (sentence-transformers)"))
    assert f is not None and f.code == EXIT_USAGE and "pip install 'mmsafe[offline]'" in f.message
    # bugs are not mapped: they keep their traceback
    assert classify(ValueError("bug")) is None and classify(OSError("no file")) is None
    assert classify(sqlite3.OperationalError("no such table: t")) is None
    assert classify(ImportError("cannot import name 'x' from 'mmsafe.y'")) is None


def test_note_adds_context_to_the_line():
    with pytest.raises(FatalProviderError) as info, note("nothing written"):
        raise FatalProviderError("gen: HTTP 404")
    assert classify(info.value).message == "endpoint gen: HTTP 404; nothing written"  # type: ignore[union-attr]


def test_ctrl_c_is_exit_130_with_the_resume_line_and_a_bug_keeps_its_traceback(tmp_path, monkeypatch):
    def interrupted(*a: object, **k: object) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr("mmsafe.api.calibrate", interrupted)
    r = runner.invoke(app, ["calibrate", "--judge", "keyword", "--data", str(tmp_path / "x.csv")])
    assert r.exit_code == EXIT_INTERRUPTED
    assert "interrupted: what finished is stored; re-run the same command to resume" in r.output

    def bug(*a: object, **k: object) -> None:
        raise ZeroDivisionError("a bug")

    monkeypatch.setattr("mmsafe.api.calibrate", bug)
    r = runner.invoke(app, ["calibrate", "--judge", "keyword", "--data", str(tmp_path / "x.csv")])
    assert isinstance(r.exception, ZeroDivisionError)  # not turned into a vague one-liner


def test_messages_name_the_flag_or_verb_that_fixes_them(tmp_path):
    src = tmp_path / "q.jsonl"
    src.write_text('{"question": "How do I pick a lock?", "scenario": "Crime"}\n')
    assert runner.invoke(app, ["import", "jsonl", str(src), "--out", str(tmp_path / "b")]).exit_code == 0
    r = runner.invoke(app, ["import", "jsonl", str(src), "--out", str(tmp_path / "b")])
    assert r.exit_code == EXIT_USAGE and "already exists (add --overwrite to replace it)" in r.output
    assert "overwrite=True" not in r.output
    (tmp_path / "plain").mkdir()
    for args in (["run", str(tmp_path / "plain"), "-t", "mock/refuser", "-o", str(tmp_path / "r")],
                 ["run", str(tmp_path / "nowhere"), "-t", "mock/refuser", "-o", str(tmp_path / "r")],
                 ["defend-eval", str(tmp_path / "plain"), "-t", "mock/refuser", "-d", "keyword-filter"],
                 ["dialogues", str(tmp_path / "plain"), "-g", "mock/refuser", "-o", str(tmp_path / "d")]):
        r = runner.invoke(app, args)
        assert r.exit_code == EXIT_USAGE and "make one with mmsafe import" in r.output, (args, r.output)
    assert not (tmp_path / "r").exists() and not (tmp_path / "d").exists()
