"""Replicas of one model, the circuit breaker that rests a failing replica, and the dead-endpoint
stop (an endpoint that never answers stops the run in one line instead of walking every
sample through the retry ladder)."""

from __future__ import annotations

import asyncio
import json
import socket
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import make_benchmark
from llm_server import ScriptedLLM
from mmsafe.models import CostLedger, ModelClient, build_provider, resolve_endpoint
from mmsafe.models.base import ConfigError, EndpointConfig
from mmsafe.models.engine import AdaptiveLimiter, FatalProviderError, Replica
from mmsafe.types import Message

MMSAFE = str(Path(sys.executable).parent / "mmsafe")


def _closed_port_url() -> str:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()  # nothing listens there now: connection refused
    return f"http://127.0.0.1:{port}/v1"


def _mmsafe(*args: object, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run([MMSAFE, *map(str, args)], capture_output=True, text=True, timeout=timeout)


@pytest.fixture
def second_llm():
    srv = ScriptedLLM().start()
    yield srv
    srv.stop()


def test_spec_with_several_urls_lists_replicas_and_models_file_base_urls(tmp_path):
    cfg = resolve_endpoint("openai/m@http://127.0.0.1:1/v1,http://127.0.0.1:2/v1")
    assert cfg.base_urls == ["http://127.0.0.1:1/v1", "http://127.0.0.1:2/v1"]
    assert cfg.base_url == "http://127.0.0.1:1/v1"
    mf = tmp_path / "models.yaml"
    mf.write_text("models:\n  pair:\n    provider: openai\n    model: m\n"
                  "    base_urls: [http://127.0.0.1:3/v1, http://127.0.0.1:4/v1]\n")
    cfg = resolve_endpoint("pair", models_file=mf)
    assert cfg.base_url == "http://127.0.0.1:3/v1" and len(cfg.base_urls) == 2
    # --base-url replaces the endpoint and its replicas
    cfg = resolve_endpoint("pair", models_file=mf, base_url="http://127.0.0.1:9/v1")
    assert cfg.base_urls == ["http://127.0.0.1:9/v1"]
    with pytest.raises(ConfigError, match="needs a scheme"):
        resolve_endpoint("openai/m@http://127.0.0.1:1/v1,127.0.0.1:2/v1")


def test_breaker_opens_after_failures_then_probes_and_closes():
    cfg = EndpointConfig(name="x", provider="openai", model="m", base_url="http://127.0.0.1:1/v1")
    rep = Replica(build_provider(cfg), AdaptiveLimiter(4), failures=3, cooldown_s=5.0)
    now = 100.0
    rep.on_unreachable(now)
    rep.on_unreachable(now)
    assert rep.available(now)  # two in a row: still closed
    rep.on_unreachable(now)
    assert not rep.available(now) and rep.available(now + 5.0)  # open for the cool-down
    rep.probing = True  # half-open: one probe goes out ...
    assert not rep.available(now + 5.0)  # ... and no second one beside it
    rep.on_unreachable(now + 5.0)  # the probe failed: rest twice as long
    assert not rep.available(now + 14.0) and rep.available(now + 15.0)
    rep.on_success()
    assert rep.available(now + 15.0) and rep.open_until == 0.0 and rep.cooldown_s == 5.0


def test_requests_spread_over_two_replicas(llm, second_llm):
    cfg = resolve_endpoint(f"openai/slow-30@{llm.url},{second_llm.url}")

    async def go() -> list[str | None]:
        client = ModelClient(build_provider(cfg), "target", CostLedger())
        await client.start()
        try:
            res = await asyncio.gather(*(client.chat([Message(role="user", content=f"q{i}")]) for i in range(40)))
        finally:
            await client.close()
        return [r.text for r in res]

    texts = asyncio.run(go())
    assert all(texts)
    a, b = llm.count("slow-30"), second_llm.count("slow-30")
    assert a + b == 40 and a >= 10 and b >= 10  # fewest in flight: both replicas carry a real share


def test_dead_replica_is_rested_and_the_run_completes_on_the_other(llm, tmp_path):
    bench = make_benchmark(tmp_path / "b", n=12, image=False)
    out = tmp_path / "run"
    r = _mmsafe("run", bench, "-t", f"openai/comply@{_closed_port_url()},{llm.url}", "-o", out,
                "--retries", "3", "--max-connections", "4")
    assert r.returncode == 0, r.stderr
    rows = [json.loads(x) for x in (out / "results.jsonl").read_text().splitlines()]
    assert len(rows) == 12 and not any(x["error"] for x in rows)
    assert llm.count("comply") == 12
    db = sqlite3.connect(out / "run.sqlite")
    refused = db.execute("SELECT COUNT(*) FROM requests WHERE status='error'").fetchone()[0]
    # the breaker opens after 3 refusals in a row (plus probes); most requests never try the dead replica
    assert 1 <= refused <= 8


def test_dead_endpoint_stops_the_run_in_one_line(tmp_path):
    bench = make_benchmark(tmp_path / "b", n=40, image=False)
    out = tmp_path / "run"
    t0 = time.monotonic()
    r = _mmsafe("run", bench, "-t", f"openai/m@{_closed_port_url()}", "-o", out, "--retries", "6",
                "--max-connections", "2")
    took = time.monotonic() - t0
    assert r.returncode == 2
    err = [ln for ln in r.stderr.splitlines() if ln.strip()]
    assert len(err) == 1 and "endpoint unreachable" in err[0] and "Traceback" not in r.stderr
    # 40 samples x 7 tries would walk ~280 attempts through backoff; it stops after ~8
    db = sqlite3.connect(out / "run.sqlite")
    attempts = db.execute("SELECT COUNT(*) FROM requests").fetchone()[0]
    assert attempts <= 12
    assert took < 60


def test_client_raises_fatal_once_dead(tmp_path):
    cfg = resolve_endpoint(f"openai/m@{_closed_port_url()}")
    cfg = cfg.model_copy(update={"max_retries": 0, "dead_after": 3})

    async def go() -> None:
        client = ModelClient(build_provider(cfg), "target", CostLedger())
        await client.start()
        try:
            for i in range(2):
                r = await client.chat([Message(role="user", content=f"q{i}")])
                assert r.error and "connection" in r.error
            with pytest.raises(FatalProviderError, match="unreachable"):
                await client.chat([Message(role="user", content="q3")])
            with pytest.raises(FatalProviderError):  # and stays dead for the rest of the run
                await client.chat([Message(role="user", content="q4")])
        finally:
            await client.close()

    asyncio.run(go())
