"""Benchmark construction: taxonomy discovery and the agents (preprocess, generate, image,
augment, select) behind ``mmsafe build``. Heavy modules are imported lazily by the stages."""

from __future__ import annotations

from typing import Any

from .config import STAGES, BuildConfig, load_config

__all__ = ["STAGES", "BuildConfig", "load_config", "run_build", "run_stage", "discover_taxonomy"]


def __getattr__(name: str) -> Any:
    if name in ("run_build", "run_stage"):
        from . import pipeline
        return getattr(pipeline, name)
    if name == "discover_taxonomy":
        from .taxonomy import discover_taxonomy
        return discover_taxonomy
    raise AttributeError(name)
