"""The one async interface every model provider implements.

A provider knows its wire format (how a :class:`~mmsafe.types.Message` list becomes a
request body) and how to make **one** attempt at a request. Everything around the
attempt — concurrency, retries, cache, cost ledger — lives in :mod:`mmsafe.models.engine`
so that every provider gets it for free.
"""

from __future__ import annotations

import re
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

# ConfigError lives in mmsafe.types (a PluginError is one); providers and judges import it from here
from mmsafe.types import ConfigError as ConfigError, Message

ROLES = ("target", "judge", "attacker", "generator", "moderator")
Role = Literal["target", "judge", "attacker", "generator", "moderator"]


class Capabilities(BaseModel):
    """What a target can take. A run refuses up front a benchmark the target cannot take."""

    model_config = ConfigDict(extra="forbid")
    image: bool = True
    audio: bool = False
    # native video input (vLLM/SGLang ``video_url``, Gemini); a target without it but with ``image`` gets
    # ``video_frames`` frames sampled evenly from each clip instead
    video: bool = False
    video_frames: int = Field(default=8, ge=1, le=32)
    multi_turn: bool = True
    system_prompt: bool = True
    editable_history: bool = True  # the caller may rewrite the history (adaptive attacks)


class Price(BaseModel):
    """An endpoint's price in USD per million input and output tokens."""

    model_config = ConfigDict(extra="forbid")
    input: float = 0.0  # USD per 1M input tokens
    output: float = 0.0  # USD per 1M output tokens
    batch_input: float | None = None  # through a provider batch API (--batch); None: half of ``input``
    batch_output: float | None = None  # through a provider batch API (--batch); None: half of ``output``

    def cost(self, input_tokens: int, output_tokens: int) -> float:
        """USD for one call with these token counts."""
        return (input_tokens * self.input + output_tokens * self.output) / 1_000_000

    def batch_cost(self, input_tokens: int, output_tokens: int) -> float:
        """USD for one batch-API line: the batch prices, or 50% of the live ones where they are absent."""
        bi = self.input * 0.5 if self.batch_input is None else self.batch_input
        bo = self.output * 0.5 if self.batch_output is None else self.batch_output
        return (input_tokens * bi + output_tokens * bo) / 1_000_000


class EndpointConfig(BaseModel):
    """A fully resolved model endpoint. Holds the *name* of the key's env var, never the key."""

    model_config = ConfigDict(extra="forbid")
    name: str  # how the user named it: "openai/gpt-4o" or a models-file entry
    provider: str
    model: str
    base_url: str | None = None
    # replicas of the same model: requests go to the one with the fewest in flight (base_url is the first)
    base_urls: list[str] = Field(default_factory=list)
    api_key_env: str | None = None
    roles: list[str] = Field(default_factory=lambda: list(ROLES))
    max_connections: int = 32
    timeout_s: float = 120.0
    max_retries: int = 6
    backoff_base_s: float = 0.5
    backoff_max_s: float = 30.0
    price: Price = Field(default_factory=Price)
    params: dict[str, Any] = Field(default_factory=dict)  # temperature, max_tokens, seed ...
    capabilities: Capabilities = Field(default_factory=Capabilities)
    headers: dict[str, str] = Field(default_factory=dict)  # extra non-secret headers
    # the model's context window in tokens, when known (local: n_ctx): judges budget their prompts by it
    context_window: int | None = Field(default=None, ge=1)
    # options of a server the provider starts itself (local: n_ctx, slots, n_threads, chat_format ...)
    server: dict[str, Any] = Field(default_factory=dict)
    # circuit breaker: a replica that fails this many times in a row (no HTTP answer) rests for a cool-down;
    # an endpoint that never answered stops the run after dead_after such failures in a row
    breaker_failures: int = Field(default=3, ge=1)
    breaker_cooldown_s: float = Field(default=5.0, gt=0)
    dead_after: int = Field(default=8, ge=1)

    @model_validator(mode="after")
    def _replicas(self) -> EndpointConfig:
        urls = [u.strip() for u in self.base_urls if u and u.strip()]
        if self.base_url and "," in self.base_url:
            urls = [u.strip() for u in self.base_url.split(",") if u.strip()] + urls
        if self.base_url and not urls:
            urls = [self.base_url]
        if urls and self.base_url and "," not in self.base_url and urls[0] != self.base_url:
            urls = [self.base_url] + [u for u in urls if u != self.base_url]
        seen: list[str] = []
        for u in urls:
            if not u.startswith(("http://", "https://")):
                raise ValueError(f"replica URL {u!r} needs a scheme (http:// or https://)")
            if u not in seen:
                seen.append(u)
        self.base_urls = seen
        if seen:
            self.base_url = seen[0]
        return self

    @field_validator("api_key_env")
    @classmethod
    def _env_var_name(cls, v: str | None) -> str | None:
        # the *name* of a variable; refuse what looks like a key pasted in its place (and never echo it)
        if v is not None and not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]{0,127}", v):
            raise ValueError("api_key_env must be the name of an environment variable (e.g. OPENAI_API_KEY), "
                             "not a key")
        return v

    @property
    def is_mock(self) -> bool:
        """True for the built-in mock reference models (not real LLMs)."""
        return self.provider == "mock"

    @property
    def display(self) -> str:
        """``provider/model``, marked when it is a mock reference model."""
        tag = " (MOCK reference model, not a real LLM)" if self.is_mock else ""
        return f"{self.provider}/{self.model}{tag}"

    def public(self) -> dict[str, Any]:
        """What may be written to the store, logs and reports (no secrets)."""
        d = self.model_dump(exclude={"headers"})
        d["mock"] = self.is_mock
        return d


