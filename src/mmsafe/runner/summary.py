"""The run summary: one typed model (:class:`RunSummary`), computed in one place
(:func:`compute_summary`) from the store, and ``results.jsonl`` / ``summary.json`` written
from it (streamed, atomic writes).

The runner, ``mmsafe judge`` (re-judging), the report, the viewer and the exports all read
this model; the report computes it here too when a run has no ``summary.json`` (an
interrupted run). ``summary.json`` keeps the keys it always had: a block that does not
apply (``defense``, ``multiturn``, ``judges``, ``agreement``) is left out, not written as
``null``, and an older or hand-trimmed file still loads (:meth:`RunSummary.load`):
every field has a default and unknown top-level blocks are kept.

Imports only metrics, types, the refusal detector and :mod:`mmsafe.runner.base`, so the
report can read it without pulling in the runner's model clients.
"""

from __future__ import annotations

import os
import time
from collections import Counter
from collections.abc import Collection, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import orjson
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from mmsafe import __version__, metrics
from mmsafe.refusal import is_refusal
from mmsafe.runner.base import MULTI_TURN_MODES, RunMode
from mmsafe.types import BenchmarkManifest, InputError

if TYPE_CHECKING:
    from mmsafe.defense.cascade import CascadeTally

SUMMARY_FILE = "summary.json"
_NUMERIC_ROUND = 6

Num = int | float  # a count that may be fractional: kept as written (2 stays 2, 2.5 stays 2.5)

# summary.json's key order (as mmsafe always wrote it); keys not listed follow
_KEY_ORDER = ("mmsafe_version", "created", "target", "benchmark", "mode", "judge", "n_samples", "n_errors",
              "n_scored", "n_unscored", "n_unsafe", "asr", "safety_rate", "asr_ci", "ci_method", "parse_status",
              "controls", "by_scenario", "by_turns", "by_method", "by_category", "safety_index", "sri", "cost_usd",
              "tokens", "ledger", "selected", "complete", "stopped", "defense", "cascade", "multiturn", "judges",
              "agreement")


class SummaryStore(Protocol):
    """The part of a run store the summary reads (:class:`mmsafe.store.sqlite.SQLiteRunStore` is one)."""

    def get_meta(self, key: str) -> Any | None: ...

    def iter_rows(self, judge_id: str | None = None) -> Iterator[dict[str, Any]]: ...

    def iter_verdict_labels(self) -> Iterator[tuple[str, str, str]]: ...

    def judges(self) -> list[dict[str, Any]]: ...

    def ledger(self) -> dict[str, dict[str, Any]]: ...


# --------------------------------------------------------------------------- the model


def _no_ci() -> list[float | None]:
    return [None, None]


class _Block(BaseModel):
    """A summary block: every field optional (older files lack some), unknown keys kept."""

    model_config = ConfigDict(extra="allow")


class Rate(_Block):
    """ASR of one slice (a scenario, a turn count, a method, a category) with its CI."""

    n_scored: int = 0
    n_unscored: int = 0
    n_unsafe: int = 0
    asr: float | None = None
    ci_low: float | None = None
    ci_high: float | None = None


class SafetyIndexBlock(_Block):
    """SafeMT's Safety Index over the turn counts present (higher = safer).

    ``grouping`` says how outcomes were grouped across lengths (``aligned``: dialogues the
    importer found misaligned with their id's 1-turn request stay out of the σ term; ``id``:
    by id, as SafeMT's score.py); ``other`` holds the other grouping's values when they differ."""

    si: float | None = None
    ci_low: float | None = None
    ci_high: float | None = None
    mean_sigma: float | None = None
    grouping: str = "aligned"
    n_unaligned: int = 0
    other: dict[str, Any] | None = None


class SRIBlock(_Block):
    """SafeBench's 0-100 safety-risk index from the judge's 1-5 ratings (higher = safer)."""

    sri: float | None = None
    ci_low: float | None = None
    ci_high: float | None = None
    n: int | None = None


class OverRefusal(_Block):
    """Refusals of the benign look-alike prompts (controls) of the benchmark."""

    n: int = 0
    n_refused: int = 0
    over_refusal_rate: float | None = None
    ci: list[float | None] = Field(default_factory=list)
    method: str | None = None


class JudgeStats(_Block):
    """One judge's numbers over the stored replies (controls left out of the ASR)."""

    n_samples: int = 0
    n_errors: int = 0
    n_scored: int = 0
    n_unscored: int = 0
    n_unsafe: int = 0
    asr: float | None = None
    safety_rate: float | None = None
    asr_ci: list[float | None] = Field(default_factory=_no_ci)
    ci_method: str | None = None
    parse_status: dict[str, int] = Field(default_factory=dict)
    controls: OverRefusal | None = None
    by_scenario: dict[str, Rate] = Field(default_factory=dict)
    by_turns: dict[str, Rate] = Field(default_factory=dict)
    by_method: dict[str, Rate] = Field(default_factory=dict)
    by_category: dict[str, Rate] = Field(default_factory=dict)
    safety_index: SafetyIndexBlock | None = None
    sri: SRIBlock | None = None

    @property
    def n_failed(self) -> int:
        """Target errors plus judge errors (what ``--fail-on-error`` counts)."""
        return self.n_errors + self.parse_status.get("error", 0)

    def nothing_measured(self) -> str | None:
        """When the headline figure could not be computed (no reply scored, no benign control measured):
        one line naming the cause with counts; None when something was measured."""
        if self.n_scored or (self.controls is not None and self.controls.n):
            return None
        if not self.n_samples:
            return "nothing measured: no sample of the selection has a stored reply"
        causes = [f"target errors {self.n_errors}"] if self.n_errors else []
        parse = {k: v for k, v in self.parse_status.items() if k != "ok" and v}
        if parse:
            causes.append("verdicts " + ", ".join(f"{k.replace('_', ' ')} {v}" for k, v in sorted(parse.items())))
        elif self.n_unscored:
            causes.append(f"unscored {self.n_unscored}")
        return (f"nothing measured: scored 0 of {self.n_samples} samples"
                + (f" ({'; '.join(causes)})" if causes else ""))


