#!/usr/bin/env python
"""The offline judge with and without ``request_gate`` (the offline moderator screens the request)
on the judge sources that were never trained on: which benchmarks the gate helps and which it hurts.

    python scripts/measure_offline_judge_gate.py [--data ../shared/data] [--json OUT]

Uses the shipped judge weights and the shipped moderator weights (both backends when the MiniLM
one can load). Every source here is held out from the judge; the moderator never used these
sources (docs/offline_moderator.md), except XSTest (its prompts are moderator training data: that
row is marked and is not a held-out figure). Threshold 0.5 and the moderator's own operating
point, both fixed in advance.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))
sys.path.insert(0, str(REPO / "scripts"))

import train_offline_judge as T  # noqa: E402

from mmsafe.defense.offline_model import OfflineModeratorModel, minilm_backend_available  # noqa: E402
from mmsafe.judges.offline import gated_score  # noqa: E402
from mmsafe.judges.offline_model import OfflineJudgeModel  # noqa: E402

SOURCES = {"llm_self_defense": "held out (mixes harmless and harmful requests)",
           "jbb_artifacts": "held out (every request harmful)",
           "diasafety": "held out (chit-chat replies to social contexts)",
           "xstest": "NOT held out for the moderator (its prompts train it); all 2,250 rows, safe prompts included"}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", type=Path, default=T.DEFAULT_DATA)
    ap.add_argument("--json", type=Path, default=None)
    ap.add_argument("--moderator-weights", type=Path, default=None,
                    help="moderator weights directory (default: the ones in the package)")
    args = ap.parse_args(argv)
    if not T.data_dirs(args.data)[0].is_dir():
        print(f"measure_offline_judge_gate: --data {args.data}: no judge/ data there", file=sys.stderr)
        return 2
    data = T.load_data(args.data)
    judge = OfflineJudgeModel.load()
    backends = ["tfidf"] + (["minilm"] if minilm_backend_available() else [])
    mods = {b: OfflineModeratorModel.load(args.moderator_weights, backend=b) for b in backends}
    out: dict = {"judge_version": judge.info.get("version"), "sources": {}}
    print("| source | n | judge alone | " + " | ".join(f"gate: moderator {b} (requests flagged)" for b in backends)
          + " | note |")
    print("|---|---:|---:|" + "---:|" * len(backends) + "---|")
    for k, note in SOURCES.items():
        if k not in data:
            continue
        d = data[k]
        y = d["y"]
        t = time.perf_counter()
        p = judge.predict_proba(d["q"], d["r"])
        row = {"n": len(y), "note": note, "alone": T.metrics(y, p), "judge_s": time.perf_counter() - t}
        cells, gated = [], {}
        for b, mod in mods.items():
            t = time.perf_counter()
            pm = np.asarray(mod.score_texts(d["q"]), dtype=np.float64)
            dt = time.perf_counter() - t
            gated[b] = np.asarray([gated_score(float(a), float(c), float(mod.threshold), 0.5) for a, c in zip(p, pm)])
            m = T.metrics(y, gated[b])
            m["flagged_share"] = float((pm >= mod.threshold).mean())
            m["moderator_per_s"] = len(y) / dt if dt else float("nan")
            row[f"gate_{b}"] = m
            cells.append(f"{m['accuracy']:.3f} / ECE {m['ece']:.3f} ({m['flagged_share']:.2f})")
        groups = np.asarray(d["group"])
        if k != "diasafety" and 1 < len(set(groups)) <= 6:
            row["by_group"] = {g: {"n": int((groups == g).sum()),
                                   "alone": float(((p >= 0.5) == y)[groups == g].mean()),
                                   **{f"gate_{b}": float(((v >= 0.5) == y)[groups == g].mean())
                                      for b, v in gated.items()}} for g in sorted(set(groups))}
        out["sources"][k] = row
        print(f"| {k} | {len(y)} | {row['alone']['accuracy']:.3f} / ECE {row['alone']['ece']:.3f} | "
              + " | ".join(cells) + f" | {note} |", flush=True)
        for g, v in row.get("by_group", {}).items():
            print(f"|   {k}: {g} | {v['n']} | {v['alone']:.3f} | "
                  + " | ".join(f"{v[f'gate_{b}']:.3f}" for b in backends) + " | |")
    out["moderators"] = {b: {"threshold": float(m.threshold), "backend": m.backend} for b, m in mods.items()}
    root = args.moderator_weights or REPO / "src" / "mmsafe" / "data" / "moderator"
    out["moderator_weights_sha256_16"] = {f.name: hashlib.sha256(f.read_bytes()).hexdigest()[:16]
                                          for f in sorted(Path(root).glob("moderator*.npz"))}
    print("moderator weights: " + ", ".join(f"{k} {v}" for k, v in out["moderator_weights_sha256_16"].items()))
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(out, indent=1, default=T._json_default), encoding="utf-8")
        print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
