"""The ``mmsafe`` command. Nothing imports this module.

Exit codes: 0 done; 1 done but incomplete (failures above the threshold, or stopped by --max-cost); 2 bad input (one line on
stderr naming the file, line, field or option); 130 interrupted (re-run to resume).
"""

from __future__ import annotations

import functools
import json
import sys
from pathlib import Path
from typing import Any, Optional

import typer
from rich.console import Console
from rich.table import Table

import mmsafe
from mmsafe.runtime import run_async
from mmsafe.types import InputError

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="mmsafe — build, run, judge, measure and defend safety benchmarks for multimodal LLMs.")
out = Console(width=None if sys.stdout.isatty() else 120)
err = Console(stderr=True, width=None if sys.stderr.isatty() else 160)


def _input_errors() -> tuple[type[BaseException], ...]:
    from mmsafe.datasets import DatasetError
    return (InputError, DatasetError)


def fail(msg: str, code: int = 2) -> None:
    err.print(f"[bold red]error:[/] {msg}", highlight=False, soft_wrap=True)
    raise typer.Exit(code)


def guarded(fn):
    """Bad input -> one line on stderr and exit 2, never a traceback."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except typer.Exit:
            raise
        except KeyboardInterrupt:
            err.print("interrupted: what finished is stored; re-run the same command to resume")
            raise typer.Exit(130) from None
        except _input_errors() as e:
            fail(str(e).splitlines()[0] if str(e) else type(e).__name__)

    return wrapper


# --------------------------------------------------------------------------- import / export


@app.command("import")
@guarded
def import_cmd(
    kind: str = typer.Argument(..., help="safemt | safebench | figstep | mmsafetybench | harmbench | jbb | csv | jsonl"),
    src: Path = typer.Argument(..., help="source file or directory in that benchmark's own format"),
    out_dir: Path = typer.Option(..., "--out", "-o", help="benchmark directory to write"),
    name: Optional[str] = typer.Option(None, help="benchmark name (default: from the source)"),
    mapping: list[str] = typer.Option([], "--map", help="csv/jsonl column mapping FIELD=COLUMN, "
                                      "e.g. --map question=prompt --map scenario=category"),
    option: list[str] = typer.Option([], "--opt", help="importer option KEY=VALUE (e.g. audio=true)"),
    overwrite: bool = typer.Option(False, help="replace an existing benchmark directory"),
):
    """Import an existing benchmark into mmsafe's benchmark directory format."""
    from mmsafe.datasets import import_benchmark
    opts: dict[str, Any] = {}
    if mapping:
        opts["mapping"] = _pairs(mapping, "--map")
    for k, v in _pairs(option, "--opt").items():
        opts[k] = {"true": True, "false": False}.get(v.lower(), v)
    if not src.exists():
        fail(f"{src}: not found")
    manifest = import_benchmark(kind, src, out_dir, name=name, overwrite=overwrite, **opts)
    c = manifest.counts
    out.print(f"imported [bold]{manifest.name}[/]: {c.n_samples} samples, {len(c.by_scenario)} scenarios, "
              f"turns {dict(sorted(c.by_turns.items(), key=lambda kv: int(kv[0])))}, "
              f"modalities {c.modalities} -> {out_dir}")


def _pairs(items: list[str], flag: str) -> dict[str, str]:
    d = {}
    for it in items:
        if "=" not in it:
            raise InputError(f"{flag} {it!r}: expected KEY=VALUE")
        k, v = it.split("=", 1)
        d[k.strip()] = v.strip()
    return d


# --------------------------------------------------------------------------- run


def _progress_printer(total_hint: int, label: str):
    from rich.progress import (BarColumn, MofNCompleteColumn, Progress, SpinnerColumn, TextColumn,
                               TimeElapsedColumn, TimeRemainingColumn)
    progress = Progress(SpinnerColumn(), TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                        TextColumn("{task.fields[rate]:.1f}/s"), TimeElapsedColumn(), TextColumn("ETA"),
                        TimeRemainingColumn(), TextColumn("errors {task.fields[errors]}"),
                        TextColumn("${task.fields[cost]:.4f}"), console=err, transient=False,
                        disable=not err.is_terminal, refresh_per_second=5)
    task = progress.add_task(label, total=total_hint, rate=0.0, errors=0, cost=0.0)
    import time as _t

    last = [0.0]

    def update(stats: dict[str, Any]) -> None:
        now = _t.time()
        if now - last[0] < 0.1 and (stats.get("total") is None or stats["done"] < stats["total"]):  # <= 10 redraws/s
            return
        last[0] = now
        el = max(1e-6, now - stats["started"])
        progress.update(task, completed=stats["done"], total=stats["total"], errors=stats["errors"],
                        cost=stats["cost_usd"], rate=(stats["sent"] + stats["judged"]) / el)

    return progress, update