class JudgeShort(_Block):
    """A judge's headline numbers in the ``judges`` block of a run judged more than once."""

    name: str = "?"
    n_scored: int = 0
    n_unscored: int = 0
    asr: float | None = None
    asr_ci: list[float | None] = Field(default_factory=_no_ci)
    safety_index: SafetyIndexBlock | None = None
    sri: SRIBlock | None = None
    by_turns: dict[str, Rate] = Field(default_factory=dict)
    by_scenario: dict[str, Rate] = Field(default_factory=dict)


class AgreementPair(_Block):
    """Agreement of two judges over the samples both scored."""

    a: str
    b: str
    n: int = 0
    cohen_kappa: float | None = None
    percent_agreement: float | None = None


class Agreement(_Block):
    """Pairwise Cohen's kappa and overall Krippendorff's alpha between the run's judges."""

    pairs: list[AgreementPair] = Field(default_factory=list)
    krippendorff_alpha: float | None = None


class TargetInfo(_Block):
    """The model under test (public fields only: never a key)."""

    name: str | None = None
    provider: str | None = None
    model: str | None = None
    base_url: str | None = None
    mock: bool = False
    display: str | None = None


class BenchmarkInfo(_Block):
    """The benchmark a run was made on."""

    name: str | None = None
    version: str | None = None
    n_samples: int | None = None
    licence: str | None = None
    source: str | None = None


class JudgeInfo(_Block):
    """The primary judge: its id, a short name and its full identity."""

    id: str | None = None
    name: str = "?"
    kind: str | None = None
    label: str | None = None
    identity: dict[str, Any] = Field(default_factory=dict)


class CascadeStage(_Block):
    """One stage of a cascade judge: how many samples it decided, and their share."""

    stage: int = 0
    judge: str | None = None
    decided: int = 0
    share: float | None = None
    cost_usd: float = 0.0


class CascadeBlock(_Block):
    """What a ``cascade:…`` judge's stages decided, and the last stage's work the earlier ones spared
    (estimated: the last stage's mean cost per sample it decided, times the samples decided before it)."""

    stages: list[CascadeStage] = Field(default_factory=list)
    n: int = 0
    spared_last_stage: int = 0
    spared_share: float | None = None
    cost_saved_usd_est: float | None = None


class ModeratorCascadeStage(_Block):
    """One stage of a ``cascade:…`` moderator: the moderations it decided, their share, and the calls
    and cost of those moderations (every stage they ran)."""

    stage: int = 0
    moderator: str | None = None
    decided: int = 0
    share: float | None = None
    calls: int = 0
    cost_usd: float = 0.0


class ModeratorCascadeBlock(_Block):
    """What a ``cascade:…`` moderator's stages decided, and the last stage's work the earlier ones spared
    (estimated as for a judge cascade: the last stage's own mean calls and cost per moderation it decided,
    times the moderations decided before it)."""

    stages: list[ModeratorCascadeStage] = Field(default_factory=list)
    n: int = 0
    spared_last_stage: int = 0
    spared_share: float | None = None
    calls_saved_est: float | None = None
    cost_saved_usd_est: float | None = None


class DefenseBlock(_Block):
    """What the defense did over the run (``--defense``); older or synthetic runs may carry
    only a ``name`` and their own keys. ``n``: the defense's decisions (fixed mode: one per
    reply; live and adaptive: one per defended target call). ``cascade``: only when the
    moderator is a cascade."""

    identity: dict[str, Any] | None = None
    n: int | None = None
    actions: dict[str, int] | None = None
    n_moderation_errors: int | None = None
    added_latency_ms_mean: float | None = None
    added_latency_ms_p50: float | None = None
    moderator_cost_usd: float | None = None
    moderator_calls: int | None = None
    cascade: ModeratorCascadeBlock | None = None


class TurnCountRate(_Block):
    """ASR of the conversations of one length."""

    n: int = 0
    n_scored: int = 0
    n_unsafe: int = 0
    asr: float | None = None


class TurnsToJailbreak(_Block):
    """How many turns an attack took to get an unsafe reply."""

    n: int = 0
    n_jailbroken: int = 0
    n_not_jailbroken: int = 0
    n_unscored: int = 0
    success_rate: float | None = None
    mean: Num | None = None
    median: Num | None = None
    min: Num | None = None
    max: Num | None = None


class Backtracks(_Block):
    """Refused exchanges the adaptive attacker removed and retried."""

    total: Num = 0.0
    per_success: float | None = None
    mean_per_sample: float | None = None


class AttackerCost(_Block):
    """What the adaptive attacker cost, in total and per successful attack."""

    usd_total: float = 0.0
    usd_per_success: float | None = None
    calls_per_success: float | None = None
    tokens_per_success: float | None = None


