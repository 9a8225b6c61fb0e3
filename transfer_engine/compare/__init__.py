"""`te compare` building blocks: scores that rank backbones for a data set from cached features alone.

logme: LogME (You et al., ICML 2021), the log marginal evidence of a Bayesian linear model of the labels
given the features, computed in seconds without training any head.
"""

from transfer_engine.compare.logme import logme, logme_evidence

__all__ = ["logme", "logme_evidence"]