@app.command()
@guarded
def run(
    benchmark: Path = typer.Argument(..., help="benchmark directory (see `mmsafe import`)"),
    target: str = typer.Option(..., "--target", "-t", help="provider/model[@BASE_URL] or a name from the models file"),
    judge: str = typer.Option("keyword", "--judge", "-j", help="judge spec (keyword is the refusal-phrase baseline)"),
    out_dir: Optional[Path] = typer.Option(None, "--out", "-o", help="run directory (default runs/<bench>-<model>)"),
    limit: Optional[int] = typer.Option(None, min=1, help="only the first N samples"),
    max_connections: Optional[int] = typer.Option(None, min=1, help="cap on concurrent requests per endpoint "
                                                  "(target, and judge unless --judge-max-connections)"),
    judge_max_connections: Optional[int] = typer.Option(None, min=1, help="cap on concurrent judge requests"),
    max_cost: Optional[float] = typer.Option(None, min=0.0, help="stop cleanly once this many USD are spent"),
    seed: Optional[int] = typer.Option(None, help="generation seed sent to the target"),
    mode: str = typer.Option("fixed", help="fixed: send the pre-written history, the target writes the last reply; "
                             "live: the target answers every user turn itself, each turn judged; "
                             "adaptive: an attacker LLM drives the conversation (needs --attacker)"),
    attacker: Optional[str] = typer.Option(None, "--attacker", help="--mode adaptive: the attacker LLM "
                                           "(provider/model[@BASE_URL] or a models-file name, role attacker)"),
    max_turns: int = typer.Option(5, "--max-turns", min=1, help="--mode adaptive: kept turns at most"),
    max_backtracks: int = typer.Option(3, "--max-backtracks", min=0,
                                       help="--mode adaptive: refused exchanges removed and retried at most"),
    models: Optional[Path] = typer.Option(None, "--models", help="YAML models file (or $MMSAFE_MODELS)"),
    base_url: Optional[str] = typer.Option(None, help="target base URL (OpenAI-compatible)"),
    api_key_env: Optional[str] = typer.Option(None, help="name of the env var holding the target's API key"),
    temperature: Optional[float] = typer.Option(None),
    max_tokens: Optional[int] = typer.Option(None),
    system_prompt: Optional[str] = typer.Option(None, help="system prompt sent to the target"),
    timeout: Optional[float] = typer.Option(None, help="per-request timeout in seconds"),
    retries: Optional[int] = typer.Option(None, min=0, help="retries per request on 429/5xx/timeouts"),
    fail_on_error: float = typer.Option(0.05, min=0.0, max=1.0, help="exit 1 if more than this share of samples error"),
    cache: bool = typer.Option(True, help="reuse cached replies for identical requests"),
    epoch: int = typer.Option(0, help="bump to draw fresh replies past the cache"),
    defense: Optional[str] = typer.Option(None, help="wrap the target: moderator:offline[?mode=inject|block|flag], "
                                          "moderator:llm:MODEL, moderator:guard:MODEL, input-guard:MODEL, "
                                          "output-guard:MODEL, keyword-filter, system-prompt"),
    policies: Optional[Path] = typer.Option(None, help="extra safety-policy YAML for the moderator"),
):
    """Run a benchmark against a target, judge the replies, write RUN_DIR/{run.sqlite,results.jsonl,summary.json}."""
    from mmsafe.datasets import open_benchmark
    from mmsafe.judges import make_judge
    from mmsafe.models import resolve_endpoint
    from mmsafe.runner import RunOptions, execute

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
    dfn = None
    if defense:
        from mmsafe.defense import make_defense
        dfn = make_defense(defense, models_file=models, policies=policies)
    bench = open_benchmark(benchmark)
    if out_dir is None:
        out_dir = Path("runs") / f"{bench.manifest.name}-{tcfg.model}".replace("/", "_")
    progress, update = _progress_printer(len(bench), f"{tcfg.name}")
    opts = RunOptions(benchmark=benchmark, target=tcfg, judge=j, out=out_dir, mode=mode, limit=limit,
                      max_connections=max_connections, max_cost=max_cost, fail_on_error=fail_on_error,
                      judge_max_connections=judge_max_connections,
                      seed=seed, epoch=epoch, use_cache=cache, system_prompt=system_prompt,
                      on_progress=update if err.is_terminal else None,
                      defense=dfn, attacker=acfg, max_turns=max_turns, max_backtracks=max_backtracks)
    import gc
    gc.freeze()  # the long-lived import-time objects leave the collector's scans: less CPU per request
    with progress:
        outcome = run_async(execute(opts))
    _print_summary(outcome.summary, out_dir)
    if outcome.stopped == "max_cost":
        err.print(f"[yellow]stopped:[/] {outcome.fatal_error}; re-run with a higher --max-cost to continue")
    if outcome.stopped == "fatal":
        fail(outcome.fatal_error or "fatal endpoint error", 2)
    if outcome.exit_code == 1 and outcome.stopped is None:
        je = (outcome.summary.get("parse_status") or {}).get("error", 0)
        err.print(f"[red]{outcome.summary['n_errors'] + je} of {outcome.summary['n_samples']} samples failed "
                  f"(target errors {outcome.summary['n_errors']}, judge errors {je}; threshold {fail_on_error:.0%}); "
                  f"see {out_dir / 'results.jsonl'}; re-run to retry them")
    raise typer.Exit(outcome.exit_code)


