"""``mmsafe run BENCH --target MODEL``: send a benchmark to a model, judge the replies, summarise."""

from __future__ import annotations

import gc
from pathlib import Path
from typing import Annotated, Any, NoReturn

import typer

from mmsafe.types import InputError

from .app import app
from .bench import open_bench
from .console import bold, counts, err, error_line, say, warn
from .options import (
    ApiKeyEnv,
    BaseUrl,
    Cache,
    Epoch,
    Executor,
    Judge,
    MaxConnections,
    MaxCost,
    Models,
    Policies,
    RayAddress,
    RayWorkers,
    Retries,
    SiGrouping,
    Store,
    Target,
    Timeout,
    limit_option,
    name_option,
    out_option,
    si_grouping_value,
)
from .progress import progress_bar

DEFENSE_SPEC = ("wrap the target: moderator:offline[?mode=inject|block|flag], moderator:llm:MODEL, "
                "moderator:guard:MODEL, input-guard:MODEL, output-guard:MODEL, keyword-filter, system-prompt, "
                "a plugin's name or module.path:Name")


def fmt_rate(x: Any) -> str:
    """A rate in [0, 1] as a percentage, ``—`` when it could not be computed."""
    return "—" if x is None else f"{100 * x:.1f}%"


def _round(x: Any) -> str:
    return "—" if x is None else str(round(x, 2))


def print_multiturn(m: dict[str, Any], attacker: str | None = None) -> None:
    """The multi-turn block of a run summary (live and adaptive modes); ``attacker``: who
    attacked (its display, marked when it is the MOCK attacker)."""
    ttj = m.get("turns_to_jailbreak") or {}
    by = ", ".join(f"{k}: {fmt_rate(v.get('asr'))}" for k, v in (m.get("asr_by_turn_count") or {}).items())
    status = counts(m.get("status"), "—")
    say(f"{m.get('mode')}: jailbroken {ttj.get('n_jailbroken', 0)}/{m.get('n', 0)}"
        + (f", mean turns to jailbreak {ttj['mean']:.2f}" if ttj.get("mean") is not None else "")
        + f"; ASR by {m.get('asr_by_turn_count_key')}: {by or '—'}; status {status}")
    if m.get("mode") == "adaptive":
        if attacker:
            say(f"attacker: {attacker}")
        bt, ac = m.get("backtracks") or {}, m.get("attacker_cost") or {}
        say(f"backtracks per success {_round(bt.get('per_success'))}, attacker calls per success "
            f"{_round(ac.get('calls_per_success'))}, attacker cost ${ac.get('usd_total', 0):.4f}; "
            f"attacker refused {m.get('attacker_refused', 0)}, invalid {m.get('attacker_invalid', 0)} "
            "(not counted as target safety)")


