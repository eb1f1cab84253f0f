"""``mmsafe run --batch``: the target's replies through a provider batch API at batch prices.

The fixed-mode samples still lacking a reply are encoded exactly as a live call would encode
them (``provider.encode``), submitted as one batch (OpenAI Batch or Anthropic Message Batches),
polled until it ends, and their replies stored; the judging then happens as in a live run.

Crash safety: every job is recorded in the store (meta ``batch_jobs``) *before* its POST, under
a client marker (``tag``). A re-run of a killed command resumes polling the recorded batch ids;
a job recorded without an id (killed between the POST and the record) is first looked up on the
provider by its tag, and only submitted when none is found. Replies are stored once (an ok
response is never overwritten) and a job is marked collected after its results are stored, so
nothing is submitted or written twice.

Lines that fail (errored, expired, cancelled) are retried as a new batch (``--batch-fallback
batch``, up to :data:`MAX_ROUNDS` batches per sample) or left to the live pass that follows
(``--batch-fallback live``).

``--max-cost``: before a line is submitted its worst-case cost at *batch* prices (the live path's
estimate, :func:`mmsafe.models.engine.worst_case_tokens`) is reserved on the budget, after what the
run already spent; the lines that do not fit are not submitted, stay pending (no reply, no error
stored, not sent live either), the command says so in one line and the run ends with the
``max_cost`` reason, as a live run does. A re-run with a larger budget submits only those.

The response cache is honoured as in a live run: a sample whose request is cached is stored from
the cache (cost 0) and not submitted, and every batch reply is put in the cache.
"""

from __future__ import annotations

import asyncio
import os
import sys
import time
import uuid
from typing import Any, Protocol

from mmsafe.models.base import ChatResult, ConfigError, Provider, ProviderError
from mmsafe.models.batch_openai import BatchState
from mmsafe.models.engine import (
    CostLedger,
    FatalProviderError,
    ResponseCache,
    cache_key,
    default_cache_dir,
    request_log,
    worst_case_tokens,
)
from mmsafe.runner.options import RunOptions
from mmsafe.types import Response, Sample, TextPart, Usage, verify_asset

MAX_ROUNDS = 3  # batches a sample goes through at most (the first and two retries)
META_KEY = "batch_jobs"
FALLBACKS = ("batch", "live")
BATCH_PROVIDERS = ("openai", "anthropic")
# lines per batch at most: well under both APIs' caps (OpenAI 50,000 lines / 200 MB a file, Anthropic
# 100,000 requests / 256 MB), and what one process encodes and holds in memory at once (images in base64)
MAX_LINES = 2000
BUDGET_KEY = "batch_budget"  # store meta: the samples --max-cost left pending (None once none is)


class BatchBackend(Protocol):
    """One provider's batch API (see mmsafe.models.batch_openai / batch_anthropic)."""

    kind: str

    async def start(self) -> None: ...
    async def close(self) -> None: ...
    def request_line(self, custom_id: str, payload: Any, params: dict[str, Any]) -> dict[str, Any]: ...
    async def submit(self, lines: list[dict[str, Any]], tag: str) -> str: ...
    async def find(self, tag: str, n_lines: int, after: float) -> str | None: ...
    async def state(self, batch_id: str) -> BatchState: ...
    async def results(self, st: BatchState) -> dict[str, ChatResult]: ...


def batch_backend(provider: Provider) -> BatchBackend:
    """The batch API of the target's provider; ConfigError (exit 2) for one without."""
    kind = provider.cfg.provider
    if kind == "openai":
        from mmsafe.models.batch_openai import OpenAIBatch
        return OpenAIBatch(provider)
    if kind == "anthropic":
        from mmsafe.models.batch_anthropic import AnthropicBatch
        return AnthropicBatch(provider)
    raise ConfigError(f"--batch: provider {kind!r} of {provider.cfg.name} has no batch API "
                      "(openai and anthropic do); run without --batch")


