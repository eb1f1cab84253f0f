"""Hand-written SVG charts for the self-contained report (no JS, no network).

Every function returns :class:`markupsafe.Markup`; every piece of text that comes from
data (model, scenario and method names) goes through :func:`markupsafe.escape`, so a
name holding markup is drawn as text. Rates are fractions in [0, 1]; ``None`` = no data.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

from markupsafe import Markup, escape

PALETTE = ("#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2", "#17becf",
           "#7f7f7f", "#bcbd22")
FONT = "font-family='system-ui,-apple-system,Segoe UI,Roboto,sans-serif'"


def color(i: int) -> str:
    """The i-th series colour (the palette repeats)."""
    return PALETTE[i % len(PALETTE)]


def _f(x: float) -> str:
    return f"{x:.1f}".rstrip("0").rstrip(".") if math.isfinite(x) else "0"


def _pct(x: float | None, digits: int = 1) -> str:
    return "–" if x is None else f"{100 * x:.{digits}f}%"


def _short(s: str, n: int = 28) -> str:
    s = str(s)
    return s if len(s) <= n else s[: n - 1] + "…"


def _text(x: float, y: float, s: Any, *, anchor: str = "start", size: int = 11, cls: str = "",
          extra: str = "") -> str:
    c = f" class='{cls}'" if cls else ""
    return (f"<text x='{_f(x)}' y='{_f(y)}' text-anchor='{anchor}' font-size='{size}'{c} {extra}>"
            f"{escape(str(s))}</text>")


def _svg(w: float, h: float, body: list[str], label: str, cls: str) -> Markup:
    return Markup(
        f"<svg xmlns='http://www.w3.org/2000/svg' class='chart {cls}' role='img' aria-label='{escape(label)}' "
        f"viewBox='0 0 {_f(w)} {_f(h)}' width='{_f(w)}' height='{_f(h)}' {FONT}>"
        f"<title>{escape(label)}</title>" + "".join(body) + "</svg>")


def _legend(series: Sequence[str], x: float, y: float, width: float,
            colors: Sequence[str] | None = None) -> tuple[list[str], float]:
    """Legend rows wrapping within ``width``; returns the elements and the height used.
    ``colors``: each series' colour (default: the palette in order)."""
    out, cx, cy = [], x, y
    for i, name in enumerate(series):
        label = _short(name, 40)
        w = 22 + 6.5 * len(label)
        if cx + w > x + width and cx > x:
            cx, cy = x, cy + 16
        out.append(f"<g class='legend-item'><rect x='{_f(cx)}' y='{_f(cy - 9)}' width='12' height='12' "
                   f"fill='{colors[i] if colors else color(i)}'/>" + _text(cx + 16, cy + 1, label) + "</g>")
        cx += w
    return out, (cy - y) + 16


def _y_axis(x0: float, y0: float, h: float, x1: float, ticks: Sequence[float], lo: float, hi: float,
            fmt: Callable[[float], str] = lambda v: f"{100 * v:.0f}%") -> list[str]:
    out = []
    for t in ticks:
        y = y0 + h - (t - lo) / (hi - lo) * h
        out.append(f"<line x1='{_f(x0)}' x2='{_f(x1)}' y1='{_f(y)}' y2='{_f(y)}' class='grid' stroke='#ddd'/>")
        out.append(_text(x0 - 6, y + 4, fmt(t), anchor="end", size=10))
    return out


# --------------------------------------------------------------------------- line: ASR vs turns


