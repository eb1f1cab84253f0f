"""Naming models: ``provider/model[@BASE_URL]`` on the command line, or a name from a
YAML models file that lists endpoints with roles, concurrency, prices and capabilities.

models.yaml::

    models:
      gpt4o:
        provider: openai
        model: gpt-4o
        api_key_env: OPENAI_API_KEY       # the *name* of the variable, never the key
        roles: [target, judge]
        max_connections: 50
        price: {input: 2.5, output: 10}   # USD per 1M tokens
        params: {temperature: 0, max_tokens: 512}
      local-llava:
        spec: openai/llava-hf/llava-1.5-7b-hf@http://127.0.0.1:8000/v1
        capabilities: {image: true, audio: false}
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from mmsafe.models.base import ROLES, Capabilities, ConfigError, EndpointConfig, Provider


def _providers() -> Any:
    from mmsafe.registry import registry
    return registry("providers")


def known_provider(name: str) -> bool:
    """True for a registered provider (built-in or plugin) or a ``module.path:Class`` reference."""
    from mmsafe.registry import is_reference
    return name in _providers() or is_reference(name)


def default_capabilities(provider: str) -> Capabilities:
    """What ``provider`` can take unless the models file says otherwise."""
    reg = _providers()
    e = reg.entry(provider)
    caps = e.meta.get("capabilities") if e is not None else None
    if caps is None:
        try:
            caps = getattr(reg.resolve(provider), "default_capabilities", None)
        except Exception:  # a broken plugin fails later, when it is built, with its own one-line error
            caps = None
    return caps if isinstance(caps, Capabilities) else Capabilities()


# what follows '@' when it is a host (localhost, a dotted name or address, [IPv6], with or without :port or /path),
# not a model version such as claude-3-5-sonnet@20240620
_HOSTISH = re.compile(r"^(localhost|[\w-]+(\.[\w-]+)+|\[[0-9a-fA-F:.]+\]|[\w.-]+:\d+)(:\d+)?(/.*)?$")


def parse_spec(spec: str) -> dict[str, Any]:
    """``provider/model[@http(s)://base]`` -> {provider, model, base_url}."""
    s = spec.strip()
    base_url = None
    for marker in ("@http://", "@https://"):
        i = s.find(marker)
        if i >= 0:
            s, base_url = s[:i], s[i + 1:]
            break
    if "/" not in s:
        raise ConfigError(f"model spec {spec!r}: expected provider/model (e.g. openai/gpt-4o, mock/refuser) "
                          "or a name from the models file")
    provider, model = s.split("/", 1)
    at = model.rfind("@")
    if at >= 0 and _HOSTISH.match(model[at + 1:]):  # "m@127.0.0.1:8000/v1": a base URL without its scheme
        raise ConfigError(f"model spec {spec!r}: the base URL after @ needs its scheme: "
                          f"{provider}/{model[:at]}@http://{model[at + 1:]}")
    if not known_provider(provider):
        raise ConfigError(f"model spec {spec!r}: unknown provider {provider!r}; choose one of "
                          + ", ".join(sorted(_providers().names())) + " (or module.path:Class)")
    if not model:
        raise ConfigError(f"model spec {spec!r}: model name is empty")
    return {"provider": provider, "model": model, "base_url": base_url}


def load_models_file(path: Path) -> dict[str, Any]:
    """The ``models:`` mapping of a models file (name -> endpoint entry, each checked when used)."""
    try:
        data = yaml.safe_load(path.read_text())
    except FileNotFoundError:
        raise ConfigError(f"{path}: models file not found") from None
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f":{mark.line + 1}" if mark else ""
        raise ConfigError(f"{path}{where}: not valid YAML ({getattr(e, 'problem', e)})") from None
    if not isinstance(data, dict) or not isinstance(data.get("models"), dict):
        raise ConfigError(f"{path}: expected a top-level 'models:' mapping of name -> endpoint")
    models: dict[str, Any] = data["models"]
    return models


def _endpoint_from_entry(name: str, entry: dict[str, Any], source: str) -> EndpointConfig:
    if not isinstance(entry, dict):
        raise ConfigError(f"{source}: models.{name}: expected a mapping")
    e = dict(entry)
    if "spec" in e:
        e.update({k: v for k, v in parse_spec(str(e.pop("spec"))).items() if v is not None})
    if "gguf" in e:  # a local GGUF model file: the llama.cpp-backed `local` provider
        e.setdefault("provider", "local")
        e["model"] = str(e.pop("gguf"))
    if "tokenizer" in e and e.get("provider") == "hf":  # hf/PATH.gguf: its tokenizer from a directory
        e["params"] = {**(e.get("params") or {}), "tokenizer": e.pop("tokenizer")}
    if "provider" not in e or "model" not in e:
        raise ConfigError(f"{source}: models.{name}: needs 'provider' and 'model' (or 'spec')")
    if not known_provider(str(e["provider"])):
        raise ConfigError(f"{source}: models.{name}.provider: unknown provider {e['provider']!r}")
    if "api_key" in e:
        raise ConfigError(f"{source}: models.{name}.api_key: keys do not belong in files; "
                          "use api_key_env: NAME_OF_ENV_VAR")
    caps = default_capabilities(str(e["provider"])).model_dump()
    caps.update(e.pop("capabilities", None) or {})
    e["capabilities"] = caps
    try:
        return EndpointConfig(name=name, **e)
    except ValidationError as ve:
        err = ve.errors()[0]
        loc = ".".join(str(x) for x in err["loc"])
        raise ConfigError(f"{source}: models.{name}.{loc}: {err['msg']}") from None


def resolve_endpoint(spec: str, role: str = "target", *, models_file: Path | None = None,
                     **overrides: Any) -> EndpointConfig:
    """Turn a spec or a models-file name into an EndpointConfig for ``role``."""
    if role not in ROLES:
        raise ConfigError(f"unknown role {role!r}")
    models_file = models_file or (Path(os.environ["MMSAFE_MODELS"]) if os.environ.get("MMSAFE_MODELS") else None)
    entries = load_models_file(models_file) if models_file else {}
    if spec in entries:
        cfg = _endpoint_from_entry(spec, entries[spec], str(models_file))
        if role not in cfg.roles:
            raise ConfigError(f"{models_file}: models.{spec} is not declared for role '{role}' "
                              f"(roles: {', '.join(cfg.roles)})")
    else:
        parsed = parse_spec(spec)
        cfg = _endpoint_from_entry(spec, {k: v for k, v in parsed.items() if v is not None}, "--" + role)
    upd = {k: v for k, v in overrides.items() if v is not None}
    if upd:
        if "params" in upd:
            upd["params"] = {**cfg.params, **upd["params"]}
        if "base_url" in upd and "base_urls" not in upd:
            upd["base_urls"] = []  # --base-url replaces the endpoint (and its replicas)
        try:
            cfg = EndpointConfig.model_validate({**cfg.model_dump(), **upd})
        except ValidationError as ve:
            e0 = ve.errors()[0]
            raise ConfigError(f"{spec}: {'.'.join(str(x) for x in e0['loc'])}: {e0['msg']}") from None
    return cfg


def build_provider(cfg: EndpointConfig) -> Provider:
    """Instantiate the registered provider class of ``cfg.provider`` for this endpoint."""
    from mmsafe.registry import PluginError
    reg = _providers()
    entry = reg.entry(cfg.provider)
    try:
        cls = reg.resolve(cfg.provider)
    except PluginError as e:
        cause = e.__cause__ or e.__context__
        extra = entry.meta.get("extra") if entry is not None else None
        if extra and "cannot import" in str(e):
            raise ConfigError(f"provider '{cfg.provider}' needs an optional dependency: "
                              f"pip install 'mmsafe[{extra}]'") from None
        raise ConfigError(str(e)) from cause
    provider = cls(cfg)
    if not isinstance(provider, Provider):
        raise ConfigError(f"provider {cfg.provider!r}: {type(provider).__name__} is not a mmsafe Provider")
    return provider