def check_batch(opts: RunOptions) -> None:
    """Refuse what cannot go through a batch API before anything is written (ConfigError, exit 2)."""
    if opts.mode != "fixed":
        raise ConfigError(f"--batch: only --mode fixed (one reply per sample) goes through a batch API, "
                          f"not --mode {opts.mode}")
    if opts.target.provider not in BATCH_PROVIDERS:
        raise ConfigError(f"--batch: provider {opts.target.provider!r} of {opts.target.name} has no batch API "
                          f"({' and '.join(BATCH_PROVIDERS)} do); run without --batch")
    if opts.executor != "local":
        raise ConfigError(f"--batch: the provider runs the batch; --executor {opts.executor} has nothing to do")
    if opts.defense is not None:
        raise ConfigError("--batch: a --defense wraps each live call; run it without --batch")
    if opts.batch_fallback not in FALLBACKS:
        raise ConfigError(f"--batch-fallback: {opts.batch_fallback!r} is not one of {', '.join(FALLBACKS)}")
    if opts.batch_poll_s <= 0:
        raise ConfigError(f"--batch-poll: {opts.batch_poll_s:g} must be > 0 seconds")


def batch_pricing_note(provider: Provider) -> str:
    """How batch lines are priced: the models file's batch prices, or the 50% default."""
    p = provider.cfg.price
    if p.batch_input is not None or p.batch_output is not None:
        return "batch prices from the models file"
    if not p.input and not p.output:
        return "no price set"
    return "batch price not in the models file: 50% of the live price assumed"


OWNER_KEY = "batch_owner"


def take_batch_run(store: Any, where: Any, poll_s: float) -> None:
    """Mark this process as the run's batch driver, or refuse (StoreError, exit 2) while another live
    one is: two drivers would each submit the same samples. A driver that was killed (its process
    gone on this host, or no heartbeat for a while from another host) is taken over."""
    from mmsafe.store import StoreError
    from mmsafe.store.base import holder_dead, this_host

    rec = store.get_meta(OWNER_KEY)
    now = time.time()
    if rec and not (rec.get("host") == this_host() and rec.get("pid") == os.getpid()):
        quiet = now - float(rec.get("beat") or 0) > max(120.0, 3 * float(rec.get("poll_s") or 30))
        if not quiet and not holder_dead(rec.get("host"), rec.get("pid")):
            raise StoreError(f"{where}: a --batch command (pid {rec.get('pid')} on {rec.get('host')}) is working on "
                             "this run; wait for it to finish (or stop it) before starting another")
    store.set_meta(OWNER_KEY, {"host": this_host(), "pid": os.getpid(), "beat": now, "poll_s": poll_s})


async def api_call(provider: Provider, fn: Any, *args: Any) -> Any:
    """One batch-API request, retried with backoff while the failure is transient; otherwise the
    command stops with one line (FatalProviderError, exit 2): the recorded jobs resume on a re-run."""
    cfg = provider.cfg
    for attempt in range(cfg.max_retries + 1):
        try:
            return await fn(*args)
        except ProviderError as e:
            if not e.retryable or attempt >= cfg.max_retries:
                raise FatalProviderError(f"{cfg.name}: {e}") from None
            await asyncio.sleep(min(cfg.backoff_max_s, cfg.backoff_base_s * 2 ** attempt))
    raise AssertionError("unreachable")


class _Jobs:
    """The run's batch jobs as stored in meta ``batch_jobs`` (written through on every change)."""

    def __init__(self, store: Any, key: str = META_KEY):
        self.store, self.key = store, key
        rec = store.get_meta(key) or {}
        self.jobs: list[dict[str, Any]] = list(rec.get("jobs") or [])
        # sample id -> batches it went into in this command (a later command retries failures again)
        self.rounds: dict[str, int] = {}

    def save(self) -> None:
        self.store.set_meta(self.key, {"jobs": self.jobs})

    def open(self) -> list[dict[str, Any]]:
        return [j for j in self.jobs if j["state"] != "collected"]


