"""The build agents' prompt templates (``mmsafe/data/build/prompts.yaml``)."""

from __future__ import annotations

import hashlib
from functools import lru_cache
from importlib import resources
from typing import Any

import yaml


@lru_cache(maxsize=1)
def prompts() -> dict[str, Any]:
    """The packaged prompt templates by name (read once)."""
    return yaml.safe_load(resources.files("mmsafe").joinpath("data/build/prompts.yaml").read_text())


def render(name: str, **kw: Any) -> str:
    """The template ``name`` filled with ``kw`` (str.format)."""
    return prompts()[name].format(**kw)


def prompt_hash(*names: str) -> str:
    """A short hash of the named templates (part of a stage's identity)."""
    p = prompts()
    return hashlib.sha256("\x1e".join(str(p[n]) for n in names).encode()).hexdigest()[:12]
