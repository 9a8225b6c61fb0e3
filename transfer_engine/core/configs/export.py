"""`te export`'s config: which variants of a run to write, and the checks each must pass (no torch).

The export defaults live here, and only here: the ONNX machinery (`transfer_engine.onnx`), te export's
checks and int8 gate, and the CLI read them from this module.
"""

from __future__ import annotations

from dataclasses import dataclass

from transfer_engine.core.choices import EXPORTERS, LAYOUTS, QUANTIZE
from transfer_engine.core.configs import shared
from transfer_engine.core.configs.base import Config
from transfer_engine.core.options import option
from transfer_engine.errors import UsageError

DEFAULT_OPSET = 18  # widely served (TensorRT, ORT >= 1.14), and the first with an antialiasing Resize
DEFAULT_MIN_AGREEMENT = 0.99  # the agreement floor of int8 (its gate) and fp16 (on the check images)
DEFAULT_INT8_TARGET = "portable"  # the same integer results on x86 CPUs with and without VNNI
DEFAULT_MIN_SPEEDUP = 1.0  # int8 slower than fp32 at batch 1 or 32 is refused: fp32 is the better model then
# Images the int8 gate judges on (`export.gate`): enough for a 99% floor at the agreement a good int8 model
# reaches (docs/export.md, "The int8 gate"); held in memory as float images.
DEFAULT_SELECTION_SIZE = 1000


@dataclass(frozen=True)
class ExportConfig(Config):
    """What `te export` is asked to write and check (the run and --out are its arguments); `te export --help`
    says what each field means."""

    opset: int = option(DEFAULT_OPSET, metavar="N", help="ONNX opset to write (the installed onnx and torch decide which they can).")
    quantize: str | None = option(None, choices=QUANTIZE,
                                  help="int8: static QDQ, per-channel, calibrated on train images (CPU); fp16: for "
                                       "GPUs.")
    preprocess: bool = option(False, help="Bake resize/crop/normalize into the graph: the model takes uint8 RGB "
                                          "images of any size.")
    layout: str = option(LAYOUTS[0], choices=LAYOUTS, help="Layout of the uint8 input with --preprocess.")
    split: bool = option(False, help="Also write FILE.backbone.onnx (images -> features) and FILE.head.onnx "
                                     "(features -> logits).")
    check_data: str | None = option(None, metavar="SRC",
                                    help="Labelled images to check parity on (default: the test split of the run's "
                                         "data set; val without one).")
    calibration_data: str | None = option(None, metavar="SRC",
                                          help="Images to calibrate int8 on (default: the train split of the run's "
                                               "data set).")
    selection_data: str | None = option(None, metavar="SRC",
                                        help="Images the int8 gate judges on, labels not needed (default: the run's "
                                             "val images that its model was not fitted on).")
    batch_sizes: tuple[int, ...] = option((1, 8), low=1, metavar="N,N,...",
                                          help="Batch sizes the fp32 model is run at to prove its batch axis is "
                                               "dynamic.")
    check_size: int = option(200, low=1, metavar="N",
                             help="At most this many check images (spread over the held-out set).")
    calibration_size: int = option(128, low=1, metavar="N", help="At most this many int8 calibration images.")
    selection_size: int = option(DEFAULT_SELECTION_SIZE, low=1, metavar="N",
                                 help="At most this many int8 selection images (the gate's evidence).")
    min_agreement: float = option(DEFAULT_MIN_AGREEMENT, low=0, high=1, low_open=True, metavar="F",
                                  help="The agreement floor: int8 ships when the 95% lower bound of its top-1 "
                                       "agreement with the fp32 model on the selection images reaches F; fp16 must "
                                       "agree F on the check images.")
    int8_target: str = shared.int8_target(DEFAULT_INT8_TARGET)
    min_int8_speedup: float = option(DEFAULT_MIN_SPEEDUP, low=0, high=100, high_open=True, metavar="R",
                                     help="Refuse int8 that is not R times as fast as fp32 at batch 1 and at batch 32 "
                                          "on this CPU (0: no speed rule).")
    exporter: str = option("auto", choices=EXPORTERS,
                           help="torch.onnx exporter; auto: TorchScript for opsets <= 20 (faster), else dynamo.")

    def __post_init__(self) -> None:
        object.__setattr__(self, "batch_sizes", tuple(int(b) for b in self.batch_sizes))
        if not self.batch_sizes:
            raise UsageError("--batch-sizes: expected comma-separated positive integers, e.g. 1,8")
        self.check()