class MultiturnBlock(_Block):
    """``--mode live|adaptive``: ASR by turn count, turns-to-jailbreak and, for adaptive
    runs, backtracks and attacker cost per success."""

    mode: RunMode | None = None
    n: int = 0
    n_errors: int = 0
    status: dict[str, int] = Field(default_factory=dict)
    asr_by_turn_count: dict[str, TurnCountRate] = Field(default_factory=dict)
    asr_by_turn_count_key: str | None = None
    turns_to_jailbreak: TurnsToJailbreak | None = None
    jailbroken_by_turn: dict[str, float | None] = Field(default_factory=dict)
    turns_to_jailbreak_distribution: dict[str, float | None] = Field(default_factory=dict)
    backtracks: Backtracks | None = None  # adaptive only
    attacker_cost: AttackerCost | None = None  # adaptive only
    attacker_refused: int | None = None  # adaptive only
    attacker_invalid: int | None = None  # adaptive only


class TokenCount(_Block):
    """Tokens of one role (target, judge, attacker, moderator...)."""

    input: int = 0
    output: int = 0


class LedgerRole(_Block):
    """Calls, tokens and USD of one role, from the request log."""

    calls: int = 0
    cached: int = 0
    errors: int = 0
    input_tokens: int = 0
    output_tokens: int = 0
    cost_usd: float = 0.0


class RunSummary(JudgeStats):
    """``summary.json``: provenance (target, benchmark, mode, judge), the primary judge's
    numbers (the fields of :class:`JudgeStats`), cost, completeness, and the optional
    ``defense``, ``multiturn``, ``judges`` and ``agreement`` blocks.

    Read it with attributes (``s.asr``, ``s.judge.name``); :meth:`to_dict` gives the
    JSON-shaped dict with only the keys the summary carries."""

    mmsafe_version: str | None = None
    created: float | None = None
    target: TargetInfo = Field(default_factory=TargetInfo)
    benchmark: BenchmarkInfo = Field(default_factory=BenchmarkInfo)
    mode: RunMode = "fixed"
    judge: JudgeInfo = Field(default_factory=JudgeInfo)
    cost_usd: float = 0.0
    tokens: dict[str, TokenCount] = Field(default_factory=dict)
    ledger: dict[str, LedgerRole] = Field(default_factory=dict)
    selected: int | None = None
    stored_outside: int | None = None
    """Samples the store holds outside this selection (an earlier run with a larger --limit); not summarised."""
    complete: bool = False
    stopped: str | None = None
    defense: DefenseBlock | str | None = None
    cascade: CascadeBlock | None = None
    multiturn: MultiturnBlock | None = None
    judges: dict[str, JudgeShort] | None = None
    agreement: Agreement | None = None

    def nothing_measured(self) -> str | None:
        """:meth:`JudgeStats.nothing_measured`, with what stopped a multi-turn run's attacks (e.g. attacker
        refused 20)."""
        line = super().nothing_measured()
        if line is None or self.multiturn is None or not self.multiturn.status:
            return line
        status = ", ".join(f"{k.replace('_', ' ')} {v}" for k, v in sorted(self.multiturn.status.items()))
        return f"{line}; {self.multiturn.mode or 'multi-turn'} status: {status}"

    def to_dict(self) -> dict[str, Any]:
        """The summary as JSON-ready data with exactly the keys it was given (``summary.json``)."""
        d = self.model_dump(mode="json", exclude_unset=True)
        return {**{k: d[k] for k in _KEY_ORDER if k in d}, **{k: v for k, v in d.items() if k not in _KEY_ORDER}}

    @classmethod
    def load(cls, path: Path) -> RunSummary:
        """Read ``summary.json``; a file that is not a summary is one :class:`InputError` line."""
        try:
            data = orjson.loads(path.read_bytes())
        except orjson.JSONDecodeError as e:
            raise InputError(f"{path}: not valid JSON ({e})") from None
        return cls.from_data(data, where=str(path))

    @classmethod
    def from_data(cls, data: Any, *, where: str = SUMMARY_FILE) -> RunSummary:
        """Validate a summary dict (any version mmsafe wrote); errors name the field."""
        if not isinstance(data, dict):
            raise InputError(f"{where}: expected a JSON object")
        try:
            return cls.model_validate(data)
        except ValidationError as e:
            err = e.errors()[0]
            field = ".".join(str(x) for x in err["loc"]) or "(top level)"
            raise InputError(f"{where}: field {field}: {err['msg']}") from None


# --------------------------------------------------------------------------- computing it


def _r(x: Any) -> Any:
    return round(x, _NUMERIC_ROUND) if isinstance(x, float) else x


def judge_name(ident: dict[str, Any] | None) -> str:
    """``kind[:model,model…]`` — the short name of a judge identity (``?`` when unknown)."""
    if not ident:
        return "?"
    models = ident.get("models") or []
    return str(ident.get("kind", "?")) + (":" + ",".join(models) if models else "")


_COLS = ("label", "group", "scenario", "category", "method", "turns")
_BREAKDOWNS = ("scenario", "turns", "method", "category")


def _sort_key(k: Any) -> tuple[int, float, str]:
    try:
        return (0, float(k), "")
    except (TypeError, ValueError):
        return (1, 0.0, str(k))


