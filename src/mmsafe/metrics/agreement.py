"""Inter-rater agreement (Cohen, Fleiss, Krippendorff, percent agreement) and
judge-vs-human classification metrics.

Missing values — ``None``, NaN and the label ``"unscored"`` — are dropped (the rater
gave no usable judgment); they are never treated as a category.
"""

from __future__ import annotations

import math
from collections.abc import Hashable, Iterable, Sequence
from typing import Any

import numpy as np

from ._common import (
    bootstrap_sums,
    check_level,
    cluster_rows,
    label_codes,
    percentile_ci,
    safe_div,
    wilson_interval,
)

__all__ = [
    "cohen_kappa",
    "fleiss_kappa",
    "krippendorff_alpha",
    "percent_agreement",
    "binary_metrics",
]


def _missing(x: Any) -> bool:
    if x is None:
        return True
    if isinstance(x, (float, np.floating)) and math.isnan(float(x)):
        return True
    return isinstance(x, str) and x.strip().lower() == "unscored"


def _canon(x: Any) -> Any:
    # numpy scalars hash like Python scalars, but keep the categories plain
    return x.item() if isinstance(x, np.generic) else x


def cohen_kappa(a: Sequence[Any], b: Sequence[Any]) -> float | None:
    """Cohen's κ between two raters over the items both rated.

    ``κ = (p_o − p_e) / (1 − p_e)`` with ``p_o`` the observed agreement and
    ``p_e = Σ_c p_a(c) · p_b(c)`` the agreement expected from the raters' marginals.
    Pairs where either label is missing are dropped. Returns ``None`` when no pair
    remains or ``p_e = 1`` (both raters used one and the same category: κ undefined).
    """
    a, b = list(a), list(b)
    if len(a) != len(b):
        raise ValueError("a and b must have the same length")
    index: dict[Any, int] = {}
    ia, ib = [], []
    for x, y in zip(a, b):
        if _missing(x) or _missing(y):
            continue
        ia.append(index.setdefault(_canon(x), len(index)))
        ib.append(index.setdefault(_canon(y), len(index)))
    n = len(ia)
    if n == 0:
        return None
    c = len(index)
    cm = np.bincount(np.asarray(ia) * c + np.asarray(ib), minlength=c * c).reshape(c, c)
    po = np.trace(cm) / n
    pe = float(np.dot(cm.sum(axis=1), cm.sum(axis=0))) / (n * n)
    if 1.0 - pe <= 1e-12:
        return None
    return float((po - pe) / (1.0 - pe))


def _is_number(x: Any) -> bool:
    return isinstance(x, (int, float, np.integer, np.floating)) and not isinstance(
        x, (bool, np.bool_)
    )


def _item_counts(data: Any, counts: bool | None) -> np.ndarray:
    """items × categories count matrix from a count matrix or per-item label lists."""
    if counts is None:
        if isinstance(data, np.ndarray) and data.dtype.kind in "iuf":
            counts = True
        else:
            rows = [list(r) for r in data]
            flat = [x for r in rows for x in r]
            if flat and all(_is_number(x) and not _missing(x) for x in flat):
                raise ValueError(
                    "ambiguous input: numeric lists could be a count matrix or per-item "
                    "labels; pass counts=True or counts=False (or a numpy count matrix)"
                )
            counts = False
            data = rows
    if counts:
        m = np.asarray(data, dtype=float)
        if m.ndim != 2 or (m < 0).any():
            raise ValueError("count matrix must be 2-D and non-negative")
        return m
    index: dict[Any, int] = {}
    items: list[int] = []
    codes: list[int] = []
    n_items = 0
    for i, r in enumerate(data):
        n_items += 1
        for x in r:
            if not _missing(x):
                items.append(i)
                codes.append(index.setdefault(_canon(x), len(index)))
    c = max(len(index), 1)
    cells = np.asarray(items, dtype=np.int64) * c + np.asarray(codes, dtype=np.int64)
    return np.bincount(cells, minlength=n_items * c).reshape(n_items, c).astype(float)