class _BatchRun:
    """One ``mmsafe run --batch`` command: resume the recorded jobs, take what the response cache
    holds, submit the rest within the ``--max-cost`` budget, poll, store the replies."""

    def __init__(self, opts: RunOptions, bench: Any, store: Any, provider: Provider):
        from mmsafe.runner.run import iter_selected  # run imports this module lazily: no cycle at import

        self.opts, self.store, self.provider, self.root = opts, store, provider, bench.root
        self.backend = batch_backend(provider)
        self.jobs = _Jobs(store)
        self.target = opts.target
        self.params = {**provider.cfg.params}
        self.selected: dict[str, tuple[int, Sample]] = {
            s.id: (i, s) for i, s in enumerate(iter_selected(bench, opts.limit))}
        self.stats: dict[str, Any] = {"jobs": 0, "submitted_lines": 0, "replies": 0, "failed_lines": 0,
                                      "resumed": 0, "given_up": 0, "cached": 0, "over_budget": 0,
                                      "pricing": batch_pricing_note(provider), "cost_usd": 0.0}
        self.last_fail: dict[str, str] = {}
        self.started = time.time()
        self.shown = ""
        # the budget: what the run spent before (every role), plus the worst case of each line in flight
        self.ledger = CostLedger(opts.max_cost)
        for role, d in store.ledger().items():
            self.ledger.roles[role].cost_usd += d["cost_usd"]
        self.reserved: dict[str, list[float]] = {}  # job tag -> its lines' reservations (this command's jobs)
        self.pending: list[str] = []  # samples the budget kept back (not submitted, nothing stored)
        self.stopped: tuple[str, str] | None = None
        self.cache: ResponseCache | None = None
        if opts.use_cache:
            self.cache = ResponseCache((opts.cache_dir or default_cache_dir()) / "responses.sqlite")
        self.identity = provider.identity()

    def note(self, msg: str) -> None:
        """The batch's status on stderr when it changes (the progress bar counts replies)."""
        if msg != self.shown:
            self.shown = msg
            print(f"{self.target.name}: {msg}", file=sys.stderr, flush=True)
        if self.opts.on_progress:
            self.opts.on_progress({"total": len(self.selected),
                                   "done": len(self.store.ok_sample_ids() & self.selected.keys()), "errors": 0,
                                   "cost_usd": self.stats["cost_usd"], "started": self.started, "batch": msg})

    async def call(self, fn: Any, *args: Any) -> Any:
        return await api_call(self.provider, fn, *args)

    def _key(self, sample: Sample) -> str:
        return cache_key(self.identity, self.params, sample.messages, self.root, self.opts.system_prompt,
                         self.opts.epoch)

    def _save(self, sid: str, res: ChatResult, extra: dict[str, Any], batch_id: str | None) -> None:
        order, sample = self.selected[sid]
        resp = Response(sample_id=sid, text=res.text, model=res.model or self.target.model,
                        finish_reason=res.finish_reason,
                        usage=Usage(input_tokens=res.input_tokens, output_tokens=res.output_tokens),
                        cost_usd=res.cost_usd, latency_ms=0.0, attempts=res.attempts, cached=res.cached, extra=extra)
        log = request_log(res, "target", sid, self.target.name)
        if batch_id is not None:
            for row in log:
                row["batch_id"] = batch_id
        self.store.save_response(sample, resp, log, order=order)

    def from_cache(self) -> None:
        """Store the samples whose request the response cache holds (cost 0): they are not submitted."""
        if self.cache is None:
            return
        ok = self.store.ok_sample_ids()
        in_jobs = {sid for j in self.jobs.open() for sid in j["lines"].values()}
        for sid, (_, sample) in self.selected.items():
            if sid in ok or sid in in_jobs:
                continue
            hit = self.cache.get(self._key(sample))
            if hit is None:
                continue
            for m in sample.messages:  # the files must still be what the key says (as a live run checks)
                if not isinstance(m.content, str):
                    for part in m.content:
                        if not isinstance(part, TextPart):
                            verify_asset(part, self.root)
            self._save(sid, hit, {}, None)
            self.stats["cached"] += 1
            self.stats["replies"] += 1

    async def collect(self, job: dict[str, Any]) -> None:
        """Poll ``job`` until it ends, then store its replies (ok ones never twice)."""
        while True:
            st = await self.call(self.backend.state, job["remote"])
            counts = " ".join(f"{k}={v}" for k, v in st.counts.items() if v)
            self.note(f"batch {job['remote']}: {st.status} {counts}".strip())
            if st.terminal:
                break
            take_batch_run(self.store, self.opts.out, self.opts.batch_poll_s)  # the heartbeat another host reads
            await asyncio.sleep(self.opts.batch_poll_s)
        results = await self.call(self.backend.results, st)
        ok_ids = self.store.ok_sample_ids()
        led = self.ledger.roles["target"]
        for cid, sid in job["lines"].items():
            if sid in ok_ids or sid not in self.selected:
                continue
            res = results.get(cid) or ChatResult(
                text=None, error=f"batch {job['remote']} {st.status}: no result for this line"
                + (f" ({st.error})" if st.error else ""))
            if not res.ok:
                self.stats["failed_lines"] += 1
                self.last_fail[sid] = res.error or "batch line failed"
                continue
            res.cost_usd = self.target.price.batch_cost(res.input_tokens, res.output_tokens)
            res.attempts = 1
            self.stats["cost_usd"] += res.cost_usd
            led.cost_usd += res.cost_usd  # booked before the reservations go
            self._save(sid, res, {"batch": {"id": job["remote"], "api": self.backend.kind}}, job["remote"])
            if self.cache is not None:
                self.cache.put(self._key(self.selected[sid][1]), res)
            self.stats["replies"] += 1
        for worst in self.reserved.pop(job["tag"], []):
            self.ledger.release(worst)
        job["state"] = "collected"
        self.jobs.save()

    async def submit(self, job: dict[str, Any], lines: list[dict[str, Any]] | None = None) -> None:
        """Send a recorded job (``lines`` already encoded, or encoded here), unless the provider already
        has it (found by its tag)."""
        if job.get("remote") is not None:
            return
        found = await self.call(self.backend.find, job["tag"], len(job["lines"]), job["created"])
        if found is None:
            if lines is None:
                lines = [self.backend.request_line(cid, self._encode(sid), self.params)
                         for cid, sid in job["lines"].items()]
            found = await self.call(self.backend.submit, lines, job["tag"])
            self.stats["submitted_lines"] += len(lines)
        job["remote"], job["state"] = found, "submitted"
        self.jobs.save()

    def _encode(self, sid: str) -> Any:
        return self.provider.encode(self.selected[sid][1].messages, self.root, self.opts.system_prompt)

    def _todo(self) -> list[str]:
        """Samples to submit now: no ok reply, in no open job, rounds left; once the budget kept some
        back, only retries of lines already sent in this command."""
        ok = self.store.ok_sample_ids()
        in_jobs = {sid for j in self.jobs.open() for sid in j["lines"].values()}
        rounds = MAX_ROUNDS if self.opts.batch_fallback == "batch" else 1
        return [sid for sid in self.selected if sid not in ok and sid not in in_jobs
                and self.jobs.rounds.get(sid, 0) < rounds
                and (self.stopped is None or self.jobs.rounds.get(sid, 0) > 0)]

    def _over_budget(self, left: list[str], worst: float, fitted: int) -> None:
        """The budget cannot take the next line: keep ``left`` back and say so in one line."""
        self.pending.extend(sid for sid in left if sid not in self.pending)
        led = self.ledger
        room = max(0.0, (led.max_cost_usd or 0.0) - led.total_cost - led.reserved_usd)
        msg = (f"--max-cost ${led.max_cost_usd:g}: {len(left)} sample(s) not submitted: the next line could cost up to "
               f"${worst:.6f} at batch prices, more than the ${room:.6f} left (${led.total_cost:.6f} spent, "
               f"${led.reserved_usd:.6f} reserved for the worst case of the {fitted} line(s) submitted now)")
        print(f"{self.target.name}: {msg}; re-run with a larger --max-cost to send them (a max_tokens in the "
              "models file lowers the worst case)", file=sys.stderr, flush=True)
        self.stopped = ("max_cost", msg)

    async def submit_round(self, todo: list[str]) -> list[dict[str, Any]]:
        """Reserve each line's worst case at batch prices and submit, in batches of :data:`MAX_LINES`, the
        lines that fit the budget; the first that does not keeps itself and the rest back."""
        new: list[dict[str, Any]] = []
        fitted = 0
        for i in range(0, len(todo), MAX_LINES):
            part = todo[i:i + MAX_LINES]
            tag = uuid.uuid4().hex[:16]
            cids: dict[str, str] = {}
            lines: list[dict[str, Any]] = []
            worsts: list[float] = []
            for n, sid in enumerate(part):
                payload = self._encode(sid)
                worst = self.target.price.batch_cost(*worst_case_tokens(self.provider.cfg, payload, self.params))
                if not self.ledger.try_reserve(worst):
                    self._over_budget(todo[i + n:], worst, fitted)
                    break
                cid = f"m{tag[:6]}-{self.selected[sid][0]}"
                cids[cid] = sid
                lines.append(self.backend.request_line(cid, payload, self.params))
                worsts.append(worst)
                fitted += 1
            if cids:
                job = {"tag": tag, "remote": None, "state": "submitting", "created": time.time(), "lines": cids}
                for sid in cids.values():
                    self.jobs.rounds[sid] = self.jobs.rounds.get(sid, 0) + 1
                self.reserved[tag] = worsts
                self.jobs.jobs.append(job)
                self.jobs.save()  # recorded before the POST: a kill after it finds the batch by its tag
                self.stats["jobs"] += 1
                await self.submit(job, lines)
                new.append(job)
            if self.stopped is not None:
                break
        return new

    async def go(self) -> None:
        """Resume the recorded jobs, take cached replies, then submit and collect rounds until done."""
        resumed = self.jobs.open()  # a killed command's jobs: resume, never resubmit
        for job in resumed:
            self.stats["resumed"] += 1
            for sid in job["lines"].values():
                self.jobs.rounds[sid] = self.jobs.rounds.get(sid, 0) + 1
            await self.submit(job)
        for job in resumed:
            await self.collect(job)
        self.from_cache()
        while todo := self._todo():
            new = await self.submit_round(todo)
            for job in new:
                await self.collect(job)
            if not new:
                break

    def finish(self) -> None:
        """Samples that failed every batch: stored as errors (``--batch-fallback batch``) and kept out of
        the live pass, as are the ones the budget kept back; the budget's note goes in the store."""
        ok = self.store.ok_sample_ids()
        back = set(self.pending) - ok
        failed = [sid for sid in self.selected if sid not in ok and sid not in back]
        skip: set[str] = set(back)
        if failed and self.opts.batch_fallback == "batch":
            for sid in failed:  # given up after MAX_ROUNDS batches: stored as errors, not sent live
                order, sample = self.selected[sid]
                self.store.save_response(sample, Response(sample_id=sid, error=self.last_fail.get(sid)
                                                          or "batch line failed"), [], order=order)
            self.stats["given_up"] = len(failed)
            skip.update(failed)
        self.stats["over_budget"] = len(back)
        if skip:
            keep = frozenset(self.selected) - skip
            self.opts.sample_ids = keep if self.opts.sample_ids is None else self.opts.sample_ids & keep
        self.store.set_meta(BUDGET_KEY, {"pending": len(back), "budget_usd": self.opts.max_cost, "at": time.time(),
                                         "reason": self.stopped[1] if self.stopped else None} if back else None)


async def run_batch(opts: RunOptions, bench: Any, store: Any, provider: Provider) -> dict[str, Any]:
    """Get the selected samples' target replies through the provider's batch API into ``store``.

    Returns the batch stats (jobs, lines sent, replies stored, from the cache, failures, samples the
    budget kept back, pricing note) and, under ``stopped``, ``("max_cost", why)`` when the budget kept
    samples back. Those, and samples that still failed after :data:`MAX_ROUNDS` batches with
    ``--batch-fallback batch``, are left out of the live pass (``opts.sample_ids``); with ``live``
    every failed line goes to the live pass."""
    check_batch(opts)
    work = _BatchRun(opts, bench, store, provider)
    take_batch_run(store, opts.out, opts.batch_poll_s)
    await work.backend.start()
    try:
        await work.go()
    finally:
        await work.backend.close()
        if work.cache is not None:
            work.cache.close()
        store.set_meta(OWNER_KEY, None)
    work.finish()
    return {**work.stats, "stopped": work.stopped if work.pending else None}


__all__ = ["FALLBACKS", "MAX_ROUNDS", "BatchBackend", "batch_backend", "batch_pricing_note", "check_batch",
           "run_batch"]
