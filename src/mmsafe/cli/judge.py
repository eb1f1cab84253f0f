"""``mmsafe judge RUN`` (re-judge stored replies) and ``mmsafe calibrate`` (a judge against human labels)."""

from __future__ import annotations

import json as _json
import sys
from pathlib import Path
from typing import Annotated, Any, NoReturn

import typer

from mmsafe.errors import EXIT_INCOMPLETE

from .app import app
from .console import fail, out, say, warn
from .options import (
    Cache,
    Executor,
    JsonOut,
    Judge,
    JudgeOpt,
    Models,
    RayAddress,
    RayWorkers,
    Workers,
    limit_option,
    pairs,
)
from .progress import Reporter, progress_bar
from .run import fmt_rate


def _fatal(error: str | None, judge_name: str) -> NoReturn:
    """A judge endpoint that refuses every request: one line from the error map (mmsafe.errors), exit 2."""
    from mmsafe.models import FatalProviderError
    raise FatalProviderError(error or f"{judge_name}: fatal judge endpoint error")


@app.command("judge")
def judge_cmd(
    run_dir: Annotated[Path, typer.Argument(help="a run directory made by mmsafe run")],
    judge: Judge,
    models: Models = None,
    max_connections: Workers = 16,
    primary: Annotated[bool, typer.Option(
        "--primary", help="make this judge the headline one in summary.json")] = False,
    benchmark: Annotated[Path | None, typer.Option(
        metavar="DIR", help="the run's benchmark, if it moved since the run", show_default="where the run found it")
    ] = None,
    cache: Cache = True,
    judge_opt: JudgeOpt = None,
    executor: Executor = "local",
    ray_address: RayAddress = None,
    workers: RayWorkers = None,
    batch: Annotated[bool, typer.Option(
        "--batch", help="the judge's LLM calls through its provider's batch API at batch prices (a fixed-mode "
        "run); a killed command resumes the same batches")] = False,
    batch_fallback: Annotated[str, typer.Option(
        metavar="batch|live", help="--batch: failed lines retried as a new batch, or sent as live calls")] = "batch",
    batch_poll: Annotated[float, typer.Option(
        min=0.01, metavar="SECONDS", help="--batch: seconds between batch status polls")] = 30.0,
) -> None:
    """Re-judge a run's stored replies with another judge (no re-generation); resumable."""
    from mmsafe import api
    from mmsafe.runner.ray_exec import check_executor

    j = api.make_judge(judge, models_file=models, options=pairs(judge_opt or [], "--judge-opt"))
    from mmsafe.models.preflight import check_endpoints
    check_endpoints(j)  # every juror's key before a session opens or a verdict is stored
    progress, update = progress_bar(None, f"judge {j.identity.name}")  # the total comes with the first stats
    with progress:
        if batch:  # mmsafe.runner.batch_judge: the judge's calls go out as batches
            from mmsafe.runner.batch_judge import rejudge_batch
            from mmsafe.runtime import run_async
            res = run_async(rejudge_batch(run_dir, j, primary=primary, benchmark=benchmark, poll_s=batch_poll,
                                          fallback=batch_fallback, on_progress=update, use_cache=cache))
        else:
            res = api.judge(run_dir, j, primary=primary, benchmark=benchmark, max_connections=max_connections,
                            use_cache=cache, on_progress=update,
                            executor=check_executor(executor, ray_address=ray_address, workers=workers),
                            ray_address=ray_address, workers=workers)
    st = res.stats
    if res.stopped == "fatal" and not st["judged"]:  # nothing judged: the one line is all there is to say
        _fatal(res.error, j.identity.name)
    blk = (res.summary.get("judges") or {}).get(res.judge_id) or res.summary
    say(f"judge {j.identity.name} ({res.judge_id}): judged {st['judged']}, already judged {st['skipped_done']}, "
        f"judge errors {st['errors']}; ASR {fmt_rate(blk.get('asr'))}, scored {blk.get('n_scored')}, "
        f"unscored {blk.get('n_unscored')}")
    for p in (res.summary.get("agreement") or {}).get("pairs", []):
        if res.judge_id in (p["a"], p["b"]):
            k = p["cohen_kappa"]
            say(f"agreement {p['a']} vs {p['b']}: n={p['n']} κ={'—' if k is None else f'{k:.3f}'}")
    if batch:
        b = st["batch"]
        say(f"batch: {b['jobs'] + b['resumed']} batch(es), {b['lines']} line(s) submitted, {b['failed_lines']} failed;"
            f" ${st['cost_usd']:.4f} at batch prices ({'; '.join(f'{k}: {v}' for k, v in b['pricing'].items())})")
    say(f"primary judge: {res.primary_judge_id}  summary: {run_dir / 'summary.json'}")
    if res.stopped == "fatal":
        _fatal(res.error, j.identity.name)
    if res.stopped == "max_cost":
        warn("stopped:", str(res.error))
    scored, unscored = blk.get("n_scored") or 0, blk.get("n_unscored") or 0
    if not scored and not res.stopped:  # no verdict could be read: the judge measured nothing
        fail(f"nothing measured: judge {j.identity.name} scored 0 of {scored + unscored} replies (unscored "
             f"{unscored}, judge errors {st['errors']}); see {run_dir / 'results.jsonl'}", EXIT_INCOMPLETE)


