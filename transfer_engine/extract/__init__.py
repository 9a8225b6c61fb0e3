"""`te extract`: run a frozen backbone over a data set once, into the feature cache.

    >>> from transfer_engine.extract import extract                      # doctest: +SKIP
    >>> summary = extract("resnet50", "photos/", "feats/", weights="none")  # doctest: +SKIP
"""

from transfer_engine.extract.runner import ExtractSummary, extract

__all__ = ["ExtractSummary", "extract"]
