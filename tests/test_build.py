"""`mmsafe build` end to end: CLI, stage caching / resume, the benchmark it writes, taxonomy discovery."""

from __future__ import annotations

import json

import pytest
import yaml
from PIL import Image
from typer.testing import CliRunner

from _build_servers import BuildLLM
from mmsafe.attacks import audio
from mmsafe.cli import app
from mmsafe.datasets import open_benchmark
from mmsafe.taxonomy import load_taxonomy

runner = CliRunner()
SCEN = ["fraud", "malware_generation", "hate_speech"]


@pytest.fixture(scope="module")
def srv():
    s = BuildLLM().start()
    yield s
    s.stop()


def write_config(tmp_path, srv, **over):
    engine = "espeak" if audio.espeak_available() else "openai"
    cfg = {
        "name": "built-test",
        "models": {"generator": srv.spec("gen"), "scorer": srv.spec("scorer"), "critic": srv.spec("critic")},
        "generate": {"scenarios": SCEN, "candidates_per_scenario": 12, "batch_size": 6, "top_k": 4,
                     "cross_modal": {"fraction": 0.5}},
        "image": {"t2i": {"base_url": srv.url, "model": "img", "size": "128x128"}},
        "augment": {"text": ["paraphrase", "base64", "role_play"], "visual": ["figstep", "noise"],
                    "audio": {"engine": engine, "base_url": srv.url,
                              "voices": ["en-us+m3", "en-gb+f3"] if engine == "espeak" else ["alloy", "nova"]},
                    "per_item": 2},
        "select": {"size": 12, "reference_models": [srv.spec("ref-safe-a"), srv.spec("ref-mixed"), srv.spec("ref-unsafe")]},
    }
    for k, v in over.items():
        if isinstance(v, dict) and isinstance(cfg.get(k), dict):
            cfg[k] = {**cfg[k], **v}
        else:
            cfg[k] = v
    p = tmp_path / "build.yaml"
    p.write_text(yaml.safe_dump(cfg))
    return p


