"""Reports and the viewer with several runs: short unique display names (``run --name`` or
derived from the model), one colour per run in every section, the wide tables fitting a
1400 px window, no one-point "ASR vs turns" chart, the compare list without repeated
benchmark names, and images blurred with the text behind the content warning."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from typer.testing import CliRunner

from browser_util import artifact, chromium, serve_viewer
from mmsafe.build.demo import build_demo_benchmark
from mmsafe.cli import app
from mmsafe.report import build_report, charts
from mmsafe.report.runs import display_names, load_runs

runner = CliRunner()


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Two runs of the same model under URL-like specs, a named run, an adaptive run (mock attacker)."""
    base = tmp_path_factory.mktemp("ux")
    bench = build_demo_benchmark(base / "bench")
    mp = pytest.MonkeyPatch()
    mp.setenv("MMSAFE_CACHE_DIR", str(base / "cache"))
    out: dict[str, Path] = {}
    try:
        for key, args in {
            "mixed": ["--target", "mock/mixed"],
            "named": ["--target", "mock/refuser", "--name", "my refuser"],
            "mixed2": ["--target", "mock/mixed", "--limit", "20"],
            "single": ["--target", "mock/complier", "--limit", "5"],  # the demo's first 5 items: one turn each
            "adaptive": ["--target", "mock/mixed", "--mode", "adaptive", "--attacker", "mock/attacker",
                         "--limit", "8", "--max-turns", "3", "--max-backtracks", "0"],
        }.items():
            out[key] = base / key
            r = runner.invoke(app, ["run", str(bench), *args, "--judge", "keyword", "--out", str(out[key])])
            assert r.exit_code in (0, 1), r.output
    finally:
        mp.undo()
    return out


def test_display_names_are_short_unique_and_settable(runs: dict[str, Path]) -> None:
    infos = load_runs([runs["mixed"], runs["named"], runs["mixed2"], runs["adaptive"]])
    names = display_names(infos)
    # run --name (kept in the run's config); the same model told apart by mode, then by run folder
    assert names == ["mock/mixed [mixed]", "my refuser", "mock/mixed [mixed2]", "mock/mixed (adaptive)"], names
    assert all("http" not in n and len(n) <= 40 for n in names)


def test_a_url_spec_is_not_a_label(runs: dict[str, Path], tmp_path: Path) -> None:
    infos = load_runs([runs["mixed"], runs["named"]])
    t = infos[0].run_summary.target
    t.name, t.provider, t.model, t.mock = "openai/fake@http://127.0.0.1:8000/v1", "openai", "fake", False
    infos[0].config = {}
    assert display_names(infos)[0] == "fake"


def test_one_point_draws_no_turns_chart() -> None:
    assert charts.line_chart([{"name": "a", "points": {"1": {"asr": 0.4}}}]) is None
    two = charts.line_chart([{"name": "a", "points": {"1": {"asr": 0.4}, "2": {"asr": 0.5}}, "color": "#123456"}])
    assert two is not None and "#123456" in str(two)


def _colors_of(html: str, label: str) -> set[str]:
    """Colours drawn next to ``label`` in the charts' legends and the forest plot."""
    found = set()
    for m in re.finditer(r"fill='(#[0-9a-f]{6})'/>\s*<text[^>]*>" + re.escape(label) + "<", html):
        found.add(m.group(1))
    return found


def test_report_keeps_each_runs_colour_and_fits_1400px(runs: dict[str, Path], tmp_path: Path) -> None:
    out = tmp_path / "report.html"
    build_report([runs["mixed"], runs["named"], runs["mixed2"], runs["adaptive"]], out)
    html = out.read_text()
    names = display_names(load_runs([runs["mixed"], runs["named"], runs["mixed2"], runs["adaptive"]]))
    adaptive = names[3]
    # the adaptive run is 4th: palette colour 3 in the leaderboard swatch and in each multi-turn legend
    assert _colors_of(html, adaptive) == {charts.color(3)}, _colors_of(html, adaptive)
    assert 'class="swatch c3"' in html
    assert "No curve to draw" not in html  # these runs hold several turn counts: the curve is drawn
    # a single-turn report: no "ASR vs turns" chart with one point
    single = tmp_path / "single.html"
    build_report([runs["single"]], single)
    turns = single.read_text().split('<section id="turns">')[1].split("</section>")[0]
    assert "No curve to draw" in turns and "<svg" not in turns
    with chromium() as browser:
        page = browser.new_page(viewport={"width": 1400, "height": 1000})
        page.goto(out.as_uri())
        page.wait_for_load_state("load")
        for sel in ("#leaderboard-table", "#multiturn-table"):
            scroll, client = page.eval_on_selector(sel, "e => [e.scrollWidth, e.parentElement.clientWidth]")
            assert scroll <= client, (sel, scroll, client)  # no sideways scrolling
            last = page.eval_on_selector(sel, "e => e.querySelector('thead th:last-child')"
                                              ".getBoundingClientRect().right")
            assert last <= 1400  # the last column (cost, status) is on screen
        page.locator("#leaderboard").screenshot(path=str(artifact("ux-leaderboard-1400.png")))
        page.locator("#multiturn").screenshot(path=str(artifact("ux-multiturn-1400.png")))


