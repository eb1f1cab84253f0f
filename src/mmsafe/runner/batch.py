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
from mmsafe.models.engine import FatalProviderError, request_log
from mmsafe.runner.options import RunOptions
from mmsafe.types import Response, Sample, Usage

MAX_ROUNDS = 3  # batches a sample goes through at most (the first and two retries)
META_KEY = "batch_jobs"
FALLBACKS = ("batch", "live")
BATCH_PROVIDERS = ("openai", "anthropic")
# lines per batch at most: well under both APIs' caps (OpenAI 50,000 lines / 200 MB a file, Anthropic
# 100,000 requests / 256 MB), and what one process encodes and holds in memory at once (images in base64)
MAX_LINES = 2000


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


async def run_batch(opts: RunOptions, bench: Any, store: Any, provider: Provider) -> dict[str, Any]:
    """Get the selected samples' target replies through the provider's batch API into ``store``.

    Returns the batch stats (jobs, lines sent, replies stored, failures, pricing note). Samples that
    still failed after :data:`MAX_ROUNDS` batches are left out of the live pass (``opts.sample_ids``)
    with ``--batch-fallback batch``; with ``live`` every failed line goes to the live pass."""
    check_batch(opts)
    from mmsafe.runner.run import iter_selected  # run imports this module lazily: no cycle at import

    backend = batch_backend(provider)
    jobs = _Jobs(store)
    root = bench.root
    target = opts.target
    params = {**provider.cfg.params}
    selected: dict[str, tuple[int, Sample]] = {s.id: (i, s) for i, s in enumerate(iter_selected(bench, opts.limit))}
    stats: dict[str, Any] = {"jobs": 0, "submitted_lines": 0, "replies": 0, "failed_lines": 0, "resumed": 0,
                             "given_up": 0, "pricing": batch_pricing_note(provider), "cost_usd": 0.0}
    last_fail: dict[str, str] = {}
    started = time.time()

    shown: list[str] = [""]

    def note(msg: str) -> None:
        """The batch's status on stderr when it changes (the progress bar counts replies)."""
        if msg != shown[0]:
            shown[0] = msg
            print(f"{target.name}: {msg}", file=sys.stderr, flush=True)
        if opts.on_progress:
            opts.on_progress({"total": len(selected), "done": len(store.ok_sample_ids() & selected.keys()),
                              "errors": 0, "cost_usd": stats["cost_usd"], "started": started, "batch": msg})

    async def call(fn: Any, *args: Any) -> Any:
        return await api_call(provider, fn, *args)

    async def collect(job: dict[str, Any]) -> None:
        """Poll ``job`` until it ends, then store its replies (ok ones never twice)."""
        while True:
            st = await call(backend.state, job["remote"])
            counts = " ".join(f"{k}={v}" for k, v in st.counts.items() if v)
            note(f"batch {job['remote']}: {st.status} {counts}".strip())
            if st.terminal:
                break
            take_batch_run(store, opts.out, opts.batch_poll_s)  # the heartbeat another host's process reads
            await asyncio.sleep(opts.batch_poll_s)
        results = await call(backend.results, st)
        ok_ids = store.ok_sample_ids()
        for cid, sid in job["lines"].items():
            if sid in ok_ids or sid not in selected:
                continue
            res = results.get(cid) or ChatResult(
                text=None, error=f"batch {job['remote']} {st.status}: no result for this line"
                + (f" ({st.error})" if st.error else ""))
            if not res.ok:
                stats["failed_lines"] += 1
                last_fail[sid] = res.error or "batch line failed"
                continue
            order, sample = selected[sid]
            res.cost_usd = target.price.batch_cost(res.input_tokens, res.output_tokens)
            stats["cost_usd"] += res.cost_usd
            resp = Response(sample_id=sid, text=res.text, model=res.model or target.model,
                            finish_reason=res.finish_reason,
                            usage=Usage(input_tokens=res.input_tokens, output_tokens=res.output_tokens),
                            cost_usd=res.cost_usd, latency_ms=0.0, attempts=1, cached=False,
                            extra={"batch": {"id": job["remote"], "api": backend.kind}})
            log = request_log(res, "target", sid, target.name)
            for row in log:
                row["batch_id"] = job["remote"]
            store.save_response(sample, resp, log, order=order)
            stats["replies"] += 1
        job["state"] = "collected"
        jobs.save()

    async def submit(job: dict[str, Any]) -> None:
        """Send a recorded job, unless the provider already has it (found by its tag)."""
        if job.get("remote") is None:
            found = await call(backend.find, job["tag"], len(job["lines"]), job["created"])
            if found is None:
                lines = []
                for cid, sid in job["lines"].items():
                    _, sample = selected[sid]
                    lines.append(backend.request_line(cid, provider.encode(sample.messages, root, opts.system_prompt),
                                                      params))
                found = await call(backend.submit, lines, job["tag"])
                stats["submitted_lines"] += len(lines)
            job["remote"], job["state"] = found, "submitted"
            jobs.save()

    take_batch_run(store, opts.out, opts.batch_poll_s)
    await backend.start()
    try:
        resumed = jobs.open()  # a killed command's jobs: resume, never resubmit
        for job in resumed:
            stats["resumed"] += 1
            for sid in job["lines"].values():
                jobs.rounds[sid] = jobs.rounds.get(sid, 0) + 1
            await submit(job)
        for job in resumed:
            await collect(job)
        while True:
            ok = store.ok_sample_ids()
            in_jobs = {sid for j in jobs.open() for sid in j["lines"].values()}
            todo = [sid for sid in selected if sid not in ok and sid not in in_jobs
                    and jobs.rounds.get(sid, 0) < (MAX_ROUNDS if opts.batch_fallback == "batch" else 1)]
            if not todo:
                break
            new = []
            for i in range(0, len(todo), MAX_LINES):  # every batch submitted first: they run side by side
                part = todo[i:i + MAX_LINES]
                tag = uuid.uuid4().hex[:16]
                job = {"tag": tag, "remote": None, "state": "submitting", "created": time.time(),
                       "lines": {f"m{tag[:6]}-{selected[sid][0]}": sid for sid in part}}
                for sid in part:
                    jobs.rounds[sid] = jobs.rounds.get(sid, 0) + 1
                jobs.jobs.append(job)
                jobs.save()  # recorded before the POST: a kill after it finds the batch by its tag
                stats["jobs"] += 1
                await submit(job)
                new.append(job)
            for job in new:
                await collect(job)
    finally:
        await backend.close()
        store.set_meta(OWNER_KEY, None)
    ok = store.ok_sample_ids()
    failed = [sid for sid in selected if sid not in ok]
    if failed and opts.batch_fallback == "batch":
        for sid in failed:  # given up after MAX_ROUNDS batches: stored as errors, not sent live
            order, sample = selected[sid]
            store.save_response(sample, Response(sample_id=sid, error=last_fail.get(sid) or "batch line failed"),
                                [], order=order)
        stats["given_up"] = len(failed)
        keep = frozenset(selected) - set(failed)
        opts.sample_ids = keep if opts.sample_ids is None else opts.sample_ids & keep
    return stats


__all__ = ["FALLBACKS", "MAX_ROUNDS", "BatchBackend", "batch_backend", "batch_pricing_note", "check_batch",
           "run_batch"]
