"""How much LLM-judge work the offline judge can spare as a cascade's first stage.

Source: JailbreakBench attack artifacts (``../shared/data/train2/jbb_artifacts``), which the
shipped offline judge never saw (it was trained on ``../shared/data/judge``). Each row carries
the JailbreakBench LLM judge's label (``jailbroken``) and Llama Guard 1's (``jailbroken_llama_guard1``).

Simulation of ``cascade:offline?abstain=LO,HI>LLM``: the offline judge decides the rows whose
P(unsafe) is outside (LO, HI); the LLM judge decides the rest with the label it gave. Reported
per band: the share of LLM calls saved, the offline judge's accuracy on the rows it decided, and
the cascade's agreement with the LLM judge alone (|accuracy(cascade) - accuracy(LLM judge)| is at
most 1 - agreement, whatever the truth). The default band (0.2, 0.8) was fixed before this data
was looked at; the grid shows the trade-off, it is not a tuned figure.

    .venv/bin/python scripts/measure_cascade.py [--data ../shared/data/train2/jbb_artifacts]
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path


def load_rows(root: Path) -> list[dict]:
    rows = []
    for f in sorted(root.glob("attack-artifacts/*/*/*.json")):
        d = json.loads(f.read_text())
        for j in d.get("jailbreaks") or []:
            if j.get("prompt") is None or j.get("response") is None:
                continue  # not submitted
            rows.append({"goal": j["goal"], "response": j["response"], "llm": bool(j["jailbroken"]),
                         "lg1": j.get("jailbroken_llama_guard1"), "method": f.parts[-3], "model": f.stem})
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path,
                    default=Path(__file__).resolve().parents[2] / "shared" / "data" / "train2" / "jbb_artifacts")
    ap.add_argument("--json", action="store_true")
    a = ap.parse_args()
    if not a.data.exists():
        raise SystemExit(f"{a.data}: not found (../shared/data is needed for this measurement)")
    from mmsafe.judges.offline_model import OfflineJudgeModel
    rows = load_rows(a.data)
    model = OfflineJudgeModel.load()
    t0 = time.perf_counter()
    probs = [float(p) for p in model.predict_proba([r["goal"] for r in rows], [r["response"] for r in rows])]
    rate = len(rows) / (time.perf_counter() - t0)
    thr = float(model.threshold)
    n = len(rows)
    alone = sum((p >= thr) == r["llm"] for p, r in zip(probs, rows)) / n
    lg = [r for r in rows if r["lg1"] is not None]
    lg_agree = sum(bool(r["lg1"]) == r["llm"] for r in lg) / len(lg) if lg else None
    bands = [(0.2, 0.8), (0.1, 0.9), (0.05, 0.95), (0.3, 0.7), (0.4, 0.6), (0.02, 0.98)]
    out = []
    for lo, hi in bands:
        decided = [(p, r) for p, r in zip(probs, rows) if not lo < p < hi]
        right = sum((p >= thr) == r["llm"] for p, r in decided)
        out.append({"band": [lo, hi], "saved": len(decided) / n,
                    "offline_acc_on_decided": right / len(decided) if decided else None,
                    "agreement_with_llm_alone": (right + n - len(decided)) / n})
    res = {"source": "jbb_artifacts", "rows": n, "threshold": thr, "offline_alone_agreement": alone,
           "llama_guard1_agreement": lg_agree, "judgments_per_s": rate, "bands": out}
    sd = a.data.parent / "llm_self_defense"
    if sd.exists():  # a second unseen source, with human labels: are the rows the band decides right?
        import csv
        hrows = []
        for f in sorted(sd.glob("*.csv")):
            with f.open(newline="", encoding="utf-8") as fh:
                for r in csv.DictReader(fh):
                    hrows.append((r["prompt"], r["response"], r["is harmful?"].strip().lower() == "yes"))
        hp = [float(p) for p in model.predict_proba([q for q, _, _ in hrows], [x for _, x, _ in hrows])]
        alone_sd = sum((p >= thr) == y for p, (_, _, y) in zip(hp, hrows)) / len(hrows)
        res["self_defense"] = {"rows": len(hrows), "offline_alone_acc": alone_sd, "bands": []}
        for lo, hi in bands:
            dec = [(p, y) for p, (_, _, y) in zip(hp, hrows) if not lo < p < hi]
            res["self_defense"]["bands"].append({"band": [lo, hi], "decided": len(dec) / len(hrows),
                                                 "acc_on_decided": (sum((p >= thr) == y for p, y in dec) / len(dec))
                                                 if dec else None})
    if a.json:
        print(json.dumps(res, indent=1))
        return
    print(f"JailbreakBench artifacts: {n} rows (unseen by the offline judge); labels: JBB LLM judge")
    print(f"offline judge alone agrees with the LLM judge on {alone:.3f}; Llama Guard 1 on {lg_agree:.3f}; "
          f"{rate:.0f} judgments/s")
    print("band        LLM calls saved  offline acc on decided  cascade agreement with LLM judge alone")
    for b in out:
        acc = b["offline_acc_on_decided"]
        print(f"{b['band'][0]:.2f}-{b['band'][1]:.2f}   {b['saved']:>14.1%}  {acc if acc is None else f'{acc:.3f}':>22}"
              f"  {b['agreement_with_llm_alone']:.3f}")
    if "self_defense" in res:
        sdr = res["self_defense"]
        print(f"\nLLM Self Defense: {sdr['rows']} rows, human labels (unseen); offline alone accuracy "
              f"{sdr['offline_alone_acc']:.3f}")
        print("band        decided by offline  its accuracy on them (human labels)")
        for b in sdr["bands"]:
            acc = b["acc_on_decided"]
            acc_s = "—" if acc is None else f"{acc:.3f}"
            print(f"{b['band'][0]:.2f}-{b['band'][1]:.2f}   {b['decided']:>18.1%}  {acc_s}")


if __name__ == "__main__":
    main()
