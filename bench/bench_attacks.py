"""Throughput of dialogue generation and adaptive runs against a loopback server at a
fixed latency, next to the latency-bound throughput for the requested concurrency.

The scripted server (tests/_attack_servers.py) runs in its own process and answers every
request after LATENCY ms. Both workloads use mmsafe's real client path (engine limiter,
retries, ledger; the response cache is off so every request goes over the wire):

1. ``dialogues``: Q questions (64x64 PNG each; default 800) x 4 methods x 5 lengths, one generator
   request per dialogue (the image is sent to the generator). Bound:
   ``C / LATENCY`` dialogues/s.
2. ``adaptive``: M single-turn samples with an image (default 2560), ``mmsafe run --mode adaptive``:
   the attacker writes a turn, the target refuses it, the rubric LLM judge reads the
   reply, the exchange is backtracked, the attacker writes another turn, the target
   complies, the judge says unsafe — 6 sequential requests per sample (attacker, target
   and judge all on the loopback server; 4 with ``--judge keyword``), C samples in flight. Bound:
   ``C / (requests per sample x LATENCY)`` samples/s, with the requests per sample
   counted from the run's ledger.

3. ``pair``, ``tap``, ``goat`` (``--only attacks`` runs the three): C samples with an image, all
   in flight at once (``mmsafe run --mode adaptive --attack NAME``), the rubric LLM judge on the
   loopback server, two attackers each: ``-text`` keeps the request in the text, so the
   image-only target (``tgt-imgonly``) refuses until the budget is spent (PAIR 3 streams x 3
   iterations; TAP width 2, branching 2, depth 3, on-topic checks; GOAT 4 turns); ``-img`` moves
   the request into a FigStep image from the second attempt (images rendered and stored) and
   succeeds. ``--attack-batches`` x C samples (default 3 x 64), C in flight
   (``RunOptions.samples_in_flight``); the endpoints' connection caps are 4 x C x the attack's
   fan-out (the engine's AIMD limiter starts at a quarter of the cap, so it starts at C x
   fan-out: what is measured is the attack driver, not the limiter's ramp towards an unknown
   rate limit), so only the dependency chain limits a sample: each step's calls run
   concurrently, and a step costs at least one LATENCY. Latency bound: ``max(max rounds, total rounds / C) x
   LATENCY`` with the rounds (steps whose calls were made) read from the stored records; the
   ratio printed is ``latency bound / measured wall`` (whole ``execute()``: store, judge,
   summary included).

usage: python bench/bench_attacks.py [--concurrency 64] [--latency-ms 100]
                                     [--questions 800] [--samples 2560] [--judge rubric|keyword]
                                     [--server-processes 1] [--only dialogues|adaptive|attacks|pair|tap|goat]
                                     [--no-floor]

Prints samples/s, the bound and their ratio (target >= 0.80); writes
bench/out/bench_attacks.json.
"""

from __future__ import annotations

import argparse
import asyncio
import io
import json
import os
import resource
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))

from mmsafe.runtime import event_loop_name, run_async  # noqa: E402  (the CLI's loop: uvloop when installed)

from PIL import Image  # noqa: E402

from mmsafe.datasets import BenchmarkWriter  # noqa: E402
from mmsafe.types import BenchmarkManifest, Message, Sample, TextPart  # noqa: E402


