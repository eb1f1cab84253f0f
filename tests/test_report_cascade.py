"""The HTML report shows a cascade judge's block: the share each stage decided, its cost, and the
last stage's judgments spared with the estimated saving; a run without a cascade shows none of it."""

from __future__ import annotations

import html as _html
import re
from pathlib import Path

from conftest import make_benchmark
from mmsafe import api
from mmsafe.report import build_report

GOOD = '{"verdict": "unsafe", "rating": 2, "refused": 0, "convincing": 4, "specific": 3, "reason": "x"}'


def _models(path: Path, url: str) -> Path:
    path.write_text("models:\n"
                    f"  cheap:\n    spec: openai/judge-first@{url}\n    price: {{input: 1.0, output: 1.0}}\n"
                    f"  dear:\n    spec: openai/judge-last@{url}\n    price: {{input: 30.0, output: 60.0}}\n")
    return path


def _section(page: str) -> str:
    m = re.search(r'<section id="cascade">(.*?)</section>', page, re.S)
    assert m, "no cascade section in the report"
    return _html.unescape(re.sub(r"<[^>]+>", " ", m.group(1)))


def test_report_shows_each_stage_share_and_the_calls_saved(llm, tmp_path):
    bench = make_benchmark(tmp_path / "b", n=4, image=False)
    models = _models(tmp_path / "models.yaml", llm.url)
    # the first stage reads 3 of its 4 replies and cannot parse one: that sample goes to the last stage
    llm.queue("judge-first", GOOD, GOOD, "no idea", GOOD)
    llm.queue("judge-last", GOOD)
    res = api.run(bench, f"openai/comply@{llm.url}", out=tmp_path / "run", models_file=models,
                  judge="cascade:rubric:cheap>rubric:dear", max_connections=1)
    c = res.run_summary.cascade
    assert c is not None and [st.decided for st in c.stages] == [3, 1] and c.spared_last_stage == 3
    assert llm.count("judge-last") == 1
    assert c.cost_saved_usd_est is not None and c.cost_saved_usd_est > 0
    out = tmp_path / "report.html"
    build_report([tmp_path / "run"], out, examples=2)
    page = out.read_text()
    assert '<a href="#cascade">' in page
    text = " ".join(_section(page).split())
    assert "rubric:cheap" in text and "rubric:dear" in text
    assert re.search(r"1 rubric:cheap 3 75\.0% \$", text), text
    assert re.search(r"2 rubric:dear last 1 25\.0% \$", text), text
    assert f"Last stage spared: 3 of 4 judgments (75.0%); estimated cost saved: ${c.cost_saved_usd_est:,.4f}" in text
    # the block is drawn, not dumped again under "Other results"
    assert "<code>cascade</code>" not in page


def test_a_run_without_a_cascade_has_no_cascade_section(llm, tmp_path):
    bench = make_benchmark(tmp_path / "b", n=2, image=False)
    api.run(bench, f"openai/comply@{llm.url}", out=tmp_path / "run", judge="keyword")
    out = tmp_path / "report.html"
    build_report([tmp_path / "run"], out, examples=0)
    page = out.read_text()
    assert 'id="cascade"' not in page and 'href="#cascade"' not in page and "Last stage spared" not in page


def test_a_cascade_whose_last_stage_decided_nothing_says_why_there_is_no_estimate(llm, tmp_path):
    bench = make_benchmark(tmp_path / "b", n=3, image=False)
    api.run(bench, f"openai/comply@{llm.url}", out=tmp_path / "run",
            judge=f"cascade:keyword>rubric:openai/judge-last@{llm.url}")
    assert llm.count("judge-last") == 0
    out = tmp_path / "report.html"
    build_report([tmp_path / "run"], out, examples=0)
    text = " ".join(_section(out.read_text()).split())
    assert "Last stage spared: 3 of 3 judgments (100.0%)" in text
    assert "the last stage decided no sample" in text
