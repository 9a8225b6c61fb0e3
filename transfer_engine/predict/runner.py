"""`predict()`: what `te predict FILE.onnx --data SRC` does: classify images with onnxruntime.

Everything comes from the model's te metadata: class names, and either the preprocessing (applied here
with the same PyTorch transform the run used) or the fact that the graph does it (uint8 pixels are fed).
Unreadable or non-image files are reported and skipped; the output file appears only when complete
(written through `transfer_engine._durable`: on disk before it is renamed into place, and no temporary
file left behind by a failure).

File names that are not valid UTF-8 are written as people see them (`display_path`: each byte that is
not UTF-8 as \\xNN), so --out files and --json are always valid UTF-8; the same rule as te's messages.
"""

from __future__ import annotations

import csv
import io
import json
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np

from transfer_engine._durable import write_text_durably
from transfer_engine.core.configs import PredictConfig
from transfer_engine.core.paths import display_path
from transfer_engine.core.progress import Progress, Say, renamed, say_of
from transfer_engine.data.unlabelled import open_images
from transfer_engine.errors import UsageError
from transfer_engine.onnx.metadata import ModelMetadata, read_metadata
from transfer_engine.onnx.recipes import recipe_warning
from transfer_engine.onnx.runtime import open_session, resolve_provider, run_grouped, uint8_array
from transfer_engine.predict.progress import Progress as Meter

OUT_FORMATS = (".csv", ".jsonl")


@dataclass
class PredictSummary:
    """What `predict` did.

    Attributes:
        model: the ONNX file; variant: fp32/int8/fp16; provider: the onnxruntime provider that ran it.
        images: images found; predicted: images classified; failed: [{path, reason}] of those skipped.
        accuracy: top-1 accuracy when the data is labelled with the model's class names, else None.
        out: the file written (None: predictions are in `predictions`).
        warnings: what te predict warned about (e.g. an int8 model checked on another CPU family).
        predictions: [{path, prediction, probability, top_k: [{class, probability}], label}] when no `out`.
    """

    model: str
    variant: str
    provider: str
    provider_reason: str
    images: int
    predicted: int
    failed: list[dict[str, str]]
    seconds: float
    images_per_second: float
    accuracy: float | None
    labelled: int
    top_k: int
    out: str | None
    predictions: list[dict[str, Any]] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def predict(model: str | os.PathLike, data: "str | PredictConfig", *, progress: Progress = False, log: Say | None = None,
            **fields: Any) -> PredictSummary:
    """Classify images with an ONNX model written by `te export`.

    Args:
        model: the .onnx file (te metadata required).
        data: the images (a folder, flat or CLASS/IMAGE for accuracy; one image file; a .csv/.jsonl
            manifest; builtin:NAME), or a whole `core.configs.PredictConfig`, whose fields' help describes
            every option: out (a .csv or .jsonl file; None: the predictions are returned in
            `PredictSummary.predictions`), provider, batch_size, top_k, follow_symlinks.
        fields: the config's fields as keywords (they override those of a config given).
        progress: the line about the provider, any warning (also in `PredictSummary.warnings`) and the
            progress line: True on stderr, False none, a function is handed each line (`core.progress`).
        log: deprecated, the function `progress` now takes; with progress=True the progress line is
            still drawn on stderr and the other lines go to `log`, as before.

    Returns:
        The `PredictSummary`.

    Raises:
        UsageError: not an ONNX model with te metadata, a backbone or head part, a bad --out, top_k, data.
    """
    cfg = PredictConfig.of(data, **fields) if isinstance(data, PredictConfig) else PredictConfig(data=data, **fields)
    started = time.perf_counter()
    say = say_of(renamed(progress, "log", log, "predict"))
    meta = read_metadata(model)
    if meta.part != "model":
        raise UsageError(f"{model} is the {meta.part} part of an export ({'features -> logits' if meta.part == 'head' else 'images -> features'}); "
                         "te predict needs the whole model (the FILE.onnx that te export --out wrote)")
    classes = meta.class_names
    if not 1 <= cfg.top_k <= len(classes):
        raise UsageError(f"--top-k {cfg.top_k}: expected 1..{len(classes)} (the model has {len(classes)} classes)")
    out_path = _check_out(cfg.out, cfg.data)
    source = open_images(cfg.data, cfg.follow_symlinks)
    samples = list(source.samples())
    if not samples:
        raise UsageError(f"--data {cfg.data}: no images found")
    chosen, reason = resolve_provider(cfg.provider)
    session = open_session(str(model), chosen)
    if session.note:
        reason = session.note
    say(f"te predict: onnxruntime on {session.provider} ({reason}); {meta.variant} model, "
        f"{'preprocessing in the graph' if meta.input.in_graph_preprocessing else 'preprocessing from its metadata'}")
    warnings = []
    if meta.variant == "int8":
        warning = recipe_warning(meta.quantization or None)
        if warning:
            warnings.append(warning)
            say(f"te: warning: {warning}")
    truth = _true_labels(source.class_names, classes)

    rows: list[dict[str, Any]] = []
    failed: list[dict[str, str]] = []
    correct = labelled = 0
    bar = Meter(len(samples), enabled=progress, label="te predict")
    for batch_samples, arrays, batch_failed in _batches(source, samples, meta, cfg.batch_size):
        failed.extend(batch_failed)
        if arrays:
            (logits,) = run_grouped(session, arrays, cfg.batch_size, outputs=["logits"])
            probs = _softmax(logits.astype(np.float64))
            top = np.argsort(-probs, axis=1)[:, :cfg.top_k]
            for sample, p, idx in zip(batch_samples, probs, top):
                row = {"path": display_path(sample.path), "prediction": classes[idx[0]], "probability": float(p[idx[0]]),
                       "top_k": [{"class": classes[i], "probability": float(p[i])} for i in idx],
                       "label": None if sample.label is None or not source.class_names
                       else source.class_names[sample.label]}
                if truth is not None and sample.label is not None:
                    labelled += 1
                    correct += int(truth[sample.label] == idx[0])
                rows.append(row)
        bar.update(len(batch_samples), len(batch_failed))
    bar.close()
    failed.extend({**f, "path": display_path(f["path"])} for f in source.skipped())
    if out_path is not None:
        _write(out_path, rows, cfg.top_k)
    seconds = time.perf_counter() - started
    return PredictSummary(str(model), meta.variant, session.provider, reason, len(samples), len(rows), failed,
                          seconds, len(rows) / seconds if seconds > 0 else 0.0,
                          correct / labelled if labelled else None, labelled, cfg.top_k,
                          None if out_path is None else str(out_path), [] if out_path is not None else rows,
                          warnings)


