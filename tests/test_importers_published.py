"""Importers on the repositories' PUBLISHED layouts (repo root and data folder), media gaps,
SafeMT's question recovery and cross-length alignment, and the Safety Index over aligned groups.

The fixtures in tests/fixtures/published/ copy each repository's folder structure and
column layout with a few mild, made-up questions; images and audio are generated here.
"""

from __future__ import annotations

import io
import json
import shutil
import wave
from pathlib import Path

import pytest
from PIL import Image
from typer.testing import CliRunner

from mmsafe.cli import app
from mmsafe.datasets import DatasetError, import_benchmark, open_benchmark
from mmsafe.metrics import safety_index
from mmsafe.metrics.multiturn import misaligned_samples
from mmsafe.types import ImagePart

PUBLISHED = Path(__file__).parent / "fixtures" / "published"
SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"
runner = CliRunner()


def make_image(path: Path, color: tuple[int, int, int] = (200, 30, 30)) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fmt = "JPEG" if path.suffix.lower() in (".jpg", ".jpeg") else "PNG"
    buf = io.BytesIO()
    Image.new("RGB", (8, 8), color).save(buf, format=fmt)
    path.write_bytes(buf.getvalue())


def make_wav(path: Path, n: int = 200) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with wave.open(str(path), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(8000)
        w.writeframes(b"\x00\x01" * n)


def copy(tmp_path: Path, name: str) -> Path:
    dst = tmp_path / name
    shutil.copytree(PUBLISHED / name, dst)
    return dst


def samples(out: Path) -> dict:
    return {s.id: s for s in open_benchmark(out).iter_samples()}


def n_images(out: Path) -> int:
    return sum(1 for s in open_benchmark(out).iter_samples() if "image" in s.modalities)


# --------------------------------------------------------------------------- SafeMT


@pytest.fixture
def safemt_repo(tmp_path) -> Path:
    root = copy(tmp_path, "safemt")
    for k, r in enumerate(json.loads((root / "Data" / "1_turn.json").read_text())):
        make_image(root / "Data" / r["image_path"], (k * 40, 10, 10))
    return root


@pytest.mark.parametrize("where", ["", "Data"])
def test_safemt_repo_root_and_data_folder(safemt_repo, tmp_path, where):
    m = import_benchmark("safemt", safemt_repo / where, tmp_path / "b")
    assert m.counts.n_samples == 15 and m.counts.by_turns == {"1": 5, "2": 5, "4": 5}
    assert m.counts.n_assets == 5 and m.counts.modalities["image"] == 15
    assert "media" in m.provenance and m.provenance["media"]["image"]["missing"] == 0
    assert sorted(s["file"] for s in m.provenance["sources"]) == [
        f"{'Data/' if not where else ''}{n}_turn.json" for n in (1, 2, 4)]


def test_safemt_question_recovered_from_the_aligned_1_turn_dialogue(safemt_repo, tmp_path):
    m = import_benchmark("safemt", safemt_repo, tmp_path / "b")
    ss = samples(tmp_path / "b")
    one = {s.metadata["group"]: s.question for s in ss.values() if s.turns == 1}
    fraud4 = ss["mllm_fraud_1/t4"]
    assert fraud4.metadata["question_source"] == "1_turn"
    assert fraud4.question == one["mllm_fraud_1"] != fraud4.messages[-1].text
    assert ss["mllm_fraud_1/t1"].metadata["question_source"] == "dialogue"
    # the 4-turn dialogue filed under legal_opinion_1 asks legal_opinion_2's request:
    # its own 1-turn request would be the wrong question, so the last user turn is kept
    lo = ss["mllm_legal_opinion_1/t4"]
    assert lo.metadata["question_source"] == "last_user_turn" and lo.question == lo.messages[-1].text
    # a scenario disagreement alone does not change which request the text asks
    assert ss["mllm_privacy_1/t4"].metadata["question_source"] == "1_turn"
    assert m.provenance["question_source"] == {"dialogue": 5, "1_turn": 9, "last_user_turn": 1}


def test_safemt_older_release_question_field_wins(safemt_repo, tmp_path):
    for n in (1, 2, 4):
        p = safemt_repo / "Data" / f"{n}_turn.json"
        recs = json.loads(p.read_text())
        for r in recs:
            r["question"] = f"Underlying request of {r['id']}?"
        p.write_text(json.dumps(recs))
    m = import_benchmark("safemt", safemt_repo, tmp_path / "b")
    assert m.provenance["question_source"] == {"question_field": 15}
    assert samples(tmp_path / "b")["mllm_malware_1/t2"].question == "Underlying request of mllm_malware_1?"


def test_safemt_alignment_names_misaligned_groups(safemt_repo, tmp_path):
    m = import_benchmark("safemt", safemt_repo, tmp_path / "b")
    al = m.provenance["alignment"]
    assert al["method"] == "tfidf" and al["n_checked"] == 10 and al["n_reference"] == 5
    assert al["misaligned_groups"] == ["mllm_legal_opinion_1", "mllm_privacy_1"]
    by = {x["sample"]: x for x in al["misaligned"]}
    assert by["mllm_legal_opinion_1/t4"]["reasons"] == ["text"]
    assert by["mllm_legal_opinion_1/t4"]["best_match"] == "mllm_legal_opinion_2"
    assert by["mllm_privacy_1/t4"]["reasons"] == ["scenario"]
    note = [n for n in m.provenance["notes"] if "do not match" in n]
    assert len(note) == 1 and "mllm_legal_opinion_1, mllm_privacy_1" in note[0]
    ss = samples(tmp_path / "b")
    assert ss["mllm_legal_opinion_1/t4"].metadata["si_aligned"] is False
    assert ss["mllm_legal_opinion_1/t4"].metadata["si_group"] == "mllm_legal_opinion_1/t4"
    assert ss["mllm_legal_opinion_1/t2"].metadata["si_group"] == "mllm_legal_opinion_1"
    assert ss["mllm_legal_opinion_1/t4"].metadata["group"] == "mllm_legal_opinion_1"  # id kept
    assert misaligned_samples(m) == {"mllm_legal_opinion_1/t4", "mllm_privacy_1/t4"}
    assert misaligned_samples(m.model_dump(mode="json")) == misaligned_samples(m)


def test_safemt_alignment_image_disagreement_and_fallback(safemt_repo, tmp_path, monkeypatch):
    p = safemt_repo / "Data" / "2_turn.json"
    recs = json.loads(p.read_text())
    recs[4]["image_path"] = "images/fraud/fraud_1.jpg"  # malware_1's 2-turn with fraud's image
    p.write_text(json.dumps(recs))
    m = import_benchmark("safemt", safemt_repo, tmp_path / "b")
    by = {x["sample"]: x["reasons"] for x in m.provenance["alignment"]["misaligned"]}
    assert by["mllm_malware_1/t2"] == ["image"]
    # without scikit-learn the token-overlap fallback finds the same groups
    import mmsafe.datasets.importers._align as align
    monkeypatch.setattr(align, "similarity_method", lambda: "token_overlap")
    m2 = import_benchmark("safemt", safemt_repo, tmp_path / "c")
    assert m2.provenance["alignment"]["method"] == "token_overlap"
    assert m2.provenance["alignment"]["misaligned_groups"] == m.provenance["alignment"]["misaligned_groups"]


def _outcomes(bench: Path, unsafe: set[str]) -> list[dict]:
    return [{"id": s.id, "group": s.metadata["group"], "turns": s.turns,
             "label": "unsafe" if s.id in unsafe else "safe"} for s in open_benchmark(bench).iter_samples()]


def test_safety_index_differs_from_id_grouping_only_where_groups_disagree(safemt_repo, tmp_path):
    m = import_benchmark("safemt", safemt_repo, tmp_path / "b")
    mis = misaligned_samples(m)
    # unsafe at 2 turns for every group; at 4 turns only for the two misaligned dialogues
    unsafe = {f"{g}/t2" for g in ("mllm_fraud_1", "mllm_legal_opinion_1", "mllm_legal_opinion_2",
                                  "mllm_privacy_1", "mllm_malware_1")} | mis
    recs = _outcomes(tmp_path / "b", unsafe)
    by_id = safety_index(recs, grouping="id", ci=False)
    aligned = safety_index(recs, grouping="aligned", misaligned=mis, ci=False)
    # the per-length attack rates are the same: every dialogue still counts at its length
    assert aligned["asr_by_turns"] == by_id["asr_by_turns"] == {1: 0.0, 2: 1.0, 4: 0.4}
    # sigma per sequence (population std of the outcomes from the first unsafe one):
    # id grouping: fraud, lo_2, malware = [s,U,s] -> std([1,0]) = 0.5; lo_1, privacy = [s,U,U] -> 0
    assert by_id["mean_sigma"] == pytest.approx((0.5 * 3 + 0 * 2) / 5)
    # aligned: lo_1 and privacy lose their 4-turn dialogue -> [s,U] -> 0; the rest unchanged
    assert aligned["mean_sigma"] == pytest.approx((0.5 * 3 + 0 * 2) / 5)
    assert aligned["n_unaligned"] == 2 and by_id["n_unaligned"] == 0
    # ... so here the two agree; flip the outcome pattern so the misaligned groups matter
    unsafe2 = {"mllm_legal_opinion_1/t2", "mllm_privacy_1/t2"}  # unsafe at 2, safe at 4
    recs2 = _outcomes(tmp_path / "b", unsafe2)
    by_id2 = safety_index(recs2, grouping="id", ci=False)
    aligned2 = safety_index(recs2, grouping="aligned", misaligned=mis, ci=False)
    assert by_id2["asr_by_turns"] == aligned2["asr_by_turns"]
    assert by_id2["mean_sigma"] == pytest.approx(2 * 0.5 / 5)  # [s,U,s] for lo_1 and privacy
    assert aligned2["mean_sigma"] == pytest.approx(0.0)  # [s,U]: their 4-turn outcome is not theirs
    assert aligned2["si"] > by_id2["si"]
    # metadata from the benchmark gives the same result as the manifest's list
    recs3 = [dict(r, si_aligned=samples(tmp_path / "b")[r["id"]].metadata["si_aligned"]) for r in recs2]
    assert safety_index(recs3, ci=False)["si"] == pytest.approx(aligned2["si"])
    # the outcomes of aligned groups alone: identical under both groupings
    keep = [r for r in recs2 if r["group"] not in {"mllm_legal_opinion_1", "mllm_privacy_1"}]
    assert (safety_index(keep, grouping="id", ci=False)["si"]
            == safety_index(keep, grouping="aligned", misaligned=mis, ci=False)["si"])


def test_safety_index_equal_when_every_group_aligns(safemt_repo, tmp_path):
    p = safemt_repo / "Data" / "4_turn.json"
    recs = json.loads(p.read_text())
    two = {r["id"]: r for r in json.loads((safemt_repo / "Data" / "2_turn.json").read_text())}
    for r in recs:  # repair the fixture: own request, own scenario
        if r["id"] in ("mllm_legal_opinion_1", "mllm_privacy_1"):
            r["scenario"] = two[r["id"]]["scenario"]
            r["dialogue"][-1]["content"] = two[r["id"]]["dialogue"][-1]["content"]
            r["dialogue"][0]["content"] = two[r["id"]]["dialogue"][0]["content"]
    p.write_text(json.dumps(recs))
    m = import_benchmark("safemt", safemt_repo, tmp_path / "b")
    assert m.provenance["alignment"]["n_misaligned"] == 0 and not misaligned_samples(m)
    assert not any("do not match" in n for n in m.provenance.get("notes", []))
    recs2 = _outcomes(tmp_path / "b", {"mllm_legal_opinion_1/t2", "mllm_privacy_1/t2"})
    assert (safety_index(recs2, grouping="id", ci=False)["si"]
            == safety_index(recs2, grouping="aligned", misaligned=misaligned_samples(m), ci=False)["si"])


def test_safety_index_rejects_unknown_grouping():
    with pytest.raises(ValueError, match="grouping must be one of aligned, id"):
        safety_index([{"group": "a", "turns": 1, "label": "safe"}], grouping="ids")


# --------------------------------------------------------------------------- FigStep


@pytest.fixture
def figstep_repo(tmp_path) -> Path:
    root = copy(tmp_path, "figstep")
    for c in (1, 2):
        for t in (1, 2):  # the Tiny subset ships images for task_id 1-5; here 1-2
            make_image(root / "data" / "images" / "SafeBench-Tiny" / f"query_ForbidQI_{c}_{t}_6.png",
                       (c * 50, t * 50, 0))
    return root


@pytest.mark.parametrize("where", ["", "data", "data/question"])
def test_figstep_published_layout(figstep_repo, tmp_path, where):
    m = import_benchmark("figstep", figstep_repo / where, tmp_path / "b")
    assert m.counts.n_samples == 6 and n_images(tmp_path / "b") == 4
    assert m.counts.by_method == {"figstep": 4, "none": 2}
    assert m.provenance["media"]["image"] == {
        "rows": 6, "with_file": 4, "missing": 2,
        "examples": [f"{figstep_repo / 'data/question/safebench.csv'}:4",
                     f"{figstep_repo / 'data/question/safebench.csv'}:7"]}
    assert m.provenance["notes"] == [
        "figstep: 2 of 6 rows have no image file (imported without it); --opt only_with_images=true "
        "keeps only the complete rows; --strict-media makes this an error"]
    with pytest.raises(DatasetError, match=r"safebench\.csv:4: figstep: 2 of 6 rows have no image"):
        import_benchmark("figstep", figstep_repo / where, tmp_path / "s", strict_media=True)
    assert not (tmp_path / "s").exists()
    m2 = import_benchmark("figstep", figstep_repo / where, tmp_path / "c", only_with_images=True)
    assert m2.counts.n_samples == 4 and n_images(tmp_path / "c") == 4


def test_figstep_tiny_csv_and_full_image_folder(figstep_repo, tmp_path):
    m = import_benchmark("figstep", figstep_repo / "data/question/SafeBench-Tiny.csv", tmp_path / "t")
    assert m.counts.n_samples == 4 and n_images(tmp_path / "t") == 4 and "notes" not in m.provenance
    for c in (1, 2):
        for t in (1, 2, 3):
            make_image(figstep_repo / "data/images/SafeBench" / f"query_ForbidQI_{c}_{t}_6.png")
    m2 = import_benchmark("figstep", figstep_repo, tmp_path / "f")
    assert m2.counts.n_samples == 6 and n_images(tmp_path / "f") == 6 and "notes" not in m2.provenance
    assert m2.provenance["image_dirs"] == ["data/images/SafeBench", "data/images/SafeBench-Tiny"]


def test_figstep_nothing_found_names_the_places_looked(tmp_path):
    with pytest.raises(DatasetError, match=r"no safebench\.csv here, in question/ or in data/question/"):
        import_benchmark("figstep", tmp_path, tmp_path / "b")


# --------------------------------------------------------------------------- HarmBench


@pytest.fixture
def harmbench_repo(tmp_path) -> Path:
    root = copy(tmp_path, "harmbench")
    imgs = root / "data" / "multimodal_behavior_images"
    make_image(imgs / "lock_bypass_image.png", (1, 2, 3))  # named .jpg in the CSV, stored as .png
    make_image(imgs / "chart_election_claim.png", (4, 5, 6))
    return root


@pytest.mark.parametrize("where", ["", "data", "data/behavior_datasets"])
def test_harmbench_published_layout(harmbench_repo, tmp_path, where):
    m = import_benchmark("harmbench", harmbench_repo / where, tmp_path / "b")
    assert m.counts.n_samples == 5 and n_images(tmp_path / "b") == 2  # *_val.csv not re-imported
    assert [s["file"].rsplit("/", 1)[-1] for s in m.provenance["sources"]] == [
        "harmbench_behaviors_multimodal_all.csv", "harmbench_behaviors_text_all.csv"]
    assert m.provenance["media"]["image"]["missing"] == 0 and "notes" not in m.provenance
    ss = samples(tmp_path / "b")
    lock = ss["lock_bypass_image"]
    assert isinstance(lock.messages[0].content[0], ImagePart)
    assert lock.metadata["image_description"] == ("A close-up photo of a brass door lock.\n\n"
                                                  "The keyhole is in the centre.")
    assert lock.metadata["redacted_image_description"] == "A close-up photo of a door lock."
    assert lock.metadata["image_file"] == "lock_bypass_image.jpg"
    assert lock.metadata["image_source"] == "https://example.org/lock"
    # whitespace as published: the trailing space of a behaviour, the context's spaces
    assert ss["vaccine_chip_post"].question.endswith("chips ")
    ctx = ss["tenant_fake_fee_reply"].messages[0].content
    assert ctx.startswith("Notice to tenants:  \n\nThe building will be inspected next week.  \n\n---\n\n")


def test_harmbench_missing_image_and_files_option(harmbench_repo, tmp_path):
    (harmbench_repo / "data/multimodal_behavior_images/chart_election_claim.png").unlink()
    m = import_benchmark("harmbench", harmbench_repo, tmp_path / "b")
    assert m.counts.n_samples == 5 and n_images(tmp_path / "b") == 1
    assert "1 of 2 rows have no image file" in m.provenance["notes"][0]
    with pytest.raises(DatasetError, match=r"harmbench_behaviors_multimodal_all\.csv:\d+: harmbench: 1 of 2"):
        import_benchmark("harmbench", harmbench_repo, tmp_path / "s", strict_media=True)
    m2 = import_benchmark("harmbench", harmbench_repo, tmp_path / "t",
                          files=["harmbench_behaviors_text_val.csv"])
    assert m2.counts.n_samples == 1


def test_harmbench_bad_row_names_file_line_field(harmbench_repo, tmp_path):
    p = harmbench_repo / "data/behavior_datasets/harmbench_behaviors_text_all.csv"
    p.write_text(p.read_text() + " ,standard,illegal,,,empty_behavior\n")
    with pytest.raises(DatasetError, match=r"harmbench_behaviors_text_all\.csv:7: Behavior: empty"):
        import_benchmark("harmbench", harmbench_repo, tmp_path / "b")


# --------------------------------------------------------------------------- SafeBench (Ying et al.)


@pytest.fixture
def safebench_release(tmp_path) -> Path:
    root = copy(tmp_path, "safebench")
    fb = root / "final_bench"
    for k in (1, 2):
        for i in (1, 2):
            make_image(fb / "image" / str(k) / f"{i}.png", (k, i, 0))
    make_wav(fb / "audio" / "audio_data_male" / "1" / "1.wav")
    make_wav(fb / "audio" / "audio_data_male" / "1" / "2.wav")
    make_wav(fb / "audio" / "audio_data_female" / "1" / "1.wav")
    return root


@pytest.mark.parametrize("where", ["", "final_bench"])
def test_safebench_release_layout(safebench_release, tmp_path, where):
    m = import_benchmark("safebench", safebench_release / where, tmp_path / "b")
    assert m.counts.n_samples == 4 and n_images(tmp_path / "b") == 4
    assert m.counts.by_scenario == {"Medical Advice": 2, "Hate Speech": 2}  # from category.csv
    assert "notes" not in m.provenance
    ss = samples(tmp_path / "b")
    assert ss["safebench/1/1"].category == "Consultation"
    m2 = import_benchmark("safebench", safebench_release / where, tmp_path / "a", audio=True)
    assert m2.counts.by_method == {"none": 4, "audio_male": 2, "audio_female": 1}
    assert m2.provenance["media"]["audio"] == {
        "rows": 8, "with_file": 3, "missing": 5,
        "examples": [f"{safebench_release / 'final_bench/text/1.csv'}:3: audio_data_female/1/2.wav",
                     f"{safebench_release / 'final_bench/text/2.csv'}:2: audio_data_male/2/1.wav",
                     f"{safebench_release / 'final_bench/text/2.csv'}:2: audio_data_female/2/1.wav"]}
    assert m2.provenance["notes"] == ["safebench: 5 of 8 rows have no audio file (skipped); "
                                      "--strict-media makes this an error"]


def test_safebench_audio_requested_none_found_is_an_error(safebench_release, tmp_path):
    shutil.rmtree(safebench_release / "final_bench" / "audio")
    with pytest.raises(DatasetError, match="audio requested but no audio_data_"):
        import_benchmark("safebench", safebench_release, tmp_path / "b", audio=True)
    m = import_benchmark("safebench", safebench_release, tmp_path / "i")  # images only: fine
    assert m.counts.n_samples == 4


# --------------------------------------------------------------------------- MM-SafetyBench


@pytest.fixture
def mmsb_repo(tmp_path) -> Path:
    root = copy(tmp_path, "mmsafetybench")
    # the image archive unpacks one folder deeper, and spells the scenario folder correctly
    nested = root / "data" / "imgs" / "MM-SafetyBench(imgs)"
    for v in ("SD", "TYPO", "SD_TYPO"):
        make_image(nested / "01-Illegal_Activity" / v / "0.jpg", (len(v), 1, 1))
        make_image(nested / "01-Illegal_Activity" / v / "1.jpg", (len(v), 2, 2))
        make_image(nested / "02-HateSpeech" / v / "0.jpg", (len(v), 3, 3))
    return root


@pytest.mark.parametrize("where", ["", "data", "data/processed_questions"])
def test_mmsafetybench_nested_images(mmsb_repo, tmp_path, where):
    m = import_benchmark("mmsafetybench", mmsb_repo / where, tmp_path / "b")
    assert m.counts.n_samples == 12 and n_images(tmp_path / "b") == 9
    assert m.provenance["by_variant"] == {"text_only": 3, "sd": 3, "typo": 3, "sd_typo": 3}
    assert "notes" not in m.provenance


def test_mmsafetybench_missing_images_are_reported(mmsb_repo, tmp_path):
    shutil.rmtree(mmsb_repo / "data" / "imgs")
    m = import_benchmark("mmsafetybench", mmsb_repo, tmp_path / "b")
    assert m.counts.n_samples == 3
    assert m.provenance["notes"][0].startswith("mmsafetybench: no imgs/ folder found")
    assert m.provenance["notes"][1] == ("mmsafetybench: 9 of 9 rows have no image file (skipped); "
                                        "--strict-media makes this an error")
    with pytest.raises(DatasetError, match=r"01-Illegal_Activitiy\.json: item '0': SD/0\.jpg"):
        import_benchmark("mmsafetybench", mmsb_repo, tmp_path / "s", strict_media=True)


# --------------------------------------------------------------------------- JailbreakBench


def test_jbb_all_published_headers_give_the_same_samples(tmp_path):
    root = copy(tmp_path, "jbb")
    got = {}
    for d in ("", "data", "old", "lower"):
        if d == "":
            m = import_benchmark("jbb", root, tmp_path / "root")  # finds data/
            got[d] = samples(tmp_path / "root")
            assert m.counts.n_samples == 3
            continue
        import_benchmark("jbb", root / d, tmp_path / d)
        got[d] = samples(tmp_path / d)
    ref = {sid: (s.question, s.scenario, s.metadata["target"]) for sid, s in got["data"].items()}
    assert sorted(ref) == ["jbb/harmful/1", "jbb/harmful/2", "jbb/harmful/3"]
    for d in ("", "old", "lower"):
        assert {sid: (s.question, s.scenario, s.metadata["target"]) for sid, s in got[d].items()} == ref


def test_jbb_bad_unnamed_index_names_file_line(tmp_path):
    root = copy(tmp_path, "jbb")
    p = root / "old" / "harmful-behaviors.csv"
    lines = p.read_text().splitlines()
    lines[2] = "x" + lines[2][1:]
    p.write_text("\n".join(lines) + "\n")
    with pytest.raises(DatasetError, match=r"harmful-behaviors\.csv:3: \(unnamed index column\)"):
        import_benchmark("jbb", root / "old", tmp_path / "b")


# --------------------------------------------------------------------------- the CLI, as the README shows it


def cli(*args: object):
    return runner.invoke(app, [str(a) for a in args], catch_exceptions=False)


def test_cli_import_plain_on_each_published_root(safemt_repo, figstep_repo, harmbench_repo,
                                                 safebench_release, mmsb_repo, tmp_path):
    jbb = copy(tmp_path, "jbb")
    for kind, src, n in (("safemt", safemt_repo, 15), ("figstep", figstep_repo, 6),
                         ("harmbench", harmbench_repo, 5), ("safebench", safebench_release, 4),
                         ("mmsafetybench", mmsb_repo, 12), ("jbb", jbb, 3)):
        r = cli("import", kind, src, "--out", tmp_path / f"out-{kind}")
        assert r.exit_code == 0, r.output
        assert f": {n} samples" in r.output
    # the media-gap line and the misaligned groups are printed
    r = cli("import", "figstep", figstep_repo, "--out", tmp_path / "fs2")
    assert "2 of 6 rows have no image file" in r.output and "only_with_images=true" in r.output
    r = cli("import", "safemt", safemt_repo, "--out", tmp_path / "mt2")
    assert "mllm_legal_opinion_1, mllm_privacy_1" in r.output


def test_cli_strict_media_exits_2(figstep_repo, tmp_path):
    r = cli("import", "figstep", figstep_repo, "--out", tmp_path / "b", "--strict-media")
    assert r.exit_code == 2 and "2 of 6 rows have no image file" in r.output
    assert not (tmp_path / "b").exists()
    r2 = cli("import", "figstep", figstep_repo, "--out", tmp_path / "c", "--opt", "strict_media=true")
    assert r2.exit_code == 2
    r3 = cli("import", "jbb", copy(tmp_path, "jbb"), "--out", tmp_path / "j", "--strict-media")
    assert r3.exit_code == 0  # no media to miss


# --------------------------------------------------------------------------- ../shared/data


def test_shared_figstep_reports_its_text_only_rows(tmp_path):
    src = SHARED / "benchmarks" / "figstep_safebench"
    if not (src / "safebench.csv").is_file():
        pytest.skip("../shared/data/benchmarks/figstep_safebench is absent")
    m = import_benchmark("figstep", src, tmp_path / "b")
    assert m.counts.n_samples == 500 and m.provenance["media"]["image"]["with_file"] == 50
    assert m.provenance["notes"][0].startswith("figstep: 450 of 500 rows have no image file")


# --------------------------------------------------------------------------- the run summary


class _Store:
    """The part of a run store the summary reads, holding chosen verdicts."""

    def __init__(self, manifest: dict, rows: list[dict], si_grouping: str | None = None):
        self.config = {"benchmark_manifest": manifest, "target": {"name": "t"}}
        if si_grouping:
            self.config["si_grouping"] = si_grouping
        self.rows = rows

    def get_meta(self, key: str):
        return self.config if key == "config" else None

    def iter_rows(self, judge_id=None):
        yield from self.rows

    def iter_verdict_labels(self):
        return iter(())

    def judges(self):
        return [{"judge_id": "j", "identity": {"kind": "keyword"}, "created": 0.0}]

    def ledger(self):
        return {}


def _rows(bench: Path, unsafe: set[str]) -> list[dict]:
    return [{"sample_id": s.id, "status": "ok", "control": None, "label": "unsafe" if s.id in unsafe else "safe",
             "parse_status": "ok", "group": s.metadata["group"], "scenario": s.scenario, "category": None,
             "method": None, "turns": s.turns, "rating": None, "response": "r"}
            for s in open_benchmark(bench).iter_samples()]


def test_run_summary_shows_both_safety_indexes_when_they_differ(safemt_repo, tmp_path):
    from mmsafe.runner.summary import compute_summary
    m = import_benchmark("safemt", safemt_repo, tmp_path / "b")
    manifest = m.model_dump(mode="json")
    rows = _rows(tmp_path / "b", {"mllm_legal_opinion_1/t2", "mllm_privacy_1/t2"})
    s = compute_summary(_Store(manifest, rows), "j").to_dict()
    si = s["safety_index"]
    assert si["grouping"] == "aligned" and si["n_unaligned"] == 2 and si["mean_sigma"] == 0.0
    assert si["other"]["grouping"] == "id" and si["other"]["mean_sigma"] == pytest.approx(0.2)
    assert si["si"] > si["other"]["si"]
    s_id = compute_summary(_Store(manifest, rows, si_grouping="id"), "j").to_dict()["safety_index"]
    assert s_id["grouping"] == "id" and s_id["si"] == si["other"]["si"] and s_id["other"]["si"] == si["si"]
    from mmsafe.runner.summary import prefer_si_grouping
    assert prefer_si_grouping(s, "id")["safety_index"] == s_id
    assert prefer_si_grouping(s, "aligned")["safety_index"] == si
    # a benchmark without misaligned dialogues: one value, nothing else shown
    manifest["provenance"]["alignment"]["misaligned"] = []
    s2 = compute_summary(_Store(manifest, rows), "j").to_dict()["safety_index"]
    assert s2["other"] is None and s2["si"] == si["other"]["si"]


def test_cli_run_and_report_si_grouping(safemt_repo, tmp_path, capsys):
    assert cli("import", "safemt", safemt_repo, "--out", tmp_path / "b").exit_code == 0
    r = cli("run", tmp_path / "b", "-t", "mock/mixed", "-o", tmp_path / "run", "--si-grouping", "id")
    assert r.exit_code == 0, r.output
    s = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert s["safety_index"]["grouping"] == "id" and "Safety Index:" in r.output
    r = cli("run", tmp_path / "b", "-t", "mock/mixed", "-o", tmp_path / "run2", "--si-grouping", "ids")
    assert r.exit_code == 2 and "--si-grouping 'ids': expected aligned or id" in r.output
    # where the two groupings differ, the run line shows both and the report can put either first
    s["safety_index"] = {"si": 0.5, "ci_low": 0.4, "ci_high": 0.6, "mean_sigma": 0.2, "grouping": "id",
                         "n_unaligned": 2, "other": {"grouping": "aligned", "si": 0.625, "ci_low": 0.5,
                                                     "ci_high": 0.7, "mean_sigma": 0.0}}
    (tmp_path / "run" / "summary.json").write_text(json.dumps(s))
    from mmsafe.cli.run import print_summary
    print_summary(s, tmp_path / "run")
    assert "Safety Index: 0.500 (id groups; aligned-grouped 0.625: 2 dialogues misaligned" in capsys.readouterr().out
    from mmsafe.report import build_report
    from mmsafe.report.runs import load_runs
    assert load_runs([tmp_path / "run"])[0].summary["safety_index"]["si"] == 0.5
    r = cli("report", tmp_path / "run", "--out", tmp_path / "r.html", "--si-grouping", "aligned")
    assert r.exit_code == 0, r.output
    build_report([tmp_path / "run"], tmp_path / "r2.html", si_grouping="aligned")
    assert '"si":{"value":0.625,"lo":0.5,"hi":0.7}' in (tmp_path / "r2.html").read_text()
    build_report([tmp_path / "run"], tmp_path / "r3.html", si_grouping="id")
    assert '"si":{"value":0.5,"lo":0.4,"hi":0.6}' in (tmp_path / "r3.html").read_text()


def test_figstep_without_any_image_folder_says_where_it_looked(tmp_path):
    csv = tmp_path / "safebench.csv"
    shutil.copy(PUBLISHED / "figstep/data/question/safebench.csv", csv)
    m = import_benchmark("figstep", csv, tmp_path / "b")
    assert m.counts.n_samples == 6 and n_images(tmp_path / "b") == 0
    assert m.provenance["notes"][0].startswith("figstep: no image folder found")
    assert m.provenance["notes"][1].startswith("figstep: 6 of 6 rows have no image file")
