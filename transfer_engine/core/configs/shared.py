"""Options that several commands take with the same meaning, declared once each.

A dataclass field cannot be shared between classes, so each is a function returning a fresh field;
a command whose help must say something else declares its own.
"""

from __future__ import annotations

from typing import Any

from transfer_engine.core.choices import BACKEND_CHOICES, DEVICES, INT8_TARGETS, SELECTIONS
from transfer_engine.core.options import option
from transfer_engine.core.selection import DEFAULT_FOLDS, DEFAULT_SELECT, KFOLD_MAX_RECORDS


def data_source(help: str = "Image folder (CLASS/IMAGE, optionally under train/val/test), a .csv/.jsonl manifest "
                            "(path,label[,split]), builtin:digits, or parts: webdataset tar shards, Parquet/Arrow "
                            "files or a `datasets` save_to_disk folder (a path, a brace pattern "
                            "shards/train-{000000..000127}.tar, a .txt list, or an fsspec URL such as s3://...).") -> Any:
    return option(help=help, metavar="SRC", required=True)


def device() -> Any:
    return option("auto", choices=DEVICES, help="Where to compute.")


def limit() -> Any:
    return option(None, low=1, metavar="N", help="Only the first N images.")


def follow_symlinks() -> Any:
    return option(False, help="In a --data folder, follow symlinks that lead out of it (by default they are skipped, "
                              "with the reason; links to what te reads anyway are always skipped: no image counts "
                              "twice).")


def label_field() -> Any:
    return option(None, metavar="FIELD", help="Where tar shards or tables keep the label: for tar shards cls, txt or "
                                              "json:FIELD (default: cls, else json:label), for Parquet/Arrow a "
                                              "column (default: the ClassLabel column, else label/labels/cls/class).")


def backend(help: str) -> Any:
    return option("auto", choices=BACKEND_CHOICES, help=help)


def dataset_name() -> Any:
    return option(None, flag="--name", metavar="DATASET", help="Data set name in the cache (default: from --data).")


def select(what: str) -> Any:
    return option(DEFAULT_SELECT, choices=SELECTIONS,
                  help=f"How {what}: kfold (stratified k-fold over train+val), val, or auto (kfold up to "
                       f"{KFOLD_MAX_RECORDS} train+val records, val above).")


def folds() -> Any:
    return option(DEFAULT_FOLDS, low=2, metavar="K", help="k of k-fold selection.")


def int8_target(default: str) -> Any:
    """te export's int8 recipe, and the one te finetune --qat trains for (core/configs/export.py's default)."""
    return option(default, choices=INT8_TARGETS,
                  help="int8 recipe. portable: 7-bit weights (8-bit in depthwise convolutions), the same integer "
                       "results on x86 CPUs with and without VNNI; vnni: 8-bit weights, exact only on VNNI CPUs "
                       "(saturates on AVX2).")


def cached_dataset() -> Any:
    return option(None, metavar="NAME", help="Data set in the cache (default: its only one).")


def feature_backbone() -> Any:
    return option(None, metavar="NAME", help="Use the features of this backbone.")


def feature_space() -> Any:
    return option(None, metavar="ID", help="Feature space id or prefix (te cache info), when several hold the data set.")