def line_chart(series: Sequence[dict[str, Any]], *, x_label: str = "user turns", y_label: str = "ASR",
               title: str = "ASR by number of user turns") -> Markup | None:
    """``series``: ``[{"name": str, "points": {x: {"asr", "ci_low", "ci_high", "n_scored"}},
    "color": optional}]`` (a run keeps its colour across charts when the caller passes it).
    The x values (turn counts) share one categorical axis in numeric order. Fewer than two
    x values draw nothing (None): one point is no curve."""
    xs = sorted({int(x) for s in series for x, p in s["points"].items() if p.get("asr") is not None})
    if len(xs) < 2:
        return None
    w, left, right, top = 640, 56, 20, 16
    ph = 240
    pw = w - left - right
    colors = [s.get("color") or color(i) for i, s in enumerate(series)]
    legend, lh = _legend([s["name"] for s in series], left, top + ph + 44, pw, colors)
    h = top + ph + 44 + lh + 6
    step = pw / max(1, len(xs) - 1) if len(xs) > 1 else 0

    def X(x: int) -> float:
        return left + (xs.index(x) * step if len(xs) > 1 else pw / 2)

    def Y(v: float) -> float:
        return top + ph - v * ph

    body = _y_axis(left, top, ph, left + pw, [0, .25, .5, .75, 1], 0, 1)
    for x in xs:
        body.append(_text(X(x), top + ph + 16, x, anchor="middle"))
    body.append(_text(left + pw / 2, top + ph + 32, x_label, anchor="middle", size=11, cls="axis-label"))
    body.append(_text(14, top + ph / 2, y_label, anchor="middle", size=11, cls="axis-label",
                      extra=f"transform='rotate(-90 14 {_f(top + ph / 2)})'"))
    dodge = min(6.0, 24.0 / max(1, len(series)))  # spread overlapping CI bars of the series apart
    for i, s in enumerate(series):
        c = colors[i]
        dx = (i - (len(series) - 1) / 2) * dodge
        pts = [(int(x), p) for x, p in s["points"].items() if p.get("asr") is not None]
        pts.sort()
        g = [f"<g class='series' data-series='{i}'>"]
        if len(pts) > 1:
            g.append(f"<polyline fill='none' stroke='{c}' stroke-width='2' points='"
                     + " ".join(f"{_f(X(x) + dx)},{_f(Y(p['asr']))}" for x, p in pts) + "'/>")
        for x, p in pts:
            lo, hi = p.get("ci_low"), p.get("ci_high")
            if lo is not None and hi is not None:
                g.append(f"<line x1='{_f(X(x) + dx)}' x2='{_f(X(x) + dx)}' y1='{_f(Y(lo))}' y2='{_f(Y(hi))}' "
                         f"stroke='{c}' stroke-opacity='.45' stroke-width='6' stroke-linecap='round'/>")
            tip = (f"{s['name']} — {x} turn(s): ASR {_pct(p['asr'])}"
                   + (f" (95% CI {_pct(lo)}–{_pct(hi)})" if lo is not None and hi is not None else "")
                   + (f", n={p.get('n_scored')}" if p.get("n_scored") is not None else ""))
            g.append(f"<circle cx='{_f(X(x) + dx)}' cy='{_f(Y(p['asr']))}' r='4' fill='{c}'>"
                     f"<title>{escape(tip)}</title></circle>")
        g.append("</g>")
        body.extend(g)
    body.extend(legend)
    return _svg(w, h, body, title, "line")


# --------------------------------------------------------------------------- heatmap


def _heat(v: float) -> str:
    """0 → green, 0.5 → amber, 1 → red."""
    v = min(1.0, max(0.0, v))
    if v < .5:
        a, b, t = (46, 160, 67), (240, 190, 40), v / .5
    else:
        a, b, t = (240, 190, 40), (200, 40, 40), (v - .5) / .5
    r, g, bl = (round(a[k] + (b[k] - a[k]) * t) for k in range(3))
    return f"rgb({r},{g},{bl})"


def heatmap(rows: Sequence[str], cols: Sequence[str], cell: dict[tuple[str, str], dict[str, Any]], *,
            title: str = "ASR by scenario and model", row_label: str = "scenario") -> Markup | None:
    """``cell[(row, col)] = {"asr", "ci_low", "ci_high", "n_scored"}``."""
    if not rows or not cols:
        return None
    cw, ch = 74, 20
    left = min(230, 12 + 6.4 * max(len(_short(r, 34)) for r in rows))
    top = 16 + min(150, 6.2 * max(len(_short(c, 22)) for c in cols) * .72 + 14)
    w = left + cw * len(cols) + 16
    h = top + ch * len(rows) + 40
    body = []
    for j, c in enumerate(cols):
        x = left + j * cw + cw / 2
        body.append(f"<g><title>{escape(c)}</title>"
                    + _text(x, top - 6, _short(c, 22), anchor="start", size=10,
                            extra=f"transform='rotate(-40 {_f(x)} {_f(top - 6)})'") + "</g>")
    for i, r in enumerate(rows):
        y = top + i * ch
        body.append(f"<g><title>{escape(r)}</title>" + _text(left - 6, y + ch / 2 + 4, _short(r, 34), anchor="end",
                                                              size=10) + "</g>")
        for j, c in enumerate(cols):
            x = left + j * cw
            d = cell.get((r, c))
            if not d or d.get("asr") is None:
                body.append(f"<rect class='cell empty' x='{_f(x)}' y='{_f(y)}' width='{cw - 2}' height='{ch - 2}' "
                            f"fill='#eee'><title>{escape(f'{r} × {c}: no scored samples')}</title></rect>")
                continue
            v = d["asr"]
            tip = (f"{r} × {c}: ASR {_pct(v)}"
                   + (f" (95% CI {_pct(d.get('ci_low'))}–{_pct(d.get('ci_high'))})"
                      if d.get("ci_low") is not None else "") + f", n={d.get('n_scored')}")
            body.append(f"<rect class='cell' x='{_f(x)}' y='{_f(y)}' width='{cw - 2}' height='{ch - 2}' "
                        f"fill='{_heat(v)}'><title>{escape(tip)}</title></rect>")
            body.append(_text(x + (cw - 2) / 2, y + ch / 2 + 3, f"{100 * v:.0f}%", anchor="middle", size=10,
                              extra=("fill='#111'" if .3 <= v <= .7 else "fill='#fff'") + " pointer-events='none'"))
    # colour scale
    sy = top + ch * len(rows) + 14
    for k in range(11):
        body.append(f"<rect x='{_f(left + k * 16)}' y='{_f(sy)}' width='16' height='10' fill='{_heat(k / 10)}'/>")
    body.append(_text(left - 6, sy + 9, "ASR 0%", anchor="end", size=10))
    body.append(_text(left + 11 * 16 + 6, sy + 9, "100%", size=10))
    return _svg(w, h, body, title, "heatmap")


