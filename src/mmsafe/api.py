"""mmsafe's public Python API: the small, documented face the CLI itself uses.

Everything here is also reachable as ``mmsafe.<name>`` (loaded lazily, so ``import mmsafe``
stays cheap)::

    import mmsafe

    mmsafe.import_benchmark("figstep", "SafeBench-Tiny.csv", "benchmarks/figstep")
    outcome = mmsafe.run("benchmarks/figstep", "openai/gpt-4o-mini", judge="keyword", out="runs/figstep")
    print(outcome.summary["asr"])
    mmsafe.judge("runs/figstep", "rubric:openai/gpt-4o")          # re-judge the stored replies
    mmsafe.write_report(["runs/figstep"], "report.html")           # the HTML report
    for p in mmsafe.plugins("judges"):                             # what is registered
        print(p.name, p.origin, p.description)

The base classes a plugin implements are re-exported here: :class:`Judge`, :class:`Provider`,
:class:`Importer` (a protocol: importers are functions), :class:`Attack` (a protocol for
adaptive attackers), :class:`Defense` and :class:`Moderator`. ``docs/extending.md`` shows a
third-party package that adds a judge, a provider and an importer by entry points.

Errors: bad input is a :class:`~mmsafe.types.InputError` / :class:`~mmsafe.types.ConfigError`
(a plugin that cannot be loaded is a :class:`~mmsafe.registry.PluginError`, a ConfigError);
the CLI turns them into one line and exit code 2.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

from mmsafe import registry as _registry_module
from mmsafe.registry import KINDS, PluginError

if TYPE_CHECKING:
    from mmsafe.datasets.benchmark import Benchmark
    from mmsafe.defense.defenses import Defense
    from mmsafe.defense.moderator import Moderator
    from mmsafe.judges.base import Judge
    from mmsafe.models.base import EndpointConfig, Provider
    from mmsafe.report.html import ReportStats
    from mmsafe.runner.rejudge import RejudgeOutcome
    from mmsafe.runner.run import RunOutcome
    from mmsafe.types import BenchmarkManifest, ImagePart

registry = _registry_module
"""The registry module: ``mmsafe.registry.registry("judges").names()`` and friends."""

_BASES = {
    "Judge": ("mmsafe.judges.base", "Judge"),
    "Provider": ("mmsafe.models.base", "Provider"),
    "Defense": ("mmsafe.defense.defenses", "Defense"),
    "Moderator": ("mmsafe.defense.moderator", "Moderator"),
}


def __getattr__(name: str) -> Any:
    """Load the base classes only when asked (they pull in pydantic models, httpx, …)."""
    if name in _BASES:
        import importlib
        mod, attr = _BASES[name]
        return getattr(importlib.import_module(mod), attr)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


# --------------------------------------------------------------------------- protocols


@runtime_checkable
class Importer(Protocol):
    """What an importer is: a function ``fn(src, out, *, name=None, overwrite=False, **options)``.

    It reads a benchmark in its own format from ``src`` and writes a mmsafe benchmark
    directory at ``out`` (through :class:`mmsafe.datasets.BenchmarkWriter`, atomically),
    returning the written manifest. Bad input rows raise
    :class:`~mmsafe.datasets.DatasetError` naming file, line and field.
    """

    def __call__(self, src: Path, out: Path, *, name: str | None = None, overwrite: bool = False,
                 **options: Any) -> BenchmarkManifest:
        """Import ``src`` into ``out`` and return the manifest."""
        ...


@runtime_checkable
class Attack(Protocol):
    """What an attack for ``--mode adaptive --attack NAME`` is (registered in ``attacks`` with type ``adaptive``).

    A typed, resumable state machine: a pydantic ``config_model`` (``--attack-opt K=V``
    validated against it), a pydantic ``state_model`` (the per-sample state the runner
    stores after every step, so a killed run resumes at the last completed step) and
    :meth:`step` ``(state, replies, ctx) -> calls | Outcome``; the runner makes the calls
    (concurrency, store, resume, cost per role). Subclass :class:`mmsafe.attacks.base.Attack`
    (the runner takes only its subclasses); it provides everything but :meth:`step`. The
    built-ins are ``crescendo`` (:class:`mmsafe.attacks.adaptive.AdaptiveAttack`),
    ``pair``, ``tap`` and ``goat``; ``docs/attacks.md`` shows how to write one.
    """

    name: str
    config_model: type[Any]
    state_model: type[Any]

    def identity(self) -> dict[str, Any]:
        """The attack's settings and prompt hash (stored with each record)."""
        ...

    async def step(self, state: Any, replies: list[Any], ctx: Any) -> Any:
        """Read the replies to the last step's calls, update ``state``, return the next calls or an Outcome."""
        ...

    async def run(self, goal: str, *, image: ImagePart | None = None, scenario: str = "unspecified",
                  sample_id: str | None = None) -> Any:
        """Attack one goal in process; return the :class:`~mmsafe.attacks.base.AttackResult`."""
        ...


