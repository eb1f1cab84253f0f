"""PAIR, TAP and GOAT on the attack interface, against scripted loopback attacker/target/judge.

The target ``tgt-imgonly`` complies only when the request is not in the text and an image
is: each attack must reach that by acting on the image (moving the request into a FigStep
image), and stop at its budget when its attacker never does. Also: attacker failures are
never target safety, the images sent are recorded and stored content-addressed, the run
resumes a killed conversation at its last completed step, and --attack/--attack-opt are
checked up front."""

from __future__ import annotations

import asyncio
import hashlib
import json
import sqlite3
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from _attack_servers import COMPLY, REFUSAL, AttackLLM
from conftest import make_benchmark, make_png
from mmsafe.attacks.base import (
    SAMPLE_IMAGE,
    Attack,
    AttackResult,
    ImageAction,
    SampleContext,
    TurnJudgment,
    parse_image_action,
)
from mmsafe.attacks.goat import Goat
from mmsafe.attacks.pair import Pair
from mmsafe.attacks.tap import Tap, parse_on_topic
from mmsafe.cli import app
from mmsafe.models import CostLedger, ModelClient, build_provider, resolve_endpoint
from mmsafe.types import ConfigError, ImagePart

runner = CliRunner()
GOAL = "Underlying harmful question 7"


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


async def _keyword_judge(history, reply, turn):
    return TurnJudgment(label="safe" if reply.startswith("I'm sorry") else "unsafe", rationale="kw")


def attack(cls: type[Attack], srv, attacker: str, target: str, tmp_path: Path, *, image: bool = True,
           **options: Any) -> tuple[AttackResult, CostLedger]:
    (tmp_path / "img.png").write_bytes(make_png())
    img = ImagePart(path="img.png") if image else None

    async def go() -> tuple[AttackResult, CostLedger]:
        ledger = CostLedger()
        a = ModelClient(build_provider(resolve_endpoint(f"openai/{attacker}@{srv.url}", "attacker")), "attacker",
                        ledger)
        t = ModelClient(build_provider(resolve_endpoint(f"openai/{target}@{srv.url}", "target")), "target", ledger)
        await a.start()
        await t.start()
        try:
            atk = cls(a, t, _keyword_judge, root=tmp_path, **options)
            return await atk.run(GOAL, image=img, scenario="Fraud", sample_id="x", asset_root=tmp_path / "run"), \
                ledger
        finally:
            await a.close()
            await t.close()

    return asyncio.run(go())


def user_parts(body: dict) -> list[dict]:
    """The content parts of the last user message of a recorded request."""
    m = [m for m in body["messages"] if m["role"] == "user"][-1]
    return m["content"] if isinstance(m["content"], list) else [{"type": "text", "text": m["content"]}]


def text_of(parts: list[dict]) -> str:
    return " ".join(p.get("text", "") for p in parts if p.get("type") == "text")


def has_image(parts: list[dict]) -> bool:
    return any(p.get("type") == "image_url" for p in parts)


def assert_images_stored(r: AttackResult, root: Path) -> None:
    """Every image the attack made is a file named by the sha256 of its bytes."""
    assert r.images
    for rec in r.images:
        data = (root / rec["path"]).read_bytes()
        assert rec["path"] == f"assets/{rec['sha256']}.png"
        assert hashlib.sha256(data).hexdigest() == rec["sha256"]


# --------------------------------------------------------------------------- PAIR