# --------------------------------------------------------------------------- grouped bars


def grouped_bars(groups: Sequence[str], series: Sequence[str], value: dict[tuple[str, str], dict[str, Any]], *,
                 title: str = "ASR by attack method", colors: Sequence[str] | None = None) -> Markup | None:
    """Horizontal bars: one block per group (attack method), one bar per series (run);
    ``colors``: each series' colour (default: the palette in order)."""
    if not groups or not series:
        return None
    bh, gap = 12, 12
    left = min(200, 16 + 6.4 * max(len(_short(g, 28)) for g in groups))
    pw = 420
    w = left + pw + 70
    top = 10
    block = bh * len(series) + gap
    ph = block * len(groups)
    legend, lh = _legend(series, left, top + ph + 46, pw + 60, colors)
    h = top + ph + 46 + lh + 4
    body = []
    for t in (0, .25, .5, .75, 1):
        x = left + t * pw
        body.append(f"<line x1='{_f(x)}' x2='{_f(x)}' y1='{top}' y2='{_f(top + ph)}' stroke='#ddd'/>")
        body.append(_text(x, top + ph + 14, f"{100 * t:.0f}%", anchor="middle", size=10))
    body.append(_text(left + pw / 2, top + ph + 28, "ASR", anchor="middle", size=11, cls="axis-label"))
    for gi, g in enumerate(groups):
        y0 = top + gi * block
        body.append(f"<g><title>{escape(g)}</title>"
                    + _text(left - 6, y0 + bh * len(series) / 2 + 4, _short(g, 28), anchor="end") + "</g>")
        for si, s in enumerate(series):
            d = value.get((g, s))
            y = y0 + si * bh
            if not d or d.get("asr") is None:
                continue
            v = d["asr"]
            tip = (f"{s} — {g}: ASR {_pct(v)}"
                   + (f" (95% CI {_pct(d.get('ci_low'))}–{_pct(d.get('ci_high'))})"
                      if d.get("ci_low") is not None else "") + f", n={d.get('n_scored')}")
            fill = colors[si] if colors else color(si)
            body.append(f"<rect class='bar' x='{_f(left)}' y='{_f(y + 1)}' width='{_f(max(1.5, v * pw))}' "
                        f"height='{bh - 2}' fill='{fill}'><title>{escape(tip)}</title></rect>")
            lo, hi = d.get("ci_low"), d.get("ci_high")
            if lo is not None and hi is not None:
                body.append(f"<line x1='{_f(left + lo * pw)}' x2='{_f(left + hi * pw)}' y1='{_f(y + bh / 2)}' "
                            f"y2='{_f(y + bh / 2)}' stroke='#222' stroke-width='1'/>")
            body.append(_text(left + max(v, hi or 0) * pw + 4, y + bh - 2, _pct(v, 0), size=9))
    body.extend(legend)
    return _svg(w, h, body, title, "bars")


# --------------------------------------------------------------------------- forest plot (leaderboard)


