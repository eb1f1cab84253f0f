"""Options shared by several verbs, declared once.

Each is an ``Annotated`` alias (``models: Models = None``); the default goes on the
parameter, so a verb can pick its own. Options whose help must say what the verb does with
them (``--out``, ``--limit``) are built by a small function that takes that help text.
Every option also reads ``MMSAFE_<VERB>_<OPTION>`` (``--help`` shows the name); ``--models``
reads ``MMSAFE_MODELS``, as it always has.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from mmsafe.types import InputError

# what an endpoint gets when neither the option nor the models file says (mmsafe.models.EndpointConfig;
# tests/test_cli_options.py checks these stay in step)
DEFAULT_TIMEOUT_S = 120.0
DEFAULT_RETRIES = 6
DEFAULT_MAX_CONNECTIONS = 32

MODEL_SPEC = "provider/model[@BASE_URL] or a name from the models file"

# --------------------------------------------------------------------------- models and judges

Models = Annotated[Path | None, typer.Option(
    "--models", envvar="MMSAFE_MODELS", show_default=False, metavar="FILE",
    help="YAML models file naming endpoints, keys' env vars, prices and roles")]

Target = Annotated[str, typer.Option("--target", "-t", metavar="MODEL", help=f"the model under test: {MODEL_SPEC}")]

JUDGE_SPEC = ("judge spec: keyword | rubric:M | jury:M[,M…] | guard:M | offline | a plugin's name | "
              "module.path:Name (options as ?k=v&k=v)")
Judge = Annotated[str, typer.Option("--judge", "-j", metavar="SPEC", help=JUDGE_SPEC)]
JudgeOpt = Annotated[list[str] | None, typer.Option("--judge-opt", metavar="KEY=VALUE",
                                             help="judge option (repeatable; same as ?KEY=VALUE in the spec)")]

MODERATOR_SPEC = "offline[:tfidf|minilm|auto][:THRESHOLD] | llm:MODEL | guard:MODEL"
Moderator = Annotated[str, typer.Option("--moderator", metavar="SPEC", help=f"the moderator: {MODERATOR_SPEC}")]
Policies = Annotated[Path | None, typer.Option(
    "--policies", metavar="FILE", show_default=False, help="extra safety-policy YAML for the moderator")]

SiGrouping = Annotated[str | None, typer.Option(
    "--si-grouping", metavar="aligned|id", show_default="aligned, or the run's",
    help="Safety Index across dialogue lengths: aligned (a dialogue the importer found to carry another "
         "request than its id's 1-turn record stays out of that id's stability term) or id (by id, as "
         "SafeMT's score.py); the other value is shown too when it differs")]


def si_grouping_value(value: str | None) -> str | None:
    """``--si-grouping`` checked: ``aligned``, ``id`` or None (not given)."""
    if value is not None and value not in ("aligned", "id"):
        raise InputError(f"--si-grouping {value!r}: expected aligned or id")
    return value


# --------------------------------------------------------------------------- connections

MaxConnections = Annotated[int | None, typer.Option(
    "--max-connections", min=1, metavar="N", show_default=f"{DEFAULT_MAX_CONNECTIONS}, or the models file's",
    help="most requests in flight at once per endpoint")]
Workers = Annotated[int, typer.Option(
    "--max-connections", "--concurrency", min=1, metavar="N", help="most items handled at once")]
Timeout = Annotated[float | None, typer.Option(
    "--timeout", min=0.001, metavar="SECONDS", show_default=f"{DEFAULT_TIMEOUT_S:g} s, or the models file's",
    help="per-request timeout")]
Retries = Annotated[int | None, typer.Option(
    "--retries", min=0, metavar="N", show_default=f"{DEFAULT_RETRIES}, or the models file's",
    help="retries per request on 429/5xx/timeouts")]
BaseUrl = Annotated[str | None, typer.Option(
    "--base-url", metavar="URL", show_default="the provider's, or @BASE_URL in the spec",
    help="the target's base URL (OpenAI-compatible), e.g. http://127.0.0.1:8000/v1")]
ApiKeyEnv = Annotated[str | None, typer.Option(
    "--api-key-env", metavar="NAME", show_default="the provider's, e.g. OPENAI_API_KEY",
    help="name of the env var holding the target's API key (the key itself never goes on the command line)")]
MaxCost = Annotated[float | None, typer.Option(
    "--max-cost", min=0.0, metavar="USD", show_default="no limit", help="stop cleanly once this many USD are spent")]

# --------------------------------------------------------------------------- the run store

Store = Annotated[str | None, typer.Option(
    "--store", envvar="MMSAFE_STORE_URL", metavar="URL", show_default="RUN_DIR/run.sqlite",
    help="a shared PostgreSQL run store, postgresql://USER@HOST[:PORT]/DB[#RUN] (RUN: the --out folder's "
         "name); several processes on one run send each sample once. The password comes from PGPASSWORD, "
         "~/.pgpass or MMSAFE_STORE_URL and is never written")]
Executor = Annotated[str, typer.Option(
    "--executor", metavar="NAME", help="local: this process; ray: shards on a Ray cluster (pip install "
    "'mmsafe[ray]'; see --ray-address, --workers)")]
RayAddress = Annotated[str | None, typer.Option(
    "--ray-address", metavar="ADDR", show_default="RAY_ADDRESS, else a new local cluster",
    help="--executor ray: the cluster to run on (HOST:PORT, ray://HOST:PORT or auto)")]
RayWorkers = Annotated[int | None, typer.Option(
    "--workers", min=1, metavar="N", show_default="the cluster's CPUs",
    help="--executor ray: shards running at once; the connection caps are split between them")]

# --------------------------------------------------------------------------- cache

Cache = Annotated[bool, typer.Option("--cache/--no-cache", help="reuse cached replies for identical requests")]
Epoch = Annotated[int, typer.Option("--epoch", metavar="N",
                                    help="bump to draw fresh replies past the cache")]

# --------------------------------------------------------------------------- output and misc

JsonOut = Annotated[bool, typer.Option("--json", help="print JSON instead of tables")]
Overwrite = Annotated[bool, typer.Option("--overwrite", help="replace an existing output")]
Force = Annotated[bool, typer.Option("--force", help="re-run even when inputs and config are unchanged")]


def out_option(help: str, *, file: bool = False, **kwargs: Any) -> Any:
    """``--out/-o``: what it writes is the verb's to say."""
    return typer.Option("--out", "-o", metavar="FILE" if file else "DIR", help=help, **kwargs)


