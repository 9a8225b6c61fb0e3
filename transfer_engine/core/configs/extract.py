"""`te extract`'s config: which backbone over which images into which cache, computed how."""

from __future__ import annotations

from dataclasses import dataclass

from transfer_engine.core.choices import DEFAULT_STORE, PRECISION_CHOICES, RESAMPLER_CHOICES, STORED_DTYPES
from transfer_engine.core.configs import shared
from transfer_engine.core.configs.base import Config
from transfer_engine.core.options import option


@dataclass(frozen=True)
class ExtractConfig(Config):
    """What `te extract` is asked to do; each field's help says what it means (`te extract --help`)."""

    backbone: str = option(help="Backbone name (`te backbones` lists them).", metavar="NAME", required=True)
    data: str = shared.data_source()
    cache: str = option(help="Feature cache directory (created when missing; shared by data sets and backbones).",
                        metavar="DIR", required=True)
    weights: str = option("DEFAULT", metavar="W",
                          help="Weights name, 'none' (random init, seeded) or a path to a local state dict.")
    name: str | None = shared.dataset_name()
    replace: bool = option(False, help="Replace a data set of that name that holds another --data's images or other "
                                       "classes (refused without it: a name is not an identity).")
    batch_size: int | None = option(None, low=1, metavar="N", changes_run=False,
                                    help="Images per forward pass (default: 32 on CPU, 128 on CUDA).")
    workers: int | None = option(None, low=1, metavar="N", changes_run=False,
                                 help="Decode/transform threads (default: CPU count, at most 8).")
    device: str = shared.device()
    precision: str = option("auto", choices=PRECISION_CHOICES,
                            help="Compute precision; auto = fastest that keeps every feature within cosine 0.999 of "
                                 "fp32.")
    backend: str = shared.backend("What computes the features; auto = fastest measured on 8 of your images whose "
                                  "features stay within bound of PyTorch fp32 (remembered in the cache).")
    store: str = option(DEFAULT_STORE, choices=STORED_DTYPES,
                        help="How rows are stored: int8 with a per-row scale (4x smaller), fp16 or fp32.")
    resampler: str = option("auto", choices=RESAMPLER_CHOICES,
                            help="What resizes the images: pil (the reference), torch (the same filter, several times "
                                 "faster on large photos; its own feature space); auto = torch when clearly faster "
                                 "(1.25x) and within cosine 0.999 of pil on 8 of your images (remembered; a cache "
                                 "already holding PIL features keeps them).")
    limit: int | None = shared.limit()
    label_field: str | None = shared.label_field()
    strict: bool = option(False, help="Exit 1 when any file cannot be read or decoded.")
    seed: int = option(0, help="Seed of a random initialization.")
    follow_symlinks: bool = shared.follow_symlinks()
    node_cache: str | None = option(None, metavar="DIR", changes_run=False,
                                    help="Under torchrun on several machines: where nodes 1..N-1 keep their delta "
                                         "caches until node 0 merges them (default: CACHE/nodes; node 0 must be able "
                                         "to read it). See docs/scale.md.")

    def __post_init__(self) -> None:
        object.__setattr__(self, "cache", str(self.cache))
        if self.node_cache is not None:
            object.__setattr__(self, "node_cache", str(self.node_cache))
        self.check()
