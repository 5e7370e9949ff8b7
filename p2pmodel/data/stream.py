"""Training batches as a pure function of (seed, peer key, step): resuming needs only the step counter,
and two peers never draw the same stream. Validation batches are fixed windows, identical everywhere."""

import hashlib

import torch


def _seed(*parts) -> int:
    digest = hashlib.sha256("/".join(str(p) for p in parts).encode()).digest()
    return int.from_bytes(digest[:8], "big") & ((1 << 63) - 1)


class TrainStream:
    """Random windows of ``seq_len + 1`` tokens from the training split."""

    def __init__(self, tokens: torch.Tensor, seq_len: int, seed: int, peer_key: str):
        self.tokens, self.seq_len, self.seed, self.peer_key = tokens, seq_len, seed, peer_key
        self._span = len(tokens) - seq_len - 1
        if self._span <= 0:
            raise ValueError(f"training split ({len(tokens)} tokens) is shorter than seq_len + 1")

    def batch(self, step: int, batch_size: int) -> tuple[torch.Tensor, torch.Tensor]:
        g = torch.Generator().manual_seed(_seed(self.seed, self.peer_key, step))
        starts = torch.randint(0, self._span, (batch_size,), generator=g)
        return _windows(self.tokens, starts, self.seq_len)


def _windows(tokens: torch.Tensor, starts: torch.Tensor, seq_len: int) -> tuple[torch.Tensor, torch.Tensor]:
    idx = starts[:, None] + torch.arange(seq_len + 1)[None, :]
    chunk = tokens[idx].long()
    return chunk[:, :-1], chunk[:, 1:]


def validation_batches(tokens: torch.Tensor, seq_len: int, batches: int, batch_size: int):
    """``batches`` fixed batches of evenly spaced windows over the validation split (same on every peer)."""
    n = batches * batch_size
    span = len(tokens) - seq_len - 1
    if span <= 0:
        raise ValueError(f"validation split ({len(tokens)} tokens) is shorter than seq_len + 1")
    starts = torch.linspace(0, span, n).long() if n > 1 else torch.zeros(1, dtype=torch.long)
    for b in range(batches):
        yield _windows(tokens, starts[b * batch_size : (b + 1) * batch_size], seq_len)
