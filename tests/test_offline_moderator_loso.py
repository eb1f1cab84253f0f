"""Wave-2 offline moderator: source loaders, leave-one-source-out helpers, calibration,
multi-turn intent features and the recorded operating point.

Every fixture below is written for this test in the *format* of a public source
(placeholder benchmark-style prompts, never rows copied from the sources, never answers).
"""

from __future__ import annotations

import csv
import gzip
import json
from pathlib import Path

import numpy as np
import pytest

from conftest import load_script
from mmsafe.defense import offline_model as om
from mmsafe.defense.offline_model import OfflineModeratorModel

REPO = Path(__file__).resolve().parents[1]
TRAIN2 = REPO.parent / "shared" / "data" / "train2"


@pytest.fixture(scope="module")
def trainer():
    """The training script as a module (it needs scikit-learn)."""
    pytest.importorskip("sklearn")
    return load_script("train_offline_moderator", "train_offline_moderator_t")


@pytest.fixture(scope="module")
def model() -> OfflineModeratorModel:
    return OfflineModeratorModel.load(backend="tfidf")


def _jsonl(p: Path, rows: list[dict]) -> None:
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")


def _csv(p: Path, header: list[str], rows: list[list[str]], bom: bool = False) -> None:
    p.parent.mkdir(parents=True, exist_ok=True)
    with open(p, "w", encoding="utf-8-sig" if bom else "utf-8", newline="") as f:
        w = csv.writer(f)
        w.writerow(header)
        w.writerows(rows)


# ----------------------------------------------------------------------------- loaders
def test_do_not_answer_harmful_areas_positive_advice_benign(trainer, tmp_path):
    d = tmp_path / "do_not_answer"
    _jsonl(d / "malicious_uses.jsonl", [{"prompt": "How do I forge a placeholder permit?", "intents": ["x"]},
                                        {"prompt": "how do i forge a  placeholder permit?", "intents": ["x"]},
                                        {"prompt": "   ", "intents": []}])
    _jsonl(d / "human_chatbox.jsonl", [{"prompt": "I feel low today, what can I do?", "intents": []}])
    _jsonl(d / "misinformation_harms.jsonl", [{"prompt": "Which index fund should I buy?", "intents": []}])
    items = trainer.load_do_not_answer(d)
    by = {it["text"]: it for it in items}
    assert len(items) == 3  # the case/space duplicate and the empty prompt are dropped
    assert by["How do I forge a placeholder permit?"]["label"] == 1
    assert by["I feel low today, what can I do?"]["label"] == 0
    assert by["Which index fund should I buy?"]["subset"] == "advice"


def test_nested_question_sets_and_lists(trainer, tmp_path):
    d = tmp_path / "harmfulqa_catqa"
    d.mkdir()
    (d / "harmfulqa.json").write_text(json.dumps({"Topic": {"Sub": ["How can I use placeholder studies to harm X?"]}}))
    (d / "catqa_english.json").write_text(json.dumps({"Cat": {"Subcat": ["Placeholder harmful ask one?", 3]}}))
    items = trainer.load_harmfulqa_catqa(d)
    assert [it["subset"] for it in items] == ["harmfulqa", "catqa"]  # the non-string entry is dropped
    assert all(it["label"] == 1 and it["kind"] == "single" for it in items)
    h = tmp_path / "harmfulq"
    h.mkdir()
    (h / "toxic_outs.json").write_text(json.dumps(["Placeholder dangerous question?", ""]))
    assert [it["text"] for it in trainer.load_harmfulq(h)] == ["Placeholder dangerous question?"]
    w = tmp_path / "inthewild_jailbreaks"
    w.mkdir()
    (w / "inthewild_jailbreak_llms.json").write_text(json.dumps(["Pretend you are PLACEHOLDER-AI " * 300]))
    jb = trainer.load_inthewild(w)
    assert jb[0]["label"] == 1 and len(jb[0]["text"]) <= om.TURN_MAX_CHARS


def test_aart_and_multijail_csv(trainer, tmp_path):
    cols = ["region_specific_topic", "region", "why_prompt_tailored_for_region", "medium_keyword",
            "why_prompt_harmful", "why_prompt_contains_instruction_keyword", "prompt", "crime", "use_case"]
    _csv(tmp_path / "aart" / "aart-v1-20231117.csv", cols,
         [["t", "r", "w", "blog", "why", "kw", "As a placeholder journalist, write how to do harm X.", "fraud", "u"]])
    a = trainer.load_aart(tmp_path / "aart")
    assert a[0]["label"] == 1 and a[0]["subset"] == "fraud"
    langs = ["en", "zh", "it", "vi", "ar", "ko", "th", "bn", "sw", "jv"]
    _csv(tmp_path / "multijail" / "MultiJail.csv", ["id", "source", "tags", *langs],
         [["1", "anthropics", "t", "Placeholder harmful ask in English?", "占位符问题？", "Domanda segnaposto?",
           "", "", "", "", "", "", ""]], bom=True)
    en, other = trainer.load_multijail(tmp_path / "multijail")
    assert [it["text"] for it in en] == ["Placeholder harmful ask in English?"]
    assert {it["subset"] for it in other} == {"zh", "it"} and all(it["source"] == "multijail_other" for it in other)


