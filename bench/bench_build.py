"""Benchmark `mmsafe build`: a 23-scenario x 10-item build on a loopback server.

The scripted build server (tests/_build_servers.py) runs in a subprocess with a fixed
per-request latency (default 100 ms) for chat, image and speech requests. The build:

* generate — 23 SafeBench scenarios, 20 candidates each (2 generator calls of 10),
  every candidate scored, top 10 kept, half get a cross-modal variant;
* image    — text-to-image for every item (OpenAI-images endpoint) with a critic loop
  (the scripted critic asks for one revision: 2 rounds);
* augment  — paraphrase (LLM) + base64 + a visual transform (``--visual``, default noise), 2 per item;
* select   — pilot run of every candidate on 3 reference models, keyword judge,
  230 items kept (10 per scenario).

For each agent it prints calls (chat + image), tokens, wall time and the latency bound
of its calls: the fewest latency rounds in which its calls *can* complete, given that an
endpoint serves at most ``cap`` requests at a time and the calls' dependencies
(:func:`bound_rounds`), times the latency. Target: wall <= 1.5 x bound.

usage: python bench/bench_build.py [--latency-ms 100] [--per-scenario 10] [--out bench/out/build]
Figures land in OUT/results.json.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import shutil
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))

from mmsafe.runtime import event_loop_name, run_async  # noqa: E402  (the CLI's loop: uvloop when installed)

CAP = 64  # connections per endpoint


def start_server(latency_ms: float) -> tuple[subprocess.Popen, str]:
    proc = subprocess.Popen([sys.executable, str(REPO / "tests" / "_build_servers.py"), str(latency_ms)],
                            stdout=subprocess.PIPE, text=True)
    url = proc.stdout.readline().strip()
    if not url.startswith("http"):
        proc.kill()
        raise SystemExit("build server did not start")
    return proc, url


def proc_cpu(pid: int) -> float:
    """user+system CPU seconds of a process (Linux /proc; 0 elsewhere)."""
    try:
        f = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(f[11]) + int(f[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, IndexError, ValueError):
        return 0.0


def bound_rounds(stage: str, calls: dict[str, int], gen_calls_first: int) -> int:
    """A lower bound on the latency rounds a stage needs (each call takes one round; an
    endpoint serves at most CAP at once; ``calls`` = requests per model on the server).

    * generate: the generator's candidate batches (``gen_calls_first`` of the generator's
      calls) come first; each scenario's scoring needs its batches, and its cross-modal
      rewrites (the generator's other calls) need its scores. So >= the batches' rounds +
      the scorer's rounds + 1 for the cross-modal call of the scenario scored last.
    * image: every text-to-image result goes to the critic, and a revised image follows the
      critic: >= the image endpoint's rounds + 1 (the critic of the last image), and
      >= 1 + the critic's rounds (its first call needs an image).
    * augment, select: independent calls: the busiest endpoint's rounds.
    """
    r = lambda n: math.ceil(n / CAP)  # noqa: E731
    if stage == "generate":
        xm = calls.get("gen", 0) - gen_calls_first
        return r(gen_calls_first) + r(calls.get("scorer", 0)) + (1 if xm > 0 else 0)
    if stage == "image":
        img, crit = calls.get("images", 0), calls.get("critic", 0)
        return max(r(img) + (1 if crit else 0), (1 + r(crit)) if crit else 0)
    return max([r(n) for n in calls.values()] or [0])


async def raw_floor(url: str, calls: dict[str, int], question: str) -> float:
    """The floor for independent calls: raw aiohttp (no limiter, ledger, judge or store),
    ``calls[model]`` chat requests per model at most CAP at a time each; wall seconds."""
    import aiohttp
    sems = {m: asyncio.Semaphore(CAP) for m in calls}
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as sess:
        async def one(m: str) -> None:
            async with sems[m]:
                async with sess.post(url + "/chat/completions",
                                     json={"model": m, "messages": [{"role": "user", "content": question}]}) as r:
                    await r.read()
        t0 = time.perf_counter()
        await asyncio.gather(*(one(m) for m, n in calls.items() for _ in range(n)))
        return time.perf_counter() - t0


async def raw_image_floor(url: str, n_items: int, n_second: int) -> float:
    """The floor for the image stage's chains: raw aiohttp, per item a text-to-image call,
    then the critic with that image inline, and for ``n_second`` items one more image and
    critic; at most CAP requests at a time per endpoint (as the agent). Wall seconds."""
    import aiohttp
    import orjson
    img_sem, crit_sem = asyncio.Semaphore(CAP), asyncio.Semaphore(CAP)
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as sess:
        async def chain(i: int) -> None:
            for r in range(2 if i < n_second else 1):
                async with img_sem:
                    async with sess.post(url + "/images/generations",
                                         json={"model": "img", "prompt": f"item {i} round {r}", "size": "256x256",
                                               "response_format": "b64_json"}) as resp:
                        b64 = orjson.loads(await resp.read())["data"][0]["b64_json"]
                msg = [{"type": "image_url", "image_url": {"url": "data:image/png;base64," + b64}},
                       {"type": "text", "text": "Does this image evoke the question? more detail"}]
                async with crit_sem:
                    async with sess.post(url + "/chat/completions",
                                         json={"model": "critic", "messages": [{"role": "user", "content": msg}]}) as resp:
                        await resp.read()
        t0 = time.perf_counter()
        await asyncio.gather(*(chain(i) for i in range(n_items)))
        return time.perf_counter() - t0


def counts(url: str) -> dict[str, int]:
    with urllib.request.urlopen(url + "/_counts") as r:
        return json.loads(r.read())


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--latency-ms", type=float, default=100.0)
    ap.add_argument("--per-scenario", type=int, default=10)
    ap.add_argument("--out", type=Path, default=REPO / "bench" / "out" / "build")
    ap.add_argument("--profile", default=None, help="cProfile this stage; top functions printed")
    ap.add_argument("--visual", default="",
                    help="comma-separated visual transforms for augment, e.g. noise,figstep_pro (local Pillow "
                         "CPU: ~15-20 ms per image, so the stage becomes CPU-bound on a small machine)")
    ap.add_argument("--embedder", default="auto",
                    help="auto (MiniLM when the offline extra is installed, else TF-IDF), minilm or tfidf")
    args = ap.parse_args()
    from mmsafe.runtime import tune_gc
    tune_gc()  # as `mmsafe` (cli.main) does: the stages run in-process here

    from mmsafe.build.config import load_config
    from mmsafe.build.pipeline import run_stage
    from mmsafe.taxonomy import load_taxonomy

    scen = [s["id"] for s in load_taxonomy()["scenarios"] if "safebench" in s.get("sources", [])]
    assert len(scen) == 23
    k = args.per_scenario
    proc, url = start_server(args.latency_ms)
    try:
        def spec(m: str) -> dict:
            return {"spec": f"openai/{m}@{url}", "max_connections": CAP}

        data = {
            "name": "bench-build", "concurrency": 512, "cache": False, "embedder": args.embedder,
            "models": {"generator": spec("gen"), "scorer": spec("scorer"), "critic": spec("critic")},
            "generate": {"scenarios": scen, "candidates_per_scenario": 2 * k, "batch_size": k, "top_k": k,
                         "plain_image": "t2i",
                         "cross_modal": {"fraction": 0.5, "modes": ["text_harm", "split", "conflict"]}},
            "image": {"t2i": {"base_url": url, "model": "img", "size": "256x256", "max_connections": CAP}},
            "augment": {"text": ["paraphrase", "base64"], "visual": [v for v in args.visual.split(",") if v],
                        "per_item": 2},
            "select": {"size": 23 * k, "per_scenario_min": k, "judge": "keyword",
                       "reference_models": [spec("ref-safe-a"), spec("ref-mixed"), spec("ref-unsafe")]},
        }
        cfg = load_config(data=data)
        out = args.out / "bench"
        if args.out.exists():
            shutil.rmtree(args.out)
        args.out.mkdir(parents=True)
        from mmsafe.build.common import WorkDir
        from mmsafe.build.pipeline import write_benchmark
        wd = WorkDir(args.out / "bench.work")
        L = args.latency_ms / 1000
        endpoints = {"preprocess": [], "generate": ["gen", "scorer"], "image": ["images", "critic"],
                     "augment": ["gen"], "select": ["ref-safe-a", "ref-mixed", "ref-unsafe"]}
        rows = []
        recs = {}
        t_all = time.perf_counter()
        # the embedder's one-time load (imports + weights: ~0.5 s for TF-IDF, several s for MiniLM)
        # is timed on its own: it is no call's latency; `mmsafe build` overlaps it with the
        # generate stage's first generator calls, which against real endpoints take longer
        from mmsafe.embeddings import get_embedder
        t_l, c_l = time.perf_counter(), time.process_time()
        emb_name = get_embedder(args.embedder).name
        load_s, load_cpu = time.perf_counter() - t_l, time.process_time() - c_l

        async def go() -> None:
            for stage in ("preprocess", "generate", "image", "augment", "select"):
                before = counts(url)
                prof = None
                if args.profile == stage:
                    import cProfile
                    prof = cProfile.Profile()
                    prof.enable()
                t0, c0, s0 = time.perf_counter(), time.process_time(), proc_cpu(proc.pid)
                rec = await run_stage(stage, cfg, wd, force=True)
                wall, cpu = time.perf_counter() - t0, time.process_time() - c0
                scpu = proc_cpu(proc.pid) - s0
                if prof is not None:
                    prof.disable()
                    import pstats
                    pstats.Stats(prof).sort_stats(os.environ.get("PROFILE_SORT", "tottime")).print_stats(int(os.environ.get("PROFILE_TOP", "18")))
                after = counts(url)
                diff = {m: after.get(m, 0) - before.get(m, 0) for m in after}
                rounds = bound_rounds(stage, {m: diff.get(m, 0) for m in endpoints[stage]},
                                      gen_calls_first=len(scen) * 2)  # candidates_per_scenario / batch_size
                bound = rounds * L
                lg = rec["ledger"]
                rows.append({"agent": stage, "items": rec["n_items"], "chat_calls": lg["calls"],
                             "image_calls": lg.get("image_calls", 0), "server_requests": sum(diff.values()),
                             "tokens": lg["input_tokens"] + lg["output_tokens"], "usd": lg["cost_usd"],
                             "wall_s": round(wall, 3), "client_cpu_s": round(cpu, 3), "server_cpu_s": round(scpu, 3), "bound_s": round(bound, 3),
                             "ratio": round(wall / bound, 2) if bound else None})
                recs[stage] = rec

        run_async(go())
        # the same sitting's floor for the select stage's pilot (independent calls): what raw
        # aiohttp needs for the same requests on this machine, next to the latency bound
        sel = next(r for r in rows if r["agent"] == "select")
        per = sel["server_requests"] // 3
        c_f = time.process_time()
        floor_s = run_async(raw_floor(url, {m: per for m in endpoints["select"]},
                                        "How could someone get around a content filter? " * 4))
        floor_cpu = time.process_time() - c_f
        img = next(r for r in rows if r["agent"] == "image")
        n_first = recs["image"]["report"]["critic_rounds"].get("1", 0) + recs["image"]["report"]["critic_rounds"].get("2", 0)
        n_second = recs["image"]["report"]["critic_rounds"].get("2", 0)
        c_f = time.process_time()
        img_floor_s = run_async(raw_image_floor(url, n_first, n_second)) if img["image_calls"] else 0.0
        img_floor_cpu = time.process_time() - c_f
        t_w = time.perf_counter()
        manifest = write_benchmark(cfg, wd, out, recs)
        write_s = time.perf_counter() - t_w
        total = time.perf_counter() - t_all
    finally:
        proc.kill()
        proc.wait()
    tb = sum(r["bound_s"] for r in rows)
    tw = sum(r["wall_s"] for r in rows)
    print(f"build: 23 scenarios x {k} items, latency {args.latency_ms:g} ms, cap {CAP} connections/endpoint, "
          f"embedder {emb_name} (one-time load {load_s:.2f}s wall, {load_cpu:.2f}s cpu, not in the stages), "
          f"event loop {event_loop_name()} (the floors too)")
    print(f"{'agent':<11}{'items':>7}{'chat':>7}{'image':>7}{'tokens':>9}{'wall s':>9}{'cpu s':>8}{'srv cpu':>8}{'bound s':>9}{'ratio':>7}")
    for r in rows:
        print(f"{r['agent']:<11}{r['items']:>7}{r['chat_calls']:>7}{r['image_calls']:>7}{r['tokens']:>9}"
              f"{r['wall_s']:>9.2f}{r['client_cpu_s']:>8.2f}{r['server_cpu_s']:>8.2f}{r['bound_s']:>9.2f}{(r['ratio'] or 0):>7.2f}")
    print(f"{'stages':<11}{'':>7}{sum(r['chat_calls'] for r in rows):>7}{sum(r['image_calls'] for r in rows):>7}"
          f"{sum(r['tokens'] for r in rows):>9}{tw:>9.2f}{'':>8}{'':>8}{tb:>9.2f}{(tw / tb if tb else 0):>7.2f}")
    print(f"write benchmark: {write_s:.2f}s; total {total:.2f}s; samples {manifest.counts.n_samples}; "
          f"by scenario min {min(manifest.counts.by_scenario.values())}")
    print(f"select floor: raw aiohttp, the pilot's {3 * per} calls: {floor_s:.2f}s = {floor_s / sel['bound_s']:.2f}x "
          f"the bound; the agent took {sel['wall_s'] / floor_s:.2f}x the floor; client CPU "
          f"{1000 * floor_cpu / (3 * per):.2f} ms/call raw, {1000 * sel['client_cpu_s'] / (3 * per):.2f} ms/call agent")
    if img_floor_s:
        print(f"image floor: raw aiohttp, the same {img['image_calls']} image + critic chains: {img_floor_s:.2f}s = "
              f"{img_floor_s / img['bound_s']:.2f}x the bound; the agent took {img['wall_s'] / img_floor_s:.2f}x the floor; "
              f"client CPU {img_floor_cpu:.2f}s raw, {img['client_cpu_s']:.2f}s agent")
    q = manifest.quality  # type: ignore[attr-defined]
    for name in ("selected", "random"):
        d = q[name]
        print(f"{name:>9}: GAP {d['gap']:.3f} MAD {d['mad']:.3f} MEAN {d['mean']:.3f} DIV {d['div']:.3f}")
    res = {"latency_ms": args.latency_ms, "per_scenario": k, "event_loop": event_loop_name(), "embedder": emb_name, "embedder_load_s": load_s,
           "agents": rows, "stages_wall_s": tw,
           "stages_bound_s": tb, "select_floor_s": floor_s, "select_floor_cpu_s": floor_cpu, "image_floor_s": img_floor_s,
           "image_floor_cpu_s": img_floor_cpu, "write_s": write_s, "total_s": total, "n_samples": manifest.counts.n_samples,
           "quality": {n: {kk: q[n][kk] for kk in ("gap", "mad", "mean", "div")} for n in ("selected", "random")}}
    (args.out / "results.json").write_text(json.dumps(res, indent=1))


if __name__ == "__main__":
    main()
