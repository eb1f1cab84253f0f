"""Run a benchmark against a target, judge the replies, store everything, resumably.

``RUN_DIR`` holds ``run.sqlite`` (the store), ``results.jsonl`` and ``summary.json``.
Re-running the same command on the same ``RUN_DIR`` fills the gaps: samples with a
stored successful reply are not sent again, verdicts already stored are not asked again.
"""

from __future__ import annotations

import asyncio
import hashlib
import itertools
import os
import time
from collections.abc import Awaitable, Callable, Iterable, Iterator
from pathlib import Path
from typing import Any, cast

import mmsafe
from mmsafe.datasets import open_benchmark
from mmsafe.datasets.benchmark import Benchmark
from mmsafe.models import (
    BudgetExceeded,
    Capabilities,
    CostLedger,
    EndpointConfig,
    FatalProviderError,
    ModelClient,
    ResponseCache,
    build_provider,
    default_cache_dir,
)
from mmsafe.models.engine import request_log
from mmsafe.models.preflight import check_endpoints
from mmsafe.runner.base import FIXED_MODE, MODES, Defense, PreflightError, mode_spec
from mmsafe.runner.modes import check_mode, make_mode_runner, mode_fingerprint
from mmsafe.runner.options import RunOptions, RunOutcome
from mmsafe.runner.summary import RunSummary, compute_summary, write_results, write_summary
from mmsafe.store import StoreError, open_store
from mmsafe.store.base import Claim, lease_seconds
from mmsafe.types import (
    MAX_ASSET_BYTES,
    AssetError,
    AudioPart,
    ConfigError,
    ImagePart,
    InputError,
    Response,
    Sample,
    Usage,
    asset_file,
)

__all__ = ["FIXED_MODE", "MODES", "PreflightError", "RunOptions", "RunOutcome", "execute", "iter_selected",
           "preflight", "run_pool"]


async def run_pool(items: Iterable[Any], process: Callable[[Any], Awaitable[None]], n_workers: int) -> None:
    """Feed ``items`` to ``n_workers`` tasks through a bounded queue (memory stays flat).

    An exception escaping ``process`` stops the pool and is re-raised once the workers
    are done: no worker dies silently and the producer never waits on a dead pool.
    Cancellation (Ctrl-C) cancels the workers."""
    n_workers = max(1, n_workers)
    queue: asyncio.Queue = asyncio.Queue(maxsize=n_workers * 2)
    failure: list[BaseException] = []

    async def worker() -> None:
        while True:
            item = await queue.get()
            if item is None:
                return
            if failure:
                continue  # drain: the producer must never block on a full queue
            try:
                await process(item)
            except Exception as e:
                failure.append(e)

    workers = [asyncio.create_task(worker()) for _ in range(n_workers)]
    try:
        for item in items:
            if failure:
                break
            await queue.put(item)
        for _ in workers:
            await queue.put(None)
        await asyncio.gather(*workers)
    except BaseException:
        for w in workers:
            w.cancel()
        await asyncio.gather(*workers, return_exceptions=True)
        raise
    if failure:
        raise failure[0]


def iter_selected(bench: Benchmark, limit: int | None) -> Iterator[Sample]:
    """The benchmark's first ``limit`` samples (all when ``limit`` is None), streamed."""
    for i, s in enumerate(bench.iter_samples()):
        if limit is not None and i >= limit:
            return
        yield s


_View = tuple[str, int, bool, list[tuple[str, str | None]]]


def _raw_view(rec: dict[str, Any]) -> _View:
    """(id, user turns, has system, [(type, path)]) of a raw sample dict."""
    turns, system = 0, False
    assets: list[tuple[str, str | None]] = []
    for m in rec["messages"]:
        turns += m["role"] == "user"
        system |= m["role"] == "system"
        if isinstance(m["content"], list):
            assets.extend((p["type"], p.get("path")) for p in m["content"] if p["type"] != "text")
    return rec["id"], turns, system, assets


