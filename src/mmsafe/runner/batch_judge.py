"""``mmsafe judge --batch``: an LLM judge's requests through its provider's batch API.

A judge is code that makes LLM calls and reads their replies (a rubric prompt, a jury of
several models, a second stage after the first). Rather than re-write each judge for batches,
its clients' ``chat`` is wrapped: a call whose reply is not known yet is recorded and the
sample's judging is abandoned for this round (:class:`_Deferred`); the recorded calls go out as
one batch per endpoint, their replies are kept (store meta ``batch_answers:JUDGE_ID``), and the
pending samples are judged again: the answered calls return at once, a later stage's calls are
deferred to the next round. Verdicts are stored only when a sample's judging completes.

Jobs are recorded before their POST exactly as in :mod:`mmsafe.runner.batch`, so a killed
``mmsafe judge --batch`` resumes polling the same batches and submits nothing twice.

The response cache is honoured as in a live ``mmsafe judge``: a call the cache answers is not
submitted (cost 0), and every batch reply goes into the cache (``use_cache=False``: neither).
"""

from __future__ import annotations

import asyncio
import sys
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

from mmsafe.datasets import open_benchmark
from mmsafe.judges import Judge
from mmsafe.models import BudgetExceeded, CostLedger, FatalProviderError, ResponseCache, default_cache_dir
from mmsafe.models.base import ChatResult, ConfigError, Message
from mmsafe.models.engine import ModelClient, cache_key
from mmsafe.runner.batch import FALLBACKS, MAX_ROUNDS, _Jobs, api_call, batch_backend, batch_pricing_note
from mmsafe.runner.modes import is_multiturn_record
from mmsafe.runner.rejudge import RejudgeOutcome, _benchmark_path
from mmsafe.runner.run import _file_sha256
from mmsafe.runner.summary import compute_summary, write_results, write_summary
from mmsafe.store import StoreError, has_store, open_store
from mmsafe.store.sqlite import STORE_FILE
from mmsafe.types import InputError, Sample

MAX_STAGES = 8  # rounds of deferred calls one judging may need (a jury's deliberation has 2-3)


class _Deferred(BaseException):
    """Raised inside a judge when a call's reply must come from a batch (not an Exception: judges
    that turn errors into 'error' verdicts must not catch it)."""


def _answer(d: dict[str, Any]) -> ChatResult:
    return ChatResult(text=d.get("text"), finish_reason=d.get("finish_reason"),
                      input_tokens=int(d.get("input_tokens") or 0), output_tokens=int(d.get("output_tokens") or 0),
                      model=str(d.get("model") or ""), cost_usd=float(d.get("cost_usd") or 0.0), error=d.get("error"))


def _dump(r: ChatResult) -> dict[str, Any]:
    return {"text": r.text, "finish_reason": r.finish_reason, "input_tokens": r.input_tokens,
            "output_tokens": r.output_tokens, "model": r.model, "cost_usd": r.cost_usd, "error": r.error}


def _check_judge(judge: Judge, fallback: str) -> Callable[[], dict[str, ModelClient]]:
    """The function that gives the judge's endpoint clients by name (a cascade's: every stage's that calls
    an LLM, a name used by two stages kept apart as ``NAME#STAGE``); ConfigError for a judge without any."""
    if fallback not in FALLBACKS:
        raise ConfigError(f"--batch-fallback: {fallback!r} is not one of {', '.join(FALLBACKS)}")
    stages = getattr(judge, "stages", None) or [judge]  # a cascade's stages, else the judge itself
    builders = [(i, b) for i, b in enumerate(getattr(s, "_build_clients", None) for s in stages) if b is not None]
    if not builders:
        raise ConfigError(f"--batch: judge {judge.identity.name} makes no LLM calls to batch; run it without --batch")

    def build() -> dict[str, ModelClient]:
        out: dict[str, ModelClient] = {}
        for i, b in builders:
            for name, c in b().items():
                out[name if name not in out else f"{name}#{i}"] = c
        return out
    return build


