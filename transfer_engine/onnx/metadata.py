"""What te writes into an ONNX model's metadata_props, and reading it back.

Every model `te export` writes carries, as JSON strings under "te.*" keys, everything needed to serve it
without the run directory: the class names, the preprocessing (or that it is in the graph), the input it
takes, the variant (fp32/int8/fp16), which part it is (whole model, backbone or head), and the run it
came from. `te predict` reads nothing else. Any tool can read them too:

    onnx.load("model.onnx").metadata_props  ->  te.class_names = ["0", "1", ...], te.preprocess = {...}

No torch import here.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from transfer_engine.core.choices import LAYOUTS, RESAMPLERS
from transfer_engine.errors import UsageError, first_line

if TYPE_CHECKING:
    import onnx

    from transfer_engine.backbones.spec import PreprocessSpec

FORMAT = "te-onnx"
VERSION = 1
PREFIX = "te."
PARTS = ("model", "backbone", "head")
VARIANTS = ("fp32", "int8", "fp16")
DTYPES = ("float32", "uint8")
INTERPOLATIONS = ("nearest", "bilinear", "bicubic")  # backbones.spec.INTERPOLATIONS (that module imports torch)
# The largest side an image is resized or cropped to. Real classifiers take far less (EfficientNet-L2 800,
# BEiT-L 512, ViT-H 518); 4096 leaves room for high-resolution models while one image stays bounded (a
# 4096-side crop is 192 MiB of float32), where a resize_size of 60000 asked for tens of GB and was killed.
MAX_IMAGE_SIDE = 4096


@dataclass
class InputSpec:
    """The tensor a model takes.

    Attributes:
        name: the graph input's name.
        dtype: "float32" (already preprocessed) or "uint8" (raw RGB pixels, preprocessing in the graph).
        layout: "nchw" or "nhwc" (uint8 input only; float input is always NCHW).
        in_graph_preprocessing: whether resize/crop/normalize are part of the graph.
    """

    name: str = "images"
    dtype: str = "float32"
    layout: str = "nchw"
    in_graph_preprocessing: bool = False


@dataclass
class ModelMetadata:
    """The te.* metadata of an exported model.

    Attributes:
        class_names: name of each logit, in order (empty for a backbone-only model).
        preprocess: `PreprocessSpec.to_dict()`: what to do to an image before the model (or what the graph does).
        input: the input tensor (`InputSpec`).
        outputs: output names, in order ("logits", "features" for a whole model).
        variant: "fp32", "int8" or "fp16".
        part: "model", "backbone" or "head".
        run: provenance: the run directory, its kind, backbone and weights, head, data set, metrics.
        export: how it was made: te/torch/onnx/onnxruntime versions, exporter, opset.
        quantization: int8 only: {recipe, method ("ptq", or "qat": a te finetune --qat run's own), checked_on
            (the CPU the parity check ran on), float_nodes} (see `transfer_engine.onnx.int8`); te predict warns
            on a CPU of another int8 family.
    """

    class_names: list[str]
    preprocess: dict[str, Any]
    input: InputSpec = field(default_factory=InputSpec)
    outputs: list[str] = field(default_factory=lambda: ["logits", "features"])
    variant: str = "fp32"
    part: str = "model"
    run: dict[str, Any] = field(default_factory=dict)
    export: dict[str, Any] = field(default_factory=dict)
    quantization: dict[str, Any] = field(default_factory=dict)

    def preprocess_spec(self) -> "PreprocessSpec":
        from transfer_engine.backbones.spec import PreprocessSpec

        return PreprocessSpec.from_dict(self.preprocess)

    def to_props(self) -> dict[str, str]:
        """The metadata_props entries (all values JSON strings)."""
        values = {"format": FORMAT, "version": VERSION, **asdict(self)}
        return {PREFIX + k: json.dumps(v, sort_keys=True, default=str) for k, v in values.items()}

    @classmethod
    def from_props(cls, props: dict[str, str], where: str) -> "ModelMetadata":
        """Parse te.* metadata_props.

        Raises:
            UsageError: no te metadata, a newer format version, or damaged values.
        """
        if props.get(PREFIX + "format") != json.dumps(FORMAT):
            raise UsageError(f"{where} is an ONNX model without te metadata (it was not written by `te export`); "
                             "export the run with: te export RUN --onnx --out FILE.onnx")
        try:
            values = {k[len(PREFIX):]: json.loads(v) for k, v in props.items() if k.startswith(PREFIX)}
            if int(values.pop("version")) > VERSION:
                raise UsageError(f"{where} has te metadata version {_shown(props[PREFIX + 'version'])}; this te "
                                 f"reads up to {VERSION} (upgrade transfer-engine)")
            values.pop("format")
        except (KeyError, TypeError, ValueError, RecursionError) as exc:
            raise UsageError(f"{where}: its te metadata is damaged ({type(exc).__name__}: "
                             f"{_shown(first_line(exc))})") from None
        # Metadata is input like any other (a file can be edited or crafted): every field is checked here,
        # once, so what reads it later (te predict's transform, the int8 warning) can trust it.
        known = {k: v for k, v in values.items() if k in cls.__dataclass_fields__}
        for name in ("class_names", "preprocess"):
            if name not in known:
                raise UsageError(f"{where}: te metadata field {name!r} is missing")
        meta = cls(**known)
        meta.input = _checked_input(meta.input, where)
        _check_fields(meta, where)
        return meta


def set_metadata(model: "onnx.ModelProto", meta: ModelMetadata) -> None:
    """Replace the te.* metadata_props of `model` with `meta` (other entries are kept)."""
    keep = [(p.key, p.value) for p in model.metadata_props if not p.key.startswith(PREFIX)]
    del model.metadata_props[:]
    for key, value in keep + sorted(meta.to_props().items()):
        entry = model.metadata_props.add()
        entry.key, entry.value = key, value
    model.doc_string = (f"te export of {meta.run.get('backbone', {}).get('name', '?')} + "
                        f"{meta.run.get('head', {}).get('name', '?')} ({meta.part}, {meta.variant}); "
                        "te.* metadata_props hold classes, preprocessing and provenance")


def input_spec(preprocess: bool, layout: str = "nchw") -> InputSpec:
    """The input of an exported model: uint8 images in `layout` with preprocessing in the graph, else
    normalized float32 NCHW."""
    if preprocess:
        return InputSpec("images", "uint8", layout, True)
    return InputSpec("images", "float32", "nchw", False)


def metadata_for(run: Any, variant: str, part: str, input_: InputSpec, outputs: list[str],
                 export: dict[str, Any], quantization: dict[str, Any] | None = None) -> ModelMetadata:
    """The te.* metadata of one file exported from `run` (a backbone part has no class names)."""
    return ModelMetadata(class_names=run.class_names if part != "backbone" else [],
                         preprocess=run.preprocess.to_dict(), input=input_, outputs=outputs, variant=variant,
                         part=part, run=run_provenance(run), export=export, quantization=dict(quantization or {}))


def write_with_metadata(path: str | os.PathLike, meta: ModelMetadata) -> None:
    """Set te.* metadata on the ONNX file at `path`, in place."""
    import onnx

    model = onnx.load(str(path))
    set_metadata(model, meta)
    onnx.save(model, str(path))


def load_model(path: str | os.PathLike, what: str = "model") -> "onnx.ModelProto":
    """Load an ONNX file (weights included), with one-line errors for what is not one.

    Raises:
        UsageError: the file is missing, unreadable, or not an ONNX model.
    """
    import onnx

    p = Path(path).expanduser()
    if p.is_dir():
        raise UsageError(f"{p} is a folder, not an ONNX {what} file (te export RUN --onnx --out FILE.onnx writes one)")
    if p.exists() and not p.is_file():
        raise UsageError(f"{p} is not a regular file; expected an ONNX {what} file")
    if not p.is_file():
        raise UsageError(f"{p} does not exist; expected an ONNX {what} file (te export RUN --onnx --out FILE.onnx "
                         "writes one)")
    try:
        model = onnx.load(str(p))
    except Exception as exc:  # protobuf DecodeError, or an external-data file that is missing
        raise UsageError(f"{p} is not an ONNX model ({first_line(exc, 200)})") from None
    # Protobuf parses many byte strings without complaint; a real model has a version and a graph.
    if model.ir_version <= 0 or not model.graph.node or not model.graph.input:
        raise UsageError(f"{p} is not an ONNX model (no graph in it)")
    return model


def read_metadata(path: str | os.PathLike) -> ModelMetadata:
    """The te metadata of the ONNX file at `path`, checked field by field and against the graph it describes.

    Raises:
        UsageError: the file is not an ONNX model, or has no, damaged or contradictory te metadata (one line
            naming the field, e.g. class names fewer than the logits the graph outputs).
    """
    model = load_model(path)
    meta = ModelMetadata.from_props({p.key: p.value for p in model.metadata_props}, str(path))
    _check_against_graph(meta, model, str(path))
    return meta


def _field(where: str, name: str, problem: str) -> UsageError:
    return UsageError(f"{where}: te metadata field {name!r} {problem}")


def _shown(value: Any, limit: int = 80) -> str:
    """A value as a message shows it: its JSON (or repr), cut to `limit` characters."""
    try:
        text = json.dumps(value, default=str)
    except (TypeError, ValueError):
        text = repr(value)
    return text if len(text) <= limit else text[:limit] + "..."


def _checked_input(value: Any, where: str) -> InputSpec:
    if isinstance(value, InputSpec):
        value = asdict(value)
    if not isinstance(value, dict):
        raise _field(where, "input", f"is {_shown(value)}; expected an object "
                     "{name, dtype, layout, in_graph_preprocessing}")
    unknown = set(value) - set(InputSpec.__dataclass_fields__)
    if unknown:
        raise _field(where, "input", f"has unknown key(s) {', '.join(sorted(map(repr, unknown)))}")
    spec = InputSpec(**value)
    if not isinstance(spec.name, str) or not spec.name:
        raise _field(where, "input.name", f"is {_shown(spec.name)}; expected the graph input's name")
    if spec.dtype not in DTYPES:
        raise _field(where, "input.dtype", f"is {_shown(spec.dtype)}; expected {' or '.join(DTYPES)}")
    if spec.dtype == "uint8" and spec.layout not in LAYOUTS:  # float inputs are NCHW (a head's: "nc")
        raise _field(where, "input.layout", f"is {_shown(spec.layout)}; expected {' or '.join(LAYOUTS)}")
    if not isinstance(spec.in_graph_preprocessing, bool):
        raise _field(where, "input.in_graph_preprocessing", f"is {_shown(spec.in_graph_preprocessing)}; expected "
                     "true or false")
    if spec.in_graph_preprocessing != (spec.dtype == "uint8"):
        raise _field(where, "input", f"says dtype {spec.dtype} with in_graph_preprocessing "
                     f"{str(spec.in_graph_preprocessing).lower()}; te models take uint8 pixels exactly when the graph "
                     "preprocesses them")
    return spec


def _check_fields(meta: ModelMetadata, where: str) -> None:
    """Each te.* field's type and range (see `ModelMetadata`); raises UsageError naming the first bad one."""
    if meta.part not in PARTS:
        raise _field(where, "part", f"is {_shown(meta.part)}; expected one of {', '.join(PARTS)}")
    if meta.variant not in VARIANTS:
        raise _field(where, "variant", f"is {_shown(meta.variant)}; expected one of {', '.join(VARIANTS)}")
    names = meta.class_names
    if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
        raise _field(where, "class_names", f"is {_shown(names)}; expected a list of names")
    if meta.part != "backbone" and not names:
        raise _field(where, "class_names", "is empty; the model's logits need a name each")
    if not isinstance(meta.outputs, list) or not all(isinstance(n, str) for n in meta.outputs):
        raise _field(where, "outputs", f"is {_shown(meta.outputs)}; expected a list of output names")
    for name in ("run", "export", "quantization"):
        if not isinstance(getattr(meta, name), dict):
            raise _field(where, name, f"is {_shown(getattr(meta, name))}; expected an object")
    _check_quantization(meta.quantization, where)
    _check_preprocess(meta.preprocess, where)


def _check_quantization(q: dict[str, Any], where: str) -> None:
    """The parts of te.quantization that te predict reads (`onnx.recipes.recipe_warning`)."""
    recipe, checked = q.get("recipe", {}), q.get("checked_on", {})
    if not isinstance(recipe, dict):
        raise _field(where, "quantization.recipe", f"is {_shown(recipe)}; expected an object")
    if not isinstance(checked, dict):
        raise _field(where, "quantization.checked_on", f"is {_shown(checked)}; expected an object")
    if not isinstance(recipe.get("name", ""), str):
        raise _field(where, "quantization.recipe.name", f"is {_shown(recipe['name'])}; expected text")
    exact = recipe.get("exact_on", [])
    if not isinstance(exact, list) or not all(isinstance(f, str) for f in exact):
        raise _field(where, "quantization.recipe.exact_on", f"is {_shown(exact)}; expected a list of CPU families")
    if not isinstance(checked.get("int8_family", ""), str):
        raise _field(where, "quantization.checked_on.int8_family", f"is {_shown(checked['int8_family'])}; "
                     "expected text")


def _check_preprocess(pre: Any, where: str) -> None:
    """te.preprocess: what `PreprocessSpec` accepts, with sizes bounded by `MAX_IMAGE_SIDE`."""
    if not isinstance(pre, dict):
        raise _field(where, "preprocess", f"is {_shown(pre)}; expected an object")
    allowed = {"crop_size", "resize_size", "interpolation", "mean", "std", "input_size", "resampler"}
    unknown = set(pre) - allowed
    if unknown:
        raise _field(where, "preprocess", f"has unknown key(s) {', '.join(sorted(map(repr, unknown)))}")
    for name in ("crop_size", "resize_size"):
        if name not in pre:
            continue  # PreprocessSpec's default
        size = pre[name]
        if isinstance(size, bool) or not isinstance(size, int) or not 1 <= size <= MAX_IMAGE_SIDE:
            raise _field(where, f"preprocess.{name}", f"is {_shown(size)}; expected a whole number of pixels in "
                         f"1..{MAX_IMAGE_SIDE}")
    if pre.get("crop_size", 224) > pre.get("resize_size", 256):
        raise _field(where, "preprocess.crop_size", f"is {pre.get('crop_size', 224)}, more than resize_size "
                     f"{pre.get('resize_size', 256)}; the crop is taken from the resized image")
    if pre.get("interpolation", "bilinear") not in INTERPOLATIONS:
        raise _field(where, "preprocess.interpolation", f"is {_shown(pre['interpolation'])}; expected one of "
                     f"{', '.join(INTERPOLATIONS)}")
    if pre.get("resampler", "pil") not in RESAMPLERS:
        raise _field(where, "preprocess.resampler", f"is {_shown(pre['resampler'])}; expected one of "
                     f"{', '.join(RESAMPLERS)}")
    if pre.get("resampler") == "torch" and pre.get("interpolation", "bilinear") == "nearest":
        raise _field(where, "preprocess.resampler", "is 'torch' with nearest interpolation, which only PIL computes")
    for name in ("mean", "std"):
        if name not in pre:
            continue
        values = pre[name]
        if not isinstance(values, list) or len(values) != 3 or any(
                isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) for v in values):
            raise _field(where, f"preprocess.{name}", f"is {_shown(values)}; expected three finite numbers (R, G, B)")
        if name == "std" and min(values) <= 0:
            raise _field(where, "preprocess.std", f"is {_shown(values)}; each channel's std must be above 0 "
                         "(normalizing divides by it)")