def fleiss_kappa(data: Any, *, counts: bool | None = None) -> float | None:
    """Fleiss' κ for several raters.

    ``data`` is either an items × categories **count matrix** ``n_ij`` (how many raters
    put item *i* in category *j*) or a list of **per-item label lists** (missing
    labels dropped). A numpy numeric array is read as counts; lists of strings as
    labels; all-numeric lists are ambiguous and need ``counts=True/False``.

    With ``n_i = Σ_j n_ij`` (items with ``n_i < 2`` are skipped)::

        P_i  = (Σ_j n_ij² − n_i) / (n_i (n_i − 1))
        P̄    = mean_i P_i
        p_j  = Σ_i n_ij / Σ_i n_i
        P̄_e  = Σ_j p_j²
        κ    = (P̄ − P̄_e) / (1 − P̄_e)

    which is Fleiss (1971) when every item has the same number of raters. Returns
    ``None`` when no item has two ratings or ``P̄_e = 1``.
    """
    m = _item_counts(data, counts)
    ni = m.sum(axis=1)
    keep = ni >= 2
    if not keep.any():
        return None
    m, ni = m[keep], ni[keep]
    p_i = ((m * m).sum(axis=1) - ni) / (ni * (ni - 1))
    p_bar = p_i.mean()
    p_j = m.sum(axis=0) / ni.sum()
    pe = float((p_j * p_j).sum())
    if 1.0 - pe <= 1e-12:
        return None
    return float((p_bar - pe) / (1.0 - pe))


def krippendorff_alpha(
    data: Sequence[Sequence[Any]] | np.ndarray,
    level: str = "nominal",
    *,
    items_as_rows: bool = False,
) -> float | None:
    """Krippendorff's α with missing values.

    ``data`` is the reliability matrix: one row per rater (coder), one column per item
    (unit) — pass ``items_as_rows=True`` for the transpose. Missing values (``None``,
    NaN, ``"unscored"``) are allowed anywhere; items with fewer than two values are
    not pairable and are skipped.

    Coincidences: ``o_ck = Σ_u (number of ordered pairs of values (c, k) from different
    raters in unit u) / (m_u − 1)``, ``n_c = Σ_k o_ck``, ``n = Σ_c n_c``. Then::

        α = 1 − D_o / D_e = 1 − (n − 1) · Σ_{c,k} o_ck δ²_ck / Σ_{c,k} n_c n_k δ²_ck

    with the distance ``δ²`` chosen by ``level``: ``"nominal"`` (0 if equal, else 1),
    ``"ordinal"`` (``(Σ_{g=c..k} n_g − (n_c + n_k)/2)²``), ``"interval"``
    (``(c − k)²``), ``"ratio"`` (``((c − k)/(c + k))²``). Non-nominal levels need
    numeric values. Returns ``None`` when fewer than two pairable values exist or there
    is no variation (``D_e = 0``).
    """
    if level not in ("nominal", "ordinal", "interval", "ratio"):
        raise ValueError("level must be 'nominal', 'ordinal', 'interval' or 'ratio'")
    rows = [list(r) for r in data]
    if items_as_rows:
        width = max((len(r) for r in rows), default=0)
        rows = [[r[j] if j < len(r) else None for r in rows] for j in range(width)]
    values = _alpha_values(rows, level)
    if len(values) == 0:
        return None
    co = _coincidences(rows, values, level)
    if co is None:
        return None
    o, n_c = co
    n = n_c.sum()
    if n < 2:
        return None
    d2 = _alpha_distances(level, values, n_c)
    do = float((o * d2).sum())
    de = float((np.outer(n_c, n_c) * d2).sum())
    if de <= 0:
        return None
    return float(1.0 - (n - 1.0) * do / de)


def _alpha_values(rows: list[list[Any]], level: str) -> list[Any]:
    """The distinct non-missing values, sorted: canonical labels (nominal) or floats (other levels)."""
    if level == "nominal":
        return sorted(
            {_canon(x) for r in rows for x in r if not _missing(x)},
            key=lambda v: (type(v).__name__, str(v)),
        )
    vals_set = set()
    for r in rows:
        for x in r:
            if _missing(x):
                continue
            if not _is_number(x):
                raise ValueError(f"{level} alpha needs numeric values, got {x!r}")
            vals_set.add(float(x))
    return sorted(vals_set)


