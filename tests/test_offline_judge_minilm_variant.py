"""The training script's MiniLM-block variants (evaluation only): each distinct text is encoded once
and the embeddings come back from the on-disk cache; the block enters the linear model; and the
shipped configuration's fold-score cache key does not change because the option exists."""

from __future__ import annotations

import json
from typing import ClassVar

import numpy as np
import pytest

from conftest import load_script


def _T():
    return load_script("train_offline_judge")


class _FakeMiniLM:
    """Deterministic 384-d unit vectors from the token ids; counts what it encodes."""

    calls: ClassVar[list[int]] = []

    def ids(self, texts):
        return [[ord(c) for c in t] for t in texts]

    def embed_ids(self, idlists):
        _FakeMiniLM.calls.append(len(idlists))
        out = np.zeros((len(idlists), 384), dtype=np.float32)
        for i, ids in enumerate(idlists):
            rng = np.random.RandomState(sum(ids) % (2**31))
            v = rng.randn(384)
            out[i] = v / np.linalg.norm(v)
        return out


def test_store_encodes_each_distinct_text_once_and_caches_on_disk(tmp_path, monkeypatch):
    T = _T()
    monkeypatch.setattr(T, "_MiniLM", _FakeMiniLM)
    _FakeMiniLM.calls.clear()
    store = T.MiniLMStore(tmp_path)
    E = store(["a request", "a reply", "a request"])
    assert E.shape == (3, 384) and np.allclose(E[0], E[2])
    assert _FakeMiniLM.calls == [2]  # two distinct texts, one batch
    store(["a reply"])
    assert _FakeMiniLM.calls == [2]  # already known: nothing encoded
    again = T.MiniLMStore(tmp_path)(["a request", "a reply"])  # a new process reads the cache
    assert _FakeMiniLM.calls == [2] and np.allclose(again, E[:2])
    # only the first MINILM_KEY_CHARS characters matter
    long = "x" * T.MINILM_KEY_CHARS
    assert T.MiniLMStore.key(long) == T.MiniLMStore.key(long + "tail")


def test_minilm_block_enters_the_linear_model(tmp_path, monkeypatch):
    pytest.importorskip("sklearn")
    T = _T()
    monkeypatch.setattr(T, "_MiniLM", _FakeMiniLM)
    monkeypatch.setattr(T, "EMBED", T.MiniLMStore(tmp_path))
    config = json.loads(json.dumps(T.CONFIG))
    config.update(T.VARIANTS["minilm"])
    config["word"].update(ngram_range=(1, 1), min_df=1)
    config["char"].update(ngram_range=(3, 3), min_df=1)
    q = [f"question {i}" for i in range(40)]
    r = [("I'm sorry, I can't help with that." if i % 2 else f"Sure, here is step {i}: placeholder.")
         for i in range(40)]
    y = np.array([0 if i % 2 else 1 for i in range(40)])
    pipe = T.Pipeline(config).fit(q, r, y)
    n_text = len(pipe.vw.vocabulary_) + len(pipe.vc.vocabulary_) + len(T.HAND_FEATURE_NAMES)
    assert pipe.lr.coef_.shape[1] == n_text + 384 + 1  # embedding + standardised cosine
    assert ((pipe.decision_function(q, r) >= 0) == y).mean() == 1.0


def test_shipped_configuration_cache_key_is_unchanged_by_the_minilm_option():
    T = _T()
    data = {"s": {"y": np.zeros(3)}}
    with_none = T.Runner(data, {}, dict(T.CONFIG), None, verbose=False)._ckey
    without = T.Runner(data, {}, {k: v for k, v in T.CONFIG.items() if k != "minilm"}, None, verbose=False)._ckey
    assert with_none == without
    assert T.Runner(data, {}, {**T.CONFIG, "minilm": {"weight": 1.0}}, None, verbose=False)._ckey != with_none
