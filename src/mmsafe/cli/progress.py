"""One progress reporter for the long verbs (run, judge, build, dialogues, defend-eval, moderate, calibrate).

In a terminal it draws a bar on stderr; off a terminal (nohup, CI, a job scheduler, output
redirected) it prints one plain line on stderr at a steady interval — every 10 s, or
``MMSAFE_PROGRESS_INTERVAL`` seconds (0: none) — so a log shows the command is alive and how far
it got, then a last line when it ends (if it ran long enough to print one). Both show the total
of what was asked for (``--limit`` applied) from the start, never the whole benchmark first.

Feed it the runner's stats dict with :meth:`Reporter.update` (``done``, ``total``, ``errors``,
``cost_usd``, ``started``, …), or give it a ``poll`` function it calls itself (the build's ledger).
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable
from types import TracebackType
from typing import Any

from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    SpinnerColumn,
    TaskID,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

from .console import err

Update = Callable[[dict[str, Any]], None]
Stats = dict[str, Any]

ENV_INTERVAL = "MMSAFE_PROGRESS_INTERVAL"
DEFAULT_INTERVAL_S = 10.0


def progress_interval() -> float:
    """Seconds between progress lines off a terminal: ``$MMSAFE_PROGRESS_INTERVAL`` (0 turns them off), else 10."""
    raw = os.environ.get(ENV_INTERVAL, "").strip()
    if not raw:
        return DEFAULT_INTERVAL_S
    try:
        return max(0.0, float(raw))
    except ValueError:
        return DEFAULT_INTERVAL_S


def _duration(seconds: float) -> str:
    s = round(seconds)
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    return f"{s // 3600}h{s % 3600 // 60:02d}m"


def progress_line(label: str, stats: Stats, now: float | None = None) -> str:
    """The plain progress line: ``LABEL: 120/400 (30%), 3.2/s, errors 0, $0.0123, elapsed 37s, ETA 1m28s``."""
    now = time.time() if now is None else now
    done, total = int(stats.get("done") or 0), stats.get("total")
    elapsed = max(1e-6, now - float(stats.get("started") or now))
    rate = done / elapsed
    parts = [f"{done}/{total} ({100 * done / total:.0f}%)" if total else f"{done} done"]
    parts.append(f"{rate:.1f}/s")
    parts.append(f"errors {int(stats.get('errors') or 0)}")
    if stats.get("cost_usd"):
        parts.append(f"${float(stats['cost_usd']):.4f}")
    parts.append(f"elapsed {_duration(elapsed)}")
    if total and rate > 0 and done < total:
        parts.append(f"ETA {_duration((total - done) / rate)}")
    return f"{label}: " + ", ".join(parts)


class Reporter:
    """Progress of one long command on stderr: a bar in a terminal, a line every interval otherwise.

    Use as a context manager; :meth:`update` takes the stats dict (thread-safe enough: it swaps
    one reference). ``total`` is what was asked for; a stats dict that carries its own
    ``total`` (not None) replaces it. ``poll`` (optional) is called on each tick for fresh stats.
    """

    def __init__(self, label: str, total: int | None = None, *, poll: Callable[[], Stats] | None = None,
                 terminal: bool | None = None, interval: float | None = None):
        self.label = label
        self.terminal = err.is_terminal if terminal is None else terminal
        self.interval = progress_interval() if interval is None else interval
        self.poll = poll
        self.stats: Stats = {"done": 0, "total": total, "errors": 0, "cost_usd": 0.0, "started": time.time()}
        self.lines = 0  # plain lines printed so far
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._bar: Progress | None = None
        self._task: TaskID | None = None
        self._last_draw = 0.0

    # ------------------------------------------------------------------ feeding it

    def update(self, stats: Stats) -> None:
        """Take the latest stats (``done``, ``total``, ``errors``, ``cost_usd``, ``started``)."""
        # the reporter's own clock (the command's start, or the phase's): elapsed and rate never jump back
        fresh = {k: v for k, v in stats.items() if k != "started" and (v is not None or k != "total")}
        merged = {**self.stats, **fresh}
        if merged.get("total") is None:
            merged["total"] = self.stats.get("total")
        self.stats = merged
        if self._bar is not None:
            now = time.time()
            total = merged.get("total")
            if now - self._last_draw >= 0.1 or (total is not None and merged.get("done", 0) >= total):
                self._last_draw = now
                self._draw()

    def set_label(self, label: str, total: int | None = None) -> None:
        """A new phase (a build stage, the next defense): its label and total, counts from zero."""
        self.label = label
        self.stats = {"done": 0, "total": total, "errors": 0, "cost_usd": 0.0, "started": time.time()}
        if self._bar is not None and self._task is not None:
            self._bar.update(self._task, description=label)
            self._draw()

    # ------------------------------------------------------------------ drawing

    def _draw(self) -> None:
        if self._bar is None or self._task is None:
            return
        st = self.stats
        el = max(1e-6, time.time() - float(st.get("started") or time.time()))
        self._bar.update(self._task, completed=int(st.get("done") or 0), total=st.get("total"),
                         errors=int(st.get("errors") or 0), cost=float(st.get("cost_usd") or 0.0),
                         rate=int(st.get("done") or 0) / el)

    def _tick(self) -> None:
        wait = 0.5 if self.terminal else self.interval
        next_line = time.monotonic() + self.interval
        while not self._stop.wait(wait if self.terminal else max(0.05, next_line - time.monotonic())):
            if self.poll is not None:
                self.update(self.poll())
            if self.terminal:
                self._draw()
            elif time.monotonic() >= next_line:
                self.emit()
                next_line += self.interval

    def emit(self) -> None:
        """Print the plain progress line now."""
        err.print(progress_line(self.label, self.stats), soft_wrap=True, markup=False, highlight=False)
        self.lines += 1

    # ------------------------------------------------------------------ context

    def __enter__(self) -> Reporter:
        self.stats["started"] = time.time()
        if self.terminal:
            self._bar = Progress(SpinnerColumn(), TextColumn("{task.description}", markup=False), BarColumn(),
                                 MofNCompleteColumn(), TextColumn("{task.fields[rate]:.1f}/s"), TimeElapsedColumn(),
                                 TextColumn("ETA"), TimeRemainingColumn(), TextColumn("errors {task.fields[errors]}"),
                                 TextColumn("${task.fields[cost]:.4f}"), console=err, transient=False,
                                 refresh_per_second=5)
            self._task = self._bar.add_task(self.label, total=self.stats.get("total"), rate=0.0, errors=0, cost=0.0)
            self._bar.start()
        if self.terminal or (self.interval > 0):
            self._thread = threading.Thread(target=self._tick, name="mmsafe-progress", daemon=True)
            self._thread.start()
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=2)
        if self.poll is not None:
            try:
                self.update(self.poll())
            except Exception:  # the source may be gone on the way out; the last stats stand
                pass
        if self._bar is not None:
            self._draw()
            self._bar.stop()
        elif self.lines and exc_type is None:  # a log that had progress lines gets the last one too
            self.emit()


def progress_bar(total_hint: int | None, label: str) -> tuple[Reporter, Update]:
    """A :class:`Reporter` and its update callback (the runner's ``on_progress``)."""
    r = Reporter(label, total_hint or None)
    return r, r.update


__all__ = ["DEFAULT_INTERVAL_S", "ENV_INTERVAL", "Reporter", "Update", "progress_bar", "progress_interval",
           "progress_line"]
