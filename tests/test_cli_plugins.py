"""`mmsafe plugins [--json]`: every registered kind with origin, options and a one-line
description; a broken plugin is listed, named on stderr, and the command exits 2."""

from __future__ import annotations

import json
import textwrap
from pathlib import Path

import pytest
from typer.testing import CliRunner

from mmsafe import registry
from mmsafe.cli import app

runner = CliRunner()


def plugins(*args: str):
    return runner.invoke(app, ["plugins", *args], catch_exceptions=False)


@pytest.fixture
def tmp_plugin(tmp_path, monkeypatch):
    """A package ``tmpplug`` 0.3 installed by a *.dist-info on sys.path: a judge, a broken
    importer and a judge named like a built-in."""
    pkg = tmp_path / "tmpplug"
    pkg.mkdir()
    (pkg / "__init__.py").write_text(textwrap.dedent('''
        class LengthJudge:
            """Flags replies longer than a limit.

            More text that is not the one-line description.
            """

            options = ("limit",)

            def __init__(self, *, limit: int = 100):
                self.limit = limit
    '''))
    dist = tmp_path / "tmpplug-0.3.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: tmpplug\nVersion: 0.3\n")
    (dist / "entry_points.txt").write_text(textwrap.dedent("""
        [mmsafe.judges]
        length = tmpplug:LengthJudge
        keyword = tmpplug:LengthJudge

        [mmsafe.importers]
        brokenimp = tmpplug_nowhere.mod:Import
    """))
    monkeypatch.syspath_prepend(str(tmp_path))
    registry.reset()
    yield
    registry.reset()


def _rows(r) -> list[dict]:
    return json.loads(r.stdout)["plugins"]


def test_lists_every_builtin_of_every_kind():
    registry.reset()
    r = plugins("--json")
    assert r.exit_code == 0, r.output
    rows = _rows(r)
    assert [k for k in registry.KINDS if any(x["kind"] == k for x in rows)] == list(registry.KINDS)
    kinds_in_order = [x["kind"] for x in rows]
    assert kinds_in_order == sorted(kinds_in_order, key=registry.KINDS.index)  # KINDS order
    by = {(x["kind"], x["name"]): x for x in rows}
    assert {("providers", "openai"), ("judges", "keyword"), ("judges", "jury"), ("defenses", "moderator"),
            ("importers", "safemt"), ("executors", "adaptive")} <= set(by)
    assert all(x["origin"] == "built-in" and x["status"] == "ok" and x["description"] for x in rows), \
        [x["name"] for x in rows if not x["description"]]
    assert by[("judges", "jury")]["options"][:2] == ["n", "rounds"]
    assert set(rows[0]) == {"kind", "name", "origin", "options", "description", "status"}
    # the table shows the same, one row each
    r = plugins()
    assert r.exit_code == 0 and "keyword-filter" in r.output and f"{len(rows)} entries, 0 from plugins" in r.output


def test_a_plugin_package_is_listed_with_its_origin_and_a_broken_one_exits_2(tmp_plugin):
    r = plugins("--json")
    assert r.exit_code == 2
    rows = _rows(r)
    length = next(x for x in rows if x["name"] == "length")
    assert length == {"kind": "judges", "name": "length", "origin": "tmpplug 0.3", "options": ["limit"],
                      "description": "Flags replies longer than a limit.", "status": "ok"}
    broken = next(x for x in rows if x["name"] == "brokenimp")
    assert broken["status"] == "broken" and broken["kind"] == "importers"
    assert "brokenimp" in broken["error"] and "tmpplug 0.3" in broken["error"] and "\n" not in broken["error"]
    shadowed = [x for x in rows if x["name"] == "keyword" and x["origin"] == "tmpplug 0.3"]
    assert len(shadowed) == 1 and shadowed[0]["status"] == "shadowed"
    builtin_kw = next(x for x in rows if x["name"] == "keyword" and x["origin"] == "built-in")
    assert builtin_kw["status"] == "ok"
    # stdout is the JSON alone; stderr names the broken plugin in one line
    assert r.stderr.strip().splitlines() == [f"error: {broken['error']}"]
    # the other entries are all there, and the table form says the same
    assert len([x for x in rows if x["origin"] == "built-in"]) > 40
    r = plugins()
    assert r.exit_code == 2 and "tmpplug 0.3" in r.output and "broken" in r.output
    # a broken plugin breaks no other command
    assert runner.invoke(app, ["version"]).exit_code == 0


def test_the_plugin_judge_is_usable_by_name(tmp_plugin):
    judge_cls = registry.registry("judges").get("length")
    assert judge_cls(limit=3).limit == 3
    assert registry.registry("judges").get("keyword").__module__.startswith("mmsafe.")  # the built-in wins


def test_registry_path_is_restored(tmp_path: Path):
    assert "tmpplug" not in {e.origin.split()[0] for e in registry.all_entries()}
