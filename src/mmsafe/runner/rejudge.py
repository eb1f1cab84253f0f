"""Re-judge a stored run with another judge, without re-generating (``mmsafe judge``).

Samples stream back from the benchmark the run was made from (its path is in the run's
config) and are matched to stored replies by id; only successful replies are judged,
samples this judge already judged are skipped (so an interrupted re-judge resumes), and
the verdicts are stored under the new judge's id. A live or adaptive run's record is a
whole conversation: each of its turns is judged with the dialogue before it, and the
sample is unsafe if any turn is, as in the run itself. ``summary.json`` is then rebuilt: the
run's primary judge stays the headline one (unless ``primary=True``), every other judge
appears under ``judges`` with the agreement between them.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mmsafe.datasets import open_benchmark
from mmsafe.judges import Judge
from mmsafe.models import BudgetExceeded, CostLedger, FatalProviderError, ResponseCache, default_cache_dir
from mmsafe.runner.modes import final_verdict, is_multiturn_record, judge_transcript
from mmsafe.runner.run import _file_sha256, run_pool
from mmsafe.runner.summary import RunSummary, compute_summary, write_results, write_summary
from mmsafe.store import StoreError, has_store, open_store
from mmsafe.store.sqlite import STORE_FILE
from mmsafe.types import InputError, Sample


@dataclass
class RejudgeOutcome:
    """What a re-judge did: the new judge's id, the headline judge's, the rebuilt summary."""

    judge_id: str
    primary_judge_id: str
    run_summary: RunSummary
    stats: dict[str, Any] = field(default_factory=dict)
    stopped: str | None = None
    error: str | None = None

    @property
    def summary(self) -> dict[str, Any]:
        """The summary as ``summary.json``'s dict (for code that indexes it)."""
        return self.run_summary.to_dict()


def _benchmark_path(run_dir: Path, cfg: dict[str, Any], override: Path | None) -> Path:
    if override is not None:
        return override
    raw = cfg.get("benchmark_path")
    if not raw:
        raise InputError(f"{run_dir}: the run's config names no benchmark; pass --benchmark")
    p = Path(raw)
    if not p.is_absolute() and not p.exists() and (run_dir / raw).exists():
        p = run_dir / raw
    if not p.exists():
        raise InputError(f"{run_dir}: the run's benchmark {raw} is not there any more; pass --benchmark DIR")
    return p


async def rejudge(run_dir: Path, judge: Judge, *, primary: bool = False, benchmark: Path | None = None,
                  max_connections: int = 16, use_cache: bool = True, cache_dir: Path | None = None,
                  on_progress: Callable[[dict[str, Any]], None] | None = None, executor: str = "local",
                  ray_address: str | None = None, workers: int | None = None) -> RejudgeOutcome:
    if not has_store(run_dir):  # run.sqlite, or store.json naming a PostgreSQL run
        raise StoreError(f"{run_dir}: no run store here ({STORE_FILE} missing)")
    store = open_store(run_dir)
    try:
        cfg = store.get_meta("config") or {}
        bench = open_benchmark(_benchmark_path(run_dir, cfg, benchmark))
        want = (cfg.get("fingerprint") or {}).get("benchmark") or {}
        if want.get("name") and bench.manifest.name != want["name"]:
            raise InputError(f"{bench.root}: is benchmark {bench.manifest.name!r}, but {run_dir} ran on "
                             f"{want['name']!r}; pass the run's own benchmark")
        if want.get("samples_sha256") and _file_sha256(bench.samples_path) != want["samples_sha256"]:
            raise InputError(f"{bench.samples_path}: the samples differ from those {run_dir} ran on; "
                             "judging would pair replies with other questions")
        if executor == "ray":  # the run and benchmark are valid: Ray's workers start (and import mmsafe)
            from mmsafe.runner.ray_exec import prewarm  # while this process reads what is left to judge
            prewarm(ray_address, workers, judge)
        judge_id = store.register_judge(judge.identity)
        old_primary = store.get_meta("primary_judge") or judge_id
        ok_ids = store.ok_sample_ids()
        done = store.judged_sample_ids(judge_id)
        todo_n = len(ok_ids - done)
        stats = {"total": todo_n, "done": 0, "judged": 0, "skipped_done": len(ok_ids & done), "errors": 0,
                 "sent": 0, "missing_in_benchmark": 0, "cost_usd": 0.0, "started": time.time()}
        ledger = CostLedger()
        cache = ResponseCache((cache_dir or default_cache_dir()) / "responses.sqlite") if use_cache else None
        if hasattr(judge, "bind"):
            judge.bind(ledger=ledger, cache=cache)
        stop: dict[str, Any] = {"reason": None, "error": None}
        root = bench.root
        async def process(s: Sample) -> None:
            if stop["reason"]:
                return
            resp = store.get_response(s.id)
            if resp is None or not resp.ok:
                return
            try:
                if is_multiturn_record(resp.extra):
                    # a live/adaptive conversation: every turn judged with the dialogue before it,
                    # the sample unsafe if any turn is (as the run's own judge did)
                    extra, rows = await judge_transcript(judge, s, resp.extra, root, run_dir=run_dir)
                    verdict = final_verdict(s.id, judge_id, extra, rejudged=True)
                else:
                    verdict, rows = await judge.judge(s, resp, root)
            except BudgetExceeded as e:
                stop["reason"], stop["error"] = "max_cost", str(e)
                return
            except FatalProviderError as e:
                stop["reason"], stop["error"] = "fatal", str(e)
                return
            store.save_verdict(verdict, rows)
            stats["judged"] += 1
            stats["done"] += 1
            if verdict.parse_status == "error":
                stats["errors"] += 1
            if on_progress:
                stats["cost_usd"] = ledger.total_cost
                on_progress(stats)

        fed = [0]

        def todo():
            for s in bench.iter_samples():
                if stop["reason"] or fed[0] >= todo_n:
                    return
                if s.id in ok_ids and s.id not in done:
                    fed[0] += 1
                    yield s

        pool: Callable[..., Awaitable[None]] = run_pool
        if executor == "ray":  # the samples to judge go to Ray workers in shards, merged into this store
            from mmsafe.runner.ray_exec import judge_pool
            pool = judge_pool(run_dir, store, judge, judge_id, stats, stop, ray_address=ray_address, workers=workers,
                              max_connections=max_connections, use_cache=use_cache, cache_dir=cache_dir,
                              root=root, on_progress=on_progress, ledger=ledger, cache=cache)
        await judge.start()
        try:
            await pool(todo(), process, max_connections)
        finally:
            await judge.close()
            if cache is not None:
                cache.close()
        seen = fed[0]
        stats["missing_in_benchmark"] = todo_n - seen
        primary_id = judge_id if primary else old_primary
        if primary:
            store.set_meta("primary_judge", judge_id)
        store.set_meta("rejudged:" + judge_id, {"at": time.time(), "identity": judge.identity.model_dump(),
                                                 "stats": {k: v for k, v in stats.items() if k != "started"}})
        pre = cfg.get("preflight") or {}
        summary = compute_summary(store, primary_id, bench_manifest=bench.manifest,
                                  limit_total=pre.get("n"), stopped=stop["reason"])
        write_results(store, primary_id, run_dir)
        write_summary(summary, run_dir)
        return RejudgeOutcome(judge_id=judge_id, primary_judge_id=primary_id, run_summary=summary, stats=stats,
                              stopped=stop["reason"], error=stop["error"])
    finally:
        store.close()
