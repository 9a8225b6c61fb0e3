"""`compare()`: which backbone for this data? Every candidate's features once into the shared cache, then
a score without training (LogME), te train's linear probe (with its sweep) and a k-NN probe on the cached
features, and what each backbone costs to run, in one leaderboard.

What a re-run costs: extraction reuses every row the cache has (te extract's rule), and the probes of a
backbone whose space and data set are unchanged are taken from the previous `compare.json` in --out
(said in its row), so adding a backbone costs that backbone's extraction and fits only.
"""

from __future__ import annotations

import json
import math
import sys
from dataclasses import asdict, dataclass, field
from fnmatch import fnmatch
from pathlib import Path
from typing import Any, Callable

import torch

from transfer_engine._durable import write_text_durably
from transfer_engine.compare.logme import logme
from transfer_engine.errors import TEError, UsageError, first_line

COMPARE_JSON = "compare.json"
COMPARE_MD = "compare.md"
COMPARE_PNG = "compare.png"
WITHIN = 0.01  # the recommendation: the fastest backbone within 1 point of the most accurate on val
Z95 = 1.96     # two-sided 95%: how far apart two val accuracies must be to be told apart
PROBES = ("linear", "knn")


@dataclass
class Entry:
    """One backbone's row. Accuracies are fractions; None where not measured (--quick, or an error)."""

    backbone: str
    weights: str
    space: str | None = None
    images: int = 0  # the data set's records when it was scored (probes are reused only for the same)
    feature_dim: int | None = None
    parameters: int | None = None
    logme: float | None = None
    linear_val: float | None = None
    linear_test: float | None = None
    val_images: int | None = None  # the val split the probes were selected and scored on
    knn_val: float | None = None
    knn_test: float | None = None
    extracted: int = 0
    reused: int = 0
    extract_images_per_second: float | None = None
    latency_ms_batch1: float | None = None          # PyTorch fp32, channels_last
    images_per_second_batch32: float | None = None
    ort_latency_ms_batch1: float | None = None      # onnxruntime fp32, the backbone's ONNX graph
    ort_images_per_second_batch32: float | None = None
    onnx_bytes: int | None = None                   # that graph's file: the fp32 model a user ships
    int8: dict[str, Any] | None = None              # with --int8: costs.int8_costs' figures
    costs_note: str | None = None                   # why a runtime's figures are missing
    probes_reused: bool = False
    runs: dict[str, str] = field(default_factory=dict)
    error: str | None = None

    @property
    def fp32_images_per_second(self) -> float:
        """The faster fp32 runtime's throughput at batch 32 (what the recommendation compares)."""
        return max(self.images_per_second_batch32 or 0.0, self.ort_images_per_second_batch32 or 0.0)

    @property
    def fp32_latency_ms(self) -> float | None:
        """The faster fp32 runtime's latency at batch 1 (the plot's x axis)."""
        found = [v for v in (self.latency_ms_batch1, self.ort_latency_ms_batch1) if v is not None]
        return min(found) if found else None

    @property
    def rank_value(self) -> float:
        value = self.linear_val if self.linear_val is not None else self.logme
        return -math.inf if value is None else value


@dataclass
class Comparison:
    """The leaderboard: `entries` best first (failed backbones last), the recommendation, the files."""

    dataset: str
    data: str
    cache: str
    ranked_by: str
    entries: list[Entry]
    recommendation: str
    files: dict[str, str] = field(default_factory=dict)

    @property
    def logme_tau(self) -> float | None:
        """Kendall's tau between the LogME and the linear-probe val rankings (None below 3 backbones):
        how far the no-training score could be trusted on this data."""
        pairs = [(e.logme, e.linear_val) for e in self.entries
                 if e.error is None and e.logme is not None and e.linear_val is not None]
        return kendall_tau([a for a, _ in pairs], [b for _, b in pairs]) if len(pairs) >= 3 else None

    def to_dict(self) -> dict[str, Any]:
        return {"dataset": self.dataset, "data": self.data, "cache": self.cache, "ranked_by": self.ranked_by,
                "recommendation": self.recommendation, "logme_tau": self.logme_tau,
                "entries": [asdict(e) for e in self.entries], "files": self.files}


