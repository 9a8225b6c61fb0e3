"""`te compare`'s config: which backbones, on which images, judged how."""

from __future__ import annotations

from dataclasses import dataclass

from transfer_engine.core.configs import shared
from transfer_engine.core.configs.base import Config
from transfer_engine.core.options import option
from transfer_engine.core.selection import check_folds


@dataclass(frozen=True)
class CompareConfig(Config):
    """What `te compare` is asked to do; `te compare --help` says what each field means."""

    data: str = shared.data_source()
    cache: str = option(help="The feature cache every backbone shares.", metavar="DIR", required=True)
    backbones: str = option(help="Comma-separated backbone names and shell patterns, e.g. "
                                 "resnet18,efficientnet_lite0 or 'resnet*'.", metavar="NAMES", required=True)
    weights: str = option("DEFAULT", metavar="W", help="Weights of every backbone: DEFAULT (each one's pretrained), "
                                                       "none (seeded random) or a name.")
    out: str = option("compare", metavar="DIR", help="Where compare.json, compare.md, compare.png and the probes' "
                                                     "runs go.")
    name: str | None = shared.dataset_name()
    quick: bool = option(False, help="Rank by LogME alone: no probe is fitted (seconds per backbone).")
    limit: int | None = shared.limit()
    label_field: str | None = shared.label_field()
    backend: str = shared.backend("Extraction backend, as te extract takes it.")
    seed: int = option(0, help="Seed of random inits and the probes.")
    int8: bool = option(False, help="Also quantize each backbone's ONNX graph (portable recipe) and report its speed "
                                    "and feature cosine.")
    select: str = shared.select("the probes choose and backbones rank")
    folds: int = shared.folds()

    def __post_init__(self) -> None:
        object.__setattr__(self, "cache", str(self.cache))
        object.__setattr__(self, "out", str(self.out))
        if not isinstance(self.backbones, str):  # a list from Python: the same names, comma-joined
            object.__setattr__(self, "backbones", ",".join(self.backbones))
        check_folds(self.folds)
        self.check()
