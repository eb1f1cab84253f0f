"""Measure a judge against human labels (``mmsafe calibrate``), cached by judge identity.

Formats (label convention: 1 = unsafe / jailbroken):

- ``csv``: columns ``question,response,label``;
- ``gptfuzz``: ``question`` (an index into ``gptfuzz_questions.csv`` next to the file:
  ``index,text``), ``Response``, ``label``;
- ``jailjudge``: ``question, answer, label`` (JailbreakEval / JAILJUDGE);
- ``xstest``: XSTest completions ``prompt, completion, final_label`` with ``type``; a
  ``contrast_*`` type is an unsafe prompt: label 1 iff ``1_full_compliance`` on a contrast
  prompt, else 0;
- ``harmbench``: HarmBench's human-labelled classifier validation format: ``behavior`` (or
  ``BehaviorID`` looked up in a behaviours CSV next to the file), ``generation``, and
  ``human_0..2`` (majority) or ``label``; CSV, JSON (list, or ``{BehaviorID: [rows]}``) or JSONL.

A bad file or row raises :class:`CalibrationDataError` naming ``file:line``.

Results are written to ``$MMSAFE_CACHE_DIR/calibration/<judge_id>-<data sha>.json``;
:func:`load_calibration` finds them again (e.g. for judge-error-corrected ASRs).
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mmsafe.judges.base import Judge
from mmsafe.runtime import run_async
from mmsafe.types import InputError, Message, Response, Sample

FORMATS = ("csv", "gptfuzz", "jailjudge", "xstest", "harmbench")
METRIC_KEYS = ("accuracy", "precision", "recall", "f1", "kappa", "sensitivity", "specificity")


class CalibrationDataError(InputError):
    """A calibration file or row that cannot be used (names file:line)."""


@dataclass
class LabelledRow:
    """One human-labelled (question, response) pair; ``label`` 1 = unsafe, ``line`` its line in the file."""

    question: str
    response: str
    label: int  # 1 = unsafe
    line: int


# --------------------------------------------------------------------------- readers


def _open_csv(path: Path) -> tuple[list[str], Any, Any]:
    try:
        fh = open(path, newline="", encoding="utf-8-sig")  # noqa: SIM115 (returned open: the reader closes it)
    except FileNotFoundError:
        raise CalibrationDataError(f"{path}: file not found") from None
    except (IsADirectoryError, PermissionError) as e:
        raise CalibrationDataError(f"{path}: cannot read ({type(e).__name__})") from None
    csv.field_size_limit(min(sys.maxsize, 2**31 - 1))
    reader = csv.reader(fh)
    try:
        header = next(reader)
    except StopIteration:
        fh.close()
        raise CalibrationDataError(f"{path}:1: empty file") from None
    except (csv.Error, UnicodeDecodeError) as e:
        fh.close()
        raise CalibrationDataError(f"{path}:1: not a readable CSV ({e})") from None
    return [h.strip() for h in header], reader, fh


def _iter_csv(path: Path) -> tuple[list[str], Any]:
    """-> header, generator of (line_number_of_record_start, {column: value})."""
    header, reader, fh = _open_csv(path)

    def gen() -> Iterator[tuple[int, dict[str, str]]]:
        with fh:
            start = reader.line_num + 1
            while True:
                try:
                    row = next(reader)
                except StopIteration:
                    return
                except (csv.Error, UnicodeDecodeError) as e:
                    raise CalibrationDataError(f"{path}:{start}: malformed CSV ({e})") from None
                if not row or all(not c.strip() for c in row):
                    start = reader.line_num + 1
                    continue
                if len(row) != len(header):
                    raise CalibrationDataError(f"{path}:{start}: {len(row)} fields, the header has {len(header)}")
                yield start, dict(zip(header, row))
                start = reader.line_num + 1

    return header, gen()


def _need(path: Path, header: list[str], cols: tuple[str, ...], fmt: str) -> None:
    missing = [c for c in cols if c not in header]
    if missing:
        raise CalibrationDataError(f"{path}:1: {fmt} format needs column(s) {', '.join(missing)} "
                                   f"(found {', '.join(header)})")


def _label01(v: Any, path: Path, line: int, col: str = "label") -> int:
    s = str(v).strip().lower()
    if s in ("1", "1.0", "true", "unsafe", "yes", "jailbroken", "harmful"):
        return 1
    if s in ("0", "0.0", "false", "safe", "no", "benign", "refused"):
        return 0
    raise CalibrationDataError(f"{path}:{line}: {col}: {v!r} is not a 0/1 label")


def read_csv_rows(path: Path) -> list[LabelledRow]:
    """Rows of mmsafe's own CSV format: columns ``question``, ``response``, ``label`` (0/1)."""
    header, rows = _iter_csv(path)
    _need(path, header, ("question", "response", "label"), "csv")
    return [LabelledRow(r["question"], r["response"], _label01(r["label"], path, ln), ln) for ln, r in rows]


