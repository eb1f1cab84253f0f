"""Importers: existing benchmarks in their own formats -> mmsafe benchmark directories.

Every importer has the signature
``fn(src: Path, out: Path, *, name=None, overwrite=False, **opts) -> BenchmarkManifest``
and writes atomically through :class:`~mmsafe.datasets.BenchmarkWriter`.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from pathlib import Path
from typing import Any

from mmsafe.types import BenchmarkManifest

from ..errors import DatasetError
from .figstep import FIGSTEP_PROMPT, import_figstep
from .generic import import_csv, import_jsonl
from .harmbench import import_harmbench, import_jbb
from .mmsafetybench import import_mmsafetybench
from .safebench import import_safebench
from .safemt import import_safemt

__all__ = [
    "IMPORTERS", "import_benchmark", "importer_options", "FIGSTEP_PROMPT",
    "import_safemt", "import_safebench", "import_figstep", "import_mmsafetybench",
    "import_harmbench", "import_jbb", "import_csv", "import_jsonl",
]

Importer = Callable[..., BenchmarkManifest]
"""An importer: ``fn(src, out, *, name=None, overwrite=False, **options) -> BenchmarkManifest``."""


class _Importers:
    """Read-only name -> importer view of the "importers" registry (kept for older callers)."""

    def _reg(self) -> Any:
        from mmsafe.registry import registry
        return registry("importers")

    def __contains__(self, kind: object) -> bool:
        return kind in self._reg()

    def __iter__(self) -> Any:
        return iter(self._reg().names())

    def __getitem__(self, kind: str) -> Importer:
        if kind not in self._reg():
            raise KeyError(kind)
        return self._reg().get(kind)

    def keys(self) -> list[str]:
        return list(self._reg().names())


IMPORTERS = _Importers()


def importer_options(kind: str) -> list[str]:
    """The keyword options an importer accepts (besides ``name`` and ``overwrite``)."""
    fn = _lookup(kind)
    return [p.name for p in inspect.signature(fn).parameters.values()
            if p.kind is inspect.Parameter.KEYWORD_ONLY and p.name not in ("name", "overwrite")]


def _lookup(kind: str) -> Importer:
    from mmsafe.registry import is_reference, registry
    reg = registry("importers")
    if not isinstance(kind, str) or (kind not in reg and not is_reference(kind)):
        raise DatasetError(f"unknown benchmark format {kind!r} "
                           f"(known: {', '.join(reg.names())}; or module.path:function)")
    fn = reg.resolve(kind)
    if not callable(fn):
        raise DatasetError(f"importer {kind!r} is not callable")
    return fn


def import_benchmark(kind: str, src: Path | str, out: Path | str, **opts: Any) -> BenchmarkManifest:
    """Import ``src`` (a benchmark in format ``kind``) into the benchmark directory ``out``.

    ``kind`` is a registered importer (built-in or plugin) or ``module.path:function``;
    ``opts`` are the importer's keyword options (``name``, ``overwrite`` and the
    format-specific ones); an unknown format or option raises :class:`DatasetError`.
    """
    fn = _lookup(kind)
    params = inspect.signature(fn).parameters.values()
    if not any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params):
        allowed = set(importer_options(kind)) | {"name", "overwrite"}
        unknown = sorted(set(opts) - allowed)
        if unknown:
            raise DatasetError(f"{src}: option {unknown[0]!r} is not understood by the {kind} "
                               f"importer (options: {', '.join(sorted(allowed))})")
    manifest = fn(Path(src), Path(out), **opts)
    if not isinstance(manifest, BenchmarkManifest):
        raise DatasetError(f"importer {kind!r} returned {type(manifest).__name__}, not a BenchmarkManifest")
    return manifest
