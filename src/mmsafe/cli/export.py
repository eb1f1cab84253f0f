"""``mmsafe export RUN… --format F``: per-sample rows (csv, jsonl, parquet) or a markdown leaderboard."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated

import typer

from .app import app
from .console import fail, note
from .options import out_option


@app.command("export")
def export_cmd(
    run_dirs: Annotated[list[Path], typer.Argument(
        help="run directories (several: rows concatenated / leaderboard)")],
    format: Annotated[str, typer.Option("--format", "-f", metavar="FORMAT",
                                        help="csv | jsonl | parquet | markdown (leaderboard)")],
    out: Annotated[Path | None, out_option(
        "file to write ('-': stdout)", file=True, show_default="stdout; parquet: RUN_DIR/export.parquet")] = None,
    judge: Annotated[str | None, typer.Option(
        "--judge", metavar="JUDGE_ID", help="judge id for the label columns", show_default="the primary judge")
    ] = None,
    raw_csv: Annotated[bool, typer.Option(
        help="do not prefix CSV cells that look like spreadsheet formulas with '")] = False,
) -> None:
    """Export a run's per-sample rows (csv, jsonl, parquet) or the runs' leaderboard (markdown)."""
    from mmsafe.report import EXPORT_FORMATS, export_runs, leaderboard_markdown
    runs = list[Path | str](run_dirs)
    if format not in EXPORT_FORMATS:
        fail(f"--format {format!r}: expected one of {', '.join(EXPORT_FORMATS)}")
    to_stdout = out is None or str(out) == "-"
    if out is not None and not to_stdout and out.is_dir():
        suffix = {"markdown": "md"}.get(format, format)
        fail(f"cannot write {out}: it is a folder; give a file path such as {out / ('export.' + suffix)}")
    if format == "markdown":
        md = leaderboard_markdown(runs)
        if out is None or to_stdout:
            sys.stdout.write(md)
        else:
            out.write_text(md, encoding="utf-8")
            note(f"leaderboard: {out}")
        return
    if format == "parquet" and out is None:
        if len(run_dirs) != 1:
            fail("--format parquet over several runs needs --out FILE")
        out = run_dirs[0] / "export.parquet"
    n = export_runs(runs, format, out, judge_id=judge, csv_formula_guard=not raw_csv)
    if out is not None and str(out) != "-":
        note(f"exported {n} rows -> {out}")


__all__ = ["export_cmd"]