def _count_rows(data: Path, fmt: str | None) -> int | None:
    """How many labelled rows ``data`` holds (the progress total); None when it cannot be read (the
    calibration itself then says why, in one line)."""
    from mmsafe.judges.calibrate import FORMATS, read_labelled
    from mmsafe.types import InputError
    if fmt is not None and fmt not in FORMATS:
        return None
    try:
        return len(read_labelled(data, fmt)[1])
    except (InputError, OSError):
        return None


def _count_judgments(j: Any, reporter: Reporter) -> None:
    """Feed ``reporter`` one count per finished judgment (``judge_many`` calls ``judge`` per item)."""
    inner = j.judge
    done = [0]

    async def counted(*args: Any, **kwargs: Any) -> Any:
        res = await inner(*args, **kwargs)
        done[0] += 1
        reporter.update({"done": done[0]})
        return res

    j.judge = counted  # an instance attribute: the judge's own judge_many finds it first


@app.command("calibrate")
def calibrate_cmd(
    judge: Annotated[str, typer.Option("--judge", "-j", metavar="SPEC", help="judge spec to measure")],
    data: Annotated[Path, typer.Option("--data", metavar="FILE", help="human-labelled file (1 = unsafe)")],
    format: Annotated[str | None, typer.Option(
        "--format", metavar="FORMAT", help="csv | harmbench | xstest | gptfuzz | jailjudge",
        show_default="from the header")] = None,
    models: Models = None,
    json: JsonOut = False,
    max_connections: Workers = 16,
    limit: Annotated[int | None, limit_option("rows")] = None,
    force: Annotated[bool, typer.Option("--force", help="re-run even if a cached calibration exists")] = False,
    cache: Annotated[bool, typer.Option("--cache/--no-cache", help="use the calibration and response caches")] = True,
    judge_opt: JudgeOpt = None,
) -> None:
    """Measure a judge against human labels: accuracy, precision, recall, F1, κ, sensitivity, specificity (CIs)."""
    from mmsafe import api
    from mmsafe.judges.calibrate import format_table

    j = api.make_judge(judge, models_file=models, options=pairs(judge_opt or [], "--judge-opt"))
    from mmsafe.models.preflight import check_endpoints
    check_endpoints(j)
    n_rows = _count_rows(data, format)
    reporter = Reporter(f"calibrate {j.identity.name}", min(n_rows, limit) if n_rows and limit else n_rows)
    _count_judgments(j, reporter)
    with reporter:
        rec = api.calibrate(j, data, format, max_connections=max_connections, use_cache=cache, force=force,
                            limit=limit)
    if json:
        sys.stdout.write(_json.dumps(rec) + "\n")
        sys.stdout.flush()
        return
    out.print(format_table(rec))
    if rec.get("cached"):
        say("(from the calibration cache; --force to re-run)")


__all__ = ["calibrate_cmd", "judge_cmd"]