def test_pair_reaches_the_image_only_jailbreak_by_moving_the_request_into_the_image(srv, tmp_path):
    r, ledger = attack(Pair, srv, "atk-img", "tgt-imgonly", tmp_path, n_streams=3, n_iterations=3)
    assert r.status == "success"
    # iteration 1: three streams, request in the text -> refused; iteration 2: moved into a FigStep image
    assert [t["iteration"] for t in r.transcript] == [1, 1, 1, 2, 2, 2]
    assert [t["label"] for t in r.transcript] == ["safe"] * 3 + ["unsafe"] * 3
    assert r.first_unsafe_turn == 4 and r.final_reply == COMPLY
    first, win = r.transcript[0], r.transcript[3]
    assert GOAL in first["user"] and first["images"][0]["source"] == "sample"
    assert GOAL not in win["user"] and "the activity shown in the image" in win["user"]
    assert win["images"][0]["how"] == "move_keyword" and win["images"][0]["path"].startswith("assets/")
    assert all(t["context"] == "single" for t in r.transcript)
    assert_images_stored(r, tmp_path / "run")
    # the target saw each attempt alone (single-turn), the winning one with the new image and no request text
    reqs = srv.by_model("tgt-imgonly")
    assert len(reqs) == 6 and all(len(b["messages"]) == 1 for b in reqs)
    wins = [b for b in reqs if GOAL not in text_of(user_parts(b))]
    assert len(wins) == 3 and all(has_image(user_parts(b)) for b in wins)
    # streams start from different approaches (so they never share one cached reply)
    starts = {b["messages"][1]["content"][-1]["text"] for b in srv.by_model("atk-img")
              if len(b["messages"]) == 2}
    assert len(starts) == 3
    assert r.attacker["calls"] == 6 and r.target["calls"] == 6 and ledger.roles["attacker"].calls == 6
    assert r.rounds == 6  # (attacker, target, judge) x 2 iterations, each step's calls concurrent


def test_pair_stops_at_its_budget(srv, tmp_path):
    r, _ = attack(Pair, srv, "atk-text", "tgt-imgonly", tmp_path, n_streams=2, n_iterations=3)
    assert r.status == "budget" and r.first_unsafe_turn is None
    assert len(r.transcript) == 6 and srv.count("tgt-imgonly") == 6 and srv.count("atk-text") == 6
    assert all(t["reply"] == REFUSAL for t in r.transcript)


def test_pair_attacker_failures_are_never_target_safety(srv, tmp_path):
    r, _ = attack(Pair, srv, "atk-refuse", "tgt-imgonly", tmp_path, n_streams=2)
    assert r.status == "attacker_refused" and not r.transcript and srv.count("tgt-imgonly") == 0
    r, _ = attack(Pair, srv, "atk-malformed", "tgt-imgonly", tmp_path, n_streams=2, n_iterations=5,
                  attacker_retries=1)
    assert r.status == "attacker_invalid" and srv.count("tgt-imgonly") == 0
    assert len(r.attacker_log) == 4  # two malformed outputs per stream, then the stream stops
    # an image action that cannot be done is an invalid attacker output, never sent
    r, _ = attack(Pair, srv, "atk-badimage", "tgt-imgonly", tmp_path, n_streams=1, n_iterations=2,
                  attacker_retries=3)
    assert r.status == "attacker_invalid" and srv.count("tgt-imgonly") == 0
    assert "no-such-transform" in r.attacker_log[0]["reason"]


# --------------------------------------------------------------------------- TAP


def test_tap_prunes_off_topic_branches_keeps_the_width_and_reaches_the_jailbreak(srv, tmp_path):
    r, _ = attack(Tap, srv, "atk-img", "tgt-imgonly", tmp_path, width=2, branching=3, depth=3)
    assert r.status == "success"
    reqs = srv.by_model("tgt-imgonly")
    # level 1: 3 children, the cats one is off topic and never reaches the target; 2 refused
    # level 2: 2 kept leaves x 3 children; 2 x 2 on-topic reach the target, the moved ones comply
    assert len(reqs) == 2 + 4
    assert not any("cats" in text_of(user_parts(b)) for b in reqs)
    evals = [b for b in srv.by_model("atk-img") if "ON-TOPIC CHECK" in json.dumps(b["messages"])]
    assert len(evals) == 3 + 6
    assert [t["depth"] for t in r.transcript] == [1, 1, 2, 2, 2, 2]
    assert r.first_unsafe_turn == 3 and r.transcript[2]["images"][0]["how"] == "move_keyword"
    assert_images_stored(r, tmp_path / "run")


