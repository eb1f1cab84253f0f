"""One registry mechanism for everything a user can name: providers, judges, defenses,
importers, exporters, attacks and executors.

Built-ins and third-party plugins go through the same path. A built-in is registered
here by its import path (``"mmsafe.judges.rubric:RubricJudge"``) so nothing is
imported until it is used; a plugin package declares an entry point in the group
``mmsafe.<kind>``::

    # the plugin's pyproject.toml
    [project.entry-points."mmsafe.judges"]
    length = "mypkg.judges:LengthJudge"

and ``--judge length`` then finds it. Wherever a kind is named, ``module.path:Name``
also works for an object that is not registered at all (``--judge mypkg.judges:LengthJudge``).

A plugin that fails to import is a :class:`PluginError` (one line naming the plugin and
its package; the CLI exits 2) raised only when that plugin is asked for, so a broken
plugin never breaks commands that do not use it.
"""

from __future__ import annotations

import importlib
import inspect
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from importlib import metadata
from typing import Any

from mmsafe.types import ConfigError, InputError

KINDS: tuple[str, ...] = ("providers", "judges", "defenses", "importers", "exporters", "attacks", "executors")
"""The kinds of thing that can be registered; each has the entry-point group ``mmsafe.<kind>``."""

BUILTIN = "built-in"

_REF = re.compile(r"^(?P<module>[A-Za-z_][\w]*(?:\.[A-Za-z_][\w]*)*):(?P<attr>[A-Za-z_][\w]*(?:\.[A-Za-z_][\w]*)*)$")


class PluginError(ConfigError):
    """A plugin (or a ``module:Name`` reference) that cannot be loaded or is not what its kind needs."""


@dataclass
class Entry:
    """One registered object: its kind and name, where it comes from, and how to load it."""

    kind: str
    name: str
    target: str | object  # "module:attr" (loaded lazily) or the object itself
    origin: str = BUILTIN  # "built-in" or "<distribution> <version>"
    description: str = ""
    options: tuple[str, ...] = ()
    meta: dict[str, Any] = field(default_factory=dict)
    _loaded: Any = field(default=None, repr=False)

    @property
    def builtin(self) -> bool:
        return self.origin == BUILTIN

    def load(self) -> Any:
        """Import and return the registered object (cached); a failure is a one-line :class:`PluginError`."""
        if self._loaded is not None:
            return self._loaded
        if not isinstance(self.target, str):
            self._loaded = self.target
            return self._loaded
        try:
            self._loaded = load_reference(self.target)
        except _LoadFailure as e:
            if self.builtin:
                raise
            raise PluginError(f"plugin {self.kind[:-1]} {self.name!r} from {self.origin} "
                              f"({self.target}) cannot be loaded: {e.detail}") from None
        return self._loaded

    def meta_or_attr(self, key: str, default: Any = None) -> Any:
        """The registration meta ``key``; for an entry registered without it (a plugin found by entry
        point), the loaded object's attribute ``key`` (``default`` when it has none). A plugin that
        cannot be loaded raises its :class:`PluginError`."""
        if key in self.meta:
            return self.meta[key]
        return getattr(self.load(), key, default)

    def describe(self) -> str:
        """The description given at registration, else the first line of the object's docstring."""
        if self.description:
            return self.description
        doc = inspect.getdoc(self.load()) or ""
        return doc.strip().splitlines()[0] if doc.strip() else ""

    def option_names(self) -> tuple[str, ...]:
        """The options given at registration, else those of the object's ``options`` attribute or signature."""
        if self.options:
            return self.options
        obj = self.load()
        declared = getattr(obj, "options", None)
        if isinstance(declared, (tuple, list)) and all(isinstance(x, str) for x in declared):
            return tuple(declared)
        fn = obj.__init__ if inspect.isclass(obj) else obj
        try:
            params = inspect.signature(fn).parameters.values()
        except (TypeError, ValueError):
            return ()
        return tuple(p.name for p in params if p.kind is inspect.Parameter.KEYWORD_ONLY
                     and p.name not in ("name", "overwrite", "models_file", "spec"))


class _LoadFailure(PluginError):
    def __init__(self, ref: str, detail: str):
        super().__init__(f"{ref}: {detail}")
        self.detail = detail


def is_reference(text: str) -> bool:
    """True when ``text`` looks like ``module.path:Name`` (not a registered kind with an argument)."""
    return bool(_REF.match(text.strip()))