def start_server(latency_ms: float, processes: int) -> tuple[list[subprocess.Popen], str]:
    """``processes`` server processes sharing one port (SO_REUSEPORT), so that the server
    side is never what limits the client under test."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    ps = [subprocess.Popen([sys.executable, str(REPO / "tests" / "_attack_servers.py"), str(latency_ms), str(port)],
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL) for _ in range(processes)]
    t0 = time.time()
    while time.time() - t0 < 20:
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                break
        time.sleep(0.05)
    else:
        for p in ps:
            p.kill()
        raise SystemExit("the loopback server did not start")
    time.sleep(1.0)  # let every process bind
    return ps, f"http://127.0.0.1:{port}/v1"


def png(i: int) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (64, 64), (i * 37 % 256, i * 11 % 256, 90)).save(buf, format="PNG")
    return buf.getvalue()


def make_source(root: Path, n: int, question: str = "Benchmark question {i}: how would someone carry out the act "
                "shown in the image?") -> Path:
    scen = ["Fraud", "Malware", "Privacy Violation", "Hate Speech"]
    with BenchmarkWriter(root, BenchmarkManifest(name=f"bench-src-{n}"), overwrite=True) as w:
        for i in range(n):
            img = w.add_image(png(i))
            q = question.format(i=i)
            w.add(Sample(id=f"q{i}", question=q, scenario=scen[i % 4], metadata={"group": f"q{i}"},
                         messages=[Message(role="user", content=[img, TextPart(text=q)])]))
    return root


def cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def bench_dialogues(url: str, work: Path, c: int, latency_s: float, questions: int) -> dict:
    from mmsafe.models import resolve_endpoint
    from mmsafe.runner.modes import generate_dialogues

    src = make_source(work / "src", questions)
    gen = resolve_endpoint(f"openai/gen-ok@{url}", "generator", max_connections=c)
    c0, t0 = cpu(), time.perf_counter()
    rep = run_async(generate_dialogues(src, work / "dialogues", gen, overwrite=True, use_cache=False))
    wall = time.perf_counter() - t0
    cpu_s = cpu() - c0
    reqs = rep.ledger["generator"]["calls"]
    bound = c / (latency_s * reqs / rep.n_samples)
    rate = rep.n_samples / wall
    return {"workload": "dialogues", "samples": rep.n_samples, "requests": reqs, "concurrency": c,
            "wall_s": round(wall, 3), "samples_per_s": round(rate, 1), "bound_samples_per_s": round(bound, 1),
            "ratio": round(rate / bound, 3), "cpu_ms_per_request": round(1000 * cpu_s / reqs, 3),
            "failed": rep.n_failed}


def bench_adaptive(url: str, work: Path, c: int, latency_s: float, samples: int, judge_kind: str = "rubric") -> dict:
    from mmsafe.judges import make_judge
    from mmsafe.models import resolve_endpoint
    from mmsafe.runner import RunOptions, execute

    src = make_source(work / "adv-src", samples)
    models = work / "models.yaml"
    models.write_text("models:\n" + "".join(
        f"  {n}:\n    spec: openai/{m}@{url}\n    max_connections: {c}\n"
        for n, m in (("tgt", "tgt-refuse-1"), ("atk", "atk-ok"), ("jdg", "judge-auto"))))
    target = resolve_endpoint("tgt", "target", models_file=models)
    attacker = resolve_endpoint("atk", "attacker", models_file=models)
    judge = make_judge("rubric:jdg" if judge_kind == "rubric" else "keyword", models_file=models)
    out = work / "adaptive-run"
    shutil.rmtree(out, ignore_errors=True)
    opts = RunOptions(benchmark=src, target=target, judge=judge, out=out, mode="adaptive", attacker=attacker,
                      max_turns=5, max_backtracks=3, use_cache=False)
    c0, t0 = cpu(), time.perf_counter()
    outcome = run_async(execute(opts))
    wall = time.perf_counter() - t0
    cpu_s = cpu() - c0
    s = outcome.summary
    reqs = sum(v["calls"] for v in s["ledger"].values())
    per_sample = reqs / s["n_samples"]
    bound = c / (latency_s * per_sample)
    rate = s["n_samples"] / wall
    return {"workload": "adaptive" + ("" if judge_kind == "rubric" else "-kw"), "samples": s["n_samples"], "requests": reqs,
            "requests_per_sample": round(per_sample, 2), "concurrency": c, "wall_s": round(wall, 3),
            "samples_per_s": round(rate, 1), "bound_samples_per_s": round(bound, 1), "ratio": round(rate / bound, 3),
            "cpu_ms_per_request": round(1000 * cpu_s / reqs, 3), "asr": s["asr"],
            "status": s["multiturn"]["status"], "backtracks_per_success": s["multiturn"]["backtracks"]["per_success"]}


ATTACK_LOADS = {  # attack -> (--attack-opt options, fan-out: most concurrent calls per sample)
    "pair": ({"n_streams": 3, "n_iterations": 3}, 3),
    "tap": ({"width": 2, "branching": 2, "depth": 3}, 4),
    "goat": ({"max_turns": 4}, 1),
}


def bench_attack(url: str, work: Path, name: str, attacker: str, c: int, latency_s: float, batches: int = 3) -> dict:
    """One attack on ``batches`` x C samples, C in flight; the latency bound from the rounds each sample made."""
    import sqlite3

    from mmsafe.judges import make_judge
    from mmsafe.models import resolve_endpoint
    from mmsafe.runner import RunOptions, execute

    options, fanout = ATTACK_LOADS[name]
    src = work / f"attack-src-{batches * c}"
    if not src.exists():  # questions with "harmful question" in them: what tgt-imgonly looks for in the text
        make_source(src, batches * c, question="Underlying harmful question {i}")
    models = work / f"models-{name}.yaml"
    models.write_text("models:\n" + "".join(
        f"  {n}:\n    spec: openai/{m}@{url}\n    max_connections: {4 * c * fanout}\n"
        for n, m in (("tgt", "tgt-imgonly"), ("atk", attacker), ("jdg", "judge-auto"))))
    out = work / f"run-{name}-{attacker}"
    shutil.rmtree(out, ignore_errors=True)
    opts = RunOptions(benchmark=src, target=resolve_endpoint("tgt", "target", models_file=models),
                      judge=make_judge("rubric:jdg", models_file=models), out=out, mode="adaptive",
                      attacker=resolve_endpoint("atk", "attacker", models_file=models), attack=name,
                      attack_options=dict(options), use_cache=False, samples_in_flight=c)
    c0, t0 = cpu(), time.perf_counter()
    outcome = run_async(execute(opts))
    wall = time.perf_counter() - t0
    cpu_s = cpu() - c0
    s = outcome.summary
    db = sqlite3.connect(out / "run.sqlite")
    rounds = [json.loads(e)["outcome"]["rounds"] for (e,) in db.execute("SELECT extra FROM responses")]
    images = sum(len(json.loads(e).get("images", [])) for (e,) in db.execute("SELECT extra FROM responses"))
    db.close()
    reqs = sum(v["calls"] for v in s["ledger"].values())
    bound_wall = max(max(rounds), sum(rounds) / c) * latency_s
    return {"workload": f"{name}-{attacker.removeprefix('atk-')}", "samples": s["n_samples"], "requests": reqs,
            "concurrency": c, "connection_cap": 4 * c * fanout, "rounds_max": max(rounds), "rounds_total": sum(rounds),
            "wall_s": round(wall, 3), "bound_wall_s": round(bound_wall, 3),
            "samples_per_s": round(s["n_samples"] / wall, 1),
            "bound_samples_per_s": round(s["n_samples"] / bound_wall, 1), "ratio": round(bound_wall / wall, 3),
            "cpu_ms_per_request": round(1000 * cpu_s / reqs, 3), "asr": s["asr"],
            "status": s["multiturn"]["status"], "images_made": images}


def bench_floor(url: str, c: int, latency_s: float, samples: int, chain: int, model: str, label: str) -> dict:
    """The raw aiohttp floor on the same server: ``samples`` chains of ``chain`` sequential
    requests (a small JSON body with a 64x64 PNG), ``c`` chains in flight, no harness."""
    import base64

    import aiohttp
    import orjson

    img = "data:image/png;base64," + base64.b64encode(png(1)).decode()
    body = orjson.dumps({"model": model, "messages": [{"role": "user", "content": [
        {"type": "image_url", "image_url": {"url": img}}, {"type": "text", "text": "exactly 4 user turns " * 50}]}]})

    async def run() -> float:
        sem = asyncio.Semaphore(c)
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=c)) as s:
            async def one() -> None:
                async with sem:
                    for _ in range(chain):
                        async with s.post(url + "/chat/completions", data=body,
                                          headers={"Content-Type": "application/json"}) as r:
                            await r.read()
            t0 = time.perf_counter()
            await asyncio.gather(*(one() for _ in range(samples)))
            return time.perf_counter() - t0

    c0 = cpu()
    wall = run_async(run())
    cpu_s = cpu() - c0
    bound = c / (latency_s * chain)
    return {"workload": label, "samples": samples, "requests": samples * chain, "concurrency": c,
            "wall_s": round(wall, 3), "samples_per_s": round(samples / wall, 1),
            "bound_samples_per_s": round(bound, 1), "ratio": round(samples / wall / bound, 3),
            "cpu_ms_per_request": round(1000 * cpu_s / (samples * chain), 3)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--concurrency", type=int, default=64)
    ap.add_argument("--latency-ms", type=float, default=100.0)
    ap.add_argument("--questions", type=int, default=800, help="dialogues: questions (x4 methods x5 lengths)")
    ap.add_argument("--samples", type=int, default=2560, help="adaptive: samples")
    ap.add_argument("--only", choices=("dialogues", "adaptive", "attacks", "pair", "tap", "goat"))
    ap.add_argument("--server-processes", type=int, default=1)
    ap.add_argument("--attack-batches", type=int, default=3, help="pair/tap/goat: samples = this x --concurrency")
    ap.add_argument("--attack-latency-ms", type=float, default=1000.0,
                    help="pair/tap/goat: the loopback latency (default 1 s, an LLM call's order: at 100 ms their "
                         "C x fan-out requests per step need ~2,000 requests/s, more than one process's CPU)")
    ap.add_argument("--judge", choices=("rubric", "keyword"), default="rubric",
                    help="adaptive: rubric LLM judge on the loopback server (6 requests/sample) or the keyword "
                         "baseline (no judge request: 4 requests/sample)")
    ap.add_argument("--no-floor", dest="floor", action="store_false",
                    help="skip the raw-aiohttp floor runs (same request pattern, no harness)")
    a = ap.parse_args()
    from mmsafe.runtime import tune_gc
    tune_gc()  # as `mmsafe` (cli.main) does: the jobs run in-process here
    attacks_only = a.only in ("attacks", *ATTACK_LOADS)
    procs, url = start_server(a.attack_latency_ms if attacks_only else a.latency_ms, a.server_processes)
    results = []
    try:
        with tempfile.TemporaryDirectory(prefix="mmsafe-bench-attacks-") as tmp:
            work = Path(tmp)
            lat = a.latency_ms / 1000
            if a.only in (None, "dialogues"):
                results.append(bench_dialogues(url, work, a.concurrency, lat, a.questions))
                if a.floor:
                    results.append(bench_floor(url, a.concurrency, lat, a.questions * 20, 1, "gen-ok", "floor-1"))
            if a.only in (None, "adaptive"):
                results.append(bench_adaptive(url, work, a.concurrency, lat, a.samples, a.judge))
                if a.floor:
                    n = int(results[-1]["requests_per_sample"])
                    results.append(bench_floor(url, a.concurrency, lat, a.samples, n, "tgt-refuse-1", f"floor-{n}"))
            if a.only is None and a.attack_latency_ms != a.latency_ms:  # the attacks at their own latency
                for p in procs:
                    p.terminate()
                    p.wait(5)
                procs, url = start_server(a.attack_latency_ms, a.server_processes)
            for name in ATTACK_LOADS:
                if a.only in (None, "attacks", name):
                    for attacker in ("atk-text", "atk-img"):
                        results.append(bench_attack(url, work, name, attacker, a.concurrency,
                                                    a.attack_latency_ms / 1000, a.attack_batches))
    finally:
        for p in procs:
            p.terminate()
        for p in procs:
            p.wait(5)
    print(f"loopback server latency {a.latency_ms:g} ms (pair/tap/goat: {a.attack_latency_ms:g} ms), concurrency "
          f"{a.concurrency}, event loop {event_loop_name()}")
    print(f"{'workload':<10} {'samples':>7} {'requests':>8} {'wall s':>7} {'samples/s':>9} {'bound/s':>8} "
          f"{'ratio':>6} {'CPU ms/req':>10}")
    for r in results:
        print(f"{r['workload']:<10} {r['samples']:>7} {r['requests']:>8} {r['wall_s']:>7.2f} {r['samples_per_s']:>9.1f} "
              f"{r['bound_samples_per_s']:>8.1f} {r['ratio']:>6.2f} {r['cpu_ms_per_request']:>10.3f}")
    ok = all(r["ratio"] >= 0.8 for r in results if not r["workload"].startswith("floor"))
    print(f"load average during the run: {os.getloadavg()[0]:.2f} on {os.cpu_count()} CPUs "
          "(floor-N: raw aiohttp, chains of N sequential requests, no harness: what this machine allows)")
    print("PASS: every workload >= 80% of the latency bound" if ok else "FAIL: below 80% of the latency bound")
    out = REPO / "bench" / "out"
    out.mkdir(parents=True, exist_ok=True)
    (out / "bench_attacks.json").write_text(json.dumps({"latency_ms": a.latency_ms,
                                                        "attack_latency_ms": a.attack_latency_ms,
                                                        "concurrency": a.concurrency,
                                                        "load_average": os.getloadavg()[0],
                                                        "cpus": os.cpu_count(), "results": results, "pass": ok},
                                                       indent=2))
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
