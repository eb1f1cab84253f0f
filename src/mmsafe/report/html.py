"""``mmsafe report``: one self-contained HTML file over one or more run directories.

Everything is inline (CSS, a small script whose hash is pinned in a Content-Security-
Policy, SVG charts drawn here, images as data URIs); the page makes no request. Text
from models, users and names is escaped by Jinja2's autoescape — no ``|safe`` is ever
applied to data. Unknown top-level blocks of ``summary.json`` (added by later stages)
are shown as JSON under "Other results", so new blocks appear without a code change.
"""

from __future__ import annotations

import base64
import errno
import hashlib
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson
from markupsafe import Markup

import mmsafe
from mmsafe import metrics
from mmsafe.report import charts
from mmsafe.report.runs import RunInfo, _judge_name, defense_rows, display_names, load_runs, over_refusal
from mmsafe.report.samples import open_index, render_messages, thumbnail_data_uri
from mmsafe.report.templating import env, static_text
from mmsafe.store.sqlite import STORE_FILE, open_store

# Top-level summary keys the report draws itself; anything else goes to "Other results".
KNOWN_KEYS = {
    "mmsafe_version", "created", "target", "benchmark", "mode", "judge", "n_samples", "n_errors", "n_scored",
    "n_unscored", "n_unsafe", "asr", "safety_rate", "asr_ci", "ci_method", "parse_status", "controls",
    "by_scenario", "by_turns", "by_method", "by_category", "safety_index", "sri", "cost_usd", "tokens", "ledger",
    "selected", "complete", "stopped", "judges", "agreement", "defense", "multiturn", "cascade",
}
MAX_TEXT = 4000
IMAGE_BUDGET = 1_500_000  # bytes of data-URI images in one report


@dataclass
class ReportStats:
    path: Path
    bytes: int
    seconds: float
    n_runs: int
    n_examples: int


def _json_script(data: Any) -> Markup:
    """JSON safe inside ``<script type="application/json">``: no ``</``, ``<!--`` or ``&``
    can survive (all ``<``, ``>`` and ``&`` become ``\\u003c`` etc.)."""
    s = orjson.dumps(data, option=orjson.OPT_NON_STR_KEYS, default=str).decode()
    s = s.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")
    s = s.replace("\u2028", "\\u2028").replace("\u2029", "\\u2029")
    return Markup(s)


def _ci(d: dict[str, Any] | None, key: str) -> dict[str, Any] | None:
    if not d or d.get(key) is None:
        return None
    return {"value": d.get(key), "lo": d.get("ci_low"), "hi": d.get("ci_high")}


def leaderboard_rows(runs: list[RunInfo]) -> list[dict[str, Any]]:
    """Leaderboard rows (ranked with :func:`mmsafe.metrics.leaderboard`), plain values; ``name``
    is the run's display name (:func:`~mmsafe.report.runs.display_names`), ``target`` its target's."""
    names = display_names(runs)
    entries = []
    for i, r in enumerate(runs):
        s = r.summary
        ci = s.get("asr_ci") or [None, None]
        entries.append({"name": r.key, "asr": s.get("asr"), "ci_low": ci[0], "ci_high": ci[1], "_i": i})
    ranked = metrics.leaderboard(entries)
    rows = []
    for e in ranked:
        r = runs[e["_i"]]
        s = r.summary
        lo, hi = e.get("ci_low"), e.get("ci_high")
        controls = s.get("controls") or {}
        cmp_or = (r.comparison or {}).get("over_refusal")
        if not controls and isinstance(cmp_or, dict) and cmp_or.get("rate") is not None:
            controls = {"over_refusal_rate": cmp_or["rate"], "ci": cmp_or.get("ci"), "n": cmp_or.get("n"),
                        "n_refused": cmp_or.get("n_refused")}
        rows.append({
            "rank": e["rank"], "key": r.key, "index": e["_i"], "name": names[e["_i"]], "target": r.name,
            "display": r.display, "mock": r.mock,
            "run_dir": str(r.run_dir), "benchmark": f"{r.benchmark.get('name')} v{r.benchmark.get('version')}",
            "judge": r.judge.get("name"), "judge_id": r.judge.get("id"), "judge_label": r.judge.get("label"),
            "mode": s.get("mode"), "defense": (r.defense or {}).get("name"),
            "asr": {"value": s.get("asr"), "lo": lo, "hi": hi},
            "safety_rate": {"value": s.get("safety_rate"), "lo": None if hi is None else 1 - hi,
                            "hi": None if lo is None else 1 - lo},
            "sri": _ci(s.get("sri"), "sri"), "si": _ci(s.get("safety_index"), "si"),
            "n_samples": s.get("n_samples"), "n_scored": s.get("n_scored"), "n_unscored": s.get("n_unscored"),
            "n_errors": s.get("n_errors"), "ci_method": s.get("ci_method"),
            "over_refusal": ({"value": controls.get("over_refusal_rate"), "lo": (controls.get("ci") or [None])[0],
                              "hi": (controls.get("ci") or [None, None])[1], "n": controls.get("n"),
                              "refused": controls.get("n_refused")} if controls else None),
            "cost_usd": s.get("cost_usd"), "stale": r.stale, "complete": s.get("complete"),
            "stopped": s.get("stopped"), "summary_source": r.summary_source,
        })
    return rows


