"""What `--help`, `--version`, the environment and shell completion give a user: every verb
listed and documented, defaults shown, text printed literally (no Rich markup or emoji),
every option also settable as MMSAFE_<VERB>_<OPTION>."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import typer.main
from typer.testing import CliRunner

import mmsafe
from conftest import make_benchmark
from mmsafe.cli import app
from mmsafe.cli.app import VERB_ORDER

runner = CliRunner()
EXE = Path(sys.executable).parent / "mmsafe"

VERBS = ("import", "run", "judge", "calibrate", "dialogues", "moderate", "defend-eval", "serve-guard", "report",
         "view", "export", "plugins", "demo", "version", "build")
BUILD_SUBCOMMANDS = ("stage", "write", "taxonomy")


def cli(*args: object, **kw: Any):
    return runner.invoke(app, [str(a) for a in args], catch_exceptions=False, **kw)


def _commands() -> list[tuple[tuple[str, ...], Any]]:
    """Every command and subcommand of the click tree, with its path."""
    found: list[tuple[tuple[str, ...], Any]] = []

    def walk(cmd: Any, path: tuple[str, ...]) -> None:
        found.append((path, cmd))
        for name, sub in getattr(cmd, "commands", {}).items():
            walk(sub, (*path, name))

    walk(typer.main.get_command(app), ())
    return found


def test_root_help_lists_every_verb_and_the_build_subcommands():
    r = cli("--help")
    assert r.exit_code == 0
    listed = [ln.split()[0] for ln in r.output.split("Commands:")[1].splitlines() if ln.startswith("  ") and ln.split()]
    registered = sorted(p[0] for p, _ in _commands() if len(p) == 1)
    assert sorted(listed) == registered  # every verb is listed
    assert set(VERBS) <= set(listed)  # none of these went away
    assert listed == [v for v in VERB_ORDER if v in listed]  # in the declared order (a new verb gets a place)
    r = cli("build", "--help")
    assert r.exit_code == 0 and all(s in r.output for s in BUILD_SUBCOMMANDS)


@pytest.mark.parametrize("path", [p for p, _ in _commands()], ids=lambda p: " ".join(p) or "mmsafe")
def test_every_verb_help_exits_0_and_documents_every_parameter(path):
    r = cli(*path, "--help")
    assert r.exit_code == 0, r.output
    assert "Usage: mmsafe" in r.output
    cmd = dict(_commands())[path]
    assert (cmd.help or "").strip(), f"{path}: no description"
    undocumented = [p.name for p in cmd.params if not (getattr(p, "help", None) or "").strip()]
    assert undocumented == [], f"mmsafe {' '.join(path)}: options without a description: {undocumented}"
    for p in cmd.params:
        if getattr(p, "opts", None) and p.opts[0].startswith("--") and p.name not in ("install_completion",
                                                                                      "show_completion", "version"):
            auto = f"MMSAFE_{'_'.join(path).upper().replace('-', '_')}_{p.name.upper()}"
            assert (p.envvar or auto) in r.output, (path, p.name)  # e.g. --models: MMSAFE_MODELS


def test_help_is_printed_literally_and_shows_the_defaults():
    r = cli("run", "--help", terminal_width=200)
    assert "moderator:guard:MODEL" in r.output and "\U0001f482" not in r.output  # not the guard emoji
    assert "provider/model[@BASE_URL]" in r.output  # not eaten as markup
    flat = " ".join(r.output.split())
    for opt, default in (("--timeout", "120 s"), ("--retries", "6"), ("--max-connections", "32"),
                         ("--judge", "keyword"), ("--fail-on-error", "0.05")):
        seg = flat.split(f" {opt} ", 1)[1].split(" --", 1)[0]
        assert f"default: {default}" in seg or f"default: ({default}" in seg, (opt, seg)
    assert "<bool>" not in r.output  # item 12: --help <bool>
    assert "MMSAFE_MODELS" in r.output


def test_help_defaults_match_the_endpoint_defaults():
    from mmsafe.attacks.dialogues import MAX_LENGTH
    from mmsafe.cli.options import DEFAULT_MAX_CONNECTIONS, DEFAULT_RETRIES, DEFAULT_TIMEOUT_S
    from mmsafe.models import EndpointConfig
    fields = EndpointConfig.model_fields
    assert (fields["timeout_s"].default, fields["max_retries"].default, fields["max_connections"].default) == \
        (DEFAULT_TIMEOUT_S, DEFAULT_RETRIES, DEFAULT_MAX_CONNECTIONS)
    assert f"(1-{MAX_LENGTH})" in " ".join(cli("dialogues", "--help", terminal_width=200).output.split())


def test_version_flag_and_verb():
    for args in (("--version",), ("version",)):
        r = cli(*args)
        assert r.exit_code == 0 and r.output.strip() == mmsafe.__version__


def test_missing_extra_hint_is_printed_literally(tmp_path, monkeypatch):
    from mmsafe import registry
    monkeypatch.setitem(sys.modules, "anthropic", None)  # "not installed": importing it raises ImportError
    monkeypatch.delitem(sys.modules, "mmsafe.models.anthropic_provider", raising=False)
    monkeypatch.setenv("ANTHROPIC_API_KEY", "sk-ant-test")
    registry.reset()
    try:
        bench = make_benchmark(tmp_path / "b", n=1)
        r = cli("run", bench, "--target", "anthropic/claude-sonnet-4", "-o", tmp_path / "run", terminal_width=200)
    finally:
        registry.reset()
    assert r.exit_code == 2, r.output
    assert "pip install 'mmsafe[anthropic]'" in r.output, r.output


def test_user_text_is_never_read_as_markup(tmp_path):
    bench = make_benchmark(tmp_path / "src", n=2)
    r = cli("export", bench, "--format", "csv", "--out", tmp_path / "x.csv")  # a benchmark is not a run
    assert r.exit_code == 2
    src = tmp_path / "q.jsonl"
    src.write_text(json.dumps({"question": "How do I pick a lock?", "scenario": "Crime"}) + "\n")
    r = cli("import", "jsonl", src, "--out", tmp_path / "b", "--name", "[bold]x[/] :guard:", terminal_width=200)
    assert r.exit_code == 0, r.output
    assert "imported [bold]x[/] :guard:" in r.output


def test_options_are_read_from_the_environment(tmp_path, monkeypatch):
    bench = make_benchmark(tmp_path / "b", n=2)
    monkeypatch.setenv("MMSAFE_RUN_TARGET", "mock/refuser")
    monkeypatch.setenv("MMSAFE_RUN_OUT", str(tmp_path / "run"))
    monkeypatch.setenv("MMSAFE_RUN_LIMIT", "1")
    r = cli("run", bench)
    assert r.exit_code == 0, r.output
    s = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert s["target"]["name"] == "mock/refuser" and s["n_samples"] == 1
    # the command line wins over the environment
    r = cli("run", bench, "--target", "mock/complier", "--out", tmp_path / "run2")
    assert r.exit_code == 0 and json.loads((tmp_path / "run2" / "summary.json").read_text())["asr"] == 1.0
    # MMSAFE_MODELS names the models file, as before
    models = tmp_path / "models.yaml"
    models.write_text("models:\n  safe-one:\n    spec: mock/refuser\n")
    monkeypatch.delenv("MMSAFE_RUN_TARGET")
    monkeypatch.setenv("MMSAFE_MODELS", str(models))
    r = cli("run", bench, "--target", "safe-one", "--out", tmp_path / "run3")
    assert r.exit_code == 0, r.output
    # --help / --version are never taken from the environment
    monkeypatch.setenv("MMSAFE_VERSION", "1")
    monkeypatch.setenv("MMSAFE_PLUGINS_HELP", "1")
    r = cli("plugins", "--json")
    assert r.exit_code == 0 and json.loads(r.output)["plugins"]


@pytest.mark.skipif(not EXE.exists(), reason="the mmsafe console script is not installed")
def test_shell_completion_completes_verbs_and_options():
    env = {**os.environ, "_MMSAFE_COMPLETE": "complete_bash", "COMP_WORDS": "mmsafe ru", "COMP_CWORD": "1"}
    r = subprocess.run([str(EXE)], env=env, capture_output=True, text=True, timeout=60)
    assert r.returncode == 0 and r.stdout.split() == ["run"], r.stdout + r.stderr
    env.update(COMP_WORDS="mmsafe run --max-c", COMP_CWORD="2")
    r = subprocess.run([str(EXE)], env=env, capture_output=True, text=True, timeout=60)
    assert "--max-connections" in r.stdout.split() and "--max-cost" in r.stdout.split()
    r = subprocess.run([str(EXE), "--show-completion", "bash"], capture_output=True, text=True, timeout=60,
                       env={**os.environ, "SHELL": "/bin/bash"})
    assert r.returncode == 0 and "_mmsafe_completion" in r.stdout
