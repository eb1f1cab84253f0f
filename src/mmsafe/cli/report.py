"""``mmsafe report`` (one self-contained HTML file) and ``mmsafe view`` (a local web viewer)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from .app import app
from .console import fail, say
from .options import SiGrouping, out_option, si_grouping_value

RunDirs = Annotated[list[Path], typer.Argument(help="one or more run directories")]


@app.command()
def report(
    run_dirs: RunDirs,
    out: Annotated[Path, out_option("HTML file to write", file=True)] = Path("report.html"),
    title: Annotated[str | None, typer.Option(metavar="TEXT", help="page title",
                                                 show_default="from the runs")] = None,
    examples: Annotated[int, typer.Option(min=0, metavar="N",
                                          help="example samples shown per run (behind a content warning)")] = 12,
    si_grouping: SiGrouping = None,
) -> None:
    """Write one self-contained HTML report (no network) over one or more runs."""
    from mmsafe.report import build_report
    if out.is_dir():
        fail(f"cannot write {out}: it is a folder; give a file path such as {out / 'report.html'}")
    st = build_report(list[Path | str](run_dirs), out, title=title, examples=examples,
                      si_grouping=si_grouping_value(si_grouping))
    say(f"report: {st.path} ({st.bytes / 1e6:.2f} MB, {st.n_runs} run(s), built in {st.seconds:.2f}s)")


@app.command()
def view(
    run_dirs: RunDirs,
    host: Annotated[str, typer.Option(
        metavar="HOST", help="address to bind (anything but loopback exposes harmful content)")] = "127.0.0.1",
    port: Annotated[int, typer.Option(min=0, metavar="PORT", max=65535, help="port to bind")] = 8765,
) -> None:
    """Browse samples, verdicts and jurors' reasoning in a local, read-only web viewer."""
    from mmsafe.report import serve
    try:
        serve(run_dirs, host=host, port=port, print_fn=say)
    except OSError as e:
        if e.filename is not None:
            raise
        fail(f"cannot serve on {host}:{port}: {e.strerror or e}")


__all__ = ["report", "view"]
