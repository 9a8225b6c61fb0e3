"""`Builder`: writes the ONNX variants of one export into a staging folder and measures each against PyTorch.

`export_onnx` (exporter.py) decides what to export and where it goes; this module does the work in
between and returns the parity report (see docs/export.md for its keys).
"""

from __future__ import annotations

import datetime
import shutil
import time
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from transfer_engine.core.configs import ExportConfig
from transfer_engine.core.progress import Say
from transfer_engine.errors import UsageError, first_line
from transfer_engine.export import parity
from transfer_engine.export.images import ImageSet
from transfer_engine.onnx.export import INPUT, OUTPUTS, export_classifier, extract_part
from transfer_engine.onnx.metadata import InputSpec, input_spec, metadata_for, write_with_metadata
from transfer_engine.onnx.recipes import RECIPES
from transfer_engine.onnx.runtime import (CPU, RuntimeUnavailableError, Session, available_providers, open_session,
                                         run_grouped, uint8_array)


class Builder:
    """One export's files and checks.

    Args:
        run: the `Run`.
        staging: the folder files are written into (moved into place by the caller).
        targets: role -> final path ("model", "fp32", "backbone", "head", ...).
        cfg: what to write and check (`core.configs.ExportConfig`).
        opset: the ONNX opset; exporter: "torchscript" or "dynamo" (both as `onnx.export.check_opset`
            resolved the config's).
        say: progress lines.
    """

    def __init__(self, run: Any, staging: Path, targets: dict[str, Path], cfg: ExportConfig, *, opset: int,
                 exporter: str, say: Say) -> None:
        self.run = run
        self.staging = staging
        self.targets = targets
        self.cfg = cfg
        self.opset = opset
        self.exporter = exporter
        self.layout = cfg.layout
        self.say = say
        self.failures: list[str] = []
        self.skipped: dict[str, str] = {}
        self.quantization: dict[str, Any] = {}  # the int8 recipe and the CPU it was checked on (metadata)

    # -- the whole sequence ---------------------------------------------------------------------------
    def build_and_check(self, model: Any, ref: parity.Reference, x: np.ndarray, images: list[Any], *,
                        int8_sets: tuple[ImageSet, ImageSet] | None, check_keys: Sequence[str],
                        providers: Sequence[str] | None, timings: dict[str, float],
                        int8_ref: parity.Reference | None = None) -> dict[str, Any]:
        """Export, quantize, join preprocessing, split, and measure everything; returns the report.

        `int8_ref`: what the int8 variant is measured against on the check images when it is not the float
        model (a --qat run's: its int8 simulation, the model it trained)."""
        cfg = self.cfg
        quantize, preprocess, split, min_agreement = cfg.quantize, cfg.preprocess, cfg.split, cfg.min_agreement
        batch_sizes = list(cfg.batch_sizes)
        self.providers = available_providers(providers)
        variants = ["fp32"] + ([quantize] if quantize else [])
        deploy = variants[-1]
        final = {v: self.staging / (self.targets["model"] if v == deploy else self.targets["fp32"]).name
                 for v in variants}
        core = {v: (self.staging / f"core.{v}.onnx") if preprocess else final[v] for v in variants}
        tensor_input = input_spec(False, "nchw")

        t = time.perf_counter()
        self.say(f"exporting {self.run.info.backbone.name} + {self.run.info.head.name} to ONNX (opset {self.opset}, "
                 f"{self.exporter} exporter)")
        self.exporter = export_classifier(model, core["fp32"], crop_size=self.run.preprocess.crop_size,
                                          opset=self.opset, exporter=self.exporter)
        self._stamp(core["fp32"], "fp32", "model", tensor_input, list(OUTPUTS))
        timings["export"] = time.perf_counter() - t
        calibration = None
        if quantize:
            t = time.perf_counter()
            calibration = self._quantize(quantize, core["fp32"], core[quantize], int8_sets, check_keys, model)
            self._stamp(core[quantize], quantize, "model", tensor_input, list(OUTPUTS))
            timings["quantize"] = time.perf_counter() - t

        t = time.perf_counter()
        self.say(f"measuring {', '.join(variants)} on {len(x)} images with {', '.join(self.providers)}")
        report_variants = {}
        for v in variants:
            entry = self._measure(core[v], list(x), int8_ref if v == "int8" and int8_ref else ref, max(batch_sizes))
            if v == "int8":  # judged on the selection images: the check (test) images only report it
                entry["unbiased"] = _unbiased(entry, min_agreement, outside_ties=int8_ref is not None)
                failure = None
            else:
                failure = parity.fp32_failure(ref, entry) if v == "fp32" else parity.agreement_failure(entry, min_agreement)
            report_variants[v] = self._judge(f"{v}", entry, failure)
            if v == "int8" and calibration is not None:  # its verdict is the gate's (its failure is listed)
                report_variants[v]["passed"] = calibration["int8"]["passed"]
            report_variants[v]["file"] = str(self.targets["model"] if v == deploy else self.targets["fp32"])
            report_variants[v]["bytes"] = core[v].stat().st_size
        batches = self._check_batch_sizes(core["fp32"], x, ref, batch_sizes)
        timings["parity"] = time.perf_counter() - t

        pre_report = None
        raw = [uint8_array(im, self.layout) for im in images] if preprocess else []
        if preprocess:
            t = time.perf_counter()
            pre_report = self._preprocess(raw, x, ref, variants, core, final, min_agreement, max(batch_sizes))
            timings["preprocess"] = time.perf_counter() - t
        split_report = None
        if split:
            t = time.perf_counter()
            split_report = self._split(final["fp32"], raw if preprocess else list(x), ref, preprocess,
                                       min_agreement, max(batch_sizes))
            timings["split"] = time.perf_counter() - t
        return {
            "model": str(self.targets["model"]), "variant": deploy, "passed": not self.failures,
            "failures": list(self.failures),
            "run": {"path": str(self.run.path), "kind": self.run.info.kind, "backbone": self.run.info.backbone.name,
                    "weights": self.run.info.backbone.weights, "head": self.run.info.head.name,
                    "classes": len(self.run.class_names)},
            "export": self._export_info(preprocess),
            "tolerance": {"fp32_rtol": parity.FP32_RTOL, "logits": ref.logit_tolerance,
                          "features": ref.feature_tolerance, "min_agreement": min_agreement,
                          "pixel_levels": parity.PIXEL_LEVELS,
                          "pixel_mismatch_fraction": parity.PIXEL_MISMATCH_FRACTION},
            "providers": {"used": [p for p in self.providers if p not in self.skipped], "skipped": self.skipped},
            "variants": report_variants, "batch_sizes": batches, "preprocess": pre_report, "split": split_report,
            "calibration": calibration, "timings": timings,
        }

    # -- steps -----------------------------------------------------------------------------------------
    def _quantize(self, quantize: str, fp32: Path, out: Path, int8_sets: tuple[ImageSet, ImageSet] | None,
                  check_keys: Sequence[str], model: Any) -> dict[str, Any] | None:
        from transfer_engine.export.gate import AgreementGate
        from transfer_engine.export.int8_budget import quantize_within_budget
        from transfer_engine.export.int8_qat import quantize_as_trained
        from transfer_engine.onnx.quantize import convert_fp16

        if quantize == "fp16":
            self.say("converting to fp16 (onnxruntime's float16 converter, float32 inputs and outputs kept)")
            convert_fp16(fp32, out)
            return None
        assert int8_sets is not None
        cal_set, sel_set = int8_sets
        qat = self.run.qat
        recipe = RECIPES[qat["recipe"]["name"] if qat else self.cfg.int8_target]
        if qat:
            self.say(f"quantizing to int8 as the --qat run trained it ({recipe.name} recipe: QDQ, per-channel, "
                     f"{recipe.weight_bits()} weights, its activation scales)"
                     + ("" if recipe.name == self.cfg.int8_target else
                        f"; not --int8-target {self.cfg.int8_target}: the run was trained for {recipe.name}"))
        else:
            self.say(f"quantizing to int8 ({recipe.name} recipe: QDQ, per-channel, "
                     f"{recipe.weight_bits()} weights), calibrated on {cal_set.description}")
        transform = self.run.preprocess.transform()
        images, _, failed = cal_set.load(exclude=frozenset(check_keys))
        if not images:
            raise UsageError(f"none of the {len(cal_set)} calibration images could be read")
        calibration = np.stack([transform(im).numpy() for im in images]).astype(np.float32)
        # no image in two sets: a copy of a check or calibration image among the selection images is left out
        chosen, _, sel_failed = sel_set.load(exclude=frozenset(check_keys) | frozenset(cal_set.loaded_keys))
        selection = np.stack([transform(im).numpy() for im in chosen]).astype(np.float32) if chosen else \
            np.zeros((0, *calibration.shape[1:]), np.float32)
        self.say(f"judging int8 on {len(chosen)} selection images: {sel_set.description}")

        work = self.staging / "int8-work"
        work.mkdir()
        gate = AgreementGate(self.cfg.min_agreement)
        if qat:
            outcome = quantize_as_trained(fp32, out, calibration, selection, model=model, qat=qat, gate=gate,
                                          min_speedup=self.cfg.min_int8_speedup, workdir=work, input_name=INPUT,
                                          selection_source=sel_set.description, say=self.say)
        else:
            outcome = quantize_within_budget(fp32, out, calibration, selection, recipe=recipe, gate=gate,
                                             min_speedup=self.cfg.min_int8_speedup, workdir=work, input_name=INPUT,
                                             selection_source=sel_set.description,
                                             calibration_source=cal_set.description, say=self.say)
        shutil.rmtree(work, ignore_errors=True)
        if outcome.failure:
            self.failures.append(f"int8: {outcome.failure}")
        self.quantization = {k: v for k, v in outcome.to_dict().items()
                             if k in ("recipe", "method", "checked_on", "float_nodes", "gate")}
        self.quantization["speed"] = outcome.speed
        return {"images": len(images), "source": cal_set.description, "failed": failed, "method": recipe.calibration,
                "format": recipe.format, "per_channel": recipe.per_channel, "activations": recipe.activations,
                "weights": recipe.weights, "reduce_range": recipe.reduce_range,
                "depthwise_full_range": recipe.depthwise_full_range,
                "selection": {"images": len(chosen), "source": sel_set.description, "failed": sel_failed},
                "int8": outcome.to_dict()}

    def _measure(self, path: Path, inputs: list[np.ndarray], ref: parity.Reference, batch: int,
                 feed: Callable[[Session, list[np.ndarray], int], dict[str, np.ndarray]] | None = None
                 ) -> dict[str, Any]:
        """Run `path` on every provider; per-provider measures and the worst of them.

        A GPU provider that cannot start (onnxruntime-gpu lists TensorRT even without its libraries;
        CUDA may lack a device) is skipped with the reason in the report; the CPU one must work.
        """
        per_provider = {}
        for provider in self.providers:
            if provider in self.skipped:
                continue
            try:
                session = open_session(str(path), provider)
            except RuntimeUnavailableError as exc:
                if provider == CPU:
                    raise
                self.skipped[provider] = str(exc)
                continue
            if session.provider != provider:
                self.skipped[provider] = session.note
                continue
            named = (feed or _outputs_by_name)(session, inputs, batch)
            per_provider[provider] = parity.compare(ref, named["logits"], named.get("features"))
        if not per_provider:
            raise RuntimeUnavailableError(f"no onnxruntime provider could run {path.name}: "
                                          + "; ".join(f"{k}: {v}" for k, v in self.skipped.items()))
        return {**parity.worst(per_provider), "providers": per_provider}

    def _judge(self, what: str, entry: dict[str, Any], failure: str | None) -> dict[str, Any]:
        entry["passed"] = failure is None
        entry["failure"] = failure
        if failure:
            self.failures.append(f"{what}: {failure}")
        return entry

    def _check_batch_sizes(self, fp32: Path, x: np.ndarray, ref: parity.Reference,
                           batch_sizes: list[int]) -> dict[str, Any]:
        """Run the fp32 graph at each batch size: a fixed batch axis fails here, not in production."""
        provider = next(p for p in self.providers if p not in self.skipped)  # one _measure ran on it
        session = open_session(str(fp32), provider)
        out: dict[str, Any] = {}
        for b in batch_sizes:
            idx = np.arange(b) % len(x)
            try:
                logits = dict(zip(session.output_names, session.run({INPUT: x[idx]})))["logits"]
                diff = float(np.abs(logits - ref.logits[idx]).max())
                failure = (None if diff <= ref.logit_tolerance else
                           f"logits differ by up to {diff:.3g} > tolerance {ref.logit_tolerance:.3g}")
            except Exception as exc:  # e.g. a graph that only accepts its example's batch size
                diff, failure = None, f"onnxruntime failed: {first_line(exc, 200)}"
            out[str(b)] = self._judge(f"fp32 at batch size {b} on {provider}", {"max_abs_diff": diff}, failure)
        return out

    def _preprocess(self, raw: list[np.ndarray], x: np.ndarray, ref: parity.Reference, variants: list[str],
                    core: dict[str, Path], final: dict[str, Path], min_agreement: float, batch: int) -> dict[str, Any]:
        import onnx

        from transfer_engine.export.preprocess_graph import prepend_preprocessing, preprocess_model

        spec = self.run.preprocess
        self.say(f"joining the preprocessing graph ({spec.interpolation} resize {spec.resize_size}, crop "
                 f"{spec.crop_size}, normalize; uint8 {self.layout.upper()} input) and checking it")
        pre_path = self.staging / "preprocess.onnx"
        onnx.save(preprocess_model(spec, self.layout, self.opset), str(pre_path))
        session = open_session(str(pre_path), CPU)
        (pixels,) = run_grouped(session, raw, batch)
        pixel_report = parity.pixel_measures(pixels, x, spec.std)
        report: dict[str, Any] = {"layout": self.layout, "input": "uint8", "spec": spec.to_dict(),
                                  "pixels": self._judge("preprocessing", pixel_report, parity.pixel_failure(pixel_report)),
                                  "end_to_end": {}}
        for v in variants:
            joined = prepend_preprocessing(onnx.load(str(core[v])), spec, self.layout)
            onnx.save(joined, str(final[v]))
            self._stamp(final[v], v, "model", input_spec(True, self.layout), list(OUTPUTS))
            entry = self._measure(final[v], raw, ref, batch)
            report["end_to_end"][v] = self._judge(f"{v} with in-graph preprocessing", entry,
                                                  parity.agreement_failure(entry, min_agreement))
        return report

    def _split(self, fp32: Path, inputs: list[np.ndarray], ref: parity.Reference, preprocess: bool,
               min_agreement: float, batch: int) -> dict[str, Any]:
        self.say("cutting backbone (images -> features) and head (features -> logits) out of the fp32 graph")
        backbone = self.staging / self.targets["backbone"].name
        head = self.staging / self.targets["head"].name
        extract_part(str(fp32), str(backbone), [INPUT], ["features"])
        extract_part(str(fp32), str(head), ["features"], ["logits"])
        self._stamp(backbone, "fp32", "backbone", input_spec(preprocess, self.layout), ["features"])
        self._stamp(head, "fp32", "head", InputSpec("features", "float32", "nc", False), ["logits"])

        def backbone_then_head(session: Session, items: list[np.ndarray], size: int) -> dict[str, np.ndarray]:
            (features,) = run_grouped(open_session(str(backbone), session.provider), items, size)
            (logits,) = run_grouped(session, list(features), size)
            return {"logits": logits, "features": features}

        chained = self._measure(head, inputs, ref, batch, feed=backbone_then_head)
        failure = (parity.agreement_failure(chained, min_agreement) if preprocess else parity.fp32_failure(ref, chained))
        cached = self._measure(head, list(ref.features), ref, batch)
        cached.pop("features", None)
        return {"backbone": str(self.targets["backbone"]), "head": str(self.targets["head"]),
                "backbone_then_head": self._judge("backbone.onnx then head.onnx", chained, failure),
                "head_on_pytorch_features": self._judge("head.onnx on PyTorch's features", cached,
                                                        parity.fp32_failure(ref, cached))}

    # -- helpers ---------------------------------------------------------------------------------------
    def _stamp(self, path: Path, variant: str, part: str, input_: InputSpec, outputs: list[str]) -> None:
        write_with_metadata(path, metadata_for(self.run, variant, part, input_, outputs, self._export_info(None),
                                               self.quantization if variant == "int8" else None))

    def _export_info(self, preprocess: bool | None) -> dict[str, Any]:
        from importlib import metadata as md

        versions = {}
        for dist in ("transfer-engine", "torch", "onnx", "onnxruntime", "onnxruntime-gpu", "onnxscript"):
            try:
                versions[dist] = md.version(dist)
            except md.PackageNotFoundError:
                continue
        info = {"exporter": self.exporter, "opset": self.opset, "versions": versions,
                "exported_at": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")}
        if preprocess is not None:
            info["input"] = {"name": INPUT, "dtype": "uint8" if preprocess else "float32",
                             "layout": self.layout if preprocess else "nchw"}
        return info


def _unbiased(entry: dict[str, Any], floor: float, outside_ties: bool = False) -> dict[str, Any]:
    """The int8 model on the check images, which chose nothing: its agreement with PyTorch, with the 95%
    lower bound of that agreement (`export.gate`) and the accuracy delta (the least favourable provider).
    `outside_ties`: a tie of the reference's top two classes counts as agreeing (a --qat run's reference,
    whose logits are quantized: `export.int8_qat`)."""
    from transfer_engine.export.gate import AgreementGate

    images = entry["images"]
    agreed = images - entry["disagreements_outside_ties" if outside_ties else "disagreements"]
    return {"images": images, "agreed": agreed, "agreement": agreed / images if images else None,
            "ties": entry["disagreements"] - entry["disagreements_outside_ties"] if outside_ties else 0,
            "lower_bound": AgreementGate(floor).lower_bound(agreed, images), "accuracy_delta": entry["accuracy_delta"]}


def _outputs_by_name(session: Session, items: list[np.ndarray], batch: int) -> dict[str, np.ndarray]:
    return dict(zip(session.output_names, run_grouped(session, items, batch)))
