"""The viewer over HTTP (aiohttp test client on loopback): filters agree with the store,
pagination, read-only, host check, asset path checks, escaping, comparisons."""

from __future__ import annotations

import asyncio
import os
import sqlite3

import pytest
from aiohttp.test_utils import TestClient, TestServer

from browser_util import PAYLOAD_SNIPPETS, synthetic_runs
from mmsafe.report.viewer import make_app


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    return synthetic_runs(tmp_path_factory.getbasetemp() / "synth")


def call(app, fn):
    async def go():
        async with TestClient(TestServer(app, host="127.0.0.1")) as c:
            return await fn(c)
    return asyncio.run(go())


@pytest.fixture(scope="module")
def app(runs):
    return lambda: make_app([runs["a"], runs["b"], runs["defended"], runs["other"]])


def store_ids(run_dir, where: str = "", args=(), judge="primary"):
    db = sqlite3.connect(f"file:{run_dir / 'run.sqlite'}?mode=ro", uri=True)
    jid = db.execute("SELECT value FROM meta WHERE key='primary_judge'").fetchone()[0].strip('"')
    ids = [r[0] for r in db.execute(
        "SELECT r.sample_id FROM responses r LEFT JOIN verdicts v ON v.sample_id=r.sample_id AND v.judge_id=?"
        + where + " ORDER BY r.seq", (jid, *args))]
    db.close()
    return ids


async def all_ids(c, key, qs=""):
    ids, page = [], 1
    while True:
        r = await c.get(f"/api/run/{key}/samples?per_page=7&page={page}&{qs}")
        assert r.status == 200, await r.text()
        d = await r.json()
        ids += [it["sample_id"] for it in d["items"]]
        if page >= d["pages"]:
            return ids, d
        page += 1


@pytest.mark.parametrize("qs, where, args", [
    ("", "", ()),
    ("scenario=fraud", " WHERE r.scenario=?", ("fraud",)),
    ("method=none", " WHERE r.method IS NULL", ()),
    ("turns=4", " WHERE r.turns=?", (4,)),
    ("verdict=unsafe", " WHERE r.status='ok' AND v.label='unsafe'", ()),
    ("verdict=safe&turns=1", " WHERE r.status='ok' AND v.label='safe' AND r.turns=1", ()),
    ("verdict=unscored", " WHERE r.status='ok' AND (v.label IS NULL OR v.label='unscored')", ()),
    ("verdict=error", " WHERE r.status!='ok'", ()),
    ("control=only", " WHERE r.control IS NOT NULL", ()),
    ("control=exclude&method=figstep", " WHERE r.control IS NULL AND r.method='figstep'", ()),
    ("disagree=judges", " WHERE (SELECT COUNT(DISTINCT d.label) FROM verdicts d WHERE d.sample_id=r.sample_id"
                        " AND d.label IN ('safe','unsafe'))>1", ()),
    ("disagree=jurors", " WHERE EXISTS (SELECT 1 FROM verdicts j WHERE j.sample_id=r.sample_id AND"
                        " json_extract(j.extra,'$.votes.unsafe')>0 AND json_extract(j.extra,'$.votes.safe')>0)", ()),
    ("q=g00003", " WHERE r.sample_id LIKE '%g00003%'", ()),
])
def test_filters_match_the_store(app, runs, qs, where, args):
    expected = store_ids(runs["a"], where, args)
    ids, d = call(app(), lambda c: all_ids(c, "r0", qs))
    assert ids == expected
    assert d["total"] == len(expected)


def test_filters_catch_what_they_should(runs):
    # the synthetic data has each kind present, so the filters above are not vacuous
    a = runs["a"]
    assert store_ids(a, " WHERE r.status!='ok'") or store_ids(a, " WHERE v.label='unscored'")
    assert store_ids(a, " WHERE (SELECT COUNT(DISTINCT d.label) FROM verdicts d WHERE d.sample_id=r.sample_id"
                        " AND d.label IN ('safe','unsafe'))>1")
    assert store_ids(a, " WHERE r.control IS NOT NULL")


