"""Loading run directories for the report, viewer and exports.

A run directory holds ``run.sqlite`` (the store) and, once a run finished,
``summary.json``. The summary is the authority for numbers (the runner computed its
bootstrap CIs); when it is missing (an interrupted run) the same summary is computed
from the store by the same code (:func:`mmsafe.runner.summary.compute_summary`), marked
incomplete. Nothing here loads every row of a run.

Of the runner, only :mod:`mmsafe.runner.summary` is imported (the typed summary; it
pulls in no model client).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson

from mmsafe.runner.summary import SUMMARY_FILE, RunSummary, SummaryStore, compute_summary, judge_name
from mmsafe.store.base import StoreError
from mmsafe.store.locate import has_store
from mmsafe.store.sqlite import STORE_FILE, open_store
from mmsafe.types import InputError

_judge_name = judge_name  # the report's historical name for it


@dataclass
class RunInfo:
    """One run, as the report sees it: its summary plus provenance from the store.

    ``run_summary`` is the typed summary; ``summary`` is the same as ``summary.json``'s dict
    (for the templates and exports that index it)."""

    run_dir: Path
    run_summary: RunSummary = field(default_factory=RunSummary)
    config: dict[str, Any] = field(default_factory=dict)
    judges: list[dict[str, Any]] = field(default_factory=list)
    primary_judge: str | None = None
    counts: dict[str, int] = field(default_factory=dict)
    summary_source: str = "summary.json"  # or "store" when computed here
    key: str = ""  # unique short name among the runs of one report / viewer
    comparison: dict[str, Any] | None = None  # its row of a defend-eval comparison.json, if any
    summary: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not self.summary:
            self.summary = self.run_summary.to_dict()

    def set_summary(self, s: RunSummary, source: str) -> None:
        """Replace the summary (typed and dict views together)."""
        self.run_summary, self.summary, self.summary_source = s, s.to_dict(), source

    @property
    def name(self) -> str:
        t = self.run_summary.target
        return str(t.name or t.model or self.run_dir.name)

    @property
    def display(self) -> str:
        return str(self.run_summary.target.display or self.name)

    @property
    def mock(self) -> bool:
        return self.run_summary.target.mock

    @property
    def benchmark(self) -> dict[str, Any]:
        return self.summary.get("benchmark") or {}

    @property
    def benchmark_key(self) -> tuple[str, str]:
        b = self.run_summary.benchmark
        return (str(b.name), str(b.version))

    @property
    def benchmark_path(self) -> Path | None:
        p = self.config.get("benchmark_path")
        return Path(p) if p else None

    @property
    def judge(self) -> dict[str, Any]:
        return self.summary.get("judge") or {}

    @property
    def judge_id(self) -> str | None:
        return self.run_summary.judge.id

    @property
    def stale(self) -> bool:
        """The store holds more replies than the summary counted (run resumed since)."""
        n = self.counts.get("responses")
        return n is not None and self.summary_source == "summary.json" and n > self.run_summary.n_samples

    @property
    def defense(self) -> dict[str, Any] | None:
        return defense_of(self.summary, self.config)


def load_run(run_dir: Path | str, *, with_store: bool = True) -> RunInfo:
    """Read a run directory's summary (or compute one from its store) and provenance."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise InputError(f"{run_dir}: no such run directory")
    path = run_dir / SUMMARY_FILE
    summary = RunSummary.load(path) if path.is_file() else None
    store_here = has_store(run_dir)  # run.sqlite, or store.json naming a PostgreSQL run
    if summary is None and not store_here:
        raise InputError(f"{run_dir}: neither {SUMMARY_FILE} nor {STORE_FILE} here (not a run directory)")
    info = RunInfo(run_dir=run_dir, run_summary=summary or RunSummary())
    if store_here and with_store:
        store = open_store(run_dir, readonly=True)
        try:
            info.config = store.get_meta("config") or {}
            info.judges = store.judges()
            info.primary_judge = store.get_meta("primary_judge")
            info.counts = store.counts()
            if summary is None:
                jid = info.primary_judge or (info.judges[0]["judge_id"] if info.judges else None)
                info.set_summary(summary_from_store(store, jid), "store")
        finally:
            store.close()
    if info.primary_judge is None:
        info.primary_judge = info.judge_id
    return info


