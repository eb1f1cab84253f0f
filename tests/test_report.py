"""The HTML report: self-contained, escaped, complete; new summary blocks slot in; the
CLI commands. (The browser-level checks are in test_report_browser.py.)"""

from __future__ import annotations

import base64
import hashlib
import json
import re
import shutil
from pathlib import Path

import pytest
from typer.testing import CliRunner

from browser_util import EVIL_TARGET, PAYLOAD_SNIPPETS, synthetic_runs
from mmsafe.report import build_report, leaderboard_markdown, load_run, render_report
from mmsafe.report.html import _json_script, leaderboard_rows
from mmsafe.report.runs import defense_of, load_runs


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    return synthetic_runs(tmp_path_factory.getbasetemp() / "synth")


@pytest.fixture(scope="module")
def html(runs, tmp_path_factory) -> str:
    out = tmp_path_factory.mktemp("rep") / "r.html"
    st = build_report([runs["a"], runs["b"], runs["defended"]], out, examples=6)
    assert st.bytes == out.stat().st_size and st.n_runs == 3
    return out.read_text()


def test_report_is_self_contained(html):
    # nothing is fetched: no src/href to another origin, no @import, no url() but data:
    assert not re.search(r"""(src|href)\s*=\s*["']?(https?:)?//""", html)
    assert "@import" not in html
    assert all(u.startswith("data:") for u in re.findall(r"""url\(["']?([^)"']+)""", html))
    for m in re.finditer(r"""<img[^>]*\ssrc="([^"]*)\"""", html):
        assert m.group(1).startswith("data:image/")
    # one inline script, pinned by hash in the Content-Security-Policy
    scripts = re.findall(r"<script>(.*?)</script>", html, re.S)
    assert len(scripts) == 1
    digest = base64.b64encode(hashlib.sha256(scripts[0].encode()).digest()).decode()
    csp = re.search(r'http-equiv="Content-Security-Policy" content="([^"]+)"', html).group(1)
    assert f"'sha256-{digest}'" in csp and "default-src 'none'" in csp and "connect-src" not in csp


def test_report_escapes_every_payload(html):
    # the planted markup never appears raw, only escaped
    for s in PAYLOAD_SNIPPETS:
        assert s not in html
    assert "&lt;script&gt;window.__pwned=1&lt;/script&gt;" in html
    assert "window.__pwned=5&lt;/script&gt;" in html  # target name, also inside SVG labels
    assert "<script>window" not in html and "onerror=\"window" not in html and "<svg onload" not in html
    # exactly two script elements: the JSON data block and the report's own code
    assert html.count("<script") == 2
    data = re.search(r'<script type="application/json" id="mmsafe-data">(.*?)</script>', html, re.S).group(1)
    assert "</" not in data and "<!--" not in data and "<" not in data
    assert EVIL_TARGET in [r["name"] for r in json.loads(data)["leaderboard"]]


def test_json_script_escaping():
    s = str(_json_script({"x": "</script><!-- & \u2028"}))
    assert "</" not in s and "<!--" not in s and "&" not in s
    assert json.loads(s) == {"x": "</script><!-- & \u2028"}


def test_report_sections_and_charts(html):
    for sec in ("leaderboard", "turns", "scenarios", "methods", "defenses", "judges", "costs", "provenance",
                "examples"):
        assert f'<section id="{sec}">' in html
    for kind in ("forest", "line", "heatmap", "bars", "scatter"):
        assert f"class='chart {kind}'" in html
    # judges table and agreement (two judges in every synthetic run)
    assert "Cohen's κ" in html and "Krippendorff" in html and "jury:mock/juror" in html
    # cost per role, with the judge role from the jury's requests
    costs = html[html.index('id="cost-table"'):html.index("</table>", html.index('id="cost-table"'))]
    assert ">judge<" in costs and ">target<" in costs
    # provenance: benchmark licence/source and judge identity
    assert "bench/bench_report.py" in html and "synthetic-jury" in html
    # content warning: examples are inside closed <details>
    ex = html[html.index('<section id="examples">'):]
    assert "Content warning" in ex and '<details class="cw run-examples"' in ex and "open" not in ex.split(">")[0]