def _fmt_rate(x: Any) -> str:
    return "—" if x is None else f"{100 * x:.1f}%"


def _print_summary(s: dict[str, Any], run_dir: Path) -> None:
    ci = s.get("asr_ci") or [None, None]
    ci_txt = f" (95% CI {_fmt_rate(ci[0])}–{_fmt_rate(ci[1])})" if ci[0] is not None else ""
    out.print(f"[bold]{s['target']['display']}[/] on {s['benchmark'].get('name')}: "
              f"ASR {_fmt_rate(s['asr'])}{ci_txt}, scored {s['n_scored']}/{s['n_samples']}, "
              f"unscored {s['n_unscored']}, errors {s['n_errors']}, cost ${s['cost_usd']:.4f}")
    out.print(f"judge: {s['judge']['name']}" + (f" — {s['judge']['label']}" if s['judge'].get('label') else ""))
    if s.get("safety_index"):
        out.print(f"Safety Index: {s['safety_index'].get('si'):.3f}")
    if s.get("multiturn"):
        _print_multiturn(s["multiturn"])
    out.print(f"results: {run_dir / 'results.jsonl'}  summary: {run_dir / 'summary.json'}")


# --------------------------------------------------------------------------- demo


# --------------------------------------------------------------------------- judge / calibrate


@app.command("judge")
@guarded
def judge_cmd(
    run_dir: Path = typer.Argument(..., help="a run directory made by `mmsafe run`"),
    judge: str = typer.Option(..., "--judge", "-j", help="judge spec: keyword | rubric:M | jury:M[,M…] | "
                              "guard:M | offline (options as ?k=v&k=v)"),
    models: Optional[Path] = typer.Option(None, "--models", help="YAML models file (or $MMSAFE_MODELS)"),
    max_connections: int = typer.Option(16, min=1, help="samples judged at once"),
    primary: bool = typer.Option(False, "--primary", help="make this judge the headline one in summary.json"),
    benchmark: Optional[Path] = typer.Option(None, help="the run's benchmark, if it moved since the run"),
    cache: bool = typer.Option(True, help="reuse cached judge replies for identical requests"),
    judge_opt: list[str] = typer.Option([], "--judge-opt", help="judge option KEY=VALUE (same as ?KEY=VALUE)"),
):
    """Re-judge a run's stored replies with another judge (no re-generation); resumable."""
    from mmsafe.judges import make_judge
    from mmsafe.runner.rejudge import rejudge

    j = make_judge(judge, models_file=models, options=_pairs(judge_opt, "--judge-opt"))
    progress, update = _progress_printer(0, f"judge {j.identity.name}")
    with progress:
        res = run_async(rejudge(run_dir, j, primary=primary, benchmark=benchmark, max_connections=max_connections,
                                  use_cache=cache, on_progress=update))
    st = res.stats
    blk = (res.summary.get("judges") or {}).get(res.judge_id) or res.summary
    out.print(f"judge {j.identity.name} ({res.judge_id}): judged {st['judged']}, already judged "
              f"{st['skipped_done']}, judge errors {st['errors']}; ASR {_fmt_rate(blk.get('asr'))}, "
              f"scored {blk.get('n_scored')}, unscored {blk.get('n_unscored')}")
    for p in (res.summary.get("agreement") or {}).get("pairs", []):
        if res.judge_id in (p["a"], p["b"]):
            k = p["cohen_kappa"]
            out.print(f"agreement {p['a']} vs {p['b']}: n={p['n']} κ={'—' if k is None else f'{k:.3f}'}")
    out.print(f"primary judge: {res.primary_judge_id}  summary: {run_dir / 'summary.json'}")
    if res.stopped == "fatal":
        fail(res.error or "fatal judge endpoint error", 2)
    if res.stopped == "max_cost":
        err.print(f"[yellow]stopped:[/] {res.error}")


@app.command("calibrate")
@guarded
def calibrate_cmd(
    judge: str = typer.Option(..., "--judge", "-j", help="judge spec to measure"),
    data: Path = typer.Option(..., "--data", help="human-labelled file (1 = unsafe)"),
    fmt: Optional[str] = typer.Option(None, "--format", help="csv | harmbench | xstest | gptfuzz | jailjudge "
                                      "(default: from the header)"),
    models: Optional[Path] = typer.Option(None, "--models", help="YAML models file (or $MMSAFE_MODELS)"),
    as_json: bool = typer.Option(False, "--json", help="print one JSON object"),
    max_connections: int = typer.Option(16, min=1, help="rows judged at once"),
    limit: Optional[int] = typer.Option(None, min=1, help="only the first N rows"),
    force: bool = typer.Option(False, help="re-run even if a cached calibration exists"),
    cache: bool = typer.Option(True, help="use the calibration and response caches"),
    judge_opt: list[str] = typer.Option([], "--judge-opt", help="judge option KEY=VALUE (same as ?KEY=VALUE)"),
):
    """Measure a judge against human labels: accuracy, precision, recall, F1, κ, sensitivity, specificity (CIs)."""
    from mmsafe.judges import make_judge
    from mmsafe.judges.calibrate import FORMATS, calibrate, format_table

    if fmt is not None and fmt not in FORMATS:
        fail(f"--format {fmt!r}: choose one of {', '.join(FORMATS)}")
    j = make_judge(judge, models_file=models, options=_pairs(judge_opt, "--judge-opt"))
    rec = run_async(calibrate(j, data, fmt, concurrency=max_connections, use_cache=cache, force=force,
                                limit=limit))
    if as_json:
        sys.stdout.write(json.dumps(rec) + "\n")
        sys.stdout.flush()
        return
    out.print(format_table(rec), highlight=False)
    if rec.get("cached"):
        out.print("(from the calibration cache; --force to re-run)")


