"""``mmsafe demo``: the whole loop offline, against mock models on a loopback server."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from . import console
from .app import app
from .console import say
from .options import out_option


@app.command()
def demo(
    out: Annotated[Path, out_option("where the demo benchmark, runs and report go")] = Path("demo-run"),
    real: Annotated[bool, typer.Option(
        "--real", help="also run a real tiny LLM (SmolLM2-135M via llama.cpp; extra: local) next to the mocks")
    ] = False,
) -> None:
    """Offline end-to-end demo: build a small benchmark with typographic images, run mock
    reference models over a real loopback HTTP server, judge, summarise."""
    from mmsafe.build.demo import run_demo
    from mmsafe.report import build_report
    run_dirs = run_demo(out, console.out, console.err, table=console.table, **({"real": True} if real else {}))
    title = "mmsafe demo (mock models + a real 135M model)" if real else "mmsafe demo (mock models)"
    stats = build_report(list[Path | str](run_dirs), out / "report.html", title=title)
    say(f"report: {out / 'report.html'} (self-contained, {stats.bytes / 1024:.0f} KB) — "
        f"or browse: mmsafe view {' '.join(str(d) for d in run_dirs)}")


__all__ = ["demo"]
