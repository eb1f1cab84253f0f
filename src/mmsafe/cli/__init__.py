"""The ``mmsafe`` command: one module per verb (or verb group) on one Typer app.

``app`` (the Typer application, :mod:`.app`) and ``main`` (the console script) are the
entry points; importing this package registers every verb. Exit statuses and the one-line
errors come from :mod:`mmsafe.errors`.
"""

from __future__ import annotations

# each module registers its verbs on `app` when imported (listed in app.VERB_ORDER)
from . import build, defend, demo, dialogues, export, importing, judge, plugins, report, run, store  # noqa: F401
from .app import app, main, version_cmd

app.command("version")(version_cmd)

__all__ = ["app", "main"]