def limit_option(what: str = "samples") -> Any:
    """``--limit N``: only the first N of ``what``."""
    return typer.Option("--limit", min=1, metavar="N", show_default="all", help=f"only the first N {what}")


def name_option(help: str, **kwargs: Any) -> Any:
    """``--name``: the benchmark's (or taxonomy's) name."""
    return typer.Option("--name", metavar="NAME", help=help, **kwargs)


def pairs(items: list[str], flag: str) -> dict[str, str]:
    """``["k=v", …]`` from a repeatable option -> ``{k: v}``; a malformed item is one line naming ``flag``."""
    d: dict[str, str] = {}
    for it in items:
        if "=" not in it:
            raise InputError(f"{flag} {it!r}: expected KEY=VALUE")
        k, v = it.split("=", 1)
        d[k.strip()] = v.strip()
    return d


__all__ = ["DEFAULT_MAX_CONNECTIONS", "DEFAULT_RETRIES", "DEFAULT_TIMEOUT_S", "JUDGE_SPEC", "MODEL_SPEC",
           "MODERATOR_SPEC", "ApiKeyEnv", "BaseUrl", "Cache", "Epoch", "Force", "Judge", "JudgeOpt", "JsonOut",
           "MaxConnections", "MaxCost", "Models", "Moderator", "Overwrite", "Policies", "Retries", "Store", "Target",
           "Timeout", "Workers", "limit_option", "name_option", "out_option", "pairs"]