# --------------------------------------------------------------------------- defenses


def _read_conversations(path: Path):
    """Yield (id, [Message]) from a benchmark dir or a JSONL of OpenAI-format conversations."""
    from pydantic import ValidationError

    from mmsafe.datasets import open_benchmark
    from mmsafe.datasets.importers.generic import jsonl_rows
    from mmsafe.defense.proxy import messages_from_openai
    if path.is_dir():
        bench = open_benchmark(path)
        for s in bench.iter_samples():
            yield s.id, s.messages, bench.root
        return
    for i, rec in jsonl_rows(path):
        try:
            msgs = messages_from_openai(rec.get("messages"))
        except (ValueError, ValidationError) as e:
            raise InputError(f"{path}:{i}: {str(e).splitlines()[0]}") from None
        yield str(rec.get("id", i)), msgs, path.parent


@app.command()
@guarded
def moderate(
    input_path: Path = typer.Argument(..., metavar="INPUT", help="benchmark dir, or JSONL of {id, messages}"),
    moderator: str = typer.Option("offline", help="offline[:tfidf|minilm|auto][:THRESHOLD] | llm:MODEL | guard:MODEL"),
    as_json: bool = typer.Option(False, "--json", help="one JSON object per conversation on stdout"),
    models: Optional[Path] = typer.Option(None, "--models"),
    concurrency: int = typer.Option(16, min=1),
):
    """Does each conversation, as a whole, carry harmful intent? Which scenario, how sure?"""
    import orjson

    from mmsafe.defense import make_moderator
    from mmsafe.defense.moderator import moderate_all
    if not input_path.exists():
        fail(f"{input_path}: not found")
    mod = make_moderator(moderator, models)
    convs = list(_read_conversations(input_path))
    root = convs[0][2] if convs else None

    async def go():
        await mod.start()
        try:
            return await moderate_all(mod, [(cid, msgs) for cid, msgs, _ in convs], root, concurrency)
        finally:
            await mod.close()

    results = run_async(go())
    n_flag = n_err = 0
    table = Table(title=f"moderation ({moderator})")
    for col in ("id", "flagged", "score", "scenario"):
        table.add_column(col)
    for cid, m in results:
        n_flag += bool(m.flagged)
        n_err += m.flagged is None
        if as_json:
            sys.stdout.write(orjson.dumps({"id": cid, "flagged": m.flagged, "score": m.score,
                                           "scenario": m.scenario, "error": m.error,
                                           "latency_ms": round(m.latency_ms, 3)}).decode() + "\n")
        else:
            table.add_row(cid, "?" if m.flagged is None else ("yes" if m.flagged else "no"),
                          "—" if m.score is None else f"{m.score:.3f}", m.scenario or "—")
    if not as_json:
        out.print(table)
        out.print(f"{n_flag} of {len(results)} flagged; {n_err} moderation errors")