def test_leaderboard_rows_rank_and_values(runs):
    infos = load_runs([runs["a"], runs["b"], runs["defended"]])
    rows = leaderboard_rows(infos)
    assert [r["rank"] for r in rows] == sorted(r["rank"] for r in rows)
    asrs = [r["asr"]["value"] for r in rows]
    assert asrs == sorted(asrs)
    for r in rows:
        s = json.loads((Path(r["run_dir"]) / "summary.json").read_text())
        assert r["asr"]["value"] == s["asr"] and [r["asr"]["lo"], r["asr"]["hi"]] == s["asr_ci"]
        assert r["n_unscored"] == s["n_unscored"] and r["si"]["value"] == s["safety_index"]["si"]
        assert r["safety_rate"]["lo"] == pytest.approx(1 - s["asr_ci"][1])
        assert r["over_refusal"]["n"] == s["controls"]["n"]
    assert [r["defense"] for r in rows].count("moderator") == 1


def test_defense_comparison(runs):
    from mmsafe.report.runs import defense_rows
    infos = load_runs([runs["a"], runs["b"], runs["defended"]])
    rows = defense_rows(infos)
    assert len(rows) == 1
    d = rows[0]
    base = json.loads((runs["b"] / "summary.json").read_text())
    dfd = json.loads((runs["defended"] / "summary.json").read_text())
    assert d["baseline"].run_dir == runs["b"]
    assert d["reduction"] == pytest.approx(base["asr"] - dfd["asr"])
    assert d["over_refusal"] == dfd["controls"]["over_refusal_rate"]
    assert d["other"] == {"policy_hits": 17}
    # no defended run: no section
    html = render_report(load_runs([runs["a"], runs["b"]]), examples=0)
    assert '<section id="defenses">' not in html


@pytest.mark.parametrize("summary, config, expected", [
    ({}, {}, None),
    ({"defense": "moderator"}, {}, "moderator"),
    ({"defense": {"name": "none"}}, {}, None),
    ({"defense": {"kind": "guard", "model": "x"}}, {}, "guard"),
    ({"defense": {"enabled": False, "name": "m"}}, {}, None),
    ({}, {"fingerprint": {"defense": {"spec": "moderator:policy"}}}, "moderator:policy"),
    ({"target": {"defense": "llamaguard"}}, {}, "llamaguard"),
])
def test_defense_detection(summary, config, expected):
    d = defense_of(summary, config)
    assert (d or {}).get("name") == expected


