"""``cascade:STAGE>STAGE[>…]`` — cheap judges first, expensive ones only when unsure.

Each stage is a judge spec of its own (``offline?abstain=0.2,0.8``, ``rubric:MODEL``,
``guard:MODEL``, a plugin …). A stage *decides* when it returns ``safe`` or ``unsafe``; an
``unscored`` verdict (it abstained, could not parse, or failed) hands the sample to the
next stage. The last stage always decides (its ``unscored`` stays ``unscored`` — never
``safe``). The verdict records which stage decided and why earlier ones passed it on, so
the summary can show the share decided per stage and the LLM calls and cost saved.

A non-final ``offline`` stage with no ``abstain=`` band gets ``abstain=weights``: the band
recorded with its weights, chosen on the training sources' out-of-source scores (the shipped
weights: 0.05,0.9), or :data:`DEFAULT_BAND` for weights that record none. A cascade whose
first stage never abstains would never call the second.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

from mmsafe.judges.base import Judge
from mmsafe.judges.offline import FALLBACK_BAND
from mmsafe.models import CostLedger, ResponseCache
from mmsafe.types import ConfigError, JudgeIdentity, Response, Sample, Verdict

DEFAULT_BAND = FALLBACK_BAND
"""The offline stage's band inside a cascade when its weights record none (P(unsafe) strictly between)."""


def split_stages(arg: str, spec: str) -> list[str]:
    """``a?x=1>b:M>c`` -> ["a?x=1", "b:M", "c"]; fewer than two stages is an error."""
    stages = [s.strip() for s in arg.split(">")]
    if len(stages) < 2 or any(not s for s in stages):
        raise ConfigError(f"judge spec {spec!r}: a cascade needs two or more stages, "
                          "e.g. cascade:offline>rubric:openai/gpt-4o")
    if any(s.startswith("cascade:") or s == "cascade" for s in stages):
        raise ConfigError(f"judge spec {spec!r}: a cascade cannot contain a cascade")
    return stages


class CascadeJudge(Judge):
    """Stages in order; the first confident verdict wins; the last stage always decides."""

    raw_spec = True  # make_judge hands over everything after "cascade:" (stages carry their own ?options)

    def __init__(self, stages: list[Judge], stage_specs: list[str]):
        if len(stages) < 2:
            raise ConfigError("a cascade needs two or more stages")
        self.stages = stages
        self.stage_specs = stage_specs
        ids = [s.identity for s in stages]
        models: list[str] = []
        for i in ids:
            models.extend(m for m in i.models if m not in models)
        h = hashlib.sha256("|".join(i.id for i in ids).encode()).hexdigest()[:16]
        self.identity = JudgeIdentity(kind="cascade", models=models, prompt_hash=h,
                                      settings={"stages": [i.id for i in ids], "specs": stage_specs},
                                      label="cascade: " + " > ".join(i.name for i in ids))

    @classmethod
    def from_spec(cls, arg: str, options: dict[str, Any], *, spec: str,
                  models_file: Path | None = None) -> CascadeJudge:
        """``cascade:STAGE>STAGE[>…]`` where each STAGE is a judge spec."""
        from mmsafe.judges import make_judge
        if options:
            raise ConfigError(f"judge spec {spec!r}: options go on each stage (e.g. offline?abstain=0.1,0.9)")
        specs = split_stages(arg, spec)
        stages: list[Judge] = []
        for i, s in enumerate(specs):
            last = i == len(specs) - 1
            extra: dict[str, Any] = {}
            if not last and s.split("?", 1)[0] == "offline" and "abstain=" not in s:
                extra["abstain"] = "weights"
            stages.append(make_judge(s, models_file=models_file, options=extra or None))
        return cls(stages, specs)

    def bind(self, ledger: CostLedger | None = None, cache: ResponseCache | None = None) -> None:
        """Give every stage that calls an endpoint the run's ledger and cache."""
        for s in self.stages:
            bind = getattr(s, "bind", None)
            if callable(bind):
                bind(ledger=ledger, cache=cache)

    async def start(self) -> None:
        for s in self.stages:
            await s.start()

    async def close(self) -> None:
        for s in self.stages:
            await s.close()

    async def judge(self, sample: Sample, response: Response,
                    root: Path | None = None) -> tuple[Verdict, list[dict[str, Any]]]:
        rows: list[dict[str, Any]] = []
        passed: list[dict[str, Any]] = []
        cost = 0.0
        last = len(self.stages) - 1
        for i, stage in enumerate(self.stages):
            v, r = await stage.judge(sample, response, root)
            rows.extend(r)
            cost += v.cost_usd
            if v.label != "unscored" or i == last:
                return self._final(v, i, passed, cost), rows
            passed.append({"stage": i, "judge": stage.identity.name, "status": v.parse_status,
                           "score": v.score})
        raise AssertionError("unreachable: the last stage always returns")

    def _final(self, v: Verdict, i: int, passed: list[dict[str, Any]], cost: float) -> Verdict:
        extra = dict(v.extra)
        extra["cascade"] = {"stage": i, "judge": self.stages[i].identity.name,
                            "stage_judge_id": self.stages[i].judge_id, "passed_on": passed, "cost_usd": cost}
        return v.model_copy(update={"judge_id": self.judge_id, "cost_usd": cost, "extra": extra})


__all__ = ["DEFAULT_BAND", "CascadeJudge", "split_stages"]
