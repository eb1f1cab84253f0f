"""``mmsafe view RUN_DIR…``: a local, read-only web viewer over run stores (aiohttp).

- Bound to 127.0.0.1 by default; requests whose ``Host`` is not a loopback name (or the
  host it was bound to) are refused, so a web page cannot reach it by DNS rebinding.
- Only GET/HEAD; the stores are opened ``mode=ro``; nothing is written.
- Sample lists are one LIMIT/OFFSET query (plus a COUNT) per request; a sample page reads
  one response, its verdicts and one line of the benchmark's ``samples.jsonl``.
- Images are served only from the benchmark's own directory, after the same path checks
  the runner uses (no ``..``, no absolute path, no symlink out, raster/audio types only).
- Every page is rendered by Jinja2 with autoescape, under a CSP that allows scripts only
  from ``/static/``: a reply holding markup is shown as text and cannot run.
"""

from __future__ import annotations

import math
import socket
import sqlite3
import threading
import time
from array import array
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import orjson
from aiohttp import web

from mmsafe.report.runs import RunInfo, _judge_name, display_names, load_runs
from mmsafe.report.samples import SampleIndex, mime_of, open_index, render_messages
from mmsafe.report.templating import env, static_text
from mmsafe.store.sqlite import STORE_FILE
from mmsafe.types import InputError

TEMPLATES = ("viewer_index.html.j2", "viewer_run.html.j2", "viewer_sample.html.j2", "viewer_compare.html.j2",
             "viewer_compare_sample.html.j2")
PER_PAGE = 50
MAX_PER_PAGE = 500
SNIPPET = 200
VERDICTS = ("unsafe", "safe", "unscored", "error")
DISAGREE = ("judges", "jurors", "any")
LOOPBACK = {"127.0.0.1", "localhost", "::1", "[::1]"}
VIEWER: web.AppKey[Viewer] = web.AppKey("viewer")
ALLOWED_HOSTS: web.AppKey[set[str] | None] = web.AppKey("allowed_hosts")
CSP = ("default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; media-src 'self'; "
       "connect-src 'self'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'")


def _connect(path: Path) -> sqlite3.Connection:
    db = sqlite3.connect(f"file:{path}?mode=ro", uri=True, isolation_level=None, check_same_thread=False)
    db.execute("PRAGMA query_only=1")
    return db


class SeqCache:
    """The ordered ``seq`` numbers of the samples matching a filter: one scan per filter,
    after which the count and every page are slices. Entries are dropped when the store
    changes (``PRAGMA data_version`` moves when another connection — a run still
    writing — commits); at most ``size`` filters are kept (8 bytes per matching sample)."""

    def __init__(self, db: sqlite3.Connection, schemas: list[str], size: int = 16):
        self.db, self.schemas, self.size = db, schemas, size
        self._cache: OrderedDict[tuple[str, tuple[Any, ...]], tuple[tuple[int, ...], array]] = OrderedDict()

    def version(self) -> tuple[int, ...]:
        """The stores' SQLite data versions (they change when another connection commits)."""
        return tuple(self.db.execute(f"PRAGMA {s}.data_version").fetchone()[0] for s in self.schemas)

    def get(self, sql: str, args: list[Any]) -> array:
        """The matching ``seq`` numbers for a query (cached until a store changes)."""
        key = (sql, tuple(args))
        v = self.version()
        hit = self._cache.get(key)
        if hit is not None and hit[0] == v:
            self._cache.move_to_end(key)
            return hit[1]
        seqs = array("q", (r[0] for r in self.db.execute(sql, args)))
        self._cache[key] = (v, seqs)
        self._cache.move_to_end(key)
        while len(self._cache) > self.size:
            self._cache.popitem(last=False)
        return seqs


