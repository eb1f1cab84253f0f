"""Moved: ``mmsafe defend-eval`` drives runs, so it lives in :mod:`mmsafe.runner.defend`.

This alias is kept only while the CLI still imports it from here; it makes ``defense``
import ``runner`` (a package cycle), so it goes as soon as the CLI imports
``mmsafe.runner.defend``.
"""

from __future__ import annotations

from mmsafe.runner.defend import evaluate_defenses, over_refusal

__all__ = ["evaluate_defenses", "over_refusal"]
