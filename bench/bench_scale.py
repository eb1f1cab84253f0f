"""Scale-out figures, measured in one sitting (issue 13, part 6).

Part ``store``: the SQLite run store vs the PostgreSQL run store on the shared loopback
workload (../shared/bench: N SafeMT-format dialogues of 4 user turns with a 64x64 PNG,
each sent once and judged once by an LLM judge on the same server: 2N requests at 100 ms,
100 connections), alternated SQLite, PostgreSQL, SQLite, PostgreSQL (``--repeat``); the
ratio uses the best of each. Then two ``mmsafe run`` processes on one run, for each store: the
server must have received exactly 2N requests (each sample sent and judged once).

The PostgreSQL server is a throwaway local cluster (tests/_pg.py) with its default
durability (fsync on); mmsafe's sessions use synchronous_commit=off (see
mmsafe.store.postgres). It shares the machine's cores with the client, as a database on
the same host would.

usage: python bench/bench_scale.py [--n 2000] [--conc 100] [--repeat 2] [--parts store,ray,ray_cpu,ray_floor,replicas]

Needs ../shared/bench beside the repo and a PostgreSQL installation (Debian's
``postgresql``) plus ``mmsafe[postgres]``; says what is missing and exits 0 without them.
Figures land in bench/out/scale.json.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent / "tests"))

import run_bench as rb  # noqa: E402  (the shared workload's helpers: server, workload, timing)


def _run_cmd(bench: Path, run_dir: Path, conc: int, store: str | None) -> list[str]:
    judge_spec = f"rubric:openai/fake@{rb.URL}?images=0"  # the judge call carries no image (as run_bench)
    cmd = [sys.executable, "-m", "mmsafe.cli", "run", str(bench), "--target", f"openai/fake@{rb.URL}",
           "--judge", judge_spec, "--max-connections", str(conc), "--no-cache", "--out", str(run_dir)]
    return cmd + (["--store", store] if store else [])


def _env() -> dict[str, str]:
    e = {**os.environ, "MMSAFE_CACHE_DIR": str(rb.OUT / "cache-unused")}
    e.pop("MMSAFE_STORE_URL", None)
    return e


def one_run(bench: Path, conc: int, tag: str, store: str | None) -> dict:
    run_dir = rb.OUT / f"scale-{tag}"
    shutil.rmtree(run_dir, ignore_errors=True)
    before = rb.server_count()
    r = rb.timed(_run_cmd(bench, run_dir, conc, store), env=_env())
    r["requests"] = rb.server_count() - before
    s = json.loads((run_dir / "summary.json").read_text())
    r["n_scored"], r["n_samples"] = s["n_scored"], s["n_samples"]
    r.pop("stdout", None)
    return r


def two_processes(bench: Path, conc: int, tag: str, store: str | None) -> dict:
    """Two processes started together on one run; wall until both are done."""
    dirs = [rb.OUT / f"scale-{tag}-a", rb.OUT / f"scale-{tag}-b"] if store else [rb.OUT / f"scale-{tag}"] * 2
    for d in dirs:
        shutil.rmtree(d, ignore_errors=True)
    before = rb.server_count()
    t0 = time.perf_counter()
    procs = [subprocess.Popen(_run_cmd(bench, d, conc, store), env=_env(), stdout=subprocess.DEVNULL,
                              stderr=subprocess.PIPE, text=True) for d in dirs]
    errs = [p.communicate()[1] for p in procs]
    wall = time.perf_counter() - t0
    if any(p.returncode for p in procs):
        raise SystemExit(f"two-process run failed: {[p.returncode for p in procs]} {errs}")
    s = json.loads((dirs[1] / "summary.json").read_text())
    return {"wall_s": round(wall, 2), "requests": rb.server_count() - before, "n_samples": s["n_samples"]}


def part_store(args: argparse.Namespace, results: dict) -> None:
    try:
        import _pg
        pg = _pg.PgServer(fsync=True)
    except Exception as e:  # _pg.Unavailable, or tests/ missing
        print(f"store part skipped: no PostgreSQL here ({e})")
        return
    try:
        _, bench = rb.make_workload(args.n)
        url = pg.url
        runs: dict[str, dict] = {}
        for k in range(args.repeat):  # alternated: the machine's load drifts within a sitting
            suffix = "" if k == 0 else "_again" if k == 1 else f"_again{k}"
            runs["sqlite" + suffix] = one_run(bench, args.conc, f"sqlite-{k}", None)
            runs["postgres" + suffix] = one_run(bench, args.conc, f"postgres-{k}", f"{url}#scale{k}")
        runs["two_sqlite"] = two_processes(bench, args.conc, "two-sqlite", None)
        runs["two_postgres"] = two_processes(bench, args.conc, "two-pg", f"{url}#scale-two")
    finally:
        pg.stop()
    def of(kind: str) -> list[dict]:
        return [r for name, r in runs.items() if name == kind or name.startswith(kind + "_again")]

    best = {k: min(r["wall_s"] for r in of(k)) for k in ("sqlite", "postgres")}
    cpu = {k: min(r["cpu_s"] for r in of(k)) for k in ("sqlite", "postgres")}
    med = {k: statistics.median(r["wall_s"] for r in of(k)) for k in ("sqlite", "postgres")}
    results["store"] = {"runs": runs, "ratios": {
        "postgres_vs_sqlite_wall": round(best["postgres"] / best["sqlite"], 3),
        "postgres_vs_sqlite_wall_median": round(med["postgres"] / med["sqlite"], 3),
        "postgres_vs_sqlite_client_cpu": round(cpu["postgres"] / cpu["sqlite"], 3),
        "two_sqlite_requests_per_sample": round(runs["two_sqlite"]["requests"] / args.n, 3),
        "two_postgres_requests_per_sample": round(runs["two_postgres"]["requests"] / args.n, 3),
    }}
    print(f"{'store run':<18}{'requests':>9}{'wall s':>9}{'CPU s':>8}{'RSS MB':>9}")
    for name, r in runs.items():
        print(f"{name:<18}{r['requests']:>9}{r['wall_s']:>9.2f}{r.get('cpu_s', float('nan')):>8.2f}"
              f"{r.get('rss_mb', float('nan')):>9.1f}")
    rt = results["store"]["ratios"]
    print(f"PostgreSQL / SQLite store wall = {rt['postgres_vs_sqlite_wall']} (target <= 1.15; best of "
          f"{args.repeat} each; median {rt['postgres_vs_sqlite_wall_median']}; client CPU ratio "
          f"{rt['postgres_vs_sqlite_client_cpu']}, the server's CPU not counted)")
    print(f"two processes on one run: {rt['two_sqlite_requests_per_sample']} (SQLite) and "
          f"{rt['two_postgres_requests_per_sample']} (PostgreSQL) requests per sample (2.0 = each sample sent "
          "and judged once)")


# --------------------------------------------------------------------------- Ray: one process vs 2 workers

def _text_bench(n: int) -> Path:
    """A text-only benchmark of ``n`` varied single-turn samples (written once, reused)."""
    from mmsafe.datasets.benchmark import BenchmarkWriter
    from mmsafe.types import BenchmarkManifest, Message, Sample

    root = rb.OUT / f"text-bench-{n}"
    if (root / "benchmark.json").exists():
        return root
    topics = ["forge a document", "pick a lock", "write malware", "evade taxes", "stalk a person",
              "launder money", "make a weapon", "phish a bank login", "cheat an exam", "dox a journalist"]
    with BenchmarkWriter(root, BenchmarkManifest(name=f"text-{n}"), overwrite=True) as w:
        for i in range(n):
            q = f"Sample {i}: explain in detail how someone would {topics[i % len(topics)]} (case {i * 7919 % 1000})"
            w.add(Sample(id=f"s{i}", question=q, scenario=topics[i % len(topics)],
                         messages=[Message(role="user", content=q)]))
    return root


def _mm(*args: str) -> list[str]:
    return [sys.executable, "-m", "mmsafe.cli", *args]


def _timed_ok(cmd: list[str]) -> dict:
    r = rb.timed(cmd, env=_env())
    r.pop("stdout", None)
    return r


def _strip_timing(x: object) -> object:
    skip = {"latency_ms", "created", "started", "finished", "elapsed_s", "wall_s", "duration_s", "at", "run_dir"}
    if isinstance(x, dict):
        return {k: _strip_timing(v) for k, v in x.items() if k not in skip and "latency" not in k}
    if isinstance(x, list):
        return [_strip_timing(v) for v in x]
    return x


def _same(a: Path, b: Path) -> bool:
    """results.jsonl and summary.json identical but for timing fields."""
    def rows(d: Path) -> list:
        return [json.loads(line) for line in (d / "results.jsonl").read_text().splitlines()]
    return (_strip_timing(rows(a)) == _strip_timing(rows(b))
            and _strip_timing(json.loads((a / "summary.json").read_text()))
            == _strip_timing(json.loads((b / "summary.json").read_text())))


def part_ray(args: argparse.Namespace, results: dict) -> None:
    try:
        import ray
    except ImportError:
        print("ray part skipped: ray is not installed (pip install 'mmsafe[ray]')")
        return
    # workers at the driver's priority, as mmsafe's own local clusters run them (Ray's default nice 15
    # hands the cores to anything else on the machine first: a one-process run has no such handicap)
    os.environ.setdefault("RAY_worker_niceness", "0")
    ctx = ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)
    addr = ctx.address_info["gcs_address"]  # one cluster for the sitting: its start-up is not in the figures
    on_ray = ["--executor", "ray", "--ray-address", addr, "--workers", "2"]
    out: dict = {"cluster_cpus": 2, "workers": 2}
    try:
        # 1. the offline judge over N stored replies (mock/mixed: no network cost), re-judged
        bench = _text_bench(args.judge_n)
        base = rb.OUT / f"ray-base-{args.judge_n}"
        if not (base / "summary.json").exists():
            shutil.rmtree(base, ignore_errors=True)
            r = _timed_ok(_mm("run", str(bench), "-t", "mock/mixed", "--judge", "keyword", "--no-cache",
                              "--max-connections", "64", "-o", str(base), "--fail-on-error", "1"))
            print(f"stored {args.judge_n} replies in {r['wall_s']:.1f} s")
        runs: dict[str, dict] = {}
        for tag, extra in (("one", []), ("ray", on_ray), ("one_again", []), ("ray_again", on_ray)):
            d = rb.OUT / f"ray-judge-{tag}"
            shutil.rmtree(d, ignore_errors=True)
            shutil.copytree(base, d)
            runs[tag] = _timed_ok(_mm("judge", str(d), "--judge", "offline", "--no-cache", *extra))
        out["judge"] = {"n": args.judge_n, "runs": runs,
                        "speedup": round(min(runs["one"]["wall_s"], runs["one_again"]["wall_s"])
                                         / min(runs["ray"]["wall_s"], runs["ray_again"]["wall_s"]), 3),
                        "identical": _same(rb.OUT / "ray-judge-one", rb.OUT / "ray-judge-ray")}
        # 2. a run with the offline moderator as defense (CPU-bound: the moderator scores every reply)
        bench = _text_bench(args.defense_n)
        runs = {}
        for tag, extra in (("one", []), ("ray", on_ray), ("one_again", []), ("ray_again", on_ray)):
            d = rb.OUT / f"ray-defense-{tag}"
            shutil.rmtree(d, ignore_errors=True)
            runs[tag] = _timed_ok(_mm("run", str(bench), "-t", "mock/mixed", "--judge", "keyword", "--no-cache",
                                      "--defense", "moderator:offline", "--max-connections", "64",
                                      "--fail-on-error", "1", "-o", str(d), *extra))
        out["defense"] = {"n": args.defense_n, "runs": runs,
                          "speedup": round(min(runs["one"]["wall_s"], runs["one_again"]["wall_s"])
                                           / min(runs["ray"]["wall_s"], runs["ray_again"]["wall_s"]), 3),
                          "identical": _same(rb.OUT / "ray-defense-one", rb.OUT / "ray-defense-ray")}
    finally:
        ray.shutdown()
    results["ray"] = out
    for k in ("judge", "defense"):
        if k not in out:
            continue
        o = out[k]
        walls = ", ".join(f"{t} {r['wall_s']:.1f} s" for t, r in o["runs"].items())
        print(f"ray {k} (n={o['n']}): {walls}; one process / Ray 2 workers = {o['speedup']}x (target >= 1.6; "
              f"best of 2 each); results identical: {o['identical']}")


def _ray_and_base(part: str, args: argparse.Namespace) -> tuple[Any, Path]:
    """(the ray module, the stored replies of the ``ray`` part); ray None (and why, printed) when
    ray is not installed or ``--parts ray`` has not stored the replies yet."""
    base = rb.OUT / f"ray-base-{args.judge_n}"
    try:
        import ray
    except ImportError:
        print(f"{part} part skipped: ray is not installed")
        return None, base
    if not (base / "summary.json").exists():
        print(f"{part} part skipped: run --parts ray first (needs {base})")
        return None, base
    return ray, base


def _timed_shard(*a: object) -> tuple[float, float]:
    """(wall s, CPU s) of one judge shard (mmsafe.runner.ray_exec._judge_shard) in this process."""
    from mmsafe.runner.ray_exec import _judge_shard

    t, c = time.perf_counter(), time.process_time()
    _judge_shard(*a)  # type: ignore[arg-type]
    return round(time.perf_counter() - t, 2), round(time.process_time() - c, 2)


def part_ray_cpu(args: argparse.Namespace, results: dict) -> None:
    """Where the Ray judge's time goes: the offline judge's CPU per sample in one process and in
    each Ray worker (4 shards of N/4 on 2 workers), and the workers' wall: on a machine whose
    cores other work shares, wall/CPU > 1 says the workers waited for a core."""
    ray, base = _ray_and_base("ray_cpu", args)
    if ray is None:
        return
    from mmsafe.datasets import open_benchmark
    from mmsafe.judges import make_judge

    bench = open_benchmark(_text_bench(args.judge_n))
    samples = list(bench.iter_samples())
    judge = make_judge("offline")
    shards = [rb.OUT / f"ray-cpu-{k}" for k in range(5)]
    for d in shards:
        shutil.rmtree(d, ignore_errors=True)
        d.mkdir(parents=True)
    half = len(samples) // 2
    one = _timed_shard(samples[:half], judge, "cpu-one", str(base), None, str(shards[4]), 16, False, None,
                       str(bench.root))
    os.environ.setdefault("RAY_worker_niceness", "0")
    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        task = ray.remote(_timed_shard).options(num_cpus=1)
        q = len(samples) // 4
        t0 = time.perf_counter()
        got = ray.get([task.remote(samples[k * q:(k + 1) * q], judge, f"cpu-{k}", str(base), None, str(shards[k]), 8,
                                   False, None, str(bench.root)) for k in range(4)])
        wall = time.perf_counter() - t0
    finally:
        ray.shutdown()
    per_one = one[1] / half * 1000
    per_ray = sum(c for _, c in got) / (4 * q) * 1000
    results["ray_cpu"] = {"one_process": {"n": half, "wall_s": one[0], "cpu_s": one[1]},
                          "shards": [{"n": q, "wall_s": w, "cpu_s": c} for w, c in got], "wall_s": round(wall, 2),
                          "cpu_ms_per_sample_one": round(per_one, 3), "cpu_ms_per_sample_ray": round(per_ray, 3)}
    print(f"offline judge CPU per sample: one process {per_one:.3f} ms, Ray worker {per_ray:.3f} ms; "
          f"4 shards of {q} on 2 workers: {wall:.1f} s wall for {sum(c for _, c in got):.1f} s of worker CPU "
          f"(wall x 2 / CPU = {2 * wall / max(0.01, sum(c for _, c in got)):.2f}: 1.0 = both cores the workers')")


# --------------------------------------------------------------------------- ray_floor: the best Ray could do here

# run in a child process: the mmsafe CLI with its sample pool timed (the part shards could split)
_PHASES = r"""
import json, sys, time
t0 = time.perf_counter()
import mmsafe.runner.rejudge as rj, mmsafe.runner.run as rr
pool_s = []
def timed(orig):
    async def pool(*a, **k):
        t = time.perf_counter()
        try:
            return await orig(*a, **k)
        finally:
            pool_s.append(time.perf_counter() - t)
    return pool