class RunView:
    """One run opened for the viewer: a read-only connection, its facets and sample index."""

    def __init__(self, info: RunInfo, indexes: dict[str, SampleIndex | None]):
        self.info = info
        self.key = info.key
        self.label = info.name
        path = info.run_dir / STORE_FILE
        if not path.is_file():
            raise InputError(f"{info.run_dir}: no run store ({STORE_FILE}); the viewer needs one")
        self.db = _connect(path)
        self.seqs = SeqCache(self.db, ["main"])
        self.judge_ids = [j["judge_id"] for j in info.judges]
        self.judge_names = {j["judge_id"]: _judge_name(j["identity"]) for j in info.judges}
        self.primary = info.primary_judge or (self.judge_ids[0] if self.judge_ids else None)
        self.facets = {
            "scenario": [(r[0], r[1]) for r in self.db.execute(
                "SELECT scenario, COUNT(*) FROM responses GROUP BY scenario ORDER BY scenario")],
            "method": [(r[0] or "none", r[1]) for r in self.db.execute(
                "SELECT method, COUNT(*) FROM responses GROUP BY method ORDER BY method")],
            "turns": [(r[0], r[1]) for r in self.db.execute(
                "SELECT turns, COUNT(*) FROM responses GROUP BY turns ORDER BY turns")],
        }
        bp = info.benchmark_path
        k = str(bp) if bp else ""
        if k not in indexes:
            indexes[k] = open_index(bp)
        self.index = indexes[k]

    # ------------------------------------------------------------------ queries
    def where(self, f: dict[str, Any], alias: str = "r", valias: str = "v") -> tuple[str, list[Any]]:
        """The SQL WHERE clause and arguments for the viewer's filters (scenario, verdict, search, ...)."""
        cl: list[str] = []
        args: list[Any] = []
        r, v = alias, valias
        if f.get("scenario"):
            cl.append(f"{r}.scenario = ?")
            args.append(f["scenario"])
        if f.get("method"):
            if f["method"] == "none":
                cl.append(f"{r}.method IS NULL")
            else:
                cl.append(f"{r}.method = ?")
                args.append(f["method"])
        if f.get("turns") is not None:
            cl.append(f"{r}.turns = ?")
            args.append(f["turns"])
        verdict = f.get("verdict")
        if verdict in ("unsafe", "safe"):
            cl.append(f"{r}.status = 'ok' AND {v}.label = ?")
            args.append(verdict)
        elif verdict == "unscored":
            cl.append(f"{r}.status = 'ok' AND ({v}.label IS NULL OR {v}.label = 'unscored')")
        elif verdict == "error":
            cl.append(f"{r}.status != 'ok'")
        if f.get("control") == "only":
            cl.append(f"{r}.control IS NOT NULL")
        elif f.get("control") == "exclude":
            cl.append(f"{r}.control IS NULL")
        dis = f.get("disagree")
        judges_split = (f"(SELECT COUNT(DISTINCT d.label) FROM verdicts d WHERE d.sample_id = {r}.sample_id "
                        f"AND d.label IN ('safe','unsafe')) > 1")
        jurors_split = (f"EXISTS (SELECT 1 FROM verdicts j WHERE j.sample_id = {r}.sample_id AND j.extra IS NOT NULL"
                        f" AND COALESCE(json_extract(j.extra, '$.votes.unsafe'), 0) > 0"
                        f" AND COALESCE(json_extract(j.extra, '$.votes.safe'), 0) > 0)")
        if dis == "judges":
            cl.append(judges_split)
        elif dis == "jurors":
            cl.append(jurors_split)
        elif dis == "any":
            cl.append(f"({judges_split} OR {jurors_split})")
        if f.get("q"):
            like = "%" + f["q"].replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") + "%"
            cl.append(f"({r}.sample_id LIKE ? ESCAPE '\\' OR {r}.question LIKE ? ESCAPE '\\' "
                      f"OR {r}.text LIKE ? ESCAPE '\\')")
            args += [like, like, like]
        return (" WHERE " + " AND ".join(cl)) if cl else "", args

    def list_samples(self, f: dict[str, Any]) -> dict[str, Any]:
        """One page of the samples matching the filters, with the total count."""
        judge = f.get("judge") or self.primary
        where, args = self.where(f)
        frm = " FROM responses r LEFT JOIN verdicts v ON v.sample_id = r.sample_id AND v.judge_id = ?"
        seqs = self.seqs.get("SELECT r.seq" + frm + where + " ORDER BY r.seq", [judge, *args])
        total = len(seqs)
        per = f["per_page"]
        pages = max(1, math.ceil(total / per))
        page = min(f["page"], pages)
        chunk = list(seqs[(page - 1) * per: page * per])
        rows = self.db.execute(
            "SELECT r.sample_id, r.scenario, r.method, r.turns, r.status, r.control, substr(r.question, 1, ?),"
            " substr(COALESCE(r.text, r.error, ''), 1, ?), v.label, v.rating, v.parse_status,"
            " (SELECT COUNT(DISTINCT d.label) FROM verdicts d WHERE d.sample_id = r.sample_id"
            "  AND d.label IN ('safe','unsafe')) > 1" + frm
            + f" WHERE r.seq IN ({','.join('?' * len(chunk))}) ORDER BY r.seq",
            [SNIPPET, SNIPPET, judge, *chunk]).fetchall() if chunk else []
        items = [{"sample_id": x[0], "scenario": x[1], "method": x[2] or "none", "turns": x[3], "status": x[4],
                  "control": x[5], "question": x[6], "reply": x[7],
                  "label": ("error" if x[4] != "ok" else (x[8] or "unscored")), "rating": x[9],
                  "parse_status": x[10], "judges_disagree": bool(x[11])} for x in rows]
        return {"run": self.key, "judge": judge, "total": total, "page": page, "pages": pages, "per_page": per,
                "items": items}

    def sample(self, sample_id: str) -> dict[str, Any] | None:
        """One sample's stored response and metadata (with its neighbours' ids), or None."""
        row = self.db.execute(
            "SELECT sample_id, grp, scenario, category, method, turns, question, status, text, error, model,"
            " finish_reason, input_tokens, output_tokens, cost_usd, latency_ms, attempts, cached, extra, control, seq"
            " FROM responses WHERE sample_id = ?", (sample_id,)).fetchone()
        if row is None:
            return None
        keys = ("sample_id", "group", "scenario", "category", "method", "turns", "question", "status", "response",
                "error", "model", "finish_reason", "input_tokens", "output_tokens", "cost_usd", "latency_ms",
                "attempts", "cached", "response_extra", "control", "seq")
        d = dict(zip(keys, row))
        d["response_extra"] = _loads(d["response_extra"])
        d["verdicts"] = self.verdicts(sample_id)
        prev = self.db.execute("SELECT sample_id FROM responses WHERE seq < ? ORDER BY seq DESC LIMIT 1",
                               (d["seq"],)).fetchone()
        nxt = self.db.execute("SELECT sample_id FROM responses WHERE seq > ? ORDER BY seq LIMIT 1",
                              (d["seq"],)).fetchone()
        d["prev"], d["next"] = (prev[0] if prev else None), (nxt[0] if nxt else None)
        return d

    def verdicts(self, sample_id: str) -> list[dict[str, Any]]:
        """Every judge's verdict on a sample, the primary judge first."""
        out = []
        for (jid, label, score, rating, ps, rationale, raw, cats, cost, ti, to, _created, extra) in self.db.execute(
                "SELECT judge_id, label, score, rating, parse_status, rationale, raw, categories, cost_usd,"
                " input_tokens, output_tokens, created, extra FROM verdicts WHERE sample_id = ?", (sample_id,)):
            raw_v = _loads(raw)
            extra_v = _loads(extra)
            jurors = [x for x in (raw_v or []) if isinstance(x, dict) and "juror" in x]
            other_raw = [x for x in (raw_v or []) if not (isinstance(x, dict) and "juror" in x)]
            out.append({"judge_id": jid, "name": self.judge_names.get(jid, jid), "primary": jid == self.primary,
                        "label": label, "score": score, "rating": rating, "parse_status": ps,
                        "rationale": rationale, "categories": _loads(cats) or [], "cost_usd": cost,
                        "input_tokens": ti, "output_tokens": to, "jurors": jurors,
                        "raw_json": _pretty(other_raw) if other_raw else None,
                        "extra_json": _pretty(extra_v) if extra_v else None,
                        "votes": (extra_v or {}).get("votes") if isinstance(extra_v, dict) else None})
        out.sort(key=lambda x: (not x["primary"], x["name"]))
        return out

    def has(self, sample_id: str) -> bool:
        """True when the run stored a response for the sample."""
        return self.db.execute("SELECT 1 FROM responses WHERE sample_id = ?", (sample_id,)).fetchone() is not None


