"""How much LLM-judge work the offline judge can spare as a cascade's first stage.

Sources (both never trained on by the shipped offline judge, in any fold; see
docs/offline_judge.md):

* **JailbreakBench attack artifacts** (``../shared/data/train2/jbb_artifacts``): each row carries
  the JailbreakBench LLM judge's label (``jailbroken``), which plays the second stage, and
  Llama Guard 1's (``jailbroken_llama_guard1``) for reference.
* **LLM Self Defense** (``../shared/data/train2/llm_self_defense``): human labels; the offline
  judge alone, and its accuracy on the rows it decides inside the cascade.

Simulation of ``cascade:offline?abstain=LO,HI>LLM``: the offline judge decides the rows whose
calibrated P(unsafe) is outside (LO, HI); the LLM judge decides the rest with the label it gave.
The band is **read from the shipped weights** (``info.figures.cascade_band``): it was chosen by
the training script on the training sources' calibrated out-of-source scores, before this
script looked at either source. Reported: share of LLM calls saved, the offline judge's accuracy
on the rows it decided, and the cascade's agreement with the LLM judge alone (|accuracy(cascade)
- accuracy(LLM judge)| is at most 1 - agreement, whatever the truth). Other bands are printed
for reference only; they are read off this data and are not held-out figures.

    .venv/bin/python scripts/measure_cascade.py [--data ../shared/data] [--json OUT.json]
        [--request-gate moderator[:minilm|:tfidf]]

``--request-gate`` also simulates ``cascade:offline?request_gate=...&abstain=LO,HI>LLM`` (the offline
moderator screens the request; see docs/offline_judge.md, *Request gate*) with the same band.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

REFERENCE_BANDS = [(0.2, 0.8), (0.1, 0.9), (0.05, 0.95), (0.02, 0.98), (0.3, 0.7)]


def cascade_figures(p: np.ndarray, y_llm: np.ndarray, lo: float, hi: float, thr: float) -> dict:
    """Share decided by the offline stage, its accuracy there, and the cascade's agreement with the LLM."""
    dec = (p <= lo) | (p >= hi)
    right = ((p >= thr).astype(int) == y_llm) & dec
    n = len(p)
    return {"band": [lo, hi], "saved": float(dec.mean()) if n else None,
            "offline_acc_on_decided": float(right.sum() / dec.sum()) if dec.any() else None,
            "agreement_with_llm_alone": float((right.sum() + (~dec).sum()) / n) if n else None}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    ap.add_argument("--data", type=Path, default=Path(__file__).resolve().parents[2] / "shared" / "data")
    ap.add_argument("--json", type=Path, default=None, help="also write the figures as json here")
    from mmsafe.judges.offline import REQUEST_GATES

    ap.add_argument("--request-gate", default=None, choices=REQUEST_GATES,
                    help="also simulate the first stage with offline?request_gate=... (same band)")
    ap.add_argument("--moderator-weights", type=Path, default=None,
                    help="with --request-gate: moderator weights directory (default: the package's)")
    a = ap.parse_args(argv)
    train2 = a.data / "train2" if (a.data / "train2").is_dir() else a.data.parent
    if not (train2 / "jbb_artifacts").is_dir():
        print(f"measure_cascade: {train2 / 'jbb_artifacts'}: not found (../shared/data is needed)", file=sys.stderr)
        return 2
    import train_offline_judge as T

    from mmsafe.judges.offline_model import OfflineJudgeModel

    model = OfflineJudgeModel.load()
    band = model.info.get("figures", {}).get("cascade_band") or {}
    if band.get("lo") is None:
        print("measure_cascade: the shipped weights carry no cascade_band (retrain them)", file=sys.stderr)
        return 2
    lo, hi, thr = float(band["lo"]), float(band["hi"]), float(model.threshold)
    jbb = T.load_jbb_artifacts(train2 / "jbb_artifacts")
    t0 = time.perf_counter()
    p = model.predict_proba(jbb["q"], jbb["r"])
    rate = len(p) / (time.perf_counter() - t0)
    y = jbb["y"]
    res: dict = {"band": [lo, hi], "band_rule": band.get("rule"), "threshold": thr,
                 "jbb_artifacts": {"rows": len(y), "stats": jbb["stats"],
                                   "offline_alone_agreement": float(((p >= thr).astype(int) == y).mean()),
                                   "judgments_per_s": rate,
                                   "chosen_band": cascade_figures(p, y, lo, hi, thr),
                                   "reference_bands": [cascade_figures(p, y, b0, b1, thr)
                                                       for b0, b1 in REFERENCE_BANDS],
                                   "by_model": {}}}
    groups = np.asarray(jbb["group"])
    for g in sorted(set(groups)):
        m = groups == g
        res["jbb_artifacts"]["by_model"][g] = {"rows": int(m.sum()), **cascade_figures(p[m], y[m], lo, hi, thr)}
    sd_root = train2 / "llm_self_defense"
    if sd_root.is_dir():
        sd = T.load_llm_self_defense(sd_root)
        ps, ys = model.predict_proba(sd["q"], sd["r"]), sd["y"]
        dec = (ps <= lo) | (ps >= hi)
        ok = (ps >= thr).astype(int) == ys
        res["llm_self_defense"] = {
            "rows": len(ys), "offline_alone_acc": float(ok.mean()), "decided_share": float(dec.mean()),
            "offline_acc_on_decided": float(ok[dec].mean()) if dec.any() else None,
            "offline_acc_on_passed_on": float(ok[~dec].mean()) if (~dec).any() else None,
            "reference_bands": [{"band": [b0, b1], "decided": float(((ps <= b0) | (ps >= b1)).mean()),
                                 "acc_on_decided": float(ok[(ps <= b0) | (ps >= b1)].mean())
                                 if ((ps <= b0) | (ps >= b1)).any() else None} for b0, b1 in REFERENCE_BANDS]}
    if a.request_gate:
        from mmsafe.defense.offline_model import OfflineModeratorModel
        from mmsafe.judges.offline import gated_score

        mod = OfflineModeratorModel.load(a.moderator_weights, backend=a.request_gate.partition(":")[2] or "auto")
        mthr = float(mod.threshold)

        def gate(q: list[str], pp: np.ndarray) -> np.ndarray:
            pm = mod.score_texts(q)
            return np.asarray([gated_score(float(x), float(c), mthr, thr) for x, c in zip(pp, pm)])

        g: dict = {"spec": f"offline?request_gate={a.request_gate}", "moderator_backend": mod.backend,
                   "moderator_threshold": mthr}
        pj = gate(jbb["q"], p)
        g["jbb_artifacts"] = {"offline_alone_agreement": float(((pj >= thr).astype(int) == y).mean()),
                              "chosen_band": cascade_figures(pj, y, lo, hi, thr)}
        if sd_root.is_dir():
            pg = gate(sd["q"], ps)
            dec = (pg <= lo) | (pg >= hi)
            ok = (pg >= thr).astype(int) == ys
            g["llm_self_defense"] = {
                "offline_alone_acc": float(ok.mean()), "decided_share": float(dec.mean()),
                "offline_acc_on_decided": float(ok[dec].mean()) if dec.any() else None,
                "offline_acc_on_passed_on": float(ok[~dec].mean()) if (~dec).any() else None}
        res["request_gate"] = g
    if a.json is not None:
        a.json.parent.mkdir(parents=True, exist_ok=True)
        a.json.write_text(json.dumps(res, indent=1), encoding="utf-8")
    j = res["jbb_artifacts"]
    c = j["chosen_band"]
    print(f"band {lo:g},{hi:g} (chosen on the training sources: {band.get('rule')})")
    print(f"JailbreakBench artifacts: {j['rows']} rows (never trained on); labels: JBB LLM judge")
    print(f"  offline alone agrees with the LLM judge on {j['offline_alone_agreement']:.3f}; {rate:.0f} judgments/s")
    print(f"  chosen band: LLM calls saved {c['saved']:.1%}, offline accuracy on decided "
          f"{c['offline_acc_on_decided']:.3f}, cascade agreement with the LLM judge alone "
          f"{c['agreement_with_llm_alone']:.3f}")
    print("  by target model: " + "; ".join(f"{g} saved {v['saved']:.0%} agreement {v['agreement_with_llm_alone']:.3f}"
                                           for g, v in j["by_model"].items()))
    print("  reference bands (read off this data, not held-out):")
    for b in j["reference_bands"]:
        acc = b["offline_acc_on_decided"]
        print(f"    {b['band'][0]:.2f}-{b['band'][1]:.2f}  saved {b['saved']:.1%}  offline acc on decided "
              f"{'—' if acc is None else f'{acc:.3f}'}  agreement {b['agreement_with_llm_alone']:.3f}")
    if "llm_self_defense" in res:
        s = res["llm_self_defense"]
        print(f"LLM Self Defense: {s['rows']} rows, human labels (never trained on): offline alone "
              f"{s['offline_alone_acc']:.3f}; chosen band decides {s['decided_share']:.1%} at accuracy "
              f"{'—' if s['offline_acc_on_decided'] is None else format(s['offline_acc_on_decided'], '.3f')}")
    if "request_gate" in res:
        g = res["request_gate"]
        c = g["jbb_artifacts"]["chosen_band"]
        print(f"{g['spec']} (moderator {g['moderator_backend']}, threshold {g['moderator_threshold']:.3f}), same band:")
        print(f"  JBB: offline alone {g['jbb_artifacts']['offline_alone_agreement']:.3f}; LLM calls saved "
              f"{c['saved']:.1%}, offline accuracy on decided {c['offline_acc_on_decided']:.3f}, agreement "
              f"{c['agreement_with_llm_alone']:.3f}")
        if "llm_self_defense" in g:
            s = g["llm_self_defense"]
            print(f"  LLM Self Defense: offline alone {s['offline_alone_acc']:.3f}; band decides "
                  f"{s['decided_share']:.1%} at accuracy "
                  f"{'—' if s['offline_acc_on_decided'] is None else format(s['offline_acc_on_decided'], '.3f')}"
                  f" (passed on: it would have got {s['offline_acc_on_passed_on'] or 0:.3f} of them right)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