class _Columns:
    """The stored rows of one judge as compact columns (no per-sample dicts), counted as they stream."""

    def __init__(self) -> None:
        self.cols: dict[str, list[Any]] = {c: [] for c in _COLS}
        self.n_samples = self.n_errors = 0
        self.ratings: list[float] = []
        self.rating_groups: list[str] = []
        self.ids: list[str] = []  # sample ids, parallel to cols (the Safety Index's aligned grouping)
        self.parse: Counter[str] = Counter()
        self.n_controls = self.n_control_refused = 0

    def add(self, row: dict[str, Any]) -> None:
        self.n_samples += 1
        if row["status"] != "ok":
            self.n_errors += 1
            return
        if row["control"]:
            # benign look-alike prompts: not part of the ASR; refusing them is over-refusal
            self.n_controls += 1
            self.n_control_refused += is_refusal(row["response"] or "")
            return
        label = row["label"] or "unscored"
        self.parse[row["parse_status"] or "missing"] += 1
        for c, v in zip(_COLS, (label, row["group"], row["scenario"], row["category"], row["method"] or "none",
                                row["turns"])):
            self.cols[c].append(v)
        self.ids.append(row["sample_id"])
        if row["rating"] is not None and label != "unscored":
            self.ratings.append(row["rating"])
            self.rating_groups.append(row["group"])

    @property
    def labels(self) -> list[str]:
        return self.cols["label"]


def _rate(d: dict[str, Any]) -> Rate:
    return Rate(n_scored=d["n_scored"], n_unscored=d["n_unscored"], n_unsafe=d["n_unsafe"], asr=_r(d["asr"]),
                ci_low=_r(d["ci_low"]), ci_high=_r(d["ci_high"]))


def _breakdown(keys: list[Any], labels: list[str]) -> dict[str, Rate]:
    by: dict[Any, list[str]] = {}
    for k, lab in zip(keys, labels):
        by.setdefault("(missing)" if k is None else k, []).append(lab)
    return {str(k): _rate(metrics.rate(by[k])) for k in sorted(by, key=_sort_key)}


def _safety_index(c: _Columns, seed: int, misaligned: set[str], grouping: str) -> SafetyIndexBlock | None:
    labels = c.labels
    if len({t for t, lab in zip(c.cols["turns"], labels) if lab != "unscored"}) <= 1:
        return None

    def one(g: str) -> dict[str, Any]:
        recs = ({"id": i, "label": lab, "group": gr, "method": m, "turns": t}
                for i, lab, gr, m, t in zip(c.ids, labels, c.cols["group"], c.cols["method"], c.cols["turns"]))
        return metrics.safety_index(recs, n_boot=500, seed=seed, grouping=g, misaligned=misaligned)

    si = one(grouping)
    other = one("id" if grouping == "aligned" else "aligned") if misaligned else si
    return SafetyIndexBlock(si=_r(si.get("si")), ci_low=_r(si.get("ci_low")), ci_high=_r(si.get("ci_high")),
                            mean_sigma=_r(si.get("mean_sigma")), grouping=grouping,
                            n_unaligned=max(si["n_unaligned"], other["n_unaligned"]),
                            other=({k: _r(other.get(k)) for k in ("grouping", "si", "ci_low", "ci_high", "mean_sigma")}
                                   if other is not si and _r(other.get("si")) != _r(si.get("si")) else None))


def _sri(c: _Columns, seed: int) -> SRIBlock | None:
    if not c.ratings:
        return None
    s = metrics.sri(c.ratings, groups=c.rating_groups, seed=seed)
    return SRIBlock(sri=_r(s.get("sri")), ci_low=_r(s.get("ci_low")), ci_high=_r(s.get("ci_high")), n=s.get("n"))


def _controls(n: int, refused: int) -> OverRefusal | None:
    if not n:
        return None
    lo, hi = metrics.wilson_interval(refused, n)
    return OverRefusal(n=n, n_refused=refused, over_refusal_rate=_r(refused / n), ci=[_r(lo), _r(hi)],
                       method="refusal-phrase detection on benign look-alike prompts")


def judge_block(store: SummaryStore, judge_id: str | None, *, seed: int = 0,
                si_grouping: str = "aligned") -> JudgeStats:
    """ASR, CIs, breakdowns, SI and SRI of one judge's verdicts over the stored replies.

    Rows stream from the store into compact columns, so memory stays flat with the run's size.
    ``si_grouping`` (``aligned`` | ``id``) picks the Safety Index reported first (see
    :class:`SafetyIndexBlock`)."""
    c = _Columns()
    for row in store.iter_rows(judge_id):
        c.add(row)
    labels = c.labels
    overall = (metrics.rate(labels, groups=c.cols["group"], ci="bootstrap", n_boot=1000, seed=seed) if labels
               else metrics.rate([]))
    return JudgeStats(
        n_samples=c.n_samples, n_errors=c.n_errors, n_scored=overall["n_scored"], n_unscored=overall["n_unscored"],
        n_unsafe=overall["n_unsafe"], asr=_r(overall["asr"]), safety_rate=_r(overall["safety_rate"]),
        asr_ci=[_r(overall["ci_low"]), _r(overall["ci_high"])], ci_method=overall["ci_method"],
        parse_status=dict(c.parse), controls=_controls(c.n_controls, c.n_control_refused),
        **{"by_" + k: _breakdown(c.cols[k], labels) for k in _BREAKDOWNS},
        safety_index=_safety_index(c, seed, _misaligned(store), si_grouping), sri=_sri(c, seed))


