"""``mmsafe build``: the stages in order, each cached and resumable, then a benchmark dir.

Work dir layout (default ``<OUT>.work``)::

    cache.sqlite                LLM reply cache (a crashed stage re-run replays finished calls)
    t2i_cache/<key>.ref         text-to-image results by (endpoint, size, prompt)
    assets/<sha256>.<ext>       every image / audio file any stage made
    <stage>/items.jsonl         the stage's output items
    <stage>/report.json         its counts
    <stage>/rejected.jsonl      what it dropped and why (generate)
    <stage>/done.json           key = hash(stage config + models + taxonomy + input items); ledger

A stage whose key is unchanged is skipped (its stored output is reused); ``force`` re-runs.
The manifest of the written benchmark carries each agent's ledger (calls, cached, errors,
tokens, USD, wall time), every stage report and the build config.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable
from pathlib import Path
from types import SimpleNamespace
from typing import Any, cast

import orjson

import mmsafe
from mmsafe.datasets import BenchmarkWriter
from mmsafe.models import BudgetExceeded, ResponseCache
from mmsafe.taxonomy import load_taxonomy
from mmsafe.types import InputError

from .common import AgentContext, BuildError, WorkDir, item_to_sample
from .config import STAGES, BuildConfig, ModelRef

# which config sections a stage's output depends on (besides models, seed, embedder, taxonomy)
STAGE_SECTIONS = {
    "preprocess": ("preprocess", "embedder"),
    "generate": ("generate", "embedder", "seed", "image"),
    "image": ("image", "seed"),
    "augment": ("augment", "seed"),
    "select": ("select", "embedder", "seed"),
}
AGENT_OF = {"preprocess": "preprocess", "generate": "generate", "image": "image", "augment": "augment",
            "select": "select"}


def taxonomy_for(cfg: BuildConfig) -> tuple[dict[str, Any], str, str]:
    """``(taxonomy, its path, short sha256)`` of the build's taxonomy (the bundled one by default)."""
    p = cfg.path(cfg.taxonomy)
    tax = load_taxonomy(p)
    from mmsafe.taxonomy import default_taxonomy_path
    path = p or default_taxonomy_path()
    sha = hashlib.sha256(Path(path).read_bytes()).hexdigest()[:16]
    return tax, str(path), sha


def _file_fingerprint(p: Path | None) -> Any:
    if p is None or not p.exists():
        return None
    if p.is_file():
        st = p.stat()
        return [p.name, st.st_size, st.st_mtime_ns]
    files = sorted(q for q in p.rglob("*") if q.is_file())
    return [len(files), sum(q.stat().st_size for q in files), max((q.stat().st_mtime_ns for q in files), default=0)]


def stage_key(cfg: BuildConfig, stage: str, input_sha: str | None, tax_sha: str) -> str:
    """A stage's cache key: its config sections, models, taxonomy, input items (and pool files for preprocess)."""
    extra: dict[str, Any] = {"models": cfg.model_dump(mode="json")["models"], "taxonomy": tax_sha,
                             "input": input_sha, "stage": stage, "format": 1}
    if stage == "preprocess":
        extra["pools"] = [_file_fingerprint(cfg.path(p.path)) for p in cfg.preprocess.pools]
    mf = cfg.path(cfg.models_file)
    if mf is not None and mf.is_file():
        extra["models_file"] = hashlib.sha256(mf.read_bytes()).hexdigest()[:16]
    blob = cfg.section_hash(*STAGE_SECTIONS[stage]) + orjson.dumps(extra, option=orjson.OPT_SORT_KEYS).decode()
    return hashlib.sha256(blob.encode()).hexdigest()[:20]


def _done(wd: WorkDir, stage: str) -> dict[str, Any] | None:
    p = wd.root / stage / "done.json"
    if not p.is_file():
        return None
    try:
        return orjson.loads(p.read_bytes())
    except orjson.JSONDecodeError:
        return None


def previous_stage(cfg: BuildConfig, stage: str) -> str | None:
    """The enabled stage before ``stage`` (whose items it reads), or None for the first."""
    enabled = [s for s in STAGES if s in cfg.stages]
    before = [s for s in STAGES[: STAGES.index(stage)] if s in enabled]
    return before[-1] if before else None


