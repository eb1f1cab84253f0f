"""``mmsafe run --executor ray`` on a real local Ray cluster (2 CPUs, started here): the results
and summary are those of a single-process run, and a Ray worker SIGKILLed mid-shard has its
shard retried with 0 samples lost and none stored twice (requests counted at the loopback
server). Skipped where ``ray`` is not installed (``pip install 'mmsafe[ray]'``)."""

from __future__ import annotations

import json
import os
import re
import signal
import sqlite3
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest

from conftest import make_benchmark

ray = pytest.importorskip("ray", reason="ray is not installed (pip install 'mmsafe[ray]')")

from mmsafe.runner.ray_exec import MAX_SHARD, shard_sizes  # noqa: E402 (after the skip)

SRC = Path(__file__).resolve().parents[1] / "src"
TIMING = {"latency_ms", "created", "started", "finished", "elapsed_s", "wall_s", "duration_s", "at", "run_dir"}


@pytest.fixture(scope="module")
def cluster():
    ctx = ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False,
                   _node_ip_address="127.0.0.1")
    yield ctx.address_info["gcs_address"]
    ray.shutdown()


def _env() -> dict[str, str]:
    e = {**os.environ, "PYTHONPATH": str(SRC)}
    e.pop("MMSAFE_STORE_URL", None)
    e.pop("RAY_ADDRESS", None)
    return e


def _cmd(bench: Path, url: str, out: Path, model: str, *extra: str) -> list[str]:
    return [sys.executable, "-m", "mmsafe.cli", "run", str(bench), "-t", f"openai/{model}@{url}", "-o", str(out),
            "--no-cache", *extra]


def _strip(x):
    if isinstance(x, dict):
        return {k: _strip(v) for k, v in x.items() if k not in TIMING}
    if isinstance(x, list):
        return [_strip(v) for v in x]
    return x


def _results(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "results.jsonl").read_text().splitlines()]


def _sent(llm, model: str) -> Counter[str]:
    c: Counter[str] = Counter()
    with llm._lock:
        bodies = [b for b in llm.requests if b.get("model") == model]
    for b in bodies:
        m = re.search(r"Sample (\d+) turn", json.dumps(b["messages"][-1]["content"]))
        assert m
        c[f"s{m.group(1)}"] += 1
    return c


def test_a_ray_run_writes_the_results_and_summary_of_a_single_process_run(tmp_path, llm, cluster):
    bench = make_benchmark(tmp_path / "b", n=24)
    one, two = tmp_path / "one", tmp_path / "ray"
    p = subprocess.run(_cmd(bench, llm.url, one, "slow-5", "--max-connections", "4"), env=_env(),
                       capture_output=True, text=True, timeout=60)
    assert p.returncode == 0, p.stderr
    llm.reset()
    p = subprocess.run(_cmd(bench, llm.url, two, "slow-5", "--max-connections", "4", "--executor", "ray",
                            "--ray-address", cluster, "--workers", "2"),
                       env=_env(), capture_output=True, text=True, timeout=90)
    assert p.returncode == 0, p.stderr
    assert sum(_sent(llm, "slow-5").values()) == 24 and set(_sent(llm, "slow-5").values()) == {1}
    a, b = _results(one), _results(two)
    assert [r["id"] for r in b] == [r["id"] for r in a]  # benchmark order, each once
    assert _strip(b) == _strip(a)
    sa, sb = (json.loads((d / "summary.json").read_text()) for d in (one, two))
    assert _strip(sb) == _strip(sa)
    assert not (two / "ray-shards").exists()  # every shard merged into RUN_DIR/run.sqlite
    db = sqlite3.connect(two / "run.sqlite")
    assert db.execute("SELECT COUNT(*), COUNT(DISTINCT sample_id) FROM responses").fetchone() == (24, 24)
    db.close()


