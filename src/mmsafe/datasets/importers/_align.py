"""Cross-length alignment of multi-turn benchmarks (SafeMT): does the dialogue that
carries id X at length N still ask the request that id X asks at length 1?

Method (documented in ``docs/importers.md``): every longer dialogue is compared with
every 1-turn request by TF-IDF cosine similarity over word unigrams and bigrams of
the dialogue's user turns (scikit-learn when installed; otherwise a token-overlap
score over an inverted index). A dialogue is **misaligned** with its id's group when

* ``text``: another group's 1-turn request matches it clearly better than its own
  (best similarity at least ``margin`` above its own and at least ``min_sim``), or
* ``scenario``: its scenario label differs from the 1-turn record's, or
* ``image``: its image reference differs from the 1-turn record's.

Nothing is dropped: the result says, per dialogue, whether it is aligned, why not,
its similarity to its own request and the best-matching other group.
"""

from __future__ import annotations

import math
import re
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

__all__ = ["AlignmentItem", "AlignmentResult", "check_alignment", "similarity_method"]

_TOKEN = re.compile(r"(?u)\b\w\w+\b")

DEFAULT_MARGIN = 0.1
DEFAULT_MIN_SIM = 0.2


@dataclass
class AlignmentItem:
    """One longer dialogue to check against the 1-turn request of its group."""

    sample_id: str
    group: str
    turns: int
    text: str  # the dialogue's user turns, joined
    scenario: str | None
    image: str | None


@dataclass
class AlignmentResult:
    """Per-dialogue verdicts plus the summary block written into the manifest."""

    method: str
    aligned: dict[str, bool] = field(default_factory=dict)
    reasons: dict[str, list[str]] = field(default_factory=dict)
    own_sim: dict[str, float | None] = field(default_factory=dict)
    best: dict[str, tuple[str, float] | None] = field(default_factory=dict)

    def misaligned_ids(self) -> list[str]:
        return [sid for sid, ok in self.aligned.items() if not ok]


def similarity_method() -> str:
    """``"tfidf"`` when scikit-learn can be imported, else ``"token_overlap"``."""
    try:
        import sklearn.feature_extraction.text  # noqa: F401
    except ImportError:
        return "token_overlap"
    return "tfidf"


def _norm_ref(ref: str | None) -> str | None:
    if ref is None:
        return None
    r = ref.strip().replace("\\", "/")
    while r.startswith("./"):
        r = r[2:]
    return r or None


def check_alignment(refs: dict[str, tuple[str, str | None, str | None]],
                    items: Sequence[AlignmentItem], *, margin: float = DEFAULT_MARGIN,
                    min_sim: float = DEFAULT_MIN_SIM, method: str | None = None) -> AlignmentResult:
    """Check each of ``items`` against ``refs`` (group -> (1-turn request, scenario, image)).

    Items whose group has no 1-turn reference are reported aligned with reason-free
    ``own_sim=None`` (nothing to compare with)."""
    method = method or similarity_method()
    res = AlignmentResult(method=method)
    groups = list(refs)
    checkable = [it for it in items if it.group in refs]
    sims = _best_and_own(groups, [refs[g][0] for g in groups], checkable, method)
    for it in items:
        if it.group not in refs:
            res.aligned[it.sample_id] = True
            res.reasons[it.sample_id] = []
            res.own_sim[it.sample_id] = None
            res.best[it.sample_id] = None
            continue
        _, scen, img = refs[it.group]
        own, best_g, best_s = sims[it.sample_id]
        reasons = []
        if best_g is not None and best_g != it.group and best_s >= min_sim and best_s - own >= margin:
            reasons.append("text")
        if scen is not None and it.scenario is not None and scen.strip() != it.scenario.strip():
            reasons.append("scenario")
        if _norm_ref(img) != _norm_ref(it.image):
            reasons.append("image")
        res.aligned[it.sample_id] = not reasons
        res.reasons[it.sample_id] = reasons
        res.own_sim[it.sample_id] = round(own, 4)
        res.best[it.sample_id] = (best_g, round(best_s, 4)) if best_g is not None else None
    return res


def _best_and_own(groups: list[str], ref_texts: list[str], items: Sequence[AlignmentItem],
                  method: str) -> dict[str, tuple[float, str | None, float]]:
    """sample_id -> (similarity to own request, best other-or-own group, its similarity)."""
    if not items:
        return {}
    if method == "tfidf":
        return _tfidf(groups, ref_texts, items)
    return _overlap(groups, ref_texts, items)


