"""What every part of the runner shares, below :mod:`~mmsafe.runner.run`,
:mod:`~mmsafe.runner.modes` and :mod:`~mmsafe.runner.summary`: the run modes, the
:class:`Defense` protocol the runner wraps a target in, and :class:`PreflightError`.

This module imports nothing of the runner, so the runner's modules import it (and each
other only downwards) without a cycle.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, Protocol, get_args, runtime_checkable

from mmsafe.types import InputError

if TYPE_CHECKING:
    from mmsafe.models import CostLedger, ResponseCache
    from mmsafe.types import Message

RunMode = Literal["fixed", "live", "adaptive"]
"""How a sample's conversation is driven (``mmsafe run --mode``)."""

MODES: tuple[RunMode, ...] = get_args(RunMode)
MULTI_TURN_MODES: tuple[RunMode, ...] = ("live", "adaptive")


@dataclass(frozen=True)
class ModeSpec:
    """A run mode as the ``executors`` registry lists it (``type="mode"``)."""

    name: RunMode
    multi_turn: bool  # the target answers more than the last turn (one record per conversation)
    needs_attacker: bool  # --attacker is required
    description: str


FIXED_MODE = ModeSpec("fixed", multi_turn=False, needs_attacker=False,
                      description="send the pre-written history; the target writes the last reply")
LIVE_MODE = ModeSpec("live", multi_turn=True, needs_attacker=False,
                     description="the target answers every user turn itself; each turn judged")
ADAPTIVE_MODE = ModeSpec("adaptive", multi_turn=True, needs_attacker=True,
                         description="an attacker LLM drives the conversation (needs --attacker)")
_BUILTIN_MODES = {m.name: m for m in (FIXED_MODE, LIVE_MODE, ADAPTIVE_MODE)}


class PreflightError(InputError):
    """The benchmark or the target cannot make this run (found before any request; exit 2)."""


def mode_spec(name: str) -> ModeSpec:
    """The :class:`ModeSpec` registered as ``name`` in the ``executors`` registry.

    An unknown name, or an executor that is not one of the run modes this runner drives,
    is an :class:`~mmsafe.types.InputError` naming ``--mode`` and the choices."""
    from mmsafe.registry import registry

    reg = registry("executors")
    modes = [e.name for e in reg.entries() if e.meta.get("type") == "mode"]
    entry = reg.entry(name)
    if entry is None or entry.meta.get("type") != "mode":
        raise InputError(f"--mode {name!r}: choose one of {', '.join(modes)}")
    spec = entry.load()
    if not isinstance(spec, ModeSpec) or _BUILTIN_MODES.get(spec.name) != spec:
        raise InputError(f"--mode {name!r} (from {entry.origin}): this runner drives only the run modes "
                         f"{', '.join(MODES)}")
    return spec


@runtime_checkable
class Defense(Protocol):
    """What the runner needs of a defense wrapped around the target.

    :class:`mmsafe.defense.Defense` and its subclasses are one; a plugin defense need not
    subclass it. ``before`` returns ``{"action": "pass"|"inject"|"block", "system": str|None,
    "moderation": ...}``; ``after`` returns ``None`` to keep the reply, or ``{"reply": text,
    "moderation": ...}`` to replace it."""

    name: str
    identity: dict[str, Any]

    def bind(self, *, ledger: CostLedger | None = None, cache: ResponseCache | None = None) -> None:
        """Share the run's cost ledger and response cache with the defense's own model calls."""

    async def start(self) -> None:
        """Open connections."""

    async def close(self) -> None:
        """Close connections."""

    async def before(self, messages: list[Message], root: Path | None, system: str | None) -> dict[str, Any]:
        """Decide on the request before the target sees it."""

    async def after(self, messages: list[Message], reply: str, root: Path | None) -> dict[str, Any] | None:
        """Keep (``None``) or replace the target's reply."""


__all__ = ["ADAPTIVE_MODE", "FIXED_MODE", "LIVE_MODE", "MODES", "MULTI_TURN_MODES", "Defense", "ModeSpec",
           "PreflightError", "RunMode", "mode_spec"]