# --------------------------------------------------------------------------- benchmarks


def load_benchmark(path: Path | str) -> Benchmark:
    """Open a benchmark directory (``benchmark.json`` + ``samples.jsonl`` + ``assets/``) for streaming reads."""
    from mmsafe.datasets import open_benchmark
    return open_benchmark(Path(path))


def import_benchmark(kind: str, src: Path | str, out: Path | str, **opts: Any) -> BenchmarkManifest:
    """Import ``src`` (a benchmark in format ``kind``) into the benchmark directory ``out``.

    ``kind`` is a registered importer (``mmsafe plugins`` lists them; built-ins are
    ``safemt``, ``safebench``, ``figstep``, ``mmsafetybench``, ``harmbench``, ``jbb``, ``csv``,
    ``jsonl``) or ``module.path:function``. ``opts`` are the importer's keyword options
    (``name=``, ``overwrite=`` and its own).
    """
    from mmsafe.datasets import import_benchmark as _import
    return _import(kind, src, out, **opts)


# --------------------------------------------------------------------------- judges, defenses


def make_judge(spec: str, *, models_file: Path | str | None = None, options: dict[str, Any] | None = None) -> Any:
    """Build a :class:`Judge` from a spec such as ``keyword``, ``rubric:openai/gpt-4o?images=1``,
    a plugin's name or ``module.path:Name``; ``options`` add to the spec's ``?k=v``."""
    from mmsafe.judges import make_judge as _make
    return _make(spec, models_file=Path(models_file) if models_file else None, options=options)


def make_defense(spec: str, *, models_file: Path | str | None = None, policies: Path | str | None = None) -> Any:
    """Build a :class:`Defense` from a spec such as ``moderator:offline?mode=block``,
    ``input-guard:MODEL``, a plugin's name or ``module.path:Name``."""
    from mmsafe.defense import make_defense as _make
    return _make(spec, models_file=Path(models_file) if models_file else None,
                 policies=Path(policies) if policies else None)


# --------------------------------------------------------------------------- running


def _endpoint(spec: str | EndpointConfig, role: str, models_file: Path | None, **overrides: Any) -> EndpointConfig:
    from mmsafe.models import resolve_endpoint
    if isinstance(spec, str):
        return resolve_endpoint(spec, role, models_file=models_file,
                                **{k: v for k, v in overrides.items() if v is not None})
    return spec