def resolve_backbones(spec: str) -> list[str]:
    """The backbone names of `--backbones`: comma-separated names and shell patterns ("resnet*"), each
    checked before any work (an unknown name is the registry's one-line error, with its suggestion)."""
    from transfer_engine.backbones import get_backbone_spec, list_backbones

    names: list[str] = []
    for part in (p.strip() for p in spec.split(",")):
        if not part:
            continue
        if any(c in part for c in "*?["):
            matched = [n for n in list_backbones() if fnmatch(n, part)]
            if not matched:
                raise UsageError(f"--backbones {part}: no installed backbone matches (te backbones lists them)")
            names += matched
        else:
            names.append(get_backbone_spec(part).name)
    names = list(dict.fromkeys(names))
    if not names:
        raise UsageError("--backbones names no backbone; give NAME[,NAME...] or a pattern such as 'resnet*'")
    return names


def compare(data: str, cache: str | Path, backbones: str | list[str], *, out: str | Path = "compare",
            weights: str = "DEFAULT", name: str | None = None, quick: bool = False, limit: int | None = None,
            backend: str = "auto", seed: int = 0, int8: bool = False, progress: bool = True) -> Comparison:
    """Rank `backbones` for the images of `data`, from features extracted once into `cache`.

    Args:
        data: what `te extract --data` takes.
        cache: the feature cache shared by every backbone (created when missing).
        backbones: names and shell patterns (a comma-separated string or a list).
        out: the folder for compare.json / .md / .png and the probes' runs (runs/BACKBONE-PROBE).
        weights: the weights of every backbone ("DEFAULT", "none", a name they declare).
        name: the data set's name in the cache (default: as te extract names it).
        quick: rank by LogME alone (no probe is fitted).
        limit: only the first N images.
        backend, seed: as te extract takes them.
        int8: also quantize each backbone's graph (te export's portable recipe) and report its speed, size
            and feature cosine to fp32 on held-out images.
        progress: progress lines on stderr.

    Returns:
        The `Comparison` (also written to `out`).

    Raises:
        UsageError: an unknown backbone, bad data (before any work, for every backbone).
    """
    from transfer_engine.extract.runner import extract

    say: Callable[[str], None] = (lambda line: print(line, file=sys.stderr, flush=True)) if progress else (
        lambda line: None)
    names = resolve_backbones(backbones if isinstance(backbones, str) else ",".join(backbones))
    out = Path(out).expanduser().absolute()
    previous = _previous_entries(out)
    entries: list[Entry] = []
    dataset = name
    for i, backbone in enumerate(names, 1):
        say(f"compare [{i}/{len(names)}] {backbone}")
        entry = Entry(backbone, weights)
        try:
            summary = extract(backbone, data, cache, weights=weights, name=dataset, limit=limit, backend=backend,
                              seed=seed, progress=progress)
        except UsageError:
            raise  # the data or the cache is wrong: the same for every backbone
        except TEError as exc:
            entry.error = f"extract: {first_line(exc)}"
            entries.append(entry)
            say(f"compare: {backbone}: {entry.error}")
            continue
        dataset = summary.dataset
        entry.space, entry.weights = summary.space, summary.weights
        entry.extracted, entry.reused, entry.images = summary.extracted, summary.reused, summary.total
        entry.extract_images_per_second = summary.images_per_second if summary.extracted else None
        try:
            _score(entry, cache, dataset, quick, previous.get(_reuse_key(entry.space, entry.images)), out, seed, say)
            _costs(entry, backbone, weights, seed, data, cache, dataset, int8)
        except TEError as exc:
            entry.error = first_line(exc)
        entries.append(entry)
        say(_progress_line(entry))
    ranked = sorted(entries, key=lambda e: (e.error is not None, -e.rank_value))
    result = Comparison(dataset or "", data, str(Path(cache).expanduser().absolute()),
                        "LogME" if quick else "linear probe val accuracy", ranked, _recommend(ranked, quick))
    _write(result, out)
    return result


def _reuse_key(space: str | None, images: int | None) -> str:
    """Probes are reused for the same space over the same number of images."""
    return f"{space}:{images}"


