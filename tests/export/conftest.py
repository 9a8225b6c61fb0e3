"""Fixtures of the export tests: the shared efficientnet_lite0 export and the cheap mobilenet one."""

from .helpers import lite, mobilenet  # noqa: F401  (session fixtures, shared with tests/predict)