def _coincidences(rows: list[list[Any]], values: list[Any], level: str) -> tuple[np.ndarray, np.ndarray] | None:
    """The coincidence matrix ``o_ck`` and its marginals ``n_c`` over the pairable units (None if there is none)."""
    n_units = max((len(r) for r in rows), default=0)
    index = {v: i for i, v in enumerate(values)}
    c = len(values)
    units: list[int] = []
    codes: list[int] = []
    for r in rows:
        for u, x in enumerate(r):
            if _missing(x):
                continue
            units.append(u)
            codes.append(index[_canon(x) if level == "nominal" else float(x)])
    flat = np.asarray(units, dtype=np.int64) * c + np.asarray(codes, dtype=np.int64)
    unit_counts = np.bincount(flat, minlength=n_units * c).reshape(n_units, c).astype(float)
    m_u = unit_counts.sum(axis=1)
    keep = m_u >= 2
    nm, mu = unit_counts[keep], m_u[keep]
    if nm.shape[0] == 0:
        return None
    inv = 1.0 / (mu - 1.0)
    o = (nm * inv[:, None]).T @ nm - np.diag((nm * inv[:, None]).sum(axis=0))
    return o, o.sum(axis=1)


def _alpha_distances(level: str, values: list[Any], n_c: np.ndarray) -> np.ndarray:
    """The squared distance ``δ²_ck`` between value indices ``c`` and ``k`` at ``level``."""
    c = len(values)
    v = np.asarray(values if level != "nominal" else range(c), dtype=float)
    d2: np.ndarray
    if level == "nominal":
        d2 = 1.0 - np.eye(c)
    elif level == "interval":
        d2 = (v[:, None] - v[None, :]) ** 2
    elif level == "ratio":
        s = v[:, None] + v[None, :]
        d2 = np.nan_to_num(safe_div(v[:, None] - v[None, :], s) ** 2)
    else:  # ordinal
        cum = np.concatenate([[0.0], np.cumsum(n_c)])
        lo = np.minimum.outer(np.arange(c), np.arange(c))
        hi = np.maximum.outer(np.arange(c), np.arange(c))
        between = cum[hi + 1] - cum[lo]
        d2 = (between - (n_c[:, None] + n_c[None, :]) / 2.0) ** 2
    return d2


def percent_agreement(a: Sequence[Any], b: Sequence[Any] | None = None) -> float | None:
    """Raw agreement.

    * ``percent_agreement(a, b)`` — two raters: share of items, among those both
      rated, with equal labels.
    * ``percent_agreement(items)`` — several raters, one label list per item: the
      mean over items (with ≥ 2 labels) of the share of agreeing rater pairs,
      ``Σ_j n_ij (n_ij − 1) / (n_i (n_i − 1))`` (Fleiss' ``P̄``).

    Missing labels are dropped; returns ``None`` when nothing is comparable.
    """
    if b is not None:
        a, b = list(a), list(b)
        if len(a) != len(b):
            raise ValueError("a and b must have the same length")
        pairs = [(x, y) for x, y in zip(a, b) if not (_missing(x) or _missing(y))]
        if not pairs:
            return None
        return sum(1 for x, y in pairs if _canon(x) == _canon(y)) / len(pairs)
    m = _item_counts(a, counts=False)
    ni = m.sum(axis=1)
    keep = ni >= 2
    if not keep.any():
        return None
    m, ni = m[keep], ni[keep]
    return float((((m * (m - 1)).sum(axis=1)) / (ni * (ni - 1))).mean())


