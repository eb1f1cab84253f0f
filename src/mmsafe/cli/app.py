"""The Typer application every verb registers on, the one error wrapper, and ``main``.

Every option can also be set from the environment: ``MMSAFE_<VERB>_<OPTION>`` (e.g.
``MMSAFE_RUN_TARGET``, ``MMSAFE_BUILD_TAXONOMY_PANEL``; ``--help`` names each one), and
``--models`` from ``MMSAFE_MODELS``. Errors that leave a command go through
:func:`guarded`, which asks :func:`mmsafe.errors.classify` for the exit status and the one line.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Annotated, Any

import typer
from typer.core import TyperGroup

import mmsafe
from mmsafe.errors import EXIT_INTERRUPTED, INTERRUPTED_LINE, classify

from .console import err, error_line, out

ENV_PREFIX = "MMSAFE"
# options that must not be set from the environment (MMSAFE_RUN_HELP=1 would print help)
_NO_ENV = frozenset({"help", "version", "install_completion", "show_completion"})

# the order `mmsafe --help` lists the verbs in (a verb missing here is listed after these)
VERB_ORDER = ("import", "run", "judge", "calibrate", "dialogues", "moderate", "defend-eval", "serve-guard", "report",
              "view", "export", "store", "plugins", "demo", "version", "build")

CONTEXT_SETTINGS: dict[str, Any] = {
    "auto_envvar_prefix": ENV_PREFIX,
    "help_option_names": ["--help", "-h"],
    "max_content_width": 120,
}


@contextmanager
def guarded() -> Iterator[None]:
    """Known errors -> one line on stderr and their exit status (:mod:`mmsafe.errors`); never a traceback.

    Anything the map does not know is a bug and keeps its traceback.
    """
    try:
        yield
    except BaseException as e:  # typer.Exit, usage errors, SystemExit: not in the map, so raised as they are
        failure = classify(e)
        if failure is None:
            raise
        if failure.code == EXIT_INTERRUPTED:
            err.print(INTERRUPTED_LINE, soft_wrap=True)
        else:
            error_line(failure.message)
        raise typer.Exit(failure.code) from None


def _no_env(cmd: Any, ctx: Any) -> None:
    for p in cmd.get_params(ctx):
        if p.name in _NO_ENV and hasattr(p, "allow_from_autoenv"):
            p.allow_from_autoenv = False


class Group(TyperGroup):
    """mmsafe's command groups: subcommands run inside :func:`guarded`, verbs listed in :data:`VERB_ORDER`."""

    # (click is vendored by recent typer versions: contexts and commands are typed Any here)

    def list_commands(self, ctx: Any) -> list[str]:
        rank = {name: i for i, name in enumerate(VERB_ORDER)}
        return sorted(self.commands, key=lambda name: rank.get(name, len(rank)))  # stable: subcommands as declared

    def make_context(self, info_name: Any, args: Any, parent: Any = None, **extra: Any) -> Any:
        if parent is None:  # the root: its own --help/--version; subcommands are patched in resolve_command
            _no_env(self, self.context_class(self))
        return super().make_context(info_name, args, parent=parent, **extra)

    def resolve_command(self, ctx: Any, args: Any) -> Any:
        name, cmd, rest = super().resolve_command(ctx, args)
        if cmd is not None:
            _no_env(cmd, ctx)
        return name, cmd, rest

    def invoke(self, ctx: Any) -> Any:
        with guarded():
            return super().invoke(ctx)


app = typer.Typer(
    cls=Group,
    name="mmsafe",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,  # help is printed as written: no markup, no emoji (`moderator:guard:MODEL`)
    context_settings=CONTEXT_SETTINGS,
    add_completion=True,
    help="mmsafe: build, run, judge, measure and defend safety benchmarks for multimodal LLMs.\n\n"
         "Exit status: 0 done; 1 done but incomplete (failures above --fail-on-error, stopped by --max-cost); "
         "2 bad input (one line names the file, line, field, option or endpoint); 130 interrupted (re-run to "
         "resume). Every option can also be set as MMSAFE_<VERB>_<OPTION> (see each verb's --help).",
)


def sub_app(help: str, **kwargs: Any) -> typer.Typer:
    """A verb group (e.g. ``mmsafe build …``) with the root's settings."""
    # not the root's auto_envvar_prefix: the group's own is derived from it (MMSAFE_BUILD_…)
    settings = {k: v for k, v in CONTEXT_SETTINGS.items() if k != "auto_envvar_prefix"}
    return typer.Typer(cls=Group, rich_markup_mode=None, context_settings=settings, help=help, **kwargs)


def _print_version(value: bool) -> None:
    if value:
        out.print(mmsafe.__version__)
        raise typer.Exit()


@app.callback()
def root(
    version: Annotated[bool | None, typer.Option("--version", callback=_print_version, is_eager=True,
                                                    help="print the mmsafe version and exit")] = None,
) -> None:
    """mmsafe: build, run, judge, measure and defend safety benchmarks for multimodal LLMs."""


def version_cmd() -> None:
    """Print the mmsafe version (same as mmsafe --version)."""
    out.print(mmsafe.__version__)


def main() -> None:
    """The ``mmsafe`` console script."""
    from mmsafe.runtime import tune_gc
    tune_gc()
    try:
        app()
    except KeyboardInterrupt:  # outside a command (while parsing); inside one, guarded() says more
        err.print("interrupted")
        sys.exit(EXIT_INTERRUPTED)


__all__ = ["CONTEXT_SETTINGS", "ENV_PREFIX", "VERB_ORDER", "Group", "app", "guarded", "main", "sub_app"]
