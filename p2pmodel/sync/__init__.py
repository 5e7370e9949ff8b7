"""DiLoCo outer step: averaging that leaves every peer of a round the same bits, and the outer optimizer.

- averager.py  ``DeterministicAverager`` (hivemind averager subclass): ``step(weight, timeout)`` -> result
- allreduce.py ``DeterministicAllReduceRunner``: reducer encodes each averaged part once, sends it to all
- parts.py     part locations, codec encode + error-feedback residuals, zero-fill for failed reducers
- result.py    ``AveragingResult`` / ``RoundReport``: a failed round is a value, not an exception
- outer.py     ``OuterOptimizer``: Nesterov SGD in fp32 on CPU, op by op, same bits on every peer
"""

from p2pmodel.sync.averager import DeterministicAverager
from p2pmodel.sync.outer import OuterOptimizer
from p2pmodel.sync.result import AveragingResult

__all__ = ["AveragingResult", "DeterministicAverager", "OuterOptimizer"]
