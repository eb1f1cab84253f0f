"""Dialogue generation (mmsafe.attacks.dialogues, `mmsafe dialogues`) against a scripted
loopback generator: methods, lengths, image placement, refusals/invalid output with
fallback, failure records, provenance, SafeMT export, resume through the cache."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest
from _attack_servers import AttackLLM
from conftest import make_benchmark
from typer.testing import CliRunner

from mmsafe.attacks.dialogues import (DEMO_ANSWER, METHODS, DialogueGenerator, GenerationFailure, Seed,
                                      extract_json_object, fallback_order, parse_lengths, parse_methods)
from mmsafe.cli import app
from mmsafe.datasets import open_benchmark
from mmsafe.models import resolve_endpoint
from mmsafe.runner.modes import generate_dialogues
from mmsafe.types import ImagePart, InputError

runner = CliRunner()


@pytest.fixture(scope="module")
def atk_server():
    srv = AttackLLM().start()
    yield srv
    srv.stop()


@pytest.fixture
def srv(atk_server):
    atk_server.reset()
    atk_server.latency_ms = 0
    return atk_server


def cli(*args):
    return runner.invoke(app, [str(a) for a in args], catch_exceptions=False)


def samples(path: Path) -> list:
    return list(open_benchmark(path).iter_samples())


# --------------------------------------------------------------------------- pure parts


def test_parse_methods_and_lengths():
    assert parse_methods("all") == list(METHODS)
    assert parse_methods("escalation+roleplay,research") == ["escalation+roleplay", "research"]
    assert parse_methods("roleplay+escalation") == ["escalation+roleplay"]  # canonical order
    with pytest.raises(InputError):
        parse_methods("jailbreak")
    with pytest.raises(InputError):
        parse_methods("roleplay+roleplay")
    assert parse_lengths("8,1,2") == [1, 2, 8]
    for bad in ("0", "x", "21"):
        with pytest.raises(InputError):
            parse_lengths(bad)
    assert fallback_order("roleplay") == ["roleplay", "escalation", "research", "demonstration"]
    assert fallback_order("escalation+research") == ["escalation+research", "roleplay", "demonstration"]


def test_extract_json_object_variants():
    assert extract_json_object('{"a": 1}') == {"a": 1}
    assert extract_json_object('Sure:\n```json\n{"a": {"b": "}"}}\n```') == {"a": {"b": "}"}}
    assert extract_json_object('noise {"x": "y"} tail') == {"x": "y"}
    assert extract_json_object("no json") is None
    assert extract_json_object("{broken") is None


def _gen() -> DialogueGenerator:
    return DialogueGenerator(None)


def test_parse_counts_turns_and_adds_image_reference():
    g = _gen()
    text = json.dumps({"turns": [{"user": "hi", "assistant": "hello"}, {"user": "and then?"}]})
    d = g.parse(text, "escalation", 2, has_image=True)
    assert d.turns[0] == ("hi", "hello") and d.turns[1][1] is None
    assert d.image_ref_added and "image" in d.turns[1][0]
    with pytest.raises(GenerationFailure) as e:
        g.parse(text, "escalation", 3, has_image=True)
    assert e.value.outcome == "generator_invalid" and "2 user turns" in e.value.reason
    with pytest.raises(GenerationFailure) as e:
        g.parse("I'm sorry, but I can't write that.", "escalation", 2, has_image=True)
    assert e.value.outcome == "generator_refused"
    with pytest.raises(GenerationFailure) as e:
        g.parse(json.dumps({"turns": [{"user": "a"}, {"user": "b"}]}), "escalation", 2, has_image=False)
    assert e.value.outcome == "generator_invalid" and "assistant" in e.value.reason
    # role/content lists are accepted too
    d = g.parse(json.dumps({"turns": [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"},
                                      {"role": "user", "content": "the picture?"}]}), "roleplay", 2, has_image=True)
    assert not d.image_ref_added


def test_demonstration_inserts_placeholder_answer():
    g = _gen()
    text = json.dumps({"turns": [{"user": "u1", "assistant": "a1"}, {"user": "u2", "assistant": "[DEMO]"},
                                 {"user": "what about the image?"}], "demo_request": "Other question?"})
    d = g.parse(text, "demonstration", 3, has_image=True)
    assert d.turns[1] == ("Other question?", DEMO_ANSWER)
    assert d.turns[2][0].startswith("Following the above, answer:")
    d1 = g.parse(json.dumps({"turns": [{"user": "the image one?"}], "demo_request": "Other?"}), "demonstration", 1,
                 has_image=True)
    assert "Example request: Other?" in d1.turns[0][0] and "Following the above, answer:" in d1.turns[0][0]
    with pytest.raises(GenerationFailure):
        g.parse(json.dumps({"turns": [{"user": "x"}]}), "demonstration", 1, has_image=False)


def test_prompt_names_methods_length_and_combines():
    g = _gen()
    p = g.prompt(Seed(group="g", question="Q?", scenario="Fraud"), "escalation+roleplay", 4)
    assert "exactly 4 user turns and 3 pre-written assistant turns" in p
    assert "Method: escalation" in p and "Method: roleplay" in p and "Q?" in p and "Fraud" in p


# --------------------------------------------------------------------------- end to end


def test_generate_all_methods_and_lengths(srv, tmp_path):
    src = make_benchmark(tmp_path / "src", n=3, turns=1)
    r = cli("dialogues", src, "--generator", f"openai/gen-ok@{srv.url}", "--out", tmp_path / "out",
            "--safemt-json", tmp_path / "safemt")
    assert r.exit_code == 0, r.output
    ss = samples(tmp_path / "out")
    assert len(ss) == 3 * 4 * 5
    assert {s.turns for s in ss} == {1, 2, 4, 6, 8}
    assert {s.method for s in ss} == set(METHODS)
    for s in ss:
        assert s.messages[-1].role == "user" and "image" in s.messages[-1].text
        first = s.messages[0]
        assert first.role == "user" and isinstance(first.content, list)
        assert isinstance(first.content[0], ImagePart)
        assert sum(len(m.assets) for m in s.messages) == 1  # image only on the first user turn
        assert sum(m.role == "assistant" for m in s.messages) == s.turns - 1
        assert s.provenance["generator"]["model"] == "gen-ok" and len(s.provenance["prompt_hash"]) == 16
        assert s.provenance["attempts"] == [{"method": s.method, "outcome": "ok",
                                             "prompt_hash": s.provenance["prompt_hash"]}]
        assert s.metadata["group"] == f"{s.metadata['question_group']}/{s.method}"
        assert s.id == f"{s.metadata['group']}/t{s.turns}"
    demo = [s for s in ss if s.method == "demonstration" and s.turns == 4]
    assert demo and all(s.messages[-2].text == DEMO_ANSWER for s in demo)
    man = json.loads((tmp_path / "out" / "benchmark.json").read_text())
    gen = man["provenance"]["generation"]
    assert gen["n_samples"] == 60 and gen["n_failed"] == 0 and gen["attempts"]["ok"] == 60
    assert man["provenance"]["generator"]["model"] == "gen-ok" and man["provenance"]["lengths"] == [1, 2, 4, 6, 8]
    # SafeMT export: one file per length, records keep the question x method id across lengths
    files = sorted(p.name for p in (tmp_path / "safemt").glob("*_turn.json"))
    assert files == ["1_turn.json", "2_turn.json", "4_turn.json", "6_turn.json", "8_turn.json"]
    recs = json.loads((tmp_path / "safemt" / "4_turn.json").read_text())
    assert len(recs) == 12 and recs[0]["image_path"].startswith("images/") and "/t" not in recs[0]["id"]
    assert "questions" in r.output and "0 generator refused" in r.output  # counts print as words


def test_refusal_and_invalid_fall_back_to_another_method_and_are_counted(srv, tmp_path):
    src = make_benchmark(tmp_path / "src", n=2, turns=1)
    out = tmp_path / "out"
    g = resolve_endpoint(f"openai/gen-refuse-roleplay@{srv.url}", "generator")
    rep = asyncio.run(generate_dialogues(src, out, g, lengths=[1, 4], methods=["roleplay", "research"]))
    assert rep.n_samples == 8 and rep.n_failed == 0 and rep.fallbacks == 4
    assert rep.attempts["generator_refused"] == 4 and rep.attempts["ok"] == 8
    ss = {s.id: s for s in samples(out)}
    s = ss["q0/roleplay/t4"]
    assert s.method == "escalation" and s.metadata["requested_method"] == "roleplay"
    assert [a["outcome"] for a in s.provenance["attempts"]] == ["generator_refused", "ok"]
    assert s.provenance["attempts"][0]["method"] == "roleplay" and "raw" in s.provenance["attempts"][0]

    g2 = resolve_endpoint(f"openai/gen-invalid-research@{srv.url}", "generator")
    rep2 = asyncio.run(generate_dialogues(src, tmp_path / "out2", g2, lengths=[2], methods=["research"]))
    assert rep2.attempts["generator_invalid"] == 2 and rep2.n_samples == 2
    assert {s.method for s in samples(tmp_path / "out2")} == {"escalation"}


def test_every_attempt_failing_is_recorded_not_dropped(srv, tmp_path):
    src = make_benchmark(tmp_path / "src", n=2, turns=1)
    out = tmp_path / "out"
    r = cli("dialogues", src, "-g", f"openai/gen-refuse-all@{srv.url}", "-o", out, "--lengths", "2",
            "--methods", "escalation")
    assert r.exit_code == 2 and "no dialogue could be generated" in r.output
    assert not out.exists()
    # partial failure: refuse only 'demonstration' with one attempt -> failures file + counts
    g = resolve_endpoint(f"openai/gen-refuse-demonstration@{srv.url}", "generator")
    rep = asyncio.run(generate_dialogues(src, out, g, lengths=[1, 2], methods=["escalation", "demonstration"],
                                         max_attempts=1))
    assert rep.n_samples == 4 and rep.n_failed == 4 and rep.attempts["generator_refused"] == 4
    fails = [json.loads(x) for x in (out / "generation_failures.jsonl").read_text().splitlines()]
    assert len(fails) == 4 and {f["requested_method"] for f in fails} == {"demonstration"}
    assert all(f["attempts"][0]["outcome"] == "generator_refused" for f in fails)
    man = json.loads((out / "benchmark.json").read_text())
    assert man["provenance"]["generation"]["n_failed"] == 4


def test_generator_sees_the_image_and_dedupes_questions(srv, tmp_path):
    # a SafeMT-like source holds each question at several lengths: one seed per group
    src = make_benchmark(tmp_path / "src", n=2, turns=2)
    g = resolve_endpoint(f"openai/gen-fenced@{srv.url}", "generator")
    rep = asyncio.run(generate_dialogues(src, tmp_path / "out", g, lengths=[2], methods=["escalation"]))
    assert rep.n_seeds == 2 and rep.n_samples == 2
    reqs = srv.by_model("gen-fenced")
    assert len(reqs) == 2
    for body in reqs:
        user = [m for m in body["messages"] if m["role"] == "user"][0]
        assert any(p.get("type") == "image_url" for p in user["content"])
        assert body["messages"][0]["role"] == "system"


def test_resume_answers_from_cache(srv, tmp_path):
    src = make_benchmark(tmp_path / "src", n=2, turns=1)
    args = ["dialogues", src, "-g", f"openai/gen-ok@{srv.url}", "-o", tmp_path / "out", "--lengths", "1,2",
            "--methods", "research"]
    assert cli(*args).exit_code == 0
    n = srv.count("gen-ok")
    assert n == 4
    r = cli(*args)
    assert r.exit_code == 2 and "already exists" in r.output
    assert cli(*args, "--overwrite").exit_code == 0
    assert srv.count("gen-ok") == n  # every request answered from the cache
    assert len(samples(tmp_path / "out")) == 4


def test_bad_options_exit_2(srv, tmp_path):
    src = make_benchmark(tmp_path / "src", n=1, turns=1)
    for extra, msg in ((["--methods", "nope"], "unknown or repeated method"), (["--lengths", "0"], "--lengths"),
                       (["--generator", "mock/refuser"], "mock")):
        args = ["dialogues", src, "-o", tmp_path / "o"]
        if "--generator" not in extra:
            args += ["-g", f"openai/gen-ok@{srv.url}"]
        r = cli(*args, *extra)
        assert r.exit_code == 2 and msg in r.output, r.output


def test_unknown_generator_model_is_one_line_exit_2_and_nothing_written(llm, tmp_path):
    src = make_benchmark(tmp_path / "src", n=2, turns=1)
    r = cli("dialogues", src, "-g", f"openai/no-such-model@{llm.url}", "-o", tmp_path / "out")
    assert r.exit_code == 2 and "404" in r.output and "Traceback" not in r.output
    assert not (tmp_path / "out").exists()


def test_max_cost_stops_generation_cleanly(srv, tmp_path):
    src = make_benchmark(tmp_path / "src", n=3, turns=1)
    models = tmp_path / "models.yaml"
    models.write_text(f"models:\n  pricey:\n    spec: openai/gen-ok@{srv.url}\n    max_connections: 1\n"
                      f"    price: {{input: 1000000, output: 0}}\n")
    r = cli("dialogues", src, "-g", "pricey", "--models", models, "-o", tmp_path / "out", "--max-cost", "50",
            "--no-cache")
    assert r.exit_code == 1 and "max-cost" in r.output
    assert not (tmp_path / "out").exists() and srv.count("gen-ok") < 60


def test_controls_and_repeated_questions_are_skipped_and_counted(srv, tmp_path):
    from mmsafe.datasets import BenchmarkWriter
    from mmsafe.types import BenchmarkManifest, Message, Sample

    with BenchmarkWriter(tmp_path / "src", BenchmarkManifest(name="s")) as w:
        w.add(Sample(id="a/t1", question="Q1?", messages=[Message(role="user", content="x")], metadata={"group": "a"}))
        w.add(Sample(id="a/t2", question="Q1?", messages=[Message(role="user", content="x")] * 2 + [],
                     metadata={"group": "a"}))
        w.add(Sample(id="c", question="benign?", messages=[Message(role="user", content="y")],
                     metadata={"control": "benign"}))
    g = resolve_endpoint(f"openai/gen-ok@{srv.url}", "generator")
    rep = asyncio.run(generate_dialogues(tmp_path / "src", tmp_path / "out", g, lengths=[2], methods=["research"]))
    assert rep.n_seeds == 1 and rep.skipped == {"controls": 1, "same_question": 1}
    (s,) = samples(tmp_path / "out")
    assert s.id == "a/research/t2" and not s.assets() and not s.metadata.get("image_ref_added")
    assert "There is no image" in json.dumps(srv.by_model("gen-ok")[0]["messages"])


def test_from_a_safemt_import_one_seed_per_question(srv, tmp_path):
    import shutil

    from conftest import make_png

    fixture = tmp_path / "safemt"
    shutil.copytree(Path(__file__).parent / "fixtures" / "datasets" / "safemt", fixture)
    for rel in ("images/fraud/fraud_1.jpg", "images/malware/malware_2.png"):  # images are made, not shipped
        (fixture / rel).parent.mkdir(parents=True, exist_ok=True)
        (fixture / rel).write_bytes(make_png())
    r = cli("import", "safemt", fixture, "--out", tmp_path / "imp")
    assert r.exit_code == 0, r.output
    src = samples(tmp_path / "imp")
    groups = {s.metadata["group"] for s in src}
    r = cli("dialogues", tmp_path / "imp", "-g", f"openai/gen-ok@{srv.url}", "-o", tmp_path / "out",
            "--lengths", "2", "--methods", "research", "--safemt-json", tmp_path / "sm")
    assert r.exit_code == 0, r.output
    out = samples(tmp_path / "out")
    assert {s.metadata["question_group"] for s in out} == groups and len(out) == len(groups)
    # the SafeMT export of the generated benchmark imports back with the same dialogues
    assert cli("import", "safemt", tmp_path / "sm", "--out", tmp_path / "back").exit_code == 0
    back = {s.id: s for s in samples(tmp_path / "back")}
    for s in out:
        b = back[s.id]
        assert [m.text for m in b.messages] == [m.text for m in s.messages] and b.metadata["group"] == s.metadata["group"]