def run(benchmark: Path | str, target: str | EndpointConfig, *, judge: Any = "keyword", out: Path | str | None = None,
        mode: str = "fixed", limit: int | None = None, models_file: Path | str | None = None,
        defense: Any = None, policies: Path | str | None = None, attacker: str | EndpointConfig | None = None,
        max_turns: int = 5, max_backtracks: int = 3, max_connections: int | None = None,
        judge_max_connections: int | None = None, max_cost: float | None = None, seed: int | None = None,
        epoch: int = 0, use_cache: bool = True, cache_dir: Path | str | None = None,
        system_prompt: str | None = None, fail_on_error: float = 0.05,
        params: dict[str, Any] | None = None, base_url: str | None = None, api_key_env: str | None = None,
        timeout_s: float | None = None, max_retries: int | None = None,
        on_progress: Callable[[dict[str, Any]], None] | None = None) -> RunOutcome:
    """Run ``benchmark`` against ``target``, judge the replies and write the run directory ``out``.

    ``target`` is a ``provider/model[@BASE_URL]`` spec, a models-file name or an
    :class:`~mmsafe.models.EndpointConfig`; ``judge`` a judge spec or a :class:`Judge`;
    ``defense`` a defense spec or a :class:`Defense`; ``mode`` a registered run mode
    (``fixed``, ``live``, ``adaptive`` — the last needs ``attacker``). ``out`` defaults to
    ``runs/<benchmark>-<model>``. Re-running on the same ``out`` resumes.

    Returns the :class:`~mmsafe.runner.RunOutcome`: ``summary`` (as in ``summary.json``),
    ``run_dir``, ``stopped`` (``"max_cost"``/``"fatal"``/None), ``exit_code`` (what the CLI exits with).
    Must be called outside a running event loop (it runs its own).
    """
    from mmsafe.runner import RunOptions, execute
    from mmsafe.runner.base import mode_spec
    from mmsafe.runtime import run_async
    from mmsafe.types import InputError

    spec = mode_spec(mode)  # an unknown mode fails before anything is resolved
    mf = Path(models_file) if models_file else None
    tcfg = _endpoint(target, "target", mf, base_url=base_url, api_key_env=api_key_env, timeout_s=timeout_s,
                     max_retries=max_retries, params=params or None)
    j = make_judge(judge, models_file=mf) if isinstance(judge, str) else judge
    acfg = _endpoint(attacker, "attacker", mf) if attacker is not None else None
    if acfg is not None and not spec.needs_attacker:
        raise InputError(f"--attacker is used with --mode adaptive only (got --mode {mode})")
    dfn = make_defense(defense, models_file=mf, policies=policies) if isinstance(defense, str) else defense
    if out is None:
        bench = load_benchmark(benchmark)
        out = Path("runs") / f"{bench.manifest.name}-{tcfg.model}".replace("/", "_")
    opts = RunOptions(benchmark=Path(benchmark), target=tcfg, judge=j, out=Path(out), mode=spec.name, limit=limit,
                      max_connections=max_connections, judge_max_connections=judge_max_connections,
                      max_cost=max_cost, fail_on_error=fail_on_error, seed=seed, epoch=epoch, use_cache=use_cache,
                      cache_dir=Path(cache_dir) if cache_dir else None, system_prompt=system_prompt,
                      defense=dfn, on_progress=on_progress, attacker=acfg, max_turns=max_turns,
                      max_backtracks=max_backtracks)
    return run_async(execute(opts))


def judge(run_dir: Path | str, judge_spec: Any, *, primary: bool = False, benchmark: Path | str | None = None,
          models_file: Path | str | None = None, options: dict[str, Any] | None = None, max_connections: int = 16,
          use_cache: bool = True, on_progress: Callable[[dict[str, Any]], None] | None = None,
          executor: str = "local", ray_address: str | None = None, workers: int | None = None) -> RejudgeOutcome:
    """Re-judge a run's stored replies with another judge (no re-generation; resumable).

    ``judge_spec`` is a judge spec or a :class:`Judge`. ``primary=True`` makes it the
    headline judge of ``summary.json``. Returns the :class:`~mmsafe.runner.rejudge.RejudgeOutcome`
    (judge id, the updated summary, counts, ``stopped``).
    """
    from mmsafe.runner.rejudge import rejudge
    from mmsafe.runtime import run_async

    j = (make_judge(judge_spec, models_file=models_file, options=options)
         if isinstance(judge_spec, str) else judge_spec)
    return run_async(rejudge(Path(run_dir), j, primary=primary, benchmark=Path(benchmark) if benchmark else None,
                             max_connections=max_connections, use_cache=use_cache, on_progress=on_progress,
                             executor=executor, ray_address=ray_address, workers=workers))


def calibrate(judge_spec: Any, data: Path | str, fmt: str | None = None, *, models_file: Path | str | None = None,
              options: dict[str, Any] | None = None, max_connections: int = 16, use_cache: bool = True,
              force: bool = False, limit: int | None = None) -> dict[str, Any]:
    """Measure a judge against human labels (``1`` = unsafe) in ``data``.

    ``fmt`` is one of ``csv``, ``harmbench``, ``xstest``, ``gptfuzz``, ``jailjudge`` (default:
    guessed from the header). Returns the calibration record: accuracy, precision, recall,
    F1, Cohen's κ, sensitivity and specificity with confidence intervals.
    """
    from mmsafe.judges.calibrate import FORMATS, calibrate as _calibrate
    from mmsafe.runtime import run_async
    from mmsafe.types import InputError

    if fmt is not None and fmt not in FORMATS:
        raise InputError(f"--format {fmt!r}: choose one of {', '.join(FORMATS)}")
    j = (make_judge(judge_spec, models_file=models_file, options=options)
         if isinstance(judge_spec, str) else judge_spec)
    return run_async(_calibrate(j, Path(data), fmt, concurrency=max_connections, use_cache=use_cache, force=force,
                                limit=limit))


