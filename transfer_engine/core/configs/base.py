"""What every command's config shares: its defaults read by name, and its options checked once."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from transfer_engine.core.options import check_options, default_of, run_settings


class Config:
    """A mixin of the frozen config dataclasses (`core/configs/`)."""

    @classmethod
    def default(cls, name: str) -> Any:
        """The default of field `name` (what the CLI shows)."""
        return default_of(cls, name)

    @classmethod
    def of(cls, config: "Config | None" = None, /, **changes: Any) -> Any:
        """`config` with `changes` (keywords win), or a new config of `changes` alone."""
        if config is None:
            return cls(**changes)
        if not isinstance(config, cls):
            raise TypeError(f"expected a {cls.__name__}, got {type(config).__name__}")
        return replace(config, **changes)

    def check(self) -> None:
        """Every field within its declared choices and range (`core.options.check_options`)."""
        check_options(self)

    def run_settings(self) -> dict[str, Any]:
        """The fields that make a run what it is (`core.options.run_settings`)."""
        return run_settings(self)
