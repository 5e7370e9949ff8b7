"""The inner lr schedule follows the swarm's position ((round - 1) * H + step), which every peer shares: a peer
joining at round 500 gets the veteran's lr, a round that closed early does not shift the next one, a resumed
trainer continues on it; the data stream still follows the peer's own step counter (no gaps, no repeats)."""

import pytest
import torch

from p2pmodel.config.schema import TrainConfig
from p2pmodel.train import InnerTrainer
from p2pmodel.train.inner import lr_at, schedule_position

H = 4
CFG = TrainConfig(inner_steps=H, batch_size=2, lr=1e-2, warmup_steps=100, total_steps=3000, min_lr_ratio=0.1)


class Toy(torch.nn.Module):
    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.w = torch.nn.Linear(3, 1)

    def forward(self, x, y):
        return None, ((self.w(x).squeeze(-1) - y) ** 2).mean()


class Stream:
    """Records the batch indices asked for."""

    def __init__(self):
        self.asked: list[int] = []

    def batch(self, i: int, n: int):
        self.asked.append(i)
        g = torch.Generator().manual_seed(i)
        return torch.randn(n, 3, generator=g), torch.randn(n, generator=g)


def trainer() -> tuple[InnerTrainer, Stream]:
    torch.set_num_threads(1)
    return InnerTrainer(Toy(), CFG, torch.device("cpu")), Stream()


def run_round(t: InnerTrainer, s: Stream, round_: int, max_steps: int = H) -> list[float]:
    """One round as run_round drives it; closes early after ``max_steps``; the lr of each step taken."""
    lrs: list[float] = []
    t.run(s, H, lambda: len(lrs) >= max_steps, lambda step, loss: lrs.append(t.opt.param_groups[0]["lr"]), round_)
    return lrs


def expected(round_: int, steps: int = H) -> list[float]:
    start = (round_ - 1) * H
    return [lr_at(start + i, CFG.lr, CFG.warmup_steps, CFG.total_steps, CFG.min_lr_ratio) for i in range(steps)]


def test_schedule_position():
    assert [schedule_position(r, H) for r in (1, 2, 500)] == [0, H, 499 * H]


def test_a_joiner_at_round_500_gets_the_veterans_lr():
    veteran, vs = trainer()
    for r in range(1, 500):
        run_round(veteran, vs, r, max_steps=1 if r % 7 == 0 else H)  # every 7th round closed after one step
    assert veteran.step < 499 * H  # its own counter is behind the swarm's position
    joiner, js = trainer()
    got_veteran, got_joiner = run_round(veteran, vs, 500), run_round(joiner, js, 500)
    assert got_joiner == got_veteran == pytest.approx(expected(500))
    assert got_joiner[0] > 10 * expected(1)[0]  # not warmup again (which starts at lr / 100)


def test_a_round_closed_early_does_not_shift_the_next_one():
    full, fs = trainer()
    short, ss = trainer()
    assert run_round(full, fs, 1) == pytest.approx(expected(1))
    assert run_round(short, ss, 1, max_steps=2) == pytest.approx(expected(1, 2))
    assert run_round(full, fs, 2) == run_round(short, ss, 2) == pytest.approx(expected(2))


def test_data_follows_the_peers_own_counter_and_resume_keeps_both():
    t, s = trainer()
    run_round(t, s, 1, max_steps=2)
    run_round(t, s, 2)
    assert s.asked == list(range(6)) and t.step == 6  # no batch skipped for the steps round 1 did not do
    tensors, meta = t.state_tensors()
    resumed, rs = trainer()
    resumed.load_state_tensors(tensors, meta)
    assert run_round(resumed, rs, 3) == run_round(t, s, 3) == pytest.approx(expected(3))
    assert rs.asked == s.asked[-H:] == list(range(6, 6 + H))


def test_without_a_round_the_schedule_follows_the_counter():
    t, s = trainer()
    lrs: list[float] = []
    t.run(s, 3, on_step=lambda step, loss: lrs.append(t.opt.param_groups[0]["lr"]))
    t.run(s, 2, on_step=lambda step, loss: lrs.append(t.opt.param_groups[0]["lr"]))
    assert lrs == pytest.approx(
        [lr_at(i, CFG.lr, CFG.warmup_steps, CFG.total_steps, CFG.min_lr_ratio) for i in range(5)]
    )
