"""`te predict`: classify images with an ONNX model from `te export`, through onnxruntime.

    >>> from transfer_engine.predict import predict                                    # doctest: +SKIP
    >>> summary = predict("model.onnx", "photos/", out="predictions.csv", top_k=3)      # doctest: +SKIP
    >>> summary.provider, summary.predicted, summary.failed                             # doctest: +SKIP
"""

from __future__ import annotations

from typing import Any


def __getattr__(name: str) -> Any:
    if name in ("predict", "PredictSummary"):
        from transfer_engine.predict import runner

        return getattr(runner, name)
    raise AttributeError(f"module 'transfer_engine.predict' has no attribute {name!r}")


__all__ = ["PredictSummary", "predict"]