def read_jailjudge(path: Path) -> list[LabelledRow]:
    """Rows of a JailJudge CSV: columns ``question``, ``answer``, ``label``."""
    header, rows = _iter_csv(path)
    _need(path, header, ("question", "answer", "label"), "jailjudge")
    return [LabelledRow(r["question"], r["answer"], _label01(r["label"], path, ln), ln) for ln, r in rows]


def read_gptfuzz(path: Path) -> list[LabelledRow]:
    """Rows of GPTFuzz's labelled CSV (``question`` may index ``gptfuzz_questions.csv`` beside it)."""
    header, rows = _iter_csv(path)
    _need(path, header, ("question", "Response", "label"), "gptfuzz")
    qpath = path.with_name("gptfuzz_questions.csv")
    questions: dict[str, str] = {}
    if qpath.exists():
        qh, qrows = _iter_csv(qpath)
        _need(qpath, qh, ("index", "text"), "gptfuzz questions")
        questions = {r["index"].strip(): r["text"] for _, r in qrows}
    out = []
    for ln, r in rows:
        q = r["question"].strip()
        if questions:
            if q not in questions:
                raise CalibrationDataError(f"{path}:{ln}: question index {q!r} not in {qpath.name}")
            q = questions[q]
        out.append(LabelledRow(q, r["Response"], _label01(r["label"], path, ln), ln))
    return out


def read_xstest(path: Path) -> list[LabelledRow]:
    """Rows of XSTest's labelled completions (``prompt``, ``completion``, ``final_label``)."""
    header, rows = _iter_csv(path)
    _need(path, header, ("type", "prompt", "completion", "final_label"), "xstest")
    out = []
    for ln, r in rows:
        fl = r["final_label"].strip()
        if fl[:2] not in ("1_", "2_", "3_"):
            raise CalibrationDataError(f"{path}:{ln}: final_label: {fl!r} is not 1_full_compliance, "
                                       "2_full_refusal or 3_partial_refusal")
        unsafe_prompt = r["type"].strip().startswith("contrast")
        out.append(LabelledRow(r["prompt"], r["completion"], int(unsafe_prompt and fl.startswith("1_")), ln))
    return out


def _harmbench_label(d: dict[str, Any], path: Path, line: int) -> int:
    humans = [d[k] for k in ("human_0", "human_1", "human_2") if k in d and str(d[k]).strip() != ""]
    if humans:
        votes = [_label01(h, path, line, "human_*") for h in humans]
        return int(sum(votes) * 2 > len(votes))
    for k in ("label", "human_label", "majority"):
        if k in d:
            return _label01(d[k], path, line, k)
    raise CalibrationDataError(f"{path}:{line}: no human_0..2 or label field")


def _behaviour_lookup(path: Path) -> dict[str, str]:
    for name in ("harmbench_behaviors_text_all.csv", "behaviors_text_all.csv", "harmbench_behaviors_text_val.csv"):
        p = path.with_name(name)
        if p.exists():
            header, rows = _iter_csv(p)
            if "BehaviorID" in header and "Behavior" in header:
                return {r["BehaviorID"]: r["Behavior"] for _, r in rows}
    return {}


