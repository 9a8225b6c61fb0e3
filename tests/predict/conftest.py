"""Fixtures of the predict tests: the exports tests/export makes (built once per session, shared)."""

from ..export.helpers import lite, mobilenet  # noqa: F401  (session fixtures)