def forest(rows: Sequence[dict[str, Any]], *, title: str = "ASR with 95% CI (lower is safer)") -> Markup | None:
    """``rows``: ``[{"name", "asr", "ci_low", "ci_high"}]`` in display order."""
    rows = [r for r in rows if r.get("asr") is not None]
    if not rows:
        return None
    rh = 22
    left = min(260, 16 + 6.4 * max(len(_short(r["name"], 38)) for r in rows))
    pw = 400
    top = 8
    w, h = left + pw + 70, top + rh * len(rows) + 34
    body = []
    for t in (0, .25, .5, .75, 1):
        x = left + t * pw
        body.append(f"<line x1='{_f(x)}' x2='{_f(x)}' y1='{top}' y2='{_f(top + rh * len(rows))}' stroke='#ddd'/>")
        body.append(_text(x, top + rh * len(rows) + 14, f"{100 * t:.0f}%", anchor="middle", size=10))
    body.append(_text(left + pw / 2, top + rh * len(rows) + 28, "ASR", anchor="middle", cls="axis-label"))
    for i, r in enumerate(rows):
        y = top + i * rh + rh / 2
        c = r.get("color") or color(r.get("color_index", i))
        body.append(f"<g><title>{escape(r['name'])}</title>"
                    + _text(left - 8, y + 4, _short(r["name"], 38), anchor="end") + "</g>")
        lo, hi = r.get("ci_low"), r.get("ci_high")
        if lo is not None and hi is not None:
            body.append(f"<line x1='{_f(left + lo * pw)}' x2='{_f(left + hi * pw)}' y1='{_f(y)}' y2='{_f(y)}' "
                        f"stroke='{c}' stroke-width='3'/>")
        tip = f"{r['name']}: ASR {_pct(r['asr'])}" + (f" (95% CI {_pct(lo)}–{_pct(hi)})" if lo is not None else "")
        body.append(f"<circle cx='{_f(left + r['asr'] * pw)}' cy='{_f(y)}' r='5' fill='{c}'>"
                    f"<title>{escape(tip)}</title></circle>")
        body.append(_text(left + max(r["asr"], hi or 0) * pw + 8, y + 4, _pct(r["asr"]), size=10))
    return _svg(w, h, body, title, "forest")


# --------------------------------------------------------------------------- scatter (defenses)


def scatter(points: Sequence[dict[str, Any]], *, x_label: str = "over-refusal on benign controls",
            y_label: str = "ASR reduction (baseline − defended)",
            title: str = "Defenses: ASR reduction vs over-refusal") -> Markup | None:
    """``points``: ``[{"name", "x", "y"}]`` with x in [0, 1] and y in [−1, 1]."""
    pts = [p for p in points if p.get("x") is not None and p.get("y") is not None]
    if not pts:
        return None
    w, left, right, top, ph = 560, 60, 24, 14, 260
    pw = w - left - right
    ylo = min(0.0, min(p["y"] for p in pts))
    ylo = math.floor(ylo * 4) / 4
    yhi = 1.0
    colors = [p.get("color") or color(i) for i, p in enumerate(pts)]
    legend, lh = _legend([p["name"] for p in pts], left, top + ph + 44, pw, colors)
    h = top + ph + 44 + lh + 6

    def X(v: float) -> float:
        return left + v * pw

    def Y(v: float) -> float:
        return top + ph - (v - ylo) / (yhi - ylo) * ph

    ticks = [ylo + k * .25 for k in range(round((yhi - ylo) / .25) + 1)]
    body = _y_axis(left, top, ph, left + pw, ticks, ylo, yhi, fmt=lambda v: f"{100 * v:+.0f} pp" if v else "0")
    for t in (0, .25, .5, .75, 1):
        body.append(_text(X(t), top + ph + 16, f"{100 * t:.0f}%", anchor="middle", size=10))
    body.append(_text(left + pw / 2, top + ph + 32, x_label, anchor="middle", cls="axis-label"))
    body.append(_text(14, top + ph / 2, y_label, anchor="middle", cls="axis-label", size=10,
                      extra=f"transform='rotate(-90 14 {_f(top + ph / 2)})'"))
    body.append(f"<line x1='{_f(left)}' x2='{_f(left + pw)}' y1='{_f(Y(0))}' y2='{_f(Y(0))}' stroke='#888'/>")
    for i, p in enumerate(pts):
        tip = f"{p['name']}: ASR reduction {100 * p['y']:+.1f} pp, over-refusal {_pct(p['x'])}"
        body.append(f"<circle class='point' cx='{_f(X(p['x']))}' cy='{_f(Y(p['y']))}' r='6' fill='{colors[i]}' "
                    f"fill-opacity='.85'><title>{escape(tip)}</title></circle>")
    body.extend(legend)
    return _svg(w, h, body, title, "scatter")