def _loads(s: str | None) -> Any:
    if not s:
        return None
    try:
        return orjson.loads(s)
    except orjson.JSONDecodeError:
        return s


def _pretty(x: Any) -> str:
    return orjson.dumps(x, option=orjson.OPT_INDENT_2 | orjson.OPT_NON_STR_KEYS, default=str).decode()


# --------------------------------------------------------------------------- request parsing


def parse_filters(q: Any, rv: RunView | None = None) -> dict[str, Any]:
    """Filters from a query string; invalid values raise 400."""
    def opt(name: str) -> str | None:
        v = q.get(name, "")
        return v if v != "" else None

    f: dict[str, Any] = {"scenario": opt("scenario"), "method": opt("method"), "verdict": opt("verdict"),
                         "disagree": opt("disagree"), "control": opt("control"), "q": opt("q"),
                         "judge": opt("judge")}
    try:
        f["turns"] = int(q["turns"]) if q.get("turns") else None
        f["page"] = max(1, int(q.get("page") or 1))
        f["per_page"] = min(MAX_PER_PAGE, max(1, int(q.get("per_page") or PER_PAGE)))
    except ValueError:
        raise web.HTTPBadRequest(text="turns, page and per_page must be integers") from None
    if f["verdict"] not in (None, *VERDICTS):
        raise web.HTTPBadRequest(text=f"verdict must be one of {', '.join(VERDICTS)}")
    if f["disagree"] not in (None, *DISAGREE):
        raise web.HTTPBadRequest(text=f"disagree must be one of {', '.join(DISAGREE)}")
    if f["control"] not in (None, "only", "exclude"):
        raise web.HTTPBadRequest(text="control must be only or exclude")
    if f["judge"] is not None and rv is not None and f["judge"] not in rv.judge_ids:
        raise web.HTTPBadRequest(text="unknown judge")
    return f


