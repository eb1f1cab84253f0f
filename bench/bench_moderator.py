"""Benchmark the offline moderator's latency per conversation, for each shipped backend.

Conversations: the package's authored dialogues (3-6 user turns) and single prompts. For
each backend it times ``assess`` one conversation at a time and prints p50 / p95 / mean in
milliseconds for: a new conversation (nothing cached), a growing conversation (the same
conversation again with one more user turn: MiniLM's turn embeddings are cached) and a
single prompt. Target (issue 6): <= 20 ms per conversation on CPU.

usage: python bench/bench_moderator.py [--n 150] [--backends tfidf,minilm]
Figures land in bench/out/moderator.json.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from importlib import resources
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))


def pct(ts: list[float]) -> dict[str, float]:
    a = np.asarray(ts)
    return {"p50": round(float(np.percentile(a, 50)), 2), "p95": round(float(np.percentile(a, 95)), 2),
            "mean": round(float(a.mean()), 2), "n": len(ts)}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=150, help="dialogues (and as many single prompts)")
    ap.add_argument("--backends", default="tfidf,minilm")
    args = ap.parse_args()
    from mmsafe.defense.offline_model import OfflineModeratorModel, minilm_backend_available

    lines = resources.files("mmsafe.data.moderator").joinpath("dialogues.jsonl").read_text().splitlines()
    dialogues = [[(t["role"], t["content"]) for t in json.loads(x)["turns"]] for x in lines if x.strip()]
    step = max(1, len(dialogues) // args.n)
    dialogues = dialogues[::step][: args.n]
    singles = [[c[0]] for c in dialogues]
    res: dict[str, dict] = {}
    for backend in [b.strip() for b in args.backends.split(",") if b.strip()]:
        if backend == "minilm" and not minilm_backend_available():
            print("minilm: the offline extra is not installed; skipped")
            continue
        t0 = time.perf_counter()
        m = OfflineModeratorModel.load(backend=backend)
        m.assess(dialogues[0])  # the one-time load (MiniLM: torch + weights)
        load_s = time.perf_counter() - t0
        for c in dialogues[:5]:  # warm the code paths
            m.assess(c)
        new_ts, grow_ts, single_ts = [], [], []
        for c in dialogues:
            enc = getattr(m, "_encoder", None)
            if enc is not None:
                with enc._cache_lock:  # noqa: SLF001 - every conversation costed as new
                    enc._cache.clear()
            t = time.perf_counter()
            m.assess(c)
            new_ts.append((time.perf_counter() - t) * 1000)
            t = time.perf_counter()
            m.assess(list(c) + [("assistant", "I can share general information."),
                                ("user", "Thanks, and what would you add to that?")])
            grow_ts.append((time.perf_counter() - t) * 1000)
        for c in singles:
            enc = getattr(m, "_encoder", None)
            if enc is not None:
                with enc._cache_lock:  # noqa: SLF001
                    enc._cache.clear()
            t = time.perf_counter()
            m.assess(c)
            single_ts.append((time.perf_counter() - t) * 1000)
        res[backend] = {"load_s": round(load_s, 2), "new_conversation_ms": pct(new_ts),
                        "growing_conversation_ms": pct(grow_ts), "single_prompt_ms": pct(single_ts)}
    print(f"offline moderator latency, {len(dialogues)} dialogues of "
          f"{min(sum(r == 'user' for r, _ in c) for c in dialogues)}-"
          f"{max(sum(r == 'user' for r, _ in c) for c in dialogues)} user turns, one at a time")
    print(f"{'backend':<8}{'load s':>8}  {'new conv p50/p95':>18}  {'growing p50/p95':>17}  {'single p50/p95':>16}")
    for b, r in res.items():
        f = lambda d: f"{d['p50']:.1f} / {d['p95']:.1f}"  # noqa: E731
        print(f"{b:<8}{r['load_s']:>8.2f}  {f(r['new_conversation_ms']):>18}  {f(r['growing_conversation_ms']):>17}"
              f"  {f(r['single_prompt_ms']):>16}")
    out = REPO / "bench" / "out"
    out.mkdir(parents=True, exist_ok=True)
    (out / "moderator.json").write_text(json.dumps(res, indent=1))


if __name__ == "__main__":
    main()
