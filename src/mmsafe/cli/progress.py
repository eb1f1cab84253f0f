"""The progress bar of the long verbs (run, judge, dialogues), drawn on stderr in a terminal."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    SpinnerColumn,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

from .console import err

Update = Callable[[dict[str, Any]], None]


def progress_bar(total_hint: int, label: str) -> tuple[Progress, Update]:
    """A bar (disabled off a terminal) and the callback that feeds it the runner's stats dict
    (``done``, ``total``, ``errors``, ``cost_usd``, ``sent``, ``judged``, ``started``)."""
    progress = Progress(SpinnerColumn(), TextColumn("{task.description}", markup=False), BarColumn(),
                        MofNCompleteColumn(), TextColumn("{task.fields[rate]:.1f}/s"), TimeElapsedColumn(),
                        TextColumn("ETA"), TimeRemainingColumn(), TextColumn("errors {task.fields[errors]}"),
                        TextColumn("${task.fields[cost]:.4f}"), console=err, transient=False,
                        disable=not err.is_terminal, refresh_per_second=5)
    task = progress.add_task(label, total=total_hint, rate=0.0, errors=0, cost=0.0)
    last = [0.0]

    def update(stats: dict[str, Any]) -> None:
        now = time.time()
        if now - last[0] < 0.1 and (stats.get("total") is None or stats["done"] < stats["total"]):  # <= 10 redraws/s
            return
        last[0] = now
        el = max(1e-6, now - stats["started"])
        progress.update(task, completed=stats["done"], total=stats["total"], errors=stats["errors"],
                        cost=stats["cost_usd"], rate=(stats["sent"] + stats["judged"]) / el)

    return progress, update


__all__ = ["Update", "progress_bar"]
