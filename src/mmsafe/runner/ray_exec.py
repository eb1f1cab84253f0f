"""``--executor ray``: a run spread over a Ray cluster's workers (``pip install 'mmsafe[ray]'``).

The driver (the ``mmsafe run`` process) validates the run as a single-process run does,
then streams the selected samples that are not done yet in shards to Ray tasks. Each task
runs mmsafe's own async engine (:func:`mmsafe.runner.run.execute`: limiter, retries,
cache, claims) over its shard only:

- with ``--store postgresql://…`` every worker writes into the shared PostgreSQL run;
- otherwise each shard is its own SQLite store (``RUN_DIR/ray-shards/…``; a worker on
  another node sends its store file back) and the driver merges it into ``RUN_DIR/run.sqlite``
  once the shard is over, in one transaction that also records the merge (a merge is never
  applied twice).

A target's connection cap (``--max-connections``, else the endpoint's) is split between the
workers (``cap // workers``, at least 1), so the cap stays global. A worker that dies
mid-shard (SIGKILL, a lost node) has its task retried by Ray into the same shard store: what
the dead worker stored is kept and its claims are taken over, so at most the requests it
had in flight are sent again and no sample is lost or stored twice. The driver then writes
``results.jsonl`` and ``summary.json`` from the run's store exactly as a single-process run.

Local ``hf`` models: each shard task asks Ray for one GPU (``num_gpus=1``) when the cluster
has GPUs, so the shards of one evaluation spread over the cluster's GPUs, one model copy per
running shard. This path is untested here (no GPU on the development machines).

``ray`` is imported only here, and only when the executor is used.
"""

from __future__ import annotations

import asyncio
import dataclasses
import gc
import math
import os
import shutil
import time
import uuid
from collections.abc import Callable, Coroutine, Iterable, Iterator
from pathlib import Path
from typing import Any

import orjson

from mmsafe.datasets.benchmark import Benchmark
from mmsafe.runner.options import RunOptions, RunOutcome
from mmsafe.store.base import RunStore
from mmsafe.types import ConfigError

SHARDS_DIR = "ray-shards"
MAX_SHARD = 5000  # samples per shard at most (a retried shard redoes no more than this many)
_BY_OPTION = ("ray",)  # the registry's executors that --executor names (batch is --batch)
_MERGED_KEY = "ray_merged:"  # meta key prefix: a shard store already merged into the run's store

__all__ = ["SHARDS_DIR", "check_executor", "connect", "drive_run", "judge_pool", "merge_shard", "prewarm",
           "shard_sizes"]


def check_executor(name: str, *, ray_address: str | None = None, workers: int | None = None) -> str:
    """``--executor NAME``: ``local`` or an executor the registry lists (``type="executor"``);
    anything else, ``--ray-address``/``--workers`` without ``--executor ray``, or a cluster
    address nothing answers on is an :class:`~mmsafe.types.InputError` (one line, exit 2),
    found before ``--out`` is created."""
    from mmsafe.registry import registry
    from mmsafe.types import InputError

    names = ["local"] + [e.name for e in registry("executors").entries()
                         if e.meta.get("type") == "executor" and e.name in _BY_OPTION]
    if name not in names:
        raise InputError(f"--executor {name!r}: choose one of {', '.join(names)}")
    if name != "ray" and (ray_address is not None or workers is not None):
        raise InputError(f"--{'ray-address' if ray_address is not None else 'workers'} is used with "
                         f"--executor ray only (got --executor {name})")
    addr = ray_address or os.environ.get("RAY_ADDRESS")
    if name == "ray" and addr and addr not in ("auto", "local"):
        _probe(addr)
    return name


