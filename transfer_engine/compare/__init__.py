"""`te compare`: which backbone for this data set, by running te extract and te train for each candidate.

    >>> from transfer_engine.compare import compare                                         # doctest: +SKIP
    >>> result = compare("photos/", "feats/", "resnet18,efficientnet_*", out="compare/")     # doctest: +SKIP

compare is a composite: it runs whole commands through their top-level API (`transfer_engine.extract`,
`transfer_engine.train`), never their modules. Its own building blocks: run (`compare()`: te extract, the
score, the probes and the costs of each backbone in turn), logme (LogME, You et al., ICML 2021: the log
marginal evidence of a Bayesian linear model of the labels given the features, computed in seconds
without training any head), ranking (the order, the noise between scores, the recommendation), costs
(what serving a backbone costs here), results (Entry, Comparison), report (what is said and written).
"""

from transfer_engine.compare.logme import logme, logme_evidence
from transfer_engine.compare.results import Comparison
from transfer_engine.compare.run import compare

__all__ = ["Comparison", "compare", "logme", "logme_evidence"]
