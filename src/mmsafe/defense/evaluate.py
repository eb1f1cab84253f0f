"""``mmsafe defend-eval``: defenses side by side — ASR (by turn count) on a harmful
benchmark with and without each defense, ASR reduction, over-refusal on a benign /
borderline set, added latency and cost. A defense that refuses everything "wins" on
ASR; the over-refusal column is what keeps the comparison honest.
"""

from __future__ import annotations

import os
import re
from dataclasses import replace
from pathlib import Path
from typing import Any

import orjson

from mmsafe import metrics
from mmsafe.refusal import is_refusal
from mmsafe.runner import RunOptions, execute
from mmsafe.runtime import run_async
from mmsafe.store import open_store


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


def evaluate_defenses(harmful: Path, benign: Path | None, base: RunOptions, defenses: list[tuple[str | None, Any]],
                      out: Path, make_judge) -> dict[str, Any]:
    """Run (harmful [, benign]) x (no defense + each defense); return the comparison."""
    rows: list[dict[str, Any]] = []
    for spec, defense in defenses:
        tag = _slug(spec)
        opts = replace(base, benchmark=harmful, out=out / tag / "harmful", defense=defense, judge=make_judge())
        h = run_async(execute(opts)).summary
        row: dict[str, Any] = {"defense": spec or "none", "run_dir": str(out / tag / "harmful"),
                               "asr": h["asr"], "asr_ci": h["asr_ci"], "n_scored": h["n_scored"],
                               "n_unscored": h["n_unscored"], "n_errors": h["n_errors"],
                               "asr_by_turns": {k: v["asr"] for k, v in h["by_turns"].items()},
                               "safety_index": (h.get("safety_index") or {}).get("si"),
                               "cost_usd": h["cost_usd"],
                               "moderator_cost_usd": (h.get("defense") or {}).get("moderator_cost_usd", 0.0),
                               "added_latency_ms_mean": (h.get("defense") or {}).get("added_latency_ms_mean", 0.0),
                               "actions": (h.get("defense") or {}).get("actions")}
        if benign is not None:
            bopts = replace(base, benchmark=benign, out=out / tag / "benign", defense=defense, judge=make_judge())
            run_async(execute(bopts))
            row["over_refusal"] = over_refusal(out / tag / "benign")
        elif h.get("controls"):
            c = h["controls"]
            row["over_refusal"] = {"n": c["n"], "n_refused": c["n_refused"], "rate": c["over_refusal_rate"],
                                   "ci": c["ci"]}
        rows.append(row)
    baseline = rows[0]
    for r in rows:
        if baseline["asr"] is not None and r["asr"] is not None:
            r["asr_reduction"] = baseline["asr"] - r["asr"]
            r["asr_reduction_rel"] = (baseline["asr"] - r["asr"]) / baseline["asr"] if baseline["asr"] else None
        else:
            r["asr_reduction"] = r["asr_reduction_rel"] = None
        bo, ro = (baseline.get("over_refusal") or {}).get("rate"), (r.get("over_refusal") or {}).get("rate")
        r["over_refusal_increase"] = (ro - bo) if bo is not None and ro is not None else None
    result = {"harmful": str(harmful), "benign": str(benign) if benign else None,
              "target": base.target.public(), "rows": rows,
              "note": "over-refusal = share of benign prompts refused (refusal-phrase detection)"}
    out.mkdir(parents=True, exist_ok=True)
    tmp = out / "comparison.json.tmp"
    tmp.write_bytes(orjson.dumps(result, option=orjson.OPT_INDENT_2))
    os.replace(tmp, out / "comparison.json")
    return result