def _qs(f: dict[str, Any], **over: Any) -> str:
    d = {k: v for k, v in {**f, **over}.items() if v is not None and v != "" and k != "per_page"}
    if over.get("per_page") or (f.get("per_page") and f["per_page"] != PER_PAGE):
        d["per_page"] = over.get("per_page") or f["per_page"]
    if d.get("page") == 1:
        d.pop("page")
    return urlencode(d)


# --------------------------------------------------------------------------- the app


class Viewer:
    """The runs a viewer serves (read-only), and the two-run comparisons between them."""

    def __init__(self, run_dirs: list[Path | str]):
        self.infos = load_runs(list(run_dirs))
        indexes: dict[str, SampleIndex | None] = {}
        self.runs = {info.key: RunView(info, indexes) for info in self.infos}
        for info, name in zip(self.infos, display_names(self.infos), strict=True):
            self.runs[info.key].label = name
        self._compare: dict[tuple[str, str], sqlite3.Connection] = {}
        self._compare_seqs: dict[tuple[str, str], SeqCache] = {}

    def run(self, key: str) -> RunView:
        """The run with this key; a 404 when there is none."""
        rv = self.runs.get(key)
        if rv is None:
            raise web.HTTPNotFound(text="no such run")
        return rv

    def comparable(self, a: RunView, b: RunView) -> bool:
        """True when two runs used the same benchmark (so their samples pair up)."""
        return a.info.benchmark_key == b.info.benchmark_key

    def compare_db(self, a: RunView, b: RunView) -> sqlite3.Connection:
        """A connection with run ``a``'s store and ``b``'s attached as ``b`` (opened once per pair)."""
        k = (a.key, b.key)
        if k not in self._compare:
            db = _connect(a.info.run_dir / STORE_FILE)
            db.execute("ATTACH DATABASE ? AS b", (f"file:{b.info.run_dir / STORE_FILE}?mode=ro",))
            self._compare[k] = db
        return self._compare[k]

    def compare_seqs(self, a: RunView, b: RunView) -> SeqCache:
        """The seq cache of a pair's comparison queries."""
        k = (a.key, b.key)
        if k not in self._compare_seqs:
            self._compare_seqs[k] = SeqCache(self.compare_db(a, b), ["main", "b"])
        return self._compare_seqs[k]

    def compare_list(self, a: RunView, b: RunView, f: dict[str, Any], diff: bool) -> dict[str, Any]:
        """One page of paired samples of two runs (only differing verdicts when ``diff``)."""
        db = self.compare_db(a, b)
        where, args = a.where({**f, "verdict": None, "disagree": None, "q": f.get("q")}, "r", "v")
        la = "(CASE WHEN r.status != 'ok' THEN 'error' ELSE COALESCE(v.label, 'unscored') END)"
        lb = "(CASE WHEN rb.status != 'ok' THEN 'error' ELSE COALESCE(vb.label, 'unscored') END)"
        cond = []
        if diff:
            cond.append(f"{la} != {lb}")
        if f.get("verdict"):
            cond.append(f"({la} = ? OR {lb} = ?)")
            args = [*args, f["verdict"], f["verdict"]]
        if cond:
            where = (where + " AND " if where else " WHERE ") + " AND ".join(cond)
        frm = (" FROM main.responses r JOIN b.responses rb ON rb.sample_id = r.sample_id"
               " LEFT JOIN main.verdicts v ON v.sample_id = r.sample_id AND v.judge_id = ?"
               " LEFT JOIN b.verdicts vb ON vb.sample_id = r.sample_id AND vb.judge_id = ?")
        jargs = [a.primary, b.primary]
        seqs = self.compare_seqs(a, b).get("SELECT r.seq" + frm + where + " ORDER BY r.seq", [*jargs, *args])
        total = len(seqs)
        per = f["per_page"]
        pages = max(1, math.ceil(total / per))
        page = min(f["page"], pages)
        chunk = list(seqs[(page - 1) * per: page * per])
        rows = db.execute(
            f"SELECT r.sample_id, r.scenario, r.method, r.turns, substr(r.question, 1, ?), {la}, {lb},"
            " substr(COALESCE(r.text, r.error, ''), 1, ?), substr(COALESCE(rb.text, rb.error, ''), 1, ?)"
            + frm + f" WHERE r.seq IN ({','.join('?' * len(chunk))}) ORDER BY r.seq",
            [SNIPPET, SNIPPET, SNIPPET, *jargs, *chunk]).fetchall() if chunk else []
        items = [{"sample_id": x[0], "scenario": x[1], "method": x[2] or "none", "turns": x[3], "question": x[4],
                  "label_a": x[5], "label_b": x[6], "reply_a": x[7], "reply_b": x[8]} for x in rows]
        return {"total": total, "page": page, "pages": pages, "per_page": per, "items": items}


