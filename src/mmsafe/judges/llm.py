"""What every LLM judge shares: endpoints through the engine (role ``judge``), option
parsing for judge specs, prompt templates, and rendering a sample's dialogue for a judge.

Judge calls go through :class:`~mmsafe.models.engine.ModelClient`, so they get the same
adaptive limiter, retries, response cache and cost ledger as target calls; every call's
request-log rows (role ``judge``) are returned with the verdict.
"""

from __future__ import annotations

import asyncio
import builtins
import hashlib
import string
from importlib import resources
from pathlib import Path
from typing import Any

from mmsafe.judges.base import Judge
from mmsafe.judges.budget import MESSAGE_OVERHEAD, Budget, Fit, estimate_tokens
from mmsafe.models.base import ChatResult, ConfigError, EndpointConfig
from mmsafe.models.engine import CostLedger, ModelClient, ResponseCache, request_log
from mmsafe.models.registry import build_provider, resolve_endpoint
from mmsafe.types import AssetError, ImagePart, Message, Response, Sample, TextPart, Usage

# each judge kind passes its own max_tokens (mmsafe.judges.budget.OUTPUT_TOKENS); 1,024 is for plugin judges
DEFAULT_JUDGE_PARAMS: dict[str, Any] = {"temperature": 0.0, "max_tokens": 1024}
_RESERVED_PARAMS = ("temperature", "max_tokens", "top_p", "seed")

# --------------------------------------------------------------------------- spec options


def split_spec(spec: str) -> tuple[str, str, dict[str, str]]:
    """``kind:ARG?k=v&k2=v2`` -> (kind, arg, {k: v}). Bad option syntax -> ConfigError."""
    head, _, query = spec.partition("?")
    kind, _, arg = head.partition(":")
    opts: dict[str, str] = {}
    if query:
        for item in query.split("&"):
            if not item:
                continue
            if "=" not in item:
                raise ConfigError(f"judge spec {spec!r}: option {item!r} is not KEY=VALUE")
            k, v = item.split("=", 1)
            k = k.strip()
            if not k:
                raise ConfigError(f"judge spec {spec!r}: option {item!r} has an empty key")
            opts[k] = v.strip()
    return kind.strip(), arg.strip(), opts