def test_an_unknown_executor_is_one_line_and_exit_2(tmp_path, llm):
    bench = make_benchmark(tmp_path / "b", n=2)
    p = subprocess.run(_cmd(bench, llm.url, tmp_path / "o", "slow-5", "--executor", "dask"), env=_env(),
                       capture_output=True, text=True, timeout=60)
    assert p.returncode == 2 and "--executor 'dask': choose one of local, ray" in p.stderr
    assert "Traceback" not in p.stderr
    p = subprocess.run(_cmd(bench, llm.url, tmp_path / "o", "slow-5", "--workers", "2"), env=_env(),
                       capture_output=True, text=True, timeout=60)
    assert p.returncode == 2 and "--workers is used with --executor ray only" in p.stderr
    import socket
    with socket.socket() as sk:  # a port nothing listens on
        sk.bind(("127.0.0.1", 0))
        port = sk.getsockname()[1]
    t0 = time.monotonic()
    p = subprocess.run(_cmd(bench, llm.url, tmp_path / "o", "slow-5", "--executor", "ray", "--ray-address",
                            f"127.0.0.1:{port}"), env=_env(), capture_output=True, text=True, timeout=60)
    assert p.returncode == 2 and f"--ray-address 127.0.0.1:{port}: no Ray cluster answers there" in p.stderr
    assert time.monotonic() - t0 < 30 and "Traceback" not in p.stderr
    assert not (tmp_path / "o").exists()  # found before --out is created


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _worker_pids(run_dir: Path) -> set[int]:
    """The pids of the Ray workers holding claims in the run's shard stores right now."""
    pids: set[int] = set()
    for f in (run_dir / "ray-shards").glob("*/run.sqlite"):
        try:
            db = sqlite3.connect(f, timeout=0.2)
            pids |= {r[0] for r in db.execute("SELECT pid FROM claims WHERE done_at IS NULL AND pid IS NOT NULL")}
            db.close()
        except sqlite3.Error:
            continue
    return pids - {os.getpid()}


