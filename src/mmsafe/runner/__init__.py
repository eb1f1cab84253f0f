"""Runs samples x target x mode into the store, resumably.

Modules, lowest first (each imports only those before it): :mod:`~mmsafe.runner.base`
(run modes, the :class:`~mmsafe.runner.base.Defense` protocol), :mod:`~mmsafe.runner.summary`
(the typed run summary), :mod:`~mmsafe.runner.options`, :mod:`~mmsafe.runner.modes`
(live / adaptive), :mod:`~mmsafe.runner.run` (``mmsafe run``), :mod:`~mmsafe.runner.rejudge`
(``mmsafe judge``) and :mod:`~mmsafe.runner.defend` (``mmsafe defend-eval``).

Names are loaded on first use, so reading a summary (:mod:`mmsafe.runner.summary`, as the
report does) does not import the model clients.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from mmsafe.runner.base import MODES, Defense, ModeSpec, PreflightError, RunMode
    from mmsafe.runner.options import RunOptions, RunOutcome
    from mmsafe.runner.run import execute
    from mmsafe.runner.summary import RunSummary

_WHERE = {"MODES": "base", "Defense": "base", "ModeSpec": "base", "PreflightError": "base", "RunMode": "base",
          "RunOptions": "options", "RunOutcome": "options", "execute": "run", "RunSummary": "summary"}

__all__ = ["MODES", "Defense", "ModeSpec", "PreflightError", "RunMode", "RunOptions", "RunOutcome", "RunSummary",
           "execute"]


def __getattr__(name: str) -> Any:
    """PEP 562: import the submodule holding ``name`` on first use."""
    mod = _WHERE.get(name)
    if mod is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    import importlib
    value = getattr(importlib.import_module(f"mmsafe.runner.{mod}"), name)
    globals()[name] = value
    return value
