"""mmsafe.report — the self-contained HTML report, the local viewer and exports.

- :func:`build_report` — ``mmsafe report RUN_DIR… --out report.html``
- :func:`make_app` / :func:`serve` — ``mmsafe view RUN_DIR…`` (aiohttp, 127.0.0.1)
- :func:`export_run`, :func:`leaderboard_markdown` — ``mmsafe export``

Imports only the store, datasets (to read sample conversations), metrics and types.
"""

from __future__ import annotations

from typing import Any

from mmsafe.report.export import EXPORT_FORMATS, export_run, export_runs, leaderboard_markdown
from mmsafe.report.html import ReportStats, build_report, render_report
from mmsafe.report.runs import RunInfo, load_run, load_runs

__all__ = ["build_report", "render_report", "ReportStats", "RunInfo", "load_run", "load_runs",
           "export_run", "export_runs", "leaderboard_markdown", "EXPORT_FORMATS", "make_app", "serve"]


def __getattr__(name: str) -> Any:  # the viewer pulls in aiohttp.web: load it only when asked
    if name in ("make_app", "serve"):
        from mmsafe.report import viewer
        return getattr(viewer, name)
    raise AttributeError(name)