@app.command("defend-eval")
@guarded
def defend_eval(
    harmful: Path = typer.Argument(..., help="harmful benchmark dir"),
    target: str = typer.Option(..., "--target", "-t"),
    defense: list[str] = typer.Option(..., "--defense", "-d", help="defense spec (repeatable)"),
    benign: Optional[Path] = typer.Option(None, help="benign/borderline benchmark for over-refusal"),
    judge: str = typer.Option("keyword", "--judge", "-j"),
    out_dir: Path = typer.Option(Path("runs/defend-eval"), "--out", "-o"),
    limit: Optional[int] = typer.Option(None, min=1),
    max_connections: Optional[int] = typer.Option(None, min=1),
    models: Optional[Path] = typer.Option(None, "--models"),
    policies: Optional[Path] = typer.Option(None),
    cache: bool = typer.Option(True),
):
    """Compare defenses: ASR by turns with and without each, ASR reduction, over-refusal, latency, cost."""
    from mmsafe.datasets import open_benchmark
    from mmsafe.defense import make_defense
    from mmsafe.defense.evaluate import evaluate_defenses
    from mmsafe.judges import make_judge
    from mmsafe.models import resolve_endpoint
    from mmsafe.runner import RunOptions
    tcfg = resolve_endpoint(target, "target", models_file=models)
    defenses = [(None, None)] + [(d, make_defense(d, models_file=models, policies=policies)) for d in defense]
    make_judge(judge, models_file=models)  # fail early on a bad spec
    open_benchmark(harmful)
    if benign is not None:
        open_benchmark(benign)
    base = RunOptions(benchmark=harmful, target=tcfg, judge=None, out=out_dir, limit=limit,
                      max_connections=max_connections, use_cache=cache)
    res = evaluate_defenses(harmful, benign, base, defenses, out_dir,
                            lambda: make_judge(judge, models_file=models))
    table = Table(title=f"defenses on {harmful.name} — target {tcfg.name}")
    for col in ("defense", "ASR", "ASR by turns", "reduction", "over-refusal", "+latency ms", "moderator $"):
        table.add_column(col)
    for r in res["rows"]:
        orf = r.get("over_refusal") or {}
        table.add_row(r["defense"], _fmt_rate(r["asr"]),
                      " ".join(f"{k}:{_fmt_rate(v)}" for k, v in r["asr_by_turns"].items()),
                      "—" if r["asr_reduction"] is None else f"{100 * r['asr_reduction']:+.1f} pts",
                      _fmt_rate(orf.get("rate")), f"{r['added_latency_ms_mean'] or 0:.2f}",
                      f"{r['moderator_cost_usd'] or 0:.4f}")
    out.print(table)
    out.print(f"comparison: {out_dir / 'comparison.json'}  (over-refusal by refusal-phrase detection)")


@app.command("serve-guard")
@guarded
def serve_guard(
    upstream: str = typer.Option(..., help="upstream OpenAI-compatible base URL, e.g. http://127.0.0.1:8000/v1"),
    moderator: str = typer.Option("offline", help="offline[:tfidf|minilm|auto][:THRESHOLD] | llm:MODEL | guard:MODEL"),
    mode: str = typer.Option("inject", help="inject | block | flag"),
    host: str = typer.Option("127.0.0.1"),
    port: int = typer.Option(8787),
    token_env: str = typer.Option("MMSAFE_GUARD_TOKEN", help="env var holding the bearer token clients must send"),
    upstream_key_env: Optional[str] = typer.Option(None, help="env var holding the upstream's API key"),
    log: Optional[Path] = typer.Option(None, help="JSONL decision log (default: stderr)"),
    log_bodies: bool = typer.Option(False, help="also log message bodies"),
    on_error: str = typer.Option("allow", help="when moderation fails: allow | block"),
    models: Optional[Path] = typer.Option(None, "--models"),
    policies: Optional[Path] = typer.Option(None),
):
    """An OpenAI-compatible proxy that moderates each request and forwards it upstream."""
    from aiohttp import web

    from mmsafe.defense import ModeratorDefense, PolicyLibrary, make_moderator
    from mmsafe.defense.proxy import build_proxy
    defense = ModeratorDefense(make_moderator(moderator, models), mode=mode, on_error=on_error,
                               policies=PolicyLibrary.load(policies) if policies else None)
    proxy = build_proxy(upstream, defense, host=host, token_env=token_env, upstream_key_env=upstream_key_env,
                        log_path=log, log_bodies=log_bodies)
    err.print(f"mmsafe guard proxy on http://{host}:{port}/v1 -> {upstream} (moderator {moderator}, mode {mode}, "
              f"auth {'on' if proxy.token else 'off (loopback only)'})")
    try:
        from mmsafe.runtime import new_event_loop
        web.run_app(proxy.app(), host=host, port=port, access_log=None, print=None, loop=new_event_loop())
    except OSError as e:
        fail(f"cannot serve on {host}:{port}: {e.strerror or e}")


def _print_multiturn(m: dict[str, Any]) -> None:
    ttj = m.get("turns_to_jailbreak") or {}
    by = ", ".join(f"{k}: {_fmt_rate(v.get('asr'))}" for k, v in (m.get("asr_by_turn_count") or {}).items())
    out.print(f"{m.get('mode')}: jailbroken {ttj.get('n_jailbroken', 0)}/{m.get('n', 0)}"
              + (f", mean turns to jailbreak {ttj['mean']:.2f}" if ttj.get("mean") is not None else "")
              + f"; ASR by {m.get('asr_by_turn_count_key')}: {by or '—'}; status {m.get('status')}")
    if m.get("mode") == "adaptive":
        bt, ac = m.get("backtracks") or {}, m.get("attacker_cost") or {}
        per = bt.get("per_success")
        out.print(f"backtracks per success {per if per is None else round(per, 2)}, attacker calls per success "
                  f"{ac.get('calls_per_success') if ac.get('calls_per_success') is None else round(ac['calls_per_success'], 2)}"
                  f", attacker cost ${ac.get('usd_total', 0):.4f}; attacker refused {m.get('attacker_refused', 0)}, "
                  f"invalid {m.get('attacker_invalid', 0)} (not counted as target safety)")


# --------------------------------------------------------------------------- dialogues


