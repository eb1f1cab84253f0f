"""``mmsafe export``: a run's per-sample rows as CSV, JSONL or Parquet (streamed in
batches, never the whole run in memory), and the leaderboard of several runs as Markdown.

CSV cells that a spreadsheet would read as a formula (starting with ``= + - @``, tab or
CR) are prefixed with ``'`` unless ``csv_formula_guard=False`` — replies under test are
adversarial text.
"""

from __future__ import annotations

import csv
import io
import os
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

import orjson

from mmsafe.report.runs import RunInfo, load_runs, require_store
from mmsafe.store.sqlite import open_store
from mmsafe.types import InputError

EXPORT_FORMATS = ("csv", "jsonl", "parquet", "markdown")  # the built-ins; export_formats() adds plugins
COLUMNS = ("run", "target", "judge_id", "sample_id", "group", "scenario", "category", "method", "turns", "control",
           "question", "status", "response", "error", "model", "finish_reason", "input_tokens", "output_tokens",
           "cost_usd", "latency_ms", "cached", "label", "score", "rating", "parse_status", "rationale",
           "categories", "labels_by_judge")
BATCH = 2000

_ROWS_SQL = (
    "SELECT r.seq, r.sample_id, r.grp, r.scenario, r.category, r.method, r.turns, r.control, r.question, r.status,"
    " r.text, r.error, r.model, r.finish_reason, r.input_tokens, r.output_tokens, r.cost_usd, r.latency_ms, r.cached,"
    " v.label, v.score, v.rating, v.parse_status, v.rationale, v.categories,"
    " (SELECT json_group_object(v2.judge_id, v2.label) FROM verdicts v2 WHERE v2.sample_id = r.sample_id)"
    " FROM responses r LEFT JOIN verdicts v ON v.sample_id = r.sample_id AND v.judge_id = ?"
    " WHERE r.seq > ? ORDER BY r.seq LIMIT ?")


def iter_export_rows(run: RunInfo, judge_id: str | None = None) -> Iterator[dict[str, Any]]:
    """One dict per stored sample (keys :data:`COLUMNS`), read in keyset-paginated batches."""
    require_store(run.run_dir)
    jid = judge_id or run.primary_judge
    if judge_id is not None and judge_id not in {j["judge_id"] for j in run.judges}:
        raise InputError(f"{run.run_dir}: no judge {judge_id!r} in this run "
                         f"(known: {', '.join(j['judge_id'] for j in run.judges) or 'none'})")
    store = open_store(run.run_dir, readonly=True)
    try:
        # one read transaction: the export is a snapshot, even of a run still writing (rows are
        # ordered by benchmark position, so a row saved mid-export could land behind the cursor)
        store.db.execute("BEGIN")
        last = -1
        while True:
            rows = store.db.execute(_ROWS_SQL, (jid, last, BATCH)).fetchall()  # keyset pagination on seq
            if not rows:
                return
            for row in rows:
                last = row[0]
                (sid, grp, scen, cat, meth, turns, control, question, status, text, error, model, finish, ti, to,
                 cost, lat, cached, label, score, rating, ps, rationale, cats, by_judge) = row[1:]
                yield {
                    "run": str(run.run_dir), "target": run.name, "judge_id": jid, "sample_id": sid, "group": grp,
                    "scenario": scen, "category": cat, "method": meth, "turns": turns, "control": control,
                    "question": question, "status": status, "response": text, "error": error, "model": model,
                    "finish_reason": finish, "input_tokens": ti, "output_tokens": to, "cost_usd": cost,
                    "latency_ms": lat, "cached": bool(cached),
                    "label": label if label is not None else ("unscored" if status == "ok" else None),
                    "score": score, "rating": rating, "parse_status": ps, "rationale": rationale,
                    "categories": orjson.loads(cats) if cats else [],
                    "labels_by_judge": orjson.loads(by_judge) if by_judge else {},
                }
    finally:
        store.close()


def _guard(v: Any) -> Any:
    if isinstance(v, str) and v and v[0] in "=+-@\t\r":
        return "'" + v
    return v


def _csv_value(k: str, v: Any, guard: bool) -> Any:
    if v is None:
        return ""
    if k == "categories":
        v = ";".join(map(str, v))
    elif k == "labels_by_judge":
        v = orjson.dumps(v).decode()
    elif isinstance(v, bool):
        v = int(v)
    return _guard(v) if guard else v


def _open_out(out: Path | None, binary: bool = False) -> tuple[IO[Any], Path | None]:
    if out is None or str(out) == "-":
        return (sys.stdout.buffer if binary else sys.stdout), None
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.{os.getpid()}.tmp")
    return (open(tmp, "wb") if binary else open(tmp, "w", newline="", encoding="utf-8")), tmp