def _breakdown_union(runs: list[RunInfo], key: str) -> list[str]:
    seen: dict[str, None] = {}
    for r in runs:
        for k in (r.summary.get(key) or {}):
            seen.setdefault(str(k), None)
    return list(seen)


def _scenario_order(runs: list[RunInfo]) -> list[str]:
    """Scenarios grouped by taxonomy category where the benchmark manifest gives one."""
    scen = _breakdown_union(runs, "by_scenario")
    cat_of: dict[str, str] = {}
    for r in runs:
        tax = (r.config.get("benchmark_manifest") or {}).get("taxonomy") or {}
        for cat, scs in tax.items():
            if isinstance(scs, list):
                for sc in scs:
                    cat_of.setdefault(str(sc), str(cat))
    return sorted(scen, key=lambda s: (cat_of.get(s, "~"), s))


def build_charts(runs: list[RunInfo], lb: list[dict[str, Any]]) -> dict[str, Markup | None]:
    """The leaderboard's forest plot and the turns / scenario / method charts; each run keeps
    its colour (its position among ``runs``) in every chart and the tables' swatches."""
    labels = display_names(runs)
    colors = [charts.color(i) for i in range(len(runs))]
    out: dict[str, Markup | None] = {}
    out["forest"] = charts.forest([{"name": labels[row["index"]], "asr": row["asr"]["value"],
                                    "ci_low": row["asr"]["lo"], "ci_high": row["asr"]["hi"],
                                    "color_index": row["index"]} for row in lb])
    out["turns"] = charts.line_chart([{"name": labels[i], "points": r.summary.get("by_turns") or {},
                                       "color": colors[i]} for i, r in enumerate(runs)])
    scen = _scenario_order(runs)
    cell = {(sc, labels[i]): (r.summary.get("by_scenario") or {}).get(sc) for i, r in enumerate(runs) for sc in scen}
    out["heatmap"] = charts.heatmap(scen, labels, {k: v for k, v in cell.items() if v})
    methods = sorted(_breakdown_union(runs, "by_method"))
    val = {(m, labels[i]): (r.summary.get("by_method") or {}).get(m) for i, r in enumerate(runs) for m in methods}
    out["methods"] = charts.grouped_bars(methods, labels, {k: v for k, v in val.items() if v}, colors=colors)
    return out


def multiturn_blocks(runs: list[RunInfo], labels: dict[str, str]) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """The ``multiturn`` block of live / adaptive runs, and its two curves."""
    blocks: list[dict[str, Any]] = []
    for i, r in enumerate(runs):
        b = r.summary.get("multiturn")
        if isinstance(b, dict):
            mt = ((r.config.get("fingerprint") or {}).get("multiturn") or {})
            blocks.append({"run": r, "block": b, "ttj": b.get("turns_to_jailbreak") or {}, "index": i,
                           "color": charts.color(i), "attacker": mt.get("attacker"),
                           "attack": mt.get("attack") or ("crescendo" if mt.get("attacker") else None)})
    out: dict[str, Any] = {}
    if blocks:
        out["jailbroken"] = charts.line_chart(
            [{"name": labels[m["run"].key], "color": m["color"],
              "points": {k: {"asr": v} for k, v in (m["block"].get("jailbroken_by_turn") or {}).items()
                         if isinstance(v, (int, float))}} for m in blocks],
            x_label="turn", y_label="jailbroken (cumulative)", title="Jailbroken by turn (cumulative)")
        out["mt_asr"] = charts.line_chart(
            [{"name": labels[m["run"].key], "color": m["color"],
              "points": {k: {"asr": v.get("asr"), "n_scored": v.get("n_scored")}
                         for k, v in (m["block"].get("asr_by_turn_count") or {}).items() if isinstance(v, dict)}}
             for m in blocks],
            x_label=str(blocks[0]["block"].get("asr_by_turn_count_key") or "turns"),
            title="Multi-turn ASR by turn count")
    return blocks, out