def _todo(store: Any, bench: Any, run_dir: Path, ok_ids: set[str], done: set[str]) -> list[tuple[Sample, Any]]:
    """The stored fixed-mode replies not judged yet; a live/adaptive run is refused."""
    todo: list[tuple[Sample, Any]] = []
    for s in bench.iter_samples():
        if s.id in ok_ids and s.id not in done:
            resp = store.get_response(s.id)
            if resp is None or not resp.ok:
                continue
            if is_multiturn_record(resp.extra):
                raise ConfigError(f"--batch: {run_dir} holds live/adaptive conversations; only a fixed-mode "
                                  "run's replies (one per sample) are judged through a batch API")
            todo.append((s, resp))
    return todo


class _BatchJudging:
    """One ``mmsafe judge --batch``: rounds of judging, deferred calls sent as batches, replies kept."""

    def __init__(self, store: Any, judge: Judge, judge_id: str, bench: Any, clients: dict[str, ModelClient],
                 ledger: CostLedger, *, poll_s: float, fallback: str,
                 on_progress: Callable[[dict[str, Any]], None] | None, n_todo: int, n_skipped: int):
        self.store, self.judge, self.bench, self.clients, self.ledger = store, judge, bench, clients, ledger
        self.poll_s, self.fallback, self.on_progress = poll_s, fallback, on_progress
        self.answers_key = f"batch_answers:{judge_id}"
        self.answers: dict[str, dict[str, Any]] = dict(store.get_meta(self.answers_key) or {})
        self.pending: dict[str, tuple[str, list[Message], Path | None, str | None, dict[str, Any]]] = {}
        self.tries: dict[str, int] = {}
        self.go_live: set[str] = set()
        self.stats: dict[str, Any] = {"total": n_todo, "done": 0, "judged": 0, "skipped_done": n_skipped,
                                      "errors": 0, "sent": 0, "missing_in_benchmark": 0, "cost_usd": 0.0,
                                      "started": time.time(), "batch": {"jobs": 0, "resumed": 0, "lines": 0,
                                                                        "failed_lines": 0, "pricing": {}}}
        self.bstats: dict[str, Any] = self.stats["batch"]
        for name, c in clients.items():
            self.bstats["pricing"][name] = batch_pricing_note(c.provider)
            batch_backend(c.provider)  # a provider without a batch API: one line before anything is sent
            _wrap(c, name, self.answers, self.pending, self.go_live)
        self.jobs = _Jobs(store, f"batch_jobs:judge:{judge_id}")

    def note(self, msg: str) -> None:
        print(f"judge {self.judge.identity.name}: {msg}", file=sys.stderr, flush=True)
        if self.on_progress:
            self.stats["cost_usd"] = self.ledger.total_cost
            self.on_progress(self.stats)

    async def _submit_or_find(self, c: ModelClient, backend: Any, job: dict[str, Any]) -> None:
        found = await api_call(c.provider, backend.find, job["tag"], len(job["lines"]), job["created"])
        if found is None:
            lines = []
            for cid, key in job["lines"].items():
                _, msgs, root, system, params = self.pending[key]
                lines.append(backend.request_line(cid, c.provider.encode(msgs, root, system), params))
            found = await api_call(c.provider, backend.submit, lines, job["tag"])
            self.bstats["lines"] += len(lines)
        job["remote"], job["state"] = found, "submitted"
        self.jobs.save()

    async def _poll(self, c: ModelClient, backend: Any, job: dict[str, Any]) -> Any:
        last = ""
        while True:
            st = await api_call(c.provider, backend.state, job["remote"])
            msg = f"batch {job['remote']}: {st.status} " + " ".join(f"{k}={v}" for k, v in st.counts.items() if v)
            if msg != last:
                self.note(msg.strip())
                last = msg
            if st.terminal:
                return st
            await asyncio.sleep(self.poll_s)

    def _collect(self, c: ModelClient, job: dict[str, Any], st: Any, results: dict[str, ChatResult]) -> None:
        for cid, key in job["lines"].items():
            res = results.get(cid) or ChatResult(text=None, error=f"batch {job['remote']} {st.status}: no result")
            if res.ok:
                res.cost_usd = c.cfg.price.batch_cost(res.input_tokens, res.output_tokens)
                self.answers[key] = _dump(res)
                if c.cache is not None:  # the answer's key is the live call's cache key
                    c.cache.put(key, res)
            else:
                self.bstats["failed_lines"] += 1
                if self.fallback == "live":
                    self.go_live.add(key)
                elif self.tries.get(key, 0) >= MAX_ROUNDS:
                    self.answers[key] = _dump(res)  # the judge sees the failure (an error verdict)
        self.store.set_meta(self.answers_key, self.answers)  # before the job is marked: a kill re-reads them
        job["state"] = "collected"
        self.jobs.save()

    async def run_job(self, job: dict[str, Any]) -> None:
        c = self.clients[job["client"]]
        backend = batch_backend(c.provider)
        await backend.start()
        try:
            if job.get("remote") is None:
                await self._submit_or_find(c, backend, job)
            st = await self._poll(c, backend, job)
            results = await api_call(c.provider, backend.results, st)
        finally:
            await backend.close()
        self._collect(c, job, st, results)

    async def judge_one(self, s: Sample, resp: Any) -> bool:
        """True when the sample's verdict was stored; False when a call was deferred to a batch."""
        try:
            verdict, rows = await self.judge.judge(s, resp, self.bench.root)
        except _Deferred:
            return False
        self.store.save_verdict(verdict, rows)
        self.stats["judged"] += 1
        self.stats["done"] += 1
        self.stats["errors"] += verdict.parse_status == "error"
        return True

    async def _round(self, todo: list[tuple[Sample, Any]]) -> list[tuple[Sample, Any]]:
        self.pending.clear()
        left: list[tuple[Sample, Any]] = []
        for i in range(0, len(todo), 256):
            chunk = todo[i:i + 256]
            got = await asyncio.gather(*(self.judge_one(s, r) for s, r in chunk))
            left.extend(x for x, ok in zip(chunk, got, strict=True) if not ok)
        return left

    async def _submit_pending(self) -> None:
        from mmsafe.runner import batch as _batch
        by_client: dict[str, list[str]] = {}
        for key, (name, *_rest) in self.pending.items():
            if key not in self.answers and key not in self.go_live:
                by_client.setdefault(name, []).append(key)
        parts = [(name, keys[i:i + _batch.MAX_LINES]) for name, keys in by_client.items()
                 for i in range(0, len(keys), _batch.MAX_LINES)]
        for name, keys in parts:
            for key in keys:
                self.tries[key] = self.tries.get(key, 0) + 1
            tag = uuid.uuid4().hex[:16]
            job = {"tag": tag, "client": name, "remote": None, "state": "submitting", "created": time.time(),
                   "lines": {f"j{tag[:6]}-{n}": key for n, key in enumerate(keys)}}
            self.jobs.jobs.append(job)
            self.jobs.save()  # recorded before the POST
            self.bstats["jobs"] += 1
            await self.run_job(job)

    async def go(self, todo: list[tuple[Sample, Any]]) -> None:
        for job in self.jobs.open():  # a killed command's batches: resume, never resubmit
            self.bstats["resumed"] += 1
            if job.get("remote") is None and any(k not in self.pending for k in job["lines"].values()):
                continue  # its calls are re-recorded below and looked up by tag then
            await self.run_job(job)
        for _ in range(MAX_STAGES * MAX_ROUNDS):
            todo = await self._round(todo)
            if not todo or not self.pending:
                break
            for job in self.jobs.open():  # one recorded without an id before a kill: its calls are known now
                await self.run_job(job)
            await self._submit_pending()