def _render(name: str, **ctx: Any) -> web.Response:
    html = env().get_template(name).render(**ctx)
    return web.Response(text=html, content_type="text/html", charset="utf-8")


def _hostname(h: str) -> str:
    if h.startswith("["):
        return h.split("]")[0] + "]"
    return h.rsplit(":", 1)[0] if h.count(":") == 1 else h


@web.middleware
async def _guard(request: web.Request,
                 handler: Callable[[web.Request], Awaitable[web.StreamResponse]]) -> web.StreamResponse:
    allowed = request.app[ALLOWED_HOSTS]
    if allowed is not None and _hostname(request.host or "") not in allowed:
        return web.Response(status=421, text="misdirected request: this viewer answers only on "
                                             + ", ".join(sorted(allowed)))
    if request.method not in ("GET", "HEAD"):
        return web.Response(status=405, text="read-only viewer", headers={"Allow": "GET, HEAD"})
    t0 = time.perf_counter()
    try:
        resp = await handler(request)
    except web.HTTPException as e:
        if e.status >= 400:
            resp = web.Response(status=e.status, text=e.text or e.reason, content_type="text/plain")
        else:
            resp = web.Response(status=e.status, headers={k: v for k, v in e.headers.items()
                                                          if k.lower() == "location"})
    resp.headers.setdefault("Content-Security-Policy", CSP)
    resp.headers.setdefault("X-Content-Type-Options", "nosniff")
    resp.headers.setdefault("Referrer-Policy", "no-referrer")
    resp.headers.setdefault("X-Frame-Options", "DENY")
    resp.headers["Server-Timing"] = f"app;dur={1000 * (time.perf_counter() - t0):.1f}"
    return resp


