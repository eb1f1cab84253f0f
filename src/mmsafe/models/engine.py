"""What every request goes through, whatever the provider: an adaptive concurrency
limiter per endpoint, retries with backoff that honour Retry-After, a
content-addressed response cache, and a token/cost ledger per role.
"""

from __future__ import annotations

import asyncio
import collections
import hashlib
import os
import random
import sqlite3
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson

from mmsafe.models.base import ChatResult, EndpointConfig, Provider, ProviderError
from mmsafe.types import AssetError, Message, TextPart, read_asset, sha256_bytes, verify_asset


class BudgetExceeded(Exception):
    """Raised instead of sending a request once the --max-cost budget is spent."""


class FatalProviderError(Exception):
    """An error that will not go away by retrying any request (bad key, unknown model)."""


# --------------------------------------------------------------------------- limiter


class AdaptiveLimiter:
    """AIMD concurrency limit between 1 and ``cap``.

    Starts at ``initial`` (a quarter of the cap by default); while requests succeed and
    the limit is saturated it grows (doubling per round trip until the first overload,
    then +1 per round trip); on an overload (429/503) it halves, at most once per
    ``cooldown_s`` so one burst of 429s counts once.
    """

    def __init__(self, cap: int, initial: int | None = None, cooldown_s: float = 1.0):
        self.cap = max(1, int(cap))
        self.limit = float(initial if initial is not None else max(min(self.cap, 4), self.cap // 4))
        self.in_flight = 0
        self.cooldown_s = cooldown_s
        self._slow_start = True
        self._last_cut = 0.0
        self._waiters: collections.deque[asyncio.Future] = collections.deque()
        self.overloads = 0

    async def acquire(self) -> None:
        """Wait for a free slot (first come, first served); a cancelled wait gives back a slot it was granted."""
        if self.in_flight < int(self.limit) and not self._waiters:
            self.in_flight += 1
            return
        fut = asyncio.get_running_loop().create_future()
        self._waiters.append(fut)
        try:
            await fut
        except asyncio.CancelledError:
            if fut.done() and not fut.cancelled():
                self.in_flight -= 1  # slot was granted; give it back
                self._wake()
            else:
                try:
                    self._waiters.remove(fut)
                except ValueError:
                    pass
            raise

    def release(self, *, ok: bool = True, overload: bool = False) -> None:
        """Free a slot and adapt the limit: grow when it was saturated, halve on an overload (429/503)."""
        saturated = self.in_flight >= int(self.limit)
        self.in_flight -= 1
        now = time.monotonic()
        if overload:
            self.overloads += 1
            if now - self._last_cut >= self.cooldown_s:
                self.limit = max(1.0, self.limit / 2)
                self._last_cut = now
                self._slow_start = False
        elif ok and saturated and self.limit < self.cap:
            self.limit = min(float(self.cap), self.limit + (1.0 if self._slow_start else 1.0 / self.limit))
        self._wake()

    def _wake(self) -> None:
        while self._waiters and self.in_flight < int(self.limit):
            fut = self._waiters.popleft()
            if not fut.done():
                self.in_flight += 1
                fut.set_result(None)


# --------------------------------------------------------------------------- cache


def _canonical_messages(messages: list[Message], root: Path | None) -> list[Any]:
    out: list[tuple[str, str | list[tuple[str, str | None]]]] = []
    for m in messages:
        if isinstance(m.content, str):
            out.append((m.role, m.content))
            continue
        parts: list[tuple[str, str | None]] = []
        for p in m.content:
            if isinstance(p, TextPart):
                parts.append(("t", p.text))
            else:
                h = p.sha256
                if h is None and p.path is not None and root is not None:
                    h = sha256_bytes(read_asset(p, root))
                parts.append((p.type[0], h or p.uri))
        out.append((m.role, parts))
    return out


def cache_key(identity: dict[str, Any], params: dict[str, Any], messages: list[Message],
              root: Path | None, system: str | None, epoch: int) -> str:
    """The response-cache key: a hash of the endpoint identity, params, system prompt, messages and epoch.

    Assets count by their sha256 (read from ``root`` when not recorded), so an edited image is a new key.
    """
    blob = orjson.dumps([identity, params, system, _canonical_messages(messages, root), epoch],
                        option=orjson.OPT_SORT_KEYS)
    return hashlib.sha256(blob).hexdigest()


def default_cache_dir() -> Path:
    """``$MMSAFE_CACHE_DIR``, else ``$XDG_CACHE_HOME/mmsafe`` (default ``~/.cache/mmsafe``)."""
    env = os.environ.get("MMSAFE_CACHE_DIR")
    if env:
        return Path(env)
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "mmsafe"


class ResponseCache:
    """SQLite-backed content-addressed cache of successful replies. Errors are never cached."""

    def __init__(self, path: Path, ttl_s: float = 7 * 24 * 3600):
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self.ttl_s = ttl_s
        self.db = sqlite3.connect(str(path), isolation_level=None, check_same_thread=False)
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute("PRAGMA synchronous=NORMAL")
        self.db.execute("CREATE TABLE IF NOT EXISTS cache (key TEXT PRIMARY KEY, expires REAL, value BLOB)")
        try:
            self.prune()  # expired entries go when a cache is opened, so it does not grow without bound
        except sqlite3.OperationalError:  # locked by another process: prune another time
            pass
        self.hits = 0
        self.misses = 0

    def get(self, key: str) -> ChatResult | None:
        """The cached reply for ``key`` (marked ``cached``, no cost), or None when absent or expired."""
        row = self.db.execute("SELECT expires, value FROM cache WHERE key=?", (key,)).fetchone()
        if row is None or row[0] < time.time():
            self.misses += 1
            return None
        self.hits += 1
        d = orjson.loads(row[1])
        return ChatResult(text=d["text"], finish_reason=d.get("finish_reason"),
                          input_tokens=d.get("input_tokens", 0), output_tokens=d.get("output_tokens", 0),
                          model=d.get("model", ""), latency_ms=0.0, attempts=0, cached=True,
                          extra={"logprobs": d["logprobs"]} if d.get("logprobs") else {})

    def put(self, key: str, r: ChatResult) -> None:
        """Cache a successful, non-empty reply under ``key`` for ``ttl_s`` seconds."""
        if not r.ok or not r.text:  # errors and empty replies (truncated, filtered) are never cached
            return
        v = orjson.dumps({"text": r.text, "finish_reason": r.finish_reason, "input_tokens": r.input_tokens,
                          "output_tokens": r.output_tokens, "model": r.model,
                          **({"logprobs": r.extra["logprobs"]} if r.extra.get("logprobs") else {})})
        self.db.execute("INSERT OR REPLACE INTO cache VALUES (?,?,?)", (key, time.time() + self.ttl_s, v))

    def prune(self) -> int:
        """Delete expired entries; returns how many went."""
        return self.db.execute("DELETE FROM cache WHERE expires < ?", (time.time(),)).rowcount

    def close(self) -> None:
        """Close the cache database."""
        self.db.close()


# --------------------------------------------------------------------------- ledger


@dataclass
class RoleLedger:
    """Calls, cached calls, errors, tokens and USD of one role (target, judge, attacker, ...)."""

    calls: int = 0  # requests that reached the network (attempts, including retries)
    cached: int = 0
    errors: int = 0
    input_tokens: int = 0
    output_tokens: int = 0
    cost_usd: float = 0.0

    def as_dict(self) -> dict[str, Any]:
        """The counters as a JSON-ready dict (USD rounded to 6 places)."""
        return {"calls": self.calls, "cached": self.cached, "errors": self.errors,
                "input_tokens": self.input_tokens, "output_tokens": self.output_tokens,
                "cost_usd": round(self.cost_usd, 6)}


class CostLedger:
    """Token and USD totals per role, and the ``--max-cost`` budget they are checked against.

    The budget is a ceiling: before a request is sent its worst-case cost (estimated prompt tokens,
    ``max_tokens`` as the output bound) is *reserved* (:meth:`reserve`); the reply's real cost is
    booked and the reservation released (:meth:`release`). A request whose worst case does not fit
    in what is neither spent nor reserved waits for the requests in flight to settle, and when
    none is left to settle it is not sent (BudgetExceeded). So spent + reserved never passes the
    budget, and the spent total — the one figure every message and summary reports — neither."""

    def __init__(self, max_cost_usd: float | None = None):
        self.roles: dict[str, RoleLedger] = collections.defaultdict(RoleLedger)
        self.max_cost_usd = max_cost_usd
        self.reserved_usd = 0.0
        self._n_reserved = 0

    @property
    def total_cost(self) -> float:
        """USD spent so far, all roles together."""
        return sum(r.cost_usd for r in self.roles.values())

    def exceeded_message(self, next_worst: float | None = None) -> str:
        """The one line of a budget stop: the budget and the spent total (the figure the summary reports)."""
        nxt = ""
        if next_worst is not None and self.max_cost_usd is not None:
            left = max(0.0, self.max_cost_usd - self.total_cost)
            nxt = f"; the next request could cost up to ${next_worst:.4f}, more than the ${left:.4f} left"
        return f"budget of ${self.max_cost_usd:g} reached: ${self.total_cost:.4f} spent{nxt}"

    def check_budget(self) -> None:
        """Raise BudgetExceeded once the budget is spent (no-op without a budget)."""
        if self.max_cost_usd is not None and self.total_cost >= self.max_cost_usd:
            raise BudgetExceeded(self.exceeded_message())

    def try_reserve(self, worst_usd: float) -> bool | None:
        """Reserve ``worst_usd`` for a request about to be sent: True when reserved, False when it does
        not fit now but requests in flight may leave room, None when it can never fit (stop)."""
        if self.max_cost_usd is None or worst_usd <= 0.0:
            self._n_reserved += 1
            return True
        if self.total_cost + self.reserved_usd + worst_usd <= self.max_cost_usd + 1e-12:
            self.reserved_usd += worst_usd
            self._n_reserved += 1
            return True
        return False if self._n_reserved else None

    async def reserve(self, worst_usd: float) -> None:
        """:meth:`try_reserve`, waiting while requests in flight hold the room; BudgetExceeded when none does."""
        while True:
            got = self.try_reserve(worst_usd)
            if got:
                return
            if got is None:
                raise BudgetExceeded(self.exceeded_message(worst_usd))
            await asyncio.sleep(0.01)

    def release(self, worst_usd: float) -> None:
        """Give back a reservation (after the reply's real cost was booked, or when nothing was sent)."""
        self._n_reserved = max(0, self._n_reserved - 1)
        if self.max_cost_usd is not None and worst_usd > 0.0:
            self.reserved_usd = max(0.0, self.reserved_usd - worst_usd)

    def as_dict(self) -> dict[str, Any]:
        """Every role's counters, by role name."""
        return {k: v.as_dict() for k, v in sorted(self.roles.items())}


# --------------------------------------------------------------------------- worst-case cost

DEFAULT_OUTPUT_BOUND = 16_384
"""Output tokens a request without ``max_tokens`` (and without a known context window) is reserved for."""
IMAGE_TOKENS = 1_600
"""Prompt tokens reserved per image or audio part (above what the large providers bill for one image)."""
_MAX_TOKEN_PARAMS = ("max_tokens", "max_completion_tokens", "max_output_tokens")
_CHARS_PER_TOKEN = 3.0  # ASCII text; a non-ASCII character counts as a token (upper-leaning, like judges.budget)


def estimate_prompt_tokens(payload: Any) -> int:
    """An upper-leaning estimate of a provider payload's prompt tokens: its text (3 ASCII characters or 1 other
    character per token, +25 %) and :data:`IMAGE_TOKENS` per image/audio part (a data URL, bytes, or a long
    base64 string); works on any provider's payload (dicts, lists, strings, pydantic objects)."""
    ascii_chars = other = media = 0
    stack = [payload]
    while stack:
        x = stack.pop()
        if isinstance(x, str):
            if len(x) > 1024 and (x.startswith("data:") or " " not in x[:1024]):
                media += 1
            else:
                n = sum(1 for c in x if ord(c) < 128)
                ascii_chars, other = ascii_chars + n, other + len(x) - n
        elif isinstance(x, (bytes, bytearray, memoryview)):
            media += 1
        elif isinstance(x, dict):
            stack.extend(x.values())
        elif isinstance(x, (list, tuple)):
            stack.extend(x)
        elif hasattr(x, "model_dump"):
            stack.append(x.model_dump(exclude_none=True))
        elif hasattr(x, "__dict__"):
            stack.append(vars(x))
    return int((ascii_chars / _CHARS_PER_TOKEN + other) * 1.25) + 8 + media * IMAGE_TOKENS


def worst_case_tokens(cfg: EndpointConfig, payload: Any, params: dict[str, Any]) -> tuple[int, int]:
    """A request's worst case in tokens: the payload's estimated prompt tokens, and ``max_tokens`` (else the
    endpoint's context window, else :data:`DEFAULT_OUTPUT_BOUND`) as the output bound. Priced live by
    :meth:`ModelClient.worst_case_cost`, at batch prices by ``mmsafe run --batch --max-cost``."""
    bound = next((int(params[k]) for k in _MAX_TOKEN_PARAMS if params.get(k)), None)
    if bound is None:
        bound = int(getattr(cfg, "context_window", None) or DEFAULT_OUTPUT_BOUND)
    return estimate_prompt_tokens(payload), bound


# --------------------------------------------------------------------------- replicas


class Replica:
    """One base URL of an endpoint: its provider, its own AIMD limiter and a circuit breaker.

    ``failures`` in a row without an HTTP answer (connection refused, reset, timeout) open
    the breaker for a cool-down that doubles on each re-opening (up to 60 s); after it, one
    probe request is let through (half-open) and a success closes the breaker.
    """

    def __init__(self, provider: Provider, limiter: AdaptiveLimiter, failures: int, cooldown_s: float):
        self.provider = provider
        self.limiter = limiter
        self.url = provider.cfg.base_url or ""
        self.failures_to_open = failures
        self.base_cooldown_s = cooldown_s
        self.cooldown_s = cooldown_s
        self.consecutive = 0
        self.open_until = 0.0
        self.probing = False
        self.ok = 0
        self.failed = 0
        self.opened = 0

    def available(self, now: float) -> bool:
        """Closed, or open with its cool-down over and no probe in flight."""
        if self.open_until == 0.0:
            return True
        return now >= self.open_until and not self.probing

    def on_success(self) -> None:
        """Count a reply: closes the breaker and resets its cool-down."""
        self.ok += 1
        self.consecutive = 0
        self.probing = False
        if self.open_until:
            self.open_until = 0.0
            self.cooldown_s = self.base_cooldown_s

    def on_unreachable(self, now: float) -> None:
        """Count a failure without an HTTP answer; opens the breaker after enough in a row or a failed probe."""
        self.failed += 1
        self.consecutive += 1
        was_probe = self.probing
        self.probing = False
        if was_probe or self.consecutive >= self.failures_to_open:
            if self.open_until:  # a failed probe: rest longer
                self.cooldown_s = min(60.0, self.cooldown_s * 2)
            self.open_until = now + self.cooldown_s
            self.opened += 1

    def stats(self) -> dict[str, Any]:
        """This replica's counts, breaker state and current concurrency limit."""
        return {"url": self.url, "ok": self.ok, "failed": self.failed, "opened": self.opened,
                "open": self.open_until > time.monotonic(), "limit": int(self.limiter.limit)}


# --------------------------------------------------------------------------- client


class ModelClient:
    """A provider plus limiter, retries, cache and ledger, used for one role."""

    def __init__(self, provider: Provider, role: str, ledger: CostLedger,
                 cache: ResponseCache | None = None, epoch: int = 0,
                 params: dict[str, Any] | None = None):
        self.provider = provider
        self.cfg: EndpointConfig = provider.cfg
        self.role = role
        self.ledger = ledger
        self.cache = cache
        self.epoch = epoch
        self.params = {**self.cfg.params, **(params or {})}
        self.limiter = AdaptiveLimiter(self.cfg.max_connections)
        self._identity = provider.identity()
        self._fatal: str | None = None
        cfg = self.cfg
        self.replicas = [Replica(provider, self.limiter, cfg.breaker_failures, cfg.breaker_cooldown_s)]
        for url in cfg.base_urls[1:]:
            rcfg = cfg.model_copy(update={"base_url": url, "base_urls": [url]})
            self.replicas.append(Replica(type(provider)(rcfg), AdaptiveLimiter(cfg.max_connections),
                                         cfg.breaker_failures, cfg.breaker_cooldown_s))
        self._ever_ok = False
        self._unreachable_run = 0  # failures without an HTTP answer in a row, all replicas together

    @property
    def name(self) -> str:
        """The endpoint's name as the user gave it."""
        return self.cfg.name

    async def start(self) -> None:
        """Start every replica's provider."""
        for r in self.replicas:
            await r.provider.start()

    async def close(self) -> None:
        """Close every replica's provider."""
        for r in self.replicas:
            await r.provider.close()

    def replica_stats(self) -> list[dict[str, Any]]:
        """Per replica: requests answered and failed, breaker openings, current limit."""
        return [r.stats() for r in self.replicas]

    async def _pick(self) -> Replica:
        """The available replica with the fewest requests in flight (per unit of limit); waits while all rest."""
        if len(self.replicas) == 1 and self.replicas[0].open_until == 0.0:
            return self.replicas[0]
        while True:
            now = time.monotonic()
            avail = [r for r in self.replicas if r.available(now)]
            if avail:
                r = min(avail, key=lambda x: ((x.limiter.in_flight + len(x.limiter._waiters))
                                              / max(1.0, x.limiter.limit)))
                if r.open_until:
                    r.probing = True  # half-open: this request is the probe
                return r
            wake = min(r.open_until for r in self.replicas if not r.probing) if any(
                not r.probing for r in self.replicas) else now + 0.05
            await asyncio.sleep(max(0.01, wake - now))

    def _note_unreachable(self, rep: Replica, err: str) -> None:
        if len(self.replicas) > 1:  # one replica has nothing to fail over to: retries and backoff pace it
            rep.on_unreachable(time.monotonic())
        self._unreachable_run += 1
        if not self._ever_ok and self._unreachable_run >= self.cfg.dead_after and self._fatal is None:
            where = ", ".join(r.url for r in self.replicas if r.url) or self.cfg.name
            self._fatal = (f"{self.cfg.name}: endpoint unreachable ({where}): {self._unreachable_run} attempts in a "
                           f"row got no answer and none ever succeeded; last error: {err}")

    async def chat(self, messages: list[Message], *, root: Path | None = None, system: str | None = None,
                   params: dict[str, Any] | None = None) -> ChatResult:
        """Send a conversation; never raises for endpoint failures (the result carries
        ``error``) except FatalProviderError and BudgetExceeded; AssetError propagates."""
        if self._fatal:
            raise FatalProviderError(self._fatal)
        p = {**self.params, **(params or {})} if params else self.params
        led = self.ledger.roles[self.role]
        key = None
        if self.cache is not None:
            key = cache_key(self._identity, p, messages, root, system, self.epoch)
            hit = self.cache.get(key)
            if hit is not None:
                if root is not None:  # the files must still be what the key says (a send would check)
                    for m in messages:
                        if not isinstance(m.content, str):
                            for part in m.content:
                                if not isinstance(part, TextPart):
                                    verify_asset(part, root)
                led.cached += 1
                return hit
        # encoded once a connection slot is free, not when queued: a stage that queues thousands
        # of requests does not read and base64 every image up front (and hold them all)
        return await self._send(None, p, key, encode=lambda: self.provider.encode(messages, root, system))

    def worst_case_cost(self, payload: Any, params: dict[str, Any]) -> float:
        """USD this request can cost at most: the payload's estimated prompt tokens at the input price plus
        ``max_tokens`` (else the context window, else :data:`DEFAULT_OUTPUT_BOUND`) at the output price."""
        price = self.cfg.price
        if not price.input and not price.output:
            return 0.0
        return price.cost(*worst_case_tokens(self.cfg, payload, params))

    async def chat_payload(self, payload: Any, params: dict[str, Any] | None = None) -> ChatResult:
        """Send an already-encoded payload (no cache)."""
        return await self._send(payload, {**self.params, **(params or {})}, None)

    async def _send(self, payload: Any, p: dict[str, Any], key: str | None,
                    encode: Any = None) -> ChatResult:
        cfg = self.cfg
        led = self.ledger.roles[self.role]
        attempt = 0
        t_start = time.perf_counter()
        last_err = "no attempt made"
        failed: list[dict[str, Any]] = []  # each failed attempt, kept for the request log
        worst: float | None = None  # the request's worst-case USD, reserved on the ledger while it is in flight
        while True:
            if self._fatal:
                raise FatalProviderError(self._fatal)
            self.ledger.check_budget()
            attempt += 1
            rep = await self._pick()
            limiter = rep.limiter
            try:
                await limiter.acquire()
            except BaseException:
                rep.probing = False
                raise
            try:
                self.ledger.check_budget()  # again: the budget may have run out while this request queued
                if payload is None:
                    payload = encode()
                if worst is None:
                    worst = self.worst_case_cost(payload, p)
                await self.ledger.reserve(worst)  # the budget is a ceiling: room for the worst case first
            except ProviderError as e:  # e.g. a part this wire format cannot carry: this request fails, not the run
                limiter.release(ok=False)  # nothing was sent: no evidence either way for the limit
                rep.probing = False
                led.errors += 1
                return ChatResult(text=None, error=str(e), attempts=0)
            except BaseException:  # BudgetExceeded, AssetError (a missing or changed file) ...
                limiter.release(ok=False)
                rep.probing = False
                raise
            try:
                res = await rep.provider.complete(payload, p, cfg.timeout_s)
            except ProviderError as e:
                self.ledger.release(worst)  # a failed attempt is not billed
                limiter.release(ok=False, overload=e.overload)
                led.calls += 1
                last_err = str(e)
                failed.append({"error": last_err, "status": e.status, "t": time.time(), "replica": rep.url})
                if e.unreachable:
                    self._note_unreachable(rep, last_err)
                    if self._fatal:
                        led.errors += 1
                        raise FatalProviderError(self._fatal) from None
                else:
                    rep.probing = False
                    rep.consecutive = 0  # it answered (with an HTTP error): reachable
                    self._unreachable_run = 0
                if e.fatal:
                    self._fatal = f"{self.cfg.name}: {e}"
                    led.errors += 1
                    raise FatalProviderError(self._fatal) from None
                if not e.retryable or attempt > cfg.max_retries:
                    led.errors += 1
                    return ChatResult(text=None, error=last_err, attempts=attempt,
                                      latency_ms=(time.perf_counter() - t_start) * 1000,
                                      extra={"failed_attempts": failed})
                delay = min(cfg.backoff_max_s, cfg.backoff_base_s * (2 ** (attempt - 1)))
                delay = random.uniform(delay / 2, delay)  # jitter
                if e.retry_after is not None:
                    delay = max(delay, min(e.retry_after, cfg.backoff_max_s * 4))
                await asyncio.sleep(delay)
                continue
            except BaseException:
                self.ledger.release(worst)
                limiter.release(ok=False)
                rep.probing = False
                raise
            limiter.release(ok=True)
            rep.on_success()
            self._ever_ok = True
            self._unreachable_run = 0
            led.calls += 1
            res.attempts = attempt
            res.latency_ms = (time.perf_counter() - t_start) * 1000
            res.cost_usd = cfg.price.cost(res.input_tokens, res.output_tokens)
            led.input_tokens += res.input_tokens
            led.output_tokens += res.output_tokens
            led.cost_usd += res.cost_usd  # booked before the reservation goes: spent + reserved stays <= budget
            self.ledger.release(worst)
            if failed:
                res.extra["failed_attempts"] = failed
            if self.cache is not None and key is not None:
                self.cache.put(key, res)
            return res


__all__ = ["DEFAULT_OUTPUT_BOUND", "IMAGE_TOKENS", "AdaptiveLimiter", "AssetError", "BudgetExceeded", "CostLedger",
           "FatalProviderError", "ModelClient", "Replica", "ResponseCache", "cache_key", "default_cache_dir",
           "estimate_prompt_tokens", "request_log", "worst_case_tokens"]


def request_log(res: ChatResult, role: str, sample_id: str | None, model: str) -> list[dict[str, Any]]:
    """Rows for the store's request log: one per network attempt (or one 'cached' row)."""
    now = time.time()
    rows: list[dict[str, Any]] = [
        {"sample_id": sample_id, "role": role, "model": model, "status": "error", "error": f["error"],
         "http_status": f.get("status"), "created": f.get("t", now)}
        for f in res.extra.get("failed_attempts", ())]
    # e.g. a defense's moderator calls, made for this sample
    rows.extend({**r, "sample_id": r.get("sample_id") or sample_id} for r in res.extra.get("extra_requests", ()))
    if res.extra.get("no_call"):
        return rows
    if res.cached:
        rows.append({"sample_id": sample_id, "role": role, "model": model, "status": "cached",
                     "input_tokens": res.input_tokens, "output_tokens": res.output_tokens, "created": now})
    elif res.ok:
        rows.append({"sample_id": sample_id, "role": role, "model": model, "status": "ok",
                     "input_tokens": res.input_tokens, "output_tokens": res.output_tokens,
                     "cost_usd": res.cost_usd, "latency_ms": res.latency_ms, "created": now})
    return rows


def accumulate(d: dict[str, Any], res: ChatResult) -> None:
    """Add one call's calls/tokens/cost/latency/cache/attempt counts into a running dict."""
    d["calls"] = d.get("calls", 0) + 1
    d["input_tokens"] = d.get("input_tokens", 0) + res.input_tokens
    d["output_tokens"] = d.get("output_tokens", 0) + res.output_tokens
    d["cost_usd"] = d.get("cost_usd", 0.0) + (0.0 if res.cached else res.cost_usd)
    d["latency_ms"] = d.get("latency_ms", 0.0) + res.latency_ms
    d["cached"] = d.get("cached", 0) + int(res.cached)
    d["attempts"] = d.get("attempts", 0) + res.attempts
