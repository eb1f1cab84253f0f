"""``mmsafe demo``: the whole pipeline offline, in seconds.

1. builds a small benchmark from ``data/demo_benchmark.yaml`` (written for this
   project), rendering its typographic images with Pillow now;
2. runs mock reference models over a real loopback HTTP server (the same client path
   a real endpoint takes: limiter, retries, cache, store);
3. judges, summarises and prints a leaderboard, then says how to use a real endpoint.
"""

from __future__ import annotations

import json
import time
from importlib import resources
from pathlib import Path
from typing import Any

import yaml
from rich.console import Console
from rich.table import Table

from mmsafe.attacks import typography
from mmsafe.datasets import BenchmarkWriter
from mmsafe.runtime import run_async
from mmsafe.types import BenchmarkManifest, ImagePart, Message, Sample, TextPart

DEMO_TARGETS = ("mock/refuser", "mock/mixed", "mock/complier")


def load_demo_spec() -> dict[str, Any]:
    return yaml.safe_load(resources.files("mmsafe").joinpath("data/demo_benchmark.yaml").read_text())


def build_demo_benchmark(out: Path, *, overwrite: bool = True) -> Path:
    spec = load_demo_spec()
    manifest = BenchmarkManifest(
        name=spec["name"], version=str(spec.get("version", "1")), description=spec.get("description", ""),
        licence=spec.get("licence"), source="mmsafe built-in demo (data/demo_benchmark.yaml)",
        provenance={"builder": "mmsafe.build.demo", "images": "rendered with Pillow + DejaVu Sans at build time"})
    with BenchmarkWriter(out, manifest, overwrite=overwrite) as w:
        for item in spec["items"]:
            image = None
            kind = item.get("image", "none")
            if kind == "figstep":
                image = typography.figstep_image(item.get("image_text") or item["question"])
            elif kind == "keyphrase":
                image = typography.keyphrase_image(item["key_phrase"])
            part: ImagePart | None = w.add_image(typography.png_bytes(image)) if image is not None else None
            if item.get("turns"):
                msgs = []
                first_user = True
                for t in item["turns"]:
                    if t["role"] == "user" and first_user and part is not None:
                        msgs.append(Message(role="user", content=[part, TextPart(text=t["text"])]))
                    else:
                        msgs.append(Message(role=t["role"], content=t["text"]))
                    first_user = first_user and t["role"] != "user"
            elif part is not None:
                msgs = [Message(role="user", content=[part, TextPart(text=item.get("prompt") or item["question"])])]
            else:
                msgs = [Message(role="user", content=item["question"])]
            w.add(Sample(id=item["id"], question=item["question"], messages=msgs, scenario=item["scenario"],
                         category=item.get("category"), source="mmsafe-demo",
                         method=None if item.get("method") in (None, "plain") else item["method"],
                         metadata={"group": item["id"], **({"control": item["control"]} if item.get("control")
                                                           else {})}))
    return out


def run_demo(out_dir: Path, out: Console, err: Console) -> list[dict[str, Any]]:
    from mmsafe.judges import make_judge
    from mmsafe.models import resolve_endpoint
    from mmsafe.runner import RunOptions, execute

    t0 = time.perf_counter()
    bench_dir = build_demo_benchmark(out_dir / "benchmark")
    out.print(f"built demo benchmark -> {bench_dir} ({time.perf_counter() - t0:.1f}s)")
    from mmsafe.runner.rejudge import rejudge

    summaries = []
    run_dirs = []
    for spec in DEMO_TARGETS:
        tcfg = resolve_endpoint(spec, "target")
        run_dir = out_dir / "runs" / spec.replace("/", "-")
        judge = make_judge("keyword")
        opts = RunOptions(benchmark=bench_dir, target=tcfg, judge=judge, out=run_dir, use_cache=False)
        run_async(execute(opts))
        # a second, independent judge on the same stored replies: no re-generation
        run_async(rejudge(run_dir, make_judge("offline"), use_cache=False))
        summaries.append(json.loads((run_dir / "summary.json").read_text()))
        run_dirs.append(run_dir)
    table = Table(title="mmsafe demo — leaderboard", caption="targets are MOCK reference models, not real LLMs")
    for col in ("target", "ASR keyword", "95% CI", "ASR offline judge", "judges agree", "unscored", "errors",
                "over-refusal"):
        table.add_column(col, no_wrap=True)
    for s in sorted(summaries, key=lambda s: s["asr"] or 0):
        ci = s["asr_ci"]
        ctl = s.get("controls") or {}
        other = next((v for k, v in (s.get("judges") or {}).items() if k != s["judge"]["id"]), {})
        pair = ((s.get("agreement") or {}).get("pairs") or [{}])[0]
        agree = pair.get("percent_agreement")
        table.add_row(f"{s['target']['name']} (mock)", f"{100 * s['asr']:.1f}%",
                      f"{100 * ci[0]:.1f}–{100 * ci[1]:.1f}%" if ci[0] is not None else "—",
                      "—" if other.get("asr") is None else f"{100 * other['asr']:.1f}%",
                      "—" if agree is None else f"{100 * agree:.0f}%",
                      str(s["n_unscored"]), str(s["n_errors"]),
                      f"{ctl['n_refused']}/{ctl['n']}" if ctl else "—")
    out.print(table)
    out.print(f"runs in {out_dir / 'runs'} (results.jsonl, summary.json, run.sqlite); "
              f"demo took {time.perf_counter() - t0:.1f}s")
    out.print("Judges: the refusal-keyword [bold]baseline[/] (headline) and the shipped offline classifier; "
              "the targets are mocks served on 127.0.0.1.\n"
              "mock/complier answers with placeholders only: the keyword baseline counts any non-refusal as "
              "unsafe, the offline judge asks whether the reply actually delivers — that gap is why judges "
              "must be calibrated (mmsafe calibrate).\n"
              "Point it at a real model:\n"
              f"  mmsafe run {bench_dir} --target openai/gpt-4o-mini          # key from $OPENAI_API_KEY\n"
              f"  mmsafe run {bench_dir} --target openai/MODEL@http://127.0.0.1:8000/v1   # vLLM / SGLang / Ollama")
    return run_dirs