def make_app(run_dirs: list[Path | str], *, allowed_hosts: set[str] | None = None,
             any_host: bool = False) -> web.Application:
    """The viewer as an aiohttp application (``web.run_app`` it, or use a test client).

    Requests must name a loopback host (or one of ``allowed_hosts``) unless ``any_host``."""
    v = Viewer(run_dirs)
    for name in TEMPLATES:  # compile now rather than on the first request
        env().get_template(name)
    # index the benchmarks' samples.jsonl (id -> offset) in the background
    for sample_index in {id(rv.index): rv.index for rv in v.runs.values() if rv.index is not None}.values():
        threading.Thread(target=lambda i=sample_index: i.offsets, daemon=True, name="mmsafe-sample-index").start()
    app = web.Application(middlewares=[_guard])
    app[VIEWER] = v
    app[ALLOWED_HOSTS] = None if any_host else set(LOOPBACK) | set(allowed_hosts or ())
    runs = [rv for rv in v.runs.values()]

    def common() -> dict[str, Any]:
        return {"runs": runs}

    async def index(request: web.Request) -> web.Response:
        if len(v.runs) == 1:
            raise web.HTTPFound(f"/run/{runs[0].key}")
        return _render("viewer_index.html.j2", **common(), title="mmsafe viewer")

    async def run_page(request: web.Request) -> web.Response:
        rv = v.run(request.match_info["key"])
        f = parse_filters(request.query, rv)
        res = rv.list_samples(f)
        f["page"] = res["page"]
        others = [o for o in runs if o is not rv and v.comparable(rv, o)]
        return _render("viewer_run.html.j2", **common(), title=f"{rv.label} — mmsafe viewer", rv=rv, f=f,
                       res=res, qs=lambda **kw: _qs(f, **kw), others=others, verdicts=VERDICTS, disagree=DISAGREE)

    async def api_samples(request: web.Request) -> web.Response:
        rv = v.run(request.match_info["key"])
        f = parse_filters(request.query, rv)
        return web.json_response(rv.list_samples(f), dumps=lambda x: orjson.dumps(x).decode())

    async def sample_page(request: web.Request) -> web.Response:
        rv = v.run(request.match_info["key"])
        sid = request.match_info["sid"]
        d = rv.sample(sid)
        if d is None:
            raise web.HTTPNotFound(text="no such sample in this run")
        sample = rv.index.get(sid) if rv.index is not None else None
        msgs = render_messages(sample, rv.index)
        others = [o for o in runs if o is not rv and v.comparable(rv, o) and o.has(sid)]
        return _render("viewer_sample.html.j2", **common(), title=f"{sid} — {rv.label}", rv=rv, s=d,
                       sample=sample, messages=msgs, others=others, back=request.query.get("back", ""), pretty=_pretty)

    async def api_sample(request: web.Request) -> web.Response:
        rv = v.run(request.match_info["key"])
        d = rv.sample(request.match_info["sid"])
        if d is None:
            raise web.HTTPNotFound(text="no such sample in this run")
        sample = rv.index.get(d["sample_id"]) if rv.index is not None else None
        d["messages"] = render_messages(sample, rv.index)
        return web.json_response(d, dumps=lambda x: orjson.dumps(x, default=str).decode())

    async def asset(request: web.Request) -> web.StreamResponse:
        rv = v.run(request.match_info["key"])
        rel = request.match_info["path"]
        if rv.index is None:
            raise web.HTTPNotFound(text="benchmark directory not available")
        p = rv.index.asset_file(rel)
        mime = mime_of(rel)
        if p is None or mime is None:
            raise web.HTTPNotFound(text="no such asset")
        return web.FileResponse(p, headers={"Content-Type": mime, "Content-Disposition": "inline",
                                            "Content-Security-Policy": "default-src 'none'; sandbox",
                                            "Cache-Control": "private, max-age=3600"})

    async def compare(request: web.Request) -> web.Response:
        a, b = v.run(request.query.get("a", "")), v.run(request.query.get("b", ""))
        if a is b:
            raise web.HTTPBadRequest(text="pick two different runs")
        if not v.comparable(a, b):
            raise web.HTTPBadRequest(text="these runs are on different benchmarks; a side-by-side needs the same one")
        f = parse_filters(request.query, a)
        f["judge"] = None
        diff = request.query.get("diff") == "1"
        res = v.compare_list(a, b, f, diff)
        f["page"] = res["page"]
        return _render("viewer_compare.html.j2", **common(), title=f"{a.label} vs {b.label}", a=a, b=b,
                       f=f, diff=diff, res=res, verdicts=VERDICTS,
                       qs=lambda **kw: _qs({**f, "a": a.key, "b": b.key, "diff": "1" if diff else None}, **kw))

    async def compare_sample(request: web.Request) -> web.Response:
        a, b = v.run(request.query.get("a", "")), v.run(request.query.get("b", ""))
        if not v.comparable(a, b):
            raise web.HTTPBadRequest(text="these runs are on different benchmarks")
        sid = request.match_info["sid"]
        da, db_ = a.sample(sid), b.sample(sid)
        if da is None or db_ is None:
            raise web.HTTPNotFound(text="sample not in both runs")
        sample = a.index.get(sid) if a.index is not None else None
        return _render("viewer_compare_sample.html.j2", **common(), title=f"{sid}: {a.label} vs {b.label}",
                       a=a, b=b, sa=da, sb=db_, sample=sample, messages=render_messages(sample, a.index))

    async def static(request: web.Request) -> web.Response:
        name = request.match_info["name"]
        types = {"viewer.css": "text/css", "viewer.js": "application/javascript"}
        if name not in types:
            raise web.HTTPNotFound()
        return web.Response(text=static_text(name), content_type=types[name], charset="utf-8",
                            headers={"Cache-Control": "no-cache"})

    app.router.add_get("/", index)
    app.router.add_get("/run/{key}", run_page)
    app.router.add_get("/run/{key}/sample/{sid:.+}", sample_page)
    app.router.add_get("/api/run/{key}/samples", api_samples)
    app.router.add_get("/api/run/{key}/sample/{sid:.+}", api_sample)
    app.router.add_get("/asset/{key}/{path:.+}", asset)
    app.router.add_get("/compare", compare)
    app.router.add_get("/compare/sample/{sid:.+}", compare_sample)
    app.router.add_get("/static/{name}", static)

    async def favicon(request: web.Request) -> web.Response:
        return web.Response(status=204)

    app.router.add_get("/favicon.ico", favicon)

    async def _close(app: web.Application) -> None:
        for rv in v.runs.values():
            rv.db.close()
        for db in v._compare.values():
            db.close()

    app.on_cleanup.append(_close)
    return app