@app.command()
@guarded
def dialogues(
    benchmark: Path = typer.Argument(..., help="source benchmark: its questions, images and scenarios"),
    generator: str = typer.Option(..., "--generator", "-g", help="generator LLM: provider/model[@BASE_URL] or a "
                                  "models-file name (role generator)"),
    out_dir: Path = typer.Option(..., "--out", "-o", help="benchmark directory to write"),
    lengths: str = typer.Option("1,2,4,6,8", help="dialogue lengths in user turns, comma-separated"),
    methods: str = typer.Option("all", help="all | comma-separated escalation,roleplay,research,demonstration; "
                                "combine with '+', e.g. roleplay+escalation"),
    safemt_json: Optional[Path] = typer.Option(None, "--safemt-json", help="also export SafeMT's JSON format here"),
    limit: Optional[int] = typer.Option(None, min=1, help="only the first N questions"),
    max_attempts: int = typer.Option(4, min=1, help="attempts per dialogue (the requested method, then others)"),
    max_connections: Optional[int] = typer.Option(None, min=1, help="cap on concurrent generator requests"),
    max_cost: Optional[float] = typer.Option(None, min=0.0, help="stop once this many USD are spent"),
    models: Optional[Path] = typer.Option(None, "--models", help="YAML models file (or $MMSAFE_MODELS)"),
    name: Optional[str] = typer.Option(None, help="benchmark name (default <source>-dialogues)"),
    image: bool = typer.Option(True, help="show the image to the generator when it takes images"),
    overwrite: bool = typer.Option(False, help="replace an existing output (finished requests come from the cache)"),
    cache: bool = typer.Option(True, help="reuse cached generator replies for identical requests"),
    epoch: int = typer.Option(0, help="bump to draw fresh dialogues past the cache"),
):
    """Generate SafeMT-style multi-turn dialogues (1-8 user turns, four methods) with a generator LLM."""
    from mmsafe.attacks.dialogues import parse_lengths, parse_methods
    from mmsafe.models import resolve_endpoint
    from mmsafe.runner.modes import generate_dialogues

    lens = parse_lengths(lengths)
    meths = parse_methods(methods)
    gcfg = resolve_endpoint(generator, "generator", models_file=models)
    progress, update = _progress_printer(0, f"dialogues via {gcfg.name}")

    def upd(stats: dict[str, Any]) -> None:
        update({**stats, "total": stats.get("total") or None, "errors": stats.get("failed", 0),
                "sent": stats["done"], "judged": 0})

    from mmsafe.models import BudgetExceeded, FatalProviderError
    try:
        with progress:
            rep = run_async(generate_dialogues(
                benchmark, out_dir, gcfg, overwrite=overwrite, safemt_json=safemt_json, lengths=lens, methods=meths,
                limit=limit, max_attempts=max_attempts, max_connections=max_connections, use_cache=cache, epoch=epoch,
                max_cost=max_cost, name=name, send_image=None if image else False, on_progress=upd))
    except FatalProviderError as e:
        fail(f"{e}; nothing written (re-run to resume: finished requests come from the cache)", 2)
    except BudgetExceeded as e:
        fail(f"stopped: {e}; nothing written; re-run with a higher --max-cost (finished requests come from the "
             "cache)", 1)
    d = rep.as_dict()
    out.print(f"wrote [bold]{d['n_samples']}[/] dialogues from {d['n_seeds']} questions -> {out_dir} "
              f"({d['n_jobs']} requested, {d['n_failed']} failed, {d['fallbacks']} made with a fallback method, "
              f"{d['elapsed_s']:.1f}s)")
    out.print("generator attempts: " + ", ".join(f"{k} {v}" for k, v in d["attempts"].items())
              + f"; by method {d['by_method']}")
    if d["n_failed"]:
        err.print(f"[yellow]{d['n_failed']} dialogue(s) could not be generated[/]: see "
                  f"{out_dir / 'generation_failures.jsonl'}")
    if rep.safemt is not None:
        out.print(f"SafeMT JSON -> {safemt_json}: {rep.safemt}")


@app.command()
@guarded
def report(
    run_dirs: list[Path] = typer.Argument(..., help="one or more run directories"),
    out_file: Path = typer.Option(Path("report.html"), "--out", "-o", help="HTML file to write"),
    title: Optional[str] = typer.Option(None, help="page title"),
    examples: int = typer.Option(12, min=0, help="example samples shown per run (behind a content warning)"),
):
    """Write one self-contained HTML report (no network) over one or more runs."""
    from mmsafe.report import build_report
    st = build_report(run_dirs, out_file, title=title, examples=examples)
    out.print(f"report: {st.path} ({st.bytes / 1e6:.2f} MB, {st.n_runs} run(s), built in {st.seconds:.2f}s)")


@app.command()
@guarded
def view(
    run_dirs: list[Path] = typer.Argument(..., help="one or more run directories"),
    host: str = typer.Option("127.0.0.1", help="address to bind (anything but loopback exposes harmful content)"),
    port: int = typer.Option(8765, min=0, max=65535),
):
    """Browse samples, verdicts and jurors' reasoning in a local, read-only web viewer."""
    from mmsafe.report import serve
    serve(run_dirs, host=host, port=port, print_fn=out.print)


