"""``mmsafe defend-eval``: defenses side by side — ASR (by turn count) on a harmful
benchmark with and without each defense, ASR reduction, over-refusal on a benign /
borderline set, added latency and cost. A defense that refuses everything "wins" on
ASR; the over-refusal column is what keeps the comparison honest.

It drives runs, so it lives with the runner (the defenses themselves, in
:mod:`mmsafe.defense`, know nothing of the runner).
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import orjson

from mmsafe import metrics
from mmsafe.judges import Judge
from mmsafe.refusal import is_refusal
from mmsafe.runner.base import Defense
from mmsafe.runner.options import RunOptions
from mmsafe.runner.run import execute
from mmsafe.runner.summary import DefenseBlock, RunSummary
from mmsafe.runtime import run_async
from mmsafe.store import open_store

COMPARISON_FILE = "comparison.json"


def _slug(spec: str | None) -> str:
    return "none" if spec is None else re.sub(r"[^A-Za-z0-9_.-]+", "_", spec)[:80]


def over_refusal(run_dir: Path) -> dict[str, Any]:
    """Share of benign prompts the (defended) target refused, by refusal-phrase detection."""
    store = open_store(run_dir, readonly=True)
    try:
        n = refused = 0
        for row in store.iter_rows(None):
            if row["status"] != "ok":
                continue
            n += 1
            refused += is_refusal(row["response"] or "")
    finally:
        store.close()
    lo, hi = metrics.wilson_interval(refused, n) if n else (None, None)
    return {"n": n, "n_refused": refused, "rate": refused / n if n else None, "ci": [lo, hi]}


def comparison_row(spec: str | None, run_dir: Path, h: RunSummary) -> dict[str, Any]:
    """One defense's row of ``comparison.json`` from its harmful run's summary."""
    d = h.defense if isinstance(h.defense, DefenseBlock) else None  # undefended: no cost, no latency
    row: dict[str, Any] = {
        "defense": spec or "none", "run_dir": str(run_dir), "asr": h.asr, "asr_ci": h.asr_ci,
        "n_scored": h.n_scored, "n_unscored": h.n_unscored, "n_errors": h.n_errors,
        "asr_by_turns": {k: v.asr for k, v in h.by_turns.items()},
        "safety_index": h.safety_index.si if h.safety_index else None, "cost_usd": h.cost_usd,
        "moderator_cost_usd": d.moderator_cost_usd if d else 0.0,
        "added_latency_ms_mean": d.added_latency_ms_mean if d else 0.0, "actions": d.actions if d else None}
    if h.controls is not None:
        c = h.controls
        row["over_refusal"] = {"n": c.n, "n_refused": c.n_refused, "rate": c.over_refusal_rate, "ci": c.ci}
    return row


def _compare_to_baseline(rows: list[dict[str, Any]]) -> None:
    """ASR reduction (absolute and relative) and over-refusal increase of each row against the first."""
    baseline = rows[0]
    b_asr = baseline["asr"]
    b_or = (baseline.get("over_refusal") or {}).get("rate")
    for r in rows:
        if b_asr is not None and r["asr"] is not None:
            r["asr_reduction"] = b_asr - r["asr"]
            r["asr_reduction_rel"] = (b_asr - r["asr"]) / b_asr if b_asr else None
        else:
            r["asr_reduction"] = r["asr_reduction_rel"] = None
        ro = (r.get("over_refusal") or {}).get("rate")
        r["over_refusal_increase"] = (ro - b_or) if b_or is not None and ro is not None else None


def evaluate_defenses(harmful: Path, benign: Path | None, base: RunOptions,
                      defenses: list[tuple[str | None, Defense | None]], out: Path,
                      make_judge: Callable[[], Judge]) -> dict[str, Any]:
    """Run (harmful [, benign]) x (no defense + each defense); write and return the comparison."""
    rows: list[dict[str, Any]] = []
    for spec, defense in defenses:
        tag = _slug(spec)
        opts = replace(base, benchmark=harmful, out=out / tag / "harmful", defense=defense, judge=make_judge())
        row = comparison_row(spec, out / tag / "harmful", run_async(execute(opts)).run_summary)
        if benign is not None:  # a benign set given: its refusals are the over-refusal (not the controls')
            bopts = replace(base, benchmark=benign, out=out / tag / "benign", defense=defense, judge=make_judge())
            run_async(execute(bopts))
            row["over_refusal"] = over_refusal(out / tag / "benign")
        rows.append(row)
    _compare_to_baseline(rows)
    result = {"harmful": str(harmful), "benign": str(benign) if benign else None,
              "target": base.target.public(), "rows": rows,
              "note": "over-refusal = share of benign prompts refused (refusal-phrase detection)"}
    out.mkdir(parents=True, exist_ok=True)
    tmp = out / (COMPARISON_FILE + ".tmp")
    tmp.write_bytes(orjson.dumps(result, option=orjson.OPT_INDENT_2))
    os.replace(tmp, out / COMPARISON_FILE)
    return result


__all__ = ["COMPARISON_FILE", "comparison_row", "evaluate_defenses", "over_refusal"]