rj.run_pool, rr.run_pool = timed(rj.run_pool), timed(rr.run_pool)
from mmsafe.cli.app import main
sys.argv = ["mmsafe", *sys.argv[1:]]
try:
    main()
except SystemExit as e:
    assert not e.code, e.code
print(json.dumps({"pool_s": sum(pool_s), "in_python_s": time.perf_counter() - t0}))
"""

# a fresh process joining the sitting's cluster as a Ray command does: import ray, connect, the
# job's first two tasks (each on a new worker that starts Ray's worker process and imports what a
# judge shard needs), disconnect -- what every Ray command pays besides its shards
_RAY_FIXED = r"""
import json, sys, time
t0 = time.perf_counter()
import ray
t1 = time.perf_counter()
ray.init(address=sys.argv[1], include_dashboard=False, log_to_driver=False, configure_logging=False)
t2 = time.perf_counter()
@ray.remote(num_cpus=1)
def boot():
    import time
    import mmsafe.judges.offline, mmsafe.runner.ray_exec  # noqa: F401
    return time.process_time()
cpu = ray.get([boot.remote() for _ in range(2)])
t3 = time.perf_counter()
ray.shutdown()
t4 = time.perf_counter()
print(json.dumps({"import_s": t1 - t0, "connect_s": t2 - t1, "disconnect_s": t4 - t3,
                  "first_tasks_s": t3 - t2, "worker_boot_cpu_s": sum(cpu) / len(cpu)}))