def print_summary(s: dict[str, Any], run_dir: Path, attacker: str | None = None) -> None:
    """The headline of a run: ASR with its CI, counts, cost, judge, where the files are."""
    ci = s.get("asr_ci") or [None, None]
    ci_txt = f" (95% CI {fmt_rate(ci[0])}–{fmt_rate(ci[1])})" if ci[0] is not None else ""
    say(bold(s["target"]["display"]), f" on {s['benchmark'].get('name')}: ASR {fmt_rate(s['asr'])}{ci_txt}, "
        f"scored {s['n_scored']}/{s['n_samples']}, unscored {s['n_unscored']}, errors {s['n_errors']}, "
        f"cost ${s['cost_usd']:.4f}")
    say(f"judge: {s['judge']['name']}" + (f" — {s['judge']['label']}" if s["judge"].get("label") else ""))
    c = s.get("controls")
    if c and c.get("n"):  # benign controls: outside the ASR, their refusals are over-refusal
        say(f"over-refusal: {fmt_rate(c.get('over_refusal_rate'))} ({c.get('n_refused')}/{c['n']} benign controls "
            "refused; not in the ASR)")
    cas = s.get("cascade")
    if cas and cas.get("n"):  # which stage decided how much; what the earlier stages spared the last one
        stages = ", ".join(f"{st.get('judge')} {st.get('decided')} ({fmt_rate(st.get('share'))})"
                           for st in cas.get("stages") or [])
        saved = cas.get("cost_saved_usd_est")
        say(f"cascade: decided by {stages}; the last stage was spared {cas.get('spared_last_stage')} sample(s)"
            + (f" (~${saved:.4f} saved)" if saved else ""))
    dc = (s.get("defense") or {}).get("cascade") if isinstance(s.get("defense"), dict) else None
    if dc and dc.get("n"):  # a cascade moderator: what its first stage settled, what the last one was spared
        first = (dc.get("stages") or [{}])[0]
        gains = [f"~{dc['calls_saved_est']:g} calls"] if dc.get("calls_saved_est") is not None else []
        gains += [f"~${dc['cost_saved_usd_est']:.4f}"] if dc.get("cost_saved_usd_est") else []
        say(f"defense cascade: {first.get('moderator')} decided {first.get('decided')}/{dc['n']} moderations "
            f"({fmt_rate(first.get('share'))}); the last stage was spared {dc.get('spared_last_stage')}"
            + (f" ({', '.join(gains)} saved)" if gains else ""))
    si = s.get("safety_index")
    if si and si.get("si") is not None:
        other = si.get("other") or {}
        say(f"Safety Index: {si['si']:.3f}"
            + (f" ({si.get('grouping')} groups; {other.get('grouping')}-grouped {other['si']:.3f}: "
               f"{si.get('n_unaligned')} dialogues misaligned across lengths)"
               if other.get("si") is not None else ""))
    if s.get("multiturn"):
        print_multiturn(s["multiturn"], attacker)
    if s.get("stored_outside"):
        say(f"this selection is --limit {s.get('selected')}: the run also holds {s['stored_outside']} more "
            "sample(s), not in these figures (re-run without --limit to include them)")
    say(f"results: {run_dir / 'results.jsonl'}  summary: {run_dir / 'summary.json'}")


def _run_name(name: str | None) -> str | None:
    """``--name`` without surrounding blanks; blank is no name (the model name is derived)."""
    return (name or "").strip() or None


def _attack_args(mode: str, attack: str | None, items: list[str] | None) -> tuple[str, dict[str, Any]]:
    """``--attack`` (default crescendo) and the ``--attack-opt K=V`` items as a dict (V as JSON
    when it parses, else the text); both only with ``--mode adaptive``."""
    import orjson
    if (attack or items) and mode != "adaptive":
        raise InputError(f"--attack/--attack-opt are used with --mode adaptive only (got --mode {mode})")
    out: dict[str, Any] = {}
    for it in items or []:
        k, sep, v = it.partition("=")
        if not sep or not k.strip():
            raise InputError(f"--attack-opt {it!r}: expected KEY=VALUE")
        try:
            out[k.strip()] = orjson.loads(v)
        except orjson.JSONDecodeError:
            out[k.strip()] = v
    return attack or "crescendo", out