async def run_stage(stage: str, cfg: BuildConfig, wd: WorkDir, *, force: bool = False,
                    cache: ResponseCache | None = None, log: Callable[[str], None] | None = None,
                    spent_usd: float = 0.0, checked: bool = False,
                    on_stage: Callable[[str, AgentContext], None] | None = None) -> dict[str, Any]:
    """Run one stage (or skip it when its key is unchanged). Returns its done record.

    ``cfg.max_cost`` is one budget for the whole build: ``spent_usd`` (what earlier stages
    cost) is taken off it. Past it the stage stops with a BuildError; its finished LLM
    replies are in the cache, so a re-run with a higher budget continues where it stopped."""
    if stage not in STAGES:
        raise BuildError(f"unknown stage {stage!r}; stages are {', '.join(STAGES)}")
    if not checked:  # run alone (mmsafe build stage): its settings, models and keys before its first call
        preflight(cfg.model_copy(update={"stages": [*cfg.stages, stage]}) if stage not in cfg.stages else cfg,
                  [stage])
    tax, _tax_path, tax_sha = taxonomy_for(cfg)
    prev = previous_stage(cfg, stage)
    if prev is not None:
        pd = _done(wd, prev)
        if pd is None:
            raise BuildError(f"stage '{stage}' needs the output of '{prev}': run it first "
                             f"(mmsafe build stage {prev} ...)")
        input_sha = pd["output_sha"]
        inputs = wd.read_items(prev)
    else:
        input_sha, inputs = None, []
    key = stage_key(cfg, stage, input_sha, tax_sha)
    done = _done(wd, stage)
    if not force and done is not None and done.get("key") == key and wd.items_path(stage).is_file():
        if log:
            log(f"{stage}: unchanged, skipped ({done.get('n_items')} items)")
        return {**done, "skipped": True}
    budget = None if cfg.max_cost is None else max(0.0, cfg.max_cost - spent_usd)
    ctx = AgentContext(AGENT_OF[stage], cfg, wd, cache=cache, budget_usd=budget)
    if on_stage is not None:  # a progress reporter follows this stage's ledger
        on_stage(stage, ctx)
    rejected: list[dict[str, Any]] = []
    t0 = time.perf_counter()
    try:
        if stage == "preprocess":
            from .preprocess import run_preprocess
            items, report = await run_preprocess(ctx, tax)
        elif stage == "generate":
            from .generate import run_generate
            items, report, rejected = await run_generate(ctx, tax, inputs, cfg.generate.scenarios)
        elif stage == "image":
            from .image import run_image
            items, report = await run_image(ctx, inputs)
        elif stage == "augment":
            from .augment import run_augment
            items, report = await run_augment(ctx, inputs)
        else:
            from .select import run_select
            items, report = await run_select(ctx, inputs)
    except BudgetExceeded as e:
        raise BuildError(f"{stage}: {e} (max_cost for the whole build); finished replies are cached: "
                         "re-run with a higher max_cost to continue") from None
    finally:
        await ctx.close()
    sd = wd.stage_dir(stage)
    n, sha = wd.write_items(stage, items)
    if rejected:
        with open(sd / "rejected.jsonl", "wb") as f:
            for r in rejected:
                f.write(orjson.dumps(r) + b"\n")
    (sd / "report.json").write_bytes(orjson.dumps(report, option=orjson.OPT_INDENT_2))
    ledger = ctx.summary()
    ledger["wall_s"] = round(time.perf_counter() - t0, 3)
    rec = {"stage": stage, "key": key, "input_sha": input_sha, "output_sha": sha, "n_items": n,
           "n_rejected": len(rejected), "report": report, "ledger": ledger, "finished": time.time()}
    tmp = sd / "done.json.tmp"
    tmp.write_bytes(orjson.dumps(rec, option=orjson.OPT_INDENT_2))
    tmp.replace(sd / "done.json")
    if log:
        log(f"{stage}: {n} items, {ledger['calls']} calls, {ledger['input_tokens'] + ledger['output_tokens']} "
            f"tokens, ${ledger['cost_usd']:.4f}, {ledger['wall_s']:.2f}s")
    return {**rec, "skipped": False}


def _counts(report: dict[str, Any]) -> dict[str, int]:
    """The integer counts of a stage report (generate's ``totals``, preprocess's ``counts``, or its top level)."""
    src = report.get("totals") or report.get("counts") or report
    return {k: v for k, v in src.items() if isinstance(v, int) and not isinstance(v, bool) and v}


def empty_build_cause(stages: dict[str, dict[str, Any]], work_dir: str | Path) -> str | None:
    """None when the build kept items; else one line: the first stage that kept none, its calls and errors
    and its report's counts (where the candidates went), and where the report is."""
    for name in STAGES:
        r = stages.get(name)
        if r is None or r.get("n_items"):
            continue
        lg = r.get("ledger") or {}
        counts = ", ".join(f"{k.replace('_', ' ')} {v}" for k, v in sorted(_counts(r.get("report") or {}).items()))
        rej = f", {r['n_rejected']} rejected" if r.get("n_rejected") else ""
        return (f"nothing built: stage {name} kept 0 items ({lg.get('calls', 0)} calls, {lg.get('errors', 0)} "
                f"errors{rej}{'; ' + counts if counts else ''}); see {Path(work_dir) / name / 'report.json'}")
    return None