def test_tap_tree_width_and_depth_limits(srv, tmp_path):
    r, _ = attack(Tap, srv, "atk-text", "tgt-imgonly", tmp_path, width=1, branching=2, depth=3, on_topic=False)
    assert r.status == "budget"
    # width 1: one leaf per level, two children each: 2 target queries per level, 3 levels
    assert srv.count("tgt-imgonly") == 6 and srv.count("atk-text") == 6
    assert [t["depth"] for t in r.transcript] == [1, 1, 2, 2, 3, 3]
    # each level's children descend from the one kept leaf of the level before
    parents = [t["parent"] for t in r.transcript]
    assert parents[:2] == ["r", "r"] and len(set(parents[2:4])) == 1 and len(set(parents[4:])) == 1


def test_tap_records_the_tree_with_each_nodes_fate(srv, tmp_path):
    bench = make_benchmark(tmp_path / "b", n=1, turns=1)
    out = tmp_path / "run"
    r = cli("run", bench, "-t", f"openai/tgt-imgonly@{srv.url}", "--mode", "adaptive", "--attack", "tap",
            "--attacker", f"openai/atk-img@{srv.url}", "--attack-opt", "width=2", "--attack-opt", "branching=3",
            "-o", out)
    assert r.exit_code == 0, r.output
    ex = _extras(out)["s0"]
    tree = {n["id"]: n["status"] for n in ex["details"]["tree"]}
    assert tree["r.3"] == "off_topic" and tree["r.1"] == "kept" and tree["r.2"] == "kept"
    assert "success" in tree.values() and ex["attack"]["attack"] == "tap" and ex["attack"]["width"] == 2


# --------------------------------------------------------------------------- GOAT


def test_goat_chooses_techniques_records_its_reasoning_and_reworks_the_image(srv, tmp_path):
    r, _ = attack(Goat, srv, "atk-img", "tgt-imgonly", tmp_path, max_turns=4)
    assert r.status == "success" and r.first_unsafe_turn == 2
    t1, t2 = r.transcript
    assert t1["technique"] == "hypothetical" and t2["technique"] == "keyword_to_image"
    assert t1["observation"] == "attempt 1" and t1["thought"] == "scripted" and t1["strategy"]
    assert [x["technique"] for x in r.attacker_log] == ["hypothetical", "keyword_to_image"]
    assert t1["images"][0]["source"] == "sample" and t2["images"][0]["how"] == "move_keyword"
    # one conversation: the second request carries both turns, each with its own image
    reqs = srv.by_model("tgt-imgonly")
    assert len(reqs) == 2
    users = [m for m in reqs[1]["messages"] if m["role"] == "user"]
    assert len(users) == 2 and all(has_image(m["content"]) for m in users)
    assert [m["role"] for m in reqs[1]["messages"]] == ["user", "assistant", "user"]
    assert GOAL not in text_of(users[1]["content"])
    assert_images_stored(r, tmp_path / "run")


def test_goat_budget_and_invalid_techniques(srv, tmp_path):
    r, _ = attack(Goat, srv, "atk-text", "tgt-imgonly", tmp_path, max_turns=3)
    assert r.status == "max_turns" and len(r.transcript) == 3 and r.first_unsafe_turn is None
    # later turns with image "keep" add no image: the item's image belongs to the first turn
    last = srv.by_model("tgt-imgonly")[-1]
    assert [has_image(m["content"]) if isinstance(m["content"], list) else False
            for m in last["messages"] if m["role"] == "user"] == [True, False, False]
    r, _ = attack(Goat, srv, "atk-badtech", "tgt-imgonly", tmp_path, attacker_retries=1)
    assert r.status == "attacker_invalid" and "mind_control" in (r.error or "")
    assert len(r.attacker_log) == 2 and srv.count("tgt-imgonly") == 3  # only the first GOAT run's