def _probe(addr: str) -> None:
    """A cluster address (``HOST:PORT`` or ``ray://HOST:PORT``) must accept a TCP connection
    within 5 s: ray itself waits minutes for a head node that is not there."""
    import socket

    from mmsafe.types import InputError

    hostport = addr.split("://", 1)[-1].rstrip("/")
    host, sep, port = hostport.rpartition(":")
    if not sep or not port.isdigit():
        raise InputError(f"--ray-address {addr}: expected HOST:PORT, ray://HOST:PORT, auto or local")
    try:
        socket.create_connection((host.strip("[]"), int(port)), timeout=5).close()
    except OSError as e:
        raise InputError(f"--ray-address {addr}: no Ray cluster answers there ({e.strerror or e})") from None


def _ray() -> Any:
    try:
        import ray
    except ImportError:
        raise ConfigError("--executor ray: the ray package is not installed (pip install 'mmsafe[ray]')") from None
    return ray


def connect(address: str | None) -> Any:
    """The ``ray`` module, connected to ``address`` (default: ``RAY_ADDRESS``, else a new local
    cluster). A cluster that cannot be reached is a one-line :class:`ConfigError`."""
    ray = _ray()
    if ray.is_initialized():
        return ray
    addr = address or os.environ.get("RAY_ADDRESS") or "local"
    if addr == "local":  # a cluster of this command's own: its workers do the work while this process
        # mostly waits, so they run at this process's priority (Ray's default nice 15 would hand
        # every other process on the machine the cores first)
        os.environ.setdefault("RAY_worker_niceness", "0")
    try:
        ray.init(address=addr, include_dashboard=False, log_to_driver=False, configure_logging=False)
    except Exception as e:  # ConnectionError, ValueError, RuntimeError: ray's own wording, one line
        first = (str(e).strip().splitlines() or [type(e).__name__])[0][:300]
        raise ConfigError(f"--ray-address {addr}: cannot connect to a Ray cluster: {first}") from None
    _connected[0] = True
    return ray


_connected = [False]  # this process called ray.init (a caller's own connection is left alone)


def disconnect() -> None:
    """Leave the cluster once the shards are in, if :func:`connect` joined it: explicitly, as
    Ray's exit hook takes about 0.9 s here against 0.3 s (and a local cluster of this command's
    own stops with it). A connection the caller made stays open."""
    if _connected[0]:
        _connected[0] = False
        ray = _ray()
        if ray.is_initialized():
            ray.shutdown()


def _warm(modules: list[str]) -> None:
    """A Ray task: import ``modules`` in this worker process (what its shards will need)."""
    import importlib

    for m in modules:
        importlib.import_module(m)
    gc.freeze()  # as the CLI does: the import-time objects leave the collector's scans


def prewarm(address: str | None, workers: int | None, *parts: object) -> None:
    """Connect to the cluster and start ``workers`` worker processes importing mmsafe's engine
    and the modules of ``parts`` (the judge, the defense) now, while this process still reads
    the benchmark and opens the store: a Ray job's worker processes are its own, so without
    this every ``mmsafe`` command would wait about a second for its first shard to start."""
    if workers is not None and workers < 1:
        raise ConfigError(f"--workers {workers}: must be at least 1")
    ray = connect(address)
    n = workers or max(1, int(ray.cluster_resources().get("CPU", 1)))
    mods = ["mmsafe.runner.run", "mmsafe.runner.ray_exec", "mmsafe.runner.modes"]
    mods += [type(p).__module__ for p in parts if p is not None and type(p).__module__.startswith("mmsafe")]
    task = ray.remote(_warm).options(num_cpus=1, max_retries=0)
    for _ in range(max(1, n)):  # fire and forget: a task runs even once its ref is dropped
        task.remote(mods)


def shard_sizes(n: int, workers: int) -> Iterator[int]:
    """Samples per shard, in the order the shards are sent, for ``n`` samples: guided
    self-scheduling. Each shard takes a quarter of what is left per worker pair (the first
    ``n / 4`` for two workers, at most :data:`MAX_SHARD`), down to a floor of ``n / (16 x
    workers)``: large shards first (few start-ups, few merges), small ones last, so the
    workers end within a small shard of each other instead of one idling through the other's
    last large shard."""
    workers = max(1, workers)
    floor = _floor(n, workers)
    left = n
    while left > 0:
        size = min(left, MAX_SHARD, max(floor, math.ceil(left / (2 * workers))))
        yield size
        left -= size