def load_runs(run_dirs: list[Path | str]) -> list[RunInfo]:
    if not run_dirs:
        raise InputError("no run directory given")
    runs = []
    for d, comparison in expand_run_dirs(run_dirs):
        info = load_run(d)
        info.comparison = comparison
        runs.append(info)
    assign_keys(runs)
    return runs


def assign_keys(runs: list[RunInfo]) -> None:
    """Short, unique, URL-safe keys (r0, r1, …) — names may collide or hold anything."""
    for i, r in enumerate(runs):
        r.key = f"r{i}"


def base_name(r: RunInfo) -> str:
    """A run's short name before disambiguation: its ``--name`` (config ``name``), else the
    target's model name (``mock/`` kept for the mocks; a file path's last part), never a URL."""
    given = r.config.get("name")
    if isinstance(given, str) and given.strip():
        return given.strip()
    t = r.run_summary.target
    model = str(t.model or "").rstrip("/")
    if not model:
        name = str(t.name or r.run_dir.name)
        model = name.split("@", 1)[0]  # a spec's URL is provenance, not a label
    if "/" in model and t.provider == "local":
        model = model.rsplit("/", 1)[-1]
    return f"mock/{model}" if t.mock and not model.startswith("mock/") else model


def _qualifiers(r: RunInfo, same: list[RunInfo]) -> list[str]:
    bits: list[str] = []
    providers = {x.run_summary.target.provider for x in same}
    if len(providers) > 1 and r.run_summary.target.provider:
        bits.append(str(r.run_summary.target.provider))
    d = r.defense
    if d and d.get("name"):
        bits.append("+ " + str(d["name"]))
    if len({x.summary.get("mode") for x in same}) > 1 and r.summary.get("mode"):
        bits.append(str(r.summary.get("mode")))
    if len({x.judge.get("id") for x in same}) > 1 and r.judge.get("name"):
        bits.append(str(r.judge.get("name")))
    if len({x.benchmark_key for x in same}) > 1 and r.benchmark.get("name"):
        bits.append(str(r.benchmark.get("name")))
    return bits


def display_names(runs: list[RunInfo]) -> list[str]:
    """Short, unique display names of ``runs`` (in order): :func:`base_name`, then what tells
    runs sharing a name apart (provider, defense, mode, judge, benchmark); runs still equal
    get their folder's name instead (``mock/mixed [run-b]``), and ``#2``, ``#3`` last."""
    base = [base_name(r) for r in runs]
    names = []
    for i, r in enumerate(runs):
        same = [x for j, x in enumerate(runs) if base[j] == base[i]]
        bits = _qualifiers(r, same) if len(same) > 1 else []
        names.append(f"{base[i]} ({', '.join(bits)})" if bits else base[i])
    for i in range(len(runs)):  # still equal: the model name and the run folder's name
        dup = [j for j, n in enumerate(names) if n == names[i]]
        if len(dup) > 1 and len({runs[j].run_dir.name for j in dup}) == len(dup):
            for j in dup:
                names[j] = f"{base[j]} [{runs[j].run_dir.name}]"
    seen: dict[str, int] = {}
    for i, n in enumerate(names):  # last resort: numbered
        seen[n] = seen.get(n, 0) + 1
        if seen[n] > 1:
            names[i] = f"{n} #{seen[n]}"
    return names


def run_label(r: RunInfo, runs: list[RunInfo]) -> str:
    """The run's display name among ``runs`` (see :func:`display_names`)."""
    idx = next((i for i, x in enumerate(runs) if x is r), None)
    if idx is None:
        return base_name(r)
    return display_names(runs)[idx]


# --------------------------------------------------------------------------- fallback summary


def summary_from_store(store: SummaryStore, judge_id: str | None) -> RunSummary:
    """The summary of a run without ``summary.json`` (interrupted), computed from its store
    exactly as the runner would, and marked incomplete."""
    return compute_summary(store, judge_id, complete=False, stopped="summary.json missing")


