"""Opening a benchmark from the command line: a folder that is not one says how to make one."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from mmsafe import errors

if TYPE_CHECKING:
    from mmsafe.datasets import Benchmark

HOW_TO_MAKE = "make one with mmsafe import KIND SRC --out DIR (or mmsafe build, mmsafe dialogues, mmsafe demo)"


def open_bench(path: Path) -> Benchmark:
    """:func:`mmsafe.api.load_benchmark`, whose error for a folder without ``benchmark.json`` ends with
    how to make a benchmark."""
    from mmsafe.api import load_benchmark
    if (path / "benchmark.json").is_file() or (path.name == "benchmark.json" and path.is_file()):
        return load_benchmark(path)
    with errors.note(HOW_TO_MAKE):
        return load_benchmark(path)


__all__ = ["HOW_TO_MAKE", "open_bench"]