class Options:
    """Typed access to judge options; whatever is left unread at the end is an error."""

    def __init__(self, spec: str, opts: dict[str, Any]):
        self.spec = spec
        self.opts = dict(opts)
        self.used: set[str] = set()

    def _raw(self, key: str) -> Any:
        self.used.add(key)
        return self.opts.get(key)

    def _bad(self, key: str, what: str) -> ConfigError:
        return ConfigError(f"judge spec {self.spec!r}: option {key}={self.opts.get(key)!r}: {what}")

    def str(self, key: str, default: str | None = None, choices: tuple[str, ...] | None = None) -> str | None:
        """Option ``key`` as text (``default`` when absent); with ``choices``, one of them or a ConfigError."""
        v = self._raw(key)
        if v is None:
            return default
        v = str(v)
        if choices and v not in choices:
            raise self._bad(key, "choose one of " + ", ".join(choices))
        return v

    # the methods below are named after builtins: their annotations name the builtins explicitly
    def int(self, key: builtins.str, default: builtins.int, lo: builtins.int | None = None,
            hi: builtins.int | None = None) -> builtins.int:
        """Option ``key`` as an integer within ``lo..hi`` (``default`` when absent), else a ConfigError."""
        v = self._raw(key)
        if v is None:
            return default
        try:
            x = int(v)
        except (TypeError, ValueError):
            raise self._bad(key, "expected an integer") from None
        if (lo is not None and x < lo) or (hi is not None and x > hi):
            raise self._bad(key, f"expected {lo if lo is not None else '-inf'}..{hi if hi is not None else 'inf'}")
        return x

    def float(self, key: builtins.str, default: builtins.float | None, lo: builtins.float | None = None,
              hi: builtins.float | None = None) -> builtins.float | None:
        """Option ``key`` as a number within ``[lo, hi]`` (``default`` when absent), else a ConfigError."""
        v = self._raw(key)
        if v is None:
            return default
        try:
            x = float(v)
        except (TypeError, ValueError):
            raise self._bad(key, "expected a number") from None
        if (lo is not None and x < lo) or (hi is not None and x > hi):
            raise self._bad(key, f"expected a number in [{lo}, {hi}]")
        return x

    def bool(self, key: builtins.str, default: builtins.bool) -> builtins.bool:
        """Option ``key`` as 1/0, true/false, yes/no or on/off (``default`` when absent), else a ConfigError."""
        v = self._raw(key)
        if v is None:
            return default
        if isinstance(v, bool):
            return v
        s = str(v).strip().lower()
        if s in ("1", "true", "yes", "on"):
            return True
        if s in ("0", "false", "no", "off"):
            return False
        raise self._bad(key, "expected 1/0, true/false")

    def params(self) -> dict[builtins.str, Any]:
        """Generation parameters given as options (temperature, max_tokens, top_p, seed)."""
        out: dict[builtins.str, Any] = {}
        for k in _RESERVED_PARAMS:
            if k in self.opts:
                if k in ("max_tokens", "seed"):
                    out[k] = self.int(k, 0, lo=0 if k == "seed" else 1)
                else:
                    out[k] = self.float(k, None, lo=0.0)
        return out

    def budget(self) -> dict[builtins.str, builtins.int]:
        """Token-budget options: ``context_window`` (overrides the endpoint's), ``reply_tokens`` and
        ``dialogue_tokens`` (caps before the reply / dialogue is cut in the middle)."""
        out: dict[builtins.str, builtins.int] = {}
        for k in ("context_window", "reply_tokens", "dialogue_tokens"):
            if k in self.opts:
                out[k] = self.int(k, 0, lo=64)
        return out

    def check_all_used(self) -> None:
        """Raise a ConfigError naming every option no reader asked for (a typo must not pass silently)."""
        unknown = sorted(set(self.opts) - self.used)
        if unknown:
            raise ConfigError(f"judge spec {self.spec!r}: unknown option(s) {', '.join(unknown)}")


# --------------------------------------------------------------------------- templates


def builtin_template(name: str) -> str:
    """The text of a packaged prompt file under ``mmsafe/data/rubrics``."""
    return resources.files("mmsafe").joinpath("data", "rubrics", name).read_text(encoding="utf-8")


def load_template(path: str | Path | None, builtin: str, *, spec: str, required: tuple[str, ...] = ()) -> str:
    """A user template file (or the packaged one); checks the required placeholders are there."""
    if path is None:
        text = builtin_template(builtin)
        where = f"mmsafe/data/rubrics/{builtin}"
    else:
        p = Path(path).expanduser()
        try:
            text = p.read_text(encoding="utf-8")
        except FileNotFoundError:
            raise ConfigError(f"judge spec {spec!r}: template {p}: file not found") from None
        except (OSError, UnicodeDecodeError) as e:
            raise ConfigError(f"judge spec {spec!r}: template {p}: cannot read ({e})") from None
        where = str(p)
    try:
        names = _placeholders(text)
    except ValueError as e:
        raise ConfigError(f"judge spec {spec!r}: template {where}: {e}") from None
    missing = [r for r in required if r not in names]
    if missing:
        raise ConfigError(f"judge spec {spec!r}: template {where} lacks placeholder(s) "
                          + ", ".join("$" + m for m in missing))
    return text


def _placeholders(text: str) -> set[str]:
    names: set[str] = set()
    for m in string.Template.pattern.finditer(text):
        if m.group("invalid") is not None:
            line = text[:m.start("invalid")].count("\n") + 1
            raise ValueError(f"line {line}: a lone '$' (write $$ for a literal dollar sign)")
        n = m.group("named") or m.group("braced")
        if n:
            names.add(n)
    return names


_FENCES = {"<<<": "‹‹‹", ">>>": "›››"}