def _tfidf(groups: list[str], ref_texts: list[str],
           items: Sequence[AlignmentItem]) -> dict[str, tuple[float, str | None, float]]:
    from sklearn.feature_extraction.text import TfidfVectorizer

    vec = TfidfVectorizer(ngram_range=(1, 2), sublinear_tf=True, stop_words="english")
    try:
        vec.fit(list(ref_texts) + [it.text for it in items])
    except ValueError:  # every text is empty or stop words only
        return {it.sample_id: (0.0, None, 0.0) for it in items}
    R = vec.transform(ref_texts)  # rows are L2-normalised
    index = {g: i for i, g in enumerate(groups)}
    out: dict[str, tuple[float, str | None, float]] = {}
    chunk = 512
    for start in range(0, len(items), chunk):
        part = items[start:start + chunk]
        Q = vec.transform([it.text for it in part])
        S = (Q @ R.T).toarray()
        best = S.argmax(axis=1)
        for row, it in enumerate(part):
            own = float(S[row, index[it.group]])
            b = int(best[row])
            bs = float(S[row, b])
            out[it.sample_id] = (own, groups[b] if bs > 0 else None, bs)
        del S
    return out


def _overlap(groups: list[str], ref_texts: list[str],
             items: Sequence[AlignmentItem]) -> dict[str, tuple[float, str | None, float]]:
    """Fallback without scikit-learn: IDF-weighted token overlap (cosine of binary
    IDF vectors), candidates found through an inverted index of the requests."""
    ref_tokens = [set(_TOKEN.findall(t.lower())) for t in ref_texts]
    df: Counter[str] = Counter()
    for toks in ref_tokens:
        df.update(toks)
    n = max(len(ref_texts), 1)
    idf = {w: math.log((1 + n) / (1 + c)) + 1.0 for w, c in df.items()}
    ref_norm = [math.sqrt(sum(idf[w] ** 2 for w in toks)) or 1.0 for toks in ref_tokens]
    postings: dict[str, list[int]] = {}
    for i, toks in enumerate(ref_tokens):
        for w in toks:
            postings.setdefault(w, []).append(i)
    index = {g: i for i, g in enumerate(groups)}
    out: dict[str, tuple[float, str | None, float]] = {}
    for it in items:
        toks = set(_TOKEN.findall(it.text.lower()))
        qn = math.sqrt(sum(idf.get(w, 0.0) ** 2 for w in toks)) or 1.0
        acc: dict[int, float] = {}
        for w in toks:
            wt = idf.get(w)
            if wt is None:
                continue
            for j in postings[w]:
                acc[j] = acc.get(j, 0.0) + wt * wt
        own_i = index[it.group]
        own = acc.get(own_i, 0.0) / (qn * ref_norm[own_i])
        if acc:
            b, v = max(acc.items(), key=lambda kv: kv[1] / ref_norm[kv[0]])
            bs = v / (qn * ref_norm[b])
            out[it.sample_id] = (own, groups[b], bs)
        else:
            out[it.sample_id] = (own, None, 0.0)
    return out


def alignment_block(res: AlignmentResult, items: Sequence[AlignmentItem], *,
                    margin: float, min_sim: float, n_reference: int) -> dict[str, Any]:
    """The manifest block: method, thresholds, counts, and every misaligned dialogue."""
    by_id = {it.sample_id: it for it in items}
    mis: list[dict[str, Any]] = []
    for sid in res.misaligned_ids():
        it = by_id[sid]
        best = res.best.get(sid)
        mis.append({"sample": sid, "group": it.group, "turns": it.turns,
                    "reasons": res.reasons[sid], "own_similarity": res.own_sim.get(sid),
                    "best_match": best[0] if best else None,
                    "best_similarity": best[1] if best else None})
    groups = sorted({m["group"] for m in mis})
    return {
        "method": res.method, "margin": margin, "min_similarity": min_sim,
        "reference": "1-turn request of the same id",
        "n_reference": n_reference, "n_checked": sum(1 for it in items if res.own_sim.get(it.sample_id) is not None),
        "n_misaligned": len(mis), "misaligned_groups": groups, "misaligned": mis,
    }