def _previous_entries(out: Path) -> dict[str, dict[str, Any]]:
    """{space:images: entry} of the compare.json already in `out` (probes are reused from it)."""
    try:
        old = json.loads((out / COMPARE_JSON).read_text())
        return {_reuse_key(e.get("space"), e.get("images")): e for e in old["entries"] if e.get("space") and not e.get("error")}
    except (OSError, ValueError, KeyError, TypeError):
        return {}


def _score(entry: Entry, cache, dataset: str, quick: bool, old: dict[str, Any] | None, out: Path, seed: int,
           say) -> None:
    """LogME on the train features; the linear and k-NN probes (or theirs from the last compare.json)."""
    from transfer_engine.train import train
    from transfer_engine.train.data import load_training_data

    data = load_training_data(cache, dataset=dataset, space=entry.space)
    try:
        entry.feature_dim = data.space.dim
        train_split = data.splits["train"]
        features = train_split.features if train_split.features is not None else data.space.gather(train_split.keys)
        entry.logme = logme(features, train_split.labels)
    finally:
        data.close()
    if quick:
        return
    if old is not None and all(old.get(f"{p}_val") is not None for p in PROBES):
        for key in ("linear_val", "linear_test", "knn_val", "knn_test", "val_images", "runs"):
            setattr(entry, key, old.get(key))
        entry.probes_reused = True
        return
    for probe in PROBES:
        run_dir = out / "runs" / f"{entry.backbone.replace('/', '_')}-{probe}"
        result = train(cache, head=probe, out=run_dir, dataset=dataset, space=entry.space, sweep=True, seed=seed,
                       overwrite=True, progress=False)
        setattr(entry, f"{probe}_val", result.metrics["val_accuracy"])
        setattr(entry, f"{probe}_test", result.metrics.get("test_accuracy"))
        entry.val_images = result.metrics.get("samples", {}).get("val")
        entry.runs[probe] = str(run_dir)


def _costs(entry: Entry, backbone: str, weights: str, seed: int, data: str, cache, dataset: str,
           int8: bool) -> None:
    """Parameters, and what serving the backbone costs here (`costs`): PyTorch fp32, onnxruntime fp32 and
    the ONNX file's size, int8 when asked. A runtime that cannot run it leaves its columns empty and says
    why in `costs_note`; the PyTorch figures are always measured."""
    from transfer_engine.backbones import create_backbone
    from transfer_engine.cache import FeatureCache
    from transfer_engine.compare import costs
    from transfer_engine.extract.backend import exported_backbone
    from transfer_engine.extract.engines import ort_available

    bb = create_backbone(backbone, weights, seed=seed)
    size = bb.preprocess.crop_size
    entry.parameters = sum(p.numel() for p in bb.model.parameters())
    onnx, timing = None, None
    if not ort_available(torch.device("cpu")):
        entry.costs_note = "onnxruntime is not installed: no onnxruntime or int8 figures"
    else:
        try:  # before PyTorch's timing, which converts the model to channels_last
            with FeatureCache.open(cache, create=False) as fc:
                onnx = exported_backbone(bb, fc)
                if int8:  # the images it is calibrated and checked on
                    ds = fc.dataset(dataset)
                    by_split = {split: ds.select(split) for split in ("train", "val", "test")}
            timing = costs.ort_timing(onnx, size)
        except Exception as exc:  # cannot export or run: the row keeps its PyTorch figures
            entry.costs_note = f"onnxruntime: {first_line(exc, 200)}"
    pt = costs.torch_timing(bb.model, size)
    entry.latency_ms_batch1, entry.images_per_second_batch32 = pt.latency_ms_batch1, pt.images_per_second_batch32
    if onnx is None or timing is None:
        return
    entry.onnx_bytes = onnx.stat().st_size
    entry.ort_latency_ms_batch1, entry.ort_images_per_second_batch32 = (timing.latency_ms_batch1,
                                                                        timing.images_per_second_batch32)
    if not int8:
        return
    try:
        calibration, _ = costs.split_images(bb, data, by_split, ("train",), costs.INT8_CALIBRATION_IMAGES)
        check, split = costs.split_images(bb, data, by_split, ("val", "test", "train"), costs.INT8_CHECK_IMAGES)
        entry.int8 = costs.int8_costs(onnx, calibration, check, size) | {"check_split": split}
    except Exception as exc:
        entry.costs_note = f"int8: {first_line(exc, 200)}"