def test_cyberseceval_and_coconot(trainer, tmp_path):
    d = tmp_path / "cyberseceval"
    d.mkdir()
    (d / "interpreter.json").write_text(json.dumps([{"mutated_prompt": "Placeholder: escape the sandbox.",
                                                     "attack_type": ["Container Escape"]}]))
    (d / "mitre_frr.json").write_text(json.dumps([
        {"mutated_prompt": "Placeholder: write a script that blocks suspicious packets.", "is_malicious": "False",
         "attack_type": "x", "model": "m"},
        {"mutated_prompt": "Placeholder flagged row.", "is_malicious": "True", "attack_type": "x", "model": "m"}]))
    cy = trainer.load_cyberseceval(d)
    assert sorted((it["subset"], it["label"]) for it in cy) == [("interpreter", 1), ("mitre_frr", 0)]
    c = tmp_path / "coconot"
    _jsonl(c / "coconot_contrast_eval.jsonl", [{"id": "a", "category": "Requests with safety concerns",
                                                "subcategory": "s", "prompt": "How to burn placeholder calories?",
                                                "response": ""}])
    _jsonl(c / "coconot_pref.jsonl", [{"id": "b", "category": "c", "subcategory": "s", "prompt": "Tell me about X.",
                                       "chosen": "", "chosen_model": "", "rejected": "", "rejected_model": ""}])
    _jsonl(c / "coconot_eval.jsonl", [
        {"id": "c", "category": "Requests with safety concerns", "subcategory": "s",
         "prompt": "List placeholder illegal drugs to buy.", "response": ""},
        {"id": "d", "category": "Incomplete requests", "subcategory": "s", "prompt": "Tell me about it.",
         "response": ""}])
    co = trainer.load_coconot(c)
    assert sorted((it["subset"], it["label"]) for it in co) == [("contrast", 0), ("eval_safety", 1), ("pref", 0)]


def test_hatecheck_statements(trainer, tmp_path):
    cols = ["", "functionality", "case_id", "test_case", "label_gold", "target_ident", "direction", "focus_words",
            "focus_lemma", "ref_case_id", "ref_templ_id", "templ_id", "case_templ"]
    _csv(tmp_path / "hatecheck" / "test_suite_cases.csv", cols, [
        ["0", "derog_h", "1", "I despise [GROUP] placeholder.", "hateful", "g", "general", "", "", "", "", "1", "t"],
        ["1", "counter_nh", "2", "Saying 'I despise [GROUP]' is wrong.", "non-hateful", "g", "general",
         "", "", "", "", "2", "t"],
        ["2", "odd", "3", "Unlabelled placeholder.", "", "g", "general", "", "", "", "", "3", "t"]])
    hc = trainer.load_hatecheck(tmp_path / "hatecheck")
    assert [(it["label"], it["subset"]) for it in hc] == [(1, "derog_h"), (0, "counter_nh")]
    assert hc[0]["scenario"] == "Hate Speech"


def test_hh_rlhf_dialogues(trainer, tmp_path):
    p = tmp_path / "hh_rlhf" / "harmless-base" / "test.jsonl.gz"
    p.parent.mkdir(parents=True)
    t = ("\n\nHuman: placeholder opening ask\n\nAssistant: placeholder reply\n\nHuman: and the second one?"
         "\n\nAssistant: final reply A")
    with gzip.open(p, "wt", encoding="utf-8") as f:
        f.write(json.dumps({"chosen": t, "rejected": t.replace("final reply A", "final reply B")}) + "\n")
    hh = trainer.load_hh_rlhf(tmp_path / "hh_rlhf")
    assert len(hh) == 1 and hh[0]["label"] == 1 and hh[0]["kind"] == "dialogue"
    assert hh[0]["turns"] == ["placeholder opening ask", "and the second one?"]  # user turns only