def _defang(v: str) -> str:
    """Model and user text cannot close or open the template's <<< >>> blocks."""
    for a, b in _FENCES.items():
        v = v.replace(a, b)
    return v


def fill(template: str, **values: Any) -> str:
    """Fill a template in one pass: values are never re-expanded (no injection through
    replies), and the <<< >>> block fences inside values are neutralised."""
    return string.Template(template).safe_substitute(
        {k: "" if v is None else _defang(str(v)) for k, v in values.items()})


def text_hash(*texts: str) -> str:
    """A short hash of several texts (the judge identity's ``prompt_hash``)."""
    h = hashlib.sha256()
    for t in texts:
        h.update(hashlib.sha256(t.encode()).digest())
    return h.hexdigest()[:16]


# --------------------------------------------------------------------------- rubrics by scenario

RUBRIC_NAMES = ("default", "political", "professional_advice")


def rubric_for(sample: Sample) -> str:
    """default | political | professional_advice, from the taxonomy's scenario record."""
    try:
        from mmsafe.taxonomy import scenario
        rec = scenario(sample.scenario) if sample.scenario else None
    except Exception:  # a broken taxonomy must not break judging; fall back to the default rubric
        rec = None
    name = (rec or {}).get("rubric") or "default"
    return name if name in RUBRIC_NAMES else "default"


def load_rubrics(directory: str | Path | None, *, spec: str) -> dict[str, str]:
    """The three scenario rubrics: the packaged ones, replaced by ``NAME.txt`` files in ``directory``."""
    out = {n: builtin_template(f"rubric_{n}.txt") for n in RUBRIC_NAMES}
    if directory is not None:
        d = Path(directory).expanduser()
        if not d.is_dir():
            raise ConfigError(f"judge spec {spec!r}: rubrics={d}: not a directory")
        found = False
        for n in RUBRIC_NAMES:
            p = d / f"{n}.txt"
            if p.is_file():
                try:
                    out[n] = p.read_text(encoding="utf-8")
                except (UnicodeDecodeError, OSError) as e:
                    raise ConfigError(f"judge spec {spec!r}: {p}: cannot read as UTF-8 text ({type(e).__name__})") \
                        from None
                found = True
        if not found:
            raise ConfigError(f"judge spec {spec!r}: rubrics={d}: holds none of "
                              + ", ".join(f"{n}.txt" for n in RUBRIC_NAMES))
    return out


# --------------------------------------------------------------------------- dialogue rendering


def render_dialogue(sample: Sample, *, attach_images: bool, attach_audio: bool = False, root: Path | None = None,
                    agent_word: str = "ASSISTANT", user_word: str = "USER") -> tuple[str, list[Any]]:
    """The conversation as text, and the asset parts to attach (in order) when the judge takes them.

    Attached images are named ``[image N attached]`` in the text; others become
    ``[image: sha256 <hash>]`` placeholders (likewise audio)."""
    lines: list[str] = []
    attached: list[Any] = []
    for m in sample.messages:
        who = {"user": user_word, "assistant": agent_word, "system": "SYSTEM"}[m.role]
        if isinstance(m.content, str):
            lines.append(f"[{who}]: {m.content}")
            continue
        chunks: list[str] = []
        for p in m.content:
            if isinstance(p, TextPart):
                chunks.append(p.text)
            else:
                want = attach_images if isinstance(p, ImagePart) else attach_audio
                if want and ((p.path is not None and root is not None) or p.uri):
                    attached.append(p)
                    chunks.append(f"[{p.type} {len(attached)} attached]")
                else:
                    chunks.append(f"[{p.type}: sha256 {p.sha256 or '?'}]" if p.sha256 else
                                  f"[{p.type}: {p.path or p.uri}]")
        lines.append(f"[{who}]: " + " ".join(chunks))
    return "\n".join(lines), attached


def judge_message(prompt: str, attached: list[Any]) -> list[Message]:
    """The judge's one user message: the prompt, followed by the attached image/audio parts."""
    if not attached:
        return [Message(role="user", content=prompt)]
    return [Message(role="user", content=[TextPart(text=prompt), *attached])]


