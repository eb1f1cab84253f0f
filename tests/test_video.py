"""Video parts end to end: reading and limits (mmsafe.media.video), the wire format each
provider sends (vLLM/SGLang ``video_url``, Gemini inline bytes, sampled frames for an
image-only target), and ``mmsafe run`` refusing up front what a target cannot take.

GIF cases need only Pillow; mp4/webm cases need PyAV (``mmsafe[video]``) and skip without it."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import io
import json
from pathlib import Path

import pytest
from PIL import Image
from pydantic import ValidationError
from typer.testing import CliRunner

from _media_server import MediaChecker
from mmsafe.cli import app
from mmsafe.media.video import check_video, poster_frame, probe, sample_frames
from mmsafe.models import CostLedger, ModelClient, build_provider, resolve_endpoint
from mmsafe.types import AssetError, Message, Sample, TextPart, VideoPart

try:
    import av
except ImportError:  # the [video] extra is not installed
    av = None
pytestmark = pytest.mark.filterwarnings(
    "ignore:Inheritance class AiohttpClientSession:DeprecationWarning")  # inside google-genai
needs_av = pytest.mark.skipif(av is None, reason="mp4/webm need PyAV: pip install 'mmsafe[video]'")

COLOURS = [(250, 0, 0), (0, 250, 0), (0, 0, 250), (250, 250, 0), (0, 250, 250), (250, 0, 250), (120, 120, 120),
           (250, 250, 250)]


def make_gif(path: Path, n: int = 8, frame_ms: int = 250) -> Path:
    ims = [Image.new("RGB", (32, 24), COLOURS[i % len(COLOURS)]) for i in range(n)]
    ims[0].save(path, save_all=True, append_images=ims[1:], duration=frame_ms, loop=0)
    return path


def make_clip(path: Path, seconds: float = 2.0, fps: int = 10) -> Path:
    """An mp4 (H.264) or webm (VP8) clip whose frame i has grey level 10*i."""
    import numpy as np
    codec = "libx264" if path.suffix == ".mp4" else "libvpx"
    with av.open(str(path), "w") as c:
        s = c.add_stream(codec, rate=fps)
        s.width, s.height, s.pix_fmt = 64, 48, "yuv420p"
        for i in range(int(seconds * fps)):
            frame = av.VideoFrame.from_ndarray(np.full((48, 64, 3), 10 * i, dtype=np.uint8), format="rgb24")
            for pkt in s.encode(frame):
                c.mux(pkt)
        for pkt in s.encode():
            c.mux(pkt)
    return path


def pixel(png: bytes) -> tuple[int, ...]:
    with Image.open(io.BytesIO(png)) as im:
        assert im.format == "PNG"
        return im.convert("RGB").getpixel((16, 12))


# --------------------------------------------------------------------------- reading and limits


def test_gif_probe_frames_and_poster_need_only_pillow(tmp_path):
    g = make_gif(tmp_path / "clip.gif")
    info = probe(str(g))
    assert (info.container, info.frames, info.duration_s, info.width, info.height) == ("gif", 8, 2.0, 32, 24)
    frames = sample_frames(str(g), 4)
    # the middle of each quarter: frames 1, 3, 5, 7
    assert [pixel(f) for f in frames] == [COLOURS[1], COLOURS[3], COLOURS[5], COLOURS[7]]
    assert len(sample_frames(str(g), 20)) == 8  # never more frames than the clip has
    assert pixel(poster_frame(str(g))) == COLOURS[0]


@needs_av
@pytest.mark.parametrize("ext", ["mp4", "webm"])
def test_mp4_and_webm_probe_frames_and_poster(tmp_path, ext):
    clip = make_clip(tmp_path / f"clip.{ext}", seconds=2.0, fps=10)
    info = probe(str(clip))
    assert info.container == ext and info.frames == 20 and abs(info.duration_s - 2.0) < 0.15
    assert (info.width, info.height) == (64, 48)
    greys = [pixel(f)[0] for f in sample_frames(str(clip), 4)]
    # frames at 0.25, 0.75, 1.25, 1.75 s are frames 2/3, 7/8, 12/13, 17/18: grey 10*i (lossy codec: +-8)
    assert all(abs(g - want) <= 12 for g, want in zip(greys, [25, 75, 125, 175])), greys
    assert greys == sorted(greys)
    assert pixel(poster_frame(str(clip)))[0] <= 30  # 10 % in: frame 2


def test_bad_videos_are_one_line_errors_naming_the_file(tmp_path):
    (tmp_path / "junk.gif").write_bytes(b"GIF89a this is not a gif")
    with pytest.raises(AssetError, match=r"^clips/junk\.gif: not a readable video"):
        check_video(str(tmp_path / "junk.gif"), "clips/junk.gif")
    long = make_gif(tmp_path / "long.gif", n=4, frame_ms=60_000)  # 4 minutes
    with pytest.raises(AssetError, match=r"long\.gif: 240\.0 s is over the 180-second video limit"):
        check_video(str(long))
    with pytest.raises(AssetError, match=r"over the 100-byte video limit"):
        check_video(str(make_gif(tmp_path / "ok.gif")), max_bytes=100)
    with pytest.raises(AssetError, match=r"nope\.gif: file not found"):
        check_video(str(tmp_path / "nope.gif"))
    with pytest.raises(ValidationError, match="not an mp4, webm or gif file"):
        VideoPart(path="clips/a.avi")


@needs_av
def test_corrupt_mp4_is_an_asset_error(tmp_path):
    (tmp_path / "bad.mp4").write_bytes(b"\x00\x00\x00\x18ftypmp42" + b"\x00" * 64)
    with pytest.raises(AssetError, match=r"^bad\.mp4: "):
        check_video(str(tmp_path / "bad.mp4"), "bad.mp4")


# --------------------------------------------------------------------------- wire formats


@pytest.fixture(scope="module")
def checker():
    srv = MediaChecker().start()
    yield srv
    srv.stop()


def video_message(path: str) -> list[Message]:
    return [Message(role="user", content=[VideoPart(path=path), TextPart(text="What happens in this clip?")])]


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


@pytest.mark.parametrize("ext", ["gif", pytest.param("mp4", marks=needs_av), pytest.param("webm", marks=needs_av)])
def test_openai_compatible_video_target_gets_a_video_url(checker, tmp_path, ext):
    checker.reset()
    clip = make_gif(tmp_path / "c.gif") if ext == "gif" else make_clip(tmp_path / f"c.{ext}")
    res = send(f"openai/need-video@{checker.url}", video_message(clip.name), tmp_path,
               capabilities={"video": True})
    assert res.ok, res.error
    got = checker.received[-1]
    mime = {"gif": "image/gif", "mp4": "video/mp4", "webm": "video/webm"}[ext]
    assert got["video"] == [(mime, hashlib.sha256(clip.read_bytes()).hexdigest())] and got["images"] == []


def test_image_only_target_gets_sampled_frames(checker, tmp_path):
    checker.reset()
    make_gif(tmp_path / "c.gif")
    res = send(f"openai/need-image@{checker.url}", video_message("c.gif"), tmp_path,
               capabilities={"image": True, "video": False, "video_frames": 4})
    assert res.ok, res.error
    got = checker.received[-1]
    assert got["video"] == [] and len(got["images"]) == 4
    want = [hashlib.sha256(f).hexdigest() for f in sample_frames(str(tmp_path / "c.gif"), 4)]
    assert got["images"] == want  # the frames, in clip order


def test_a_changed_video_file_is_refused_at_send(checker, tmp_path):
    clip = make_gif(tmp_path / "c.gif")
    part = VideoPart(path="c.gif", sha256=hashlib.sha256(clip.read_bytes()).hexdigest())
    make_gif(clip, n=3)  # edited after the benchmark was written
    checker.reset()
    with pytest.raises(AssetError, match=r"^c\.gif: sha256 does not match the benchmark"):
        send(f"openai/need-video@{checker.url}", [Message(role="user", content=[part])], tmp_path,
             capabilities={"video": True})
    assert checker.received == []  # nothing was sent


def test_gemini_gets_the_video_inline(tmp_path, monkeypatch):
    pytest.importorskip("google.genai")
    from _provider_servers import FakeGemini
    srv = FakeGemini().start()
    try:
        monkeypatch.setenv("GEMINI_API_KEY", "g-test")
        clip = make_gif(tmp_path / "c.gif")
        res = send(f"google/ok@{srv.url}/v1beta", video_message("c.gif"), tmp_path)
        assert res.ok, res.error
        parts = srv.requests[-1]["body"]["contents"][0]["parts"]
        inline = parts[0].get("inlineData") or parts[0].get("inline_data")
        assert (inline.get("mimeType") or inline.get("mime_type")) == "image/gif"
        assert base64.urlsafe_b64decode(inline["data"]) == clip.read_bytes()  # the SDK sends URL-safe base64
    finally:
        srv.stop()


@needs_av
def test_gemini_gets_mp4_with_its_video_mime(tmp_path, monkeypatch):
    pytest.importorskip("google.genai")
    from mmsafe.models.google_provider import encode_gemini_contents
    clip = make_clip(tmp_path / "c.mp4")
    payload = encode_gemini_contents(video_message("c.mp4"), tmp_path)
    blob = payload["contents"][0].parts[0].inline_data
    assert blob.mime_type == "video/mp4" and blob.data == clip.read_bytes()


def test_hf_provider_encodes_video_as_frames(tmp_path):
    pytest.importorskip("transformers")
    from mmsafe.models.hf_provider import HFProvider
    make_gif(tmp_path / "c.gif")
    model_dir = tmp_path / "m"
    model_dir.mkdir()  # encode needs no weights: nothing is loaded
    p = HFProvider(resolve_endpoint(f"hf/{model_dir}", "target", capabilities={"video_frames": 2}))
    turns = p.encode(video_message("c.gif"), tmp_path)["turns"]
    kinds = [k for k, _ in turns[0][1]]
    assert kinds == ["image", "image", "text"]
    assert [turns[0][1][i][1].getpixel((3, 3)) for i in (0, 1)] == [COLOURS[2], COLOURS[6]]


# --------------------------------------------------------------------------- mmsafe run


def video_bench(root: Path, clips: list[Path]) -> Path:
    from mmsafe.datasets.benchmark import BenchmarkWriter
    from mmsafe.types import BenchmarkManifest
    with BenchmarkWriter(root, BenchmarkManifest(name="videos"), overwrite=True) as w:
        for i, c in enumerate(clips):
            part = w.add_video(c, where=f"clip {i}")
            w.add(Sample(id=f"v{i}", question=f"harmful question {i}", scenario="Fraud",
                         messages=[Message(role="user", content=[part, TextPart(text=f"Clip {i}: do this.")])]))
    return root


def models_file(tmp_path: Path, url: str, caps: dict) -> Path:
    p = tmp_path / "models.yaml"
    p.write_text(json.dumps({"models": {"vt": {"spec": f"openai/any@{url}", "capabilities": caps}}}))
    return p


def test_run_sends_video_and_refuses_targets_up_front(checker, tmp_path, monkeypatch):
    clips = [make_gif(tmp_path / f"{i}.gif", n=4 + i) for i in range(3)]
    bench = video_bench(tmp_path / "bench", clips)
    assert json.loads((bench / "benchmark.json").read_text())["counts"]["modalities"] == {"text": 3, "video": 3}
    runner = CliRunner()

    monkeypatch.setenv("MMSAFE_MODELS", str(models_file(tmp_path, checker.url, {"video": True})))
    checker.reset()
    r = runner.invoke(app, ["run", str(bench), "-t", "vt", "-o", str(tmp_path / "run1")])
    assert r.exit_code == 0, r.output
    assert sorted(v for got in checker.received for _, v in got["video"]) == \
        sorted(hashlib.sha256(c.read_bytes()).hexdigest() for c in clips)

    # a text-only target: refused before any request, one line, exit 2
    monkeypatch.setenv("MMSAFE_MODELS", str(models_file(tmp_path, checker.url, {"image": False})))
    checker.reset()
    r = runner.invoke(app, ["run", str(bench), "-t", "vt", "-o", str(tmp_path / "run2")])
    assert r.exit_code == 2, r.output
    assert "3 video part(s) but the target takes neither video nor image input" in r.output
    assert checker.received == [] and checker.rejected == []


def test_run_refuses_a_corrupt_or_too_long_video_naming_it(checker, tmp_path, monkeypatch):
    bench = video_bench(tmp_path / "bench", [make_gif(tmp_path / "a.gif"),
                                               make_gif(tmp_path / "long.gif", n=2, frame_ms=100_000)])
    monkeypatch.setenv("MMSAFE_MODELS", str(models_file(tmp_path, checker.url, {"video": True})))
    checker.reset()
    r = CliRunner().invoke(app, ["run", str(bench), "-t", "vt", "-o", str(tmp_path / "run")])
    assert r.exit_code == 2, r.output
    assert "sample v1" in r.output and "200.0 s is over the 180-second video limit" in r.output
    assert "Traceback" not in r.output and checker.received == []


def test_writer_refuses_a_file_that_is_not_a_video(tmp_path):
    from mmsafe.datasets.benchmark import BenchmarkWriter
    from mmsafe.datasets.errors import DatasetError
    from mmsafe.types import BenchmarkManifest
    (tmp_path / "x.mp4").write_bytes(b"plain text, not a video")
    with (pytest.raises(DatasetError, match=r"row 3: video .*x\.mp4: not a recognised video file"),
          BenchmarkWriter(tmp_path / "b", BenchmarkManifest(name="v")) as w):
        w.add_video(tmp_path / "x.mp4", where="row 3")


# --------------------------------------------------------------------------- report and viewer


def test_report_and_viewer_show_a_poster_frame(checker, tmp_path, monkeypatch):
    from mmsafe.report.samples import SampleIndex, mime_of, render_messages
    clip = make_gif(tmp_path / "c.gif")
    bench = video_bench(tmp_path / "bench", [clip])
    index = SampleIndex(bench)
    part = render_messages(index.get("v0"), index)[0]["parts"][0]
    assert part["type"] == "video" and part["available"] and part["mime"] == "image/gif"
    head, _, b64 = part["poster"].partition(",")
    assert head == "data:image/png;base64" and pixel(base64.b64decode(b64)) == COLOURS[0]
    assert mime_of("assets/x.mp4") == "video/mp4"  # the viewer serves the clip itself

    monkeypatch.setenv("MMSAFE_MODELS", str(models_file(tmp_path, checker.url, {"video": True})))
    runner = CliRunner()
    r = runner.invoke(app, ["run", str(bench), "-t", "vt", "-o", str(tmp_path / "run")])
    assert r.exit_code == 0, r.output
    r = runner.invoke(app, ["report", str(tmp_path / "run"), "-o", str(tmp_path / "r.html")])
    assert r.exit_code == 0, r.output
    html = (tmp_path / "r.html").read_text()
    assert 'alt="video assets/' in html and part["poster"] in html


def test_anthropic_gets_sampled_frames_as_image_blocks(tmp_path):
    pytest.importorskip("anthropic")
    from mmsafe.models.anthropic_provider import encode_anthropic_messages
    make_gif(tmp_path / "c.gif")
    blocks = encode_anthropic_messages(video_message("c.gif"), tmp_path, video_frames=2)["messages"][0]["content"]
    assert [b["type"] for b in blocks] == ["image", "image", "text"]
    assert {b["source"]["media_type"] for b in blocks[:2]} == {"image/png"}
    assert [pixel(base64.b64decode(b["source"]["data"])) for b in blocks[:2]] == [COLOURS[2], COLOURS[6]]
