"""Selection agent (VLSafetyBencher): pilot-run every candidate on a panel of ≥ 3 reference
models, judge the replies, score each item and pick a benchmark of the requested size.

Per item *i*:

* separability ``sep_i`` — :func:`mmsafe.metrics.item_discrimination` (p(1−p) of the unsafe
  outcomes across models) scaled to [0, 1] (×4); 0 when every model agrees.
* harmfulness ``harm_i`` — the scorer's harmfulness / 10 when the item has one, else the
  share of reference models judged unsafe.
* diversity — the marginal gain ``1 − max_{j∈S} cos(e_i, e_j)`` over the items already
  selected (embedding of the item's underlying question: variants of one request — a
  paraphrase, base64, the text moved into the image — are one point, so obfuscated text
  cannot pass for diversity).

Greedy selection adds, one at a time, the item maximising ``α·sep + β·harm + γ·div``
(after first guaranteeing ``per_scenario_min`` items per scenario where possible). The
report gives GAP / MAD / MEAN / DIV (:func:`mmsafe.metrics.benchmark_quality`) for the
selected set, a seeded random set of the same size, and all candidates.

An unscored or failed pilot outcome is *missing* (NaN), never "safe".
"""

from __future__ import annotations

import random
from typing import Any

import numpy as np

from mmsafe.embeddings import get_embedder, run_embedding_work
from mmsafe.judges import make_judge
from mmsafe.metrics import benchmark_quality, item_discrimination
from mmsafe.types import Response, Usage

from .common import AgentContext, BuildError, item_to_sample

MIN_REFERENCE_MODELS = 3


def greedy_select(sep: np.ndarray, harm: np.ndarray, emb: np.ndarray, size: int, *, alpha: float = 1.0,
                  beta: float = 1.0, gamma: float = 1.0, groups: list[str] | None = None,
                  per_group_min: int = 0) -> tuple[list[int], list[float]]:
    """Indices chosen greedily (in order) and the objective value of each when chosen."""
    n = len(sep)
    size = min(size, n)
    x = np.asarray(emb, dtype=np.float32)
    if n:
        x = x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12).astype(np.float32)
    gram = x @ x.T if 0 < n <= 4000 else None  # cosines up front: one BLAS call instead of a mat-vec per pick
    xs: Any = x
    if gram is None and n and x.shape[1] > 256 and np.count_nonzero(x) < 0.3 * x.size:
        try:  # sparse TF-IDF rows: a sparse mat-vec per pick is cheaper than a dense one
            from scipy.sparse import csr_matrix
            xs = csr_matrix(x)
        except ImportError:
            pass
    max_cos = np.full(n, -np.inf)  # max cosine to the selected set (none yet -> div gain 1)
    chosen: list[int] = []
    values: list[float] = []
    avail = np.ones(n, dtype=bool)
    base = alpha * sep + beta * harm

    def pick(mask: np.ndarray) -> int | None:
        div = np.where(np.isfinite(max_cos), 1.0 - max_cos, 1.0)
        obj = np.where(mask & avail, base + gamma * div, -np.inf)
        i = int(np.argmax(obj))
        if not np.isfinite(obj[i]):
            return None
        chosen.append(i)
        values.append(float(obj[i]))
        avail[i] = False
        sims = gram[i] if gram is not None else xs @ x[i]
        np.maximum(max_cos, np.asarray(sims, dtype=float).ravel(), out=max_cos)
        return i

    if groups is not None and per_group_min > 0:
        g = np.asarray(groups)
        for name in dict.fromkeys(groups):
            m = g == name
            for _ in range(per_group_min):
                if len(chosen) >= size or pick(m) is None:
                    break
    all_mask = np.ones(n, dtype=bool)
    while len(chosen) < size:
        if pick(all_mask) is None:
            break
    return chosen, values


def _code(label: str | None) -> float:
    return 1.0 if label == "unsafe" else 0.0 if label == "safe" else float("nan")


