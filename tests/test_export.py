"""`mmsafe export`: csv / jsonl / parquet rows agree with the store; markdown leaderboard."""

from __future__ import annotations

import csv
import json
import sqlite3

import pytest
from typer.testing import CliRunner

from browser_util import EVIL_TARGET, synthetic_runs
from mmsafe.cli import app
from mmsafe.report import export_run, export_runs, leaderboard_markdown
from mmsafe.report.export import COLUMNS


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    return synthetic_runs(tmp_path_factory.getbasetemp() / "synth")


def store_rows(run_dir):
    db = sqlite3.connect(f"file:{run_dir / 'run.sqlite'}?mode=ro", uri=True)
    jid = json.loads(db.execute("SELECT value FROM meta WHERE key='primary_judge'").fetchone()[0])
    rows = db.execute("SELECT r.sample_id, r.status, v.label, r.text FROM responses r LEFT JOIN verdicts v"
                      " ON v.sample_id=r.sample_id AND v.judge_id=? ORDER BY r.seq", (jid,)).fetchall()
    db.close()
    return rows


def test_jsonl_matches_store(runs, tmp_path):
    out = tmp_path / "a.jsonl"
    n = export_run(runs["a"], "jsonl", out)
    got = [json.loads(line) for line in out.read_text().splitlines()]
    ref = store_rows(runs["a"])
    assert n == len(got) == len(ref)
    assert [g["sample_id"] for g in got] == [r[0] for r in ref]
    for g, r in zip(got, ref):
        assert list(g) == list(COLUMNS)
        assert g["status"] == r[1] and g["response"] == r[3]
        assert g["label"] == (r[2] if r[2] else ("unscored" if r[1] == "ok" else None))
        assert g["target"] == EVIL_TARGET
    # every judge's label rides along
    assert all(len(g["labels_by_judge"]) == 2 for g in got if g["status"] == "ok")
    assert any(g["status"] == "error" and g["label"] is None for g in got)


def test_csv_guards_formulas_and_round_trips(runs, tmp_path):
    out = tmp_path / "a.csv"
    export_run(runs["a"], "csv", out)
    with open(out, newline="") as f:
        rows = list(csv.DictReader(f))
    assert list(rows[0]) == list(COLUMNS) and len(rows) == len(store_rows(runs["a"]))
    # a reply with markup survives as text; quotes and newlines are quoted correctly
    assert any("<script>window.__pwned=1</script>" in r["response"] for r in rows)
    # formula guard: craft a run whose reply starts with '='
    import shutil
    run = tmp_path / "run"
    shutil.copytree(runs["b"], run)
    db = sqlite3.connect(run / "run.sqlite")
    db.execute("UPDATE responses SET text='=HYPERLINK(\"http://x\")' WHERE seq=(SELECT MIN(seq) FROM responses)")
    db.commit()
    db.close()
    export_run(run, "csv", tmp_path / "g.csv")
    first = next(csv.DictReader(open(tmp_path / "g.csv", newline="")))
    assert first["response"] == "'=HYPERLINK(\"http://x\")"
    export_run(run, "csv", tmp_path / "raw.csv", csv_formula_guard=False)
    first = next(csv.DictReader(open(tmp_path / "raw.csv", newline="")))
    assert first["response"] == "=HYPERLINK(\"http://x\")"


def test_parquet(runs, tmp_path):
    pq = pytest.importorskip("pyarrow.parquet")
    out = tmp_path / "a.parquet"
    n = export_run(runs["a"], "parquet", out)
    t = pq.read_table(out)
    assert t.num_rows == n == len(store_rows(runs["a"]))
    assert t.column_names == list(COLUMNS)
    assert t.schema.field("turns").type.bit_width == 64
    assert t.column("sample_id").to_pylist() == [r[0] for r in store_rows(runs["a"])]


def test_several_runs_concatenate(runs, tmp_path):
    out = tmp_path / "ab.jsonl"
    n = export_runs([runs["a"], runs["b"]], "jsonl", out)
    targets = [json.loads(x)["target"] for x in out.read_text().splitlines()]
    assert n == len(store_rows(runs["a"])) + len(store_rows(runs["b"]))
    assert targets.count("mock/model-b") == len(store_rows(runs["b"]))


