"""onnxruntime, as te uses it: the import, the providers, and sessions (te export checks its models
with them, te predict serves them, te extract and te compare run a backbone's graph).

Providers, best first: TensorRT and CUDA when onnxruntime-gpu is installed and a GPU answers, then the
CPU. onnxruntime silently falls back to the CPU when a GPU provider cannot start (missing CUDA
libraries, no device), so a session is asked which providers it really got.

TF32 is switched off on the CUDA provider: it changes fp32 results by about 1e-3 relative on Ampere and
later GPUs, more than the fp32 parity tolerance, and `te predict` must run what `te export` verified.
"""

from __future__ import annotations

import contextlib
import sys
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Iterator

import numpy as np

from transfer_engine.errors import TEError, UsageError, first_line

if TYPE_CHECKING:
    import onnxruntime

CPU = "CPUExecutionProvider"
CUDA = "CUDAExecutionProvider"
TENSORRT = "TensorrtExecutionProvider"
GPU_PROVIDERS = (TENSORRT, CUDA)
PROVIDER_CHOICES = ("auto", "cuda", "cpu")
# Provider options that keep results what the parity check measured (see the module docstring).
_OPTIONS = {CUDA: {"use_tf32": "0"}}


class RuntimeUnavailableError(TEError):
    """onnxruntime is missing, or cannot run a model on the requested provider."""


def import_ort() -> "onnxruntime":
    """onnxruntime, quiet (its warnings about removed initializers are noise for users).

    Raises:
        RuntimeUnavailableError: it is not installed (it is te's `cpu` or `gpu` extra).
    """
    try:
        import onnxruntime as ort
    except ImportError:
        raise RuntimeUnavailableError(
            "onnxruntime is not installed; install te's extra for this machine: pip install "
            "'transfer-engine[cpu]' (or '[gpu]' with an NVIDIA GPU: onnxruntime-gpu)") from None
    ort.set_default_logger_severity(3)
    return ort


@dataclass
class Session:
    """An onnxruntime session and what it really runs on.

    Attributes:
        session: the `onnxruntime.InferenceSession`.
        provider: the provider that runs the graph (the first of those the session accepted).
        note: why a requested provider was not used ("" when it was).
    """

    session: Any
    provider: str
    note: str = ""
    input_names: list[str] = field(default_factory=list)
    output_names: list[str] = field(default_factory=list)

    def run(self, feeds: dict[str, Any], outputs: list[str] | None = None) -> list[Any]:
        return self.session.run(outputs, feeds)


def open_session(model: str, provider: str, threads: int | None = None, device_id: int = 0) -> Session:
    """Open `model` on one provider (with the CPU behind it, as onnxruntime requires for GPU ones).

    Args:
        model: path of the ONNX file.
        provider: an onnxruntime provider name (CPU, CUDA or TensorRT).
        threads: intra-op threads (None: onnxruntime's default, one per core).
        device_id: the GPU a GPU provider runs on (te extract's own under torchrun: tensors bound to a
            session by IO binding must live on the session's GPU).

    Returns:
        The session; `provider` says what it actually got, `note` why that differs from the request.

    Raises:
        RuntimeUnavailableError: onnxruntime cannot load the model (an opset or operator it lacks).
    """
    ort = import_ort()
    options = ort.SessionOptions()
    options.log_severity_level = 3
    if threads:
        options.intra_op_num_threads = threads
    chain = [provider] if provider == CPU else [provider, CPU]
    if provider in GPU_PROVIDERS:
        _preload_cuda_libraries(ort)
    try:
        with quiet_stdout():
            session = ort.InferenceSession(model, sess_options=options,
                                           providers=[(p, _provider_options(p, device_id)) for p in chain])
    except Exception as exc:  # onnxruntime raises its own Fail/InvalidGraph/NotImplemented types
        raise RuntimeUnavailableError(f"onnxruntime {ort.__version__} cannot load {model} on {provider}: "
                                      f"{first_line(exc)}") from None
    got = session.get_providers()[0]
    note = "" if got == provider else f"{provider} did not start (no usable GPU or CUDA libraries); fell back to {got}"
    return Session(session, got, note, [i.name for i in session.get_inputs()],
                   [o.name for o in session.get_outputs()])


def _provider_options(provider: str, device_id: int) -> dict[str, str]:
    """The options `provider` is opened with: te's fixed ones, and the GPU for a GPU provider."""
    options = dict(_OPTIONS.get(provider, {}))
    if provider in GPU_PROVIDERS:
        options["device_id"] = str(device_id)
    return options