@app.command("export")
@guarded
def export_cmd(
    run_dirs: list[Path] = typer.Argument(..., help="run directories (several: rows concatenated / leaderboard)"),
    fmt: str = typer.Option(..., "--format", "-f", help="csv | jsonl | parquet | markdown (leaderboard)"),
    out_file: Optional[Path] = typer.Option(None, "--out", "-o", help="file to write (default: stdout; "
                                            "parquet: RUN_DIR/export.parquet)"),
    judge_id: Optional[str] = typer.Option(None, "--judge", help="judge id for the label columns (default: primary)"),
    raw_csv: bool = typer.Option(False, help="do not prefix CSV cells that look like spreadsheet formulas with '"),
):
    """Export a run's per-sample rows (csv, jsonl, parquet) or the runs' leaderboard (markdown)."""
    from mmsafe.report import EXPORT_FORMATS, export_runs, leaderboard_markdown
    if fmt not in EXPORT_FORMATS:
        fail(f"--format {fmt!r}: expected one of {', '.join(EXPORT_FORMATS)}")
    if fmt == "markdown":
        md = leaderboard_markdown(run_dirs)
        if out_file is None or str(out_file) == "-":
            sys.stdout.write(md)
        else:
            out_file.write_text(md, encoding="utf-8")
            err.print(f"leaderboard: {out_file}")
        return
    if fmt == "parquet" and out_file is None:
        if len(run_dirs) != 1:
            fail("--format parquet over several runs needs --out FILE")
        out_file = run_dirs[0] / "export.parquet"
    n = export_runs(run_dirs, fmt, out_file, judge_id=judge_id, csv_formula_guard=not raw_csv)
    if out_file is not None and str(out_file) != "-":
        err.print(f"exported {n} rows -> {out_file}")


# --------------------------------------------------------------------------- build

build_app = typer.Typer(no_args_is_help=False, invoke_without_command=True,
                        help="Build a benchmark: taxonomy discovery and the agents preprocess, generate, "
                             "image, augment, select.")
app.add_typer(build_app, name="build")


def _build_log(msg: str) -> None:
    err.print(msg, highlight=False, soft_wrap=True)


def _print_build(res: dict[str, Any]) -> None:
    table = Table(title=f"build ledger ({res['out']})")
    for col in ("stage", "items", "calls", "cached", "errors", "img/tts", "tokens", "USD", "wall s", "skipped"):
        table.add_column(col, justify="right" if col not in ("stage",) else "left")
    for s, r in res["stages"].items():
        lg = r["ledger"]
        table.add_row(s, str(r["n_items"]), str(lg["calls"]), str(lg["cached"]), str(lg["errors"]),
                      f"{lg.get('image_calls', 0)}/{lg.get('tts_calls', 0)}",
                      str(lg["input_tokens"] + lg["output_tokens"]), f"{lg['cost_usd']:.4f}", f"{lg['wall_s']:.2f}",
                      "yes" if r.get("skipped") else "")
    out.print(table)
    q = (getattr(res["manifest"], "quality", None) or {})
    if q.get("selected"):
        def f(d: dict[str, Any], k: str) -> str:
            return "—" if d.get(k) is None else f"{d[k]:.3f}"
        for name in ("selected", "random"):
            d = q[name]
            out.print(f"{name:>8}: GAP {f(d, 'gap')}  MAD {f(d, 'mad')}  MEAN {f(d, 'mean')}  DIV {f(d, 'div')}")
    c = res["manifest"].counts
    out.print(f"benchmark [bold]{res['manifest'].name}[/]: {c.n_samples} samples, {len(c.by_scenario)} scenarios, "
              f"modalities {c.modalities} -> {res['out']}")


@build_app.callback()
@guarded
def build_main(
    ctx: typer.Context,
    config: Optional[Path] = typer.Option(None, "--config", "-c", help="build.yaml"),
    out_dir: Optional[Path] = typer.Option(None, "--out", "-o", help="benchmark directory to write"),
    work: Optional[Path] = typer.Option(None, help="work directory (default OUT.work)"),
    force: bool = typer.Option(False, help="re-run every stage even when its inputs and config are unchanged"),
    only: list[str] = typer.Option([], "--only", help="run only these stages (others reuse stored output)"),
):
    """Run the enabled stages in order (each cached and resumable), then write OUT."""
    if ctx.invoked_subcommand is not None:
        return
    if config is None or out_dir is None:
        fail("mmsafe build needs --config build.yaml and --out BENCH (or a subcommand: taxonomy, stage, write)")
    from mmsafe.build import load_config
    from mmsafe.build.pipeline import run_build
    cfg = load_config(config)
    res = run_async(run_build(cfg, out_dir, work=work, force=force, only=only or None, log=_build_log))
    _print_build(res)