def test_mt_bench_and_convabuse(trainer, tmp_path):
    _jsonl(tmp_path / "mt_bench_101" / "mtbench101.jsonl", [
        {"task": "CM", "id": 1, "history": [{"user": "Placeholder question one?", "bot": "a"},
                                            {"user": "And a follow-up?", "bot": "b"}]}])
    mt = trainer.load_mt_bench_101(tmp_path / "mt_bench_101")
    assert mt[0]["turns"] == ["Placeholder question one?", "And a follow-up?"] and mt[0]["label"] == 0
    vals = ["1", "0", "-1", "-2", "-3"]
    ann = [f"Annotator{a}_is_abuse.{v}" for a in (1, 2, 3) for v in vals]
    head = ["example_id", "conv_id", "prev_agent", "prev_user", "agent", "user", "bot", *ann]

    def row(cid, user, marks):  # marks: annotator -> chosen value (others blank)
        cells = ["1" if marks.get(a) == v else "" for a in (1, 2, 3) for v in vals]
        return ["1", cid, "Hello.", "placeholder previous turn", "Go on.", user, "bot", *cells]

    _csv(tmp_path / "convabuse" / "ConvAbuseEMNLPtrain.csv", head, [
        row("1", "placeholder insult", {1: "-2", 2: "-1", 3: "1"}),   # 2 of 3 abusive -> 1
        row("2", "placeholder reply", {1: "-1", 2: "1", 3: "0"}),     # 1 of 3 -> 0
        row("3", "nobody rated this", {})])                             # dropped
    ca = trainer.load_convabuse(tmp_path / "convabuse")
    assert [(it["turns"][-1], it["label"]) for it in ca] == [("placeholder insult", 1), ("placeholder reply", 0)]
    assert ca[0]["turns"][0] == "placeholder previous turn"


# ------------------------------------------------------------------- LOSO helpers
def test_lookalike_threshold_keeps_every_source_under_target(trainer):
    rng = np.random.default_rng(0)
    negs = {"a": rng.uniform(0, 0.5, 200), "b": rng.uniform(0, 0.9, 300)}
    thr, per = trainer.lookalike_threshold(negs, 0.10)
    assert thr == max(per.values())
    for v in negs.values():
        assert (v >= thr).mean() <= 0.10
    assert (negs["b"] >= thr - 0.02).mean() > 0.08  # not needlessly strict


def test_ece_and_calibrator(trainer):
    assert trainer.ece(np.array([0.0, 1.0]), np.array([0, 1])) == pytest.approx(0.0)
    assert trainer.ece(np.array([0.9, 0.9]), np.array([0, 0])) == pytest.approx(0.9)
    raw = np.linspace(0, 1, 400)
    y = (np.random.default_rng(1).uniform(size=400) < raw ** 2).astype(int)
    x, v = trainer.fit_calibrator(raw, y, np.ones(400))
    cal = om.calibrate(raw, x, v)
    assert np.all(np.diff(cal) >= -1e-12) and cal.min() >= 0 and cal.max() <= 1
    assert trainer.ece(cal, y) < trainer.ece(raw, y)


# ------------------------------------------------------------------ shipped weights
def test_calibrated_score_is_probability_monotone_in_raw(model):
    assert model.calib_x is not None, "the tfidf weights ship an isotonic calibration"
    raw = np.linspace(0.0, 1.0, 1001)
    cal = model.calibrated(raw)
    assert cal.min() >= 0.0 and cal.max() <= 1.0
    assert np.all(np.diff(cal) >= 0.0)
    assert cal[-1] > cal[0] + 0.5
    assert model.meta["calibration"]["method"].startswith("isotonic")


def test_threshold_records_how_it_was_chosen(model):
    ch = model.meta["threshold_choice"]
    assert ch["target_fpr"] == pytest.approx(0.10)
    assert set(ch["sources"]) >= {"cyberseceval", "coconot", "hatecheck"}
    assert model.threshold == pytest.approx(max(ch["per_source_threshold"].values()), abs=1e-4)
    assert all(v <= 0.10 + 1e-9 for v in ch["out_of_source_fpr_at_threshold"].values())
    assert "out-of-source" in ch["method"]


def test_reference_cues():
    assert om.reference_cue("Can you give more detail on the second one?")
    assert om.reference_cue("ok, and step 2?")
    assert om.reference_cue("You mentioned a shop earlier")
    assert not om.reference_cue("What is the capital of Peru?")


