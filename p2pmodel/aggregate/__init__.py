"""Aggregating the peers' deltas of a round without trusting any one of them (issue 14's broadcast mode).

- robust.py  ``screen`` (shape, finiteness, norm bound) and ``aggregate`` (weighted mean, coordinate-wise trimmed
             mean, centered clipping), bit-identical on any CPU from the same contributions
"""

from p2pmodel.aggregate.robust import METHODS, Contribution, Verdict, aggregate, norm, screen, tree_sum

__all__ = ["METHODS", "Contribution", "Verdict", "aggregate", "norm", "screen", "tree_sum"]
