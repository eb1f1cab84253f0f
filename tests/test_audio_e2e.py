"""Audio end to end: the SafeBench audio track and TTS items from ``mmsafe build`` imported
and run against loopback servers that decode what they receive and check it is the WAV that
was imported (OpenAI-compatible ``input_audio``; Gemini inline bytes), targets without audio
refused up front, the wire's format rules (wav/mp3 only), and the local ``hf`` provider's
audio encoding (no weights: generation with audio is not wired and says so)."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import io
import json
import math
import shutil
import struct
import wave
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from _media_server import REFUSAL, MediaChecker
from conftest import make_png
from mmsafe.attacks import audio as audio_mod
from mmsafe.cli import app
from mmsafe.datasets import open_benchmark
from mmsafe.models import CostLedger, ModelClient, build_provider, resolve_endpoint
from mmsafe.types import AssetError, AudioPart, Message, TextPart

pytestmark = pytest.mark.filterwarnings(
    "ignore:Inheritance class AiohttpClientSession:DeprecationWarning")  # inside google-genai

FIXTURES = Path(__file__).parent / "fixtures" / "datasets"
runner = CliRunner()


def tone_wav(seconds: float, freq: float, rate: int = 16000) -> bytes:
    """A mono 16-bit PCM sine tone (a real, audible WAV; distinct per frequency/length)."""
    n = int(seconds * rate)
    frames = b"".join(struct.pack("<h", int(12000 * math.sin(2 * math.pi * freq * i / rate))) for i in range(n))
    buf = io.BytesIO()
    with wave.open(buf, "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(rate)
        w.writeframes(frames)
    return buf.getvalue()


@pytest.fixture(scope="module")
def checker():
    srv = MediaChecker().start()
    yield srv
    srv.stop()


@pytest.fixture
def safebench_audio(tmp_path) -> tuple[Path, dict[str, float]]:
    """SafeBench in its published layout with its audio track (two voices), imported with
    ``mmsafe import safebench --opt modality=audio``. -> (benchmark dir, {wav sha256: seconds})."""
    src = tmp_path / "safebench"
    shutil.copytree(FIXTURES / "safebench", src)
    for rel in ("1/1.png", "1/2.png", "2/0.png", "2/1.png"):
        (src / rel).parent.mkdir(parents=True, exist_ok=True)
        (src / rel).write_bytes(make_png(color=(len(rel) * 20, 10, 10)))
    wavs: dict[str, float] = {}
    for voice, item, secs, freq in (("male", 1, 0.5, 220), ("male", 2, 0.75, 330), ("female", 1, 0.25, 440)):
        data = tone_wav(secs, freq)
        p = src / f"audio_data_{voice}" / "1" / f"{item}.wav"
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(data)
        wavs[hashlib.sha256(data).hexdigest()] = secs
    out = tmp_path / "sb-audio"
    r = runner.invoke(app, ["import", "safebench", str(src), "-o", str(out), "--opt", "modality=audio"])
    assert r.exit_code == 0, r.output
    assert "3 samples" in r.output
    return out, wavs


def models_file(tmp_path: Path, entries: dict) -> Path:
    p = tmp_path / "models.yaml"
    p.write_text(yaml.safe_dump({"models": entries}))
    return p


def results(run: Path) -> list[dict]:
    return [json.loads(x) for x in (run / "results.jsonl").read_text().splitlines()]


# --------------------------------------------------------------------------- SafeBench audio track


def test_safebench_audio_track_runs_end_to_end_against_an_audio_target(safebench_audio, checker, tmp_path,
                                                                        monkeypatch):
    bench, wavs = safebench_audio
    b = open_benchmark(bench)
    assert b.manifest.counts.modalities == {"text": 3, "audio": 3}
    monkeypatch.setenv("MMSAFE_MODELS", str(models_file(tmp_path, {
        "audio-llm": {"spec": f"openai/need-audio@{checker.url}", "capabilities": {"audio": True}}})))
    checker.reset()
    r = runner.invoke(app, ["run", str(bench), "-t", "audio-llm", "-o", str(tmp_path / "run")])
    assert r.exit_code == 0, r.output
    assert checker.rejected == []
    # the server decoded each request's input_audio: exactly the imported WAVs, each once, full length
    got = {sha: secs for req in checker.received for sha, secs in zip(req["audio"], req["audio_seconds"])}
    assert len(checker.received) == 3 and got == pytest.approx(wavs)
    assert all(any("audio" in t.lower() for t in req["text"]) for req in checker.received)  # SafeBench's prompt
    rows = results(tmp_path / "run")
    assert len(rows) == 3 and all(row["error"] is None for row in rows)
    assert {row["response"] for row in rows} == {REFUSAL}


def test_a_target_without_audio_is_refused_before_any_request(safebench_audio, checker, tmp_path, monkeypatch):
    bench, _ = safebench_audio
    monkeypatch.setenv("MMSAFE_MODELS", str(models_file(tmp_path, {
        "vlm": {"spec": f"openai/any@{checker.url}", "capabilities": {"image": True}}})))
    checker.reset()
    r = runner.invoke(app, ["run", str(bench), "-t", "vlm", "-o", str(tmp_path / "run")])
    assert r.exit_code == 2, r.output
    assert "3 audio part(s) but the target takes no audio input" in r.output
    assert checker.received == [] and checker.rejected == [] and not (tmp_path / "run" / "results.jsonl").exists()


def test_safebench_audio_track_reaches_gemini_as_inline_wav(safebench_audio, tmp_path, monkeypatch):
    pytest.importorskip("google.genai")
    from _provider_servers import FakeGemini
    bench, wavs = safebench_audio
    srv = FakeGemini().start()
    try:
        monkeypatch.setenv("GEMINI_API_KEY", "g-test")
        monkeypatch.setenv("MMSAFE_MODELS", str(models_file(tmp_path, {
            "gem": {"spec": f"google/ok@{srv.url}/v1beta", "capabilities": {"audio": True}}})))
        r = runner.invoke(app, ["run", str(bench), "-t", "gem", "-o", str(tmp_path / "run")])
        assert r.exit_code == 0, r.output
        seen = {}
        for req in srv.requests:
            for part in req["body"]["contents"][0]["parts"]:
                inline = part.get("inlineData") or part.get("inline_data")
                if inline:
                    assert (inline.get("mimeType") or inline.get("mime_type")) == "audio/wav"
                    data = base64.urlsafe_b64decode(inline["data"])  # the SDK sends URL-safe base64
                    with wave.open(io.BytesIO(data)) as w:
                        seen[hashlib.sha256(data).hexdigest()] = w.getnframes() / w.getframerate()
        assert seen == pytest.approx(wavs)
        assert all("audio=1" in row["response"] for row in results(tmp_path / "run"))
    finally:
        srv.stop()


# --------------------------------------------------------------------------- the wire's audio formats


def send(spec: str, messages: list[Message], root: Path, **kw):
    async def go():
        c = ModelClient(build_provider(resolve_endpoint(spec, "target", backoff_base_s=0.001, **kw)), "target",
                        CostLedger())
        await c.start()
        try:
            return await c.chat(messages, root=root)
        finally:
            await c.close()
    return asyncio.run(go())


def test_mp3_goes_as_mp3_and_flac_is_refused_naming_the_file(checker, tmp_path):
    (tmp_path / "a.mp3").write_bytes(b"ID3\x04\x00\x00\x00\x00\x00\x00" + b"\xff\xfb\x90\x00" * 64)
    (tmp_path / "b.flac").write_bytes(b"fLaC" + b"\x00" * 64)
    checker.reset()
    msg = [Message(role="user", content=[AudioPart(path="a.mp3"), TextPart(text="What is said?")])]
    res = send(f"openai/need-audio@{checker.url}", msg, tmp_path, capabilities={"audio": True})
    assert res.ok, res.error
    assert checker.received[-1]["audio"] == [hashlib.sha256((tmp_path / "a.mp3").read_bytes()).hexdigest()]
    with pytest.raises(AssetError, match=r"^b\.flac: audio/flac cannot be sent as input_audio"):
        send(f"openai/need-audio@{checker.url}", [Message(role="user", content=[AudioPart(path="b.flac")])],
             tmp_path, capabilities={"audio": True})


# --------------------------------------------------------------------------- hf (no weights)


def test_hf_encodes_wav_for_an_audio_processor_and_says_generation_is_not_wired(tmp_path):
    pytest.importorskip("transformers")
    from mmsafe.models.base import ProviderError
    from mmsafe.models.hf_provider import HFProvider
    (tmp_path / "a.wav").write_bytes(tone_wav(0.5, 440, rate=8000))
    model_dir = tmp_path / "m"
    model_dir.mkdir()  # encode loads nothing
    p = HFProvider(resolve_endpoint(f"hf/{model_dir}", "target"))
    payload = p.encode([Message(role="user", content=[AudioPart(path="a.wav"), TextPart(text="Transcribe.")])],
                       tmp_path)
    (kind, (samples, rate)), text = payload["turns"][0][1]
    assert kind == "audio" and rate == 8000 and samples.shape == (4000,) and str(samples.dtype) == "float32"
    assert 0.35 < float(abs(samples).max()) <= 12000 / 32768 + 1e-6  # scaled to [-1, 1]
    assert text == ("text", "Transcribe.")
    with pytest.raises(ProviderError, match="audio input is not wired into local generation yet"):
        p._prompt(payload)
    (tmp_path / "bad.wav").write_bytes(b"RIFF\x00\x00\x00\x00WAVEjunk")
    with pytest.raises(AssetError, match=r"^bad\.wav: local models take audio as PCM WAV"):
        p.encode([Message(role="user", content=[AudioPart(path="bad.wav")])], tmp_path)


# --------------------------------------------------------------------------- TTS items from mmsafe build


@pytest.mark.skipif(not audio_mod.espeak_available(), reason="espeak-ng is not installed (apt-get install espeak-ng)")
def test_tts_items_from_mmsafe_build_run_end_to_end(checker, tmp_path, monkeypatch):
    from _build_servers import BuildLLM
    srv = BuildLLM().start()
    try:
        cfg = {
            "name": "tts-built",
            "models": {"generator": srv.spec("gen"), "scorer": srv.spec("scorer"), "critic": srv.spec("critic")},
            "generate": {"scenarios": ["fraud", "malware_generation"], "candidates_per_scenario": 6,
                         "batch_size": 6, "top_k": 3},
            "image": {"t2i": {"base_url": srv.url, "model": "img", "size": "128x128"}},
            # only spoken variants: every selected item is a TTS item
            "augment": {"audio": {"engine": "espeak", "voices": ["en-us+m3", "en-gb+f3"]}, "keep_original": False},
            "select": {"size": 6, "reference_models": [srv.spec("ref-safe-a"), srv.spec("ref-mixed"),
                                                       srv.spec("ref-unsafe")]},
        }
        (tmp_path / "build.yaml").write_text(yaml.safe_dump(cfg))
        r = runner.invoke(app, ["build", "--config", str(tmp_path / "build.yaml"), "--out", str(tmp_path / "b")])
        assert r.exit_code == 0, r.output
    finally:
        srv.stop()
    b = open_benchmark(tmp_path / "b")
    spoken = {}
    samples = list(b.iter_samples())
    assert samples and all(s.modalities >= {"audio"} for s in samples)
    for s in samples:
        for a in s.assets():
            if a.type == "audio":
                data = b.read_asset(a)
                spoken[a.sha256] = audio_mod.wav_duration(data)
    assert spoken, "the build wrote no TTS items"
    assert all(d > 0.3 for d in spoken.values())  # espeak spoke the question
    monkeypatch.setenv("MMSAFE_MODELS", str(models_file(tmp_path, {
        "omni": {"spec": f"openai/any@{checker.url}", "capabilities": {"audio": True, "image": True}}})))
    checker.reset()
    r = runner.invoke(app, ["run", str(tmp_path / "b"), "-t", "omni", "-o", str(tmp_path / "run")])
    assert r.exit_code == 0, r.output
    assert checker.rejected == []
    got = {sha: secs for req in checker.received for sha, secs in zip(req["audio"], req["audio_seconds"])}
    assert got == pytest.approx(spoken, abs=1e-3)  # every spoken item arrived as the WAV espeak wrote