# --------------------------------------------------------------------------- the interface


def test_image_actions_are_validated_and_images_are_content_addressed(tmp_path):
    assert parse_image_action({}) == ImageAction()
    assert parse_image_action({"image": "none"}).action == "none"
    assert "typography needs" in parse_image_action({"image": {"action": "typography"}})
    assert "image.action" in parse_image_action({"image": {"action": "explode"}})
    assert "move_keyword needs" in parse_image_action({"image": {"action": "move_keyword"}})
    # an attacker's output never imports code or asks for a huge canvas
    assert "not a registered" in parse_image_action({"image": {"action": "transform", "name": "os:system"}})
    assert "out of range" in parse_image_action({"image": {"action": "transform", "name": "figstep",
                                                           "options": {"size": 100000}}})

    async def go():
        ctx = SampleContext("how to do X", asset_root=tmp_path)
        a = await ctx.prepare(ImageAction(action="typography", text="how to do X"), "Fill in the list.")
        b = await ctx.prepare(ImageAction(action="typography", text="how to do X"), "Again.")
        c = await ctx.prepare(ImageAction(action="keep"), "no image here")
        d = await ctx.prepare(ImageAction(action="transform", name="blur"), "t")
        return a, b, c, d

    a, b, c, d = asyncio.run(go())
    assert a.images == b.images and len(list((tmp_path / "assets").iterdir())) == 1  # same image, one file
    assert c.images == [] and isinstance(d, str) and "needs the sample's image" in d
    assert SAMPLE_IMAGE == "sample" and parse_on_topic('{"on_topic": false}') is False
    assert parse_on_topic("Yes.") is True and parse_on_topic("hmm") is None
    with pytest.raises(ConfigError, match=r"'n_streams' of attack 'pair'.*options: n_streams, n_iterations"):
        Pair.validate_options({"n_streams": 0})
    with pytest.raises(ConfigError, match="'nope' of attack 'goat'"):
        Goat.validate_options({"nope": 1})


# --------------------------------------------------------------------------- the run


def _extras(run_dir: Path) -> dict[str, dict]:
    db = sqlite3.connect(run_dir / "run.sqlite")
    return {sid: json.loads(e) for sid, e in db.execute("SELECT sample_id, extra FROM responses")}


def test_run_with_each_attack_end_to_end(srv, tmp_path):
    bench = make_benchmark(tmp_path / "b", n=2, turns=1)
    for name, opts in (("pair", ["--attack-opt", "n_streams=2"]), ("tap", []), ("goat", [])):
        out = tmp_path / name
        r = cli("run", bench, "-t", f"openai/tgt-imgonly@{srv.url}", "--mode", "adaptive", "--attack", name,
                "--attacker", f"openai/atk-img@{srv.url}", *opts, "-o", out)
        assert r.exit_code == 0, r.output
        s = json.loads((out / "summary.json").read_text())
        assert s["asr"] == 1.0 and s["multiturn"]["status"] == {"success": 2}
        ex = _extras(out)
        for e in ex.values():
            assert e["attack"]["attack"] == name and e["outcome"]["rounds"] >= 3
            for rec in e["images"]:
                assert (out / rec["path"]).is_file()
        rows = [json.loads(x) for x in (out / "results.jsonl").read_text().splitlines()]
        assert all(x["response"] == COMPLY for x in rows)
        db = sqlite3.connect(out / "run.sqlite")
        roles = dict(db.execute("SELECT role, COUNT(*) FROM requests GROUP BY role").fetchall())
        assert roles["attacker"] > 0 and roles["target"] > 0
        assert not db.execute("SELECT COUNT(*) FROM meta WHERE key LIKE 'attack_state:%' AND value != 'null'"
                              ).fetchone()[0]  # finished: no state left in flight