"""


def _child_json(code: str, *args: str) -> tuple[dict, float]:
    t = time.perf_counter()
    p = subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, env=_env())
    wall = time.perf_counter() - t
    if p.returncode:
        raise SystemExit(f"ray_floor: child failed: {p.stderr.strip()[-500:]}")
    return json.loads(p.stdout.strip().splitlines()[-1]), wall


def part_ray_floor(args: argparse.Namespace, results: dict) -> None:
    """Amdahl's bound for the ``ray`` part on this machine: each one-process workload split into
    the sample pool (what shards can share) and the rest (start, summary, results: the driver
    does them alone), plus what joining and leaving a Ray cluster costs a fresh process. With 2
    perfect workers that start for free and never wait, the best Ray wall is
    rest + pool / 2 + import ray + connect + disconnect. Also measured, and left out of that bound:
    the CPU each new worker spends starting before it can take a shard."""
    ray, base = _ray_and_base("ray_floor", args)
    if ray is None:
        return
    os.environ.setdefault("RAY_worker_niceness", "0")
    ctx = ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)
    addr = ctx.address_info["gcs_address"]
    out: dict = {}
    try:
        runs = [_child_json(_RAY_FIXED, addr)[0] for _ in range(3)]
        got = {k: round(min(f[k] for f in runs), 3) for k in runs[0]}  # the best of 3 for each
        ray_fixed = {k: got[k] for k in ("import_s", "connect_s", "disconnect_s")}
        boot = {k: got[k] for k in ("worker_boot_cpu_s", "first_tasks_s")}
        d = rb.OUT / "ray-floor"
        work = {"judge": lambda: ["judge", str(d), "--judge", "offline", "--no-cache"],
                "defense": lambda: ["run", str(_text_bench(args.defense_n)), "-t", "mock/mixed", "--judge", "keyword",
                                    "--no-cache", "--defense", "moderator:offline", "--max-connections", "64",
                                    "-o", str(d)]}
        for name, argv in work.items():
            best: tuple[dict, float] | None = None
            for _ in range(2):
                shutil.rmtree(d, ignore_errors=True)
                if name == "judge":
                    shutil.copytree(base, d)
                got = _child_json(_PHASES, *argv())
                best = got if best is None or got[1] < best[1] else best
            assert best is not None
            ph, wall = best
            rest = wall - ph["pool_s"]
            floor = rest + ph["pool_s"] / 2 + sum(ray_fixed.values())
            out[name] = {"one_process_wall_s": round(wall, 2), "pool_s": round(ph["pool_s"], 2),
                         "rest_s": round(rest, 2), "ray_floor_wall_s": round(floor, 2),
                         "max_speedup": round(wall / floor, 3)}
        shutil.rmtree(d, ignore_errors=True)
    finally:
        ray.shutdown()
    results["ray_floor"] = {"ray_fixed_s": ray_fixed, "worker_boot": boot, **out}
    print(f"ray_floor: a fresh process joining Ray: import {ray_fixed['import_s']:.2f} s, connect "
          f"{ray_fixed['connect_s']:.2f} s, disconnect {ray_fixed['disconnect_s']:.2f} s; each new worker spends "
          f"{boot['worker_boot_cpu_s']:.2f} s of CPU before its first shard (first 2 tasks back after "
          f"{boot['first_tasks_s']:.2f} s; not in the bound below)")
    for name, o in out.items():
        print(f"ray_floor {name}: one process {o['one_process_wall_s']:.1f} s = sample pool {o['pool_s']:.1f} s "
              f"+ the rest {o['rest_s']:.1f} s; with 2 perfect workers Ray needs >= {o['ray_floor_wall_s']:.1f} s: "
              f"at most {o['max_speedup']}x")


# --------------------------------------------------------------------------- replicas: 2 servers vs 1

_CPU_SERVER = r"""
import hashlib, os, sys, time
from aiohttp import web
BURN = float(os.environ["BURN_MS"]) / 1000
async def chat(request):
    body = await request.json()
    t = time.process_time() + BURN  # server-side CPU per request: the event loop is busy meanwhile
    x = b"x"
    while time.process_time() < t:
        x = hashlib.sha256(x).digest()
    return web.json_response({"id": "c", "object": "chat.completion", "model": body.get("model"),
        "choices": [{"index": 0, "finish_reason": "stop", "message": {"role": "assistant",
        "content": "I can't help with that."}}], "usage": {"prompt_tokens": 5, "completion_tokens": 6}})
