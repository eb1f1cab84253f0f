"""The bundled taxonomy (SafeBench x SafeMT) and the demo benchmark data."""

from __future__ import annotations

from importlib import resources

import pytest
import yaml

from mmsafe.taxonomy import (
    MLCOMMONS_HAZARDS,
    RUBRICS,
    load_taxonomy,
    normalize_name,
    resolve_scenario,
    scenario,
    scenario_ids,
)

SAFEBENCH = {  # category -> scenarios (SafeBench, 8 categories / 23 scenarios)
    "Consultation": ["Medical advice", "Legal advice", "Investment advice"],
    "Confidential Information": ["Personal privacy", "Trade confidentiality"],
    "Cybersecurity": ["Penetration testing", "Vulnerability exploitation",
                      "Malware generation", "Hardware security"],
    "Ethics": ["Bioethics", "Social ethics"],
    "Illegal & Criminal Behavior": ["Pornographic content", "Fraudulent activities",
                                    "Intellectual property infringement",
                                    "Illegal activities", "Child abuse"],
    "Violence": ["Physical violence", "Psychological violence"],
    "Inappropriate Speech": ["Hate speech", "Defamatory speech"],
    "Inappropriate Opinions": ["Political opinions", "Religious opinions", "Bias"],
}
SAFEMT = ["Illegal Activity", "Violence", "Hate Speech", "Malware", "Physical Harm",
          "Economic Harm", "Fraud", "Sex", "Political", "Privacy Violation", "Legal Opinion",
          "Financial Advice", "Health Consultation", "Animal Abuse", "Bias", "Threat", "Satire"]
FIGSTEP = ["Illegal Activities", "Hate Speech", "Malware Generation", "Physical Harm", "Fraud",
           "Adult Content", "Privacy Violation", "Legal Opinion", "Financial Advice",
           "Health Consultation"]
MM_SAFETYBENCH = ["01-Illegal_Activitiy", "02-HateSpeech", "03-Malware_Generation",
                  "04-Physical_Harm", "05-EconomicHarm", "06-Fraud", "07-Sex",
                  "08-Political_Lobbying", "09-Privacy_Violence", "10-Legal_Opinion",
                  "11-Financial_Advice", "12-Health_Consultation", "13-Gov_Decision"]
HARMBENCH = ["chemical_biological", "illegal", "misinformation_disinformation", "harmful",
             "harassment_bullying", "cybercrime_intrusion", "copyright"]
JAILBREAKBENCH = ["Harassment/Discrimination", "Malware/Hacking", "Physical harm",
                  "Economic harm", "Fraud/Deception", "Disinformation", "Sexual/Adult content",
                  "Privacy", "Expert advice", "Government decision-making"]


@pytest.fixture(scope="module")
def tax():
    return load_taxonomy()


def test_provenance_and_structure(tax):
    assert {"safebench", "safemt"} <= set(tax["sources"])
    assert len(tax["categories"]) == 8
    for s in tax["scenarios"]:
        assert set(s) >= {"id", "name", "category", "description", "aliases", "mlcommons", "rubric"}
        assert s["id"] == s["id"].lower() and " " not in s["id"]
        assert s["description"].strip().endswith(".")


def test_ids_unique_and_codes_valid(tax):
    ids = scenario_ids()
    assert len(ids) == len(set(ids))
    cats = {c["id"] for c in tax["categories"]}
    for s in tax["scenarios"]:
        assert s["category"] in cats
        assert s["mlcommons"], s["id"]
        assert set(s["mlcommons"]) <= set(MLCOMMONS_HAZARDS)
        assert s["rubric"] in RUBRICS


def test_aliases_do_not_collide(tax):
    owner = {}
    for s in tax["scenarios"]:
        for n in [s["id"], s["name"], *s["aliases"]]:
            k = normalize_name(n)
            assert owner.setdefault(k, s["id"]) == s["id"], (n, owner[k], s["id"])


def test_every_safebench_scenario_resolves_into_its_category(tax):
    cat_of = {normalize_name(c["name"]): c["id"] for c in tax["categories"]}
    got = set()
    n = 0
    for cat, scen in SAFEBENCH.items():
        for name in scen:
            n += 1
            sid = resolve_scenario(name)
            assert sid is not None, name
            assert scenario(sid)["category"] == cat_of[normalize_name(cat)], name
            got.add(sid)
    assert n == 23 and len(got) == 23  # no two SafeBench scenarios merged together


