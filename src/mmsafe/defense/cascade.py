"""``cascade:STAGE>STAGE[>…]`` for the moderator (and so for ``--defense moderator:…`` and
``serve-guard``): the cheap offline moderator decides the clear cases, a guard or LLM
moderator the rest.

A stage is unsure when its moderation failed (``flagged`` is None) or when its score
falls inside its band ``~LO,HI`` (``offline~0.3,0.7``; an ``offline`` stage that is not the
last gets :data:`DEFAULT_BAND`). The last stage always decides. The moderation records
which stage decided, and carries the requests, cost and latency of every stage it ran.
"""

from __future__ import annotations

import time
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
                raw = {"cascade": {"stage": i, "moderator": self.specs[i], "passed_on": passed}, "stage_raw": m.raw}
                return Moderation(flagged=m.flagged, score=m.score, scenario=m.scenario,
                                  scenario_scores=m.scenario_scores, categories=m.categories,
                                  rationale=m.rationale, error=m.error, raw=raw, requests=requests, cost_usd=cost,
                                  latency_ms=(time.perf_counter() - t0) * 1000)
            passed.append({"stage": i, "moderator": self.specs[i], "score": m.score, "error": m.error})
        raise AssertionError("unreachable: the last stage always returns")


__all__ = ["DEFAULT_BAND", "CascadeModerator"]