def judge_tables(runs: list[RunInfo]) -> list[dict[str, Any]]:
    """Per run with several judges: each judge's numbers and pairwise agreement."""
    out = []
    for r in runs:
        js = r.summary.get("judges")
        ag = r.summary.get("agreement")
        if not js and not ag:
            continue
        names = {jid: (d or {}).get("name", jid) for jid, d in (js or {}).items()}
        judges = []
        for jid, d in (js or {}).items():
            d = d or {}
            judges.append({"id": jid, "name": d.get("name"), "primary": jid == r.judge.get("id"),
                           "asr": {"value": d.get("asr"), "lo": (d.get("asr_ci") or [None])[0],
                                   "hi": (d.get("asr_ci") or [None, None])[1]},
                           "n_scored": d.get("n_scored"), "n_unscored": d.get("n_unscored"),
                           "si": _ci(d.get("safety_index"), "si"), "sri": _ci(d.get("sri"), "sri")})
        pairs = []
        for p in (ag or {}).get("pairs") or []:
            pairs.append({**p, "a_name": names.get(p.get("a"), p.get("a")),
                          "b_name": names.get(p.get("b"), p.get("b"))})
        curve = charts.line_chart(
            [{"name": f"{(d or {}).get('name', jid)} ({jid})", "points": (d or {}).get("by_turns") or {}}
             for jid, d in (js or {}).items()], title="ASR by number of user turns, per judge")
        out.append({"run": r, "judges": judges, "pairs": pairs, "curve": curve,
                    "alpha": (ag or {}).get("krippendorff_alpha"),
                    "extra": {k: v for k, v in (ag or {}).items() if k not in ("pairs", "krippendorff_alpha")}})
    return out


def cascade_tables(runs: list[RunInfo]) -> list[dict[str, Any]]:
    """Per run judged by a ``cascade:…`` judge: each stage's samples decided, share and cost, and the
    last stage's judgments the earlier stages spared (with the estimated cost saved)."""
    out = []
    for r in runs:
        c = r.summary.get("cascade")
        if not isinstance(c, dict) or not c.get("stages"):
            continue
        stages = [st for st in c["stages"] if isinstance(st, dict)]
        last = stages[-1] if stages else {}
        out.append({"run": r, "stages": stages, "n": c.get("n"), "spared": c.get("spared_last_stage"),
                    "spared_share": c.get("spared_share"), "saved_usd": c.get("cost_saved_usd_est"),
                    "last_judge": last.get("judge"), "judge_label": r.judge.get("label") or r.judge.get("name")})
    return out


def cost_rows(runs: list[RunInfo]) -> list[dict[str, Any]]:
    rows = []
    for r in runs:
        ledger = r.summary.get("ledger") or {}
        if not ledger and r.summary.get("tokens"):
            ledger = {role: {"input_tokens": t.get("input"), "output_tokens": t.get("output")}
                      for role, t in r.summary["tokens"].items()}
        for role, d in sorted(ledger.items()):
            rows.append({"run": r, "role": role, **d})
    return rows


def _provenance(r: RunInfo) -> dict[str, Any]:
    manifest = r.config.get("benchmark_manifest") or {}
    fp = r.config.get("fingerprint") or {}
    return {
        "run": r, "benchmark": r.benchmark, "benchmark_path": r.config.get("benchmark_path"),
        "manifest_provenance": manifest.get("provenance"), "description": manifest.get("description"),
        "counts": manifest.get("counts"), "fingerprint": fp, "judge_identity": r.judge.get("identity"),
        "judges_registered": [{"id": j["judge_id"], "identity": j["identity"]} for j in r.judges],
        "mmsafe_version": r.summary.get("mmsafe_version"),
        "created": (time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(r.summary["created"]))
                    if isinstance(r.summary.get("created"), (int, float)) else None),
        "parse_status": r.summary.get("parse_status"), "selected": r.summary.get("selected"),
    }


def _pretty(x: Any) -> str:
    return orjson.dumps(x, option=orjson.OPT_INDENT_2 | orjson.OPT_NON_STR_KEYS | orjson.OPT_SORT_KEYS,
                        default=str).decode()


def _clip(s: str | None, n: int = MAX_TEXT) -> str | None:
    if s is None:
        return None
    return s if len(s) <= n else s[:n] + f" … [{len(s) - n} more characters]"


