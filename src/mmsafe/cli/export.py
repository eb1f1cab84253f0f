"""``mmsafe export RUN… --format F``: per-sample rows (csv, jsonl, parquet) or a markdown leaderboard."""

from __future__ import annotations

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
                                        help="csv | jsonl | parquet | markdown (leaderboard) | a plugin "
                                             "exporter | module.path:Name")],
    out: Annotated[Path | None, out_option(
        "file to write ('-': stdout)", file=True, show_default="stdout; parquet: RUN_DIR/export.parquet")] = None,
    judge: Annotated[str | None, typer.Option(
        "--judge", metavar="JUDGE_ID", help="judge id for the label columns", show_default="the primary judge")
    ] = None,
    raw_csv: Annotated[bool, typer.Option(
        help="do not prefix CSV cells that look like spreadsheet formulas with '")] = False,
) -> None:
    """Export a run's per-sample rows (csv, jsonl, parquet) or the runs' leaderboard (markdown); a plugin
    exporter (mmsafe plugins) or module.path:Name also works."""
    from mmsafe import api
    from mmsafe.registry import registry
    from mmsafe.report.export import exporter_kind
    if out is not None and str(out) != "-" and out.is_dir():
        suffix = {"markdown": "md"}.get(format, format)
        fail(f"cannot write {out}: it is a folder; give a file path such as {out / ('export.' + suffix)}")
    if format == "parquet" and out is None:
        if len(run_dirs) != 1:
            fail("--format parquet over several runs needs --out FILE")
        out = run_dirs[0] / "export.parquet"
    n = api.export(list[Path | str](run_dirs), format, out, judge_id=judge, csv_formula_guard=not raw_csv)
    if out is not None and str(out) != "-":
        entry = registry("exporters").entry(format)
        leaderboard = entry is not None and exporter_kind(entry)[0] == "leaderboard"
        note(f"leaderboard of {n} run(s): {out}" if leaderboard else f"exported {n} rows -> {out}")


__all__ = ["export_cmd"]