def test_attacker_refusal_is_unscored_in_a_run(srv, tmp_path):
    bench = make_benchmark(tmp_path / "b", n=2, turns=1)
    out = tmp_path / "run"
    r = cli("run", bench, "-t", f"openai/tgt-imgonly@{srv.url}", "--mode", "adaptive", "--attack", "pair",
            "--attacker", f"openai/atk-refuse@{srv.url}", "-o", out)
    assert r.exit_code in (0, 1), r.output  # 1 where the CLI flags a run with nothing measured; never 2
    s = json.loads((out / "summary.json").read_text())
    assert s["n_scored"] == 0 and s["n_unscored"] == 2 and s["asr"] is None
    assert s["multiturn"]["attacker_refused"] == 2


def test_attack_options_are_checked_up_front(srv, tmp_path):
    bench = make_benchmark(tmp_path / "b", n=1, turns=1)
    base = ["run", bench, "-t", f"openai/tgt-imgonly@{srv.url}", "--attacker", f"openai/atk-img@{srv.url}",
            "-o", tmp_path / "run"]
    r = cli(*base, "--mode", "adaptive", "--attack", "nope")
    assert r.exit_code == 2 and "--attack 'nope': choose one of" in r.output and "pair" in r.output
    r = cli(*base, "--mode", "adaptive", "--attack", "pair", "--attack-opt", "n_streams=zero")
    assert r.exit_code == 2 and "--attack-opt 'n_streams' of attack 'pair'" in r.output
    r = cli(*base, "--mode", "adaptive", "--attack", "tap", "--attack-opt", "widht=2")
    assert r.exit_code == 2 and "'widht'" in r.output and "width" in r.output
    r = cli(*base, "--mode", "adaptive", "--attack-opt", "oops")
    assert r.exit_code == 2 and "expected KEY=VALUE" in r.output
    r = cli("run", bench, "-t", f"openai/tgt-imgonly@{srv.url}", "--attack", "pair", "-o", tmp_path / "r2")
    assert r.exit_code == 2 and "--mode adaptive" in r.output
    assert srv.count() == 0
    # PAIR and TAP send single prompts: a single-turn target is fine; GOAT's conversation is not
    models = tmp_path / "models.yaml"
    models.write_text(f"models:\n  single:\n    spec: openai/tgt-imgonly@{srv.url}\n"
                      f"    capabilities: {{multi_turn: false, editable_history: false}}\n")
    args = ["run", bench, "--models", models, "-t", "single", "--mode", "adaptive",
            "--attacker", f"openai/atk-img@{srv.url}"]
    assert cli(*args, "--attack", "pair", "-o", tmp_path / "p").exit_code == 0
    r = cli(*args, "--attack", "goat", "-o", tmp_path / "g")
    assert r.exit_code == 2 and "single-turn" in r.output