def _floor(n: int, workers: int) -> int:
    """The smallest shard :func:`shard_sizes` makes for ``n`` samples."""
    return max(1, math.ceil(n / (16 * max(1, workers))))


def _chunks(items: Iterable[Any], n: int, workers: int) -> Iterator[list[Any]]:
    """``items`` cut into shards of :func:`shard_sizes` (``n``: how many there are, about; a
    longer stream goes on in shards of the floor size)."""
    sizes, floor = shard_sizes(n, workers), _floor(n, workers)
    size, chunk = next(sizes, floor), []
    for item in items:
        chunk.append(item)
        if len(chunk) >= size:
            yield chunk
            size, chunk = next(sizes, floor), []
    if chunk:
        yield chunk


def _split(cap: int | None, workers: int) -> int | None:
    return None if cap is None else max(1, cap // workers)


PROGRESS_FILE = "progress"  # in a shard's directory: the samples its worker has done so far
PROGRESS_EVERY_S = 0.1  # a worker replaces its progress file at most this often (a local write, no round trip)


def _reporter(shard_dir: str) -> Callable[[dict[str, Any]], None]:
    """A worker's ``on_progress``: the shard's done count into ``SHARD_DIR/progress``, at most
    every :data:`PROGRESS_EVERY_S` (replaced atomically; a retried shard's count replaces its own). A file
    and not a Ray actor: an actor is one more process importing ray on the same cores. A
    worker on another node writes its own copy, which the driver does not see: its progress
    then moves when the shard ends."""
    last = [0.0]
    path = Path(shard_dir) / PROGRESS_FILE

    def report(stats: dict[str, Any]) -> None:
        now = time.monotonic()
        if now - last[0] >= PROGRESS_EVERY_S:
            last[0] = now
            try:
                tmp = path.with_suffix(f".{os.getpid()}")
                tmp.write_text(str(int(stats.get("done", 0))))
                os.replace(tmp, path)
            except OSError:  # progress is a courtesy: the shard's work goes on
                pass

    return report


def _live_done(in_flight: dict[Any, tuple[Path, str]]) -> int:
    """Samples the running shards have done, as their workers last wrote it."""
    n = 0
    for d, _ in in_flight.values():
        try:
            n += int((d / PROGRESS_FILE).read_text() or 0)
        except (OSError, ValueError):
            pass
    return n


def _wait_one(ray: Any, in_flight: dict[Any, tuple[Path, str]], stats: dict[str, Any],
              on_progress: Callable[[dict[str, Any]], None] | None) -> Any:
    """The next shard to end; meanwhile the progress line shows the running shards' counts."""
    while True:
        ready, _ = ray.wait(list(in_flight), num_returns=1, timeout=0.25)
        if ready:
            return ready[0]
        if on_progress is not None:
            on_progress({**stats, "done": stats["done"] + _live_done(in_flight)})


def merge_shard(store: RunStore, shard_file: Path, tag: str) -> int:
    """Merge a shard's SQLite store into the run's SQLite ``store`` (one transaction, recorded
    under ``tag``: merging the same shard again does nothing). A successful reply in the run
    is kept; the shard's reply replaces a failed one. Returns the responses merged."""
    db = getattr(store, "db", None)
    if db is None:
        raise ConfigError("--executor ray: shard stores merge into a SQLite run store only")
    key = _MERGED_KEY + tag
    if db.execute("SELECT 1 FROM meta WHERE key=?", (key,)).fetchone():
        return 0
    db.execute("ATTACH DATABASE ? AS shard", (str(shard_file),))
    try:
        def cols(table: str) -> list[str]:
            mine = [r[1] for r in db.execute(f"PRAGMA main.table_info({table})")]
            theirs = {r[1] for r in db.execute(f"PRAGMA shard.table_info({table})")}
            return [c for c in mine if c in theirs]

        db.execute("BEGIN IMMEDIATE")
        try:
            rc = ", ".join(cols("responses"))
            n = db.execute(f"INSERT OR REPLACE INTO main.responses ({rc}) SELECT {rc} FROM shard.responses s "
                           "WHERE NOT EXISTS (SELECT 1 FROM main.responses m WHERE m.sample_id = s.sample_id "
                           "AND m.status = 'ok')").rowcount
            jc = ", ".join(cols("judges"))
            db.execute(f"INSERT OR IGNORE INTO main.judges ({jc}) SELECT {jc} FROM shard.judges")
            vc = ", ".join(cols("verdicts"))
            db.execute(f"INSERT OR REPLACE INTO main.verdicts ({vc}) SELECT {vc} FROM shard.verdicts")
            qc = ", ".join(c for c in cols("requests") if c != "id")  # the run numbers its own requests
            db.execute(f"INSERT INTO main.requests ({qc}) SELECT {qc} FROM shard.requests ORDER BY id")
            db.execute("INSERT INTO main.meta (key, value) VALUES (?, ?)",
                       (key, orjson.dumps({"at": time.time(), "responses": n}).decode()))
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            raise
    finally:
        db.execute("DETACH DATABASE shard")
    return n


def _run_shard(opts: RunOptions, ids: list[str], shard_dir: str, driver_node: str) -> dict[str, Any]:
    """A Ray task: run one shard with mmsafe's own engine; its outcome (and, from another node
    without a shared store, its SQLite store file)."""
    import ray

    from mmsafe.runner.run import execute

    o = dataclasses.replace(opts, executor="local", sample_ids=frozenset(ids), shard=True, out=Path(shard_dir),
                            on_progress=_reporter(shard_dir))
    outcome = asyncio.run(execute(o))
    res: dict[str, Any] = {"stats": {k: v for k, v in outcome.stats.items() if isinstance(v, (int, float))},
                           "stopped": outcome.stopped, "error": outcome.fatal_error, "pid": os.getpid(),
                           "n": len(ids)}
    if opts.store_url is None and ray.get_runtime_context().get_node_id() != driver_node:
        from mmsafe.store.sqlite import STORE_FILE
        res["store"] = (Path(shard_dir) / STORE_FILE).read_bytes()
    return res


def _shared_url(opts: RunOptions) -> str | None:
    """The PostgreSQL URL every worker writes to, naming the driver's run (``#RUN``)."""
    if opts.store_url is None:
        return None
    from mmsafe.store.locate import read_pointer

    pointer = read_pointer(opts.out)
    base = opts.store_url.split("#", 1)[0]
    return f"{base}#{pointer['run']}" if pointer else opts.store_url


async def drive_run(opts: RunOptions, bench: Benchmark, store: RunStore, pre: dict[str, Any],
                    judge_id: str) -> RunOutcome:
    """Drive ``opts`` (already validated, its config stored in ``store``) over a Ray cluster and
    write results and summary as :func:`mmsafe.runner.run.execute` does."""
    return _drive(opts, bench, store, pre, judge_id)  # the store's connection belongs to this thread


def _drive(opts: RunOptions, bench: Benchmark, store: RunStore, pre: dict[str, Any], judge_id: str) -> RunOutcome:
    from mmsafe.runner.run import _exit_code, iter_selected
    from mmsafe.runner.summary import compute_summary, write_results, write_summary
    from mmsafe.store.sqlite import STORE_FILE

    if opts.workers is not None and opts.workers < 1:
        raise ConfigError(f"--workers {opts.workers}: must be at least 1")
    ray = connect(opts.ray_address)
    workers = opts.workers or max(1, int(ray.cluster_resources().get("CPU", 1)))
    shared = _shared_url(opts)
    shards_root = opts.out / SHARDS_DIR
    if shared is None and shards_root.is_dir():  # an interrupted driver's shards: what they stored counts
        for d in sorted(shards_root.iterdir()):
            if (d / STORE_FILE).is_file():
                merge_shard(store, d / STORE_FILE, d.name)
            shutil.rmtree(d, ignore_errors=True)

    total = pre["n"]
    done_ok, judged = store.ok_sample_ids(), store.judged_sample_ids(judge_id)
    stats: dict[str, Any] = {"total": total, "done": 0, "errors": 0, "skipped_done": 0, "sent": 0, "judged": 0,
                             "by_others": 0, "cost_usd": 0.0, "started": time.time(), "workers": workers,
                             "shards": 0, "retried_workers": 0}
    stop: dict[str, Any] = {"reason": None, "error": None}
    cap = opts.max_connections or opts.target.max_connections
    spent = sum(d["cost_usd"] for d in store.ledger().values())
    base = dataclasses.replace(
        opts, max_connections=_split(cap, workers), store_url=shared, on_progress=None,
        judge_max_connections=_split(opts.judge_max_connections, workers),
        samples_in_flight=_split(opts.samples_in_flight, workers), shard_pre=pre)
    gpus = 1 if opts.target.provider == "hf" and ray.cluster_resources().get("GPU", 0) >= 1 else 0
    task = ray.remote(_run_shard).options(max_retries=3, retry_exceptions=False, num_cpus=1, num_gpus=gpus)
    base_ref = ray.put(base)
    node = ray.get_runtime_context().get_node_id()

    def progress() -> None:
        if opts.on_progress:
            opts.on_progress(stats)

    def todo() -> Iterator[str]:
        for s in iter_selected(bench, opts.limit):
            if s.id in done_ok and s.id in judged:
                stats["done"] += 1
                stats["skipped_done"] += 1
                continue
            yield s.id

    def shards() -> Iterator[list[str]]:
        return _chunks(todo(), total - len(done_ok & judged), workers)

    in_flight: dict[Any, tuple[Path, str]] = {}

    def submit(ids: list[str]) -> None:
        tag = f"shard-{stats['shards']:05d}-{uuid.uuid4().hex[:8]}"
        d = shards_root / tag
        d.mkdir(parents=True, exist_ok=True)
        o = base_ref
        if opts.max_cost is not None:  # the budget left, shared by the shards running at once
            o = ray.put(dataclasses.replace(base, max_cost=max(0.0, (opts.max_cost - spent) / workers)))
        in_flight[task.remote(o, ids, str(d), node)] = (d, tag)
        stats["shards"] += 1

    def finish(ref: Any) -> None:
        nonlocal spent
        d, tag = in_flight.pop(ref)
        try:
            res = ray.get(ref)
        except Exception as e:  # retries exhausted: what the shard stored is kept, the run stops
            first = (str(e).strip().splitlines() or [type(e).__name__])[0][:300]
            stop["reason"], stop["error"] = stop["reason"] or "crash", f"Ray shard {tag}: {first}"
            res = None
        if res is not None:
            for k, v in res["stats"].items():
                if k in ("done", "errors", "skipped_done", "sent", "judged", "by_others"):
                    stats[k] += v
            spent += res["stats"].get("cost_usd", 0.0)
            if res.get("store") is not None:  # a worker on another node: its store came back
                (d / STORE_FILE).write_bytes(res["store"])
            if res["stopped"] and not stop["reason"]:
                stop["reason"], stop["error"] = res["stopped"], res["error"]
        if shared is None and (d / STORE_FILE).is_file():
            merge_shard(store, d / STORE_FILE, tag)
        shutil.rmtree(d, ignore_errors=True)
        stats["cost_usd"] = spent
        progress()

    try:
        for ids in shards():
            while len(in_flight) >= 2 * workers:
                finish(_wait_one(ray, in_flight, stats, opts.on_progress))
            if stop["reason"]:
                break
            submit(ids)
        while in_flight:
            finish(_wait_one(ray, in_flight, stats, opts.on_progress))
    except BaseException:
        for ref in in_flight:
            ray.cancel(ref, force=True)
        raise
    disconnect()
    if shards_root.is_dir() and not any(shards_root.iterdir()):
        shards_root.rmdir()
    progress()

    selected = None if opts.limit is None else {s.id for s in iter_selected(bench, opts.limit)}
    summary = compute_summary(store, judge_id, bench_manifest=bench.manifest, limit_total=total,
                              stopped=stop["reason"], si_grouping=opts.si_grouping, sample_ids=selected)
    write_results(store, judge_id, opts.out, sample_ids=selected)
    write_summary(summary, opts.out)
    return RunOutcome(run_summary=summary, run_dir=opts.out, stopped=stop["reason"], fatal_error=stop["error"],
                      stats=stats, exit_code=_exit_code(summary, stop["reason"], opts.fail_on_error))


# --------------------------------------------------------------------------- mmsafe judge --executor ray

def _judge_shard(samples: list[Any], judge: Any, judge_id: str, run_dir: str, pointer: dict[str, Any] | None,
                 shard_dir: str, max_connections: int, use_cache: bool, cache_dir: str | None,
                 root: str) -> dict[str, Any]:
    """A Ray task: judge one shard of stored replies. The replies are read from the run's store
    (its SQLite file, read-only: the run directory must be visible from the worker's node, or
    the shared PostgreSQL run); the verdicts go to the shard's own SQLite store (merged by the
    driver) or straight into the PostgreSQL run. A retried shard skips what it already judged."""
    from mmsafe.models import BudgetExceeded, CostLedger, FatalProviderError, ResponseCache, default_cache_dir
    from mmsafe.runner.modes import final_verdict, is_multiturn_record, judge_transcript
    from mmsafe.runner.run import run_pool
    from mmsafe.store.sqlite import STORE_FILE, SQLiteRunStore

    stats = {"judged": 0, "done": 0, "errors": 0}
    stop: dict[str, Any] = {"reason": None, "error": None}
    report = _reporter(shard_dir)

    async def go() -> None:
        src: RunStore
        dst: RunStore
        if pointer is not None:
            from mmsafe.store.locate import conninfo_for
            from mmsafe.store.postgres import PostgresRunStore
            src = PostgresRunStore(conninfo_for(pointer["url"]), pointer["run"])
            dst = src
        else:
            f = Path(run_dir) / STORE_FILE
            if not f.is_file():
                raise ConfigError(f"{f}: not visible from this Ray node; judge a run on a shared filesystem "
                                  "or in a PostgreSQL store (--store)")
            src = SQLiteRunStore(f, readonly=True)
            dst = SQLiteRunStore(Path(shard_dir) / STORE_FILE)
            dst.register_judge(judge.identity)
        cache = ResponseCache(Path(cache_dir or default_cache_dir()) / "responses.sqlite") if use_cache else None
        if hasattr(judge, "bind"):
            judge.bind(ledger=CostLedger(), cache=cache)
        done = dst.judged_sample_ids(judge_id)
        rdir = Path(run_dir)

        async def process(s: Any) -> None:
            if stop["reason"] or s.id in done:
                return
            resp = src.get_response(s.id)
            if resp is None or not resp.ok:
                return
            try:
                if is_multiturn_record(resp.extra):
                    extra, rows = await judge_transcript(judge, s, resp.extra, Path(root), run_dir=rdir)
                    verdict = final_verdict(s.id, judge_id, extra, rejudged=True)
                else:
                    verdict, rows = await judge.judge(s, resp, Path(root))
            except BudgetExceeded as e:
                stop["reason"], stop["error"] = "max_cost", str(e)
                return
            except FatalProviderError as e:
                stop["reason"], stop["error"] = "fatal", str(e)
                return
            dst.save_verdict(verdict, rows)
            stats["judged"] += 1
            stats["done"] += 1
            stats["errors"] += verdict.parse_status == "error"
            report(stats)

        await judge.start()
        try:
            await run_pool(samples, process, max_connections)
        finally:
            await judge.close()
            if cache is not None:
                cache.close()
            if dst is not src:
                dst.close()
            src.close()

    asyncio.run(go())
    return {"stats": stats, "stopped": stop["reason"], "error": stop["error"]}


def judge_pool(run_dir: Path, store: RunStore, judge: Any, judge_id: str, stats: dict[str, Any],
               stop: dict[str, Any], *, ray_address: str | None, workers: int | None, max_connections: int,
               use_cache: bool, cache_dir: Path | None, root: Path,
               on_progress: Callable[[dict[str, Any]], None] | None, ledger: Any = None, cache: Any = None,
               ) -> Callable[[Iterable[Any], Any, int], Coroutine[Any, Any, None]]:
    """``mmsafe judge --executor ray``: a stand-in for :func:`~mmsafe.runner.run.run_pool` that
    sends the samples to judge in shards to Ray tasks and merges their verdicts into ``store``
    (``stats`` and ``stop`` are the re-judge's own, updated as shards end). The judge is
    shipped as it is now (before it starts), without ``ledger`` and ``cache`` (this process's;
    each worker binds its own)."""
    from mmsafe.models import CostLedger
    from mmsafe.store.locate import read_pointer
    from mmsafe.store.sqlite import STORE_FILE

    if workers is not None and workers < 1:
        raise ConfigError(f"--workers {workers}: must be at least 1")
    ray = connect(ray_address)
    if hasattr(judge, "bind"):
        judge.bind(ledger=CostLedger(), cache=None)
    judge_ref = ray.put(judge)  # serialised now, unbound
    if hasattr(judge, "bind") and ledger is not None:
        judge.bind(ledger=ledger, cache=cache)

    async def pool(items: Iterable[Any], _process: Any, _n: int) -> None:
        n_workers = workers or max(1, int(ray.cluster_resources().get("CPU", 1)))
        pointer = read_pointer(run_dir)
        task = ray.remote(_judge_shard).options(max_retries=3, retry_exceptions=False, num_cpus=1)
        shards_root = run_dir / SHARDS_DIR
        in_flight: dict[Any, tuple[Path, str]] = {}
        count = 0

        def submit(chunk: list[Any]) -> None:
            nonlocal count
            tag = f"judge-{count:05d}-{uuid.uuid4().hex[:8]}"
            d = shards_root / tag
            d.mkdir(parents=True, exist_ok=True)
            ref = task.remote(chunk, judge_ref, judge_id, str(run_dir), pointer, str(d),
                              max(1, max_connections // n_workers), use_cache,
                              None if cache_dir is None else str(cache_dir), str(root))
            in_flight[ref] = (d, tag)
            count += 1

        def finish(ref: Any) -> None:
            d, tag = in_flight.pop(ref)
            try:
                res = ray.get(ref)
            except Exception as e:  # retries exhausted: the verdicts the shard stored are kept
                first = (str(e).strip().splitlines() or [type(e).__name__])[0][:300]
                stop["reason"], stop["error"] = stop["reason"] or "crash", f"Ray shard {tag}: {first}"
                res = None
            if res is not None:
                for k in ("judged", "done", "errors"):
                    stats[k] += res["stats"][k]
                if res["stopped"] and not stop["reason"]:
                    stop["reason"], stop["error"] = res["stopped"], res["error"]
            if pointer is None and (d / STORE_FILE).is_file():
                merge_shard(store, d / STORE_FILE, tag)
            shutil.rmtree(d, ignore_errors=True)
            if on_progress:
                on_progress(stats)

        try:
            for chunk in _chunks(items, int(stats.get("total") or 1), n_workers):
                while len(in_flight) >= 2 * n_workers:
                    finish(_wait_one(ray, in_flight, stats, on_progress))
                if stop["reason"]:
                    break
                submit(chunk)
            while in_flight:
                finish(_wait_one(ray, in_flight, stats, on_progress))
        except BaseException:
            for ref in in_flight:
                ray.cancel(ref, force=True)
            raise
        disconnect()
        if shards_root.is_dir() and not any(shards_root.iterdir()):
            shards_root.rmdir()

    return pool