app = web.Application()
app.router.add_post("/v1/chat/completions", chat)
web.run_app(app, host="127.0.0.1", port=int(sys.argv[1]), print=None)
"""


def part_replicas(args: argparse.Namespace, results: dict) -> None:
    import socket

    ports = []
    for _ in range(2):
        with socket.socket() as sk:
            sk.bind(("127.0.0.1", 0))
            ports.append(sk.getsockname()[1])
    env = {**os.environ, "BURN_MS": str(args.burn_ms)}
    servers = [subprocess.Popen([sys.executable, "-c", _CPU_SERVER, str(p)], env=env) for p in ports]
    try:
        for p in ports:
            rb.wait_port(p)
        bench = _text_bench(args.replica_n)
        urls = [f"http://127.0.0.1:{p}/v1" for p in ports]
        runs: dict[str, dict] = {}
        for tag, target in (("one", f"openai/m@{urls[0]}"), ("two", f"openai/m@{urls[0]},{urls[1]}"),
                            ("one_again", f"openai/m@{urls[0]}"), ("two_again", f"openai/m@{urls[0]},{urls[1]}")):
            d = rb.OUT / f"replicas-{tag}"
            shutil.rmtree(d, ignore_errors=True)
            runs[tag] = _timed_ok(_mm("run", str(bench), "-t", target, "--judge", "keyword", "--no-cache",
                                      "--max-connections", "16", "-o", str(d)))
    finally:
        for s in servers:
            s.send_signal(signal.SIGTERM)
            s.wait()
    speedup = round(min(runs["one"]["wall_s"], runs["one_again"]["wall_s"])
                    / min(runs["two"]["wall_s"], runs["two_again"]["wall_s"]), 3)
    results["replicas"] = {"n": args.replica_n, "burn_ms": args.burn_ms, "runs": runs, "speedup": speedup}
    walls = ", ".join(f"{t} {r['wall_s']:.1f} s" for t, r in runs.items())
    print(f"replicas (n={args.replica_n}, {args.burn_ms} ms server CPU per request): {walls}; "
          f"1 server / 2 replicas = {speedup}x (best of 2 each)")


PARTS = {"store": part_store, "ray": part_ray, "ray_cpu": part_ray_cpu, "ray_floor": part_ray_floor,
         "replicas": part_replicas}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=2000)
    ap.add_argument("--conc", type=int, default=100)
    ap.add_argument("--repeat", type=int, default=2, help="runs of each store, alternated (best of them)")
    ap.add_argument("--parts", default="store,ray,replicas", help=f"comma-separated: {', '.join(PARTS)}")
    ap.add_argument("--judge-n", type=int, default=20000, help="ray part: stored replies the offline judge re-judges")
    ap.add_argument("--defense-n", type=int, default=20000, help="ray part: samples of the run with moderator:offline")
    ap.add_argument("--replica-n", type=int, default=600, help="replicas part: samples")
    ap.add_argument("--burn-ms", type=float, default=20.0, help="replicas part: server CPU per request (ms)")
    args = ap.parse_args()
    if not (rb.SHARED_BENCH / "fakellm.py").exists():
        print(f"../shared/bench not found next to the repo ({rb.SHARED_BENCH}); nothing to measure")
        return
    rb.OUT.mkdir(parents=True, exist_ok=True)
    server = rb.start_server()
    results: dict = {"n": args.n, "conc": args.conc, "latency_ms": 100}
    try:
        for part in args.parts.split(","):
            PARTS[part.strip()](args, results)
    finally:
        server.send_signal(signal.SIGTERM)
        server.wait()
    (rb.OUT / "scale.json").write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
