"""mmsafe.datasets: the benchmark directory (atomic writer, streaming reader) and exporters."""

from __future__ import annotations

import hashlib
import io
import json
import os
import subprocess
import sys
import types
import wave
from pathlib import Path

import pytest
from PIL import Image

from mmsafe.datasets import (
    Benchmark,
    BenchmarkWriter,
    DatasetError,
    export_benchmark,
    export_hf,
    export_jsonl,
    export_parquet,
    export_safemt,
    import_jsonl,
    import_safemt,
    open_benchmark,
)
from mmsafe.datasets import benchmark as benchmark_mod
from mmsafe.types import BenchmarkManifest, ImagePart, Message, Sample, TextPart

FIXTURES = Path(__file__).parent / "fixtures" / "datasets"


def png_bytes(color=(200, 30, 30), size=(16, 16), fmt="PNG") -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, color).save(buf, format=fmt)
    return buf.getvalue()


def wav_bytes(n: int = 800) -> bytes:
    buf = io.BytesIO()
    with wave.open(buf, "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(8000)
        w.writeframes(b"\x00\x01" * n)
    return buf.getvalue()


def text_sample(sid: str, q: str = "How can I pick a lock?", **kw) -> Sample:
    return Sample(id=sid, question=q, messages=[Message(role="user", content=q)], **kw)


def siblings(path: Path) -> list[str]:
    """Entries next to ``path`` (temporary dirs of a writer start with '.<name>.')."""
    return sorted(p.name for p in path.parent.iterdir()) if path.parent.exists() else []


def write_demo(out: Path, n: int = 3, **kw) -> BenchmarkManifest:
    with BenchmarkWriter(out, BenchmarkManifest(name="demo"), **kw) as w:
        img = w.add_image(png_bytes())
        for i in range(n):
            q = f"How can I bypass security system number {i}?"
            w.add(Sample(id=f"s{i}", question=q, scenario="Illegal Activity" if i % 2 else "Fraud",
                         messages=[Message(role="user", content=[img, TextPart(text=q)])],
                         metadata={"group": f"g{i}"}))
    return w.manifest


# --------------------------------------------------------------------------- writer


def test_writer_layout_content_addressing_and_dedupe(tmp_path):
    src = tmp_path / "a.png"
    data = png_bytes()
    src.write_bytes(data)
    other = tmp_path / "b.png"
    other.write_bytes(data)  # same bytes, different file
    jpg = tmp_path / "c.jpg"
    jpg.write_bytes(png_bytes((0, 0, 255), fmt="JPEG"))
    audio = tmp_path / "q.wav"
    audio.write_bytes(wav_bytes())
    out = tmp_path / "bench"
    manifest = BenchmarkManifest(name="demo", taxonomy={})
    with BenchmarkWriter(out, manifest) as w:
        p1 = w.add_image(src)
        p2 = w.add_image(other)
        p3 = w.add_image(data)
        p4 = w.add_image(jpg)
        a1 = w.add_audio(audio)
        assert p1 == p2 == p3
        assert p4 != p1
        w.add(Sample(id="x", question="q", category="Crime", scenario="Fraud",
                     messages=[Message(role="user", content=[p1, TextPart(text="q")])]))
        w.add(Sample(id="y", question="q", scenario="Fraud",
                     messages=[Message(role="user", content=[a1, TextPart(text="listen")])]))
        assert not out.exists()  # nothing at the destination until commit
    sha = hashlib.sha256(data).hexdigest()
    assert p1.path == f"assets/{sha}.png" and p1.sha256 == sha and p1.mime == "image/png"
    assert p4.path.endswith(".jpg") and p4.mime == "image/jpeg"
    assert a1.path.endswith(".wav") and a1.mime == "audio/wav"
    assert sorted(os.listdir(out)) == ["assets", "benchmark.json", "samples.jsonl"]
    ref = tmp_path / "ref"
    ref.mkdir()  # the benchmark dir gets ordinary (umask) permissions, not a tempdir's 0700
    assert out.stat().st_mode & 0o777 == ref.stat().st_mode & 0o777
    ref.rmdir()
    assert len(os.listdir(out / "assets")) == 3
    assert (out / p1.path).read_bytes() == data
    assert siblings(out) == ["a.png", "b.png", "bench", "c.jpg", "q.wav"]  # no temp dirs left
    b = open_benchmark(out)
    assert len(b) == 2
    c = b.manifest.counts
    assert c.n_samples == 2 and c.n_assets == 3 and c.by_scenario == {"Fraud": 2}
    assert c.modalities == {"text": 2, "image": 1, "audio": 1}
    assert b.manifest.taxonomy == {"Crime": ["Fraud"], "uncategorised": ["Fraud"]}
    first = next(b.iter_samples())
    assert b.read_asset(first.assets()[0]) == data
    # samples.jsonl lines carry the discriminator so they re-validate
    line = (out / "samples.jsonl").read_text().splitlines()[0]
    assert '"type":"image"' in line


@pytest.mark.parametrize("bad, match", [
    (b"not an image at all", "not a valid image"),
    (png_bytes()[:40], "not a valid image"),
])
def test_writer_refuses_corrupt_images(tmp_path, bad, match):
    f = tmp_path / "bad.png"
    f.write_bytes(bad)
    with BenchmarkWriter(tmp_path / "b", BenchmarkManifest(name="x")) as w:
        with pytest.raises(DatasetError, match=match) as ei:
            w.add_image(f, where="data.csv:7")
        assert str(ei.value).startswith("data.csv:7: image ")
        with pytest.raises(DatasetError, match="not a recognised audio"):
            w.add_audio(b"hello world, not audio")
        w.add(text_sample("ok"))


def test_writer_refuses_missing_and_oversized(tmp_path, monkeypatch):
    with BenchmarkWriter(tmp_path / "b", BenchmarkManifest(name="x")) as w:
        with pytest.raises(DatasetError, match="nope.png: file not found"):
            w.add_image(tmp_path / "nope.png")
        with pytest.raises(DatasetError, match="not a regular file"):
            w.add_image(tmp_path)
        big = tmp_path / "big.png"
        big.write_bytes(png_bytes(size=(64, 64)))
        monkeypatch.setattr(benchmark_mod, "MAX_ASSET_BYTES", 50)
        with pytest.raises(DatasetError, match="over the 50-byte limit"):
            w.add_image(big)
        with pytest.raises(DatasetError, match="over the 50-byte limit"):
            w.add_image(big.read_bytes())


def test_writer_rejects_duplicate_ids_and_foreign_assets(tmp_path):
    with BenchmarkWriter(tmp_path / "b", BenchmarkManifest(name="x")) as w:
        w.add(text_sample("a"))
        with pytest.raises(DatasetError, match="duplicate sample id 'a'"):
            w.add(text_sample("a"), where="src.csv:3")
        foreign = ImagePart(path="assets/deadbeef.png", sha256="deadbeef", mime="image/png")
        with pytest.raises(DatasetError, match="asset was not added"):
            w.add(Sample(id="b", question="q",
                         messages=[Message(role="user", content=[foreign, TextPart(text="q")])]))
        # URI-only assets are references, allowed
        w.add(Sample(id="c", question="q", messages=[Message(role="user", content=[
            ImagePart(uri="https://example.org/x.png"), TextPart(text="q")])]))
        with pytest.raises(DatasetError, match="messages: conversation must end with a user turn"):
            w.add({"id": "d", "question": "q", "messages": [
                {"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}]})
    assert len(open_benchmark(tmp_path / "b")) == 2


def test_atomic_write_exception_leaves_nothing(tmp_path):
    out = tmp_path / "bench"
    with pytest.raises(RuntimeError):
        with BenchmarkWriter(out, BenchmarkManifest(name="x")) as w:
            w.add_image(png_bytes())
            w.add(text_sample("a"))
            assert w.tmp_dir is not None and w.tmp_dir.exists()
            raise RuntimeError("boom mid-write")
    assert not out.exists()
    assert siblings(out) == []  # the temporary sibling was removed too


def test_atomic_write_keeps_existing_benchmark(tmp_path):
    out = tmp_path / "bench"
    write_demo(out, n=3)
    before = {p.relative_to(out): p.read_bytes() for p in out.rglob("*") if p.is_file()}
    with pytest.raises(DatasetError, match="already exists"):
        write_demo(out, n=1)
    with pytest.raises(DatasetError):  # failure during an overwrite
        with BenchmarkWriter(out, BenchmarkManifest(name="new"), overwrite=True) as w:
            w.add(text_sample("a"))
            w.add(text_sample("a"))  # duplicate -> error
    after = {p.relative_to(out): p.read_bytes() for p in out.rglob("*") if p.is_file()}
    assert after == before
    assert siblings(out) == ["bench"]
    # a successful overwrite swaps the directory and removes the old one
    write_demo(out, n=1, overwrite=True)
    assert len(open_benchmark(out)) == 1
    assert siblings(out) == ["bench"]


def test_overwrite_refuses_non_benchmark_directory(tmp_path):
    out = tmp_path / "precious"
    out.mkdir()
    (out / "thesis.txt").write_text("do not delete")
    with pytest.raises(DatasetError, match="not a benchmark"):
        write_demo(out, overwrite=True)
    assert (out / "thesis.txt").read_text() == "do not delete"


def test_samples_are_streamed_to_disk(tmp_path):
    out = tmp_path / "bench"
    with BenchmarkWriter(out, BenchmarkManifest(name="x")) as w:
        for i in range(50):
            w.add(text_sample(f"s{i}"))
        w._fh.flush()
        assert (w.tmp_dir / "samples.jsonl").stat().st_size > 0
        assert not hasattr(w, "_samples")


# --------------------------------------------------------------------------- reader


def test_reader_streams_and_reports_file_line_field(tmp_path):
    out = tmp_path / "bench"
    write_demo(out, n=3)
    sp = out / "samples.jsonl"
    good = sp.read_text()
    bad_content = json.dumps({"id": "bad", "question": "q",
                              "messages": [{"role": "user", "content": 5}]})
    sp.write_text(good + "\n" + bad_content + "\n")  # a blank line 4, the bad one on line 5
    b = open_benchmark(out)
    it = b.iter_samples()
    assert [next(it).id for _ in range(3)] == ["s0", "s1", "s2"]  # streamed before the error
    with pytest.raises(DatasetError) as ei:
        next(it)
    msg = str(ei.value)
    assert "samples.jsonl:5: messages.0.content:" in msg and "\n" not in msg

    not_user = json.dumps({"id": "z", "question": "q", "messages": [
        {"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}]})
    sp.write_text(good + not_user + "\n{not json\n")
    with pytest.raises(DatasetError, match=r"samples\.jsonl:4: messages: conversation must end "
                                            r"with a user turn"):
        list(open_benchmark(out).iter_samples())
    sp.write_text(good + "{not json\n")
    with pytest.raises(DatasetError, match=r"samples\.jsonl:4: json: Invalid JSON"):
        list(open_benchmark(out))


def test_reader_picks_a_shards_samples_at_their_positions_and_still_names_a_bad_line(tmp_path):
    out = tmp_path / "bench"
    write_demo(out, n=6)
    b = open_benchmark(out)
    assert [(i, s.id) for i, s in b.iter_indexed()] == [(i, f"s{i}") for i in range(6)]
    got = list(b.iter_indexed({"s4", "s1", "nowhere"}))
    assert [(i, s.id) for i, s in got] == [(1, "s1"), (4, "s4")]  # file order, positions over all samples
    assert got[1][1] == next(s for s in b.iter_samples() if s.id == "s4")  # the whole sample, validated
    sp = out / "samples.jsonl"
    lines = sp.read_text().splitlines()
    sp.write_text("\n".join(lines[:2] + ["{not json"] + lines[2:]) + "\n")  # line 3: another shard's? unknown
    with pytest.raises(DatasetError, match=r"samples\.jsonl:3: json: Invalid JSON"):
        list(open_benchmark(out).iter_indexed({"s4"}))


def test_reader_never_reads_whole_file(tmp_path, monkeypatch):
    out = tmp_path / "bench"
    write_demo(out, n=5)
    real_read_bytes, real_read_text = Path.read_bytes, Path.read_text

    def guard(real):
        def wrapper(self, *a, **k):
            assert self.name != "samples.jsonl", "samples.jsonl must be streamed, not slurped"
            return real(self, *a, **k)
        return wrapper

    monkeypatch.setattr(Path, "read_bytes", guard(real_read_bytes))
    monkeypatch.setattr(Path, "read_text", guard(real_read_text))
    b = open_benchmark(out)
    assert isinstance(b, Benchmark) and b.root == out and len(b) == 5
    it = b.iter_samples()
    assert isinstance(it, types.GeneratorType)
    assert sum(1 for _ in it) == 5


def test_open_benchmark_errors(tmp_path):
    with pytest.raises(DatasetError, match="no such benchmark directory"):
        open_benchmark(tmp_path / "absent")
    (tmp_path / "empty").mkdir()
    with pytest.raises(DatasetError, match=r"benchmark\.json: missing"):
        open_benchmark(tmp_path / "empty")
    out = tmp_path / "bench"
    write_demo(out)
    assert open_benchmark(out / "benchmark.json").root == out
    m = json.loads((out / "benchmark.json").read_text())
    m["counts"] = {"n_samples": "many"}
    (out / "benchmark.json").write_text(json.dumps(m))
    with pytest.raises(DatasetError, match=r"benchmark\.json: counts\.n_samples"):
        open_benchmark(out)
    m["counts"] = {}
    m["format_version"] = 99
    (out / "benchmark.json").write_text(json.dumps(m))
    with pytest.raises(DatasetError, match="newer"):
        open_benchmark(out)


def test_asset_path_refuses_symlink_escape(tmp_path):
    out = tmp_path / "bench"
    write_demo(out)
    secret = tmp_path / "secret.png"
    secret.write_bytes(png_bytes())
    (out / "assets" / "link.png").symlink_to(secret)
    b = open_benchmark(out)
    part = ImagePart(path="assets/link.png")
    with pytest.raises(DatasetError, match="escapes"):
        b.asset_path(part)
    assert issubclass(DatasetError, ValueError)


# --------------------------------------------------------------------------- exporters


def _safemt_bench(tmp_path) -> Benchmark:
    src = tmp_path / "safemt_src"
    src.mkdir()
    for f in (FIXTURES / "safemt").glob("*.json"):
        (src / f.name).write_bytes(f.read_bytes())
    (src / "images" / "fraud").mkdir(parents=True)
    (src / "images" / "malware").mkdir(parents=True)
    (src / "images" / "fraud" / "fraud_1.jpg").write_bytes(png_bytes((9, 9, 9), fmt="JPEG"))
    (src / "images" / "malware" / "malware_2.png").write_bytes(png_bytes((1, 200, 1)))
    import_safemt(src, tmp_path / "bench")
    return open_benchmark(tmp_path / "bench")


def _comparable(s: Sample) -> tuple:
    return (s.id, s.question, s.scenario, s.turns, s.method,
            [m.model_dump() for m in s.messages], s.metadata.get("group"))


def test_export_jsonl_round_trip(tmp_path):
    b = _safemt_bench(tmp_path)
    out = tmp_path / "flat.jsonl"
    assert export_jsonl(b, out) == 6
    rows = [json.loads(x) for x in out.read_text().splitlines()]
    assert rows[0]["images"] and rows[0]["images"][0].startswith("assets/")
    assert rows[0]["messages"][0]["content"][0]["type"] == "image_url"
    assert {r["group"] for r in rows} == {"mllm_fraud_1", "mllm_malware_2"}
    with pytest.raises(DatasetError, match="already exists"):
        export_jsonl(b, out)
    # re-import: asset paths are relative to the benchmark root
    import_jsonl(out, tmp_path / "again", images_dir=b.root)
    again = {s.id: s for s in open_benchmark(tmp_path / "again")}
    for s in b.iter_samples():
        assert _comparable(again[s.id]) == _comparable(s)


def test_export_parquet(tmp_path):
    pq = pytest.importorskip("pyarrow.parquet")
    b = _safemt_bench(tmp_path)
    out = tmp_path / "b.parquet"
    assert export_benchmark("parquet", b, out) == 6
    t = pq.read_table(out)
    assert t.num_rows == 6
    rows = t.to_pylist()
    assert sorted(r["turns"] for r in rows) == [1, 1, 2, 2, 4, 4]
    assert all(r["images"][0].startswith("assets/") for r in rows)
    msgs = json.loads(rows[0]["messages"])
    assert msgs[-1]["role"] == "user"
    assert b"mmsafe.benchmark" in t.schema.metadata


def test_export_parquet_without_pyarrow(tmp_path, monkeypatch):
    b = _safemt_bench(tmp_path)
    monkeypatch.setitem(sys.modules, "pyarrow", None)
    with pytest.raises(DatasetError, match=r"pip install 'mmsafe\[parquet\]'"):
        export_parquet(b, tmp_path / "x.parquet")
    assert not (tmp_path / "x.parquet").exists()


def test_export_hf_without_datasets(tmp_path, monkeypatch):
    b = _safemt_bench(tmp_path)
    monkeypatch.setitem(sys.modules, "datasets", None)
    with pytest.raises(DatasetError, match=r"pip install 'mmsafe\[datasets\]'"):
        export_hf(b, tmp_path / "hf")


def test_export_hf(tmp_path):
    datasets = pytest.importorskip("datasets")
    b = _safemt_bench(tmp_path)
    assert export_hf(b, tmp_path / "hf") == 6
    ds = datasets.load_from_disk(str(tmp_path / "hf"))
    assert len(ds) == 6 and ds[0]["images"][0].size == (16, 16)


def test_export_safemt_round_trip(tmp_path):
    b = _safemt_bench(tmp_path)
    counts = export_safemt(b, tmp_path / "exported")
    assert counts == {1: 2, 2: 2, 4: 2}
    exp = tmp_path / "exported"
    assert sorted(p.name for p in exp.iterdir()) == ["1_turn.json", "2_turn.json", "4_turn.json",
                                                      "images"]
    assert len(list((exp / "images").iterdir())) == 2
    recs = json.loads((exp / "4_turn.json").read_text())
    assert recs[0]["id"] == "mllm_fraud_1" and recs[0]["image_path"].startswith("images/")
    import_safemt(exp, tmp_path / "again")
    again = {s.id: s for s in open_benchmark(tmp_path / "again")}
    orig = {s.id: s for s in b.iter_samples()}
    assert again.keys() == orig.keys()
    for k in orig:
        assert _comparable(again[k]) == _comparable(orig[k])


def test_export_safemt_unsupported(tmp_path):
    out = tmp_path / "bench"
    with BenchmarkWriter(out, BenchmarkManifest(name="x")) as w:
        a = w.add_audio(wav_bytes())
        w.add(Sample(id="aud", question="q", messages=[Message(role="user", content=[
            a, TextPart(text="listen")])]))
        w.add(text_sample("txt"))
    with pytest.raises(DatasetError, match="'aud': cannot be written as SafeMT"):
        export_safemt(out, tmp_path / "x")
    assert not (tmp_path / "x").exists()
    assert export_safemt(out, tmp_path / "x", skip_unsupported=True) == {1: 1}


def test_export_unknown_kind(tmp_path):
    with pytest.raises(DatasetError, match="unknown export format"):
        export_benchmark("xml", tmp_path, tmp_path / "o")


def test_module_does_not_import_optional_deps():
    code = ("import sys, mmsafe.datasets; "
            "bad = [m for m in ('pyarrow', 'datasets') if m in sys.modules]; "
            "assert not bad, bad")
    subprocess.run([sys.executable, "-c", code], check=True)