def available_providers(requested: "list[str] | tuple[str, ...] | None" = None) -> list[str]:
    """Providers to check a model on: those requested, or every available one of TensorRT, CUDA, CPU.

    Raises:
        UsageError: a requested provider is not in this onnxruntime build.
    """
    ort = import_ort()
    have = ort.get_available_providers()
    if requested:
        missing = [p for p in requested if p not in have]
        if missing:
            raise UsageError(f"onnxruntime {ort.__version__} has no {', '.join(missing)} (it has {', '.join(have)})")
        return list(requested)
    return [p for p in (*GPU_PROVIDERS, CPU) if p in have]


def resolve_provider(choice: str) -> tuple[str, str]:
    """The provider `te predict --provider CHOICE` runs on, and a line saying why.

    Args:
        choice: "auto" (CUDA when onnxruntime-gpu and a GPU are present, else CPU), "cuda" or "cpu".

    Returns:
        (provider name, reason).

    Raises:
        UsageError: "cuda" was asked for and this onnxruntime has no CUDA provider.
    """
    ort = import_ort()
    if choice not in PROVIDER_CHOICES:
        raise UsageError(f"--provider {choice!r}: expected one of {', '.join(PROVIDER_CHOICES)}")
    has_cuda = CUDA in ort.get_available_providers()
    if choice == "cpu":
        return CPU, "asked for with --provider cpu"
    if choice == "cuda" and not has_cuda:
        raise UsageError(f"--provider cuda: onnxruntime {ort.__version__} has no CUDAExecutionProvider; install "
                         "onnxruntime-gpu (pip install 'transfer-engine[gpu]') on a machine with an NVIDIA GPU, "
                         "or use --provider cpu")
    if has_cuda:
        return CUDA, "onnxruntime-gpu is installed" if choice == "auto" else "asked for with --provider cuda"
    return CPU, "no CUDA provider in this onnxruntime (the GPU build is te's gpu extra)"


def ort_available(device: Any) -> bool:
    """True when onnxruntime is installed with a provider for `device` (a torch.device; CUDA needs
    onnxruntime-gpu)."""
    try:
        providers = import_ort().get_available_providers()
    except Exception:  # not installed, or a broken install: torch stays the only backend
        return False
    return (CUDA if device.type == "cuda" else CPU) in providers


def _preload_cuda_libraries(ort: Any) -> None:
    """Make the CUDA/cuDNN libraries of the pip-installed nvidia packages loadable.

    onnxruntime-gpu does not find the libraries torch's wheels bring on its own; `preload_dlls`
    (onnxruntime >= 1.21) loads them, and importing torch (which loads its own) is the fallback.
    """
    preload = getattr(ort, "preload_dlls", None)
    try:
        if preload is not None:
            with quiet_stdout():
                preload()
        else:
            import torch  # noqa: F401  (loads libcudart/cudnn into the process)
    except Exception:  # a failed preload shows up as the CPU fallback, which the caller reports
        pass


def run_grouped(session: Session, items: list[np.ndarray], batch: int,
                outputs: list[str] | None = None) -> list[np.ndarray]:
    """Run `session` over `items` in batches of up to `batch` consecutive items of one shape.

    Args:
        session: the session; items: one input array per image (no batch axis); batch: images per call.
        outputs: the outputs wanted (None: all).

    Returns:
        Each output, concatenated over the batches (images of different sizes cannot share a uint8
        batch, so a change of size starts a new batch).
    """
    parts: list[list[np.ndarray]] = []
    name = session.input_names[0]
    i = 0
    while i < len(items):
        j = i + 1
        while j < len(items) and j - i < batch and items[j].shape == items[i].shape:
            j += 1
        parts.append(session.run({name: np.stack(items[i:j])}, outputs))
        i = j
    return [np.concatenate([p[k] for p in parts]) for k in range(len(parts[0]))]


def uint8_array(image: Any, layout: str) -> np.ndarray:
    """A PIL RGB image as the uint8 array an in-graph-preprocessing model takes ([H, W, 3] or [3, H, W])."""
    array = np.asarray(image.convert("RGB"), dtype=np.uint8)
    return np.ascontiguousarray(array.transpose(2, 0, 1)) if layout == "nchw" else array


@contextlib.contextmanager
def quiet_stdout() -> Iterator[None]:
    """Send what libraries print on stdout to stderr (--json promises one JSON object on stdout)."""
    with contextlib.redirect_stdout(sys.stderr):
        yield