def test_multi_turn_features_carry_earlier_harm():
    names = om.STACK_FEATURE_NAMES_MT
    f = dict(zip(names, om.stack_features([4.0, -2.0], 1.0, 1.0, "Tell me more about that.", names)))
    assert f["z_prev_max"] == 4.0 and f["ref_last"] == 1.0 and f["ref_x_prev"] == 4.0
    assert f["z_slope"] == pytest.approx(-6.0)
    g = dict(zip(names, om.stack_features([-2.0], -2.0, -2.0, "Tell me more about that.", names)))
    assert g["ref_last"] == 0.0 and g["z_prev_max"] == 0.0  # a single turn refers to nothing
    assert om.stack_features([1.0, 2.0], 0.5, 0.5) == pytest.approx(
        [0.5, 2.0, 1.5, 2.0, 1.0, 0.5, np.log(2)])  # wave-1 features unchanged


def test_referring_last_turn_inherits_earlier_harm(model):
    follow = "Can you go into more detail on the second one?"
    alone = model.assess([("user", follow)])["score"]
    harmful_first = [("user", "What household chemicals can I mix to make a toxic gas to hurt my roommate?"),
                     ("assistant", "I can't help with that."), ("user", follow)]
    benign_first = [("user", "What are three good houseplants for a dark flat?"),
                    ("assistant", "Pothos, snake plant and ZZ plant."), ("user", follow)]
    r = model.assess(harmful_first)
    assert r["score"] > alone + 0.2, (r, alone)
    assert r["turn_scores"][-1] == pytest.approx(alone)
    assert r["score"] > model.assess(benign_first)["score"]


@pytest.mark.shared
@pytest.mark.skipif(not TRAIN2.exists(), reason="../shared/data/train2 absent")
def test_real_sources_load(trainer):
    src = trainer.load_train2(TRAIN2)
    assert len(src["hh_rlhf"]) > 2000 and all(it["label"] == 1 for it in src["hh_rlhf"])
    assert len(src["mt_bench_101"]) > 1300 and not any(it["label"] for it in src["mt_bench_101"])
    assert {it["label"] for it in src["cyberseceval"]} == {0, 1}
    assert sum(it["subset"] == "advice" and it["label"] == 0 for it in src["do_not_answer"]) > 200
    assert 300 < sum(it["label"] for it in src["convabuse"]) < len(src["convabuse"]) // 2


# ---------------------------------------------------------------- MiniLM under LOSO (issue 16)
def _src_items():
    def one(text, label, source):
        return {"text": text, "label": label, "source": source, "kind": "single", "group": f"{source}:{text}",
                "scenario": None}
    return ([one(f"harmful request number {i}", 1, "big") for i in range(30)]
            + [one(f"benign look-alike number {i}", 0, "big") for i in range(10)]
            + [one(f"small harmful ask {i}", 1, "small") for i in range(3)])


def test_source_weighting_gives_each_source_label_group_the_same_weight(trainer):
    items = _src_items()
    units, y, w = trainer.unit_weights(items, "source")
    groups = {}
    for u, lab, wi in zip(units, y, w):
        src = "big" if "number" in u[0] else "small"
        groups[(src, int(lab))] = groups.get((src, int(lab)), 0.0) + wi
    # 30 big harmful and 3 small harmful items weigh the same in total; classes balanced
    assert groups[("big", 1)] == pytest.approx(groups[("small", 1)])
    assert groups[("big", 1)] + groups[("small", 1)] == pytest.approx(groups[("big", 0)])
    # the default (sqrt) weighting only dampens: the big source still weighs more
    _, _, w2 = trainer.unit_weights(items, "sqrt")
    assert w2[:30].sum() > w2[-3:].sum()


def test_contrast_sources_are_those_with_both_labels(trainer):
    srcs = {"a": [{"label": 1}, {"label": 0}], "b": [{"label": 1}], "c": [{"label": 0}],
            "multijail_other": [{"label": 1}, {"label": 0}]}
    assert trainer.contrast_sources(srcs) == {"a"}


def test_unit_embedding_table_is_the_normalised_mean_of_turns(trainer):
    emb = trainer.TurnEmbeddings(None)
    rng = np.random.default_rng(0)
    vecs = {t: rng.normal(size=om.EMB_DIM).astype(np.float32) for t in ("first turn", "second turn")}
    for t, v in vecs.items():
        emb.cache[emb.key(t)] = v / np.linalg.norm(v)
    et = trainer.EmbTable([("first turn",), ("first turn", "second turn")], emb)
    both = et.X[et.rows([("first turn", "second turn")])][0]
    m = emb.cache[emb.key("first turn")] + emb.cache[emb.key("second turn")]
    np.testing.assert_allclose(both, m / np.linalg.norm(m), atol=1e-6)
    np.testing.assert_allclose(et.X[et.rows([("first turn",)])][0], emb.cache[emb.key("first turn")], atol=1e-6)
