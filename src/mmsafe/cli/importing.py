"""``mmsafe import KIND SRC --out BENCH``: an existing benchmark into mmsafe's format."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from .app import app
from .console import bold, counts, fail, say, warn
from .options import Overwrite, name_option, out_option, pairs


def refuse_existing(out: Path, overwrite: bool) -> None:
    """An existing output without ``--overwrite`` is one line that names the flag."""
    if not overwrite and (out.exists() or out.is_symlink()):
        fail(f"{out}: already exists (add --overwrite to replace it)")


@app.command("import")
def import_cmd(
    kind: Annotated[str, typer.Argument(help="the source's format: safemt | safebench | figstep | mmsafetybench | "
                                             "harmbench | jbb | csv | jsonl | a plugin's name | module.path:Name")],
    src: Annotated[Path, typer.Argument(help="source file or directory in that benchmark's own format")],
    out: Annotated[Path, out_option("benchmark directory to write")],
    name: Annotated[str | None, name_option("benchmark name", show_default="from the source")] = None,
    map: Annotated[list[str] | None, typer.Option(
        "--map", metavar="FIELD=COLUMN",
        help="csv/jsonl column mapping (repeatable), e.g. --map question=prompt --map scenario=category")] = None,
    opt: Annotated[list[str] | None, typer.Option("--opt", metavar="KEY=VALUE",
                                           help="importer option (repeatable), e.g. --opt audio=true")] = None,
    overwrite: Overwrite = False,
    strict_media: Annotated[bool, typer.Option(
        "--strict-media", help="a row whose image or audio file is missing is an error (exit 2), "
                               "not a row imported without it")] = False,
) -> None:
    """Import an existing benchmark into mmsafe's benchmark directory format."""
    from mmsafe.api import import_benchmark
    opts: dict[str, Any] = {}
    if map:
        opts["mapping"] = pairs(map, "--map")
    for k, v in pairs(opt or [], "--opt").items():
        opts[k] = {"true": True, "false": False}.get(v.lower(), v)
    if not src.exists():
        fail(f"{src}: not found")
    refuse_existing(out, overwrite)
    if strict_media:
        opts["strict_media"] = True
    manifest = import_benchmark(kind, src, out, name=name, overwrite=overwrite, **opts)
    c = manifest.counts
    turns = ", ".join(f"{n} turn{'s' if int(n) != 1 else ''}: {k}"
                      for n, k in sorted(c.by_turns.items(), key=lambda kv: int(kv[0])))
    mods = counts(dict(sorted(c.modalities.items())), "")
    say("imported ", bold(manifest.name), f": {c.n_samples} samples, {len(c.by_scenario)} scenarios "
        f"({turns}; modalities {mods or 'none'}) -> {out}")
    for line in manifest.provenance.get("notes") or ():  # media gaps, misaligned groups
        warn("warning:", str(line))


__all__ = ["import_cmd", "refuse_existing"]