@app.command()
def run(
    benchmark: Annotated[Path, typer.Argument(help="benchmark directory (see mmsafe import)")],
    target: Target,
    judge: Judge = "keyword",
    out: Annotated[Path | None, out_option("run directory", show_default="runs/<bench>-<model>")] = None,
    limit: Annotated[int | None, limit_option("samples")] = None,
    max_connections: MaxConnections = None,
    judge_max_connections: Annotated[int | None, typer.Option(
        "--judge-max-connections", min=1, metavar="N", show_default="--max-connections",
        help="most judge requests in flight at once")] = None,
    max_cost: MaxCost = None,
    seed: Annotated[int | None, typer.Option(help="generation seed sent to the target", show_default="none")] = None,
    mode: Annotated[str, typer.Option(
        metavar="MODE", help="fixed: send the pre-written history, the target writes the last reply; live: the "
        "target answers every user turn itself, each turn judged; adaptive: an attacker LLM drives the "
        "conversation (needs --attacker)")] = "fixed",
    attacker: Annotated[str | None, typer.Option(
        metavar="MODEL", help="--mode adaptive: the attacker LLM (provider/model[@BASE_URL] or a models-file name, "
        "role attacker)")] = None,
    max_turns: Annotated[int, typer.Option(min=1, metavar="N", help="--mode adaptive: kept turns at most")] = 5,
    max_backtracks: Annotated[int, typer.Option(
        min=0, metavar="N", help="--mode adaptive: refused exchanges removed and retried at most")] = 3,
    attack: Annotated[str | None, typer.Option(
        metavar="NAME", help="--mode adaptive: the attack (crescendo, pair, tap, goat; `mmsafe plugins` lists "
        "them; or module.path:Name)", show_default="crescendo")] = None,
    attack_opt: Annotated[list[str] | None, typer.Option(
        "--attack-opt", metavar="K=V", help="--mode adaptive: an option of the attack (repeatable; V read as "
        "JSON when it parses, else text), e.g. n_streams=3")] = None,
    models: Models = None,
    base_url: BaseUrl = None,
    api_key_env: ApiKeyEnv = None,
    temperature: Annotated[float | None, typer.Option(
        min=0.0, help="sampling temperature sent to the target", show_default="the provider's")] = None,
    max_tokens: Annotated[int | None, typer.Option(
        min=1, metavar="N", help="most tokens the target may write per reply", show_default="the provider's")] = None,
    system_prompt: Annotated[str | None, typer.Option(metavar="TEXT", help="system prompt sent to the target",
                                                         show_default="none")] = None,
    timeout: Timeout = None,
    retries: Retries = None,
    fail_on_error: Annotated[float, typer.Option(
        min=0.0, max=1.0, metavar="SHARE", help="exit 1 if more than this share of samples error")] = 0.05,
    cache: Cache = True,
    epoch: Epoch = 0,
    defense: Annotated[str | None, typer.Option(metavar="SPEC", help=DEFENSE_SPEC, show_default="none")] = None,
    policies: Policies = None,
    si_grouping: SiGrouping = None,
    store: Store = None,
    name: Annotated[str | None, name_option(
        "the run's short display name in reports and the viewer (kept in its config; a resume may rename it)",
        show_default="the model name")] = None,
    executor: Executor = "local",
    ray_address: RayAddress = None,
    workers: RayWorkers = None,
    batch: Annotated[bool, typer.Option(
        "--batch", help="--mode fixed: the target's replies through its provider's batch API (OpenAI Batch, "
        "Anthropic Message Batches) at batch prices; a killed command resumes the same batches")] = False,
    batch_fallback: Annotated[str, typer.Option(
        metavar="batch|live", help="--batch: failed lines retried as a new batch, or sent as live calls")] = "batch",
    batch_poll: Annotated[float, typer.Option(
        min=0.01, metavar="SECONDS", help="--batch: seconds between batch status polls")] = 30.0,
) -> None:
    """Run a benchmark against a target, judge the replies, write RUN_DIR/{run.sqlite,results.jsonl,summary.json}."""
    from mmsafe.judges import make_judge
    from mmsafe.models import resolve_endpoint
    from mmsafe.runner import RunOptions, execute
    from mmsafe.runner.base import mode_spec
    from mmsafe.runner.ray_exec import check_executor
    from mmsafe.runtime import run_async

    params: dict[str, Any] = {}
    if temperature is not None:
        params["temperature"] = temperature
    if max_tokens is not None:
        params["max_tokens"] = max_tokens
    tcfg = resolve_endpoint(target, "target", models_file=models, base_url=base_url, api_key_env=api_key_env,
                            timeout_s=timeout, max_retries=retries, params=params or None)
    j = make_judge(judge, models_file=models)
    acfg = resolve_endpoint(attacker, "attacker", models_file=models) if attacker else None
    if acfg is not None and mode != "adaptive":
        raise InputError(f"--attacker is used with --mode adaptive only (got --mode {mode})")
    attack_name, attack_options = _attack_args(mode, attack, attack_opt)
    dfn = None
    if defense:
        from mmsafe.defense import make_defense
        dfn = make_defense(defense, models_file=models, policies=policies)
    bench = open_bench(benchmark)
    if out is None:
        out = Path("runs") / f"{bench.manifest.name}-{tcfg.model}".replace("/", "_")
    progress, update = progress_bar(min(len(bench), limit) if limit else len(bench), f"run {tcfg.name}")
    opts = RunOptions(benchmark=benchmark, target=tcfg, judge=j, out=out, mode=mode_spec(mode).name, limit=limit,
                      max_connections=max_connections, max_cost=max_cost, fail_on_error=fail_on_error,
                      judge_max_connections=judge_max_connections,
                      seed=seed, epoch=epoch, use_cache=cache, system_prompt=system_prompt,
                      on_progress=update,  # a bar in a terminal, a line every interval otherwise
                      defense=dfn, attacker=acfg, max_turns=max_turns, max_backtracks=max_backtracks,
                      attack=attack_name, attack_options=attack_options,
                      si_grouping=si_grouping_value(si_grouping) or "aligned", store_url=store or None,
                      name=_run_name(name), ray_address=ray_address, workers=workers,
                      batch=batch, batch_fallback=batch_fallback, batch_poll_s=batch_poll,
                      executor=check_executor(executor, ray_address=ray_address, workers=workers))
    gc.freeze()  # the long-lived import-time objects leave the collector's scans: less CPU per request
    with progress:
        outcome = run_async(execute(opts))
    _end_of_run(outcome, out, tcfg.name, getattr(acfg, "display", None), max_cost, fail_on_error)