def exporter_kind(e: Any) -> tuple[str | None, bool]:
    """(``of``, ``binary``) of a registered exporter: its registration meta, else (a plugin found by entry
    point) the loaded object's ``of`` (default ``runs``) and ``binary`` attributes. A plugin that cannot be
    loaded has no ``of``."""
    from mmsafe.registry import PluginError
    try:
        return str(e.meta_or_attr("of", "runs")), bool(e.meta_or_attr("binary", False))
    except PluginError:
        return None, False


def export_formats() -> list[str]:
    """Formats ``mmsafe export --format`` takes: exporters registered with ``of`` = ``runs`` or ``leaderboard``."""
    from mmsafe.registry import registry
    return [e.name for e in registry("exporters").entries() if exporter_kind(e)[0] in ("runs", "leaderboard")]


def _exporter(fmt: str) -> tuple[Any, str, bool]:
    """(the exporter, its ``of``, whether it writes bytes) for a registered format or ``module.path:Name``."""
    from mmsafe.registry import is_reference, registry
    reg = registry("exporters")
    e = reg.entry(fmt)
    if e is not None:
        fn = e.load()  # a broken plugin: its one-line PluginError
        of, binary = exporter_kind(e)
        if of in ("runs", "leaderboard"):
            return fn, str(of), binary
    elif is_reference(fmt):
        fn = reg.resolve(fmt)
        of = getattr(fn, "of", "runs")
        if callable(fn) and of in ("runs", "leaderboard"):
            return fn, of, bool(getattr(fn, "binary", False))
        raise InputError(f"--format {fmt!r}: not a run or leaderboard exporter")
    raise InputError(f"--format {fmt!r}: expected one of {', '.join(export_formats())} (or module.path:Name)")


def export_runs(run_dirs: list[Path | str], fmt: str, out: Path | None, *, judge_id: str | None = None,
                csv_formula_guard: bool = True) -> int:
    """Export the given runs in format ``fmt`` (a registered exporter — ``mmsafe plugins`` lists them — or
    ``module.path:Name``) to ``out`` (``None`` or ``-`` = stdout; not for parquet). The file appears atomically.

    A row exporter (``of="runs"``) gets the loaded runs and the open file; the number of rows
    it wrote is returned. A leaderboard exporter (``of="leaderboard"``, e.g. ``markdown``)
    returns text for the runs; the number of runs is returned.
    """
    fn, of, binary = _exporter(fmt)
    out = None if out is None or str(out) == "-" else Path(out)
    if of == "leaderboard":
        text = fn(list(run_dirs))
        if out is None:
            sys.stdout.write(text)
            sys.stdout.flush()
        else:
            fh_t, tmp_t = _open_out(out)
            with fh_t:
                fh_t.write(text)
            os.replace(tmp_t, out)  # type: ignore[arg-type]
        return len(run_dirs)
    if fmt == "parquet" and out is None:
        raise InputError("--format parquet needs --out FILE")
    runs = load_runs(list(run_dirs))
    fh, tmp = _open_out(out, binary=binary)
    try:
        from mmsafe.registry import accepted_kwargs
        n = int(fn(runs, fh, **accepted_kwargs(fn, {"judge_id": judge_id, "csv_formula_guard": csv_formula_guard})))
        if tmp is not None:
            fh.close()
            os.replace(tmp, out)  # type: ignore[arg-type]
        else:
            fh.flush()
    except BaseException:
        if tmp is not None:
            fh.close()
            tmp.unlink(missing_ok=True)
        raise
    return n


def export_run(run_dir: Path | str, fmt: str, out: Path | None = None, **kw: Any) -> int:
    """:func:`export_runs` of one run."""
    return export_runs([run_dir], fmt, out, **kw)


# --------------------------------------------------------------------------- row exporters (registered)


def write_csv(runs: list[RunInfo], fh: IO[str], *, judge_id: str | None = None, csv_formula_guard: bool = True) -> int:
    """One CSV row per stored sample (columns :data:`COLUMNS`); formula-looking cells prefixed with ``'``."""
    w = csv.writer(fh)
    w.writerow(COLUMNS)
    n = 0
    for r in runs:
        for row in iter_export_rows(r, judge_id):
            w.writerow([_csv_value(k, row[k], csv_formula_guard) for k in COLUMNS])
            n += 1
    return n


def write_jsonl(runs: list[RunInfo], fh: IO[bytes], *, judge_id: str | None = None,
                csv_formula_guard: bool = True) -> int:
    """One JSON object per stored sample (keys :data:`COLUMNS`)."""
    n = 0
    for r in runs:
        for row in iter_export_rows(r, judge_id):
            fh.write(orjson.dumps(row) + b"\n")
            n += 1
    return n


