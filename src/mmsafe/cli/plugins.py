"""``mmsafe plugins [--json]``: what providers, judges, defenses, importers, exporters, attacks and
executors exist — built-in or from which package — with their options and a one-line description."""

from __future__ import annotations

import json as _json
import sys
from typing import Any

import typer
from rich.table import Table

from mmsafe.errors import EXIT_USAGE, first_line

from . import console
from .app import app
from .console import error_line, note
from .options import JsonOut


def _describe(entry: Any, status: str) -> dict[str, Any]:
    """A row for an entry the API does not list (a shadowed plugin); a load failure is its ``error``."""
    row: dict[str, Any] = {"kind": entry.kind, "name": entry.name, "origin": entry.origin, "options": [],
                           "description": "", "status": status}
    try:
        row["options"] = list(entry.option_names())
        row["description"] = entry.describe()
    except Exception as e:
        line = first_line(e)
        if not line.startswith("plugin "):
            line = f"plugin {entry.kind[:-1]} {entry.name!r} from {entry.origin}: {line}"
        row["error"] = line
        if status == "ok":
            row["status"] = "broken"
    return row


def plugin_rows() -> list[dict[str, Any]]:
    """One row per registered entry of every kind (in :data:`mmsafe.registry.KINDS` order, from
    :func:`mmsafe.api.plugins`), then the plugins a built-in's name shadows. A plugin that cannot
    be loaded is a row with status ``broken`` and its one-line ``error``."""
    from mmsafe import api
    from mmsafe.registry import KINDS, registry

    rows: list[dict[str, Any]] = []
    for info in api.plugins():
        row: dict[str, Any] = {"kind": info.kind, "name": info.name, "origin": info.origin,
                               "options": list(info.options), "description": info.description,
                               "status": "broken" if info.error else "ok"}
        if info.error:
            row["error"] = first_line(ValueError(info.error))
        rows.append(row)
    for kind in KINDS:
        for e in registry(kind).shadowed:
            row = _describe(e, "shadowed")
            row["description"] = (f"not used: the built-in {kind[:-1]} {e.name!r} has this name"
                                  + (f" ({row['description']})" if row["description"] else ""))
            rows.append(row)
    return rows


@app.command("plugins")
def plugins_cmd(json: JsonOut = False) -> None:
    """List every registered provider, judge, defense, importer, exporter, attack and executor: origin
    (built-in or package and version), options and a one-line description; exit 2 if a plugin is broken."""
    rows = plugin_rows()
    broken = [r for r in rows if r["status"] == "broken"]
    if json:
        sys.stdout.write(_json.dumps({"plugins": rows}) + "\n")
        sys.stdout.flush()
    else:
        table = Table(title="mmsafe plugins")
        for col in ("kind", "name", "origin", "status", "options", "description"):
            table.add_column(col, overflow="fold")
        for r in rows:
            table.add_row(r["kind"], r["name"], r["origin"], r["status"], ", ".join(r["options"]) or "—",
                          r.get("error") or r["description"])
        console.out.print(table)
        n_plugins = sum(r["origin"] != "built-in" for r in rows)
        note(f"{len(rows)} entries, {n_plugins} from plugins, {len(broken)} broken")
    for r in broken:
        error_line(r["error"])
    if broken:
        raise typer.Exit(EXIT_USAGE)


__all__ = ["plugin_rows", "plugins_cmd"]
