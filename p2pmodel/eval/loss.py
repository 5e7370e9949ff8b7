"""Validation loss on fixed windows, in fp32 and eval mode, so every peer gets the same number for a state."""

import math

import torch

from p2pmodel.data import validation_batches
from p2pmodel.eval.digest import state_digest
from p2pmodel.eval.report import EvalReport


@torch.no_grad()
def evaluate(
    model: torch.nn.Module, val_tokens: torch.Tensor, seq_len: int, batches: int, batch_size: int
) -> EvalReport:
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    total, count = 0.0, 0
    for x, y in validation_batches(val_tokens, seq_len, batches, batch_size):
        _, loss = model(x.to(device), y.to(device))
        total += loss.item() * y.numel()
        count += y.numel()
    model.train(was_training)
    val = total / count
    return EvalReport(
        val_loss=val,
        perplexity=math.exp(min(val, 50.0)),
        tokens=count,
        digest=state_digest(dict(model.named_parameters())),
    )
