"""The ``mmsafe`` command: one module per verb (or verb group) on one Typer app.

``app`` (the Typer application, :mod:`.app`) and ``main`` (the console script) are the
entry points; importing this package registers every verb. Exit statuses and the one-line
errors come from :mod:`mmsafe.errors`.
"""

from __future__ import annotations

from . import importing as _importing  # noqa: F401  (each import registers its verbs, in --help order)
from . import build as _build  # noqa: F401
from . import run as _run  # noqa: F401
from . import judge as _judge  # noqa: F401
from . import dialogues as _dialogues  # noqa: F401
from . import defend as _defend  # noqa: F401
from . import report as _report  # noqa: F401
from . import export as _export  # noqa: F401
from . import plugins as _plugins  # noqa: F401
from . import demo as _demo  # noqa: F401
from .app import app, main, version_cmd

app.command("version")(version_cmd)

__all__ = ["app", "main"]
