"""A third-party package adds a judge, a provider and an importer by entry points (docs/extending.md).

The package is tests/fixtures/mmsafe_plugin_demo; it is "installed" the way pip would leave it
for importlib.metadata — a ``mmsafe_plugin_demo-0.1.dist-info/`` (METADATA + entry_points.txt,
written from the package's own pyproject.toml) on PYTHONPATH — and the mmsafe CLI runs in a
subprocess, as a user would run it.
"""

from __future__ import annotations

import importlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import tomllib

FIXTURE = Path(__file__).parent / "fixtures" / "mmsafe_plugin_demo"
QUESTIONS = ["How do I bake bread?", "# a comment line, skipped", "", "ok?",
             "What is the capital of France, and why did it grow there?"]
MIN_CHARS = 40  # LengthJudge's default


def write_dist_info(root: Path, name: str, version: str, entry_points: dict[str, dict[str, str]]) -> Path:
    """What ``pip install`` leaves for importlib.metadata: ``<name>-<version>.dist-info/``."""
    d = root / f"{name.replace('-', '_')}-{version}.dist-info"
    d.mkdir(parents=True, exist_ok=True)
    (d / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n", encoding="utf-8")
    (d / "entry_points.txt").write_text(
        "".join(f"[{group}]\n" + "".join(f"{k} = {v}\n" for k, v in eps.items()) + "\n"
                for group, eps in entry_points.items()), encoding="utf-8")
    return d


def demo_entry_points() -> dict[str, dict[str, str]]:
    """The entry points exactly as the demo package's pyproject.toml declares them."""
    project = tomllib.loads((FIXTURE / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    return project["entry-points"]


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("site")
    write_dist_info(root, "mmsafe-plugin-demo", "0.1", demo_entry_points())
    return root


@pytest.fixture(scope="module")
def broken_site(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A second package whose judge module raises at import time."""
    root = tmp_path_factory.mktemp("broken-site")
    write_dist_info(root, "mmsafe-broken-plugin", "0.2",
                    {"mmsafe.judges": {"broken": "mmsafe_broken_plugin:BrokenJudge"}})
    (root / "mmsafe_broken_plugin.py").write_text('raise RuntimeError("broken on purpose")\n', encoding="utf-8")
    return root


@pytest.fixture(scope="module")
def questions(tmp_path_factory: pytest.TempPathFactory) -> Path:
    p = tmp_path_factory.mktemp("q") / "questions.txt"
    p.write_text("\n".join(QUESTIONS) + "\n", encoding="utf-8")
    return p


def _mmsafe_exe() -> list[str]:
    exe = Path(sys.executable).with_name("mmsafe")
    if exe.exists():
        return [str(exe)]
    found = shutil.which("mmsafe")
    assert found, "the mmsafe console script is not installed"
    return [found]


def mmsafe(*args: str | Path, path: list[Path], cwd: Path) -> subprocess.CompletedProcess[str]:
    """Run the CLI with ``path`` (and the demo's sources) on PYTHONPATH."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(str(p) for p in [*path, FIXTURE / "src"])
    env["COLUMNS"] = "200"
    return subprocess.run([*_mmsafe_exe(), *map(str, args)], env=env, cwd=cwd, capture_output=True, text=True,
                          timeout=120, check=False)


def _results(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "results.jsonl").read_text(encoding="utf-8").splitlines()]


def test_entry_point_plugins_import_run_and_judge_end_to_end(site: Path, questions: Path, tmp_path: Path) -> None:
    imp = mmsafe("import", "lines", questions, "--out", "bench", path=[site], cwd=tmp_path)
    assert imp.returncode == 0, imp.stderr
    manifest = json.loads((tmp_path / "bench" / "benchmark.json").read_text())
    assert manifest["counts"]["n_samples"] == 3 and manifest["source"] == "mmsafe-plugin-demo lines importer"

    run = mmsafe("run", "bench", "--target", "echo/x", "--judge", "length", "--out", "run", "--no-cache",
                 path=[site], cwd=tmp_path)
    assert run.returncode == 0, run.stderr + run.stdout
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["target"]["provider"] == "echo" and summary["target"]["model"] == "x"
    judge = summary["judge"]
    assert judge["kind"] == "length" and judge["name"] == "length"
    assert "mmsafe-plugin-demo" in judge["label"]  # the identity names the plugin
    assert judge["identity"]["settings"] == {"min_chars": MIN_CHARS}

    rows = {r["question"]: r for r in _results(tmp_path / "run")}
    questions_kept = [q for q in QUESTIONS if q.strip() and not q.startswith("#")]
    assert sorted(rows) == sorted(questions_kept)
    for q, r in rows.items():
        reply = f"x heard: {q}"  # the echo provider answered, without network
        assert r["response"] == reply
        assert r["verdict"]["label"] == ("unsafe" if len(reply) >= MIN_CHARS else "safe")
        assert r["judge_id"] == judge["id"]
    n_unsafe = sum(len(f"x heard: {q}") >= MIN_CHARS for q in questions_kept)
    assert summary["n_scored"] == 3 and summary["asr"] == pytest.approx(n_unsafe / 3)
    assert 0 < n_unsafe < 3  # the fixture exercises both labels


def test_module_path_references_work_without_entry_points(questions: Path, tmp_path: Path) -> None:
    # no dist-info: only the package's sources on PYTHONPATH, every kind named as module.path:Name
    no_ep = mmsafe("run", "bench", "--target", "echo/x", "--judge", "length", path=[], cwd=tmp_path)
    assert no_ep.returncode == 2 and "unknown provider 'echo'" in no_ep.stderr

    imp = mmsafe("import", "mmsafe_plugin_demo.importers:import_lines", questions, "--out", "bench",
                 path=[], cwd=tmp_path)
    assert imp.returncode == 0, imp.stderr
    run = mmsafe("run", "bench", "--target", "mmsafe_plugin_demo.providers:EchoProvider/x",
                 "--judge", "mmsafe_plugin_demo.judges:LengthJudge?min_chars=5", "--out", "run", "--no-cache",
                 path=[], cwd=tmp_path)
    assert run.returncode == 0, run.stderr + run.stdout
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["judge"]["kind"] == "length" and summary["judge"]["identity"]["settings"] == {"min_chars": 5}
    assert summary["asr"] == 1.0  # every echo is longer than 5 characters

    bad_opt = mmsafe("run", "bench", "--target", "mmsafe_plugin_demo.providers:EchoProvider/x", "--judge",
                     "mmsafe_plugin_demo.judges:LengthJudge?min_chars=zero", "--out", "run2", path=[], cwd=tmp_path)
    assert bad_opt.returncode == 2 and "Traceback" not in bad_opt.stderr
    assert "min_chars=zero" in bad_opt.stderr


def test_broken_plugin_is_one_line_and_breaks_nothing_else(site: Path, broken_site: Path, questions: Path,
                                                           tmp_path: Path) -> None:
    path = [site, broken_site]
    imp = mmsafe("import", "lines", questions, "--out", "bench", path=path, cwd=tmp_path)
    assert imp.returncode == 0, imp.stderr

    bad = mmsafe("run", "bench", "--target", "echo/x", "--judge", "broken", "--out", "r1", path=path, cwd=tmp_path)
    assert bad.returncode == 2
    lines = [ln for ln in bad.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1, bad.stderr
    assert "'broken'" in lines[0] and "mmsafe-broken-plugin 0.2" in lines[0]
    assert "RuntimeError: broken on purpose" in lines[0]
    assert not (tmp_path / "r1" / "run.sqlite").exists()  # refused before the run started

    ok = mmsafe("run", "bench", "--target", "echo/x", "--judge", "keyword", "--out", "r2", "--no-cache",
                path=path, cwd=tmp_path)
    assert ok.returncode == 0, ok.stderr
    assert json.loads((tmp_path / "r2" / "summary.json").read_text())["judge"]["kind"] == "keyword"


def test_plugins_json_lists_the_demo_entries_with_their_origin(site: Path, tmp_path: Path) -> None:
    res = mmsafe("plugins", "--json", path=[site], cwd=tmp_path)
    assert res.returncode == 0, res.stderr
    rows = json.loads(res.stdout)["plugins"]
    demo = {(r["kind"], r["name"]): r for r in rows if r["origin"] != "built-in"}
    assert set(demo) == {("judges", "length"), ("providers", "echo"), ("importers", "lines")}
    assert {r["origin"] for r in demo.values()} == {"mmsafe-plugin-demo 0.1"}
    assert demo[("judges", "length")]["options"] == ["min_chars"]
    assert demo[("importers", "lines")]["description"].startswith("Every non-blank line")
    assert any(r["kind"] == "judges" and r["name"] == "keyword" and r["origin"] == "built-in" for r in rows)


def test_public_api_sees_the_plugins_in_process(site: Path, questions: Path, tmp_path: Path,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    import mmsafe
    from mmsafe import registry

    monkeypatch.syspath_prepend(str(FIXTURE / "src"))
    monkeypatch.syspath_prepend(str(site))
    importlib.invalidate_caches()
    registry.reset()  # forget the entry points read before the plugin was "installed"
    try:
        infos = {(p.kind, p.name): p for p in mmsafe.plugins() if p.origin != "built-in"}
        assert set(infos) == {("judges", "length"), ("providers", "echo"), ("importers", "lines")}
        assert infos[("providers", "echo")].origin == "mmsafe-plugin-demo 0.1"
        assert infos[("providers", "echo")].target == "mmsafe_plugin_demo.providers:EchoProvider"

        manifest = mmsafe.import_benchmark("lines", questions, tmp_path / "bench")
        assert manifest.counts.n_samples == 3
        assert len(mmsafe.load_benchmark(tmp_path / "bench")) == 3
        outcome = mmsafe.run(tmp_path / "bench", "echo/x", judge="length?min_chars=20", out=tmp_path / "run",
                             use_cache=False)
        assert outcome.exit_code == 0 and outcome.summary["judge"]["kind"] == "length"
        assert outcome.summary["asr"] == pytest.approx(2 / 3)  # "x heard: ok?" is 12 characters
        assert isinstance(mmsafe.make_judge("length"), mmsafe.Judge)

        # re-judge, report, export and calibrate through the same face
        rj = mmsafe.judge(tmp_path / "run", "length?min_chars=100", primary=True)
        assert rj.judge_id == rj.primary_judge_id and rj.judge_id.startswith("length-")
        assert rj.stats["judged"] == 3 and rj.summary["asr"] == 0.0  # no echo reaches 100 characters
        stats = mmsafe.write_report(tmp_path / "run", tmp_path / "report.html")
        assert stats.n_runs == 1 and "length" in (tmp_path / "report.html").read_text(encoding="utf-8")
        assert mmsafe.export(tmp_path / "run", "jsonl", tmp_path / "rows.jsonl") == 3
        rows = [json.loads(x) for x in (tmp_path / "rows.jsonl").read_text().splitlines()]
        assert {r["label"] for r in rows} == {"safe"} and {r["judge_id"] for r in rows} == {rj.judge_id}
        labelled = Path(__file__).parent / "fixtures" / "judges" / "labelled.csv"
        # the fixture's refusals are 59-68 characters long, its compliant replies 92-96
        cal = mmsafe.calibrate("length?min_chars=80", labelled, use_cache=False)
        assert cal["n"] == 20 and cal["judge_id"].startswith("length-") and cal["accuracy"] == 1.0
        assert mmsafe.calibrate("length?min_chars=60", labelled, use_cache=False)["accuracy"] == pytest.approx(0.6)
    finally:
        registry.reset()
