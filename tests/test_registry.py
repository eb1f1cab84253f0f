"""mmsafe.registry: lazy loading, module.path:Name, shadowing, errors; the attack and exporter
kinds that go through it (a plugin transform, method or format is used like a built-in)."""

from __future__ import annotations

import asyncio
import importlib
import json
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest

from conftest import make_benchmark
from mmsafe import registry as reg_mod
from mmsafe.registry import KINDS, PluginError, Registry, construct, is_reference, load_reference, registry, split_named
from mmsafe.types import InputError
from test_plugins import write_dist_info

# --------------------------------------------------------------------------- helpers


@pytest.fixture
def plugin_site(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """A folder on sys.path where a test writes plugin modules and dist-infos; the registry re-reads it."""
    site = tmp_path / "site"
    site.mkdir()
    monkeypatch.syspath_prepend(str(site))
    importlib.invalidate_caches()
    reg_mod.reset()
    yield site
    reg_mod.reset()
    for name in [m for m in sys.modules if m.startswith("regtest_")]:
        del sys.modules[name]


def _module(site: Path, name: str, body: str) -> None:
    (site / f"{name}.py").write_text(textwrap.dedent(body), encoding="utf-8")
    importlib.invalidate_caches()


JUDGE_SRC = """
    from mmsafe.judges.base import Judge
    from mmsafe.types import JudgeIdentity, Verdict

    IMPORTED = True

    class Strict(Judge):
        '''Everything is unsafe (a test plugin).'''

        def __init__(self, *, level: str = "1", model: str | None = None):
            if level not in ("1", "2"):
                raise ValueError(f"level must be 1 or 2, not {level!r}")
            self.identity = JudgeIdentity(kind="strict", models=[model] if model else [],
                                          settings={"level": level})

        async def judge(self, sample, response, root=None):
            return Verdict(sample_id=sample.id, judge_id=self.judge_id, label="unsafe"), []

    class Exploding(Strict):
        def __init__(self):
            raise RuntimeError("no GPU here")
"""


# --------------------------------------------------------------------------- the mechanism


def test_listing_imports_no_plugin_module(plugin_site: Path) -> None:
    _module(plugin_site, "regtest_lazy", JUDGE_SRC)
    write_dist_info(plugin_site, "regtest-lazy", "1.2", {"mmsafe.judges": {"strict": "regtest_lazy:Strict"}})
    reg = registry("judges")
    assert reg.names()[-1] == "strict" and "keyword" in reg.names()  # built-ins first, then plugins
    e = reg.entry("strict")
    assert e is not None and e.origin == "regtest-lazy 1.2" and not e.builtin
    assert "regtest_lazy" not in sys.modules  # listed, not imported
    assert reg.get("strict").__name__ == "Strict"
    assert "regtest_lazy" in sys.modules
    assert e.describe() == "Everything is unsafe (a test plugin)." and e.option_names() == ("level", "model")


def test_listing_every_builtin_kind_imports_no_heavy_module() -> None:
    code = ("import sys\nfrom mmsafe.registry import KINDS, registry\n"
            "n = sum(len(registry(k).names()) for k in KINDS)\n"
            "heavy = sorted(m for m in sys.modules if m.split('.')[0] in ('PIL', 'numpy', 'torch', 'aiohttp', 'httpx')"
            " or m.startswith(('mmsafe.judges', 'mmsafe.attacks.visual', 'mmsafe.runner', 'mmsafe.report')))\n"
            "print(n, heavy)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split(" ", 1)
    assert int(out[0]) > 40 and out[1].strip() == "[]"


def test_import_mmsafe_is_lazy() -> None:
    code = "import sys, mmsafe\nprint(sorted(m for m in sys.modules if m.startswith('mmsafe')))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "['mmsafe']"
    code = "import mmsafe\nprint(mmsafe.run.__module__, mmsafe.Judge.__module__, 'plugins' in dir(mmsafe))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.split() == ["mmsafe.api", "mmsafe.judges.base", "True"]


def test_module_references_and_split_named(plugin_site: Path) -> None:
    _module(plugin_site, "regtest_ref", JUDGE_SRC)
    assert is_reference("regtest_ref:Strict") and is_reference("a.b.c:D.e")
    assert not is_reference("rubric:openai/gpt-4o") and not is_reference("keyword")
    assert load_reference("regtest_ref:Strict").__name__ == "Strict"
    reg = registry("judges")
    assert "regtest_ref:Strict" not in reg and reg.resolve("regtest_ref:Strict").__name__ == "Strict"
    # NAME:ARG for registered names; module:Name[:ARG] otherwise
    assert split_named("rubric:openai/gpt-4o", reg) == ("rubric", "openai/gpt-4o")
    assert split_named("regtest_ref:Strict", reg) == ("regtest_ref:Strict", "")
    assert split_named("regtest_ref:Strict:openai/m", reg) == ("regtest_ref:Strict", "openai/m")
    with pytest.raises(PluginError, match="has no attribute 'Nope'"):
        load_reference("regtest_ref:Nope")
    with pytest.raises(PluginError, match="cannot import no_such_module_xyz"):
        load_reference("no_such_module_xyz:X")


def test_builtin_names_shadow_plugins(plugin_site: Path) -> None:
    _module(plugin_site, "regtest_shadow", JUDGE_SRC)
    write_dist_info(plugin_site, "regtest-shadow", "0.3", {"mmsafe.judges": {"keyword": "regtest_shadow:Strict"}})
    reg = registry("judges")
    assert reg.get("keyword").__name__ == "KeywordJudge"
    assert [(e.name, e.origin) for e in reg.shadowed] == [("keyword", "regtest-shadow 0.3")]
    assert reg.names().count("keyword") == 1


def test_unknown_name_lists_the_registered_ones() -> None:
    with pytest.raises(PluginError) as ei:
        registry("importers").get("nope")
    msg = str(ei.value)
    assert "unknown importer 'nope'" in msg and "figstep" in msg and "safemt" in msg and "module.path:Name" in msg
    with pytest.raises(ValueError, match="unknown registry kind"):
        Registry("widgets")
    assert set(KINDS) == {"providers", "judges", "defenses", "importers", "exporters", "attacks", "executors"}


def test_broken_plugin_fails_only_when_asked_for(plugin_site: Path) -> None:
    _module(plugin_site, "regtest_broken", "raise ImportError('needs libfoo')\n")
    write_dist_info(plugin_site, "regtest-broken", "9.9", {"mmsafe.judges": {"bad": "regtest_broken:X"}})
    reg = registry("judges")
    assert "bad" in reg.names()  # listing still works
    assert reg.get("keyword").__name__ == "KeywordJudge"
    with pytest.raises(PluginError) as ei:
        reg.get("bad")
    line = str(ei.value)
    assert "\n" not in line and "'bad'" in line and "regtest-broken 9.9" in line and "needs libfoo" in line
    from mmsafe.api import plugins
    info = next(p for p in plugins("judges") if p.name == "bad")  # the listing reports it instead of raising
    assert info.error is not None and "regtest-broken 9.9" in info.error
    assert json.dumps(info.as_dict())


def test_construct_options_and_errors(plugin_site: Path) -> None:
    _module(plugin_site, "regtest_cons", JUDGE_SRC)
    from mmsafe.judges import make_judge
    j = make_judge("regtest_cons:Strict?level=2")
    assert j.identity.settings == {"level": "2"} and j.identity.kind == "strict"
    j = make_judge("regtest_cons:Strict:openai/gpt-4o")  # the part after the reference is the model
    assert j.identity.models == ["openai/gpt-4o"]
    with pytest.raises(InputError, match=r"unknown option 'colour' \(options: level, model\)"):
        make_judge("regtest_cons:Strict?colour=red")
    with pytest.raises(InputError, match="level must be 1 or 2"):  # the plugin's ValueError, as an input error
        make_judge("regtest_cons:Strict?level=3")
    with pytest.raises(PluginError, match=r"regtest_cons\.Exploding failed \(RuntimeError: no GPU here\)"):
        make_judge("regtest_cons:Exploding")

    class NoModel:
        def __init__(self, *, window: int = 3) -> None:
            self.window = window

    with pytest.raises(InputError, match="takes no model argument"):
        construct(NoModel, what="thing", spec="nm:x", arg="x", options={})
    assert construct(NoModel, what="thing", spec="nm", arg="", options={"window": 5}).window == 5
    with pytest.raises(PluginError, match="neither a class nor a function"):
        construct(42, what="thing", spec="n", arg="", options={})


# --------------------------------------------------------------------------- kinds that use it

PLUGIN_ATTACKS = """
    from mmsafe.attacks.visual import VisualResult, blank_image

    def shout(text, *, seed=0):
        '''The request in capitals.'''
        return text.upper() + "!"

    def empty(text, *, seed=0):
        return "   "

    async def reverse_llm(text, *, client, seed=0, language="French", params=None):
        return text[::-1]

    def grey(*, text, instruction, image, seed, options):
        '''A grey square.'''
        return VisualResult("grey", [blank_image(int(options.get("size", 8)), (128, 128, 128))], text, {"grey": 1})

    SARCASM = "Method: sarcasm. Each user turn is sarcastic."
"""


def test_plugin_attacks_by_entry_point_and_reference(plugin_site: Path) -> None:
    from mmsafe.attacks import dialogues, transforms, visual

    _module(plugin_site, "regtest_attacks", PLUGIN_ATTACKS)
    write_dist_info(plugin_site, "regtest-attacks", "0.1", {"mmsafe.attacks": {"grey": "regtest_attacks:grey"}})
    # a text transform returning a str becomes a TransformResult; by reference, no registration needed
    r = transforms.apply_local("regtest_attacks:shout", "how?")
    assert (r.ok, r.text, r.method) == (True, "HOW?!", "regtest_attacks:shout")
    assert transforms.check_text_transform("regtest_attacks:shout") == "text"
    assert transforms.check_text_transform("regtest_attacks:reverse_llm") == "text-llm"
    assert not transforms.apply_local("regtest_attacks:empty", "how?").ok
    with pytest.raises(transforms.TransformError, match="needs an LLM"):
        asyncio.run(transforms.apply_text_transform("regtest_attacks:reverse_llm", "abc"))
    with pytest.raises(transforms.TransformError, match="not a text or text-llm transform"):
        transforms.check_text_transform("regtest_attacks:SARCASM")
    # an entry point has no registration meta: its type comes from its shape (an `image` parameter: visual)
    with pytest.raises(transforms.TransformError, match="unknown text transform 'grey'"):
        transforms.check_text_transform("grey")
    assert visual.visual_transform_names()[-1] == "grey"
    res = visual.apply_visual("grey", text="q", options={"size": 4})
    assert res.images[0].size == (4, 4) and res.provenance == {"grey": 1}
    assert visual.apply_visual("regtest_attacks:grey", text="q").images[0].size == (8, 8)
    assert visual.apply_visual("blank", text="q").images[0].size == (512, 512)

    # dialogue methods: by reference, combined with built-ins in canonical order
    assert dialogues.parse_methods("regtest_attacks:SARCASM+roleplay") == ["roleplay+regtest_attacks:SARCASM"]
    assert dialogues.method_instructions("regtest_attacks:SARCASM").startswith("Method: sarcasm")
    assert dialogues.method_instructions("escalation").startswith("Method: escalation")
    with pytest.raises(InputError, match="non-empty string"):
        dialogues.method_instructions("regtest_attacks:shout")


def test_typed_attack_entries_are_listed_by_type(plugin_site: Path) -> None:
    from mmsafe.attacks import dialogues, transforms, visual

    _module(plugin_site, "regtest_typed", PLUGIN_ATTACKS)
    reg = registry("attacks")
    reg.add("shout", "regtest_typed:shout", type="text", origin="regtest 1")
    reg.add("grey", "regtest_typed:grey", type="visual", origin="regtest 1")
    reg.add("sarcasm", "regtest_typed:SARCASM", type="dialogue-method", origin="regtest 1")
    assert transforms.text_transform_names()[-1] == "shout" and transforms.apply_local("shout", "a").text == "A!"
    assert visual.visual_transform_names()[-1] == "grey"
    assert dialogues.method_names() == ["escalation", "roleplay", "research", "demonstration", "sarcasm"]
    assert "sarcasm" in dialogues.parse_methods("all")
    adaptive = reg.entry("crescendo")
    assert adaptive is not None and adaptive.meta["type"] == "adaptive"
    assert adaptive.load().__name__ == "AdaptiveAttack"


def test_plugin_exporters(plugin_site: Path, tmp_path: Path) -> None:
    from mmsafe.datasets import EXPORTERS, export_benchmark
    from mmsafe.report.export import export_formats, export_runs

    _module(plugin_site, "regtest_export", """
        def ids(bench, out, **opts):
            from mmsafe.datasets import open_benchmark
            b = open_benchmark(bench)
            with open(out, "w") as fh:
                fh.write("\\n".join(s.id for s in b.iter_samples()))
            return len(b)

        def names(run_dirs):
            return "runs: " + ", ".join(str(d) for d in run_dirs) + "\\n"
        names.of = "leaderboard"

        def ids_ep(bench, out, **opts):
            return ids(bench, out, **opts)
        ids_ep.of = "benchmark"
    """)
    bench = make_benchmark(tmp_path / "bench", n=3, image=False)
    assert sorted(EXPORTERS) == ["hf", "jsonl", "parquet", "safemt"] and "jsonl" in EXPORTERS
    # by entry point: no registration meta, the object's `of` attribute says what it exports
    write_dist_info(plugin_site, "regtest-export", "0.1", {"mmsafe.exporters": {
        "ids": "regtest_export:ids_ep", "names": "regtest_export:names", "gone": "regtest_gone:X"}})
    reg_mod.reset()
    assert "ids" in EXPORTERS and "names" not in EXPORTERS and "gone" not in EXPORTERS
    assert export_benchmark("ids", bench, tmp_path / "ids0.txt") == 3
    assert export_formats() == ["csv", "jsonl", "markdown", "parquet", "names"]
    with pytest.raises(PluginError, match=r"regtest-export 0\.1"):
        export_benchmark("gone", bench, tmp_path / "o")
    assert export_runs([tmp_path / "a"], "names", tmp_path / "n.txt") == 1
    write_dist_info(plugin_site, "regtest-export", "0.1", {})
    reg_mod.reset()
    assert export_benchmark("regtest_export:ids", bench, tmp_path / "ids.txt") == 3
    assert len((tmp_path / "ids.txt").read_text().splitlines()) == 3
    with pytest.raises(InputError, match="unknown export format 'xml'"):
        export_benchmark("xml", bench, tmp_path / "o")
    assert export_formats() == ["csv", "jsonl", "markdown", "parquet"]
    with pytest.raises(InputError, match=r"--format 'pdf': expected one of csv, jsonl, markdown, parquet"):
        export_runs([tmp_path], "pdf", None)
    out = tmp_path / "lb.txt"
    assert export_runs([tmp_path / "a", tmp_path / "b"], "regtest_export:names", out) == 2
    assert out.read_text() == f"runs: {tmp_path / 'a'}, {tmp_path / 'b'}\n"


def test_executors_are_the_run_modes() -> None:
    reg = registry("executors")
    modes = [e.name for e in reg.entries() if e.meta.get("type") == "mode"]
    assert modes == ["adaptive", "fixed", "live"]
    assert reg.entry("ray") is not None and reg.entry("ray").meta.get("type") == "executor"  # --executor ray
    specs = {n: reg.get(n) for n in modes}
    assert {n: (s.name, s.multi_turn, s.needs_attacker) for n, s in specs.items()} == {
        "adaptive": ("adaptive", True, True), "fixed": ("fixed", False, False), "live": ("live", True, False)}