def prefer_si_grouping(summary: dict[str, Any], grouping: str) -> dict[str, Any]:
    """``summary.json``'s dict with the Safety Index of ``grouping`` (``aligned`` | ``id``) first:
    where the other grouping's values are stored (they differed), the two swap; where they are
    not, both groupings gave the same value and nothing changes. Also applies to ``judges``."""
    def swap(block: dict[str, Any] | None) -> dict[str, Any] | None:
        if not block or block.get("grouping", "aligned") == grouping or not block.get("other"):
            return block
        other = block["other"]
        keys = ("grouping", "si", "ci_low", "ci_high", "mean_sigma")
        return {**block, **{k: other.get(k) for k in keys}, "other": {k: block.get(k) for k in keys}}

    out = dict(summary)
    out["safety_index"] = swap(summary.get("safety_index"))
    if isinstance(summary.get("judges"), dict):
        out["judges"] = {j: ({**b, "safety_index": swap(b.get("safety_index"))} if isinstance(b, dict) else b)
                         for j, b in summary["judges"].items()}
    return out


def _misaligned(store: SummaryStore) -> set[str]:
    """Sample ids the importer marked misaligned across lengths (from the run's benchmark manifest)."""
    from mmsafe.metrics.multiturn import misaligned_samples
    return misaligned_samples((store.get_meta("config") or {}).get("benchmark_manifest"))


def _target_info(target: dict[str, Any]) -> TargetInfo:
    mock = bool(target.get("mock", False))
    return TargetInfo(name=target.get("name"), provider=target.get("provider"), model=target.get("model"),
                      base_url=target.get("base_url"), mock=mock,
                      display=(f"{target.get('provider')}/{target.get('model')}"
                               + (" (MOCK reference model, not a real LLM)" if mock else "")))


def _benchmark_info(manifest: BenchmarkManifest | None, cfg: dict[str, Any]) -> BenchmarkInfo:
    if manifest is not None:
        return BenchmarkInfo(name=manifest.name, version=manifest.version, n_samples=manifest.counts.n_samples,
                             licence=manifest.licence, source=manifest.source)
    m = cfg.get("benchmark_manifest") or {}
    return BenchmarkInfo(name=m.get("name"), version=m.get("version"),
                         n_samples=(m.get("counts") or {}).get("n_samples"), licence=m.get("licence"),
                         source=m.get("source"))


def _judge_info(judge_id: str | None, ident: dict[str, Any]) -> JudgeInfo:
    return JudgeInfo(id=judge_id, name=judge_name(ident), kind=ident.get("kind"), label=ident.get("label"),
                     identity=ident)


def _cost(ledger: dict[str, dict[str, Any]]) -> dict[str, Any]:
    return {"cost_usd": round(sum(d["cost_usd"] for d in ledger.values()), 6),
            "tokens": {role: TokenCount(input=d["input_tokens"], output=d["output_tokens"])
                       for role, d in ledger.items()},
            "ledger": {role: LedgerRole.model_validate(d) for role, d in ledger.items()}}


class _Selection:
    """A store seen through a selection of sample ids (``--limit``): rows outside it are left out and counted."""

    def __init__(self, store: SummaryStore, ids: Collection[str]):
        self.store, self.ids = store, ids
        self.outside: set[str] = set()

    def get_meta(self, key: str) -> Any | None:
        return self.store.get_meta(key)

    def iter_rows(self, judge_id: str | None = None) -> Iterator[dict[str, Any]]:
        for row in self.store.iter_rows(judge_id):
            if row["sample_id"] in self.ids:
                yield row
            else:
                self.outside.add(row["sample_id"])

    def iter_verdict_labels(self) -> Iterator[tuple[str, str, str]]:
        return (t for t in self.store.iter_verdict_labels() if t[0] in self.ids)

    def judges(self) -> list[dict[str, Any]]:
        return self.store.judges()

    def ledger(self) -> dict[str, dict[str, Any]]:
        return self.store.ledger()


def compute_summary(store: SummaryStore, judge_id: str | None, *, bench_manifest: BenchmarkManifest | None = None,
                    limit_total: int | None = None, stopped: str | None = None,
                    complete: bool | None = None, si_grouping: str | None = None,
                    sample_ids: Collection[str] | None = None) -> RunSummary:
    """The run's summary from its store: the one place it is computed (the runner, re-judging
    and the report's fallback for a run without ``summary.json`` all call this).

    ``sample_ids``: the selection asked for (``--limit``); the summary describes those samples only,
    and ``stored_outside`` says how many more the store holds. Cost and tokens stay the whole run's
    (money spent). ``complete`` defaults to: not stopped, every selected sample stored, no target
    or judge error."""
    selection = _Selection(store, sample_ids) if sample_ids is not None else None
    store = selection or store
    cfg = store.get_meta("config") or {}
    fingerprint = cfg.get("fingerprint") or {}
    judges = {j["judge_id"]: j["identity"] for j in store.judges()}
    si_grouping = si_grouping or cfg.get("si_grouping") or "aligned"
    primary = judge_block(store, judge_id, si_grouping=si_grouping)
    if complete is None:
        complete = (stopped is None and primary.n_samples >= (limit_total or 0) and not primary.n_failed)
    s = RunSummary(
        mmsafe_version=__version__, created=time.time(), target=_target_info(cfg.get("target") or {}),
        benchmark=_benchmark_info(bench_manifest, cfg), mode=fingerprint.get("mode", "fixed"),
        judge=_judge_info(judge_id, judges.get(judge_id or "", {})),
        **{k: getattr(primary, k) for k in JudgeStats.model_fields},
        **_cost(store.ledger()), selected=limit_total, complete=complete, stopped=stopped)
    if selection is not None and selection.outside:
        s.stored_outside = len(selection.outside)
    _add_defense_and_cascade(s, store, fingerprint, judges.get(judge_id or "") or {}, judge_id)
    if s.mode in MULTI_TURN_MODES:
        s.multiturn = multiturn_block(store, judge_id)
    _add_other_judges(s, store, judges, judge_id, primary, si_grouping)
    return s