def test_a_killed_run_resumes_each_conversation_at_its_last_completed_step(srv, tmp_path, monkeypatch):
    bench = make_benchmark(tmp_path / "b", n=1, turns=1)
    args = ["run", bench, "-t", f"openai/tgt-imgonly@{srv.url}", "--mode", "adaptive", "--attack", "pair",
            "--attacker", f"openai/atk-img@{srv.url}", "--attack-opt", "n_streams=2", "--no-cache"]
    assert cli(*args, "-o", tmp_path / "whole").exit_code == 0
    whole = {m: srv.count(m) for m in ("atk-img", "tgt-imgonly")}
    assert whole == {"atk-img": 4, "tgt-imgonly": 4}
    srv.reset()

    real = Attack.execute
    made = {"n": 0}

    async def dies_at_the_fourth_step(self, calls, state, ctx, rows):
        made["n"] += 1
        if made["n"] == 4:  # iteration 2's attacker calls are stored as pending, then the process dies
            raise KeyboardInterrupt
        return await real(self, calls, state, ctx, rows)

    monkeypatch.setattr(Attack, "execute", dies_at_the_fourth_step)
    out = tmp_path / "run"
    r = cli(*args, "-o", out)
    assert r.exit_code == 130, r.output  # Ctrl-C / a kill mid-conversation
    db = sqlite3.connect(out / "run.sqlite")
    saved = json.loads(db.execute("SELECT value FROM meta WHERE key='attack_state:s0'").fetchone()[0])
    db.close()
    assert saved["attack"] == "pair" and saved["state"]["iteration"] == 1
    assert [c["role"] for c in saved["state"]["pending"]] == ["attacker", "attacker"]
    assert {m: srv.count(m) for m in ("atk-img", "tgt-imgonly")} == {"atk-img": 2, "tgt-imgonly": 2}
    monkeypatch.setattr(Attack, "execute", real)
    r = cli(*args, "-o", out)
    assert r.exit_code == 0, r.output
    # resumed at the pending step: nothing made twice, the same outcome as the whole run
    assert {m: srv.count(m) for m in ("atk-img", "tgt-imgonly")} == whole
    ex = _extras(out)["s0"]
    assert ex["outcome"]["status"] == "success" and len(ex["transcript"]) == 4
    assert json.loads((out / "summary.json").read_text())["ledger"]["attacker"]["calls"] == 4


def test_rejudging_an_attack_run_judges_each_attempt_with_the_images_it_sent(srv, tmp_path):
    bench = make_benchmark(tmp_path / "b", n=1, turns=1)
    out = tmp_path / "run"
    r = cli("run", bench, "-t", f"openai/tgt-imgonly@{srv.url}", "--mode", "adaptive", "--attack", "pair",
            "--attacker", f"openai/atk-img@{srv.url}", "--attack-opt", "n_streams=1", "-o", out)
    assert r.exit_code == 0, r.output
    r = cli("judge", out, "--judge", f"rubric:openai/judge-auto@{srv.url}")
    assert r.exit_code == 0, r.output
    reqs = srv.by_model("judge-auto")
    assert len(reqs) == 2  # each PAIR attempt judged alone, not as one conversation

    def shown(body: dict) -> tuple[bool, str]:
        parts = [p for m in body["messages"] if isinstance(m["content"], list) for p in m["content"]]
        return has_image(parts), json.dumps(body["messages"])

    moved = [shown(b) for b in reqs if "the activity shown in the image" in shown(b)[1]]
    assert len(moved) == 1 and moved[0][0], "the judge never saw the FigStep image the attack sent"
    assert all("Attempt 1" not in s for _, s in moved)  # the first attempt is not in the second's context


def test_samples_in_flight_bounds_the_samples_driven_at_once_not_their_calls(srv, tmp_path):
    """RunOptions.samples_in_flight: an attack's parallel streams stay concurrent while only that many
    samples are driven at once (bench_attacks runs 64 samples in flight with caps above 64 x fan-out)."""
    from mmsafe.judges import make_judge
    from mmsafe.runner import RunOptions, execute

    bench = make_benchmark(tmp_path / "b", n=3, turns=1)
    out = tmp_path / "run"
    opts = RunOptions(benchmark=bench, target=resolve_endpoint(f"openai/tgt-imgonly@{srv.url}", "target"),
                      judge=make_judge("keyword"), out=out, mode="adaptive", attack="pair",
                      attacker=resolve_endpoint(f"openai/atk-img@{srv.url}", "attacker"),
                      attack_options={"n_streams": 3}, samples_in_flight=1, use_cache=False)
    outcome = asyncio.run(execute(opts))
    assert outcome.summary["asr"] == 1.0
    db = sqlite3.connect(out / "run.sqlite")
    order = [sid for (sid,) in db.execute("SELECT sample_id FROM requests ORDER BY id")]
    blocks = [sid for i, sid in enumerate(order) if i == 0 or order[i - 1] != sid]
    assert sorted(blocks) == ["s0", "s1", "s2"]  # one sample at a time: its requests form one block
    assert order.count("s0") == 12  # 3 streams x (attacker, target) x 2 iterations, the streams concurrent