def serve(run_dirs: list[Path | str], *, host: str = "127.0.0.1", port: int = 8765,
          print_fn: Callable[..., Any] = print) -> None:
    """Run the viewer until interrupted.

    The port is bound before anything is printed: a port in use raises OSError (EADDRINUSE) and no URL
    that points at another server is shown; ``port=0`` picks a free one and the URL names it."""
    app = make_app(run_dirs, allowed_hosts={host}, any_host=host in ("0.0.0.0", "::"))
    sock = bind_socket(host, port)
    try:
        port = sock.getsockname()[1]
        shown = "127.0.0.1" if host in ("0.0.0.0", "::") else host
        if host not in LOOPBACK:
            print_fn(f"warning: the viewer is reachable from other machines on {host}; it shows harmful content "
                     "and has no authentication")
        print_fn(f"mmsafe viewer on http://{shown}:{port}/  ({len(app[VIEWER].runs)} run(s); Ctrl-C to stop)")
        web.run_app(app, sock=sock, print=None, access_log=None)
    finally:
        sock.close()


def bind_socket(host: str, port: int) -> socket.socket:
    """A listening TCP socket on ``host:port`` (IPv6 for an address with ':'); OSError when it cannot bind."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    return socket.create_server((host, port), family=family, backlog=128)