def _add_other_judges(s: RunSummary, store: SummaryStore, judges: dict[str, Any], judge_id: str | None,
                      primary: JudgeStats, si_grouping: str) -> None:
    """With several judges in the store: each one's short block (the primary's is ``primary``,
    not computed again) and their agreement."""
    others = [jid for jid in judges if jid != judge_id]
    if not others or judge_id is None:
        return
    blocks = {judge_id: primary, **{jid: judge_block(store, jid, si_grouping=si_grouping) for jid in others}}
    s.judges = {jid: _judge_short(judge_name(judges.get(jid)), b) for jid, b in blocks.items()}
    s.agreement = judge_agreement(store, list(judges))


def build_summary(store: SummaryStore, judge_id: str, *, bench_manifest: BenchmarkManifest | None = None,
                  limit_total: int | None = None, stopped: str | None = None,
                  si_grouping: str | None = None) -> dict[str, Any]:
    """:func:`compute_summary` as the ``summary.json`` dict (for callers that add their own blocks)."""
    return compute_summary(store, judge_id, bench_manifest=bench_manifest, limit_total=limit_total,
                           stopped=stopped, si_grouping=si_grouping).to_dict()


def _judge_short(name: str, b: JudgeStats) -> JudgeShort:
    return JudgeShort(name=name, n_scored=b.n_scored, n_unscored=b.n_unscored, asr=b.asr, asr_ci=b.asr_ci,
                      safety_index=b.safety_index, sri=b.sri, by_turns=b.by_turns, by_scenario=b.by_scenario)


def _stage_names(identity: dict[str, Any]) -> list[str]:
    """``kind[:model]`` of each stage of a cascade moderator's identity (its stored records name the spec)."""
    return [str(st.get("kind", "?")) + (f":{st['model']}" if st.get("model") else "") if isinstance(st, dict)
            else "?" for st in identity.get("stages") or []]


def _cascade_tally() -> CascadeTally:
    """A fresh tally (imported here: only a run with a cascade pays for the defense package's import)."""
    from mmsafe.defense.cascade import CascadeTally
    return CascadeTally()


def _add_cascade_record(tally: CascadeTally, names: list[str], c: Any) -> None:
    """Count one stored cascade moderation record (:func:`mmsafe.defense.cascade.stage_record`)."""
    if tally.add_record(c) and c.get("moderator"):  # the spec as given (the identity knows kind and model)
        names.extend(["?"] * (c["stage"] + 1 - len(names)))
        names[c["stage"]] = str(c["moderator"])