def load_reference(ref: str) -> Any:
    """Import ``module.path:Name`` and return the object; any failure is one line."""
    m = _REF.match(ref.strip())
    if not m:
        raise _LoadFailure(ref, "expected module.path:Name")
    try:
        obj: Any = importlib.import_module(m["module"])
    except ImportError as e:
        raise _LoadFailure(ref, f"cannot import {m['module']} ({type(e).__name__}: {e})") from None
    except Exception as e:  # a plugin module that raises at import time: any error
        raise _LoadFailure(ref, f"importing {m['module']} failed ({type(e).__name__}: {e})") from None
    for part in m["attr"].split("."):
        try:
            obj = getattr(obj, part)
        except AttributeError:
            raise _LoadFailure(ref, f"{m['module']} has no attribute {m['attr']!r}") from None
    return obj


def _dist_label(ep: metadata.EntryPoint) -> str:
    dist = getattr(ep, "dist", None)
    if dist is None:
        return "unknown package"
    try:
        return f"{dist.metadata['Name']} {dist.version}"
    except Exception:  # a dist-info without a readable METADATA
        return "unknown package"


class Registry:
    """Named objects of one kind: built-ins registered in code, plugins found by entry point.

    ``get(name)`` returns the loaded object; ``resolve(name)`` also accepts
    ``module.path:Name``. Entry points are read once, on first use, and their modules are
    imported only when that plugin is asked for.
    """

    def __init__(self, kind: str):
        if kind not in KINDS:
            raise ValueError(f"unknown registry kind {kind!r}")
        self.kind = kind
        self.group = f"mmsafe.{kind}"
        self._entries: dict[str, Entry] = {}
        self._plugins: dict[str, Entry] | None = None
        self._shadowed: list[Entry] = []

    # ------------------------------------------------------------------ registering

    def add(self, name: str, target: str | object, *, description: str = "", options: tuple[str, ...] = (),
            origin: str = BUILTIN, **meta: Any) -> Entry:
        """Register ``target`` (an object, or a lazy ``"module:attr"`` string) under ``name``."""
        if not name or any(c in name for c in "?&/ "):
            raise ValueError(f"{self.kind}: bad name {name!r}")
        e = Entry(self.kind, name, target, origin, description, tuple(options), dict(meta))
        self._entries[name] = e
        return e

    def register(self, name: str | None = None, *, description: str = "", options: tuple[str, ...] = (),
                 **meta: Any) -> Callable[[Any], Any]:
        """Decorator form of :meth:`add` for objects defined in Python (a plugin may use it at import time)."""

        def deco(obj: Any) -> Any:
            self.add(name or str(getattr(obj, "__name__", obj)), obj, description=description, options=options,
                     origin=BUILTIN if (getattr(obj, "__module__", "") or "").startswith("mmsafe.") else "python",
                     **meta)
            return obj

        return deco

    def _load_plugins(self) -> dict[str, Entry]:
        if self._plugins is None:
            found: dict[str, Entry] = {}
            try:
                eps = list(metadata.entry_points(group=self.group))
            except Exception:  # a broken distribution's metadata must not break the command
                eps = []
            for ep in eps:
                e = Entry(self.kind, ep.name, ep.value, _dist_label(ep))
                if ep.name in self._entries or ep.name in found:
                    self._shadowed.append(e)
                    continue
                found[ep.name] = e
            self._plugins = found
        return self._plugins

    # ------------------------------------------------------------------ looking up

    @property
    def shadowed(self) -> list[Entry]:
        """Plugins not used because a built-in (or an earlier plugin) has their name."""
        self._load_plugins()
        return self._shadowed

    def entries(self) -> list[Entry]:
        """Every registered entry of this kind: built-ins first, then plugins, each sorted by name."""
        plugins = self._load_plugins()
        return (sorted(self._entries.values(), key=lambda e: e.name)
                + sorted((e for n, e in plugins.items() if n not in self._entries), key=lambda e: e.name))

    def names(self) -> list[str]:
        """All registered names (no plugin module is imported)."""
        return [e.name for e in self.entries()]

    def entry(self, name: str) -> Entry | None:
        """The entry registered as ``name``, or None."""
        return self._entries.get(name) or self._load_plugins().get(name)

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and self.entry(name) is not None

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())

    def get(self, name: str) -> Any:
        """The object registered as ``name`` (loaded now); an unknown name is a :class:`PluginError`."""
        e = self.entry(name)
        if e is None:
            raise PluginError(f"unknown {self.kind[:-1]} {name!r}; registered: {', '.join(self.names())} "
                              f"(or module.path:Name)")
        return e.load()

    def resolve(self, name: str) -> Any:
        """Like :meth:`get`, but ``module.path:Name`` loads an unregistered object."""
        if name in self:
            return self.get(name)
        if is_reference(name):
            return load_reference(name)
        return self.get(name)


