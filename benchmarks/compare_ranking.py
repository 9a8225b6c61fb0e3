"""Does LogME rank backbones as the linear probe does? `te compare` on several real data sets, one run.

    PYTHONPATH=. python benchmarks/compare_ranking.py [--domains digits,glyphs,digits-blocky]
                                                      [--backbones efficientnet_lite0,...] [--json PATH]

For each data set (builtin:digits, and the offline sets of benchmarks/_domains.py: letters rendered from
the machine's fonts with test fonts unseen in train, the 8x8 digits upscaled without smoothing), runs
`te compare` over the backbones (default: the three with real ImageNet weights that install offline) and
prints, per data set, each backbone's LogME, its linear probe's 5-fold accuracy over train+val (with its
95% interval) and val/test accuracy, and Kendall's tau between LogME and the probe's val ranking, LogME
and the test ranking, the val and test rankings, and the k-fold and test rankings (is the k-fold score a
better guide to test than one val split?), then the same pooled over every data set's pairs of backbones.
With --select val the probes are chosen on val alone and the k-fold columns stay empty.
Not a te bench benchmark: its figures are rankings, not speeds (docs/compare.md has the table).
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

from _domains import DOMAINS

BACKBONES = "efficientnet_lite0,efficientnet_lite1,efficientnet_lite2"


def pairs(a: list[float], b: list[float]) -> tuple[int, int]:
    """(concordant, discordant) pairs of two score lists (ties count neither)."""
    c = d = 0
    for i in range(len(a)):
        for j in range(i + 1, len(a)):
            s = (a[i] - a[j]) * (b[i] - b[j])
            c, d = c + (s > 0), d + (s < 0)
    return c, d


def main() -> None:
    from transfer_engine.compare.ranking import kendall_tau
    from transfer_engine.compare import compare

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--domains", default="digits,glyphs,digits-blocky")
    p.add_argument("--backbones", default=BACKBONES)
    p.add_argument("--select", default="auto", choices=("auto", "kfold", "val"))
    p.add_argument("--json", default=None)
    a = p.parse_args()
    rows, pooled = [], {"logme~val": [0, 0], "logme~test": [0, 0], "val~test": [0, 0], "kfold~test": [0, 0]}
    with tempfile.TemporaryDirectory(prefix="te-compare-ranking-") as tmp:
        for domain in a.domains.split(","):
            data = "builtin:digits"
            if domain != "digits":
                data = str(Path(tmp) / domain)
                DOMAINS[domain](Path(data), None)
            result = compare(data, Path(tmp) / "cache", a.backbones, out=Path(tmp) / f"out-{domain}",
                             select=a.select, progress=False)
            ok = [e for e in result.entries if e.error is None]
            logme, val, test = ([e.logme for e in ok], [e.linear_val for e in ok], [e.linear_test for e in ok])
            taus = {"logme~val": (logme, val), "logme~test": (logme, test), "val~test": (val, test)}
            if all(e.linear_kfold for e in ok):
                taus["kfold~test"] = ([e.linear_kfold["accuracy"] for e in ok], test)
            row = {"data": domain, "images": ok[0].images if ok else 0, "recommended": result.verdict.chosen,
                   "within_noise_of_best": list(result.verdict.tied),
                   "backbones": {e.backbone: {"logme": e.logme, "linear_kfold": _kfold(e), "linear_val": e.linear_val,
                                              "linear_test": e.linear_test, "knn_val": e.knn_val} for e in ok}}
            for key, (x, y) in taus.items():
                row[key] = kendall_tau(x, y)
                c, d = pairs(x, y)
                pooled[key][0] += c
                pooled[key][1] += d
            rows.append(row)
            print(f"## {domain} ({row['images']} images)")
            for e in ok:
                kfold = _kfold(e)
                shown = (f"{100 * kfold['accuracy']:5.1f}% [{100 * kfold['interval'][0]:.1f}, "
                         f"{100 * kfold['interval'][1]:.1f}]" if kfold else "-")
                print(f"  {e.backbone:20} LogME {e.logme:7.3f}  linear k-fold {shown}  val {100 * e.linear_val:5.1f}%  "
                      f"test {100 * e.linear_test:5.1f}%  knn val {100 * e.knn_val:5.1f}%")
            print("  tau: " + ", ".join(f"{k} {row[k]:+.2f}" for k in taus), flush=True)
            print(f"  recommendation: {result.recommendation}", flush=True)
    summary = {k: {"concordant": c, "discordant": d, "tau": (c - d) / (c + d) if c + d else None}
               for k, (c, d) in pooled.items()}
    print("pooled over every data set's pairs: " + ", ".join(
        f"{k} {v['concordant']} concordant / {v['discordant']} discordant (tau {v['tau']:+.2f})"
        for k, v in summary.items() if v["tau"] is not None))
    if a.json:
        Path(a.json).write_text(json.dumps({"rows": rows, "pooled": summary}, indent=2) + "\n")


def _kfold(e) -> dict | None:
    """The linear probe's k-fold accuracy and interval (without the per-image correctness)."""
    return {"accuracy": e.linear_kfold["accuracy"], "interval": e.linear_kfold["interval"],
            "k": e.linear_kfold["k"], "total": e.linear_kfold["total"]} if e.linear_kfold else None


if __name__ == "__main__":
    main()