def _batches(source: Any, samples: list, meta: ModelMetadata,
             batch_size: int) -> Iterator[tuple[list, list[np.ndarray], list[dict[str, str]]]]:
    """(samples read, their model inputs, failures) per batch, decoded in a background thread."""
    from transfer_engine._prefetch import prefetched

    tensor = False  # what the decoder gives: a PIL image, or (the torch resampler) PIL's pixels as a tensor
    if meta.input.in_graph_preprocessing:
        layout = meta.input.layout
        prepare: Callable[[Any], np.ndarray] = lambda image: uint8_array(image, layout)  # noqa: E731
    else:
        spec = meta.preprocess_spec()
        transform, tensor = spec.transform(), spec.resampler == "torch"
        prepare = lambda image: transform(image).numpy()  # noqa: E731

    def produce() -> Iterator[tuple[list, list[np.ndarray], list[dict[str, str]]]]:
        for start in range(0, len(samples), batch_size):
            ok, arrays, bad = [], [], []
            for sample in samples[start:start + batch_size]:
                try:
                    arrays.append(prepare(source.decode(sample, source.read_bytes(sample), tensor)))
                    ok.append(sample)
                except Exception as exc:  # unreadable, truncated, not an image: reported and skipped
                    bad.append({"path": display_path(sample.path), "reason": f"{type(exc).__name__}: {exc}"[:200]})
            yield ok, arrays, bad

    return prefetched(produce(), depth=2, name="te-predict-decode")


def _true_labels(source_classes: list[str], model_classes: list[str]) -> list[int] | None:
    """Source label -> model class index, when every source class is one of the model's (else None)."""
    if not source_classes or any(c not in model_classes for c in source_classes):
        return None
    return [model_classes.index(c) for c in source_classes]


def _softmax(logits: np.ndarray) -> np.ndarray:
    e = np.exp(logits - logits.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def _check_out(out: str | os.PathLike | None, data: str) -> Path | None:
    """--out as a path, once it can be written without harm (before any image is read)."""
    if out is None:
        return None
    path = Path(out).expanduser().absolute()
    if path.suffix.lower() not in OUT_FORMATS:
        raise UsageError(f"--out {out}: expected a .csv or .jsonl file name")
    if path.is_dir():
        raise UsageError(f"--out {out} is a directory; expected a .csv or .jsonl file name")
    if not path.parent.is_dir():
        raise UsageError(f"--out {out}: the folder {path.parent} does not exist")
    if _same_file(path, data):  # a manifest is .csv/.jsonl too: the predictions would replace the input
        raise UsageError(f"--out {out} is the --data manifest; te predict would replace its input with the "
                         "predictions: choose another --out")
    return path


def _same_file(out: Path, data: str) -> bool:
    """True when `out` names the file `data` names (after symlinks and `..`, or another hard link to it)."""
    if data.startswith("builtin:"):
        return False
    source = Path(data).expanduser()
    if out.resolve() == source.resolve():
        return True
    try:
        return os.path.samefile(out, source)
    except OSError:  # either one missing: not the same file
        return False


def _write(path: Path, rows: list[dict[str, Any]], top_k: int) -> None:
    """Write predictions as CSV (one column per top-k class and probability) or JSONL, atomically and durably."""
    write_text_durably(path, _jsonl(rows) if path.suffix.lower() == ".jsonl" else _csv(rows, top_k))


def _jsonl(rows: list[dict[str, Any]]) -> str:
    return "".join(json.dumps(row) + "\n" for row in rows)


def _csv(rows: list[dict[str, Any]], top_k: int) -> str:
    text = io.StringIO(newline="")
    header = ["path", "prediction", "probability"]
    for k in range(2, top_k + 1):
        header += [f"top{k}", f"top{k}_probability"]
    writer = csv.writer(text)
    writer.writerow(header + ["label"])
    for row in rows:
        extra = [v for t in row["top_k"][1:] for v in (t["class"], f"{t['probability']:.6f}")]
        writer.writerow([row["path"], row["prediction"], f"{row['probability']:.6f}", *extra,
                         "" if row["label"] is None else row["label"]])
    return text.getvalue()
