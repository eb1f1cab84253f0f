"""``mmsafe dialogues BENCH --generator MODEL --out DIR``: SafeMT-style multi-turn dialogues from a benchmark."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from mmsafe import errors

from .app import app
from .bench import open_bench
from .console import bold, counts, say, warn
from .importing import refuse_existing
from .options import (
    MODEL_SPEC,
    Cache,
    Epoch,
    MaxConnections,
    MaxCost,
    Models,
    Overwrite,
    limit_option,
    name_option,
    out_option,
)
from .progress import progress_bar


@app.command()
def dialogues(
    benchmark: Annotated[Path, typer.Argument(help="source benchmark: its questions, images and scenarios")],
    generator: Annotated[str, typer.Option("--generator", "-g", metavar="MODEL",
                                           help=f"generator LLM (role generator): {MODEL_SPEC}")],
    out: Annotated[Path, out_option("benchmark directory to write")],
    lengths: Annotated[str, typer.Option(metavar="N,N,…", help="dialogue lengths in user turns (1-20), "
                                                               "comma-separated")] = "1,2,4,6,8",
    methods: Annotated[str, typer.Option(
        metavar="METHODS", help="all | comma-separated escalation,roleplay,research,demonstration; combine with "
        "'+', e.g. roleplay+escalation")] = "all",
    safemt_json: Annotated[Path | None, typer.Option(
        "--safemt-json", metavar="FILE", help="also export SafeMT's JSON format here", show_default="none")] = None,
    limit: Annotated[int | None, limit_option("questions")] = None,
    max_attempts: Annotated[int, typer.Option(
        min=1, metavar="N", help="attempts per dialogue (the requested method, then others)")] = 4,
    max_connections: MaxConnections = None,
    max_cost: MaxCost = None,
    models: Models = None,
    name: Annotated[str | None, name_option("benchmark name", show_default="<source>-dialogues")] = None,
    image: Annotated[bool, typer.Option(help="show the image to the generator when it takes images")] = True,
    overwrite: Overwrite = False,
    cache: Cache = True,
    epoch: Epoch = 0,
) -> None:
    """Generate SafeMT-style multi-turn dialogues (several user turns, four methods) with a generator LLM."""
    from mmsafe.attacks.dialogues import parse_lengths, parse_methods
    from mmsafe.models import resolve_endpoint
    from mmsafe.runner.modes import generate_dialogues
    from mmsafe.runtime import run_async

    src = open_bench(benchmark)  # the source must be a benchmark (checked before any call)
    lens = parse_lengths(lengths)
    meths = parse_methods(methods)
    gcfg = resolve_endpoint(generator, "generator", models_file=models)
    refuse_existing(out, overwrite)
    n_questions = min(len(src), limit) if limit else len(src)  # one job per question, method and length
    progress, update = progress_bar(n_questions * len(meths) * len(lens), f"dialogues via {gcfg.name}")

    def upd(stats: dict[str, Any]) -> None:
        update({**stats, "total": stats.get("total") or None, "errors": stats.get("failed", 0)})

    with errors.note("nothing written"), progress:
        rep = run_async(generate_dialogues(
            benchmark, out, gcfg, overwrite=overwrite, safemt_json=safemt_json, lengths=lens, methods=meths,
            limit=limit, max_attempts=max_attempts, max_connections=max_connections, use_cache=cache, epoch=epoch,
            max_cost=max_cost, name=name, send_image=None if image else False, on_progress=upd))
    d = rep.as_dict()
    say("wrote ", bold(d["n_samples"]), f" dialogues from {d['n_seeds']} questions -> {out} ({d['n_jobs']} requested, "
        f"{d['n_failed']} failed, {d['fallbacks']} made with a fallback method, {d['elapsed_s']:.1f}s)")
    say("generator attempts: " + counts(d["attempts"]) + "; by method " + counts(d["by_method"], "—"))
    if d["n_failed"]:
        warn(f"{d['n_failed']} dialogue(s) could not be generated:", f"see {out / 'generation_failures.jsonl'}")
    if rep.safemt is not None:
        say(f"SafeMT JSON -> {safemt_json}: "
            + counts({f"dialogue(s) of {n} turn(s)": k for n, k in sorted(rep.safemt.items())}))


__all__ = ["dialogues"]
