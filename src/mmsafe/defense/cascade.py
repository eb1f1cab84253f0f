"""``cascade:STAGE>STAGE[>…]`` for the moderator (and so for ``--defense moderator:…`` and
``serve-guard``): the cheap offline moderator decides the clear cases, a guard or LLM
moderator the rest.

A stage is unsure when its moderation failed (``flagged`` is None) or when its score
falls inside its band ``~LO,HI`` (``offline~0.3,0.7``; an ``offline`` stage that is not the
last gets :data:`DEFAULT_BAND`). The last stage always decides. The moderation records
which stage decided, and carries the requests, cost and latency of every stage it ran.

:func:`stage_record` is what a run stores of each moderation (``Response.extra["defense"]
["moderation"]["cascade"]``) and what ``serve-guard`` counts: the deciding stage, the calls and
cost of the whole moderation and of the deciding stage alone (the run summary's
``defense.cascade`` block estimates what the earlier stages spared the last one from that).
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from mmsafe.defense.moderator import Moderation, Moderator
from mmsafe.models import CostLedger, ResponseCache
from mmsafe.types import ConfigError, Message

DEFAULT_BAND = (0.2, 0.8)
"""The offline moderator's default 'unsure' band of scores inside a cascade."""


def _stage(text: str, spec: str, last: bool) -> tuple[str, tuple[float, float] | None]:
    body, sep, band = text.partition("~")
    if not sep:
        return body, (DEFAULT_BAND if not last and body.split(":", 1)[0] == "offline" else None)
    from mmsafe.judges.offline import parse_band
    lo, hi = parse_band(band, f"moderator spec {spec!r}: band {band!r}", "offline~0.2,0.8")
    if last:
        raise ConfigError(f"moderator spec {spec!r}: the last stage always decides; it takes no band")
    return body, (lo, hi)


class CascadeModerator(Moderator):
    """Stages in order; the first sure moderation wins; the last stage always decides."""

    kind = "cascade"

    def __init__(self, stages: list[Moderator], bands: list[tuple[float, float] | None], specs: list[str]):
        if len(stages) < 2:
            raise ConfigError("a moderator cascade needs two or more stages")
        self.stages, self.bands, self.specs = stages, bands, specs
        self.identity = {"kind": "cascade", "stages": [s.identity for s in stages],
                         "bands": [list(b) if b else None for b in bands]}

    @classmethod
    def from_spec(cls, arg: str, models_file: Path | None = None, *, spec: str) -> CascadeModerator:
        """``cascade:STAGE[~LO,HI]>STAGE[>…]`` with each STAGE a moderator spec."""
        from mmsafe.defense.moderator import make_moderator
        parts = [p.strip() for p in arg.split(">")]
        if len(parts) < 2 or any(not p for p in parts):
            raise ConfigError(f"moderator spec {spec!r}: a cascade needs two or more stages, "
                              "e.g. cascade:offline>guard:openai/llama-guard-3")
        stages: list[Moderator] = []
        bands: list[tuple[float, float] | None] = []
        specs: list[str] = []
        for i, p in enumerate(parts):
            body, band = _stage(p, spec, i == len(parts) - 1)
            if body.split(":", 1)[0] == "cascade":
                raise ConfigError(f"moderator spec {spec!r}: a cascade cannot contain a cascade")
            stages.append(make_moderator(body, models_file))
            bands.append(band)
            specs.append(body)
        return cls(stages, bands, specs)

    def bind(self, *, ledger: CostLedger | None = None, cache: ResponseCache | None = None) -> None:
        for s in self.stages:
            s.bind(ledger=ledger, cache=cache)

    async def start(self) -> None:
        for s in self.stages:
            await s.start()

    async def close(self) -> None:
        for s in self.stages:
            await s.close()

    def _unsure(self, m: Moderation, band: tuple[float, float] | None) -> bool:
        if m.flagged is None:
            return True
        return band is not None and m.score is not None and band[0] < m.score < band[1]

    async def assess(self, messages: list[Message], root: Path | None = None) -> Moderation:
        t0 = time.perf_counter()
        requests: list[dict[str, Any]] = []
        cost = 0.0
        passed: list[dict[str, Any]] = []
        last = len(self.stages) - 1
        for i, (stage, band) in enumerate(zip(self.stages, self.bands)):
            m = await stage.assess(messages, root)
            requests.extend(m.requests)
            cost += m.cost_usd
            if i == last or not self._unsure(m, band):
                raw = {"cascade": {"stage": i, "moderator": self.specs[i], "passed_on": passed,
                                   "stage_calls": _calls(m.requests), "stage_cost_usd": m.cost_usd},
                       "stage_raw": m.raw}
                return Moderation(flagged=m.flagged, score=m.score, scenario=m.scenario,
                                  scenario_scores=m.scenario_scores, categories=m.categories,
                                  rationale=m.rationale, error=m.error, raw=raw, requests=requests, cost_usd=cost,
                                  latency_ms=(time.perf_counter() - t0) * 1000)
            passed.append({"stage": i, "moderator": self.specs[i], "score": m.score, "error": m.error})
        raise AssertionError("unreachable: the last stage always returns")