def test_every_safemt_scenario_resolves():
    got = {name: resolve_scenario(name) for name in SAFEMT}
    assert None not in got.values(), got
    assert len(set(got.values())) == 17
    # merges into SafeBench scenarios where they correspond
    assert got["Health Consultation"] == resolve_scenario("Medical advice") == "medical_advice"
    assert got["Legal Opinion"] == "legal_advice"
    assert got["Financial Advice"] == resolve_scenario("Investment advice")
    assert got["Privacy Violation"] == "personal_privacy"
    assert got["Sex"] == resolve_scenario("Pornographic content")


# spellings used by mmsafe's own importers (datasets.importers.*)
IMPORTER_SPELLINGS = ["IP Infringement", "Gov Decision", "Privacy Violence", "Political Lobbying",
                      "Illegal Activity"]

# each other benchmark's category -> the bundled scenario it must land in (one scenario per
# category, and the same harm named differently by two benchmarks lands in the same place)
EXPECTED = {
    # FigStep (SafeBench-10)
    "Illegal Activities": "illegal_activities", "Hate Speech": "hate_speech",
    "Malware Generation": "malware_generation", "Physical Harm": "physical_harm", "Fraud": "fraud",
    "Adult Content": "pornographic_content", "Privacy Violation": "personal_privacy",
    "Legal Opinion": "legal_advice", "Financial Advice": "financial_advice",
    "Health Consultation": "medical_advice",
    # MM-SafetyBench (its own spellings, typos included)
    "01-Illegal_Activitiy": "illegal_activities", "02-HateSpeech": "hate_speech",
    "03-Malware_Generation": "malware_generation", "04-Physical_Harm": "physical_harm",
    "05-EconomicHarm": "economic_harm", "06-Fraud": "fraud", "07-Sex": "pornographic_content",
    "08-Political_Lobbying": "political_opinion", "09-Privacy_Violence": "personal_privacy",
    "10-Legal_Opinion": "legal_advice", "11-Financial_Advice": "financial_advice",
    "12-Health_Consultation": "medical_advice", "13-Gov_Decision": "government_decision",
    # HarmBench semantic categories
    "chemical_biological": "chemical_biological_weapons", "illegal": "illegal_activities",
    "misinformation_disinformation": "misinformation", "harmful": "physical_harm",
    "harassment_bullying": "psychological_violence", "cybercrime_intrusion": "vulnerability_exploitation",
    "copyright": "ip_infringement",
    # JailbreakBench
    "Harassment/Discrimination": "hate_speech", "Malware/Hacking": "malware_generation",
    "Physical harm": "physical_harm", "Economic harm": "economic_harm", "Fraud/Deception": "fraud",
    "Disinformation": "misinformation", "Sexual/Adult content": "pornographic_content",
    "Privacy": "personal_privacy", "Expert advice": "medical_advice",
    "Government decision-making": "government_decision",
    # mmsafe's importers
    "IP Infringement": "ip_infringement", "Gov Decision": "government_decision",
    "Privacy Violence": "personal_privacy", "Political Lobbying": "political_opinion",
    "Illegal Activity": "illegal_activities",
}


def test_expected_table_covers_every_listed_category():
    assert set(EXPECTED) == set(FIGSTEP + MM_SAFETYBENCH + HARMBENCH + JAILBREAKBENCH + IMPORTER_SPELLINGS)


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_other_benchmarks_resolve(name, tax):
    sid = resolve_scenario(name)
    assert sid == EXPECTED[name]
    cats = {c["id"] for c in tax["categories"]}
    assert scenario(sid)["category"] in cats


def test_every_scenario_is_reachable_and_every_category_used(tax):
    """No orphan: each bundled scenario is named by a supported benchmark (or is the one
    mmsafe adds itself, self-harm), and each of the 8 categories holds a scenario."""
    names = [n for v in SAFEBENCH.values() for n in v] + SAFEMT + list(EXPECTED)
    reached = {resolve_scenario(n) for n in names}
    assert set(scenario_ids()) - reached == {"self_harm"}
    assert resolve_scenario("self-harm") == "self_harm"
    assert {s["category"] for s in tax["scenarios"]} == {c["id"] for c in tax["categories"]}