def test_build_end_to_end_cache_and_resume(tmp_path, srv):
    srv.reset()
    cfg = write_config(tmp_path, srv)
    out = tmp_path / "bench"
    r = runner.invoke(app, ["build", "--config", str(cfg), "--out", str(out)])
    assert r.exit_code == 0, r.output
    assert "GAP" in r.output and "selected" in r.output
    b = open_benchmark(out)
    samples = list(b.iter_samples())
    assert len(samples) == 12 and len({s.id for s in samples}) == 12
    for s in samples:
        assert s.scenario in SCEN and s.source
        for a in s.assets():
            data = b.read_asset(a)  # sha256 verified
            if a.type == "image":
                Image.open(b.asset_path(a)).verify()
            else:
                assert audio.wav_duration(data) > 0
        sel = s.metadata["selection"]
        assert set(sel) >= {"rank", "objective", "sep", "harm", "outcomes"} and len(sel["outcomes"]) == 3
    m = b.manifest
    led = m.ledger  # type: ignore[attr-defined]
    assert set(led["agents"]) == {"preprocess", "generate", "image", "augment", "select"}
    for agent in ("generate", "image", "augment", "select"):
        a = led["agents"][agent]
        assert a["calls"] > 0 and a["input_tokens"] > 0 and a["wall_s"] > 0 and "cost_usd" in a
    assert led["agents"]["image"]["image_calls"] > 0
    assert led["total"]["calls"] == sum(a["calls"] for a in led["agents"].values())
    q = m.quality  # type: ignore[attr-defined]
    assert set(q) == {"selected", "random", "all"} and q["selected"]["n_items"] == 12
    assert m.provenance["stages"]["generate"]["report"]["totals"]["kept"] == 12
    assert m.provenance["config"]["select"]["size"] == 12
    n_requests = sum(srv.counts.values())
    tts_http = 0 if m.provenance["config"]["augment"]["audio"]["engine"] == "espeak" else \
        led["agents"]["augment"].get("tts_calls", 0)
    # every request the server saw is in the ledger (chat calls + image calls + speech calls)
    assert n_requests == led["total"]["calls"] + led["agents"]["image"]["image_calls"] + tts_http

    # unchanged: every stage skipped, no request sent
    r = runner.invoke(app, ["build", "--config", str(cfg), "--out", str(out)])
    assert r.exit_code == 0, r.output
    assert sum(srv.counts.values()) == n_requests
    assert all(st["skipped"] for st in open_benchmark(out).manifest.provenance["stages"].values())

    # only the select config changed: earlier stages skipped, select re-run from the reply cache
    cfg = write_config(tmp_path, srv, select={"size": 8})
    r = runner.invoke(app, ["build", "--config", str(cfg), "--out", str(out)])
    assert r.exit_code == 0, r.output
    m2 = open_benchmark(out).manifest
    st = m2.provenance["stages"]
    assert [k for k, v in st.items() if not v["skipped"]] == ["select"]
    assert m2.counts.n_samples == 8
    assert m2.ledger["agents"]["select"]["calls"] == 0 and m2.ledger["agents"]["select"]["cached"] > 0
    assert sum(srv.counts.values()) == n_requests

    # a crashed stage (no done.json) is re-run on the next build; its LLM replies and
    # text-to-image pictures come from the work dir's caches, so nothing is paid twice
    (tmp_path / "bench.work" / "image" / "done.json").unlink()
    r = runner.invoke(app, ["build", "--config", str(cfg), "--out", str(out)])
    assert r.exit_code == 0, r.output
    m3 = open_benchmark(out).manifest
    st = m3.provenance["stages"]
    assert not st["image"]["skipped"] and st["generate"]["skipped"] and st["augment"]["skipped"]
    assert m3.ledger["agents"]["image"]["calls"] == 0 and m3.ledger["agents"]["image"].get("image_calls", 0) == 0
    assert m3.ledger["agents"]["image"]["image_cached"] > 0
    assert sum(srv.counts.values()) == n_requests

    # the built benchmark is a standard one: `mmsafe run` takes it
    run_dir = tmp_path / "run"
    r = runner.invoke(app, ["run", str(out), "--target", "mock/refuser", "--out", str(run_dir)])
    assert r.exit_code == 0, r.output
    assert json.loads((run_dir / "summary.json").read_text())["n_samples"] == 8


def test_build_stage_alone_and_errors(tmp_path, srv):
    cfg = write_config(tmp_path, srv, stages=["generate", "image"])
    work = tmp_path / "w"
    r = runner.invoke(app, ["build", "stage", "image", "--config", str(cfg), "--work", str(work)])
    assert r.exit_code == 2 and "needs the output of 'generate'" in r.output
    r = runner.invoke(app, ["build", "stage", "generate", "--config", str(cfg), "--work", str(work)])
    assert r.exit_code == 0, r.output
    assert json.loads(r.stdout)["items"] > 0
    r = runner.invoke(app, ["build", "stage", "generate", "--config", str(cfg), "--work", str(work)])
    assert json.loads(r.stdout)["skipped"] is True
    r = runner.invoke(app, ["build", "stage", "image", "--config", str(cfg), "--work", str(work)])
    assert r.exit_code == 0, r.output
    r = runner.invoke(app, ["build", "write", "--config", str(cfg), "--out", str(tmp_path / "b2"), "--work", str(work)])
    assert r.exit_code == 0, r.output
    b = open_benchmark(tmp_path / "b2")
    assert len(b) == json.loads((work / "image" / "done.json").read_text())["n_items"]
    # bad config: one line, exit 2
    bad = tmp_path / "bad.yaml"
    bad.write_text("generate: {top_k: -1}\n")
    r = runner.invoke(app, ["build", "--config", str(bad), "--out", str(tmp_path / "x")])
    assert r.exit_code == 2 and "generate.top_k" in r.output
    bad.write_text("stages: [generate, polish]\n")
    r = runner.invoke(app, ["build", "--config", str(bad), "--out", str(tmp_path / "x")])
    assert r.exit_code == 2 and "polish" in r.output
    # select without enough reference models
    cfg = write_config(tmp_path, srv, stages=["generate", "select"], select={"size": 3, "reference_models": [srv.spec("ref-safe-a")]})
    r = runner.invoke(app, ["build", "--config", str(cfg), "--out", str(tmp_path / "y"), "--work", str(work)])
    assert r.exit_code == 2 and "at least 3" in r.output


