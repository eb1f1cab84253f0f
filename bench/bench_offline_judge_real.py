"""Offline judge throughput on real replies: the JAILJUDGE and GPTFuzz request/reply pairs of
../shared/data/judge (median replies of ~470-570 characters, where bench_judges.py's stored
mock replies are a sentence), judged one by one through ``Judge.judge`` as ``mmsafe judge``
does, and in one ``judge_many`` batch. One thread (``OMP_NUM_THREADS=1``). Target (issue 16):
>= 300 judgments/s.

usage: OMP_NUM_THREADS=1 python bench/bench_offline_judge_real.py [--repeat 2]
Skips (exit 0, one line) when ../shared/data/judge is absent.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib.util
import statistics
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
JUDGE_DATA = REPO.parent / "shared" / "data" / "judge"


def _loaders():
    spec = importlib.util.spec_from_file_location("train_offline_judge", REPO / "scripts" / "train_offline_judge.py")
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    sys.modules["train_offline_judge"] = mod
    spec.loader.exec_module(mod)
    return {"jailjudge": mod.load_jailjudge, "gptfuzz": mod.load_gptfuzz}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--repeat", type=int, default=2, help="one-by-one passes per source (best is printed)")
    args = ap.parse_args()
    if not JUDGE_DATA.is_dir():
        print(f"skipped: {JUDGE_DATA} is absent")
        return
    from mmsafe.judges import make_judge
    from mmsafe.types import Message, Response, Sample

    judge = make_judge("offline")
    for name, load in _loaders().items():
        d = load(JUDGE_DATA)
        items = [(Sample(id=f"s{i}", question=q, messages=[Message(role="user", content=q)], scenario="bench"),
                  Response(sample_id=f"s{i}", text=r)) for i, (q, r) in enumerate(zip(d["q"], d["r"]))]

        async def one_by_one(items=items) -> None:
            for s, r in items:
                await judge.judge(s, r, REPO)

        best = 0.0
        for _ in range(max(1, args.repeat)):
            t = time.perf_counter()
            asyncio.run(one_by_one())
            best = max(best, len(items) / (time.perf_counter() - t))
        t = time.perf_counter()
        asyncio.run(judge.judge_many(items))
        batched = len(items) / (time.perf_counter() - t)
        print(f"{name}: {len(items)} pairs, median reply {statistics.median(len(r) for r in d['r']):.0f} chars: "
              f"one by one {best:.0f} judgments/s (best of {args.repeat}), judge_many {batched:.0f}/s "
              "(target >= 300)")


if __name__ == "__main__":
    main()