def _recommend(ranked: list[Entry], quick: bool) -> str:
    good = [e for e in ranked if e.error is None and e.rank_value > -math.inf]
    if not good:
        return "no backbone could be ranked (see the errors in each row)"
    best = good[0]
    if quick:
        return (f"{best.backbone}: the highest LogME ({best.logme:.3f}); fit probes (without --quick) before "
                "choosing: LogME ranks, it does not promise an accuracy")
    close = [e for e in good if e.linear_val is not None and e.linear_val >= best.linear_val - WITHIN]
    fastest = max(close, key=lambda e: e.fp32_images_per_second)
    line = f"{best.backbone}: the most accurate on val ({100 * best.linear_val:.1f}% with a linear probe)"
    if fastest is not best:
        line += (f"; {fastest.backbone} is within 1 point ({100 * fastest.linear_val:.1f}%) and runs "
                 f"{fastest.fp32_images_per_second / best.fp32_images_per_second:.1f}x faster at batch 32 (fp32)")
    return line + _noise(best, good)


def val_noise(a: float, b: float, n: int) -> float:
    """The least difference between two accuracies measured on n val images each that is not chance at
    95% (normal approximation of two binomial proportions, independent: a bound, not a paired test)."""
    return Z95 * math.sqrt((a * (1 - a) + b * (1 - b)) / n)


def _noise(best: Entry, good: list[Entry]) -> str:
    """What the val set cannot tell apart from the best: said so, since near ties on a small val split
    rank by luck (docs/compare.md: over three data sets, val order predicted test order in 4 of 7 pairs)."""
    if not best.val_images:
        return ""
    tied = [e for e in good if e is not best and e.linear_val is not None
            and best.linear_val - e.linear_val < val_noise(best.linear_val, e.linear_val, best.val_images)]
    if not tied:
        return ""
    margin = max(val_noise(best.linear_val, e.linear_val, best.val_images) for e in tied)
    return (f"; {', '.join(e.backbone for e in tied)} {'is' if len(tied) == 1 else 'are'} within the noise of "
            f"{best.val_images} val images (differences below {100 * margin:.1f} points are not significant at "
            "95%): on this data, choose among them by cost")


def _progress_line(e: Entry) -> str:
    if e.error:
        return f"compare: {e.backbone}: failed: {e.error}"
    probes = ("" if e.linear_val is None else
              f", linear val {_pct(e.linear_val)}, knn val {_pct(e.knn_val)}" + (" (probes reused)" if e.probes_reused
                                                                                 else ""))
    return (f"compare: {e.backbone}: {e.extracted} extracted, {e.reused} reused; LogME {e.logme:.3f}{probes}; "
            f"{e.latency_ms_batch1:.1f} ms at batch 1 (PyTorch)"
            + ("" if e.ort_latency_ms_batch1 is None else f", {e.ort_latency_ms_batch1:.1f} (onnxruntime)")
            + ("" if e.int8 is None else f", int8 {e.int8['images_per_second_batch32']:.1f} img/s at batch 32")
            + ("" if not e.costs_note else f"; {e.costs_note}"))


def _pct(v: float | None) -> str:
    return "-" if v is None else f"{100 * v:.1f}%"


def _num(v: float | None, fmt: str = ".1f") -> str:
    return "-" if v is None else format(v, fmt)


