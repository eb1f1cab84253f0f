"""The Jinja2 environment (autoescape always on) and the packaged static files."""

from __future__ import annotations

import functools
from importlib import resources
from typing import Any

import jinja2


def _pct(x: Any, digits: int = 1) -> str:
    if x is None or isinstance(x, bool) or not isinstance(x, (int, float)):
        return "–"
    return f"{100 * x:.{digits}f}%"


def _num(x: Any, digits: int = 3) -> str:
    if x is None or isinstance(x, bool) or not isinstance(x, (int, float)):
        return "–"
    return f"{x:.{digits}f}"


def _int(x: Any) -> str:
    if x is None or isinstance(x, bool) or not isinstance(x, (int, float)):
        return "–"
    return f"{int(x):,}"


def _usd(x: Any) -> str:
    if x is None or isinstance(x, bool) or not isinstance(x, (int, float)):
        return "–"
    return f"${x:,.4f}"


@functools.lru_cache(maxsize=1)
def env() -> jinja2.Environment:
    """The Jinja environment of the report and viewer templates (autoescaped, with number filters)."""
    e = jinja2.Environment(
        loader=jinja2.PackageLoader("mmsafe", "data/report"),
        autoescape=True,  # every template is HTML; data is never marked safe
        undefined=jinja2.ChainableUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    e.filters.update(pct=_pct, num=_num, int=_int, usd=_usd)
    return e


@functools.lru_cache(maxsize=16)
def static_text(name: str) -> str:
    """A packaged static file of the report/viewer (CSS, JS)."""
    return resources.files("mmsafe").joinpath("data", "report", name).read_text(encoding="utf-8")
