"""A run's options and outcome (shared by :mod:`~mmsafe.runner.run`, :mod:`~mmsafe.runner.modes`
and :mod:`~mmsafe.runner.defend`; imports no other runner module but :mod:`~mmsafe.runner.base`
and :mod:`~mmsafe.runner.summary`)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mmsafe.judges import Judge
from mmsafe.models import EndpointConfig
from mmsafe.runner.base import Defense, RunMode
from mmsafe.runner.summary import RunSummary


@dataclass
class RunOptions:
    """Everything ``mmsafe run`` takes: what to run, against what, judged how, within which limits."""

    benchmark: Path
    target: EndpointConfig
    judge: Judge
    out: Path
    mode: RunMode = "fixed"
    limit: int | None = None
    max_connections: int | None = None
    judge_max_connections: int | None = None  # default: max_connections
    max_cost: float | None = None
    fail_on_error: float = 0.05  # exit 1 when more than this share of samples errored
    seed: int | None = None
    epoch: int = 0
    use_cache: bool = True
    cache_dir: Path | None = None
    system_prompt: str | None = None
    defense: Defense | None = None  # wrapped around the target (see mmsafe.runner.base.Defense)
    on_progress: Callable[[dict[str, Any]], None] | None = None
    attacker: EndpointConfig | None = None  # --mode adaptive: the attacker LLM
    max_turns: int = 5  # --mode adaptive: kept turns at most
    max_backtracks: int = 3  # --mode adaptive: refused exchanges removed and retried at most
    attack: str = "crescendo"  # --mode adaptive: the registered attack (or module.path:Name)
    attack_options: dict[str, Any] = field(default_factory=dict)  # --attack-opt K=V (the attack's config)
    samples_in_flight: int | None = None  # samples driven at once (default: the target's connection cap); an
    # attack with parallel streams or branches makes several calls per sample, so its caps may be set above this
    si_grouping: str = "aligned"  # Safety Index across lengths: "aligned" (importer's alignment) | "id"
    store_url: str | None = None  # --store postgresql://…: a shared PostgreSQL run store (default: RUN_DIR/run.sqlite)
    name: str | None = None  # --name: the run's short display name in reports and the viewer (config "name")
    executor: str = "local"  # --executor: "local" (this process) or "ray" (mmsafe.runner.ray_exec)
    ray_address: str | None = None  # --ray-address: the Ray cluster (default: RAY_ADDRESS, else a local one)
    workers: int | None = None  # --workers: Ray workers (default: the cluster's CPUs)
    sample_ids: frozenset[str] | None = None  # only these samples (a Ray worker's shard); None: all selected
    shard: bool = False  # a Ray worker's shard: the driver writes results and summary, the worker does not
    shard_pre: dict[str, Any] | None = None  # a shard's copy of the driver's preflight (not repeated per shard)
    batch: bool = False  # --batch: the target's replies through its provider's batch API (mmsafe.runner.batch)
    batch_fallback: str = "batch"  # --batch-fallback: failed batch lines retried as a new "batch" or sent "live"
    batch_poll_s: float = 30.0  # --batch-poll: seconds between batch status polls


@dataclass
class RunOutcome:
    """What a run did: its typed summary, why it stopped early (if it did) and the exit code."""

    run_summary: RunSummary
    run_dir: Path
    stopped: str | None = None  # "max_cost" | "fatal" | "crash" | None
    fatal_error: str | None = None
    exit_code: int = 0
    stats: dict[str, Any] = field(default_factory=dict)

    @property
    def summary(self) -> dict[str, Any]:
        """The summary as ``summary.json``'s dict (for code that indexes it)."""
        return self.run_summary.to_dict()


__all__ = ["RunOptions", "RunOutcome"]