# --------------------------------------------------------------------------- reading runs


def write_report(run_dirs: list[Path | str] | Path | str, out_file: Path | str = "report.html", *,
                 title: str | None = None, examples: int = 12) -> ReportStats:
    """Write one self-contained HTML report (no network) over one or more runs; returns its size and build time.

    (Called ``write_report`` at the top level because ``mmsafe.report`` is the package;
    :func:`report` is the same function.)
    """
    from mmsafe.report.html import build_report
    dirs = [run_dirs] if isinstance(run_dirs, (str, Path)) else list(run_dirs)
    return build_report(dirs, out_file, title=title, examples=examples)


report = write_report


def export(run_dirs: list[Path | str] | Path | str, fmt: str, out: Path | str | None = None, *,
           judge_id: str | None = None, csv_formula_guard: bool = True) -> int:
    """Export the runs' per-sample rows (``csv``, ``jsonl``, ``parquet``, or a plugin exporter) to ``out``
    (``None``/``-`` = stdout), or their leaderboard (``markdown``). Returns the rows (or runs) written."""
    from mmsafe.report.export import export_runs
    dirs = [run_dirs] if isinstance(run_dirs, (str, Path)) else list(run_dirs)
    return export_runs(dirs, fmt, None if out is None else Path(out), judge_id=judge_id,
                       csv_formula_guard=csv_formula_guard)


# --------------------------------------------------------------------------- plugins


@dataclass(frozen=True)
class PluginInfo:
    """One registered object as ``mmsafe plugins`` shows it."""

    kind: str
    name: str
    origin: str
    """``built-in``, or the providing package's name and version (``mypkg 0.1``)."""
    description: str
    options: tuple[str, ...]
    target: str
    """Where it lives (``module:attr``)."""
    meta: dict[str, Any]
    error: str | None = None
    """Set (and description/options empty) when the plugin cannot be loaded."""

    def as_dict(self) -> dict[str, Any]:
        """A JSON-ready dict (meta values that are not JSON scalars become strings)."""
        meta = {k: v if isinstance(v, (str, int, float, bool)) or v is None else str(v)
                for k, v in sorted(self.meta.items())}
        return {"kind": self.kind, "name": self.name, "origin": self.origin, "description": self.description,
                "options": list(self.options), "target": self.target, "meta": meta, "error": self.error}


def plugins(kind: str | None = None, *, load: bool = True) -> list[PluginInfo]:
    """Every registered judge, provider, importer, … (one ``kind`` of :data:`mmsafe.registry.KINDS`, or all).

    With ``load=True`` plugins whose description or options are not declared are imported
    to read them from the object; a plugin that fails to import is listed with ``error``
    set instead of raising (so one broken plugin does not hide the others).
    """
    if kind is not None and kind not in KINDS:
        raise PluginError(f"unknown plugin kind {kind!r}; choose one of {', '.join(KINDS)}")
    out: list[PluginInfo] = []
    for k in ([kind] if kind else list(KINDS)):
        for e in _registry_module.registry(k).entries():
            desc, opts, err = e.description, e.options, None
            if load:
                try:
                    desc, opts = e.describe(), e.option_names()
                except PluginError as ex:
                    err = str(ex)
            target = e.target if isinstance(e.target, str) else (
                f"{getattr(e.target, '__module__', '?')}:{getattr(e.target, '__qualname__', repr(e.target))}")
            out.append(PluginInfo(k, e.name, e.origin, desc, tuple(opts), target, dict(e.meta), err))
    return out


__all__ = ["Attack", "Defense", "Importer", "Judge", "Moderator", "PluginError", "PluginInfo", "Provider",
           "calibrate", "export", "import_benchmark", "judge", "load_benchmark", "make_defense", "make_judge",
           "plugins", "registry", "report", "run", "write_report"]