def default_work_dir(out: Path) -> Path:
    """The work folder next to the output benchmark: ``<out>.work``."""
    out = Path(out)
    return out.with_name(out.name + ".work")


def write_benchmark(cfg: BuildConfig, wd: WorkDir, out: Path, stage_records: dict[str, dict[str, Any]],
                    *, overwrite: bool = True) -> Any:
    """Write the last stage's items as a benchmark at ``out`` (assets copied in, manifest with provenance and costs)."""
    last = [s for s in STAGES if s in cfg.stages][-1]
    tax, tax_path, tax_sha = taxonomy_for(cfg)
    ledger = {s: r["ledger"] for s, r in stage_records.items()}
    totals = {k: sum(r["ledger"].get(k, 0) for r in stage_records.values())
              for k in ("calls", "cached", "errors", "input_tokens", "output_tokens", "cost_usd", "wall_s")}
    totals["cost_usd"] = round(totals["cost_usd"], 6)
    from mmsafe.types import BenchmarkManifest
    manifest = BenchmarkManifest(
        name=cfg.name, version=cfg.version, description=cfg.description, licence=cfg.licence,
        source="mmsafe build",
        provenance={
            "builder": "mmsafe.build", "mmsafe_version": mmsafe.__version__,
            "taxonomy": {"name": tax.get("name"), "version": tax.get("version"), "path": tax_path, "sha256": tax_sha},
            "config": cfg.model_dump(mode="json"),
            "stages": {s: {"key": r["key"], "skipped": r.get("skipped", False), "n_items": r["n_items"],
                           "report": r["report"]} for s, r in stage_records.items()},
            "work_dir": str(wd.root),
        })
    extra = {"ledger": {"agents": ledger, "total": totals}}
    if "select" in stage_records and isinstance(stage_records["select"]["report"].get("quality"), dict):
        extra["quality"] = stage_records["select"]["report"]["quality"]
    for k, v in extra.items():
        setattr(manifest, k, v)
    with BenchmarkWriter(out, manifest, overwrite=overwrite) as w:
        for it in wd.iter_items(last):
            s = item_to_sample(it, wd)
            for m in s.messages:
                if isinstance(m.content, list):
                    new = []
                    for p in m.content:
                        # item_to_sample makes every image/audio part from a work-dir path
                        if p.type == "image":
                            assert p.path is not None
                            p = w.add_image(wd.root / p.path, where=it["id"])
                        elif p.type == "audio":
                            assert p.path is not None
                            p = w.add_audio(wd.root / p.path, where=it["id"])
                        new.append(p)
                    m.content = new
            w.add(s)
    return w.manifest


def _check_preprocess(cfg: BuildConfig, scenario_ids: set[str]) -> None:
    for pool in cfg.preprocess.pools:
        p = cfg.path(pool.path)
        if p is None or not p.exists():
            raise BuildError(f"preprocess.pools: {pool.path}: not found")


def _check_generate(cfg: BuildConfig, scenario_ids: set[str]) -> None:
    g = cfg.generate
    unknown = [x for x in g.scenarios or [] if x not in scenario_ids]
    if unknown:
        raise BuildError(f"generate.scenarios: {', '.join(unknown)} not in the taxonomy "
                         f"(its scenarios: {', '.join(sorted(scenario_ids))})")
    if "generator" not in cfg.models and not (g.include_pool and cfg.preprocess.pools):
        raise BuildError("generate: needs models.generator (or preprocess pools with generate.include_pool)")
    if "scorer" not in cfg.models and "generator" not in cfg.models:
        raise BuildError("generate: needs models.scorer (or models.generator, used as the scorer)")


def _check_image(cfg: BuildConfig, scenario_ids: set[str]) -> None:
    t2i = cfg.image.t2i
    if t2i is not None and t2i.kind == "openai" and not t2i.base_url:
        raise BuildError("image.t2i.base_url is required for kind openai")


def _check_augment(cfg: BuildConfig, scenario_ids: set[str]) -> None:
    from .augment import _methods
    _methods(cast(Any, SimpleNamespace(cfg=cfg)))  # transforms known, espeak there (it reads ctx.cfg only)
    if cfg.augment.audio.engine == "openai" and not cfg.augment.audio.base_url:
        raise BuildError("augment.audio.base_url is required for engine openai")