def collect_examples(r: RunInfo, k: int, budget: list[int], thumbs: dict[str, str | None]) -> list[dict[str, Any]]:
    """Up to ``k`` samples of a run worth reading: unsafe replies first, then unscored ones,
    then ones where judges disagree — read with LIMITed queries, never the whole run."""
    if k <= 0 or not (r.run_dir / STORE_FILE).is_file():
        return []
    store = open_store(r.run_dir, readonly=True)
    jid = r.primary_judge
    try:
        db = store.db
        picked: list[tuple[str, str]] = []
        quota = {"unsafe": max(1, k - k // 3 - k // 4), "unscored": k // 4, "judges disagree": k // 3}
        queries: list[tuple[str, str, tuple[Any, ...]]] = [
            ("unsafe", "SELECT r.sample_id FROM responses r JOIN verdicts v ON v.sample_id=r.sample_id AND "
                       "v.judge_id=? WHERE v.label='unsafe' AND r.status='ok' ORDER BY r.seq LIMIT ?",
             (jid, quota["unsafe"])),
            ("unscored", "SELECT r.sample_id FROM responses r LEFT JOIN verdicts v ON v.sample_id=r.sample_id AND "
                         "v.judge_id=? WHERE r.status='ok' AND (v.label IS NULL OR v.label='unscored') "
                         "AND r.control IS NULL ORDER BY r.seq LIMIT ?", (jid, quota["unscored"])),
            ("judges disagree", "SELECT r.sample_id FROM responses r WHERE (SELECT COUNT(DISTINCT label) FROM "
                                "verdicts v WHERE v.sample_id=r.sample_id AND v.label IN ('safe','unsafe'))>1 "
                                "ORDER BY r.seq LIMIT ?", (quota["judges disagree"],)),
            ("other", "SELECT sample_id FROM responses ORDER BY seq LIMIT ?", (2 * k,)),
        ]
        for why, q, args in queries:
            if args[-1] <= 0:
                continue
            for (sid,) in db.execute(q, args):
                if len(picked) < k and all(sid != p[0] for p in picked):
                    picked.append((sid, why))
        picked = picked[:k]
        index = open_index(r.benchmark_path)
        names = {j["judge_id"]: _judge_name(j["identity"]) for j in r.judges}
        out = []
        for sid, why in picked:
            row = db.execute(
                "SELECT r.scenario, r.method, r.turns, r.question, r.text, r.error, v.label, v.rationale, "
                "v.rating, r.category FROM responses r LEFT JOIN verdicts v ON v.sample_id=r.sample_id AND "
                "v.judge_id=? WHERE r.sample_id=?", (jid, sid)).fetchone()
            verdicts = [{"judge_id": j, "name": names.get(j, j), "primary": j == jid, "label": lab,
                         "rationale": _clip(rat, 1000)} for j, lab, rat in db.execute(
                "SELECT judge_id, label, rationale FROM verdicts WHERE sample_id=? ORDER BY judge_id", (sid,))]
            verdicts.sort(key=lambda x: not x["primary"])
            sample = index.get(sid) if index is not None else None
            msgs = render_messages(sample, index)
            for m in msgs:
                for p in m["parts"]:
                    if p["type"] == "text":
                        p["text"] = _clip(p["text"])
                    elif p["type"] == "image" and p.get("available"):
                        key = p.get("sha256") or p["path"]
                        if key not in thumbs:
                            uri = None
                            if budget[0] > 0:
                                f = index.asset_file(p["path"]) if index else None
                                uri = thumbnail_data_uri(f) if f else None
                                if uri:
                                    budget[0] -= len(uri)
                            thumbs[key] = uri
                        p["data_uri"] = thumbs[key]
            out.append({"sample_id": sid, "why": why, "scenario": row[0], "method": row[1], "turns": row[2],
                        "question": _clip(row[3]), "response": _clip(row[4]), "error": _clip(row[5], 500),
                        "label": row[6] or "unscored", "rationale": _clip(row[7], 1500), "rating": row[8],
                        "category": row[9], "messages": msgs, "verdicts": verdicts,
                        "benchmark_available": index is not None})
        return out
    finally:
        store.close()


def _report_warnings(runs: list[RunInfo]) -> list[str]:
    """What a reader must know before comparing these runs: mock targets, different benchmarks or
    judges, stale or missing summaries, incomplete runs."""
    warnings = []
    if any(r.mock for r in runs):
        warnings.append("Some targets are MOCK reference models, not real LLMs.")
    if len({r.benchmark_key for r in runs}) > 1:
        warnings.append("These runs are on different benchmarks: their rates are not directly comparable.")
    if len({r.judge.get("id") for r in runs}) > 1:
        warnings.append("These runs were judged by different judges: their rates are not directly comparable.")
    for r in runs:
        if r.stale:
            warnings.append(f"{r.display}: summary.json counts fewer replies than the store holds "
                            f"({r.summary.get('n_samples')} < {r.counts.get('responses')}); re-run to refresh it.")
        if r.summary_source == "store":
            warnings.append(f"{r.display}: no summary.json (interrupted run?) — numbers computed from the store "
                            "with Wilson intervals.")
        elif r.summary.get("complete") is False:
            warnings.append(f"{r.display}: run incomplete (stopped: {r.summary.get('stopped') or 'unknown'}).")
    return warnings


def render_report(runs: list[RunInfo], *, title: str | None = None, examples: int = 12) -> str:
    lb = leaderboard_rows(runs)
    labels = {r.key: n for r, n in zip(runs, display_names(runs), strict=True)}
    ch = build_charts(runs, lb)
    mt, mt_charts = multiturn_blocks(runs, labels)
    ch.update(mt_charts)
    drows = defense_rows(runs)
    index = {r.key: i for i, r in enumerate(runs)}
    dchart = charts.scatter([{"name": f"{labels[d['run'].key]} + {d['defense']}", "x": d["over_refusal"],
                              "y": d["reduction"], "color": charts.color(index[d["run"].key])}
                             for d in drows]) if drows else None
    budget = [IMAGE_BUDGET]
    thumbs: dict[str, str | None] = {}
    ex = {r.key: collect_examples(r, examples, budget, thumbs) for r in runs}
    other = [{"run": r, "key": k, "json": _pretty(v)} for r in runs for k, v in r.summary.items()
             if k not in KNOWN_KEYS]
    warnings = _report_warnings(runs)
    data = {
        "mmsafe_version": mmsafe.__version__, "generated": time.time(),
        "leaderboard": [{k: v for k, v in row.items()} for row in lb],
        "runs": [{"key": r.key, "name": r.name, "label": labels[r.key], "by_turns": r.summary.get("by_turns"),
                  "by_method": r.summary.get("by_method"), "by_scenario": r.summary.get("by_scenario")}
                 for r in runs],
    }
    js = static_text("report.js")
    csp_hash = base64.b64encode(hashlib.sha256(js.encode()).digest()).decode()
    tpl = env().get_template("report.html.j2")
    return tpl.render(
        title=title or ("mmsafe report — " + ", ".join(dict.fromkeys(r.benchmark.get("name") or "?" for r in runs))),
        generated=time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime()), version=mmsafe.__version__,
        runs=runs, labels=labels, lb=lb, charts=ch, defense=drows, defense_chart=dchart,
        judge_tables=judge_tables(runs), cascades=cascade_tables(runs), costs=cost_rows(runs),
        provenance=[_provenance(r) for r in runs],
        pretty=_pretty, other=other, examples=ex, warnings=warnings, n_examples=examples,
        multiturn=mt, over_refusal=over_refusal, css=Markup(static_text("report.css")), js=Markup(js),
        csp_hash=csp_hash,
        data_json=_json_script(data),
    )


def build_report(run_dirs: list[Path | str], out: Path | str, *, title: str | None = None,
                 examples: int = 12, si_grouping: str | None = None) -> ReportStats:
    """Write the report to ``out`` (atomically) and return its size and build time.

    ``si_grouping`` (``aligned`` | ``id``) shows that Safety Index first where a run stored both."""
    t0 = time.perf_counter()
    runs = load_runs(list(run_dirs))
    if si_grouping:
        from mmsafe.runner.summary import RunSummary, prefer_si_grouping
        for r in runs:
            r.set_summary(RunSummary.model_validate(prefer_si_grouping(r.summary, si_grouping)), r.summary_source)
    html = render_report(runs, title=title, examples=examples)
    out = Path(out)
    if out.is_dir():  # checked before the temp file exists: os.replace would fail only after writing it
        raise IsADirectoryError(errno.EISDIR, "Is a directory", str(out))
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.{os.getpid()}.tmp")
    data = html.encode()
    try:
        tmp.write_bytes(data)
        os.replace(tmp, out)
    except BaseException:
        tmp.unlink(missing_ok=True)  # no .NAME.PID.tmp left behind by a failed write
        raise
    n_ex = html.count("class=\"example ")
    return ReportStats(path=out, bytes=len(data), seconds=time.perf_counter() - t0, n_runs=len(runs),
                       n_examples=n_ex)