def _sample_view(s: Sample) -> _View:
    return (s.id, s.turns, any(m.role == "system" for m in s.messages), [(a.type, a.path) for a in s.assets()])


def _check_asset(where: Path, sid: str, root: Path, kind: str, rel: str) -> None:
    """A local image/audio file a sample refers to: present, a regular readable file, under the size limit."""
    p = asset_file(ImagePart(path=rel) if kind == "image" else AudioPart(path=rel), root, follow_links=True)
    try:
        size = os.stat(p).st_size
    except OSError:
        raise AssetError(f"{where}: sample {sid}: {rel}: file not found") from None
    if not os.path.isfile(p):
        raise AssetError(f"{where}: sample {sid}: {rel}: not a regular file")
    if not os.access(p, os.R_OK):
        raise AssetError(f"{where}: sample {sid}: {rel}: file not readable")
    if size > MAX_ASSET_BYTES:
        raise AssetError(f"{where}: sample {sid}: {rel}: {size} bytes is over the {MAX_ASSET_BYTES}-byte limit")
    if kind == "video":  # readable, within the duration limit (mmsafe.media.video)
        from mmsafe.media.video import check_video
        check_video(p, f"{where}: sample {sid}: {rel}")


class _Tally:
    """What one preflight pass saw: samples, images, audio, the longest dialogue, system prompts."""

    def __init__(self, where: Path, root: Path):
        self.where, self.root = where, root
        self.n = self.images = self.audio = self.video = self.max_turns = 0
        self.has_system = False
        self.ids = hashlib.sha256()
        self.seen: set[str] = set()

    def add(self, view: _View) -> None:
        sid, turns, system, assets = view
        self.n += 1
        if sid in self.seen:
            raise PreflightError(f"{self.where}: duplicate sample id {sid!r}")
        self.seen.add(sid)
        self.ids.update(sid.encode() + b"\0")
        self.max_turns = max(self.max_turns, turns)
        self.has_system |= system
        for kind, rel in assets:
            if kind == "image":
                self.images += 1
            elif kind == "video":
                self.video += 1
            else:
                self.audio += 1
            if rel is not None:  # by URI: nothing local to check
                _check_asset(self.where, sid, self.root, kind, rel)

    def problems(self, caps: Capabilities) -> list[str]:
        """What the target cannot take of what was seen."""
        out = []
        if self.images and not caps.image:
            out.append(f"{self.images} image part(s) but the target takes no image input")
        if self.audio and not caps.audio:
            out.append(f"{self.audio} audio part(s) but the target takes no audio input")
        if self.video and not (caps.video or caps.image):
            out.append(f"{self.video} video part(s) but the target takes neither video nor image input")
        if self.max_turns > 1 and not caps.multi_turn:
            out.append(f"dialogues of up to {self.max_turns} user turns but the target is single-turn")
        if self.has_system and not caps.system_prompt:
            out.append("system messages but the target takes no system prompt")
        return out


def preflight(bench: Benchmark, target: EndpointConfig, limit: int | None,
              caps: Capabilities | None = None) -> dict[str, Any]:
    """One streaming pass before any request: validate every sample and asset reference
    and check the target can take what the benchmark holds. Raises an InputError (exit 2).

    When samples.jsonl is byte-identical to what the benchmark writer validated (its
    sha256 is in the manifest), lines are read with orjson only; a hand-edited file gets
    the full pydantic validation, so a bad line stops the run before any request."""
    caps = caps or target.capabilities
    where = bench.root / "samples.jsonl"
    trusted = bench.unchanged_since_written()
    views: Iterator[_View] = (map(_raw_view, bench.iter_raw()) if trusted else map(_sample_view, bench.iter_samples()))
    t = _Tally(where, bench.root)
    for view in views:
        if limit is not None and t.n >= limit:
            break
        t.add(view)
    if t.n == 0:
        raise PreflightError(f"{bench.root}: the benchmark has no samples")
    problems = t.problems(caps)
    if problems:
        raise PreflightError(f"target {target.name} cannot take benchmark {bench.root.name}: "
                             + "; ".join(problems) + " (declare capabilities in the models file if this is wrong)")
    return {"n": t.n, "images": t.images, "audio": t.audio, "max_turns": t.max_turns,
            "ids_sha256": t.ids.hexdigest(), "validated": "writer-hash" if trusted else "full",
            "samples_sha256": _file_sha256(where)}


