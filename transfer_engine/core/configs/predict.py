"""`te predict`'s config: which images through which exported model, how."""

from __future__ import annotations

from dataclasses import dataclass

from transfer_engine.core.choices import PREDICT_PROVIDERS
from transfer_engine.core.configs import shared
from transfer_engine.core.configs.base import Config
from transfer_engine.core.options import option


@dataclass(frozen=True)
class PredictConfig(Config):
    """What `te predict` is asked to do (the model file is its argument); `te predict --help`."""

    data: str = shared.data_source("Images: a folder (flat, or CLASS/IMAGE to get accuracy too), one image file, a "
                                   ".csv/.jsonl manifest, or builtin:digits.")
    out: str | None = option(None, metavar="FILE.csv|FILE.jsonl",
                             help="Write the predictions there (default: print them).")
    provider: str = option("auto", choices=PREDICT_PROVIDERS,
                           help="onnxruntime provider; auto = CUDA when onnxruntime-gpu and a GPU are present, else "
                                "CPU.")
    batch_size: int = option(32, low=1, metavar="N", help="Images per onnxruntime call.")
    top_k: int = option(1, low=1, metavar="K", help="How many classes (with probabilities) to give per image.")
    follow_symlinks: bool = shared.follow_symlinks()

    def __post_init__(self) -> None:
        if self.out is not None:
            object.__setattr__(self, "out", str(self.out))
        self.check()
