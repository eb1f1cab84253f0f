"""mmsafe's built-in attacks as entries of the "attacks" registry (see :mod:`mmsafe._builtins`).

Every entry has ``type`` in its meta:

- ``text``: a local text transform, ``fn(text, *, seed=0) -> str | TransformResult``
  (:func:`mmsafe.attacks.transforms.apply_local`);
- ``text-llm``: an LLM text transform, ``async fn(text, *, client, seed=0, language="French",
  params=None) -> str | TransformResult`` (:func:`~mmsafe.attacks.transforms.apply_text_transform`);
- ``visual``: ``fn(*, text, instruction, image, seed, options) -> VisualResult``
  (:func:`mmsafe.attacks.visual.apply_visual`);
- ``dialogue-method``: the generator instructions of a ``mmsafe dialogues --methods`` method, a
  string or a function of no arguments returning it (:func:`mmsafe.attacks.dialogues.parse_methods`);
- ``adaptive``: an attack class for ``--mode adaptive --attack NAME``, a subclass of
  :class:`mmsafe.attacks.base.Attack` (``crescendo``, ``pair``, ``tap``, ``goat``).

Targets are ``"module:attr"`` strings so that listing the registry imports nothing (Pillow and
numpy stay unloaded until a visual transform is used).

A plugin's attack (found by entry point, or named ``module.path:Name``) has no registration
meta: its type is its ``type`` attribute when it has one, else read from its shape (see
:func:`attack_type`).
"""

from __future__ import annotations

import inspect
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from mmsafe.registry import Entry, Registry

ATTACK_TYPES = ("text", "text-llm", "visual", "dialogue-method", "adaptive")
"""The values of an "attacks" entry's ``type``."""

_T = "mmsafe.attacks.transforms"
_V = "mmsafe.attacks.visual"

TEXT = (
    ("base64", "base64_wrap", "the request base64-encoded, asked to be decoded and answered"),
    ("leetspeak", "leetspeak_wrap", "the request in leetspeak"),
    ("rot13", "rot13_wrap", "the request ROT13-encoded, asked to be decoded and answered"),
    ("role_play", "role_play", "the request put to a character in a fictional scene (template)"),
    ("research_framing", "research_framing", "the request framed as research or coursework (template)"),
    ("refusal_suppression", "refusal_suppression", "rules forbidding apologies and refusal words (template)"),
    ("prefix_injection", "prefix_injection", "the reply must begin with an affirmative prefix (template)"),
)
TEXT_LLM = (
    ("paraphrase", "paraphrase", "an LLM rewrites the request with other words"),
    ("translate", "translate", "an LLM translates the request (augment.languages)"),
    ("role_play_llm", "role_play_llm", "an LLM rewrites the request as a role-play scene"),
    ("research_framing_llm", "research_framing_llm", "an LLM rewrites the request with a research framing"),
)
VISUAL = (
    ("figstep", "transform_figstep", "FigStep: the instruction drawn as a list to complete; benign text prompt",
     ("size",)),
    ("figstep_pro", "transform_figstep_pro", "FigStep-Pro: the FigStep figure cut into sub-figures",
     ("parts", "size", "direction")),
    ("noise", "transform_noise", "Gaussian noise on the item's image", ("sigma",)),
    ("blur", "transform_blur", "Gaussian blur of the item's image", ("radius",)),
    ("jpeg", "transform_jpeg", "the item's image re-encoded as a low-quality JPEG", ("quality",)),
    ("rotate", "transform_rotate", "the item's image rotated", ("degrees",)),
    ("blank", "transform_blank", "a plain white image instead of the item's", ("size",)),
    ("unrelated", "transform_unrelated", "a seeded abstract image unrelated to the request", ("size",)),
)
ADAPTIVE: tuple[tuple[str, str, str, tuple[str, ...]], ...] = (
    ("crescendo", "mmsafe.attacks.adaptive:AdaptiveAttack",
     "Crescendo-style attacker LLM with images and backtracking (--mode adaptive)",
     ("max_turns", "max_backtracks", "attacker_retries")),
    ("pair", "mmsafe.attacks.pair:Pair",
     "PAIR: parallel streams of single-turn prompt refinement with judge feedback; may rework the image",
     ("n_streams", "n_iterations", "attacker_retries")),
    ("tap", "mmsafe.attacks.tap:Tap",
     "TAP: tree of attacker refinements, off-topic pruning by an evaluator, width/depth limits; may rework the image",
     ("width", "branching", "depth", "on_topic")),
    ("goat", "mmsafe.attacks.goat:Goat",
     "GOAT: agentic attacker choosing a named technique each turn (reasoning recorded); may rework the image",
     ("max_turns", "attacker_retries")),
)
DIALOGUE_METHODS = (
    ("escalation", "start harmless and escalate gradually towards the request"),
    ("roleplay", "a fictional frame in which a character asks"),
    ("research", "a research or educational pretext"),
    ("demonstration", "a fabricated in-context demonstration: an earlier request answered with a placeholder"),
)