def split_named(spec: str, reg: Registry) -> tuple[str, str]:
    """``NAME[:ARG]`` or ``module.path:Name[:ARG]`` -> (name or reference, ARG).

    A registered name wins; otherwise a head that reads as ``module.path:Name`` is taken as
    a reference, and whatever follows its second ``:`` is the argument.
    """
    head, sep, rest = spec.partition(":")
    if not sep or head in reg:
        return head.strip(), rest.strip()
    name, _, arg = rest.partition(":")
    ref = f"{head}:{name}"
    if is_reference(ref) and not name.strip().startswith("/"):
        return ref, arg.strip()
    return head.strip(), rest.strip()


def construct(obj: Any, *, what: str, spec: str, arg: str, options: dict[str, Any],
              context: dict[str, Any] | None = None) -> Any:
    """Build a judge, defense or moderator from a registered object and its spec.

    ``obj.from_spec(arg, options, spec=…, **context)`` when the object has one (context
    keys it does not accept are left out); otherwise ``obj(**options)`` with ``model=arg``
    when the spec has an argument. An option the object does not take is an
    :class:`InputError` naming the spec; so is a ``ValueError`` the object raises on its
    options. Any other exception raised by a plugin's (not mmsafe's) object becomes a
    one-line :class:`PluginError` naming the spec.
    """
    try:
        return _construct(obj, what=what, spec=spec, arg=arg, options=options, context=context)
    except InputError:
        raise
    except ValueError as e:
        raise InputError(f"{what} {spec!r}: {e}") from None
    except Exception as e:
        if (getattr(obj, "__module__", None) or "").startswith("mmsafe."):
            raise  # a bug of mmsafe's own: keep the traceback
        raise PluginError(f"{what} {spec!r}: {getattr(obj, '__module__', '?')}."
                          f"{getattr(obj, '__qualname__', obj)} failed ({type(e).__name__}: {e})") from None


def _construct(obj: Any, *, what: str, spec: str, arg: str, options: dict[str, Any],
               context: dict[str, Any] | None) -> Any:
    ctx = dict(context or {})
    from_spec = getattr(obj, "from_spec", None)
    if callable(from_spec):
        return from_spec(arg, dict(options), **accepted_kwargs(from_spec, {"spec": spec, **ctx}))
    if not callable(obj):
        raise PluginError(f"{what} {spec!r}: {obj!r} is neither a class nor a function")
    kwargs: dict[str, Any] = dict(options)
    if arg:
        kwargs["model"] = arg
    try:
        sig = inspect.signature(obj)
    except (TypeError, ValueError):
        sig = None
    if sig is not None:
        params = sig.parameters
        takes_any = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())
        bad = [k for k in kwargs if k not in params and not takes_any]
        if bad:
            allowed = [n for n, p in params.items() if p.kind in (inspect.Parameter.KEYWORD_ONLY,
                                                                 inspect.Parameter.POSITIONAL_OR_KEYWORD)]
            if bad == ["model"]:
                raise InputError(f"{what} {spec!r}: takes no model argument")
            raise InputError(f"{what} {spec!r}: unknown option {bad[0]!r} "
                             f"(options: {', '.join(allowed) or 'none'})")
        kwargs.update(accepted_kwargs(obj, ctx))
    return obj(**kwargs)


def accepted_kwargs(fn: Any, kwargs: dict[str, Any]) -> dict[str, Any]:
    """The items of ``kwargs`` that ``fn`` accepts (all of them when it takes ``**kwargs``)."""
    try:
        params = inspect.signature(fn).parameters
    except (TypeError, ValueError):
        return kwargs
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
        return kwargs
    return {k: v for k, v in kwargs.items() if k in params}


_REGISTRIES: dict[str, Registry] = {}


def registry(kind: str) -> Registry:
    """The registry of ``kind`` (one of :data:`KINDS`), with mmsafe's built-ins in it."""
    reg = _REGISTRIES.get(kind)
    if reg is None:
        reg = Registry(kind)
        _REGISTRIES[kind] = reg
        from mmsafe._builtins import register_builtins
        register_builtins(reg)
    return reg


def all_entries() -> Iterator[Entry]:
    """Every entry of every kind, in the order of :data:`KINDS`."""
    for k in KINDS:
        yield from registry(k).entries()


def reset() -> None:
    """Forget what was read from entry points (tests that install a plugin at run time call this)."""
    _REGISTRIES.clear()


__all__ = ["BUILTIN", "KINDS", "Entry", "PluginError", "Registry", "accepted_kwargs", "all_entries", "construct",
           "is_reference", "load_reference", "registry", "reset", "split_named"]