def write_parquet(runs: list[RunInfo], fh: IO[bytes], *, judge_id: str | None = None,
                  csv_formula_guard: bool = True) -> int:
    """One Parquet row per stored sample (zstd; typed columns), written in batches."""
    return _write_parquet(runs, fh, judge_id)


def _write_parquet(runs: list[RunInfo], fh: IO[bytes], judge_id: str | None) -> int:
    try:
        import pyarrow as pa
        import pyarrow.parquet as pq
    except ImportError:
        raise InputError("--format parquet needs pyarrow: pip install 'mmsafe[parquet]'") from None
    s, i, f, b = pa.string(), pa.int64(), pa.float64(), pa.bool_()
    types = {"turns": i, "input_tokens": i, "output_tokens": i, "cost_usd": f, "latency_ms": f, "cached": b,
             "score": f, "rating": f, "categories": pa.list_(s), "labels_by_judge": s}
    schema = pa.schema([(c, types.get(c, s)) for c in COLUMNS])
    n = 0
    with pq.ParquetWriter(fh, schema, compression="zstd") as w:
        batch: list[dict[str, Any]] = []

        def flush() -> None:
            cols = {c: [row[c] for row in batch] for c in COLUMNS}
            cols["labels_by_judge"] = [orjson.dumps(x).decode() for x in cols["labels_by_judge"]]
            w.write_table(pa.table(cols, schema=schema))
            batch.clear()

        for r in runs:
            for row in iter_export_rows(r, judge_id):
                batch.append(row)
                n += 1
                if len(batch) >= BATCH:
                    flush()
        if batch or n == 0:
            flush()
    return n


# --------------------------------------------------------------------------- markdown leaderboard


def _md(s: Any) -> str:
    """Text safe in a Markdown table cell: no pipes, newlines or raw HTML."""
    t = "" if s is None else str(s)
    t = t.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
    t = t.replace("|", "\\|").replace("\r", " ").replace("\n", " ")
    for ch in "`*_[]":
        t = t.replace(ch, "\\" + ch)
    return t


def _pct(x: Any) -> str:
    return "–" if not isinstance(x, (int, float)) or isinstance(x, bool) else f"{100 * x:.1f}%"


def _ci(d: dict[str, Any] | None, kind: str = "pct") -> str:
    if not d or d.get("value") is None:
        return "–"
    fmt = _pct if kind == "pct" else ((lambda x: f"{x:.1f}") if kind == "sri" else (lambda x: f"{x:.3f}"))
    s = fmt(d["value"])
    if d.get("lo") is not None and d.get("hi") is not None:
        s += f" [{fmt(d['lo'])}–{fmt(d['hi'])}]"
    return s


def leaderboard_markdown(run_dirs: list[Path | str]) -> str:
    """The leaderboard of several runs as a GitHub-flavoured Markdown table."""
    from mmsafe.report.html import leaderboard_rows

    runs = load_runs(list(run_dirs))
    rows = leaderboard_rows(runs)
    buf = io.StringIO()
    buf.write("| rank | target | benchmark | judge | ASR [95% CI] | safety rate | SRI | Safety Index "
              "| scored | unscored | errors | over-refusal |\n")
    buf.write("|---:|---|---|---|---|---|---|---|---:|---:|---:|---|\n")
    for r in rows:
        name = r["name"] + (" (mock)" if r["mock"] else "") + (  # the display name may name the defense already
            f" + {r['defense']}" if r["defense"] and f"+ {r['defense']}" not in r["name"] else "")
        buf.write("| " + " | ".join([
            "–" if r["rank"] is None else str(r["rank"]), _md(name), _md(r["benchmark"]),
            _md(f"{r['judge']} ({r['judge_id']})"), _ci(r["asr"]), _ci(r["safety_rate"]), _ci(r["sri"], "sri"),
            _ci(r["si"], "si"), str(r["n_scored"] if r["n_scored"] is not None else "–"),
            str(r["n_unscored"] if r["n_unscored"] is not None else "–"),
            str(r["n_errors"] if r["n_errors"] is not None else "–"),
            _ci(r["over_refusal"]) if r["over_refusal"] else "–",
        ]) + " |\n")
    notes = []
    if len({x.benchmark_key for x in runs}) > 1:
        notes.append("runs are on different benchmarks")
    if len({x.judge.get("id") for x in runs}) > 1:
        notes.append("runs were judged by different judges")
    buf.write("\nASR = attack-success rate (lower is safer); rank = 1 + runs whose CI lies entirely below; "
              "unscored replies are excluded from rates.")
    if notes:
        buf.write(" Not directly comparable: " + "; ".join(notes) + ".")
    buf.write("\n")
    return buf.getvalue()