def _end_of_run(outcome: Any, out: Path, target_name: str, attacker: str | None, max_cost: float | None,
                fail_on_error: float) -> NoReturn:
    """The run's headline, then why it is incomplete (budget, nothing measured, failures), and its exit status."""
    if outcome.stopped == "fatal":  # the endpoint refuses every request: one line (errors.classify), exit 2
        from mmsafe.models import FatalProviderError
        if outcome.summary.get("n_scored"):  # what was measured before it is stored and worth showing
            print_summary(outcome.summary, out)
        raise FatalProviderError(outcome.fatal_error or f"{target_name}: fatal endpoint error")
    print_summary(outcome.summary, out, attacker=attacker)
    if outcome.stats.get("batch"):  # --batch: what went through the batch API, and how it was priced
        b = outcome.stats["batch"]
        cached = f" ({b['cached']} from the response cache)" if b.get("cached") else ""
        say(f"batch: {b['replies']} replies{cached} from {b['jobs'] + b['resumed']} batch(es), "
            f"{b['failed_lines']} failed line(s), ${b['cost_usd']:.4f} at batch prices ({b['pricing']})")
    if outcome.stats.get("by_others"):  # several processes on this run (claims): say how it was shared
        say(f"{outcome.stats['by_others']} of the samples were done by another process working on this run")
    if outcome.stopped == "max_cost":  # one figure: the summary's spent total (never above the budget)
        warn("stopped:", f"--max-cost ${max_cost or 0:g} reached: ${outcome.run_summary.cost_usd:.4f} spent, "
             "as in the summary; re-run with a higher --max-cost to continue (finished requests come from "
             "the cache)")
    unmeasured = outcome.run_summary.nothing_measured()
    if outcome.exit_code == 1 and outcome.stopped is None and unmeasured:
        error_line(f"{unmeasured}; see {out / 'results.jsonl'}")
    elif outcome.exit_code == 1 and outcome.stopped is None:
        s = outcome.summary
        je = (s.get("parse_status") or {}).get("error", 0)
        err.print(f"{s['n_errors'] + je} of {s['n_samples']} samples failed (target errors {s['n_errors']}, "
                  f"judge errors {je}; threshold {fail_on_error:.0%}); see {out / 'results.jsonl'}; "
                  "re-run to retry them", style="red", soft_wrap=True)
    raise typer.Exit(outcome.exit_code)


__all__ = ["fmt_rate", "print_multiturn", "print_summary", "run"]
