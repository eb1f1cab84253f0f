"""Check every endpoint a command will use before it writes or sends anything.

A command is made of parts that hold endpoints: the target's :class:`EndpointConfig`, a
judge (its ``endpoints``), a defense (a moderator's ``cfg``, a guard judge), an attacker.
:func:`endpoint_configs` finds them all (a short walk of the parts' attributes, so a
plugin's judge or defense is covered without registering anything) and
:func:`check_endpoints` builds each one's provider and asks it for its credentials: a
missing key, an unknown provider, a missing optional extra or an unreadable local model
is one :class:`~mmsafe.types.ConfigError` (exit 2) while the output folder is still
untouched and no request has been made.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from mmsafe.models.base import EndpointConfig
from mmsafe.models.registry import build_provider

_MAX_DEPTH = 3


def _walk(obj: Any, depth: int, seen: set[int]) -> Iterator[EndpointConfig]:
    if obj is None or id(obj) in seen or depth > _MAX_DEPTH:
        return
    seen.add(id(obj))
    if isinstance(obj, EndpointConfig):
        yield obj
        return
    if isinstance(obj, (list, tuple, set, frozenset)):
        for item in obj:
            yield from _walk(item, depth, seen)
        return
    if isinstance(obj, dict):
        for item in obj.values():
            yield from _walk(item, depth, seen)
        return
    if isinstance(obj, (str, bytes, int, float, bool)) or not hasattr(obj, "__dict__"):
        return
    for value in vars(obj).values():
        if isinstance(value, (EndpointConfig, list, tuple, dict)) or hasattr(value, "__dict__"):
            yield from _walk(value, depth + 1, seen)


def endpoint_configs(*parts: Any) -> list[EndpointConfig]:
    """Every distinct endpoint (by name and base URL) held by ``parts`` (configs, judges, defenses …)."""
    found: dict[tuple[str, str | None, tuple[str, ...]], EndpointConfig] = {}
    seen: set[int] = set()
    for part in parts:
        for cfg in _walk(part, 0, seen):
            found.setdefault((cfg.name, cfg.base_url, tuple(cfg.base_urls)), cfg)
    return list(found.values())


def check_endpoints(*parts: Any) -> list[EndpointConfig]:
    """Build each endpoint's provider and check its credentials; the first problem raises (ConfigError).

    Nothing is started: no session is opened, no server launched, no request sent."""
    cfgs = endpoint_configs(*parts)
    for cfg in cfgs:
        build_provider(cfg).check_credentials()
    return cfgs


__all__ = ["check_endpoints", "endpoint_configs"]