def _file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _run_fingerprint(opts: RunOptions, bench: Benchmark, pre: dict[str, Any]) -> dict[str, Any]:
    """What must match for a re-run to resume into the same directory."""
    t = opts.target
    # the samples' content too: replies stored for other questions must never be reused
    return {"benchmark": {"name": bench.manifest.name, "version": bench.manifest.version,
                          "samples_sha256": pre.get("samples_sha256")},
            "target": {"provider": t.provider, "model": t.model, "base_url": t.base_url, "params": t.params},
            "mode": opts.mode, "system_prompt": opts.system_prompt, "epoch": opts.epoch, "seed": opts.seed,
            "defense": opts.defense.identity if opts.defense is not None else None,
            **mode_fingerprint(opts)}


def _config_record(opts: RunOptions, bench: Benchmark, pre: dict[str, Any]) -> dict[str, Any]:
    return {"mmsafe_version": mmsafe.__version__, "created": time.time(),
            "fingerprint": _run_fingerprint(opts, bench, pre),
            "benchmark_path": str(Path(opts.benchmark).resolve()),
            "benchmark_manifest": bench.manifest.model_dump(mode="json"),
            "target": opts.target.public(), "judge": opts.judge.identity.model_dump(),
            "limit": opts.limit, "max_connections": opts.max_connections, "max_cost": opts.max_cost,
            "fail_on_error": opts.fail_on_error, "use_cache": opts.use_cache, "preflight": pre,
            "si_grouping": opts.si_grouping, "name": opts.name}