def _f1_kappa(tp: np.ndarray, fp: np.ndarray, tn: np.ndarray, fn: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    f1 = safe_div(2 * tp, 2 * tp + fp + fn)
    n = tp + fp + tn + fn
    po = safe_div(tp + tn, n)
    pe = safe_div((tp + fp) * (tp + fn) + (tn + fn) * (tn + fp), n * n)
    one_minus = 1.0 - pe
    kappa = safe_div(po - pe, np.where(np.abs(one_minus) > 1e-12, one_minus, 0.0))
    return f1, kappa


def _opt(x: Any) -> float | None:
    x = float(x)
    return None if math.isnan(x) else x


def binary_metrics(
    y_true: Iterable[Any],
    y_pred: Iterable[Any],
    *,
    groups: Sequence[Hashable] | None = None,
    n_boot: int = 2000,
    seed: int = 0,
    level: float = 0.95,
) -> dict[str, Any]:
    """Judge (``y_pred``) versus human labels (``y_true``), positive class = ``unsafe``.

    Labels as in :func:`mmsafe.metrics.normalize_label` (``"unsafe"``/``"safe"``,
    bools or 0/1 with 1 = unsafe; ``None``/``"unscored"`` = missing). Items without a
    human label are dropped (``n_true_missing``); unscored predictions are counted in
    ``n_unscored`` and excluded from every metric; ``coverage = n_scored / n_labelled``.

    Over the ``n_scored`` remaining items with confusion counts ``tp, fp, tn, fn``:
    ``accuracy = (tp+tn)/n``, ``precision = tp/(tp+fp)``,
    ``recall = sensitivity = tp/(tp+fn)``, ``specificity = tn/(tn+fp)``,
    ``prevalence = (tp+fn)/n``, ``f1 = 2tp/(2tp+fp+fn)``, ``kappa`` = Cohen's κ.
    Every rate ``x`` comes with ``x_ci = (low, high)`` at ``level``: Wilson intervals
    for the proportions (accuracy, precision, recall, sensitivity, specificity,
    prevalence, coverage); percentile bootstrap (resampling items, or ``groups`` when
    given; deterministic given ``seed``) for ``f1`` and ``kappa``. Undefined values
    (zero denominators) are ``None``.

    Also returns the counts ``n`` (input length), ``n_labelled``, ``n_true_missing``,
    ``n_scored``, ``n_unscored``, ``tp, fp, tn, fn``, and ``level``, ``ci_method``.
    """
    check_level(level)
    t = label_codes(y_true)
    p = label_codes(y_pred)
    if t.size != p.size:
        raise ValueError("y_true and y_pred must have the same length")
    if groups is not None:
        groups = list(groups)
        if len(groups) != t.size:
            raise ValueError("groups must have the same length as y_true")
    labelled = t >= 0
    scored = labelled & (p >= 0)
    tp_v = scored & (t == 1) & (p == 1)
    fp_v = scored & (t == 0) & (p == 1)
    tn_v = scored & (t == 0) & (p == 0)
    fn_v = scored & (t == 1) & (p == 0)
    tp, fp, tn, fn = (int(v.sum()) for v in (tp_v, fp_v, tn_v, fn_v))
    n_lab, n_sc = int(labelled.sum()), int(scored.sum())
    out: dict[str, Any] = {
        "n": int(t.size),
        "n_labelled": n_lab,
        "n_true_missing": int(t.size - n_lab),
        "n_scored": n_sc,
        "n_unscored": n_lab - n_sc,
        "tp": tp,
        "fp": fp,
        "tn": tn,
        "fn": fn,
        "level": level,
    }

    def prop(name: str, k: int, d: int) -> None:
        out[name] = k / d if d else None
        out[name + "_ci"] = wilson_interval(k, d, level) if d else None

    prop("coverage", n_sc, n_lab)
    prop("accuracy", tp + tn, n_sc)
    prop("precision", tp, tp + fp)
    prop("recall", tp, tp + fn)
    prop("sensitivity", tp, tp + fn)
    prop("specificity", tn, tn + fp)
    prop("prevalence", tp + fn, n_sc)

    f1, kappa = _f1_kappa(*(np.asarray([float(x)]) for x in (tp, fp, tn, fn)))
    out["f1"], out["kappa"] = _opt(f1[0]), _opt(kappa[0])
    out["f1_ci"] = out["kappa_ci"] = None
    if n_sc:
        sel = np.flatnonzero(scored)
        onehot = np.column_stack([v[sel] for v in (tp_v, fp_v, tn_v, fn_v)]).astype(float)
        g = None if groups is None else [groups[i] for i in sel]
        sums = bootstrap_sums(cluster_rows(onehot, g), n_boot, seed)
        bf1, bk = _f1_kappa(sums[:, 0], sums[:, 1], sums[:, 2], sums[:, 3])
        lo, hi = percentile_ci(bf1, out["f1"], level)
        out["f1_ci"] = None if lo is None else (lo, hi)
        lo, hi = percentile_ci(bk, out["kappa"], level)
        out["kappa_ci"] = None if lo is None else (lo, hi)
    out["ci_method"] = {
        "proportions": "wilson",
        "f1_kappa": "cluster_bootstrap" if groups is not None else "bootstrap",
    }
    return out