@dataclass
class ChatResult:
    """One request's outcome: the reply text (None on failure) or the error, tokens, USD, latency and attempts."""

    text: str | None
    finish_reason: str | None = None
    input_tokens: int = 0
    output_tokens: int = 0
    model: str = ""
    latency_ms: float = 0.0
    attempts: int = 1
    cached: bool = False
    cost_usd: float = 0.0
    error: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        """True when the request gave a reply (no error, text present)."""
        return self.error is None and self.text is not None


class ProviderError(Exception):
    """One failed attempt. ``retryable`` errors are retried with backoff by the engine;
    ``fatal`` errors (bad key, unknown model) abort the whole run."""

    def __init__(self, message: str, *, status: int | None = None, retryable: bool = False,
                 overload: bool = False, retry_after: float | None = None, fatal: bool = False,
                 unreachable: bool | None = None):
        super().__init__(message)
        self.status = status
        # no HTTP answer at all (connection refused, reset, DNS, timeout): what the circuit breaker counts
        self.unreachable = (status is None and retryable) if unreachable is None else unreachable
        self.retryable = retryable
        self.overload = overload
        self.retry_after = retry_after
        self.fatal = fatal


class Provider(ABC):
    """One endpoint. ``complete`` makes exactly one attempt and raises ProviderError."""

    def __init__(self, cfg: EndpointConfig):
        self.cfg = cfg

    @property
    def capabilities(self) -> Capabilities:
        """What the endpoint takes (images, audio, multi-turn, system prompt), from its config."""
        return self.cfg.capabilities

    def check_credentials(self) -> None:
        """Raise a ConfigError naming the env var when a required key is absent; called before anything
        is written or sent (a no-op by default: no key needed)."""
        return None

    async def start(self) -> None:  # open sessions, start local servers
        """Open sessions or start local servers before the first request; a no-op by default."""
        return None

    async def close(self) -> None:
        """Release what ``start`` opened; a no-op by default."""
        return None

    @abstractmethod
    def encode(self, messages: list[Message], root: Path | None, system: str | None = None) -> Any:
        """Turn messages into this provider's request payload (reads asset bytes now)."""

    @abstractmethod
    async def complete(self, payload: Any, params: dict[str, Any], timeout_s: float) -> ChatResult:
        """Send one request. Raise ProviderError on failure."""

    def identity(self) -> dict[str, Any]:
        """Part of the cache key: what makes two endpoints give different answers."""
        d: dict[str, Any] = {"provider": self.cfg.provider, "base_url": self.cfg.base_url, "model": self.cfg.model}
        if self.cfg.headers:
            d["headers"] = sorted(self.cfg.headers.items())
        return d
