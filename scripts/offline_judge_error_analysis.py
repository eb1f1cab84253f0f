#!/usr/bin/env python
"""Why the offline judge fails on its worst held-out sources: the counts behind
docs/offline_judge.md, "Why the worst sources fail, counted".

    python scripts/offline_judge_error_analysis.py [--data ../shared/data] [--cache DIR] [--json OUT]

* DiaSafety, LLM Self Defense: scored by the shipped weights (never trained on either);
* JailbreakEval, JAILJUDGE: leave-one-source-out raw log-odds from the training script's
  ``Runner`` (``--cache`` re-uses the folds of an earlier ``train_offline_judge.py --cache DIR`` run;
  otherwise two fits, ~2 min).

Prints counts only (no text of the data). Needs scikit-learn for the two fits.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))
sys.path.insert(0, str(REPO / "scripts"))

import train_offline_judge as T  # noqa: E402

from mmsafe.judges.offline_model import _REFUSAL, OfflineJudgeModel  # noqa: E402

_OPENER = re.compile(r"\s*(sure|here|certainly|of course|absolutely)\b", re.I)


def is_continuation(reply: str) -> bool:
    """The reply starts mid-sentence (lower-case letter or punctuation): a base model carrying on the prompt."""
    s = reply.lstrip()
    return bool(s) and (s[0].islower() or s[0] in "-,.;:)'\"")


def has_refusal(reply: str) -> bool:
    return bool(_REFUSAL.search(reply.lower()))


def _errors(y: np.ndarray, z: np.ndarray) -> dict[str, int]:
    yh = (z >= 0).astype(int)
    return {"false_positives": int(((yh == 1) & (y == 0)).sum()), "false_negatives": int(((yh == 0) & (y == 1)).sum())}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", type=Path, default=T.DEFAULT_DATA)
    ap.add_argument("--cache", type=Path, default=None, help="fold-score cache of train_offline_judge.py")
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args(argv)
    if not T.data_dirs(args.data)[0].is_dir():
        print(f"offline_judge_error_analysis: --data {args.data}: no judge/ data there", file=sys.stderr)
        return 2
    data = T.load_data(args.data)
    model = OfflineJudgeModel.load()
    out: dict = {}
    if "diasafety" in data:
        d = data["diasafety"]
        y, z = d["y"], model.decision_function(d["q"], d["r"])
        p = model.predict_proba(d["q"], d["r"])
        ref = np.array([has_refusal(r) for r in d["r"]])
        lens = np.array([len(r) for r in d["r"]])
        g = np.asarray(d["group"])
        out["diasafety"] = {
            "rows": len(y), "unsafe": int(y.sum()), "predicted_unsafe_share": float((p >= model.threshold).mean()),
            "missed_unsafe": int(((p < model.threshold) & (y == 1)).sum()),
            "replies_with_refusal_phrase": int(ref.sum()), "of_which_unsafe": int((ref & (y == 1)).sum()),
            "median_reply_chars": float(np.median(lens)), "share_replies_le_100_chars": float((lens <= 100).mean()),
            "auc_raw": T.auc_score(y, z),
            "auc_by_category": {c: T.auc_score(y[g == c], z[g == c]) for c in sorted(set(g))}}
    if "llm_self_defense" in data:
        d = data["llm_self_defense"]
        y, p = d["y"], model.predict_proba(d["q"], d["r"])
        labels: dict[str, set[int]] = {}
        for q, yy in zip(d["q"], y):
            labels.setdefault(q, set()).add(int(yy))
        ref = np.array([has_refusal(r) for r in d["r"]])
        yh = (p >= model.threshold).astype(int)
        harm = y == 1
        g = np.asarray(d["group"])
        out["llm_self_defense"] = {
            "rows": len(y), "distinct_prompts": len(labels),
            "prompts_with_mixed_labels": sum(len(v) > 1 for v in labels.values()),
            "prompts_all_0": sum(v == {0} for v in labels.values()),
            "prompts_all_1": sum(v == {1} for v in labels.values()),
            "negatives_with_refusal_phrase": int((ref & ~harm).sum()), "negatives": int((~harm).sum()),
            "positives_with_refusal_phrase": int((ref & harm).sum()), "positives": int(harm.sum()),
            "false_positives_by_family": {f: int(((yh == 1) & (y == 0) & (g == f)).sum()) for f in sorted(set(g))},
            "false_negatives": int(((yh == 0) & harm).sum()),
            "accuracy_on_harmful_requests": float((yh[harm] == 1).mean())}
    config = json.loads(json.dumps(T.CONFIG))
    config["word"]["ngram_range"] = tuple(config["word"]["ngram_range"])
    config["char"]["ngram_range"] = tuple(config["char"]["ngram_range"])
    H = T.hand_features_cached(data, args.cache)
    run = T.Runner(data, H, config, args.cache)
    train = [k for k in config["train_sources"] if k in data]
    for k in ("jailbreakeval", "jailjudge"):
        d = data[k]
        z = run.scores([s for s in train if s != k], [k])[k]
        y = d["y"]
        cont = np.array([is_continuation(r) for r in d["r"]])
        opener = np.array([bool(_OPENER.match(r)) for r in d["r"]])
        ref = np.array([has_refusal(r) for r in d["r"]])
        fn, fp = (z < 0) & (y == 1), (z >= 0) & (y == 0)
        rec = {"rows": len(y), "unsafe": int(y.sum()), **_errors(y, z), "auc_raw": T.auc_score(y, z)}
        for name, m in (("false_negatives", fn), ("false_positives", fp), ("all", np.ones(len(y), bool))):
            rec[f"{name}_profile"] = {"continuation": int((cont & m).sum()),
                                      "compliance_opener": int((opener & m).sum()),
                                      "refusal_phrase": int((ref & m).sum())}
        for name, m in (("continuation", cont), ("other", ~cont)):
            if not m.any():
                continue
            rec[f"accuracy_{name}"] = {"n": int(m.sum()), "accuracy": float(((z[m] >= 0) == y[m]).mean()),
                                       "auc": T.auc_score(y[m], z[m])}
        out[k] = rec
    out["continuation_replies_by_source"] = {
        k: f"{int(sum(is_continuation(d['r'][i]) for i in np.flatnonzero(~d['xs_safe'])))}/{int((~d['xs_safe']).sum())}"
        for k, d in data.items() if k in train}
    print(json.dumps(out, indent=1, default=T._json_default))
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(out, indent=1, default=T._json_default), encoding="utf-8")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
