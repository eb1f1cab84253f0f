"""Two real ``mmsafe run`` processes on one run (SQLite or PostgreSQL store), counted at the
loopback LLM server: the scenario tests/test_claims.py and tests/test_store_postgres.py share."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src"
MODEL = "slow-50"


def run_cmd(bench: Path, url: str, out: Path, *, conc: int = 2, store: str | None = None) -> list[str]:
    cmd = [sys.executable, "-m", "mmsafe.cli", "run", str(bench), "-t", f"openai/{MODEL}@{url}", "-o", str(out),
           "--max-connections", str(conc), "--no-cache"]
    return cmd + (["--store", store] if store else [])


def env() -> dict[str, str]:
    e = {**os.environ, "PYTHONPATH": str(SRC)}
    e.pop("MMSAFE_STORE_URL", None)
    return e


def sent_per_sample(llm) -> Counter[str]:
    """How many target requests the server received per sample (its last user turn says 'Sample i')."""
    c: Counter[str] = Counter()
    with llm._lock:
        bodies = [b for b in llm.requests if b.get("model") == MODEL]
    for b in bodies:
        text = json.dumps(b["messages"][-1]["content"])
        m = re.search(r"Sample (\d+) turn", text)
        assert m, text[:200]
        c[f"s{m.group(1)}"] += 1
    return c


def read_results(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "results.jsonl").read_text().splitlines()]


@dataclass
class TwoRuns:
    codes: list[int | None]
    outputs: list[str]
    sent: Counter[str]
    killed_at: int | None  # requests the server had received when the first process was killed


def two_runs(bench: Path, llm, outs: tuple[Path, Path], n: int, *, store: str | None = None, conc: int = 2,
             kill_after: int | None = None, timeout: float = 120.0) -> TwoRuns:
    """Start two runs at once (same run: same --out, or the same --store run); with ``kill_after``,
    SIGKILL the first once the server has received that many target requests."""
    procs = [subprocess.Popen(run_cmd(bench, llm.url, out, conc=conc, store=store), env=env(),
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) for out in outs]
    killed_at = None
    try:
        if kill_after is not None:
            deadline = time.time() + timeout
            while llm.count(MODEL) < kill_after and time.time() < deadline and procs[0].poll() is None:
                time.sleep(0.01)
            killed_at = llm.count(MODEL)
            procs[0].send_signal(signal.SIGKILL)
        outputs = [p.communicate(timeout=timeout)[0] for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    return TwoRuns(codes=[p.returncode for p in procs], outputs=outputs, sent=sent_per_sample(llm),
                   killed_at=killed_at)
