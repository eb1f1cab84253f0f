"""``mmsafe build``: taxonomy discovery and the build agents (preprocess, generate, image, augment, select)."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any

import typer

from mmsafe.errors import EXIT_INCOMPLETE

from . import console
from .app import app, sub_app
from .console import bold, counts, fail, note, say
from .options import MODEL_SPEC, Force, Models, name_option, out_option
from .progress import Reporter

build_app = sub_app("Build a benchmark: taxonomy discovery and the agents preprocess, generate, image, augment, "
                    "select.", no_args_is_help=False, invoke_without_command=True)
app.add_typer(build_app, name="build")

Config = Annotated[Path, typer.Option("--config", "-c", metavar="FILE", help="build.yaml")]
Work = Annotated[Path | None, typer.Option(metavar="DIR", help="work directory", show_default="OUT.work")]


def _log(msg: str) -> None:
    note(msg)


def print_build(res: dict[str, Any]) -> None:
    """The build ledger per stage, the selection quality and the benchmark written."""
    rows = []
    for s, r in res["stages"].items():
        lg = r["ledger"]
        rows.append([s, str(r["n_items"]), str(lg["calls"]), str(lg["cached"]), str(lg["errors"]),
                     f"{lg.get('image_calls', 0)}/{lg.get('tts_calls', 0)}",
                     str(lg["input_tokens"] + lg["output_tokens"]), f"{lg['cost_usd']:.4f}", f"{lg['wall_s']:.2f}",
                     "yes" if r.get("skipped") else ""])
    table = console.table(f"build ledger ({res['out']})", ("stage", "items", "calls", "cached", "errors", "img/tts",
                                                          "tokens", "USD", "wall s", "skipped"), rows,
                          text_columns=("stage",))
    console.out.print(table)
    q = (getattr(res["manifest"], "quality", None) or {})
    if q.get("selected"):
        def f(d: dict[str, Any], k: str) -> str:
            return "—" if d.get(k) is None else f"{d[k]:.3f}"
        for name in ("selected", "random"):
            d = q[name]
            say(f"{name:>8}: GAP {f(d, 'gap')}  MAD {f(d, 'mad')}  MEAN {f(d, 'mean')}  DIV {f(d, 'div')}")
    c = res["manifest"].counts
    mods = counts(dict(sorted(c.modalities.items())))
    say("benchmark ", bold(res["manifest"].name), f": {c.n_samples} samples, {len(c.by_scenario)} scenarios, "
        f"modalities {mods} -> {res['out']}")


@build_app.callback()
def build_main(
    ctx: typer.Context,
    config: Annotated[Path | None, typer.Option("--config", "-c", metavar="FILE", help="build.yaml",
                                                   show_default="required without a subcommand")] = None,
    out: Annotated[Path | None, out_option("benchmark directory to write")] = None,
    work: Work = None,
    force: Force = False,
    only: Annotated[list[str] | None, typer.Option(
        "--only", metavar="STAGE", help="run only these stages (repeatable; others reuse stored output)",
        show_default="all enabled")] = None,
) -> None:
    """Run the enabled stages in order (each cached and resumable), then write OUT."""
    if ctx.invoked_subcommand is not None:
        return
    if config is None or out is None:
        fail("mmsafe build needs --config build.yaml and --out BENCH (or a subcommand: taxonomy, stage, write)")
    from mmsafe.build import load_config
    from mmsafe.build.pipeline import run_build
    from mmsafe.runtime import run_async
    cfg = load_config(config)
    reporter, on_stage = _stage_progress()
    with reporter:
        res = run_async(run_build(cfg, out, work=work, force=force, only=only or None, log=_log, on_stage=on_stage))
    print_build(res)
    _fail_if_empty(res)


@build_app.command("stage")
def build_stage(
    name: Annotated[str, typer.Argument(help="preprocess | generate | image | augment | select")],
    config: Config,
    out: Annotated[Path | None, out_option("benchmark directory (its work dir is OUT.work)")] = None,
    work: Work = None,
    force: Force = False,
) -> None:
    """Run one stage alone into the work directory (its input stage must have run)."""
    from mmsafe.build import load_config
    from mmsafe.build.common import WorkDir
    from mmsafe.build.pipeline import default_work_dir, run_stage
    from mmsafe.models import ResponseCache
    from mmsafe.runtime import run_async
    if work is None:
        if out is None:
            fail("mmsafe build stage needs --work DIR or --out BENCH")
        work = default_work_dir(out)
    cfg = load_config(config)
    wd = WorkDir(work)

    async def go() -> dict[str, Any]:
        cache = ResponseCache(wd.root / "cache.sqlite") if cfg.cache else None
        try:
            return await run_stage(name, cfg, wd, force=force, cache=cache, log=_log, on_stage=on_stage)
        finally:
            if cache is not None:
                cache.close()

    reporter, on_stage = _stage_progress()
    with reporter:
        rec = run_async(go())
    console.out.print(json.dumps({"stage": name, "items": rec["n_items"], "skipped": rec.get("skipped", False),
                                  "ledger": rec["ledger"]}, indent=1))


@build_app.command("write")
def build_write(
    config: Config,
    out: Annotated[Path, out_option("benchmark directory to write")],
    work: Work = None,
) -> None:
    """Write the benchmark from the stages' stored outputs (no stage is run)."""
    from mmsafe.build import load_config
    from mmsafe.build.pipeline import run_build
    from mmsafe.runtime import run_async
    cfg = load_config(config)
    res = run_async(run_build(cfg, out, work=work, only=["__none__"], log=_log))
    print_build(res)
    _fail_if_empty(res)