async def run_select(ctx: AgentContext, items: list[dict[str, Any]]) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """The select stage: pilot the reference models, score items (separability, harm, diversity), keep ``size``."""
    sc = ctx.cfg.select
    wd = ctx.wd
    refs = sc.reference_models
    if not refs:
        if sc.size is not None:
            raise BuildError(f"select: needs select.reference_models (≥ {MIN_REFERENCE_MODELS}) to pick "
                             f"{sc.size} items")
        return items, {"skipped": "no reference models; every candidate kept", "items": len(items)}
    if len(refs) < MIN_REFERENCE_MODELS:
        raise BuildError(f"select.reference_models: needs at least {MIN_REFERENCE_MODELS} models, got {len(refs)}")
    if not items:
        return [], {"items": 0, "candidates": 0}
    import asyncio
    # the items' embeddings (diversity) do not depend on the pilot: computed in a thread while it runs.
    # An item is embedded by its underlying question, so an item's variants (paraphrase, base64,
    # image-borne text...) count as one request, and obfuscated text cannot pass for diversity.
    def embed_items() -> tuple[str, np.ndarray]:
        embedder = get_embedder(ctx.cfg.embedder)
        return embedder.name, embedder.embed([(it.get("question") or it.get("text") or "")[:500] for it in items])

    emb_task = asyncio.ensure_future(run_embedding_work(embed_items))
    judge = make_judge(sc.judge, models_file=ctx.cfg.path(ctx.cfg.models_file))
    await judge.start()
    clients = [await ctx.client("reference", ref=r, role="target") for r in refs]
    names = [c.name for c in clients]
    samples = [item_to_sample(it, wd) for it in items]
    outcomes = np.full((len(items), len(clients)), np.nan)
    status: dict[str, dict[str, int]] = {n: {"safe": 0, "unsafe": 0, "unscored": 0, "error": 0, "unsupported": 0}
                                         for n in names}

    async def pilot(i: int, j: int) -> None:
        s = samples[i]
        c = clients[j]
        caps = c.cfg.capabilities
        if ("image" in s.modalities and not caps.image) or ("audio" in s.modalities and not caps.audio):
            status[names[j]]["unsupported"] += 1  # missing outcome, not "safe"
            return
        res = await c.chat(s.messages, root=wd.root, system=sc.system_prompt)
        if not res.ok:
            status[names[j]]["error"] += 1
            return
        resp = Response(sample_id=s.id, text=res.text, model=res.model or c.name, usage=Usage(
            input_tokens=res.input_tokens, output_tokens=res.output_tokens), cost_usd=res.cost_usd)
        verdict, _rows = await judge.judge(s, resp, wd.root)
        status[names[j]][verdict.label if verdict.label in ("safe", "unsafe") else "unscored"] += 1
        outcomes[i, j] = _code(verdict.label)

    try:
        await ctx.gather(pilot(i, j) for i in range(len(items)) for j in range(len(clients)))
    finally:
        await judge.close()

    disc = item_discrimination(outcomes)
    sep = np.asarray([4.0 * d if d is not None else 0.0 for d in disc])
    seen = (~np.isnan(outcomes)).sum(axis=1)
    unsafe_rate = np.where(seen > 0, np.nansum(outcomes, axis=1) / np.maximum(seen, 1), 0.0)
    harm = np.asarray([(it.get("scores") or {}).get("harmfulness", None) for it in items], dtype=object)
    harm = np.asarray([float(h) / 10.0 if h is not None else float(unsafe_rate[k]) for k, h in enumerate(harm)])
    embedder_name, emb = await emb_task
    size = len(items) if sc.size is None else min(sc.size, len(items))
    chosen, values = await asyncio.to_thread(
        greedy_select, sep, harm, emb, size, alpha=sc.alpha, beta=sc.beta, gamma=sc.gamma,
        groups=[it.get("scenario") or "unspecified" for it in items], per_group_min=sc.per_scenario_min)
    rng = random.Random(ctx.cfg.seed)
    rand = sorted(rng.sample(range(len(items)), size))

    def quality(idx: list[int]) -> dict[str, Any]:
        idx = sorted(idx)
        m = outcomes[idx] if idx else np.zeros((0, len(names)))
        e = emb[idx] if len(idx) >= 2 else None
        try:
            q = benchmark_quality(m, names, e)
        except ValueError:  # e.g. a zero embedding row
            q = benchmark_quality(m, names, None)
        q["mean_sep"] = float(sep[idx].mean()) if idx else None
        q["mean_harm"] = float(harm[idx].mean()) if idx else None
        return q

    selected = []
    for rank, (i, v) in enumerate(zip(chosen, values)):
        it = dict(items[i])
        it["selection"] = {"rank": rank, "objective": round(v, 4), "sep": round(float(sep[i]), 4),
                           "harm": round(float(harm[i]), 4),
                           "outcomes": {names[j]: (None if np.isnan(outcomes[i, j]) else
                                                   ("unsafe" if outcomes[i, j] == 1 else "safe"))
                                        for j in range(len(names))}}
        selected.append(it)
    report = {
        "candidates": len(items), "size": size, "reference_models": names, "judge": judge.identity.name,
        "judge_id": judge.judge_id, "weights": {"alpha": sc.alpha, "beta": sc.beta, "gamma": sc.gamma},
        "embedder": embedder_name, "pilot": status,
        "quality": {"selected": quality(chosen), "random": quality(rand), "all": quality(list(range(len(items))))},
        "items": len(selected),
    }
    return selected, report