async def rejudge_batch(run_dir: Path, judge: Judge, *, primary: bool = False, benchmark: Path | None = None,
                        poll_s: float = 30.0, fallback: str = "batch",
                        on_progress: Callable[[dict[str, Any]], None] | None = None,
                        use_cache: bool = True, cache_dir: Path | None = None) -> RejudgeOutcome:
    """Judge a stored fixed-mode run's replies with ``judge``, its LLM calls through batch APIs (those the
    response cache answers are not submitted)."""
    build = _check_judge(judge, fallback)
    if not has_store(run_dir):
        raise StoreError(f"{run_dir}: no run store here ({STORE_FILE} missing)")
    store = open_store(run_dir)
    cache: ResponseCache | None = None
    try:
        cfg = store.get_meta("config") or {}
        bench = open_benchmark(_benchmark_path(run_dir, cfg, benchmark))
        want = (cfg.get("fingerprint") or {}).get("benchmark") or {}
        if want.get("samples_sha256") and _file_sha256(bench.samples_path) != want["samples_sha256"]:
            raise InputError(f"{bench.samples_path}: the samples differ from those {run_dir} ran on")
        judge_id = store.register_judge(judge.identity)
        old_primary = store.get_meta("primary_judge") or judge_id
        ok_ids = store.ok_sample_ids()
        done = store.judged_sample_ids(judge_id)
        todo = _todo(store, bench, run_dir, ok_ids, done)
        ledger = CostLedger()
        if use_cache:
            cache = ResponseCache((cache_dir or default_cache_dir()) / "responses.sqlite")
        if hasattr(judge, "bind"):
            judge.bind(ledger=ledger, cache=cache)
        work = _BatchJudging(store, judge, judge_id, bench, build(), ledger, poll_s=poll_s, fallback=fallback,
                             on_progress=on_progress, n_todo=len(todo), n_skipped=len(ok_ids & done))
        stop: dict[str, Any] = {"reason": None, "error": None}
        await judge.start()
        try:
            await work.go(todo)
        except BudgetExceeded as e:
            stop["reason"], stop["error"] = "max_cost", str(e)
        except FatalProviderError as e:
            stop["reason"], stop["error"] = "fatal", str(e)
        finally:
            await judge.close()
        stats = work.stats
        stats["cost_usd"] = ledger.total_cost
        primary_id = judge_id if primary else old_primary
        if primary:
            store.set_meta("primary_judge", judge_id)
        store.set_meta("rejudged:" + judge_id, {"at": time.time(), "identity": judge.identity.model_dump(),
                                                 "stats": {k: v for k, v in stats.items() if k != "started"}})
        pre = cfg.get("preflight") or {}
        summary = compute_summary(store, primary_id, bench_manifest=bench.manifest, limit_total=pre.get("n"),
                                  stopped=stop["reason"])
        write_results(store, primary_id, run_dir)
        write_summary(summary, run_dir)
        return RejudgeOutcome(judge_id=judge_id, primary_judge_id=primary_id, run_summary=summary, stats=stats,
                              stopped=stop["reason"], error=stop["error"])
    finally:
        if cache is not None:
            cache.close()
        store.close()


