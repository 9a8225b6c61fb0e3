"""Typed, frozen configurations, one per command (no torch): built once (from the CLI, or from keywords
in Python), validated in `__post_init__`, passed whole.

Each field is declared with `core.options.option(...)`: its help, choices and range live there, and the
CLI is generated from it (`cli/_options.py`), so a default exists in one place only.
"""

from transfer_engine.core.configs.finetune import (CROP_SCALE, FIXED_EPOCHS, FIXED_LR, FIXED_SETTINGS, SCHEDULE_EPOCHS,
                                                   SCHEDULE_LR, SCHEDULE_SETTINGS, FinetuneConfig)
from transfer_engine.core.configs.bench import BenchConfig
from transfer_engine.core.configs.cache_export import CacheExportConfig
from transfer_engine.core.configs.compare import CompareConfig
from transfer_engine.core.configs.doctor import DoctorConfig
from transfer_engine.core.configs.export import ExportConfig
from transfer_engine.core.configs.extract import ExtractConfig
from transfer_engine.core.configs.predict import PredictConfig
from transfer_engine.core.configs.train import ALL_HEADS, TrainConfig

__all__ = ["ALL_HEADS", "BenchConfig", "CROP_SCALE", "CacheExportConfig", "CompareConfig", "DoctorConfig", "ExportConfig", "ExtractConfig", "FIXED_EPOCHS", "FIXED_LR",
           "FIXED_SETTINGS", "FinetuneConfig", "PredictConfig", "SCHEDULE_EPOCHS", "SCHEDULE_LR", "SCHEDULE_SETTINGS",
           "TrainConfig"]
