"""Judges: (sample, conversation, response) -> Verdict, with a judge identity.

Specs (``--judge``)::

    keyword                                   refusal-phrase baseline
    rubric:MODEL[?template=F&rubrics=DIR&rubric=NAME&images=1&temperature=0&max_tokens=N]
    jury:MODEL[,MODEL…][?n=5&rounds=1&rule=majority|unanimity|threshold&threshold=3
                         &early_exit=1&foreperson=0&rubric=NAME&…]
    guard:MODEL[?format=prompt|messages|llama-guard-3|llama-guard-4|shieldgemma|wildguard|qwen3guard
                        |gpt-oss-safeguard&send=prompt|messages&…]     (docs/judges.md)
    any LLM judge: &max_tokens=N&context_window=N&reply_tokens=N&dialogue_tokens=N
    offline[?weights=DIR&threshold=P]

MODEL is a ``provider/model[@BASE_URL]`` spec or a name from the models file (role
``judge``). An unknown kind or option is a :class:`~mmsafe.models.ConfigError` naming the spec.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from mmsafe.judges.base import Judge
from mmsafe.judges.keyword import KeywordJudge
from mmsafe.models.base import ConfigError

JUDGE_KINDS = ("keyword", "rubric", "jury", "guard", "offline")  # the built-ins; plugins add more


def make_judge(spec: str, *, models_file: Path | None = None, context: Any = None,
               options: dict[str, Any] | None = None) -> Judge:
    """Build a judge from a command-line spec; ``options`` add to (and override) the spec's ``?k=v``.

    ``NAME`` is a judge registered in :func:`mmsafe.registry.registry` ("judges": the
    built-ins and plugins by entry point) or ``module.path:Name``.
    """
    from mmsafe.judges.llm import split_spec
    from mmsafe.registry import PluginError, construct, registry, split_named

    spec = (spec or "").strip()
    reg = registry("judges")
    name, arg = split_named(spec.partition("?")[0], reg)
    if name not in reg and ":" not in name:
        raise ConfigError(f"judge spec {spec!r}: unknown judge kind {name!r}; choose one of "
                          f"{', '.join(reg.names())} (or module.path:Name)")
    obj = reg.resolve(name)
    opts: dict[str, Any]
    if getattr(obj, "raw_spec", False):  # e.g. a cascade: its stages carry their own ?options
        arg, opts = spec[len(name) + 1:].strip() if spec.startswith(name + ":") else "", {}
    else:
        _, _, opts = split_spec(spec)
    opts.update({k: v for k, v in (options or {}).items() if v is not None})
    judge = construct(obj, what="judge spec", spec=spec, arg=arg, options=opts,
                      context={"models_file": models_file})
    if not isinstance(judge, Judge):
        raise PluginError(f"judge spec {spec!r}: {name} made a {type(judge).__name__}, not a mmsafe Judge")
    if getattr(judge, "identity", None) is None:  # a plugin that did not name itself
        from mmsafe.types import JudgeIdentity
        judge.identity = JudgeIdentity(kind=name, models=[arg] if arg else [],
                                       settings={k: str(v) for k, v in sorted(opts.items())})
    return judge


__all__ = ["JUDGE_KINDS", "Judge", "KeywordJudge", "make_judge"]
