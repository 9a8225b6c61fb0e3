"""Data sources for `--data`. Today: `builtin:digits`; folders and manifests come with `te extract`."""

from transfer_engine.data.builtin import LabeledImages, load_builtin

__all__ = ["LabeledImages", "load_builtin"]