def read_harmbench(path: Path) -> list[LabelledRow]:
    """Rows of HarmBench's classifier validation set (JSON/JSONL, or CSV with a ``generation`` column)."""
    lookup: dict[str, str] | None = None

    def row_of(d: dict[str, Any], line: int, bid: str | None = None) -> LabelledRow:
        nonlocal lookup
        if not isinstance(d, dict):
            raise CalibrationDataError(f"{path}:{line}: expected an object")
        gen = d.get("generation", d.get("response"))
        if gen is None:
            raise CalibrationDataError(f"{path}:{line}: no generation field")
        q = d.get("behavior") or d.get("Behavior")
        bid = bid or d.get("BehaviorID") or d.get("behavior_id")
        if not q and bid:
            if lookup is None:
                lookup = _behaviour_lookup(path)
            q = lookup.get(str(bid), str(bid))
        if not q:
            raise CalibrationDataError(f"{path}:{line}: no behavior or BehaviorID field")
        return LabelledRow(str(q), str(gen), _harmbench_label(d, path, line), line)

    suffix = path.suffix.lower()
    if suffix == ".csv":
        header, rows = _iter_csv(path)
        _need(path, header, ("generation",), "harmbench")
        return [row_of(r, ln) for ln, r in rows]
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise CalibrationDataError(f"{path}: file not found") from None
    if suffix == ".jsonl":
        out = []
        for ln, line in enumerate(text.splitlines(), 1):
            if line.strip():
                try:
                    out.append(row_of(json.loads(line), ln))
                except json.JSONDecodeError as e:
                    raise CalibrationDataError(f"{path}:{ln}: not valid JSON ({e.msg})") from None
        return out
    try:
        data = json.loads(text)
    except json.JSONDecodeError as e:
        raise CalibrationDataError(f"{path}:{e.lineno}: not valid JSON ({e.msg})") from None
    out = []
    if isinstance(data, list):
        return [row_of(d, i + 1) for i, d in enumerate(data)]
    if isinstance(data, dict):
        i = 0
        for bid, items in data.items():
            for d in items if isinstance(items, list) else [items]:
                i += 1
                out.append(row_of(d, i, bid))
        return out
    raise CalibrationDataError(f"{path}:1: expected a JSON list or an object keyed by BehaviorID")


READERS: dict[str, Callable[[Path], list[LabelledRow]]] = {
    "csv": read_csv_rows, "gptfuzz": read_gptfuzz, "jailjudge": read_jailjudge, "xstest": read_xstest,
    "harmbench": read_harmbench,
}


def detect_format(path: Path) -> str:
    """The calibration format of a file, from its suffix or CSV header (see ``FORMATS``)."""
    if path.suffix.lower() in (".json", ".jsonl"):
        return "harmbench"
    header, _, fh = _open_csv(path)
    fh.close()
    h = set(header)
    if {"question", "response", "label"} <= h:
        return "csv"
    if {"question", "Response", "label"} <= h:
        return "gptfuzz"
    if {"prompt", "completion", "final_label"} <= h:
        return "xstest"
    if {"question", "answer", "label"} <= h:
        return "jailjudge"
    if "generation" in h:
        return "harmbench"
    raise CalibrationDataError(f"{path}:1: cannot tell the format from the header ({', '.join(header)}); "
                               f"pass --format ({'|'.join(FORMATS)})")


def read_labelled(path: Path, fmt: str | None = None) -> tuple[str, list[LabelledRow]]:
    """``(format, rows)`` of a labelled file; ``fmt=None`` detects the format."""
    path = Path(path)
    if not path.exists():
        raise CalibrationDataError(f"{path}: file not found")
    fmt = fmt or detect_format(path)
    if fmt not in READERS:
        raise CalibrationDataError(f"--format {fmt!r}: choose one of {', '.join(FORMATS)}")
    rows = READERS[fmt](path)
    if not rows:
        raise CalibrationDataError(f"{path}: no labelled rows")
    return fmt, rows


# --------------------------------------------------------------------------- cache


def calibration_dir() -> Path:
    """Where calibration records are cached (under mmsafe's cache directory)."""
    from mmsafe.models.engine import default_cache_dir
    return default_cache_dir() / "calibration"


def data_sha(path: Path, fmt: str) -> str:
    """A short hash of a calibration file's content and format (its cache key)."""
    h = hashlib.sha256(fmt.encode() + b"\0")
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    if fmt == "gptfuzz" and path.with_name("gptfuzz_questions.csv").exists():
        h.update(path.with_name("gptfuzz_questions.csv").read_bytes())
    return h.hexdigest()[:16]


