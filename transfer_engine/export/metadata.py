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
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from transfer_engine.core.choices import LAYOUTS  # noqa: F401  (the module's API)
from transfer_engine.errors import UsageError, first_line

if TYPE_CHECKING:
    import onnx

    from transfer_engine.backbones.spec import PreprocessSpec

FORMAT = "te-onnx"
VERSION = 1
PREFIX = "te."
PARTS = ("model", "backbone", "head")
VARIANTS = ("fp32", "int8", "fp16")


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
        quantization: int8 only: {recipe, checked_on (the CPU the parity check ran on), float_nodes}
            (see `transfer_engine.export.int8`); te predict warns on a CPU of another int8 family.
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
                raise UsageError(f"{where} has te metadata version {props[PREFIX + 'version']}; this te reads up to "
                                 f"{VERSION} (upgrade transfer-engine)")
            values.pop("format")
            known = {f for f in cls.__dataclass_fields__}
            meta = cls(**{k: v for k, v in values.items() if k in known})
            meta.input = InputSpec(**meta.input) if isinstance(meta.input, dict) else meta.input
        except (KeyError, TypeError, ValueError) as exc:
            raise UsageError(f"{where}: its te metadata is damaged ({type(exc).__name__}: {exc})") from None
        if meta.part != "backbone" and not meta.class_names:
            raise UsageError(f"{where}: its te metadata names no classes")
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
    """The te metadata of the ONNX file at `path`.

    Raises:
        UsageError: the file is not an ONNX model, or has no (or damaged) te metadata.
    """
    model = load_model(path)
    return ModelMetadata.from_props({p.key: p.value for p in model.metadata_props}, str(path))


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
