"""Where the CLI's words go: ``out`` (results, stdout) and ``err`` (progress, warnings, errors).

Both consoles print text literally: Rich markup and emoji codes are off, so a message that
carries user or code text shows ``pip install 'mmsafe[anthropic]'`` and ``moderator:guard:MODEL``
as written. Style is given explicitly, as ``(text, style)`` pieces (see :func:`say`).
"""

from __future__ import annotations

import os
import sys
from collections.abc import Mapping, Sequence
from typing import NoReturn

import typer
from rich import box
from rich.console import Console
from rich.table import Table
from rich.text import Text

from mmsafe.errors import EXIT_USAGE

Piece = str | tuple[str, str] | Text
"""Literal text, or ``(text, style)``, or a ready :class:`rich.text.Text`."""


def _console(stderr: bool) -> Console:
    stream = sys.stderr if stderr else sys.stdout
    # a terminal, or COLUMNS set (a user's width, CI): that width; else a fixed one for logs
    width = None if stream.isatty() or os.environ.get("COLUMNS", "").isdigit() else (160 if stderr else 120)
    return Console(stderr=stderr, width=width, markup=False, emoji=False, highlight=False)


out = _console(stderr=False)
err = _console(stderr=True)


def bold(text: object) -> tuple[str, str]:
    """A bold piece for :func:`say`."""
    return (str(text), "bold")


def text(*pieces: Piece) -> Text:
    """Join literal pieces (never parsed as markup) into one :class:`Text`."""
    return Text.assemble(*pieces)


def say(*pieces: Piece) -> None:
    """Print one result line on stdout, literally."""
    out.print(text(*pieces))


def note(*pieces: Piece) -> None:
    """Print one line on stderr (progress, where a file went), literally and unwrapped."""
    err.print(text(*pieces), soft_wrap=True)


def warn(label: str, *pieces: Piece) -> None:
    """A yellow ``label`` and the rest of the line on stderr (e.g. ``stopped: …``)."""
    err.print(text((label, "yellow"), " ", *pieces), soft_wrap=True)


def error_line(message: str) -> None:
    """``error: MESSAGE`` on stderr, one unwrapped line."""
    err.print(text(("error:", "bold red"), " ", message), soft_wrap=True)


def fail(message: str, code: int = EXIT_USAGE) -> NoReturn:
    """Print ``error: MESSAGE`` and end the command with ``code`` (2: the user has something to fix)."""
    error_line(message)
    raise typer.Exit(code)


def counts(d: Mapping[str, object] | None, empty: str = "none") -> str:
    """Counts as words, count first: ``{"image": 50, "text": 500}`` -> ``50 image, 500 text``."""
    if not d:
        return empty
    return ", ".join(f"{v} {str(k).replace('_', ' ')}" for k, v in d.items())


def table(title: str, columns: Sequence[str], rows: Sequence[Sequence[str]], *, caption: str | None = None,
          text_columns: Sequence[str] = ()) -> Table:
    """A table that never cuts a figure: every column wraps or folds (figures right-aligned,
    ``text_columns`` left-aligned) when the terminal is narrow, never ends in an ellipsis."""
    t = Table(title=title, caption=caption, box=box.SIMPLE_HEAD, pad_edge=False)
    for col in columns:
        if col in text_columns:
            t.add_column(col, overflow="fold")
        else:
            t.add_column(col, overflow="fold", justify="right")
    for r in rows:
        t.add_row(*(str(x) for x in r))
    return t


__all__ = ["Piece", "bold", "counts", "err", "error_line", "fail", "note", "out", "say", "table", "text", "warn"]