def _wrap(client: ModelClient, name: str, answers: dict[str, dict[str, Any]],
          pending: dict[str, tuple[str, list[Message], Path | None, str | None, dict[str, Any]]],
          go_live: set[str]) -> None:
    """Replace ``client.chat``: a known reply is returned (and booked on the ledger at batch price),
    an unknown one is recorded in ``pending`` and the judging of this sample deferred."""
    live_chat = client.chat
    ident = client.provider.identity()

    async def chat(messages: list[Message], *, root: Path | None = None, system: str | None = None,
                   params: dict[str, Any] | None = None) -> ChatResult:
        p = {**client.params, **(params or {})}
        key = cache_key(ident, p, messages, root, system, client.epoch)
        if key in go_live:
            return await live_chat(messages, root=root, system=system, params=params)
        got = answers.get(key)
        if got is None and client.cache is not None:
            hit = client.cache.get(key)
            if hit is not None:  # answered before (live or batch): not submitted, no cost
                client.ledger.roles[client.role].cached += 1
                return hit
        if got is None:
            pending[key] = (name, messages, root, system, p)
            await asyncio.sleep(0)  # siblings (a jury's jurors) record their calls before this one unwinds
            await asyncio.sleep(0)
            raise _Deferred()
        res = _answer(got)
        led = client.ledger.roles[client.role]
        led.calls += 1
        led.input_tokens += res.input_tokens
        led.output_tokens += res.output_tokens
        led.cost_usd += res.cost_usd
        return res

    client.chat = chat  # type: ignore[method-assign]


__all__ = ["rejudge_batch"]