async def execute(opts: RunOptions) -> RunOutcome:
    """Run ``opts`` into ``opts.out`` (resuming what is stored there) and write results and summary.

    Bad input (an unknown ``--mode``, a sample or asset the target cannot take, another
    run's directory) raises an :class:`~mmsafe.types.InputError` before any request."""
    mode_spec(opts.mode)  # the executors registry knows the run modes
    if opts.defense is not None and not isinstance(opts.defense, Defense):
        raise ConfigError(f"--defense: {type(opts.defense).__name__} is not a defense (needs identity, bind, "
                          "start, close, before, after)")
    bench = open_benchmark(opts.benchmark)
    target = opts.target
    if opts.max_connections:
        target = target.model_copy(update={"max_connections": opts.max_connections})
    if opts.seed is not None and "seed" not in target.params:
        target = target.model_copy(update={"params": {**target.params, "seed": opts.seed}})
    opts.target = target
    provider = build_provider(target)  # its capabilities may be narrower than declared (e.g. a local text-only model)
    # a Ray shard gets the driver's preflight: the whole benchmark was checked once, before any shard
    pre = opts.shard_pre if opts.shard and opts.shard_pre else preflight(bench, target, opts.limit,
                                                                         provider.capabilities)
    check_mode(opts, pre)
    if opts.batch:  # fixed mode only, no defense (one-line error before --out is created)
        from mmsafe.runner.batch import check_batch
        check_batch(opts)
    # every key, spec and extra of every role, before --out is created (a failed start claims nothing)
    if not opts.shard:  # a Ray shard's driver checked them before any shard started
        check_endpoints(target, opts.judge, opts.attacker, opts.defense)
    if opts.executor == "ray" and not opts.shard:  # the run is valid: Ray's workers start (and import
        from mmsafe.runner.ray_exec import prewarm  # mmsafe) while this process opens the store and streams
        prewarm(opts.ray_address, opts.workers, opts.judge, opts.defense)

    if opts.out.exists() and not opts.out.is_dir():
        raise InputError(f"--out {opts.out}: exists and is not a directory")
    opts.out.mkdir(parents=True, exist_ok=True)
    store = open_store(opts.out, url=opts.store_url)
    try:
        cfg = _config_record(opts, bench, pre)
        prev = store.get_meta("config")
        if prev is not None and prev.get("fingerprint") != cfg["fingerprint"]:
            pf, cf = dict(prev["fingerprint"]), dict(cfg["fingerprint"])
            pb, cb = dict(pf.pop("benchmark", {})), dict(cf.pop("benchmark", {}))
            if pf == cf and pb.pop("samples_sha256", None) != cb.pop("samples_sha256", None) and pb == cb:
                raise StoreError(f"{opts.out}: the benchmark's samples changed since this run started; "
                                 "use another --out")
            raise StoreError(f"{opts.out}: holds a run of {prev['fingerprint']['target']['provider']}/"
                             f"{prev['fingerprint']['target']['model']} on {prev['fingerprint']['benchmark']['name']}"
                             " with other settings; use another --out (or the same options to resume)")
        if prev is None:
            store.set_meta("config", cfg)
        else:
            if opts.name is not None and prev.get("name") != opts.name:  # --name on resume renames the run
                store.set_meta("config", {**prev, "name": opts.name})
            store.set_meta("last_resume", {"at": time.time(), "limit": opts.limit})
        judge_id = store.register_judge(opts.judge.identity)
        store.set_meta("primary_judge", judge_id)
        if opts.batch:  # the replies through the provider's batch API, then judged as in a live run
            from mmsafe.runner.batch import run_batch
            batch_stats = await run_batch(opts, bench, store, provider)
            outcome = await _execute(opts, bench, store, pre, judge_id, provider, stopped=batch_stats.pop("stopped"))
            outcome.stats["batch"] = batch_stats
            return outcome
        if opts.executor == "ray":  # the shards run on a Ray cluster; this process drives and merges
            from mmsafe.runner.ray_exec import drive_run
            return await drive_run(opts, bench, store, pre, judge_id)
        return await _execute(opts, bench, store, pre, judge_id, provider)
    finally:
        store.close()


