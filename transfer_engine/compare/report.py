"""What `te compare` prints and writes: each backbone's progress line, the leaderboard table, notes,
compare.json / .md / .png."""

from __future__ import annotations

import json
from pathlib import Path

from transfer_engine._durable import write_text_durably
from transfer_engine.compare.ranking import chart_points, interval, pareto_front
from transfer_engine.compare.results import Comparison, Entry
from transfer_engine.core.format import TABLE_MISSING, percent, percent_interval

COMPARE_JSON = "compare.json"
COMPARE_MD = "compare.md"
COMPARE_PNG = "compare.png"


def _cell(v: float | None) -> str:
    return percent(v, missing=TABLE_MISSING)


def _num(v: float | None, fmt: str = ".1f") -> str:
    return TABLE_MISSING if v is None else format(v, fmt)


def _kfold_cell(e: Entry) -> str:
    if not e.linear_kfold:
        return TABLE_MISSING
    return percent_interval(e.linear_kfold["accuracy"], interval(e))


def table(result: Comparison) -> list[str]:
    """The leaderboard as aligned text lines (what te compare prints). Under k-fold selection the first
    score is the linear probe's k-fold accuracy over train+val with its 95% interval (what ranks). Costs:
    ms per image at batch 1 and images/s at batch 32 for PyTorch fp32 (pt) and onnxruntime fp32 (ort), the
    ONNX file's MB, and with --int8 the int8 graph's images/s and its features' least cosine to fp32."""
    with_int8 = any(e.int8 for e in result.entries)
    kfold = any(e.linear_kfold for e in result.entries)
    folds = next((e.linear_kfold["k"] for e in result.entries if e.linear_kfold), 0)
    head = (("rank", "backbone", "LogME") + ((f"linear {folds}-fold [95%]",) if kfold else ())
            + ("linear val", "linear test", "knn val", "knn test", "pt ms@1", "ort ms@1", "pt img/s@32", "ort img/s@32",
               "MB", "params", "dim") + (("int8 img/s@32", "int8 cos") if with_int8 else ()))
    rows = [head]
    for i, e in enumerate(result.entries, 1):
        if e.error:
            rows.append((str(i), e.backbone, "failed: " + e.error))
            continue
        row = ((str(i), e.backbone, f"{e.logme:.3f}") + ((_kfold_cell(e),) if kfold else ())
               + (_cell(e.linear_val), _cell(e.linear_test), _cell(e.knn_val), _cell(e.knn_test),
                  _num(e.latency_ms_batch1), _num(e.ort_latency_ms_batch1), _num(e.images_per_second_batch32),
                  _num(e.ort_images_per_second_batch32), _num(None if e.onnx_bytes is None else e.onnx_bytes / 2**20),
                  f"{e.parameters / 1e6:.1f}M", str(e.feature_dim)))
        if with_int8:
            row += ((_num(e.int8["images_per_second_batch32"]), f"{e.int8['min_cosine']:.3f}") if e.int8
                    else ("-", "-"))
        rows.append(row)
    widths = [max(len(r[c]) for r in rows if len(r) > c and not r[c].startswith("failed")) for c in range(len(head))]
    return ["  ".join(cell.ljust(widths[c]) if c < len(widths) else cell for c, cell in enumerate(r)).rstrip()
            for r in rows]


def notes(result: Comparison) -> list[str]:
    """One line per backbone whose costs are incomplete, and what the int8 columns mean (with --int8)."""
    lines = [f"{e.backbone}: {e.costs_note}" for e in result.entries if e.costs_note]
    done = [e.int8 for e in result.entries if e.int8]
    if done:
        lines.append(f"int8: every node in int8 ({done[0]['recipe']} recipe, calibrated on "
                     f"{done[0]['calibration_images']} train images), cosine to fp32 features on "
                     f"{done[0]['check_images']} {done[0]['check_split']} images; te export --quantize int8 keeps "
                     "sensitive nodes in float to meet its accuracy gate")
    return lines


def progress_line(e: Entry) -> str:
    """The line te compare says about a backbone when it is done (stderr, with progress on)."""
    if e.error:
        return f"compare: {e.backbone}: failed: {e.error}"
    probes = ""
    if e.linear_val is not None:
        kfold = f", linear {e.linear_kfold['k']}-fold {percent(e.linear_kfold['accuracy'])}" if e.linear_kfold else ""
        probes = (f"{kfold}, linear val {percent(e.linear_val)}, knn val {percent(e.knn_val)}"
                  + (" (probes reused)" if e.probes_reused else ""))
    return (f"compare: {e.backbone}: {e.extracted} extracted, {e.reused} reused; LogME {e.logme:.3f}{probes}; "
            f"{e.latency_ms_batch1:.1f} ms at batch 1 (PyTorch)"
            + ("" if e.ort_latency_ms_batch1 is None else f", {e.ort_latency_ms_batch1:.1f} (onnxruntime)")
            + ("" if e.int8 is None else f", int8 {e.int8['images_per_second_batch32']:.1f} img/s at batch 32")
            + ("" if not e.costs_note else f"; {e.costs_note}"))


def write(result: Comparison, out: Path) -> None:
    """compare.json (every figure), compare.md (the table and the recommendation) and compare.png."""
    out.mkdir(parents=True, exist_ok=True)
    files = {"json": out / COMPARE_JSON, "md": out / COMPARE_MD, "png": out / COMPARE_PNG}
    result.files = {k: str(v) for k, v in files.items()}
    write_text_durably(files["json"], json.dumps(result.to_dict(), indent=2) + "\n")
    md = [f"# te compare: {result.dataset} ({result.data})", "", f"Ranked by {result.ranked_by}.", "",
          "```", *table(result), "```", "", f"Recommendation: {result.recommendation}", ""]
    if result.logme_tau is not None:
        md += [f"Kendall's tau between the LogME and linear-probe rankings here: {result.logme_tau:+.2f}", ""]
    md += [f"- {line}" for line in notes(result)] + ([""] if notes(result) else [])
    write_text_durably(files["md"], "\n".join(md))
    plot(result, files["png"])


def plot(result: Comparison, path: Path) -> None:
    """The ranking score (with its 95% interval as an error bar; LogME with --quick) against latency at
    batch 1, the Pareto front of the scores drawn and every point labelled."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    quick = result.selected_by == "LogME"
    points = chart_points(result.entries, result.selected_by)
    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    front = pareto_front([(p.x, p.y) for p in points])
    if points:
        ax.errorbar([p.x for p in points], [p.y for p in points],
                    yerr=[[p.y - p.low for p in points], [p.high - p.y for p in points]],
                    fmt="o", color="tab:blue", ecolor="tab:blue", capsize=4,
                    label=None if quick else "95% interval")
    for p in points:
        ax.annotate(p.backbone, (p.x, p.y), textcoords="offset points", xytext=(6, 4), fontsize=8)
    if front:
        ax.plot([p[0] for p in front], [p[1] for p in front], color="tab:orange", label="Pareto front")
    if front or (points and not quick):
        ax.legend(fontsize=8)
    ax.margins(x=0.2, y=0.1)  # room for the labels of the outermost points
    ax.set_xlabel("latency at batch 1 (ms, the faster of PyTorch and onnxruntime fp32, this machine)")
    ax.set_ylabel("LogME" if quick else f"linear probe {result.ranked_by.removeprefix('linear probe ')} (%)")
    ax.set_title(f"te compare: {result.dataset}")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