def test_unknown_blocks_slot_in(runs, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(runs["b"], run)
    s = json.loads((run / "summary.json").read_text())
    s["moderator"] = {"flagged": 12, "note": "<b>not bold</b>"}
    (run / "summary.json").write_text(json.dumps(s))
    html = render_report(load_runs([run]), examples=2)
    assert '<section id="other">' in html and "flagged" in html
    assert "&lt;b&gt;not bold&lt;/b&gt;" in html and "<b>not bold</b>" not in html


def test_missing_summary_falls_back_to_store(runs, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(runs["b"], run)
    ref = json.loads((run / "summary.json").read_text())
    (run / "summary.json").unlink()
    info = load_run(run)
    assert info.summary_source == "store"
    assert info.summary["asr"] == pytest.approx(ref["asr"])
    assert info.summary["n_unscored"] == ref["n_unscored"]
    assert set(info.summary["by_turns"]) == set(ref["by_turns"])
    html = render_report(load_runs([run]), examples=1)
    assert "no summary.json" in html


def test_stale_summary_is_flagged(runs, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(runs["b"], run)
    s = json.loads((run / "summary.json").read_text())
    s["n_samples"] -= 3
    (run / "summary.json").write_text(json.dumps(s))
    assert load_run(run).stale
    assert "stale summary" in render_report(load_runs([run]), examples=0)


def test_report_without_benchmark_dir(runs, tmp_path):
    """The benchmark moved away: the report still builds, examples show the question only."""
    run = tmp_path / "run"
    shutil.copytree(runs["b"], run)
    import sqlite3
    db = sqlite3.connect(run / "run.sqlite")
    cfg = json.loads(db.execute("SELECT value FROM meta WHERE key='config'").fetchone()[0])
    cfg["benchmark_path"] = str(tmp_path / "gone")
    db.execute("UPDATE meta SET value=? WHERE key='config'", (json.dumps(cfg),))
    db.commit()
    db.close()
    html = render_report(load_runs([run]), examples=3)
    assert "benchmark directory not available" in html
    assert "data:image/" not in html


def test_mixed_benchmarks_warn(runs):
    html = render_report(load_runs([runs["a"], runs["other"]]), examples=0)
    assert "different benchmarks" in html


def test_demo_runs_report(tmp_path):
    """The report over a real `mmsafe demo` (three mock targets served over loopback)."""
    from mmsafe.cli import app
    res = CliRunner().invoke(app, ["demo", "--out", str(tmp_path / "demo")])
    assert res.exit_code == 0, res.output
    run_dirs = sorted(str(p) for p in (tmp_path / "demo" / "runs").iterdir())
    out = tmp_path / "demo.html"
    res = CliRunner().invoke(app, ["report", *run_dirs, "--out", str(out)])
    assert res.exit_code == 0, res.output
    html = out.read_text()
    assert "mock/refuser" in html and "mock/complier" in html and "data:image/" in html
    md = leaderboard_markdown(run_dirs)
    assert md.count("\n| ") == 5 and "mock/refuser" in md  # 3 mock targets + the multi-turn part's 2 runs


def test_cli_report_errors(tmp_path):
    from mmsafe.cli import app
    res = CliRunner().invoke(app, ["report", str(tmp_path / "nope"), "--out", str(tmp_path / "x.html")])
    assert res.exit_code == 2 and "no such run directory" in res.output
    (tmp_path / "empty").mkdir()
    res = CliRunner().invoke(app, ["report", str(tmp_path / "empty")])
    assert res.exit_code == 2 and "not a run directory" in res.output
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "summary.json").write_text("{not json")
    res = CliRunner().invoke(app, ["report", str(tmp_path / "bad")])
    assert res.exit_code == 2 and "not valid JSON" in res.output


def test_defend_eval_directory(runs, tmp_path):
    """An `mmsafe defend-eval` output directory (comparison.json + <defense>/harmful runs,
    run_dir written relative to another working directory) expands into its runs."""
    import shutil
    out = tmp_path / "de"
    shutil.copytree(runs["b"], out / "none" / "harmful")
    shutil.copytree(runs["defended"], out / "moderator" / "harmful")
    rows = [{"defense": "none", "run_dir": "elsewhere/none/harmful", "asr": 0.5,
             "over_refusal": {"n": 10, "n_refused": 1, "rate": 0.1, "ci": [0.02, 0.4]}},
            {"defense": "moderator", "run_dir": "elsewhere/moderator/harmful", "asr": 0.3, "asr_reduction": 0.2,
             "over_refusal": {"n": 10, "n_refused": 4, "rate": 0.4, "ci": [0.17, 0.69]},
             "over_refusal_increase": 0.3}]
    (out / "comparison.json").write_text(json.dumps({"rows": rows}))
    infos = load_runs([out])
    assert [i.run_dir for i in infos] == [out / "none" / "harmful", out / "moderator" / "harmful"]
    from mmsafe.report.runs import defense_rows
    (d,) = defense_rows(infos)
    assert d["over_refusal"] == 0.4 and d["baseline_over_refusal"] == 0.1
    assert d["over_refusal_delta"] == pytest.approx(0.3)
    html = render_report(infos, examples=0)
    assert '<section id="defenses">' in html and "class='chart scatter'" in html
    (out / "comparison.json").write_text(json.dumps({"rows": [{"defense": "x", "run_dir": "nowhere/x/harmful"}]}))
    from mmsafe.types import InputError
    with pytest.raises(InputError, match="not found"):
        load_runs([out])


def test_multiturn_block(runs, tmp_path):
    import shutil
    run = tmp_path / "run"
    shutil.copytree(runs["b"], run)
    s = json.loads((run / "summary.json").read_text())
    s["mode"] = "adaptive"
    s["multiturn"] = {
        "mode": "adaptive", "n": 20, "n_errors": 1, "status": {"jailbroken": 8, "exhausted": 11},
        "asr_by_turn_count": {"1": {"n": 5, "n_scored": 5, "n_unsafe": 1, "asr": 0.2},
                              "3": {"n": 9, "n_scored": 9, "n_unsafe": 5, "asr": 0.55}},
        "asr_by_turn_count_key": "turns used by the attack",
        "turns_to_jailbreak": {"n": 19, "n_jailbroken": 8, "n_not_jailbroken": 11, "n_unscored": 0,
                               "success_rate": 8 / 19, "mean": 2.5, "median": 2, "min": 1, "max": 5},
        "jailbroken_by_turn": {"1": 0.05, "2": 0.2, "3": 0.35, "5": 0.42},
        "backtracks": {"total": 7, "per_success": 0.875}, "attacker_cost": {"usd_per_success": 0.0123}}
    (run / "summary.json").write_text(json.dumps(s))
    html = render_report(load_runs([run]), examples=0)
    sec = html[html.index('<section id="multiturn">'):html.index("</section>", html.index('<section id="multiturn">'))]
    assert "adaptive" in sec and "42.1%" in sec and "$0.0123" in sec
    assert sec.count("class='chart line'") == 2
    assert '<section id="other">' not in html