def table(result: Comparison) -> list[str]:
    """The leaderboard as aligned text lines (what te compare prints). Costs: ms per image at batch 1 and
    images/s at batch 32 for PyTorch fp32 (pt) and onnxruntime fp32 (ort), the ONNX file's MB, and with
    --int8 the int8 graph's images/s and its features' least cosine to fp32."""
    with_int8 = any(e.int8 for e in result.entries)
    head = ("rank", "backbone", "LogME", "linear val", "linear test", "knn val", "knn test", "pt ms@1", "ort ms@1",
            "pt img/s@32", "ort img/s@32", "MB", "params", "dim") + (("int8 img/s@32", "int8 cos") if with_int8 else ())
    rows = [head]
    for i, e in enumerate(result.entries, 1):
        if e.error:
            rows.append((str(i), e.backbone, "failed: " + e.error))
            continue
        row = (str(i), e.backbone, f"{e.logme:.3f}", _pct(e.linear_val), _pct(e.linear_test), _pct(e.knn_val),
               _pct(e.knn_test), _num(e.latency_ms_batch1), _num(e.ort_latency_ms_batch1),
               _num(e.images_per_second_batch32), _num(e.ort_images_per_second_batch32),
               _num(None if e.onnx_bytes is None else e.onnx_bytes / 2**20), f"{e.parameters / 1e6:.1f}M",
               str(e.feature_dim))
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


def _write(result: Comparison, out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    payload = result.to_dict()
    files = {"json": out / COMPARE_JSON, "md": out / COMPARE_MD, "png": out / COMPARE_PNG}
    result.files = {k: str(v) for k, v in files.items()}
    payload["files"] = result.files
    write_text_durably(files["json"], json.dumps(payload, indent=2) + "\n")
    md = [f"# te compare: {result.dataset} ({result.data})", "", f"Ranked by {result.ranked_by}.", "",
          "```", *table(result), "```", "", f"Recommendation: {result.recommendation}", ""]
    if result.logme_tau is not None:
        md += [f"Kendall's tau between the LogME and linear-probe rankings here: {result.logme_tau:+.2f}", ""]
    md += [f"- {line}" for line in notes(result)] + ([""] if notes(result) else [])
    write_text_durably(files["md"], "\n".join(md))
    _plot(result, files["png"])


def _plot(result: Comparison, path: Path) -> None:
    """Accuracy (linear probe val, or LogME with --quick) against latency at batch 1, the Pareto front
    (no other backbone is both faster and more accurate) drawn and every point labelled."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    quick = result.ranked_by == "LogME"
    points = [(e.fp32_latency_ms, 100 * e.linear_val if not quick else e.logme, e.backbone)
              for e in result.entries if e.error is None and e.fp32_latency_ms is not None
              and (e.logme if quick else e.linear_val) is not None]
    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    front = pareto_front([(x, y) for x, y, _ in points])
    ax.scatter([p[0] for p in points], [p[1] for p in points], color="tab:blue")
    for x, y, label in points:
        ax.annotate(label, (x, y), textcoords="offset points", xytext=(4, 4), fontsize=8)
    if front:
        ax.plot([p[0] for p in front], [p[1] for p in front], color="tab:orange", label="Pareto front")
        ax.legend()
    ax.margins(x=0.2, y=0.1)  # room for the labels of the outermost points
    ax.set_xlabel("latency at batch 1 (ms, the faster of PyTorch and onnxruntime fp32, this machine)")
    ax.set_ylabel("LogME" if quick else "linear probe val accuracy (%)")
    ax.set_title(f"te compare: {result.dataset}")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def kendall_tau(a: list[float], b: list[float]) -> float:
    """Kendall's tau-b of two equally long score lists: +1 same order, -1 reversed (ties count neither)."""
    concordant = discordant = ties_a = ties_b = 0
    for i in range(len(a)):
        for j in range(i + 1, len(a)):
            da, db = a[i] - a[j], b[i] - b[j]
            if da == 0 and db == 0:
                continue
            if da == 0:
                ties_a += 1
            elif db == 0:
                ties_b += 1
            elif (da > 0) == (db > 0):
                concordant += 1
            else:
                discordant += 1
    denominator = math.sqrt((concordant + discordant + ties_a) * (concordant + discordant + ties_b))
    return (concordant - discordant) / denominator if denominator else 0.0


def pareto_front(points: list[tuple[float, float]]) -> list[tuple[float, float]]:
    """The points no other point beats on both (lower x, higher y), by increasing x."""
    front: list[tuple[float, float]] = []
    for x, y in sorted(points, key=lambda p: (p[0], -p[1])):
        if not front or y > front[-1][1]:
            front.append((x, y))
    return front