def calibration_path(judge_id: str, sha: str) -> Path:
    """The cache file of a judge's calibration on one data set."""
    return calibration_dir() / f"{judge_id}-{sha}.json"


def load_calibration(judge_id: str, data_sha: str | None = None) -> dict[str, Any] | None:
    """The latest stored calibration of this judge (on this data set when ``data_sha`` is given)."""
    d = calibration_dir()
    if not d.is_dir():
        return None
    pattern = f"{judge_id}-{data_sha}.json" if data_sha else f"{judge_id}-*.json"
    best: tuple[float, dict[str, Any]] | None = None
    for p in d.glob(pattern):
        try:
            rec = json.loads(p.read_text())
        except (OSError, ValueError):
            continue
        t = float(rec.get("created", 0))
        if best is None or t > best[0]:
            best = (t, rec)
    return best[1] if best else None


# --------------------------------------------------------------------------- run


def _jsonable(x: Any) -> Any:
    if isinstance(x, tuple):
        return [_jsonable(v) for v in x]
    if isinstance(x, float):
        return round(x, 6)
    if isinstance(x, dict):
        return {k: _jsonable(v) for k, v in x.items()}
    if isinstance(x, list):
        return [_jsonable(v) for v in x]
    return x


async def calibrate(judge: Judge, path: Path, fmt: str | None = None, *, concurrency: int = 16,
                    use_cache: bool = True, force: bool = False, limit: int | None = None,
                    seed: int = 0) -> dict[str, Any]:
    """Run ``judge`` over the labelled rows and compare with the human labels."""
    from mmsafe import metrics
    from mmsafe.models.engine import CostLedger, ResponseCache, default_cache_dir

    path = Path(path)
    fmt, rows = read_labelled(path, fmt)
    if limit is not None:
        rows = rows[:limit]
    sha = data_sha(path, fmt) + (f"-n{limit}" if limit is not None else "")
    judge_id = judge.identity.id
    cpath = calibration_path(judge_id, sha)
    if use_cache and not force and cpath.exists():
        try:
            cached: dict[str, Any] = json.loads(cpath.read_text())
            cached["cached"] = True
            return cached
        except (OSError, ValueError):
            pass
    ledger = CostLedger()
    cache = ResponseCache(default_cache_dir() / "responses.sqlite") if use_cache else None
    if hasattr(judge, "bind"):
        judge.bind(ledger=ledger, cache=cache)
    items = []
    for r in rows:
        q = r.question.strip() or "(no question given)"
        s = Sample(id=f"row{r.line}", question=q, messages=[Message(role="user", content=q)])
        items.append((s, Response(sample_id=s.id, text=r.response)))
    t0 = time.perf_counter()
    await judge.start()
    try:
        results = await judge.judge_many(items, None, concurrency=concurrency)
    finally:
        await judge.close()
        if cache is not None:
            cache.close()
    elapsed = time.perf_counter() - t0
    preds = [v.label for v, _ in results]
    truth = ["unsafe" if r.label else "safe" for r in rows]
    m = metrics.binary_metrics(truth, preds, groups=[r.question for r in rows], seed=seed)
    parse: dict[str, int] = {}
    for v, _ in results:
        parse[v.parse_status] = parse.get(v.parse_status, 0) + 1
    rec: dict[str, Any] = {
        "judge_id": judge_id, "judge": judge.identity.name, "identity": judge.identity.model_dump(),
        "data": str(path), "format": fmt, "data_sha": sha, "created": time.time(),
        "elapsed_s": round(elapsed, 3), "judgments_per_s": round(len(rows) / elapsed, 1) if elapsed else None,
        "cost_usd": round(ledger.total_cost, 6), "parse_status": parse, "cached": False,
        **_jsonable(m),
    }
    rec["unscored"] = rec.get("n_unscored", 0)
    rec["abstained"] = parse.get("abstained", 0)  # a confident-band abstention: unscored, never an error or safe
    if judge.identity.kind == "cascade":
        rec["cascade"] = cascade_stats(judge, [v for v, _ in results], truth)
    if parse.get("error"):
        # endpoint failures are not a property of the judge: measure again next time
        rec["not_cached"] = f"{parse['error']} judgment(s) failed on the endpoint"
        return rec
    try:
        cpath.parent.mkdir(parents=True, exist_ok=True)
        tmp = cpath.with_suffix(".tmp")
        tmp.write_text(json.dumps(rec, indent=2))
        tmp.replace(cpath)
        rec["cache_path"] = str(cpath)
    except OSError:
        pass
    return rec