def test_a_ray_worker_killed_mid_shard_is_retried_with_nothing_lost_or_duplicated(tmp_path, llm, cluster):
    n, model = 60, "slow-250"  # a shard of 15 at 2 in flight takes ~2 s: progress polls see it move
    bench = make_benchmark(tmp_path / "b", n=n, image=False)
    out = tmp_path / "ray"
    proc = subprocess.Popen(_cmd(bench, llm.url, out, model, "--max-connections", "4", "--executor", "ray",
                                 "--ray-address", cluster, "--workers", "2"),
                            env={**_env(), "MMSAFE_PROGRESS_INTERVAL": "0.3"}, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    victim = None
    deadline = time.monotonic() + 40
    while victim is None and time.monotonic() < deadline and proc.poll() is None:
        pids = _worker_pids(out) if (out / "ray-shards").is_dir() else set()
        if pids and sum(_sent(llm, model).values()) >= 6:
            victim = min(pids)
        else:
            time.sleep(0.05)
    assert victim is not None, "no Ray worker was seen working on a shard"
    os.kill(victim, signal.SIGKILL)
    _, stderr = proc.communicate(timeout=90)
    assert proc.returncode == 0, stderr
    sent = _sent(llm, model)
    assert set(sent) == {f"s{i}" for i in range(n)}  # 0 lost
    resent = sum(sent.values()) - n
    assert 0 <= resent <= 2  # at most the killed worker's requests in flight (its cap: 4 // 2)
    rows = _results(out)
    assert [r["id"] for r in rows] == [f"s{i}" for i in range(n)]  # each once, in order
    # one progress line that moves while shards run, not only as they end: below the smaller of the
    # first two shards (15 and 12 samples here), a count can only come from the running shards
    first = min(list(shard_sizes(n, 2))[:2])
    counts = {int(m) for m in re.findall(r": (\d+)/60 ", stderr)}
    assert len({c for c in counts if 0 < c < first}) >= 2, stderr[-2000:]
    db = sqlite3.connect(out / "run.sqlite")
    assert db.execute("SELECT COUNT(*), COUNT(DISTINCT sample_id) FROM responses WHERE status='ok'").fetchone() \
        == (n, n)
    db.close()
    assert json.loads((out / "summary.json").read_text())["n_samples"] == n


def test_mmsafe_judge_on_ray_stores_the_verdicts_of_a_single_process_rejudge(tmp_path, llm, cluster):
    import shutil

    bench = make_benchmark(tmp_path / "b", n=16, image=False)
    run = tmp_path / "run"
    p = subprocess.run(_cmd(bench, llm.url, run, "comply"), env=_env(), capture_output=True, text=True, timeout=60)
    assert p.returncode == 0, p.stderr
    one, two = tmp_path / "one", tmp_path / "two"
    shutil.copytree(run, one)
    shutil.copytree(run, two)
    judge = f"rubric:openai/judge-ray@{llm.url}"
    base = [sys.executable, "-m", "mmsafe.cli", "judge"]
    p = subprocess.run([*base, str(one), "--judge", judge, "--no-cache"], env=_env(), capture_output=True,
                       text=True, timeout=60)
    assert p.returncode == 0, p.stderr
    llm.reset()
    p = subprocess.run([*base, str(two), "--judge", judge, "--no-cache", "--executor", "ray", "--ray-address",
                        cluster, "--workers", "2"], env=_env(), capture_output=True, text=True, timeout=90)
    assert p.returncode == 0, p.stderr
    assert "judged 16" in p.stdout
    assert llm.count("judge-ray") == 16  # each reply judged once, by one worker

    def verdicts(d: Path) -> list[tuple]:
        db = sqlite3.connect(d / "run.sqlite")
        rows = db.execute("SELECT sample_id, judge_id, label, score, parse_status, rationale FROM verdicts "
                          "ORDER BY sample_id, judge_id").fetchall()
        db.close()
        return rows

    assert len(verdicts(two)) == 32 and verdicts(two) == verdicts(one)  # keyword + the new judge, per sample
    sa, sb = (json.loads((d / "summary.json").read_text()) for d in (one, two))
    assert _strip(sb) == _strip(sa)
    assert not (two / "ray-shards").exists()


def test_a_ray_run_on_a_postgresql_store_writes_every_sample_once(tmp_path, llm, cluster):
    import _pg

    try:
        pg = _pg.server()
    except _pg.Unavailable as e:
        pytest.skip(f"no PostgreSQL server for the tests: {e}")
    n = 20
    bench = make_benchmark(tmp_path / "b", n=n, image=False)
    out = tmp_path / "ray-pg"
    p = subprocess.run(_cmd(bench, llm.url, out, "slow-5", "--max-connections", "4", "--executor", "ray",
                            "--ray-address", cluster, "--workers", "2", "--store", pg.run_url(f"ray{os.getpid()}")),
                       env=_env(), capture_output=True, text=True, timeout=90)
    assert p.returncode == 0, p.stderr
    assert sorted(_sent(llm, "slow-5").values()) == [1] * n  # every sample sent once, by one worker
    assert [r["id"] for r in _results(out)] == [f"s{i}" for i in range(n)]
    assert not (out / "run.sqlite").exists()  # the workers wrote to the shared PostgreSQL run
    assert json.loads((out / "summary.json").read_text())["n_samples"] == n


def test_a_killed_ray_driver_is_resumed_by_rerunning_the_command_with_nothing_lost(tmp_path, llm, cluster):
    n, model = 40, "slow-100"
    bench = make_benchmark(tmp_path / "b", n=n, image=False)
    out = tmp_path / "ray"
    cmd = _cmd(bench, llm.url, out, model, "--max-connections", "4", "--executor", "ray", "--ray-address", cluster,
               "--workers", "2")
    proc = subprocess.Popen(cmd, env=_env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 40
    while sum(_sent(llm, model).values()) < 10 and time.monotonic() < deadline and proc.poll() is None:
        time.sleep(0.05)
    assert proc.poll() is None, proc.communicate()[1]
    workers = _worker_pids(out)
    proc.kill()  # SIGKILL of the driver: Ray ends its tasks; the shard stores stay in RUN_DIR/ray-shards
    proc.wait()
    deadline = time.monotonic() + 20  # Ray reaps the dead driver's workers (their replies are then all stored)
    while any(_alive(pid) for pid in workers) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not any(_alive(pid) for pid in workers), "the dead driver's Ray workers kept running"
    if not workers:  # no claim open when it was killed: give Ray its usual second
        time.sleep(1.0)
    p = subprocess.run(cmd, env=_env(), capture_output=True, text=True, timeout=90)
    assert p.returncode == 0, p.stderr
    sent = _sent(llm, model)
    assert set(sent) == {f"s{i}" for i in range(n)}  # 0 lost
    assert sum(sent.values()) - n <= 4  # at most what the two workers had in flight (2 each)
    assert [r["id"] for r in _results(out)] == [f"s{i}" for i in range(n)]
    assert not (out / "ray-shards").exists()


@pytest.mark.parametrize("n,workers", [(20000, 2), (60, 2), (7, 1), (1, 4), (300000, 4)])
def test_shards_cover_every_sample_once_large_first_and_end_small(n, workers):
    sizes = list(shard_sizes(n, workers))
    assert sum(sizes) == n and all(0 < z <= MAX_SHARD for z in sizes)
    assert sizes == sorted(sizes, reverse=True)  # large shards first, never a large one last
    # the workers end within a small shard of each other: the last shards are the floor size or less
    floor = -(-n // (16 * workers))
    assert all(z <= floor for z in sizes[-workers:])