class MethodPrompt:
    """The generator instructions of a built-in dialogue method, read from the packaged prompt file on call."""

    def __init__(self, name: str):
        self.name = name
        self.__doc__ = f"dialogue method {name} (prompts/method_{name}.txt)"

    def __call__(self) -> str:
        from mmsafe.attacks.dialogues import load_prompt
        return load_prompt(f"method_{self.name}.txt").strip()

    def __repr__(self) -> str:
        return f"MethodPrompt({self.name!r})"


def attack_type(obj: Any) -> str | None:
    """The type of an attack object: its ``type`` attribute, else from its shape — a string or a
    function of no arguments: ``dialogue-method``; a class: ``adaptive``; an ``async`` function:
    ``text-llm``; a function with an ``image`` parameter: ``visual``; another function: ``text``."""
    t = getattr(obj, "type", None)
    if isinstance(t, str) and t in ATTACK_TYPES:
        return t
    if isinstance(obj, str):
        return "dialogue-method"
    if inspect.isclass(obj):
        return "adaptive"
    if inspect.iscoroutinefunction(obj):
        return "text-llm"
    if not callable(obj):
        return None
    try:
        params = inspect.signature(obj).parameters
    except (TypeError, ValueError):
        return None
    if not params:
        return "dialogue-method"
    return "visual" if "image" in params else "text"


def entry_type(e: Entry, *, strict: bool = False) -> str | None:
    """The type of a registered attack: its meta ``type``, else (a plugin) that of the loaded object.

    A plugin that cannot be loaded has no type (``None``), unless ``strict``: then its
    one-line :class:`~mmsafe.registry.PluginError` is raised."""
    from mmsafe.registry import PluginError
    t = e.meta.get("type")
    if isinstance(t, str):
        return t
    try:
        t = attack_type(e.load())
    except PluginError:
        if strict:
            raise
        return None
    if t is not None:
        e.meta["type"] = t
    return t


def attack_names(types: tuple[str, ...]) -> list[str]:
    """Registered attacks of ``types``: built-ins first, then plugins (imported to learn their type)."""
    from mmsafe.registry import registry
    return [e.name for e in registry("attacks").entries() if entry_type(e) in types]


def find_attack(name: str, types: tuple[str, ...]) -> tuple[Any, str] | None:
    """(object, type) of the registered attack or ``module.path:Name`` reference ``name`` when its type is one
    of ``types``; None when there is no such attack of those types. A plugin or reference that cannot be
    loaded raises its one-line :class:`~mmsafe.registry.PluginError`."""
    from mmsafe.registry import is_reference, load_reference, registry
    e = registry("attacks").entry(name)
    if e is not None:
        t = entry_type(e, strict=True)
        return (e.load(), t) if t in types else None
    if is_reference(name):
        obj = load_reference(name)
        t = attack_type(obj)
        return (obj, t) if t in types else None
    return None


def register_attacks(reg: Registry) -> None:
    """Add every built-in text, visual, dialogue-method and adaptive attack to the "attacks" registry."""
    for name, attr, desc in TEXT:
        reg.add(name, f"{_T}:{attr}", type="text", description=desc, options=("seed",))
    for name, attr, desc in TEXT_LLM:
        reg.add(name, f"{_T}:{attr}", type="text-llm", description=desc,
                options=("language",) if name == "translate" else ())
    for name, attr, desc, opts in VISUAL:
        reg.add(name, f"{_V}:{attr}", type="visual", description=desc, options=opts)
    for name, desc in DIALOGUE_METHODS:
        reg.add(name, MethodPrompt(name), type="dialogue-method", description=desc)
    for name, target, desc, fields in ADAPTIVE:
        reg.add(name, target, type="adaptive", description=desc, options=fields)


__all__ = ["ATTACK_TYPES", "MethodPrompt", "attack_names", "attack_type", "entry_type", "find_attack",
           "register_attacks"]
