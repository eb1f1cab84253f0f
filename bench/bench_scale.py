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

usage: python bench/bench_scale.py [--n 2000] [--conc 100] [--repeat 2] [--parts store]

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


PARTS = {"store": part_store}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=2000)
    ap.add_argument("--conc", type=int, default=100)
    ap.add_argument("--repeat", type=int, default=2, help="runs of each store, alternated (best of them)")
    ap.add_argument("--parts", default="store", help=f"comma-separated: {', '.join(PARTS)}")
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
