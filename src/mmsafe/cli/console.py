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
from rich.console import Console, Group, RenderableType
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


def _wrap_header(header: str, width: int) -> str:
    """``header`` broken at spaces into lines of at most ``width`` (a longer word stays whole)."""
    lines: list[str] = []
    for word in header.split():
        if lines and len(lines[-1]) + 1 + len(word) <= width:
            lines[-1] += " " + word
        else:
            lines.append(word)
    return "\n".join(lines)


def table(title: str, columns: Sequence[str], rows: Sequence[Sequence[str]], *, caption: str | None = None,
          text_columns: Sequence[str] = (), width: int | None = None) -> RenderableType:
    """Rows for the terminal without cutting a figure: a table where a figure column is as
    wide as its widest figure (its header wraps to that width) and ``text_columns`` wrap or
    fold; when even that is wider than the terminal (``width``, default stdout's), one
    wrapped line per row (``name: header value, header value, ...``). Nothing ends in an
    ellipsis and no column is dropped."""
    mins: list[int] = []
    t = Table(title=title, caption=caption, box=box.SIMPLE_HEAD, pad_edge=False)
    for i, col in enumerate(columns):
        words = [len(w) for v in [col, *(str(r[i]) for r in rows)] for w in v.split()]
        if col in text_columns:
            mins.append(min(max(words, default=1), 12))  # long names fold
            t.add_column(col, overflow="fold")
            continue
        widest = max((len(str(r[i])) for r in rows), default=1)
        w = max(widest, max((len(x) for x in col.split()), default=1))
        mins.append(w)
        t.add_column(_wrap_header(col, w), overflow="fold", justify="right", min_width=widest)
    for r in rows:
        t.add_row(*(str(x) for x in r))
    if sum(mins) + 2 * (len(columns) - 1) <= (width or out.width):
        return t
    lines: list[RenderableType] = [Text(title, style="italic")]
    for r in rows:
        lines.append(Text(f"{r[0]}: " + ", ".join(f"{c} {v}" for c, v in zip(columns[1:], r[1:], strict=True))))
    if caption:
        lines.append(Text(caption, style="dim"))
    return Group(*lines)


__all__ = ["Piece", "bold", "counts", "err", "error_line", "fail", "note", "out", "say", "table", "text", "warn"]
