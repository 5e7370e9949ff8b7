"""Deterministic evaluation (no network). report.py: EvalReport; loss.py: validation loss/perplexity on
fixed batches; digest.py: sha256 of a state's canonical parameter bytes."""

from p2pmodel.eval.digest import state_digest
from p2pmodel.eval.loss import evaluate
from p2pmodel.eval.report import EvalReport

__all__ = ["EvalReport", "evaluate", "state_digest"]