async def _execute(opts: RunOptions, bench, store, pre: dict[str, Any], judge_id: str, provider,
                   stopped: tuple[str, str] | None = None) -> RunOutcome:
    """The live pass; ``stopped``: why an earlier pass (``--batch`` over budget) already ended the run early."""
    target = opts.target
    ledger = CostLedger(opts.max_cost)
    for role, d in store.ledger().items():  # spend from earlier, interrupted attempts counts too
        ledger.roles[role].cost_usd += d["cost_usd"]
    cache = None
    if opts.use_cache:
        cache = ResponseCache((opts.cache_dir or default_cache_dir()) / "responses.sqlite")
    client = ModelClient(provider, "target", ledger, cache=cache, epoch=opts.epoch)
    if opts.defense is not None:
        from mmsafe.defense.defenses import DefendedClient
        opts.defense.bind(ledger=ledger, cache=cache)
        # DefendedClient has ModelClient's interface (chat, start, close, name, cfg) and uses only the
        # Defense protocol's members, but is annotated with the concrete mmsafe.defense.Defense class
        client = DefendedClient(client, opts.defense)  # type: ignore[assignment,arg-type]
    judge = opts.judge
    jconn = opts.judge_max_connections or opts.max_connections
    if jconn and getattr(judge, "endpoints", None) and getattr(judge, "_clients", 1) is None:
        cast(Any, judge).endpoints = [e.model_copy(update={"max_connections": jconn})
                                      for e in cast(Any, judge).endpoints]
    if hasattr(judge, "bind"):
        judge.bind(ledger=ledger, cache=cache)

    lease = lease_seconds()
    store.begin_claims(lease)  # before reading what is done: a sample finished after it is claimable
    done_ok = store.ok_sample_ids()
    judged = store.judged_sample_ids(judge_id)
    pending: set[str] = set()  # held by another process working on this run
    claim_batch = max(1, min(32, provider.cfg.max_connections))
    total = pre["n"]
    stats = {"total": total, "done": 0, "errors": 0, "skipped_done": 0, "sent": 0, "judged": 0, "by_others": 0,
             "cost_usd": ledger.total_cost, "started": time.time()}
    stop: dict[str, Any] = {"reason": None, "error": None}
    root = bench.root
    n_workers = max(1, opts.samples_in_flight or provider.cfg.max_connections)  # a provider may force its cap (hf: 1)

    def progress() -> None:
        if opts.on_progress:
            stats["cost_usd"] = ledger.total_cost
            opts.on_progress(stats)

    mode_runner = make_mode_runner(opts, client, judge, judge_id, store, root, stats, ledger, cache)

    async def handle(sample: Sample, order: int, claim: Claim) -> None:
        """One sample this process claimed (``claim`` says what is already stored for it)."""
        if claim.response_ok:  # a holder that died may have stored the reply but not the verdict
            done_ok.add(sample.id)
        if claim.judged:
            judged.add(sample.id)
        if sample.id in done_ok and sample.id in judged:
            stats["skipped_done"] += 1
        elif mode_runner is not None:  # live / adaptive: one record per sample, written at its end
            await mode_runner.handle(sample, done_ok, judged, order=order)
        else:
            await send_and_judge(sample, order)
        store.finish_claim(sample.id)
        await store.durable()  # done only once stored: a SIGKILL re-sends at most the samples in hand

    async def send_and_judge(sample: Sample, order: int) -> None:
        resp: Response | None = None
        if sample.id not in done_ok:
            res = await client.chat(sample.messages, root=root, system=opts.system_prompt)
            stats["sent"] += 1
            resp = Response(sample_id=sample.id, text=res.text, model=res.model or target.model,
                            finish_reason=res.finish_reason,
                            usage=Usage(input_tokens=res.input_tokens, output_tokens=res.output_tokens),
                            cost_usd=res.cost_usd, latency_ms=res.latency_ms, attempts=res.attempts,
                            cached=res.cached, error=res.error,
                            extra={"defense": res.extra["defense"]} if "defense" in res.extra else {})
            store.save_response(sample, resp, request_log(res, "target", sample.id, target.name), order=order)
            if not resp.ok:
                stats["errors"] += 1
                return
        else:
            stats["skipped_done"] += 1
        if sample.id not in judged:
            if resp is None:
                resp = store.get_response(sample.id)
            assert resp is not None
            verdict, reqs = await judge.judge(sample, resp, root)
            store.save_verdict(verdict, reqs)
            stats["judged"] += 1

    async def process(item: tuple[int, Sample, Claim]) -> None:
        order, sample, claim = item  # order: the sample's position in the benchmark (results.jsonl follows it)
        if stop["reason"]:
            return
        try:
            await handle(sample, order, claim)
        except BudgetExceeded as e:
            stop["reason"], stop["error"] = "max_cost", str(e)
        except FatalProviderError as e:
            stop["reason"], stop["error"] = "fatal", str(e)
        except Exception as e:  # an unforeseen input or a bug costs this sample, never the run
            msg = (f"{type(e).__name__}: {e}".splitlines() or ["error"])[0][:500]
            try:
                store.save_response(sample, Response(sample_id=sample.id, error=f"internal: {msg}"), [], order=order)
                store.finish_claim(sample.id)
                stats["errors"] += 1
            except Exception:
                stop["reason"], stop["error"] = "crash", f"sample {sample.id}: {msg}"
        stats["done"] += 1
        progress()

    def todo() -> Iterator[tuple[int, Sample]]:
        for i, s in bench.iter_indexed(opts.sample_ids):  # with sample_ids: a Ray shard's (or --batch's rest)
            if stop["reason"] or (opts.limit is not None and i >= opts.limit):
                return
            if s.id in done_ok and s.id in judged:
                stats["done"] += 1
                stats["skipped_done"] += 1
                continue
            yield i, s

    def claimed(items: Iterator[tuple[int, Sample]]) -> Iterator[tuple[int, Sample, Claim]]:
        """The samples this process gets, claimed a batch at a time (one store round trip per
        batch): one another process holds waits in ``pending``; one it finished is done."""
        while chunk := list(itertools.islice(items, claim_batch)):
            got = store.claim_many([s.id for _, s in chunk], judge_id)
            for i, s in chunk:
                c = got[s.id]
                if c.outcome == "held":
                    pending.add(s.id)
                    continue
                pending.discard(s.id)
                if c.outcome == "finished":  # another process on this run did it since this one started
                    stats["by_others"] += 1
                    stats["done"] += 1
                    continue
                yield i, s, c

    def held_by_others() -> Iterator[tuple[int, Sample]]:
        for i, s in bench.iter_indexed(set(pending)):
            if stop["reason"] or (opts.limit is not None and i >= opts.limit):
                return
            yield i, s

    async def heartbeat() -> None:
        while True:
            await asyncio.sleep(lease / 3)
            store.renew_claims()

    beat: asyncio.Task[None] | None = None
    try:
        await client.start()  # inside the try: a later start failing still closes the ones before
        await judge.start()
        if mode_runner is not None:
            await mode_runner.start()
        beat = asyncio.create_task(heartbeat())
        await run_pool(claimed(todo()), process, n_workers)
        # samples another process held: wait for it to finish them, or take them over once
        # its lease expires (or, on this host, once its process is gone)
        while pending and not stop["reason"]:
            await asyncio.sleep(min(1.0, lease / 4))
            await run_pool(claimed(held_by_others()), process, n_workers)
        progress()
    finally:
        if beat is not None:
            beat.cancel()
            await asyncio.gather(beat, return_exceptions=True)
        store.release_claims()  # unfinished ones (stopped early): another process may take them now
        await client.close()
        await judge.close()
        if mode_runner is not None:
            await mode_runner.close()
        if cache is not None:
            cache.close()

    if opts.shard:  # a Ray worker's shard: the driver summarises the whole run once all shards are in
        return RunOutcome(run_summary=RunSummary(), run_dir=opts.out, stopped=stop["reason"],
                          fatal_error=stop["error"], stats=stats)
    if stopped is not None and stop["reason"] is None:
        stop["reason"], stop["error"] = stopped
    # the selection asked for: a --limit run summarises its samples, not all an earlier, larger run stored
    ids = None if opts.limit is None else {s.id for s in iter_selected(bench, opts.limit)}
    summary = compute_summary(store, judge_id, bench_manifest=bench.manifest, limit_total=total,
                              stopped=stop["reason"], si_grouping=opts.si_grouping, sample_ids=ids)
    write_results(store, judge_id, opts.out, sample_ids=ids)
    write_summary(summary, opts.out)
    return RunOutcome(run_summary=summary, run_dir=opts.out, stopped=stop["reason"], fatal_error=stop["error"],
                      stats=stats, exit_code=_exit_code(summary, stop["reason"], opts.fail_on_error))


def _exit_code(summary: RunSummary, stopped: str | None, fail_on_error: float) -> int:
    """2: a fatal endpoint error; 1: stopped early (budget, crash) or more failures than allowed; else 0."""
    if stopped == "fatal":
        return 2
    if stopped in ("max_cost", "crash"):
        return 1  # done, but not complete
    if summary.n_samples and summary.n_failed / summary.n_samples > fail_on_error:  # target + judge failures
        return 1
    if summary.nothing_measured():  # no reply scored: the headline figure could not be computed
        return 1
    return 0