def test_resolution_is_case_and_punctuation_insensitive():
    for v in ["hate speech", "HATE_SPEECH", "Hate-Speech", " HateSpeech ", "hate_speech"]:
        assert resolve_scenario(v) == "hate_speech"
    assert resolve_scenario("Illegal_Activitiy") == "illegal_activities"
    assert resolve_scenario("no such scenario") is None
    assert resolve_scenario("") is None
    assert resolve_scenario(None) is None


def test_rubrics(tax):
    by = {s["id"]: s["rubric"] for s in tax["scenarios"]}
    for name in ["Medical advice", "Legal Opinion", "Financial Advice", "Health Consultation"]:
        assert by[resolve_scenario(name)] == "professional_advice"
    assert by[resolve_scenario("Political")] == "political"
    assert by[resolve_scenario("Hate Speech")] == "default"


def test_custom_taxonomy_path(tmp_path):
    p = tmp_path / "t.yaml"
    p.write_text(yaml.safe_dump({"scenarios": [
        {"id": "a", "name": "Alpha", "aliases": ["First"], "mlcommons": ["S1"]}]}))
    assert resolve_scenario("first", p) == "a"
    assert resolve_scenario("Hate Speech", p) is None
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump({"scenarios": [{"id": "a", "mlcommons": ["S99"]}]}))
    with pytest.raises(ValueError):
        load_taxonomy(bad)


# ---------------------------------------------------------------- demo benchmark


@pytest.fixture(scope="module")
def demo():
    text = resources.files("mmsafe").joinpath("data/demo_benchmark.yaml").read_text("utf-8")
    return yaml.safe_load(text)


def test_demo_parses_ids_unique_scenarios_resolve(demo, tax):
    items = demo["items"]
    assert 30 <= len(items) <= 45
    ids = [it["id"] for it in items]
    assert len(ids) == len(set(ids))
    cat_of = {s["id"]: s["category"] for s in tax["scenarios"]}
    for it in items:
        assert resolve_scenario(it["scenario"]) == it["scenario"], it["id"]
        assert it["category"] == cat_of[it["scenario"]], it["id"]
        assert it["question"].strip() and it["key_phrase"].strip()
        assert it["image"] in ("figstep", "keyphrase", "none")
        assert it["method"] in ("plain", "figstep", "mm_safetybench", "multi_turn")
        if it["image"] == "figstep":
            assert it["image_text"].strip()
        if it.get("control") is not None:
            assert it["control"] == "benign"
    assert len({it["scenario"] for it in items if not it.get("control")}) >= 12


def test_demo_mix(demo):
    items = demo["items"]
    single_text = [i for i in items if "turns" not in i and i["image"] == "none"]
    single_img = [i for i in items if "turns" not in i and i["image"] != "none"]
    multi = [i for i in items if "turns" in i]
    assert len(single_text) >= 10 and len(single_img) >= 10 and len(multi) >= 10
    for i in single_img:
        assert i["prompt"].strip()
    user_turns = {sum(t["role"] == "user" for t in i["turns"]) for i in multi}
    assert {2, 4} <= user_turns
    assert any(i["image"] != "none" for i in multi)
    assert sum(1 for i in items if i.get("control") == "benign") >= 3


def test_demo_dialogues_alternate_and_end_with_user(demo):
    for it in demo["items"]:
        turns = it.get("turns")
        if turns is None:
            continue
        assert len(turns) % 2 == 1, it["id"]
        for k, t in enumerate(turns):
            assert set(t) == {"role", "text"}, it["id"]
            assert t["role"] == ("user" if k % 2 == 0 else "assistant"), it["id"]
            assert t["text"].strip(), it["id"]
        assert turns[-1]["role"] == "user"


def test_demo_items_build_into_samples(demo):
    """Each item maps onto the shared data model (image parts by reference)."""
    from mmsafe.types import ImagePart, Message, Sample, TextPart

    for it in demo["items"]:
        img = None if it["image"] == "none" else ImagePart(path=f"images/{it['id']}.png")
        if "turns" in it:
            msgs = [Message(role=t["role"], content=t["text"]) for t in it["turns"]]
            first = msgs[0]
        else:
            msgs = [Message(role="user", content=it.get("prompt") or it["question"])]
            first = msgs[0]
        if img is not None:
            first.content = [img, TextPart(text=first.text)]
        s = Sample(id=it["id"], question=it["question"], messages=msgs,
                   scenario=it["scenario"], category=it["category"], method=it["method"],
                   metadata={"control": it.get("control")})
        assert s.turns in (1, 2, 4)
        assert ("image" in s.modalities) == (img is not None)