def _calls(requests: list[dict[str, Any]]) -> int:
    """Network calls among request-log rows (a response-cache hit is not a call), as the ledger counts them."""
    return sum(1 for r in requests if r.get("status") != "cached")


def stage_record(m: Moderation) -> dict[str, Any] | None:
    """What to keep of a cascade moderation: the deciding ``stage`` (0-based) and its ``moderator`` spec,
    the ``calls`` and ``cost_usd`` of every stage it ran, the deciding stage's own ``stage_calls`` and
    ``stage_cost_usd``, and the earlier stages' scores (``passed_on``); None for a moderation that did
    not come from a cascade."""
    c = m.raw.get("cascade") if isinstance(m.raw, dict) else None
    if not isinstance(c, dict) or "stage" not in c:
        return None
    return {"stage": int(c["stage"]), "moderator": c.get("moderator"), "calls": _calls(m.requests),
            "cost_usd": round(m.cost_usd, 8), "stage_calls": int(c.get("stage_calls") or 0),
            "stage_cost_usd": round(float(c.get("stage_cost_usd") or 0.0), 8),
            "passed_on": [{"stage": p.get("stage"), "score": p.get("score"), "error": p.get("error")}
                          for p in c.get("passed_on") or []]}


class CascadeTally:
    """Running counts of a cascade, per deciding stage: items decided, the calls and cost of those items
    (every stage they ran) and the deciding stage's own calls and cost. Plain Python, no I/O: the run
    summary's judge-cascade and ``defense.cascade`` blocks and ``serve-guard``'s ``/stats`` all count with
    one of these, so what the earlier stages spared the last one is estimated in one place (:meth:`saved`)."""

    def __init__(self) -> None:
        self.decided: Counter[int] = Counter()
        self.calls: Counter[int] = Counter()
        self.cost: dict[int, float] = {}
        self.own_calls: Counter[int] = Counter()
        self.own_cost: dict[int, float] = {}

    def add(self, stage: int, *, cost: float = 0.0, calls: int = 0, own_cost: float | None = None,
            own_calls: int | None = None) -> None:
        """One item decided at ``stage``; ``own_*`` (the deciding stage's part) default to the totals."""
        self.decided[stage] += 1
        self.calls[stage] += calls
        self.cost[stage] = self.cost.get(stage, 0.0) + cost
        self.own_calls[stage] += calls if own_calls is None else own_calls
        self.own_cost[stage] = self.own_cost.get(stage, 0.0) + (cost if own_cost is None else own_cost)

    def add_record(self, c: Any) -> bool:
        """Count one :func:`stage_record` (as stored with a run's reply); False when ``c`` is not one."""
        if not isinstance(c, dict) or not isinstance(c.get("stage"), int):
            return False
        self.add(c["stage"], cost=float(c.get("cost_usd") or 0.0), calls=int(c.get("calls") or 0),
                 own_cost=float(c.get("stage_cost_usd") or 0.0), own_calls=int(c.get("stage_calls") or 0))
        return True

    @property
    def n(self) -> int:
        """Items decided, all stages together."""
        return sum(self.decided.values())

    def share(self, stage: int) -> float | None:
        """The share of the items that ``stage`` decided (None before any item)."""
        return round(self.decided[stage] / self.n, 6) if self.n else None

    def last(self, n_stages: int) -> int:
        """The last stage's index: of ``n_stages`` stages, or the highest that decided anything."""
        return max(n_stages - 1, max(self.decided, default=0))

    def spared(self, last: int) -> int:
        """Items an earlier stage decided: work the last stage did not have to do."""
        return self.n - self.decided[last]

    def saved(self, spent: Mapping[int, float], last: int) -> float | None:
        """The last stage's mean ``spent`` (e.g. :attr:`own_cost`) per item it decided, times the items
        spared it; None when the last stage decided nothing (no mean to scale)."""
        if not self.decided[last]:
            return None
        return spent.get(last, 0) / self.decided[last] * self.spared(last)

    def moderator_block(self, names: list[str]) -> dict[str, Any]:
        """A cascade moderator's counts (``names``: each stage's spec): per stage the moderations decided,
        their share, calls and cost; the last stage's moderations, calls and cost spared (estimated)."""
        last = self.last(len(names))
        spared = self.spared(last)
        calls, cost = self.saved(self.own_calls, last), self.saved(self.own_cost, last)
        return {"stages": [{"stage": i, "moderator": names[i] if i < len(names) else None,
                            "decided": self.decided[i], "share": self.share(i), "calls": self.calls[i],
                            "cost_usd": round(self.cost.get(i, 0.0), 6)} for i in range(last + 1)],
                "n": self.n, "spared_last_stage": spared,
                "spared_share": round(spared / self.n, 6) if self.n else None,
                "calls_saved_est": round(calls, 3) if calls is not None else None,
                "cost_saved_usd_est": round(cost, 6) if cost is not None else None}


__all__ = ["DEFAULT_BAND", "CascadeModerator", "CascadeTally", "stage_record"]