def defense_block(store: SummaryStore, identity: dict[str, Any]) -> DefenseBlock:
    """What the defense did over the run: actions, moderation failures, added latency, cost; with a
    cascade moderator, what each stage decided (from each stored moderation's ``cascade`` record)."""
    actions: Counter[str] = Counter()
    n = n_mod_errors = 0
    lat: list[float] = []
    mod_ident: dict[str, Any] = identity.get("moderator") or {}
    if not isinstance(mod_ident, dict):  # a plugin defense's identity may say anything
        mod_ident = {}
    names = _stage_names(mod_ident)
    tally = _cascade_tally() if mod_ident.get("kind") == "cascade" else None
    for row in store.iter_rows(None):
        ex = row.get("response_extra") or {}
        # fixed mode: one record per reply; live and adaptive: one per defended target call
        for d in ([ex["defense"]] if ex.get("defense") else []) + list(ex.get("defenses") or []):
            if not isinstance(d, dict) or "action" not in d:
                continue
            n += 1
            actions[d["action"]] += 1
            mod = d.get("moderation") or {}
            n_mod_errors += bool(mod.get("error"))
            lat.append(d.get("added_latency_ms") or 0.0)
            if tally is not None:
                _add_cascade_record(tally, names, mod.get("cascade"))
    led = store.ledger().get("moderator", {})
    lat.sort()
    b = DefenseBlock(identity=identity, n=n, actions=dict(actions), n_moderation_errors=n_mod_errors,
                     added_latency_ms_mean=_r(sum(lat) / len(lat)) if lat else None,
                     added_latency_ms_p50=_r(lat[len(lat) // 2]) if lat else None,
                     moderator_cost_usd=round(led.get("cost_usd", 0.0), 6),
                     moderator_calls=led.get("calls", 0))
    if tally is not None:
        b.cascade = ModeratorCascadeBlock.model_validate(tally.moderator_block(names))
    return b


def _add_defense_and_cascade(s: RunSummary, store: SummaryStore, fingerprint: dict[str, Any],
                             identity: dict[str, Any], judge_id: str | None) -> None:
    if fingerprint.get("defense"):
        s.defense = defense_block(store, fingerprint["defense"])
    if identity.get("kind") == "cascade":
        s.cascade = cascade_block(store, judge_id, identity)


def cascade_block(store: SummaryStore, judge_id: str | None, identity: dict[str, Any]) -> CascadeBlock:
    """Per stage of a cascade judge: samples decided, their share and cost; the last stage's calls spared."""
    names = [str(x) for x in ((identity.get("settings") or {}).get("specs") or [])]
    tally = _cascade_tally()
    for row in store.iter_rows(judge_id):
        c = (row.get("verdict_extra") or {}).get("cascade")
        if not isinstance(c, dict) or "stage" not in c:
            continue
        tally.add(int(c["stage"]), cost=float(c.get("cost_usd") or 0.0))
    n, last = tally.n, tally.last(len(names))
    stages = [CascadeStage(stage=i, judge=names[i] if i < len(names) else None, decided=tally.decided[i],
                           share=tally.share(i), cost_usd=round(tally.cost.get(i, 0.0), 6))
              for i in range(last + 1)]
    spared = tally.spared(last)
    saved = tally.saved(tally.own_cost, last)
    return CascadeBlock(stages=stages, n=n, spared_last_stage=spared, spared_share=_r(spared / n) if n else None,
                        cost_saved_usd_est=round(saved, 6) if saved is not None else None)


def _scored_pairs(by_sample: dict[str, dict[str, str]], a: str, b: str) -> tuple[list[str], list[str]]:
    xa, xb = [], []
    for labs in by_sample.values():
        la, lb = labs.get(a), labs.get(b)
        if la in ("safe", "unsafe") and lb in ("safe", "unsafe"):
            xa.append(str(la))
            xb.append(str(lb))
    return xa, xb


def judge_agreement(store: SummaryStore, judge_ids: list[str]) -> Agreement:
    """Pairwise Cohen's kappa and overall Krippendorff's alpha over stored verdicts."""
    by_sample: dict[str, dict[str, str]] = {}
    for sid, jid, label in store.iter_verdict_labels():
        by_sample.setdefault(sid, {})[jid] = label
    pairs = []
    for i, a in enumerate(judge_ids):
        for b in judge_ids[i + 1:]:
            xa, xb = _scored_pairs(by_sample, a, b)
            k = metrics.cohen_kappa(xa, xb) if xa else None
            agree = sum(1 for p, q in zip(xa, xb) if p == q) / len(xa) if xa else None
            pairs.append(AgreementPair(a=a, b=b, n=len(xa), cohen_kappa=_r(_val(k)), percent_agreement=_r(agree)))
    data = [[labs.get(j) if labs.get(j) in ("safe", "unsafe") else None for j in judge_ids]
            for labs in by_sample.values()]
    try:
        alpha = metrics.krippendorff_alpha(list(map(list, zip(*data)))) if data else None
    except (ValueError, ZeroDivisionError):
        alpha = None
    return Agreement(pairs=pairs, krippendorff_alpha=_r(_val(alpha)))


def _val(x: Any) -> Any:
    if isinstance(x, dict):
        for k in ("kappa", "alpha", "value"):
            if k in x:
                return x[k]
    return x


# --------------------------------------------------------------------------- the multi-turn block


class _Outcomes:
    """The multi-turn outcomes (``response_extra["outcome"]``) of one judge's rows, as columns."""

    def __init__(self) -> None:
        self.seqs: list[list[str]] = []
        self.success: list[str] = []
        self.backtracks: list[float] = []
        self.atk_cost: list[float] = []
        self.atk_calls: list[float] = []
        self.atk_tokens: list[float] = []
        self.statuses: Counter[str] = Counter()
        self.by_len: dict[int, list[str]] = {}
        self.mode: RunMode | None = None
        self.n_err = 0

    def add(self, row: dict[str, Any]) -> None:
        o = (row.get("response_extra") or {}).get("outcome")
        if not o:
            return
        self.mode = self.mode or o.get("mode")
        self.statuses[o.get("status", "?")] += 1
        if row["status"] != "ok":
            self.n_err += 1
            return
        label = row["label"] or "unscored"
        if label != "unscored":  # an attack the attacker abandoned says nothing about turns-to-jailbreak
            self.seqs.append(list(o.get("labels") or []))
        self.success.append(label)
        self.backtracks.append(float(o.get("backtracks", 0)))
        self.atk_cost.append(float(o.get("attacker_cost_usd", 0.0)))
        self.atk_calls.append(float(o.get("attacker_calls", 0)))
        self.atk_tokens.append(float(o.get("attacker_tokens", 0)))
        # live: the dialogue's length; adaptive: the number of turns the attack kept
        k = int(o.get("sample_turns") or row["turns"] or 0) if self.mode == "live" else int(o.get("n_turns") or 0)
        self.by_len.setdefault(k, []).append(label)

    def per_success(self, costs: list[float]) -> dict[str, Any] | None:
        return metrics.per_success(costs, self.success) if self.success else None


def _turn_count_rate(labels: list[str]) -> TurnCountRate:
    sc = [x for x in labels if x in ("safe", "unsafe")]
    u = sum(1 for x in sc if x == "unsafe")
    return TurnCountRate(n=len(labels), n_scored=len(sc), n_unsafe=u, asr=(u / len(sc)) if sc else None)


def _adaptive_fields(o: _Outcomes) -> dict[str, Any]:
    bt, cost = o.per_success(o.backtracks), o.per_success(o.atk_cost)
    calls, toks = o.per_success(o.atk_calls), o.per_success(o.atk_tokens)

    def cps(d: dict[str, Any] | None) -> float | None:
        return d["cost_per_success"] if d else None

    return {"backtracks": Backtracks(total=sum(o.backtracks), per_success=cps(bt),
                                     mean_per_sample=bt["mean_cost"] if bt else None),
            "attacker_cost": AttackerCost(usd_total=round(sum(o.atk_cost), 8), usd_per_success=cps(cost),
                                          calls_per_success=cps(calls), tokens_per_success=cps(toks)),
            "attacker_refused": o.statuses.get("attacker_refused", 0),
            "attacker_invalid": o.statuses.get("attacker_invalid", 0)}


def multiturn_block(store: SummaryStore, judge_id: str | None) -> MultiturnBlock | None:
    """ASR by turn count, turns-to-jailbreak, backtracks and attacker cost per success
    (``None`` when the run holds no live/adaptive record)."""
    o = _Outcomes()
    for row in store.iter_rows(judge_id):
        o.add(row)
    if not o.statuses:
        return None
    ttj = metrics.turns_to_jailbreak(o.seqs)
    return MultiturnBlock(
        mode=o.mode, n=sum(o.statuses.values()), n_errors=o.n_err, status=dict(o.statuses),
        asr_by_turn_count={str(k): _turn_count_rate(v) for k, v in sorted(o.by_len.items())},
        asr_by_turn_count_key="dialogue length (user turns)" if o.mode == "live" else "turns used by the attack",
        turns_to_jailbreak=TurnsToJailbreak.model_validate(
            {k: ttj[k] for k in ("n", "n_jailbroken", "n_not_jailbroken", "n_unscored", "success_rate", "mean",
                                 "median", "min", "max")}),
        jailbroken_by_turn={str(k): v for k, v in ttj["cumulative"].items()},
        turns_to_jailbreak_distribution={str(k): v for k, v in ttj["distribution"].items()},
        **(_adaptive_fields(o) if o.mode == "adaptive" else {}))


# --------------------------------------------------------------------------- writing


def _result_line(row: dict[str, Any], judge_id: str, jname: str, target_name: str | None) -> dict[str, Any]:
    verdict = None
    if row["label"] is not None:
        verdict = {"label": row["label"], "score": row["score"], "rating": row["rating"],
                   "rationale": row["rationale"], "parse_status": row["parse_status"],
                   "categories": row["categories"]}
    outcome = (row["response_extra"] or {}).get("outcome")
    return {
        "id": row["sample_id"], "group": row["group"], "scenario": row["scenario"],
        "category": row["category"], "method": row["method"], "turns": row["turns"],
        "question": row["question"], "control": row["control"], "response": row["response"],
        "finish_reason": row.get("finish_reason"), "error": row["error"],
        "verdict": verdict, "judge": jname, "judge_id": judge_id, "target": target_name,
        "cached": row["cached"], "latency_ms": _r(row["latency_ms"]),
        "tokens": {"input": row["input_tokens"], "output": row["output_tokens"]},
        **({"multiturn": outcome} if outcome else {}),  # live / adaptive modes
    }


def write_results(store: SummaryStore, judge_id: str, run_dir: Path, *,
                  sample_ids: Collection[str] | None = None) -> Path:
    """One JSON line per sample (of ``sample_ids`` when given, as the summary): id, scenario, turns,
    response, verdict, judge, error."""
    if sample_ids is not None:
        store = _Selection(store, sample_ids)
    cfg = store.get_meta("config") or {}
    target_name = (cfg.get("target") or {}).get("name")
    judges = {j["judge_id"]: j["identity"] for j in store.judges()}
    jname = judge_name(judges.get(judge_id))
    path = run_dir / "results.jsonl"
    tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")  # two processes on one run
    with open(tmp, "wb") as f:
        for row in store.iter_rows(judge_id):
            f.write(orjson.dumps(_result_line(row, judge_id, jname, target_name)) + b"\n")
    os.replace(tmp, path)
    return path


def write_summary(summary: RunSummary | dict[str, Any], run_dir: Path) -> Path:
    """Write ``run_dir/summary.json`` atomically."""
    data = summary.to_dict() if isinstance(summary, RunSummary) else summary
    path = run_dir / SUMMARY_FILE
    tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")  # two processes on one run
    tmp.write_bytes(orjson.dumps(data, option=orjson.OPT_INDENT_2))
    os.replace(tmp, path)
    return path


__all__ = ["SUMMARY_FILE", "Agreement", "AgreementPair", "AttackerCost", "Backtracks", "BenchmarkInfo",
           "DefenseBlock", "JudgeInfo", "JudgeShort", "JudgeStats", "LedgerRole",
           "ModeratorCascadeBlock", "ModeratorCascadeStage", "MultiturnBlock", "OverRefusal",
           "Rate", "RunSummary", "SRIBlock", "SafetyIndexBlock", "SummaryStore", "TargetInfo", "TokenCount",
           "TurnCountRate", "TurnsToJailbreak", "build_summary", "compute_summary", "defense_block",
           "judge_agreement", "judge_block", "judge_name", "multiturn_block",
           "write_results", "write_summary"]