def test_viewer_compare_list_and_blurred_images(runs: dict[str, Path]) -> None:
    with serve_viewer([runs["mixed"], runs["named"]]) as url, chromium() as browser:
        page = browser.new_page(viewport={"width": 1400, "height": 900})
        page.goto(url + "/")
        options = page.eval_on_selector_all("select[name=a] option", "os => os.map(o => o.textContent)")
        assert options == ["mock/mixed", "my refuser"]  # one benchmark: its name is not repeated
        page.goto(f"{url}/run/r0/sample/{_image_sample(runs['mixed'])}")
        img = page.locator("img.asset").first
        img.wait_for()
        assert "blur" in img.evaluate("e => getComputedStyle(e).filter")  # a FigStep image carries the request
        page.screenshot(path=str(artifact("ux-viewer-image-blurred.png")))
        page.click("#cw-toggle")
        assert img.evaluate("e => getComputedStyle(e).filter") == "none"


def _image_sample(run_dir: Path) -> str:
    from mmsafe.datasets import open_benchmark
    bench = load_runs([run_dir])[0].benchmark_path
    assert bench is not None
    return next(s.id for s in open_benchmark(bench).iter_samples()
                if any(not isinstance(m.content, str) and any(p.type == "image" for p in m.content)
                       for m in s.messages))


# --------------------------------------------------------------------------- the terminal at 100 columns


def _cli_at(columns: int, *args: str, cwd: Path) -> str:
    import os
    import subprocess
    import sys
    env = {**os.environ, "COLUMNS": str(columns), "MMSAFE_CACHE_DIR": str(cwd / "cache")}
    r = subprocess.run([sys.executable, "-m", "mmsafe.cli", *args], capture_output=True, text=True, env=env,
                       cwd=cwd, timeout=300)
    assert r.returncode in (0, 1), r.stdout + r.stderr
    return r.stdout


def test_demo_tables_at_100_columns_cut_no_figure(tmp_path: Path) -> None:
    text = _cli_at(100, "demo", "--out", str(tmp_path / "d"), cwd=tmp_path)
    assert "…" not in text  # nothing ends in an ellipsis
    lb = text.split("mmsafe demo — leaderboard")[1].split("targets are MOCK")[0]
    assert all(len(line) <= 100 for line in lb.splitlines())
    # every CI of the leaderboard is whole on its line, and every column (over-refusal last) is there
    cis = re.findall(r"\d+\.\d–\d+\.\d%", lb)
    assert len(cis) == 3 and "over-refusal" in lb and len(re.findall(r"\d/4\b", lb)) == 3
    assert "ASR" in lb and "keyword" in lb  # the header wraps rather than being cut


def test_run_summary_prints_counts_as_words(runs: dict[str, Path], tmp_path: Path) -> None:
    from mmsafe.cli.console import counts
    assert counts({"image": 50, "text": 500}) == "50 image, 500 text"
    assert counts({"max_turns": 4, "success": 6}) == "4 max turns, 6 success"
    bench = load_runs([runs["adaptive"]])[0].benchmark_path
    text = _cli_at(100, "run", str(bench), "--target", "mock/mixed", "--mode", "adaptive", "--attacker",
                   "mock/attacker", "--limit", "4", "--max-turns", "2", "--out", str(tmp_path / "a"), cwd=tmp_path)
    assert "{" not in text and "None" not in text, text  # no raw Python values
    assert re.search(r"status (\d+ (success|max turns)(, )?)+", " ".join(text.split())), text


def test_narrow_terminal_table_becomes_lines_with_every_figure() -> None:
    from rich.console import Console

    from mmsafe.cli.console import table
    rows = [["mock/complier (mock)", "100.0%", "100.0–100.0%", "0/4"], ["m", "0.0%", "0.0–0.0%", "4/4"]]
    c = Console(width=30, record=True, markup=False)
    c.print(table("board", ("target", "ASR keyword", "95% CI", "over-refusal"), rows, text_columns=("target",),
                  width=30))
    out = c.export_text()
    assert "100.0–100.0%" in out.replace("\n", "") and "over-refusal 0/4" in " ".join(out.split())
    assert "…" not in out


def test_viewer_compare_list_names_the_benchmark_when_runs_differ(tmp_path_factory: pytest.TempPathFactory) -> None:
    import urllib.request

    from browser_util import synthetic_runs
    synth = synthetic_runs(tmp_path_factory.getbasetemp() / "synth")
    with serve_viewer([synth["b"], synth["other"]]) as url:
        html = urllib.request.urlopen(url + "/").read().decode()
    options = re.findall(r'<option value="r\d"[^>]*>([^<]*)</option>', html)
    assert options[:2] == ["mock/model-b (synth-safemt)", "mock/other (other-bench)"]
