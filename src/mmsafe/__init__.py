"""mmsafe: safety benchmarks for multimodal LLMs — build, run, judge, measure, defend.

The public Python API lives in :mod:`mmsafe.api` and is reachable from here, loaded on
first use (``import mmsafe`` imports nothing else)::

    import mmsafe
    outcome = mmsafe.run("benchmarks/demo", "mock/refuser", judge="keyword", out="runs/demo")

Functions: :func:`~mmsafe.api.load_benchmark`, :func:`~mmsafe.api.import_benchmark`,
:func:`~mmsafe.api.run`, :func:`~mmsafe.api.judge`, :func:`~mmsafe.api.calibrate`,
:func:`~mmsafe.api.write_report`, :func:`~mmsafe.api.export`, :func:`~mmsafe.api.make_judge`,
:func:`~mmsafe.api.make_defense`, :func:`~mmsafe.api.plugins`. Base classes for plugins:
``Judge``, ``Provider``, ``Importer``, ``Attack``, ``Defense``, ``Moderator``. The registries:
:mod:`mmsafe.registry`. (``mmsafe.report`` is the report package; the report function is
``mmsafe.write_report``.)
"""

from __future__ import annotations

TYPE_CHECKING = False  # not ``typing.TYPE_CHECKING``: importing typing would double the import time

__version__ = "0.1.0"

__all__ = ["Attack", "Defense", "Importer", "Judge", "Moderator", "PluginError", "PluginInfo", "Provider",
           "__version__", "calibrate", "export", "import_benchmark", "judge", "load_benchmark", "make_defense",
           "make_judge", "plugins", "run", "write_report"]
_API = frozenset(__all__) - {"__version__"}

if TYPE_CHECKING:
    from typing import Any

    from mmsafe.api import (
        Attack,
        Defense,
        Importer,
        Judge,
        Moderator,
        PluginError,
        PluginInfo,
        Provider,
        calibrate,
        export,
        import_benchmark,
        judge,
        load_benchmark,
        make_defense,
        make_judge,
        plugins,
        run,
        write_report,
    )


def __getattr__(name: str) -> Any:
    """PEP 562: the API is imported on first use, so ``import mmsafe`` stays cheap."""
    if name in _API:
        from mmsafe import api
        value = getattr(api, name)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted([*globals(), *_API])