# --------------------------------------------------------------------------- base class


class LLMJudge(Judge):
    """Holds the judge endpoints and their ModelClients (one per distinct endpoint)."""

    role = "judge"

    def __init__(self, endpoints: list[EndpointConfig], params: dict[str, Any] | None = None, *,
                 max_tokens: int | None = None, budget: dict[str, int] | None = None):
        self.endpoints = endpoints
        self.spec_params = dict(params or {})
        # this judge kind's output budget (what its answer format needs), unless the spec or models file says
        self.defaults = {**DEFAULT_JUDGE_PARAMS, **({"max_tokens": max_tokens} if max_tokens else {})}
        self.params = {**self.defaults, **self.spec_params}  # what goes into the identity
        self.budget_opts = dict(budget or {})
        self._ledger: CostLedger | None = None
        self._cache: ResponseCache | None = None
        self._clients: dict[str, ModelClient] | None = None
        self._started = False

    # the runner calls bind() when it has a ledger and cache; otherwise the judge keeps its own ledger
    def bind(self, ledger: CostLedger | None = None, cache: ResponseCache | None = None) -> None:
        """Share the runner's cost ledger and response cache (called before the first request)."""
        if self._clients is not None:
            for c in self._clients.values():
                if ledger is not None:
                    c.ledger = ledger
                c.cache = cache
        self._ledger = ledger
        self._cache = cache

    @property
    def ledger(self) -> CostLedger:
        """The cost ledger the judge's calls are booked on (its own unless ``bind`` gave one)."""
        if self._ledger is None:
            self._ledger = CostLedger()
        return self._ledger

    def _build_clients(self) -> dict[str, ModelClient]:
        if self._clients is None:
            clients: dict[str, ModelClient] = {}
            for cfg in self.endpoints:
                if cfg.name not in clients:
                    # judge defaults < the models file's params < options on the spec
                    params = {**self.defaults, **cfg.params, **self.spec_params}
                    clients[cfg.name] = ModelClient(build_provider(cfg), self.role, self.ledger, cache=self._cache,
                                                    params=params)
            self._clients = clients
        return self._clients

    def base_settings(self) -> dict[str, Any]:
        """The identity settings every LLM judge records: generation and per-endpoint params."""
        eps = {c.name: c.params for c in self.endpoints if c.params}
        out: dict[str, Any] = {"params": self.params, **({"endpoint_params": eps} if eps else {})}
        if self.budget_opts:  # a different cut makes different prompts; the defaults stay out of old identities
            out["budget"] = dict(sorted(self.budget_opts.items()))
        windows = {c.name: c.context_window for c in self.endpoints if c.context_window}
        if windows and "context_window" not in self.budget_opts:
            out["context_windows"] = windows
        return out

    # ------------------------------------------------------------------ token budget
    def context_window(self, cfg: EndpointConfig) -> int | None:
        """The judge model's window: the spec's ``context_window``, the endpoint's (models file), or what
        its provider reports once built (a local llama.cpp model's ``n_ctx``); None when unknown."""
        if "context_window" in self.budget_opts:
            return self.budget_opts["context_window"]
        if cfg.context_window:
            return cfg.context_window
        client = self._build_clients().get(cfg.name)
        prov_cfg = getattr(getattr(client, "provider", None), "cfg", None)
        win = getattr(prov_cfg, "context_window", None)
        return win if isinstance(win, int) and win > 0 else None

    def max_tokens(self, cfg: EndpointConfig) -> int:
        """The output tokens asked of ``cfg``: spec option > models-file params > this kind's default."""
        return int({**self.defaults, **cfg.params, **self.spec_params}["max_tokens"])

    def budget(self, cfg: EndpointConfig, max_tokens: int | None = None) -> Budget:
        """The token budget of prompts sent to ``cfg``."""
        b = Budget(self.context_window(cfg), max_tokens or self.max_tokens(cfg))
        for k in ("reply_tokens", "dialogue_tokens"):
            if k in self.budget_opts:
                setattr(b, k, self.budget_opts[k])
        return b

    def check_budget(self, cfg: EndpointConfig, fixed_tokens: int, spec: str) -> None:
        """At construction: a ConfigError when a window known from the spec or models file cannot hold the
        instructions + max_tokens (a provider-reported window is checked per call, by cutting)."""
        win = self.budget_opts.get("context_window") or cfg.context_window
        if win:
            Budget(win, self.max_tokens(cfg)).check_fits(fixed_tokens, spec)

    def fill_fitted(self, cfg: EndpointConfig, template: str, *, response: str, dialogue: str = "",
                    images: int = 0, max_tokens: int | None = None, **values: Any) -> tuple[str, Fit]:
        """Fill ``template`` with the reply and dialogue cut (middle out, with a marker) to fit the budget."""
        fixed = estimate_tokens(fill(template, response="", dialogue="", **values)) + MESSAGE_OVERHEAD
        f = self.budget(cfg, max_tokens).fit(fixed, response, dialogue, images)
        return fill(template, response=f.reply, dialogue=f.dialogue, **values), f

    def client(self, cfg: EndpointConfig) -> ModelClient:
        """The ModelClient of one judge endpoint (built on first use)."""
        return self._build_clients()[cfg.name]

    async def start(self) -> None:
        """Start every endpoint's client (once, even when first calls come concurrently)."""
        if self._started:
            return
        self._started = True  # set first: concurrent first calls must not start a provider twice
        for c in self._build_clients().values():
            await c.start()

    async def close(self) -> None:
        """Close every endpoint's client."""
        if self._clients is not None:
            for c in self._clients.values():
                await c.close()
        self._started = False

    async def call(self, cfg: EndpointConfig, messages: list[Message], sample_id: str,
                   root: Path | None, params: dict[str, Any] | None = None) -> tuple[ChatResult, list[dict[str, Any]]]:
        """One judge request through the engine -> (result, request-log rows with role judge)."""
        if not self._started:
            await self.start()
        client = self.client(cfg)
        try:
            res = await client.chat(messages, root=root, params=params)
        except AssetError:
            # the image cannot be read now (moved benchmark): judge with placeholders rather than fail
            res = await client.chat(strip_assets(messages), root=root, params=params)
        return res, request_log(res, self.role, sample_id, cfg.name)


