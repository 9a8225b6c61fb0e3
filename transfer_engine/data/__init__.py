"""Data sources for `--data`: image folders, CSV/JSONL manifests and built-in real data sets."""

from transfer_engine.data.builtin import LabeledImages, load_builtin
from transfer_engine.data.sources import (
    DataSource,
    Sample,
    content_key,
    derived_split,
    open_source,
)

__all__ = ["DataSource", "LabeledImages", "Sample", "content_key", "derived_split", "load_builtin", "open_source"]
