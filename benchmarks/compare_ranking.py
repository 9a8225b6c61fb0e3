"""Does LogME rank backbones as the linear probe does? `te compare` on several real data sets, one run.

    PYTHONPATH=. python benchmarks/compare_ranking.py [--domains digits,glyphs,digits-blocky]
                                                      [--backbones efficientnet_lite0,...] [--json PATH]

For each data set (builtin:digits, and the offline sets of benchmarks/_domains.py: letters rendered from
the machine's fonts with test fonts unseen in train, the 8x8 digits upscaled without smoothing), runs
`te compare` over the backbones (default: the three with real ImageNet weights that install offline) and
prints, per data set, each backbone's LogME and linear-probe val/test accuracy, and Kendall's tau between
LogME and the probe's val ranking, LogME and the test ranking, and the val and test rankings themselves
(how stable the probe's own ranking is), then the same pooled over every data set's pairs of backbones.
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
    from transfer_engine.compare.tournament import compare, kendall_tau

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--domains", default="digits,glyphs,digits-blocky")
    p.add_argument("--backbones", default=BACKBONES)
    p.add_argument("--json", default=None)
    a = p.parse_args()
    rows, pooled = [], {"logme~val": [0, 0], "logme~test": [0, 0], "val~test": [0, 0]}
    with tempfile.TemporaryDirectory(prefix="te-compare-ranking-") as tmp:
        for domain in a.domains.split(","):
            data = "builtin:digits"
            if domain != "digits":
                data = str(Path(tmp) / domain)
                DOMAINS[domain](Path(data), None)
            result = compare(data, Path(tmp) / "cache", a.backbones, out=Path(tmp) / f"out-{domain}", progress=False)
            ok = [e for e in result.entries if e.error is None]
            logme, val, test = ([e.logme for e in ok], [e.linear_val for e in ok], [e.linear_test for e in ok])
            taus = {"logme~val": (logme, val), "logme~test": (logme, test), "val~test": (val, test)}
            row = {"data": domain, "images": ok[0].images if ok else 0,
                   "backbones": {e.backbone: {"logme": e.logme, "linear_val": e.linear_val,
                                              "linear_test": e.linear_test, "knn_val": e.knn_val} for e in ok}}
            for key, (x, y) in taus.items():
                row[key] = kendall_tau(x, y)
                c, d = pairs(x, y)
                pooled[key][0] += c
                pooled[key][1] += d
            rows.append(row)
            print(f"## {domain} ({row['images']} images)")
            for e in ok:
                print(f"  {e.backbone:20} LogME {e.logme:7.3f}  linear val {100 * e.linear_val:5.1f}%  test "
                      f"{100 * e.linear_test:5.1f}%  knn val {100 * e.knn_val:5.1f}%")
            print("  tau: " + ", ".join(f"{k} {row[k]:+.2f}" for k in taus), flush=True)
    summary = {k: {"concordant": c, "discordant": d, "tau": (c - d) / (c + d) if c + d else None}
               for k, (c, d) in pooled.items()}
    print("pooled over every data set's pairs: " + ", ".join(
        f"{k} {v['concordant']} concordant / {v['discordant']} discordant (tau {v['tau']:+.2f})"
        for k, v in summary.items()))
    if a.json:
        Path(a.json).write_text(json.dumps({"rows": rows, "pooled": summary}, indent=2) + "\n")


if __name__ == "__main__":
    main()