def _check_select(cfg: BuildConfig, scenario_ids: set[str]) -> None:
    from .select import MIN_REFERENCE_MODELS
    sc = cfg.select
    if not sc.reference_models and sc.size is not None:
        raise BuildError(f"select: needs select.reference_models (≥ {MIN_REFERENCE_MODELS}) to pick "
                         f"{sc.size} items")
    if sc.reference_models and len(sc.reference_models) < MIN_REFERENCE_MODELS:
        raise BuildError(f"select.reference_models: needs at least {MIN_REFERENCE_MODELS} models, "
                         f"got {len(sc.reference_models)}")


# what each stage would refuse only once running, checked from the config alone
_STAGE_CHECKS: dict[str, Callable[[BuildConfig, set[str]], None]] = {
    "preprocess": _check_preprocess, "generate": _check_generate, "image": _check_image,
    "augment": _check_augment, "select": _check_select}


def preflight(cfg: BuildConfig, stages: list[str] | None = None) -> None:
    """Validate the whole build before its first LLM call (raises BuildError / ConfigError: exit 2).

    For each stage that will run (``stages``, default every enabled one): its settings (pools there,
    scenarios in the taxonomy, transforms known, at least 3 reference models …); then every model the
    config names (``models:`` and, when select runs, ``select.reference_models`` and its judge):
    spec, models-file entry and role, optional extra, and API key."""
    from mmsafe.models import build_provider, resolve_endpoint

    from .common import MODEL_ROLES
    run = [s for s in STAGES if s in cfg.stages and (stages is None or s in stages)]
    if not run:
        return
    tax, _, _ = taxonomy_for(cfg)
    scenario_ids = {str(x["id"]) for x in tax.get("scenarios") or []}
    for stage in run:
        _STAGE_CHECKS[stage](cfg, scenario_ids)
    refs: list[tuple[str, ModelRef]] = [(k, r) for k, r in cfg.models.items()]
    if "select" in run:
        refs += [("reference", r) for r in cfg.select.reference_models]
    mf = cfg.path(cfg.models_file)
    for key, ref in refs:
        where = "select.reference_models" if key == "reference" else f"models.{key}"
        over = {k: v for k, v in ref.model_dump(exclude={"spec"}).items() if v is not None}
        try:
            ecfg = resolve_endpoint(ref.spec, MODEL_ROLES.get(key, "generator"), models_file=mf, **over)
            build_provider(ecfg).check_credentials()
        except InputError as e:
            e.add_note(f"in {where} of the build config")  # the one error line ends with it
            raise
    if "select" in run and cfg.select.reference_models:
        from mmsafe.judges import make_judge
        from mmsafe.models.preflight import check_endpoints
        try:
            check_endpoints(make_judge(cfg.select.judge, models_file=mf))
        except InputError as e:
            e.add_note("in select.judge of the build config")
            raise


async def run_build(cfg: BuildConfig, out: Path, *, work: Path | None = None, force: bool = False,
                    only: list[str] | None = None, overwrite: bool = True,
                    log: Callable[[str], None] | None = None,
                    on_stage: Callable[[str, AgentContext], None] | None = None) -> dict[str, Any]:
    """Run the enabled stages (or ``only`` these) in order, then write the benchmark to ``out``.

    The whole config (every stage that will run, every model and key) is checked first: a mistake
    is one line before the first LLM call, not after the stages before it spent."""
    out = Path(out)
    preflight(cfg, only)
    wd = WorkDir(work or default_work_dir(out))
    cache = ResponseCache(wd.root / "cache.sqlite") if cfg.cache else None
    recs: dict[str, dict[str, Any]] = {}
    t0 = time.perf_counter()
    try:
        for s in [s for s in STAGES if s in cfg.stages]:
            if only and s not in only:
                d = _done(wd, s)
                if d is None:
                    raise BuildError(f"stage '{s}' has no stored output in {wd.root}; run it first")
                recs[s] = {**d, "skipped": True}
                continue
            spent = sum(r["ledger"].get("cost_usd", 0.0) for r in recs.values() if not r.get("skipped"))
            recs[s] = await run_stage(s, cfg, wd, force=force, cache=cache, log=log, spent_usd=spent,
                                      checked=True, on_stage=on_stage)
    finally:
        if cache is not None:
            cache.close()
    manifest = write_benchmark(cfg, wd, out, recs, overwrite=overwrite)
    return {"manifest": manifest, "stages": recs, "work_dir": str(wd.root), "out": str(out),
            "wall_s": round(time.perf_counter() - t0, 3)}
