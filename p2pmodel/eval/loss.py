"""Validation loss on fixed windows, in fp32 and eval mode, so every peer gets the same number for a state: on
the run's validation set, and on each named eval set it is given (eval/sets.py)."""

import math
from collections.abc import Sequence

import torch

from p2pmodel.data import validation_batches
from p2pmodel.eval.digest import state_digest
from p2pmodel.eval.report import EvalReport
from p2pmodel.eval.sets import EvalSetData


def _mean_loss(model: torch.nn.Module, tokens: torch.Tensor, seq_len: int, batches: int, batch_size: int):
    """(mean token loss, tokens counted) over the fixed batches; the model is in eval mode already."""
    device = next(model.parameters()).device
    total, count = 0.0, 0
    for x, y in validation_batches(tokens, seq_len, batches, batch_size):
        _, loss = model(x.to(device), y.to(device))
        total += loss.item() * y.numel()
        count += y.numel()
    return total / count, count


@torch.no_grad()
def evaluate(
    model: torch.nn.Module,
    val_tokens: torch.Tensor,
    seq_len: int,
    batches: int,
    batch_size: int,
    sets: Sequence[EvalSetData] = (),
) -> EvalReport:
    """The report on the run's validation set; ``sets``: also the val loss of each named set (``report.sets``)."""
    was_training = model.training
    model.eval()
    try:
        val, count = _mean_loss(model, val_tokens, seq_len, batches, batch_size)
        per_set = {s.name: _mean_loss(model, s.val, seq_len, s.batches, batch_size)[0] for s in sets}
    finally:
        model.train(was_training)
    return EvalReport(
        val_loss=val,
        perplexity=math.exp(min(val, 50.0)),
        tokens=count,
        digest=state_digest(dict(model.named_parameters())),
        sets=per_set,
    )
