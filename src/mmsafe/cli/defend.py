"""Defenses: ``mmsafe moderate``, ``mmsafe defend-eval`` and the ``mmsafe serve-guard`` proxy."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Annotated, Any, cast

import typer

from mmsafe.types import InputError, Message

from . import console
from .app import app
from .bench import open_bench
from .console import fail, note, out, say
from .options import (
    Cache,
    Judge,
    MaxConnections,
    Models,
    Moderator,
    Policies,
    Target,
    Workers,
    limit_option,
    out_option,
)
from .progress import Reporter, progress_bar
from .run import DEFENSE_SPEC, fmt_rate


def read_conversations(path: Path) -> Iterator[tuple[str, list[Message], Path]]:
    """Yield (id, messages, asset root) from a benchmark dir or a JSONL of OpenAI-format conversations."""
    from pydantic import ValidationError

    from mmsafe.datasets.importers.generic import jsonl_rows
    from mmsafe.defense.proxy import messages_from_openai
    if path.is_dir():
        bench = open_bench(path)
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
def moderate(
    input_path: Annotated[Path, typer.Argument(metavar="INPUT", help="benchmark dir, or JSONL of {id, messages}")],
    moderator: Moderator = "offline",
    json: Annotated[bool, typer.Option("--json", help="one JSON object per conversation on stdout")] = False,
    models: Models = None,
    max_connections: Workers = 16,
) -> None:
    """Does each conversation, as a whole, carry harmful intent? Which scenario, how sure?"""
    import orjson

    from mmsafe.defense import make_moderator
    from mmsafe.defense.moderator import moderate_all
    from mmsafe.models.preflight import check_endpoints
    from mmsafe.runtime import run_async
    if not input_path.exists():
        fail(f"{input_path}: not found")
    mod = make_moderator(moderator, models)
    check_endpoints(mod)
    convs = list(read_conversations(input_path))
    root = convs[0][2] if convs else None
    reporter = Reporter(f"moderate ({moderator})", len(convs))

    class _Counted:  # moderate_all asks only assess(); each answer moves the progress on
        done = errors = 0

        async def assess(self, msgs: list[Message], root: Path | None) -> Any:
            m = await mod.assess(msgs, root)
            self.done += 1
            self.errors += m.flagged is None
            reporter.update({"done": self.done, "errors": self.errors})
            return m

    async def go() -> Any:
        await mod.start()
        try:
            return await moderate_all(cast(Any, _Counted()), [(cid, msgs) for cid, msgs, _ in convs], root,
                                      max_connections)
        finally:
            await mod.close()

    with reporter:
        results = run_async(go())
    n_flag = n_err = 0
    rows = []
    for cid, m in results:
        n_flag += bool(m.flagged)
        n_err += m.flagged is None
        if json:
            sys.stdout.write(orjson.dumps({"id": cid, "flagged": m.flagged, "score": m.score,
                                           "scenario": m.scenario, "error": m.error,
                                           "latency_ms": round(m.latency_ms, 3)}).decode() + "\n")
        else:
            rows.append([cid, "?" if m.flagged is None else ("yes" if m.flagged else "no"),
                         "—" if m.score is None else f"{m.score:.3f}", m.scenario or "—"])
    if not json:
        out.print(console.table(f"moderation ({moderator})", ("id", "flagged", "score", "scenario"), rows,
                                text_columns=("id", "scenario")))
        say(f"{n_flag} of {len(results)} flagged; {n_err} moderation errors")


@app.command("defend-eval")
def defend_eval(
    harmful: Annotated[Path, typer.Argument(help="harmful benchmark dir")],
    target: Target,
    defense: Annotated[list[str], typer.Option("--defense", "-d", metavar="SPEC",
                                               help=f"defense to compare (repeatable): {DEFENSE_SPEC}")],
    benign: Annotated[Path | None, typer.Option(
        metavar="DIR", help="benign/borderline benchmark for over-refusal", show_default="none")] = None,
    judge: Judge = "keyword",
    out: Annotated[Path, out_option("folder for the runs and comparison.json")] = Path("runs/defend-eval"),
    limit: Annotated[int | None, limit_option("samples of each benchmark")] = None,
    max_connections: MaxConnections = None,
    models: Models = None,
    policies: Policies = None,
    cache: Cache = True,
) -> None:
    """Compare defenses: ASR by turns with and without each, ASR reduction, over-refusal, latency, cost."""
    from mmsafe.defense import make_defense
    from mmsafe.judges import make_judge
    from mmsafe.models import resolve_endpoint
    from mmsafe.models.preflight import check_endpoints
    from mmsafe.runner import RunOptions
    from mmsafe.runner.base import Defense
    from mmsafe.runner.defend import evaluate_defenses
    tcfg = resolve_endpoint(target, "target", models_file=models)
    defenses: list[tuple[str | None, Defense | None]] = [(None, None)]
    defenses += [(d, make_defense(d, models_file=models, policies=policies)) for d in defense]
    first_judge = make_judge(judge, models_file=models)  # fail early on a bad spec (each run makes its own)
    open_bench(harmful)
    if benign is not None:
        open_bench(benign)
    # every defense's keys before the baseline run writes anything under --out
    check_endpoints(tcfg, first_judge, *(d for _, d in defenses))
    progress, update = progress_bar(None, f"defend-eval {tcfg.name}")  # each run's stats carry its own total
    base = RunOptions(benchmark=harmful, target=tcfg, judge=first_judge, out=out, limit=limit,
                      max_connections=max_connections, use_cache=cache, on_progress=update)
    with progress:
        res = evaluate_defenses(harmful, benign, base, defenses, out, lambda: make_judge(judge, models_file=models))
    rows = []
    for r in res["rows"]:
        orf = r.get("over_refusal") or {}
        rows.append([r["defense"], fmt_rate(r["asr"]),
                     ", ".join(f"{k}: {fmt_rate(v)}" for k, v in r["asr_by_turns"].items()),
                     "—" if r["asr_reduction"] is None else f"{100 * r['asr_reduction']:+.1f} pts",
                     fmt_rate(orf.get("rate")), f"{r['added_latency_ms_mean'] or 0:.2f}",
                     f"{r['moderator_cost_usd'] or 0:.4f}"])
    table = console.table(f"defenses on {harmful.name} — target {tcfg.name}",
                          ("defense", "ASR", "ASR by turns", "reduction", "over-refusal", "+latency ms", "moderator $"),
                          rows, text_columns=("defense", "ASR by turns"))
    console.out.print(table)  # `out` here is the --out folder
    say(f"comparison: {out / 'comparison.json'}  (over-refusal by refusal-phrase detection)")


@app.command("serve-guard")
def serve_guard(
    upstream: Annotated[str, typer.Option(metavar="URL", help="upstream OpenAI-compatible base URL, "
                                                              "e.g. http://127.0.0.1:8000/v1")],
    moderator: Moderator = "offline",
    mode: Annotated[str, typer.Option(metavar="MODE", help="inject | block | flag")] = "inject",
    host: Annotated[str, typer.Option(
        metavar="HOST", help="address to bind (anything but loopback needs a token)")] = "127.0.0.1",
    port: Annotated[int, typer.Option(min=0, metavar="PORT", max=65535, help="port to bind")] = 8787,
    token_env: Annotated[str, typer.Option(metavar="NAME",
                                           help="env var holding the bearer token clients must send")
                         ] = "MMSAFE_GUARD_TOKEN",
    upstream_key_env: Annotated[str | None, typer.Option(
        "--upstream-key-env", "--api-key-env", metavar="NAME", help="env var holding the upstream's API key",
        show_default="none")] = None,
    log: Annotated[Path | None, typer.Option(metavar="FILE", help="JSONL decision log",
                                                show_default="stderr")] = None,
    log_bodies: Annotated[bool, typer.Option(help="also log message bodies")] = False,
    on_error: Annotated[str, typer.Option(metavar="ACTION", help="when moderation fails: allow | block")] = "allow",
    models: Models = None,
    policies: Policies = None,
) -> None:
    """An OpenAI-compatible proxy that moderates each request and forwards it upstream.

    Measured false-positive rate of each offline backend on benign look-alike prompts it
    never saw (docs/offline_moderator.md): --moderator offline (= offline:tfidf, the
    default): threshold set for <= 10% per source; measured with each source also held
    out of that choice: CyberSecEval MITRE 4%, CoCoNot 11%, HateCheck non-hateful 9%.
    Its recall on unseen harmful prompts is low (0.05-0.41 per source). --moderator offline:minilm
    (recalibrated the same way, threshold 0.717): MITRE 5.5%, CoCoNot 7.5%, HateCheck non-hateful 17%
    (10.0% when HateCheck is in the choice), MT-Bench-101 benign dialogues 3.5%; recall 0.05-0.45.
    --mode inject (the default) only adds policy text when a request is flagged.
    """
    from aiohttp import web

    from mmsafe.defense import ModeratorDefense, PolicyLibrary, make_moderator
    from mmsafe.defense.proxy import build_proxy
    from mmsafe.runtime import new_event_loop
    defense = ModeratorDefense(make_moderator(moderator, models), mode=mode, on_error=on_error,
                               policies=PolicyLibrary.load(policies) if policies else None)
    proxy = build_proxy(upstream, defense, host=host, token_env=token_env, upstream_key_env=upstream_key_env,
                        log_path=log, log_bodies=log_bodies)
    note(f"mmsafe guard proxy on http://{host}:{port}/v1 -> {upstream} (moderator {moderator}, mode {mode}, "
         f"auth {'on' if proxy.token else 'off (loopback only)'})")
    try:
        web.run_app(proxy.app(), host=host, port=port, access_log=None, print=None, loop=new_event_loop())
    except OSError as e:
        fail(f"cannot serve on {host}:{port}: {e.strerror or e}")


__all__ = ["defend_eval", "moderate", "read_conversations", "serve_guard"]