async def gather_all(coros: list[Any]) -> list[Any]:
    """asyncio.gather that cancels the siblings when one raises (a fatal endpoint error, a spent budget)."""
    tasks = [asyncio.ensure_future(c) for c in coros]
    try:
        return list(await asyncio.gather(*tasks))
    except BaseException:
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        raise


def strip_assets(messages: list[Message]) -> list[Message]:
    """The messages with image/audio parts replaced by ``[type: sha256 …]`` placeholders."""
    out = []
    for m in messages:
        if isinstance(m.content, str):
            out.append(m)
            continue
        text = "\n".join(p.text if isinstance(p, TextPart) else f"[{p.type}: sha256 {p.sha256 or '?'}]"
                         for p in m.content)
        out.append(Message(role=m.role, content=text))
    return out


def usage_of(results: list[ChatResult]) -> tuple[float, Usage]:
    """``(USD, token usage)`` of judge calls; cached replies cost nothing."""
    cost = sum(r.cost_usd for r in results if not r.cached)
    u = Usage(input_tokens=sum(r.input_tokens for r in results), output_tokens=sum(r.output_tokens for r in results))
    return cost, u


def resolve_judge_endpoint(model: str, spec: str, models_file: Path | None) -> EndpointConfig:
    """The judge endpoint a spec names; a missing or unknown model is a ConfigError naming the spec."""
    if not model:
        raise ConfigError(f"judge spec {spec!r}: needs a model, e.g. {spec.split(':')[0]}:openai/gpt-4o")
    try:
        return resolve_endpoint(model, "judge", models_file=models_file)
    except ConfigError as e:
        raise ConfigError(f"judge spec {spec!r}: {e}") from None


def response_text(response: Response) -> str:
    """The reply's text, empty when there is none."""
    return response.text or ""