def test_build_taxonomy_discovery_cli_and_use(tmp_path, srv):
    out = tmp_path / "tax.yaml"
    r = runner.invoke(app, ["build", "taxonomy", "--panel", srv.spec("panel-a"), "--panel", srv.spec("panel-b"),
                            "--panel", srv.spec("panel-c"), "--panel", srv.spec("gen-refuse"),
                            "--merger", srv.spec("gen"), "--out", str(out), "--embedder", "tfidf"])
    assert r.exit_code == 0, r.output
    tax = load_taxonomy(out)
    ids = [s["id"] for s in tax["scenarios"]]
    assert len(ids) == len(set(ids))
    # the two weapons proposals, the two malware proposals and the two self-harm ones were merged
    assert len(ids) == 6 and tax["provenance"]["n_proposals"] == 9
    merged = [s for s in tax["scenarios"] if len(s["provenance"]["members"]) == 2]
    assert len(merged) == 3 and all(s["provenance"]["merge"].startswith("openai/gen") for s in merged)
    assert all(len(s["provenance"]["proposed_by"]) == 2 for s in merged)
    assert any("error" in p for p in tax["provenance"]["panel_replies"])  # the refusing panel member
    wmd = next(s for s in tax["scenarios"] if "weapon" in s["id"])
    assert wmd["mlcommons"] == ["S9"] and wmd["provenance"]["mapped_from"]["scenario"] == "chemical_biological_weapons"
    text = out.read_text()
    assert text.startswith("# Risk taxonomy discovered")
    # and a build can use it
    cfg = write_config(tmp_path, srv, taxonomy=str(out), stages=["generate"],
                       generate={"scenarios": [ids[0]], "cross_modal": {"fraction": 0}})
    r = runner.invoke(app, ["build", "--config", str(cfg), "--out", str(tmp_path / "tb")])
    assert r.exit_code == 0, r.output
    assert set(open_benchmark(tmp_path / "tb").manifest.counts.by_scenario) == {ids[0]}


def test_build_budget_stops_cleanly_and_resumes(tmp_path, srv):
    price = {"input": 10000.0, "output": 10000.0}  # USD per 1M tokens: a few calls spend the budget
    # the budget is a ceiling: each call reserves its worst case (prompt + max_tokens) before it is sent,
    # so max_tokens bounds it and a few calls fit under $50 before the stage stops
    models = {"generator": {"spec": srv.spec("gen"), "price": price, "params": {"max_tokens": 512}},
              "scorer": {"spec": srv.spec("scorer"), "price": price, "params": {"max_tokens": 512}}}
    cfg = write_config(tmp_path, srv, stages=["generate"], max_cost=50.0, models=models)
    out = tmp_path / "bb"
    r = runner.invoke(app, ["build", "--config", str(cfg), "--out", str(out)])
    assert r.exit_code == 2 and "max_cost" in r.output and not out.exists()
    cfg = write_config(tmp_path, srv, stages=["generate"], max_cost=1000.0, models=models)
    r = runner.invoke(app, ["build", "--config", str(cfg), "--out", str(out)])
    assert r.exit_code == 0, r.output
    led = open_benchmark(out).manifest.ledger["agents"]["generate"]
    assert led["cached"] > 0 and led["cost_usd"] > 0  # the first attempt's replies were reused