# --------------------------------------------------------------------------- defenses


def defense_of(summary: dict[str, Any], config: dict[str, Any] | None = None) -> dict[str, Any] | None:
    """The defense a run was made under, from wherever a summary or config carries it.

    Accepts ``summary["defense"]`` (a dict or a spec string), ``summary["target"]["defense"]``,
    ``config["defense"]`` or ``config["fingerprint"]["defense"]``. Returns a dict with at
    least ``name`` (the other keys are passed through), or ``None`` for an undefended run.
    """
    config = config or {}
    for cand in (summary.get("defense"), (summary.get("target") or {}).get("defense"), config.get("defense"),
                 (config.get("fingerprint") or {}).get("defense")):
        if cand in (None, "", "none", False) or cand == {}:
            continue
        if isinstance(cand, str):
            return {"name": cand}
        if isinstance(cand, dict):
            if cand.get("enabled") is False:
                continue
            ident: dict[str, Any] = cand["identity"] if isinstance(cand.get("identity"), dict) else {}
            name = (cand.get("name") or cand.get("spec") or cand.get("kind") or _identity_name(ident)
                    or "defense")
            if name == "none":
                continue
            return {**cand, "name": str(name)}
        return {"name": str(cand)}
    return None


def _identity_name(ident: dict[str, Any]) -> str | None:
    """``moderator(pre)``-style name of a defense identity (``{"kind": ..., "mode": ...}``)."""
    kind = ident.get("kind")
    if not kind:
        return None
    mode = ident.get("mode")
    return f"{kind}({mode})" if isinstance(mode, str) and mode else str(kind)


def _num(x: Any) -> float | None:
    if isinstance(x, bool) or x is None:
        return None
    if isinstance(x, (int, float)) and math.isfinite(x):
        return float(x)
    return None


def over_refusal(summary: dict[str, Any] | RunSummary) -> float | None:
    """The over-refusal rate on the benchmark's benign controls (None when it had none)."""
    if isinstance(summary, RunSummary):
        return _num(summary.controls.over_refusal_rate) if summary.controls else None
    c = summary.get("controls") or {}
    return _num(c.get("over_refusal_rate")) if isinstance(c, dict) else None


def _first(*xs: Any) -> float | None:
    """The first of ``xs`` that is a finite number."""
    for x in xs:
        if (v := _num(x)) is not None:
            return v
    return None


def _baseline(r: RunInfo, runs: list[RunInfo]) -> RunInfo | None:
    """The undefended run of the same target, benchmark and judge among ``runs``."""
    for b in runs:
        if b is r or b.defense is not None:
            continue
        if b.name == r.name and b.benchmark_key == r.benchmark_key and b.judge_id == r.judge_id:
            return b
    return None


def _asr_columns(r: RunInfo, d: dict[str, Any], base: RunInfo | None,
                 cmp_row: dict[str, Any]) -> tuple[float | None, float | None, float | None]:
    """(ASR, baseline ASR, reduction): from the defense block, the comparison row or the baseline run."""
    asr = r.run_summary.asr
    base_asr = _first(d.get("baseline_asr"), base.run_summary.asr if base is not None else None)
    reduction = _first(d.get("asr_reduction"), cmp_row.get("asr_reduction"))
    if reduction is None and base_asr is not None and asr is not None:
        reduction = base_asr - asr
    if base_asr is None and reduction is not None and asr is not None:
        base_asr = asr + reduction
    return asr, base_asr, reduction


def _over_refusal_columns(r: RunInfo, d: dict[str, Any], base: RunInfo | None,
                          cmp_row: dict[str, Any]) -> tuple[float | None, float | None, float | None]:
    """(over-refusal, baseline over-refusal, delta) from the same sources as the ASR."""
    orr = _first(d.get("over_refusal"), d.get("over_refusal_rate"),
                 (cmp_row.get("over_refusal") or {}).get("rate"), over_refusal(r.run_summary))
    base_orr = _num(d.get("baseline_over_refusal"))
    if base_orr is None and base is not None:
        base_orr = (_num(((base.comparison or {}).get("over_refusal") or {}).get("rate"))
                    if base.comparison else over_refusal(base.run_summary))
    delta = (orr - base_orr if orr is not None and base_orr is not None
             else _num(cmp_row.get("over_refusal_increase")))
    return orr, base_orr, delta