def test_like_wildcards_are_literal(app):
    # as LIKE wildcards these would match g00000-t1; as literal text they match nothing
    ids, _ = call(app(), lambda c: all_ids(c, "r0", "q=g%25-t1"))
    assert ids == []
    ids, _ = call(app(), lambda c: all_ids(c, "r0", "q=g0000_-t1"))
    assert ids == []


def test_pagination_and_bad_params(app):
    async def go(c):
        r = await c.get("/api/run/r0/samples?per_page=10&page=2")
        d = await r.json()
        assert d["page"] == 2 and len(d["items"]) == 10 and d["pages"] == -(-d["total"] // 10)
        r = await c.get("/api/run/r0/samples?page=99999")
        assert (await r.json())["page"] == (await r.json())["pages"]  # clamped to the last page
        for bad in ("turns=x", "page=zz", "verdict=maybe", "disagree=x", "control=x", "judge=nope"):
            r = await c.get(f"/run/r0?{bad}")
            assert r.status == 400, bad
        assert (await c.get("/run/r9")).status == 404
        assert (await c.get("/run/r0/sample/nope")).status == 404
        r = await c.get("/api/run/r0/samples?per_page=100000")
        assert (await r.json())["per_page"] == 500
    call(app(), go)


def test_read_only_and_host_check(app):
    async def go(c):
        for m in ("POST", "PUT", "DELETE", "PATCH"):
            r = await c.request(m, "/run/r0")
            assert r.status == 405
        r = await c.get("/run/r0", headers={"Host": "attacker.example:8765"})
        assert r.status == 421
        r = await c.get("/run/r0", headers={"Host": "localhost:8765"})
        assert r.status == 200
        h = r.headers
        assert "script-src 'self'" in h["Content-Security-Policy"] and h["X-Content-Type-Options"] == "nosniff"
        assert "unsafe-inline" not in h["Content-Security-Policy"]
    call(app(), go)


def test_index_redirects_for_one_run(runs):
    async def go(c):
        r = await c.get("/", allow_redirects=False)
        assert r.status == 302 and r.headers["Location"] == "/run/r0"
    call(make_app([runs["b"]]), go)


def test_store_not_modified(runs, app):
    p = runs["a"] / "run.sqlite"
    before = (p.stat().st_mtime_ns, p.stat().st_size)
    call(app(), lambda c: all_ids(c, "r0", "disagree=any"))
    assert (p.stat().st_mtime_ns, p.stat().st_size) == before


def test_sample_page_escapes_and_shows_everything(app):
    async def go(c):
        r = await c.get("/run/r0/sample/g00000-t1")
        html = await r.text()
        assert r.status == 200
        for s in PAYLOAD_SNIPPETS:
            assert s not in html
        assert "&lt;script&gt;window.__pwned=1&lt;/script&gt;" in html
        assert html.count("<script") == 1 and '<script src="/static/viewer.js" defer></script>' in html
        # conversation image, both judges, five jurors with their reasoning, verdict extra
        assert '<img class="asset cw"' in html and "/asset/r0/assets/" in html  # blurred until revealed
        assert html.count('class="verdict-card"') == 2 and html.count("Reasoning from the") == 5
        assert "verdict extra" in html and "compare with" in html
        r = await c.get("/api/run/r0/sample/g00000-t4")
        d = await r.json()
        assert d["messages"][0]["parts"][0]["type"] == "image" and len(d["verdicts"]) == 2
        jury = [v for v in d["verdicts"] if v["jurors"]][0]
        assert [j["persona"] for j in jury["jurors"]][:2] == ["ethicist", "security expert"]
    call(app(), go)


def test_assets_are_path_checked(app, runs, tmp_path):
    bench = runs["bench"]
    good = sorted(p.name for p in (bench / "assets").iterdir())[0]
    secret = bench.parent / "secret.png"
    secret.write_bytes(b"\x89PNG secret")
    link = bench / "assets" / "zz-link.png"
    if not link.exists():
        os.symlink(secret, link)

    async def go(c):
        r = await c.get(f"/asset/r0/assets/{good}")
        assert r.status == 200 and r.headers["Content-Type"] == "image/png"
        assert "sandbox" in r.headers["Content-Security-Policy"]
        for bad in ("../secret.png", "assets/../../secret.png", "assets/..%2F..%2Fsecret.png",
                    "%2Fetc%2Fpasswd", "/etc/passwd", "assets/zz-link.png", "benchmark.json", "samples.jsonl",
                    "assets/", "assets/%00.png"):
            r = await c.get(f"/asset/r0/{bad}")
            assert r.status == 404, bad
    try:
        call(app(), go)
    finally:
        link.unlink()


def test_compare(app):
    async def go(c):
        r = await c.get("/compare?a=r0&b=r1")
        html = await r.text()
        assert r.status == 200 and html.count("<tr data-sample=") == 50
        r = await c.get("/compare?a=r0&b=r1&diff=1&per_page=500")
        html = await r.text()
        assert 0 < html.count("<tr data-sample=") < 50
        r = await c.get("/compare/sample/g00002-t2?a=r0&b=r2")
        html = await r.text()
        assert r.status == 200 and 'id="side-a"' in html and 'id="side-b"' in html
        assert (await c.get("/compare?a=r0&b=r3")).status == 400  # other benchmark
        assert (await c.get("/compare?a=r0&b=r0")).status == 400
        assert (await c.get("/compare/sample/nope?a=r0&b=r1")).status == 404
    call(app(), go)


def test_viewer_needs_a_store(tmp_path):
    from mmsafe.types import InputError
    d = tmp_path / "r"
    d.mkdir()
    (d / "summary.json").write_text("{}")
    with pytest.raises(InputError, match="run store"):
        make_app([d])


def test_missing_benchmark_dir(runs, tmp_path):
    import json
    import shutil
    run = tmp_path / "run"
    shutil.copytree(runs["b"], run)
    db = sqlite3.connect(run / "run.sqlite")
    cfg = json.loads(db.execute("SELECT value FROM meta WHERE key='config'").fetchone()[0])
    cfg["benchmark_path"] = str(tmp_path / "gone")
    db.execute("UPDATE meta SET value=? WHERE key='config'", (json.dumps(cfg),))
    db.commit()
    db.close()

    async def go(c):
        r = await c.get("/run/r0/sample/g00002-t1")
        html = await r.text()
        assert r.status == 200 and "benchmark directory not available" in html
        assert (await c.get("/asset/r0/assets/x.png")).status == 404
    call(make_app([run]), go)


def test_live_transcript_is_shown_escaped(runs, tmp_path):
    import json
    import shutil
    run = tmp_path / "run"
    shutil.copytree(runs["b"], run)
    extra = {"mode": "adaptive", "outcome": {"status": "jailbroken", "first_unsafe_turn": 2, "backtracks": 1},
             "transcript": [{"turn": 1, "user": "hi <script>x()</script>", "reply": "no", "label": "safe"},
                            {"turn": 2, "user": "now", "reply": "<img src=x onerror=alert(1)>", "label": "unsafe"}],
             "backtracked": [{"user": "b", "reply": "r", "at_turn": 2}], "attacker_log": [{"call": 1}]}
    db = sqlite3.connect(run / "run.sqlite")
    db.execute("UPDATE responses SET extra=? WHERE sample_id='g00002-t1'", (json.dumps(extra),))
    db.commit()
    db.close()

    async def go(c):
        html = await (await c.get("/run/r0/sample/g00002-t1")).text()
        assert "adaptive transcript" in html and "first unsafe at turn 2" in html
        assert "hi &lt;script&gt;x()&lt;/script&gt;" in html and "&lt;img src=x onerror=alert(1)&gt;" in html
        assert "<img src=x" not in html and "1 backtracked exchange(s)" in html
    call(make_app([run]), go)


def test_empty_run(tmp_path):
    """A run store with nothing in it yet: the viewer, report and export still work."""
    from mmsafe.report import export_run, load_runs, render_report
    from mmsafe.store.sqlite import open_store
    st = open_store(tmp_path / "run")
    st.set_meta("config", {"target": {"name": "x/y"}})
    st.close()
    html = render_report(load_runs([tmp_path / "run"]))
    assert "x/y" in html and "No curve to draw" in html
    assert export_run(tmp_path / "run", "jsonl", tmp_path / "e.jsonl") == 0

    async def go(c):
        r = await c.get("/run/r0")
        assert r.status == 200 and "0 samples" in await r.text()
    call(make_app([tmp_path / "run"]), go)


def test_mmsafe_view_command(runs):
    """`mmsafe view` serves on 127.0.0.1 and stops cleanly."""
    import subprocess
    import sys
    import time
    import urllib.request
    from pathlib import Path

    from browser_util import free_port
    port = free_port()
    exe = Path(sys.executable).parent / "mmsafe"
    cmd = [str(exe)] if exe.exists() else [sys.executable, "-m", "mmsafe.cli"]
    p = subprocess.Popen([*cmd, "view", str(runs["a"]), str(runs["b"]), "--port", str(port)],
                         stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.time() + 30
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/run/r1", timeout=2) as r:
                    assert r.status == 200 and b"mock/model-b" in r.read()
                break
            except OSError:
                if time.time() > deadline or p.poll() is not None:
                    raise AssertionError(p.stdout.read() if p.poll() is not None else "viewer did not start")
                time.sleep(0.2)
        # bound to loopback only: another local address of this machine is refused
        import socket
        try:
            ip = socket.gethostbyname(socket.gethostname())
        except OSError:
            ip = "127.0.0.1"
        if not ip.startswith("127."):
            with pytest.raises(OSError):
                socket.create_connection((ip, port), timeout=2).close()
    finally:
        p.terminate()
        out = p.communicate(timeout=20)[0]
    assert f"http://127.0.0.1:{port}/" in out
    bad = subprocess.run([*cmd, "view", "/nonexistent/run"], capture_output=True, text=True, timeout=60)
    assert bad.returncode == 2 and "no such run directory" in bad.stderr


def test_odd_sample_ids(tmp_path):
    """Ids with '/', '#', '?', '%', spaces, quotes and markup round-trip through links."""
    import re
    from html import unescape

    from mmsafe.store.sqlite import open_store
    from mmsafe.types import Message, Response, Sample
    ids = ["a/b", "c#d", "e?f=1&g", "h%20i", "sp ace", "q\"'<b>x</b>", "ünï"]
    st = open_store(tmp_path / "run")
    st.set_meta("config", {"target": {"name": "x/y"}})
    for i in ids:
        st.save_response(Sample(id=i, question="q", messages=[Message(role="user", content="hi")]),
                         Response(sample_id=i, text="ok"), [])
    st.close()

    async def go(c):
        html = await (await c.get("/run/r0")).text()
        links = [unescape(h) for h in re.findall(r'href="(/run/r0/sample/[^"?]+)', html)]
        assert len(links) == len(ids)
        for link, sid in zip(links, ids):
            r = await c.get(link)
            assert r.status == 200, (sid, link)
            assert unescape(re.search(r"<h1><code>(.*?)</code>", await r.text()).group(1)) == sid
    call(make_app([tmp_path / "run"]), go)


def test_list_follows_a_run_still_writing(runs, tmp_path):
    """Cached filter results are dropped when the store changes under the viewer."""
    import shutil

    from mmsafe.store.sqlite import open_store
    from mmsafe.types import Message, Response, Sample
    run = tmp_path / "run"
    shutil.copytree(runs["b"], run)

    async def go(c):
        before = (await (await c.get("/api/run/r0/samples?scenario=fraud")).json())["total"]
        again = (await (await c.get("/api/run/r0/samples?scenario=fraud")).json())["total"]
        assert again == before
        st = open_store(run)  # a writer, as a resumed run would be
        for i in range(3):
            st.save_response(Sample(id=f"late{i}", question="q", scenario="fraud",
                                    messages=[Message(role="user", content="hi")]),
                             Response(sample_id=f"late{i}", text="ok"), [])
        st.close()
        d = await (await c.get("/api/run/r0/samples?scenario=fraud&per_page=500")).json()
        assert d["total"] == before + 3 and d["items"][-1]["sample_id"] == "late2"
    call(make_app([run]), go)