def cascade_stats(judge: Judge, verdicts: list[Any], truth: list[str]) -> dict[str, Any]:
    """Per stage of a cascade judge: the rows it decided, their share, its accuracy on them (against the
    human labels) and their cost; and the last stage's judgments the earlier stages spared."""
    specs = [str(x) for x in (judge.identity.settings.get("specs") or [])]
    n_stages = max(len(specs), 1)
    decided = [0] * n_stages
    correct = [0] * n_stages
    scored = [0] * n_stages
    cost = [0.0] * n_stages
    for v, t in zip(verdicts, truth, strict=True):
        c = (v.extra or {}).get("cascade")
        if not isinstance(c, dict) or not isinstance(c.get("stage"), int) or not 0 <= c["stage"] < n_stages:
            continue
        i = c["stage"]
        decided[i] += 1
        cost[i] += float(c.get("cost_usd") or 0.0)
        if v.label in ("safe", "unsafe"):
            scored[i] += 1
            correct[i] += v.label == t
    n = sum(decided)
    stages = [{"stage": i, "judge": specs[i] if i < len(specs) else None, "decided": decided[i],
               "share": round(decided[i] / n, 6) if n else None, "n_scored": scored[i],
               "accuracy": round(correct[i] / scored[i], 6) if scored[i] else None, "cost_usd": round(cost[i], 6)}
              for i in range(n_stages)]
    spared = n - decided[-1]
    return {"stages": stages, "n": n, "spared_last_stage": spared,
            "spared_share": round(spared / n, 6) if n else None}


def calibrate_sync(judge: Judge, path: Path, fmt: str | None = None, **kw: Any) -> dict[str, Any]:
    """:func:``calibrate`` run to completion on a fresh event loop."""
    return run_async(calibrate(judge, path, fmt, **kw))


def format_table(rec: dict[str, Any]) -> str:
    """A plain-text report of a calibration record."""
    buf = io.StringIO()
    buf.write(f"judge {rec['judge']} ({rec['judge_id']}) on {rec['data']} [{rec['format']}]\n")
    buf.write(f"n={rec['n']} scored={rec['n_scored']} unscored={rec['n_unscored']} "
              f"coverage={_pct(rec.get('coverage'))}\n")
    for k in METRIC_KEYS:
        ci = rec.get(k + "_ci")
        ci_txt = f"  [{_num(ci[0])}, {_num(ci[1])}]" if ci else ""
        buf.write(f"{k:<12} {_num(rec.get(k))}{ci_txt}\n")
    buf.write(f"tp={rec['tp']} fp={rec['fp']} tn={rec['tn']} fn={rec['fn']}")
    unscored = {k: v for k, v in (rec.get("parse_status") or {}).items() if k != "ok" and v}
    if unscored:
        buf.write("\nunscored by status: " + ", ".join(f"{k} {v}" for k, v in sorted(unscored.items())))
    cas = rec.get("cascade")
    if isinstance(cas, dict) and cas.get("stages"):
        buf.write("\ncascade stage  decided  share   accuracy  cost      judge")
        for st in cas["stages"]:
            buf.write(f"\n  {st['stage'] + 1:<12} {st['decided']:<8} {_pct(st.get('share')):<7} "
                      f"{_num(st.get('accuracy')):<9} ${st.get('cost_usd') or 0:<8.4f} {st.get('judge') or '?'}")
        buf.write(f"\nthe last stage was spared {cas['spared_last_stage']} of {cas['n']} judgments "
                  f"({_pct(cas.get('spared_share'))})")
    return buf.getvalue()


def _num(x: Any) -> str:
    return "—" if x is None else f"{x:.3f}"


def _pct(x: Any) -> str:
    return "—" if x is None else f"{100 * x:.1f}%"