@build_app.command("stage")
@guarded
def build_stage(
    name: str = typer.Argument(..., help="preprocess | generate | image | augment | select"),
    config: Path = typer.Option(..., "--config", "-c", help="build.yaml"),
    out_dir: Optional[Path] = typer.Option(None, "--out", "-o", help="benchmark directory (its work dir is OUT.work)"),
    work: Optional[Path] = typer.Option(None, help="work directory"),
    force: bool = typer.Option(False, help="re-run even when unchanged"),
):
    """Run one stage alone into the work directory (its input stage must have run)."""
    from mmsafe.build import load_config
    from mmsafe.build.common import WorkDir
    from mmsafe.build.pipeline import default_work_dir, run_stage
    from mmsafe.models import ResponseCache
    if work is None and out_dir is None:
        fail("mmsafe build stage needs --work DIR or --out BENCH")
    cfg = load_config(config)
    wd = WorkDir(work or default_work_dir(out_dir))

    async def go() -> dict[str, Any]:
        cache = ResponseCache(wd.root / "cache.sqlite") if cfg.cache else None
        try:
            return await run_stage(name, cfg, wd, force=force, cache=cache, log=_build_log)
        finally:
            if cache is not None:
                cache.close()

    rec = run_async(go())
    out.print(json.dumps({"stage": name, "items": rec["n_items"], "skipped": rec.get("skipped", False),
                          "ledger": rec["ledger"]}, indent=1))


@build_app.command("write")
@guarded
def build_write(
    config: Path = typer.Option(..., "--config", "-c", help="build.yaml"),
    out_dir: Path = typer.Option(..., "--out", "-o", help="benchmark directory to write"),
    work: Optional[Path] = typer.Option(None, help="work directory (default OUT.work)"),
):
    """Write the benchmark from the stages' stored outputs (no stage is run)."""
    from mmsafe.build import load_config
    from mmsafe.build.pipeline import run_build
    cfg = load_config(config)
    res = run_async(run_build(cfg, out_dir, work=work, only=["__none__"], log=_build_log))
    _print_build(res)


@build_app.command("taxonomy")
@guarded
def build_taxonomy(
    panel: list[str] = typer.Option(..., "--panel", "-p", help="a panel model (repeat; provider/model[@URL] or models-file name)"),
    merger: Optional[str] = typer.Option(None, "--merger", help="the model that merges similar proposals"),
    out_file: Path = typer.Option(Path("taxonomy.yaml"), "--out", "-o", help="taxonomy YAML to write"),
    models: Optional[Path] = typer.Option(None, "--models", help="YAML models file (or $MMSAFE_MODELS)"),
    n: int = typer.Option(20, min=1, help="how many kinds of request to ask each panel model for"),
    threshold: Optional[float] = typer.Option(None, min=0.0, max=1.0,
                                              help="cosine at or above which proposals are merged (default 0.75 MiniLM, 0.5 TF-IDF)"),
    embedder: str = typer.Option("auto", help="auto | minilm | tfidf"),
    base: Optional[Path] = typer.Option(None, help="taxonomy whose MLCommons mapping is copied (default: bundled)"),
    name: str = typer.Option("discovered", help="taxonomy name"),
):
    """Ask a panel of LLMs which requests they should refuse; merge, dedupe, write an editable YAML."""
    from mmsafe.build.taxonomy import discover_taxonomy, write_taxonomy
    tax, led = run_async(discover_taxonomy(panel, merger, models_file=models, n=n, threshold=threshold,
                                             embedder=embedder, base_taxonomy=base, name=name))
    write_taxonomy(tax, out_file)
    p = tax["provenance"]
    out.print(f"taxonomy: {p['n_scenarios']} scenarios in {len(tax['categories'])} categories from "
              f"{p['n_proposals']} proposals by {len(panel)} models -> {out_file}")
    out.print(f"ledger: {led['calls']} calls, {led['input_tokens'] + led['output_tokens']} tokens, "
              f"${led['cost_usd']:.4f}, {led['wall_s']:.2f}s")


@app.command()
@guarded
def demo(
    out_dir: Path = typer.Option(Path("demo-run"), "--out", "-o", help="where the demo benchmark and runs go"),
):
    """Offline end-to-end demo: build a small benchmark with typographic images, run mock
    reference models over a real loopback HTTP server, judge, summarise."""
    from mmsafe.build.demo import run_demo
    from mmsafe.report import build_report
    run_dirs = run_demo(out_dir, out, err)
    stats = build_report(run_dirs, out_dir / "report.html", title="mmsafe demo (mock models)")
    out.print(f"report: {out_dir / 'report.html'} (self-contained, {stats.bytes / 1024:.0f} KB) — "
              f"or browse: mmsafe view {' '.join(str(d) for d in run_dirs)}")


@app.command()
def version():
    """Print the mmsafe version."""
    out.print(mmsafe.__version__)


def main() -> None:
    from mmsafe.runtime import tune_gc
    tune_gc()
    try:
        app()
    except KeyboardInterrupt:
        err.print("interrupted")
        sys.exit(130)


if __name__ == "__main__":
    main()