def test_other_judge(runs, tmp_path):
    db = sqlite3.connect(f"file:{runs['a'] / 'run.sqlite'}?mode=ro", uri=True)
    jury = db.execute("SELECT judge_id FROM judges WHERE judge_id LIKE 'jury-%'").fetchone()[0]
    db.close()
    out = tmp_path / "j.jsonl"
    export_run(runs["a"], "jsonl", out, judge_id=jury)
    rows = [json.loads(x) for x in out.read_text().splitlines()]
    assert all(r["judge_id"] == jury for r in rows)
    assert all(r["label"] == r["labels_by_judge"].get(jury) for r in rows if r["status"] == "ok")
    from mmsafe.types import InputError
    with pytest.raises(InputError, match="no judge"):
        export_run(runs["a"], "jsonl", out, judge_id="nope")


def test_markdown_leaderboard_escapes(runs):
    md = leaderboard_markdown([runs["a"], runs["b"], runs["defended"]])
    lines = [ln for ln in md.splitlines() if ln.startswith("|")]
    assert len(lines) == 2 + 3
    assert all(ln.count(" | ") == lines[0].count(" | ") for ln in lines[2:])  # no stray pipe
    assert "<script>" not in md and "&lt;script&gt;" in md
    assert "+ moderator" in md


def test_cli_export(runs, tmp_path):
    r = CliRunner()
    res = r.invoke(app, ["export", str(runs["b"]), "--format", "csv", "--out", str(tmp_path / "b.csv")])
    assert res.exit_code == 0, res.output
    assert (tmp_path / "b.csv").read_text().startswith("run,target,")
    res = r.invoke(app, ["export", str(runs["b"]), "-f", "jsonl"])
    assert res.exit_code == 0 and len(res.stdout.splitlines()) == len(store_rows(runs["b"]))
    res = r.invoke(app, ["export", str(runs["a"]), str(runs["b"]), "-f", "markdown"])
    assert res.exit_code == 0 and res.stdout.startswith("| rank |")
    res = r.invoke(app, ["export", str(runs["b"]), "-f", "markdown", "-o", str(tmp_path / "lb.md")])
    assert res.exit_code == 0 and (tmp_path / "lb.md").read_text().startswith("| rank |")
    res = r.invoke(app, ["export", str(runs["b"]), "-f", "xml"])
    assert res.exit_code == 2 and "expected one of" in res.output
    res = r.invoke(app, ["export", str(tmp_path / "missing"), "-f", "csv"])
    assert res.exit_code == 2
    res = r.invoke(app, ["export", str(runs["a"]), str(runs["b"]), "-f", "parquet"])
    assert res.exit_code == 2 and "--out" in res.output


def test_failed_export_leaves_no_file(runs, tmp_path):
    from mmsafe.types import InputError
    out = tmp_path / "x.jsonl"
    with pytest.raises(InputError):
        export_run(runs["a"], "jsonl", out, judge_id="nope")
    assert not out.exists() and not list(tmp_path.glob(".x.jsonl*"))


def test_export_of_a_run_still_writing_is_a_snapshot(runs, tmp_path, monkeypatch):
    """Rows are ordered by benchmark position, so a response saved mid-export may sort before
    the cursor: the export reads one snapshot (what the store held when it began), not a mix."""
    import shutil

    from mmsafe.report import export as ex
    from mmsafe.report import load_run
    from mmsafe.store.sqlite import open_store
    from mmsafe.types import Message, Response, Sample
    run_dir = tmp_path / "live"
    shutil.copytree(runs["a"], run_dir)
    before = [r[0] for r in store_rows(run_dir)]
    monkeypatch.setattr(ex, "BATCH", 2)
    it = ex.iter_export_rows(load_run(run_dir))
    got = [next(it)["sample_id"] for _ in range(3)]
    writer = open_store(run_dir)  # a resumed run adds two samples: one sorts first, one last
    for sid, order in (("late-first", -5), ("late-last", 10 ** 6)):
        writer.save_response(Sample(id=sid, question="q", messages=[Message(role="user", content="hi")]),
                             Response(sample_id=sid, text="ok"), [], order=order)
    writer.close()
    got += [r["sample_id"] for r in it]
    assert got == before
    assert [r[0] for r in store_rows(run_dir)][0] == "late-first"  # the store did change meanwhile