@pytest.mark.parametrize("attack,opts,kill_at", [
    ("crescendo", ["--max-turns", "3", "--max-backtracks", "1"], 5),
    ("tap", ["--attack-opt", "branching=3", "--attack-opt", "width=2"], 6),
    ("goat", ["--max-turns", "3"], 4),
])
def test_every_attack_resumes_where_it_was_killed(srv, tmp_path, monkeypatch, attack, opts, kill_at):
    """Crescendo (moved onto the interface), TAP and GOAT resume mid-conversation too: a run killed at
    step N and re-run makes exactly the requests of one whole run, with the same transcript."""
    bench = make_benchmark(tmp_path / "b", n=1, turns=1)
    args = ["run", bench, "-t", f"openai/tgt-imgonly@{srv.url}", "--mode", "adaptive", "--attack", attack,
            "--attacker", f"openai/atk-img@{srv.url}", *opts, "--no-cache"]
    assert cli(*args, "-o", tmp_path / "whole").exit_code == 0
    whole = {m: srv.count(m) for m in ("atk-img", "tgt-imgonly")}
    srv.reset()
    real = Attack.execute
    made = {"n": 0}

    async def dies(self, calls, state, ctx, rows):
        made["n"] += 1
        if made["n"] == kill_at:
            raise KeyboardInterrupt
        return await real(self, calls, state, ctx, rows)

    monkeypatch.setattr(Attack, "execute", dies)
    assert cli(*args, "-o", tmp_path / "run").exit_code == 130
    assert sum(srv.count(m) for m in whole) < sum(whole.values())  # killed part-way
    monkeypatch.setattr(Attack, "execute", real)
    assert cli(*args, "-o", tmp_path / "run").exit_code == 0
    assert {m: srv.count(m) for m in whole} == whole
    a, b = _extras(tmp_path / "whole")["s0"], _extras(tmp_path / "run")["s0"]
    assert [(t["user"], t["reply"], t["label"]) for t in a["transcript"]] == \
        [(t["user"], t["reply"], t["label"]) for t in b["transcript"]]
    assert a["outcome"]["status"] == b["outcome"]["status"] and b["outcome"]["rounds"] == a["outcome"]["rounds"]


def test_visual_transforms_of_the_sample_image_and_multi_part_figures(tmp_path):
    (tmp_path / "img.png").write_bytes(make_png(size=(48, 48)))

    async def go():
        ctx = SampleContext("how to do X", image=ImagePart(path="img.png"), root=tmp_path, asset_root=tmp_path / "run")
        blur = await ctx.prepare(ImageAction(action="transform", name="blur", options={"radius": 3}), "look")
        pro = await ctx.prepare(ImageAction(action="transform", name="figstep_pro", text="how to do X",
                                            options={"parts": 3}), "the pieces")
        unknown = await ctx.prepare(ImageAction(action="transform", name="sepia"), "x")
        return ctx, blur, pro, unknown

    ctx, blur, pro, unknown = asyncio.run(go())
    assert blur.text == "look" and len(blur.images) == 1 and blur.made[0]["how"] == "transform:blur"
    assert blur.images[0] != SAMPLE_IMAGE and ctx.images[blur.images[0]].uri.startswith("data:image/png;base64,")
    assert len(pro.images) == 3 and len(set(pro.images)) == 3  # three sub-figures, each its own asset
    assert {p.name for p in (tmp_path / "run" / "assets").iterdir()} == {f"{k}.png" for k in
                                                                          blur.images + pro.images}
    assert isinstance(unknown, str) and "sepia" in unknown
    # the transcript names each by sha256 and path; the sample's own image by its source
    assert ctx.image_ref(blur.images[0])["path"] == f"assets/{blur.images[0]}.png"
    assert ctx.image_ref(SAMPLE_IMAGE)["source"] == "sample"