_KNOWN_DEFENSE_KEYS = {"name", "spec", "kind", "baseline_asr", "asr_reduction", "over_refusal", "over_refusal_rate",
                       "baseline_over_refusal", "identity", "added_latency_ms_mean", "moderator_cost_usd", "actions",
                       "cascade"}


def _defense_cascade(c: Any) -> dict[str, Any] | None:
    """A cascade moderator's ``defense.cascade`` block for the report (its stages as dicts), or None."""
    if not isinstance(c, dict) or not isinstance(c.get("stages"), list) or not c["stages"]:
        return None
    return {**c, "stages": [st for st in c["stages"] if isinstance(st, dict)]}


def _defense_row(r: RunInfo, d: dict[str, Any], runs: list[RunInfo]) -> dict[str, Any]:
    cmp_row = r.comparison or {}
    base = _baseline(r, runs)
    asr, base_asr, reduction = _asr_columns(r, d, base, cmp_row)
    orr, base_orr, delta = _over_refusal_columns(r, d, base, cmp_row)
    return {
        "run": r, "defense": d["name"], "baseline": base, "asr": asr, "baseline_asr": base_asr,
        "asr_ci": r.run_summary.asr_ci, "reduction": reduction,
        "relative_reduction": (reduction / base_asr if reduction is not None and base_asr else None),
        "over_refusal": orr, "baseline_over_refusal": base_orr, "over_refusal_delta": delta,
        "added_latency_ms": _num(d.get("added_latency_ms_mean", cmp_row.get("added_latency_ms_mean"))),
        "moderator_cost_usd": _num(d.get("moderator_cost_usd", cmp_row.get("moderator_cost_usd"))),
        "actions": d.get("actions") or cmp_row.get("actions"),
        "identity": d.get("identity"),
        "cascade": _defense_cascade(d.get("cascade")),
        "other": {k: v for k, v in d.items() if k not in _KNOWN_DEFENSE_KEYS},
    }


def defense_rows(runs: list[RunInfo]) -> list[dict[str, Any]]:
    """One row per defended run: its undefended baseline (same target, benchmark and judge
    among the given runs; or the ``mmsafe defend-eval`` comparison it came from; or numbers
    the defense block carries itself), ASR reduction, over-refusal, added latency and cost.
    Empty when no run carries a defense."""
    return [_defense_row(r, d, runs) for r in runs if (d := r.defense) is not None]


COMPARISON_FILE = "comparison.json"


def expand_run_dirs(run_dirs: list[Path | str]) -> list[tuple[Path, dict[str, Any] | None]]:
    """Run directories, with an ``mmsafe defend-eval`` output directory (``comparison.json``
    and one ``<defense>/harmful`` run per row) expanded into its runs."""
    out: list[tuple[Path, dict[str, Any] | None]] = []
    for d in map(Path, run_dirs):
        cmp_path = d / COMPARISON_FILE
        if cmp_path.is_file() and not (d / STORE_FILE).is_file() and not (d / SUMMARY_FILE).is_file():
            try:
                comp = orjson.loads(cmp_path.read_bytes())
                rows = comp["rows"]
            except (orjson.JSONDecodeError, KeyError, TypeError):
                raise InputError(f"{cmp_path}: not a defend-eval comparison (no rows)") from None
            for row in rows:
                p = Path(str(row.get("run_dir", "")))
                if not (p / STORE_FILE).is_file() and not (p / SUMMARY_FILE).is_file():
                    p = d / p.parent.name / p.name  # written relative to another working directory
                if not p.is_dir():
                    raise InputError(f"{cmp_path}: run {row.get('run_dir')!r} of defense "
                                     f"{row.get('defense')!r} not found")
                out.append((p, row))
        else:
            out.append((d, None))
    return out


def require_store(run_dir: Path) -> None:
    if not has_store(run_dir):
        raise StoreError(f"{run_dir}: no run store ({STORE_FILE}) here")