def _stage_progress() -> tuple[Reporter, Callable[[str, Any], None]]:
    """A progress reporter that follows the running stage's LLM calls (its ledger: calls, errors, USD)."""
    current: dict[str, Any] = {}

    def poll() -> dict[str, Any]:
        ctx = current.get("ctx")
        if ctx is None:
            return {}
        roles = list(ctx.ledger.roles.values())
        return {"done": sum(r.calls + r.cached for r in roles), "errors": sum(r.errors for r in roles),
                "cost_usd": sum(r.cost_usd for r in roles)}

    reporter = Reporter("build", None, poll=poll)

    def on_stage(stage: str, ctx: Any) -> None:
        current["ctx"] = ctx
        reporter.set_label(f"build {stage} (LLM calls)")

    return reporter, on_stage


def _fail_if_empty(res: dict[str, Any]) -> None:
    """A build that kept no item measured nothing: exit 1 with the stage and counts that explain it."""
    from mmsafe.build.pipeline import empty_build_cause
    if res["manifest"].counts.n_samples == 0:
        fail(empty_build_cause(res["stages"], res["work_dir"]) or f"nothing built: {res['out']} has 0 samples",
             EXIT_INCOMPLETE)


@build_app.command("taxonomy")
def build_taxonomy(
    panel: Annotated[list[str], typer.Option("--panel", "-p", metavar="MODEL",
                                             help=f"a panel model (repeatable): {MODEL_SPEC}")],
    merger: Annotated[str | None, typer.Option(metavar="MODEL", help="the model that merges similar proposals",
                                                  show_default="none: the first proposal of each group stands")] = None,
    out: Annotated[Path, out_option("taxonomy YAML to write", file=True)] = Path("taxonomy.yaml"),
    models: Models = None,
    n: Annotated[int, typer.Option(min=1, help="how many kinds of request to ask each panel model for")] = 20,
    threshold: Annotated[float | None, typer.Option(
        min=0.0, max=1.0, help="cosine at or above which proposals are merged",
        show_default="0.75 with MiniLM, 0.5 with TF-IDF")] = None,
    embedder: Annotated[str, typer.Option(metavar="NAME", help="auto | minilm | tfidf")] = "auto",
    base: Annotated[Path | None, typer.Option(
        metavar="FILE", help="taxonomy whose MLCommons mapping is copied", show_default="the bundled one")] = None,
    name: Annotated[str, name_option("taxonomy name")] = "discovered",
) -> None:
    """Ask a panel of LLMs which requests they should refuse; merge, dedupe, write an editable YAML."""
    from mmsafe.build.taxonomy import discover_taxonomy, write_taxonomy
    from mmsafe.runtime import run_async
    tax, led = run_async(discover_taxonomy(panel, merger, models_file=models, n=n, threshold=threshold,
                                           embedder=embedder, base_taxonomy=base, name=name))
    write_taxonomy(tax, out)
    p = tax["provenance"]
    say(f"taxonomy: {p['n_scenarios']} scenarios in {len(tax['categories'])} categories from "
        f"{p['n_proposals']} proposals by {len(panel)} models -> {out}")
    say(f"ledger: {led['calls']} calls, {led['input_tokens'] + led['output_tokens']} tokens, "
        f"${led['cost_usd']:.4f}, {led['wall_s']:.2f}s")


__all__ = ["build_app", "print_build"]
