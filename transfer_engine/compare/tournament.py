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
import statistics
import sys
import time
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
    knn_val: float | None = None
    knn_test: float | None = None
    extracted: int = 0
    reused: int = 0
    extract_images_per_second: float | None = None
    latency_ms_batch1: float | None = None
    images_per_second_batch32: float | None = None
    probes_reused: bool = False
    runs: dict[str, str] = field(default_factory=dict)
    error: str | None = None

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
            backend: str = "auto", seed: int = 0, progress: bool = True) -> Comparison:
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
            _costs(entry, backbone, weights, seed)
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
        for key in ("linear_val", "linear_test", "knn_val", "knn_test", "runs"):
            setattr(entry, key, old.get(key))
        entry.probes_reused = True
        return
    for probe in PROBES:
        run_dir = out / "runs" / f"{entry.backbone.replace('/', '_')}-{probe}"
        result = train(cache, head=probe, out=run_dir, dataset=dataset, space=entry.space, sweep=True, seed=seed,
                       overwrite=True, progress=False)
        setattr(entry, f"{probe}_val", result.metrics["val_accuracy"])
        setattr(entry, f"{probe}_test", result.metrics.get("test_accuracy"))
        entry.runs[probe] = str(run_dir)


@torch.inference_mode()
def _costs(entry: Entry, backbone: str, weights: str, seed: int) -> None:
    """Parameters, and PyTorch fp32 latency at batch 1 (median of 5) and throughput at batch 32 (best of 2),
    measured here after a warm-up: what serving this backbone costs on this machine."""
    from transfer_engine.backbones import create_backbone

    bb = create_backbone(backbone, weights, seed=seed)
    model = bb.model.eval().to(memory_format=torch.channels_last)
    size = bb.preprocess.crop_size
    entry.parameters = sum(p.numel() for p in model.parameters())
    one = torch.randn(1, 3, size, size).contiguous(memory_format=torch.channels_last)
    model(one)
    times = []
    for _ in range(5):
        t = time.perf_counter()
        model(one)
        times.append(time.perf_counter() - t)
    entry.latency_ms_batch1 = 1000 * statistics.median(times)
    batch = torch.randn(32, 3, size, size).contiguous(memory_format=torch.channels_last)
    model(batch)
    best = math.inf
    for _ in range(2):
        t = time.perf_counter()
        model(batch)
        best = min(best, time.perf_counter() - t)
    entry.images_per_second_batch32 = 32 / best


def _recommend(ranked: list[Entry], quick: bool) -> str:
    good = [e for e in ranked if e.error is None and e.rank_value > -math.inf]
    if not good:
        return "no backbone could be ranked (see the errors in each row)"
    best = good[0]
    if quick:
        return (f"{best.backbone}: the highest LogME ({best.logme:.3f}); fit probes (without --quick) before "
                "choosing: LogME ranks, it does not promise an accuracy")
    close = [e for e in good if e.linear_val is not None and e.linear_val >= best.linear_val - WITHIN]
    fastest = max(close, key=lambda e: e.images_per_second_batch32 or 0.0)
    line = f"{best.backbone}: the most accurate on val ({100 * best.linear_val:.1f}% with a linear probe)"
    if fastest is not best:
        line += (f"; {fastest.backbone} is within 1 point ({100 * fastest.linear_val:.1f}%) and runs "
                 f"{fastest.images_per_second_batch32 / best.images_per_second_batch32:.1f}x faster at batch 32")
    return line


def _progress_line(e: Entry) -> str:
    if e.error:
        return f"compare: {e.backbone}: failed: {e.error}"
    probes = ("" if e.linear_val is None else
              f", linear val {_pct(e.linear_val)}, knn val {_pct(e.knn_val)}" + (" (probes reused)" if e.probes_reused
                                                                                 else ""))
    return (f"compare: {e.backbone}: {e.extracted} extracted, {e.reused} reused; LogME {e.logme:.3f}{probes}; "
            f"{e.latency_ms_batch1:.1f} ms at batch 1")


def _pct(v: float | None) -> str:
    return "-" if v is None else f"{100 * v:.1f}%"


def table(result: Comparison) -> list[str]:
    """The leaderboard as aligned text lines (what te compare prints)."""
    head = ("rank", "backbone", "LogME", "linear val", "linear test", "knn val", "knn test", "ms@1", "img/s@32",
            "params", "dim")
    rows = [head]
    for i, e in enumerate(result.entries, 1):
        if e.error:
            rows.append((str(i), e.backbone, "failed: " + e.error, "", "", "", "", "", "", "", ""))
            continue
        rows.append((str(i), e.backbone, f"{e.logme:.3f}", _pct(e.linear_val), _pct(e.linear_test), _pct(e.knn_val),
                     _pct(e.knn_test), f"{e.latency_ms_batch1:.1f}", f"{e.images_per_second_batch32:.1f}",
                     f"{e.parameters / 1e6:.1f}M", str(e.feature_dim)))
    widths = [max(len(r[c]) for r in rows if len(r) > c and not r[c].startswith("failed")) for c in range(len(head))]
    return ["  ".join(cell.ljust(widths[c]) if c < len(widths) else cell for c, cell in enumerate(r)).rstrip()
            for r in rows]


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
    write_text_durably(files["md"], "\n".join(md))
    _plot(result, files["png"])


def _plot(result: Comparison, path: Path) -> None:
    """Accuracy (linear probe val, or LogME with --quick) against latency at batch 1, the Pareto front
    (no other backbone is both faster and more accurate) drawn and every point labelled."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    quick = result.ranked_by == "LogME"
    points = [(e.latency_ms_batch1, 100 * e.linear_val if not quick else e.logme, e.backbone)
              for e in result.entries if e.error is None and e.latency_ms_batch1 is not None
              and (e.logme if quick else e.linear_val) is not None]
    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    front = pareto_front([(x, y) for x, y, _ in points])
    ax.scatter([p[0] for p in points], [p[1] for p in points], color="tab:blue")
    for x, y, label in points:
        ax.annotate(label, (x, y), textcoords="offset points", xytext=(4, 4), fontsize=8)
    if front:
        ax.plot([p[0] for p in front], [p[1] for p in front], color="tab:orange", label="Pareto front")
        ax.legend()
    ax.set_xlabel("latency at batch 1 (ms, PyTorch fp32, this machine)")
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
