"""``mmsafe store copy SRC DST``: move a run between SQLite and PostgreSQL."""

from __future__ import annotations

from typing import Annotated

import typer

from .app import app, sub_app
from .console import say

store_app = sub_app("The run store: copy a run between SQLite (a run directory) and PostgreSQL.")
app.add_typer(store_app, name="store")


@store_app.command("copy")
def copy_cmd(
    src: Annotated[str, typer.Argument(
        metavar="SRC", help="a run directory, or postgresql://USER@HOST[:PORT]/DB#RUN")],
    dst: Annotated[str, typer.Argument(
        metavar="DST", help="a new run directory (SQLite), or postgresql://USER@HOST[:PORT]/DB[#RUN] "
                            "(RUN: the source's run name)")],
) -> None:
    """Copy a run (config, replies, verdicts of every judge, request log) into a store that holds
    none yet; the source is left as it is. Passwords come from PGPASSWORD, ~/.pgpass or
    MMSAFE_STORE_URL."""
    from mmsafe.store.copy import copy_between

    res = copy_between(src, dst)
    c = res.counts
    say(f"copied {c.get('responses', 0)} replies, {c.get('verdicts', 0)} verdicts, {c.get('judges', 0)} judges "
        f"and {c.get('requests', 0)} logged requests from {res.src} to {res.dst}")


__all__ = ["copy_cmd", "store_app"]
