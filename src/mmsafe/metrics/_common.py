"""Shared helpers for :mod:`mmsafe.metrics`: label normalisation, Wilson interval,
and a vectorised (cluster) bootstrap engine.

Everything here is pure: no I/O, no imports of other mmsafe modules.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Hashable, Iterable, Mapping, Sequence
from statistics import NormalDist
from typing import Any

import numpy as np

UNSAFE = "unsafe"
SAFE = "safe"
UNSCORED = "unscored"
LABELS = (UNSAFE, SAFE, UNSCORED)

_LABEL_CODES = {UNSAFE: 1, SAFE: 0, UNSCORED: -1}
_STR_ALIASES = {
    "unsafe": 1,
    "safe": 0,
    "unscored": -1,
    "1": 1,
    "0": 0,
    "true": 1,
    "false": 0,
}

# Bootstrap implementation limits: at most this many gathered indices per chunk
# (bounds memory of the resampling matrix), and the largest number of distinct
# cluster rows for which the exact multinomial shortcut is used.
_GATHER_CHUNK = 2_000_000
_MULTINOMIAL_MAX_UNIQUE = 512


def _is_nan(x: Any) -> bool:
    return isinstance(x, float) and math.isnan(x)


def label_code(x: Any) -> int:
    """Map one label to a code: ``1`` unsafe, ``0`` safe, ``-1`` unscored.

    Accepted inputs: the strings ``"unsafe" | "safe" | "unscored"`` (case and
    surrounding whitespace ignored), ``None`` / NaN (unscored), booleans and the
    numbers 0/1 (``1``/``True`` = unsafe). Anything else raises ``ValueError`` —
    an unknown label is a programming error, never silently "safe".
    """
    if x is None or _is_nan(x):
        return -1
    if isinstance(x, (bool, np.bool_)):
        return 1 if x else 0
    if isinstance(x, str):
        code = _STR_ALIASES.get(x.strip().lower())
        if code is None:
            raise ValueError(f"unknown label {x!r}; expected 'unsafe', 'safe' or 'unscored'")
        return code
    if isinstance(x, (int, float, np.integer, np.floating)):
        if x == 1:
            return 1
        if x == 0:
            return 0
        if isinstance(x, (float, np.floating)) and math.isnan(float(x)):
            return -1
    raise ValueError(f"unknown label {x!r}; expected 'unsafe', 'safe' or 'unscored'")


def normalize_label(x: Any) -> str:
    """Return the canonical label string (``"unsafe" | "safe" | "unscored"``) for ``x``.

    See :func:`label_code` for the accepted inputs.
    """
    return LABELS[(1, 0, -1).index(label_code(x))]


def label_codes(labels: Iterable[Any]) -> np.ndarray:
    """Vector of label codes (int8: 1 unsafe, 0 safe, -1 unscored)."""
    if isinstance(labels, np.ndarray) and labels.dtype.kind in "biuf":
        arr = labels.astype(float)
        out = np.full(arr.shape, -1, dtype=np.int8)
        ok = ~np.isnan(arr)
        bad = ok & (arr != 0) & (arr != 1)
        if bad.any():
            raise ValueError("numeric labels must be 0, 1 or NaN")
        out[ok] = arr[ok].astype(np.int8)
        return out
    fast = _LABEL_CODES
    out_list: list[int] = []
    append = out_list.append
    for x in labels:
        c = fast.get(x) if isinstance(x, str) else None
        append(c if c is not None else label_code(x))
    return np.asarray(out_list, dtype=np.int8)


def z_value(level: float) -> float:
    """Two-sided standard-normal quantile for confidence ``level`` (e.g. 1.96 for 0.95)."""
    if not 0.0 < level < 1.0:
        raise ValueError("level must be in (0, 1)")
    return NormalDist().inv_cdf(0.5 + level / 2.0)


def wilson_interval(k: float, n: float, level: float = 0.95) -> tuple[float | None, float | None]:
    """Wilson score interval for a binomial proportion ``k / n``.

    With ``p = k/n`` and ``z`` the two-sided normal quantile for ``level``::

        centre = (p + z²/(2n)) / (1 + z²/n)
        half   = z / (1 + z²/n) · sqrt(p(1−p)/n + z²/(4n²))
        CI     = [centre − half, centre + half]  (clipped to [0, 1])

    Returns ``(None, None)`` when ``n == 0``. The interval always contains ``p``.
    """
    if n <= 0:
        return None, None
    if k < 0 or k > n:
        raise ValueError("need 0 <= k <= n")
    z = z_value(level)
    p = k / n
    z2 = z * z
    denom = 1.0 + z2 / n
    centre = (p + z2 / (2 * n)) / denom
    half = (z / denom) * math.sqrt(max(p * (1 - p) / n + z2 / (4 * n * n), 0.0))
    lo, hi = max(0.0, centre - half), min(1.0, centre + half)
    # guard against floating-point round-off at the boundaries
    return min(lo, p), max(hi, p)


def _group_index(groups: Sequence[Hashable], n: int) -> tuple[np.ndarray, int]:
    if len(groups) != n:
        raise ValueError(f"groups has length {len(groups)}, expected {n}")
    index: dict[Hashable, int] = {}
    inv = np.fromiter((index.setdefault(g, len(index)) for g in groups), dtype=np.int64, count=n)
    return inv, len(index)


def cluster_rows(values: np.ndarray, groups: Sequence[Hashable] | None) -> np.ndarray:
    """Sum per-record rows ``values`` (n × m) within clusters (→ G × m).

    Without ``groups`` every record is its own cluster (plain bootstrap).
    """
    values = np.asarray(values, dtype=float)
    if values.ndim == 1:
        values = values[:, None]
    if groups is None:
        return values
    inv, g = _group_index(groups, values.shape[0])
    out = np.zeros((g, values.shape[1]), dtype=float)
    for j in range(values.shape[1]):
        out[:, j] = np.bincount(inv, weights=values[:, j], minlength=g)
    return out


def bootstrap_sums(rows: np.ndarray, n_boot: int, seed: int | np.random.Generator) -> np.ndarray:
    """Column sums of ``n_boot`` bootstrap resamples of the cluster rows.

    ``rows`` is G × m (one row per cluster — e.g. per underlying question — holding
    additive statistics such as counts of unsafe and scored records). Each resample
    draws G clusters uniformly with replacement; the result is ``n_boot × m``.

    Implementation: when the clusters take few distinct row values (always the case
    for binary labels), the number of draws of each distinct row is sampled exactly
    as ``Multinomial(G, count_u / G)`` — distributionally identical to resampling
    clusters, and O(n_boot · U). Otherwise indices are drawn in memory-bounded
    chunks and gathered. Deterministic for a given ``seed``.
    """
    rows = np.asarray(rows, dtype=float)
    if rows.ndim == 1:
        rows = rows[:, None]
    g, m = rows.shape
    rng = seed if isinstance(seed, np.random.Generator) else np.random.default_rng(seed)
    if n_boot <= 0:
        raise ValueError("n_boot must be positive")
    if g == 0:
        return np.zeros((n_boot, m))
    uniq: np.ndarray
    counts: np.ndarray
    uniq, counts = np.unique(rows, axis=0, return_counts=True)
    u = uniq.shape[0]
    if u == 1:
        return np.repeat(uniq * g, n_boot, axis=0)
    if u <= _MULTINOMIAL_MAX_UNIQUE and u < g:
        draws = rng.multinomial(g, counts / counts.sum(), size=n_boot)
        weighted: np.ndarray = draws.astype(float) @ uniq
        return weighted
    out = np.empty((n_boot, m))
    chunk = max(1, _GATHER_CHUNK // g)
    for start in range(0, n_boot, chunk):
        stop = min(n_boot, start + chunk)
        b = stop - start
        idx = rng.integers(0, g, size=(b, g))
        if m <= 4:  # few statistics: gather and sum each column
            for j in range(m):
                out[start:stop, j] = rows[:, j][idx].sum(axis=1)
        else:  # many: draw counts per cluster, then one matrix product
            idx += (np.arange(b) * g)[:, None]
            w = np.bincount(idx.ravel(), minlength=b * g).reshape(b, g).astype(float)
            out[start:stop] = w @ rows
    return out


def percentile_ci(
    stats: np.ndarray, point: float | None, level: float
) -> tuple[float | None, float | None]:
    """Percentile bootstrap interval over the finite entries of ``stats``.

    The interval is widened, if needed, to contain the point estimate (a percentile
    interval can exclude it in degenerate or very skewed cases); ``(None, None)``
    when there is no point estimate or no finite resample.
    """
    if point is None:
        return None, None
    stats = np.asarray(stats, dtype=float)
    stats = stats[np.isfinite(stats)]
    if stats.size == 0:
        return None, None
    alpha = 1.0 - level
    lo, hi = np.quantile(stats, [alpha / 2.0, 1.0 - alpha / 2.0])
    return float(min(lo, point)), float(max(hi, point))


def safe_div(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Elementwise ``a / b`` with NaN where ``b == 0``."""
    a = np.asarray(a, dtype=float)
    b = np.asarray(b, dtype=float)
    out = np.full(np.broadcast(a, b).shape, np.nan)
    np.divide(a, b, out=out, where=b != 0)
    return out


def get_field(record: Mapping[Any, Any], key: str | Sequence[str] | Callable[[Mapping[str, Any]], Any]) -> Any:
    """Read ``key`` from a record; a callable key is called, a tuple/list key gives a tuple."""
    if callable(key):
        return key(record)
    if isinstance(key, (tuple, list)):
        return tuple(record.get(k) for k in key)
    return record.get(key)


def check_level(level: float) -> None:
    """Raise a ValueError unless the confidence level is in (0, 1)."""
    if not 0.0 < level < 1.0:
        raise ValueError("level must be in (0, 1)")