_ONNX_DTYPES = {1: "float32", 2: "uint8", 10: "float16"}  # onnx.TensorProto elem_type


def _dims(value_info: Any) -> list[int | None]:
    """A graph input's or output's shape: each dimension's size, None where it is symbolic or unknown."""
    shape = value_info.type.tensor_type.shape
    return [d.dim_value if d.HasField("dim_value") else None for d in shape.dim]


def _check_against_graph(meta: ModelMetadata, model: "onnx.ModelProto", where: str) -> None:
    """The metadata describes this graph: its input (name, dtype, size) and its logits (one per class name)."""
    inputs = {i.name: i for i in model.graph.input}
    outputs = {o.name: o for o in model.graph.output}
    if meta.input.name not in inputs:
        raise _field(where, "input.name", f"is {_shown(meta.input.name)}, but the graph's inputs are "
                     f"{_shown(sorted(inputs))}")
    graph_input = inputs[meta.input.name]
    elem = graph_input.type.tensor_type.elem_type
    if meta.part != "head" and _ONNX_DTYPES.get(elem, f"type {elem}") != meta.input.dtype:
        raise _field(where, "input.dtype", f"is {meta.input.dtype}, but the graph's input {meta.input.name!r} takes "
                     f"{_ONNX_DTYPES.get(elem, f'ONNX type {elem}')}")
    dims = _dims(graph_input)
    if meta.part != "head" and not meta.input.in_graph_preprocessing and len(dims) == 4:
        crop = meta.preprocess.get("crop_size", 224)
        if any(d is not None and d != want for d, want in zip(dims[1:], (3, crop, crop))):
            raise _field(where, "preprocess.crop_size", f"is {crop}, but the graph takes images of "
                         f"{'x'.join('?' if d is None else str(d) for d in dims[1:])}")
    missing = [name for name in meta.outputs if name not in outputs]
    if missing:
        raise _field(where, "outputs", f"names {_shown(missing[0])}, which the graph does not output "
                     f"(it outputs {_shown(sorted(outputs))})")
    if meta.part != "backbone":
        if "logits" not in outputs:
            raise UsageError(f"{where}: the graph has no 'logits' output (it outputs {_shown(sorted(outputs))}); "
                             "te metadata says it is a classifier")
        classes = _dims(outputs["logits"])[-1:] or [None]
        if classes[0] is not None and classes[0] != len(meta.class_names):
            raise _field(where, "class_names", f"has {len(meta.class_names)} names but the model outputs "
                         f"{classes[0]} logits")


def run_provenance(run: Any) -> dict[str, Any]:
    """What an exported model records about the run it came from (see `ModelMetadata.run`)."""
    info = run.info
    return {
        "path": str(run.path),
        "kind": info.kind,
        "backbone": asdict(info.backbone),
        "head": asdict(info.head),
        "dataset": dict(info.dataset),
        "space": (info.space or {}).get("id"),
        "seed": info.seed,
        "parent": info.parent,
        "metrics": {k: v for k, v in run.metrics.items() if k.endswith("accuracy")},
        "trained_with": info.versions,
    }
