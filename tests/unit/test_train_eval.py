"""Inner loop and eval: loss goes down on stdlib data, the lr schedule's shape, accumulation keeps the sample
count, resuming the inner optimizer is exact, evaluate() is deterministic and names the state it measured."""

from pathlib import Path

import pytest
import torch

from p2pmodel.config import load_config
from p2pmodel.data import TrainStream, load_corpus
from p2pmodel.eval import evaluate, state_digest
from p2pmodel.models import build_model
from p2pmodel.train import InnerTrainer
from p2pmodel.train.inner import lr_at

TINY = Path(__file__).resolve().parents[2] / "configs" / "tiny.toml"
pytestmark = pytest.mark.timeout(120)


@pytest.fixture(scope="module")
def corpus():
    return load_corpus("stdlib", [], 1_000_000, 0.05, 66)


def tiny(*overrides):
    return load_config(TINY, ["model.seq_len=64", "train.device=cpu", "train.warmup_steps=5", *overrides])


def make(cfg, corpus, peer="peer-a"):
    torch.set_num_threads(1)
    model = build_model(cfg.model, cfg.train.seed)
    return (
        model,
        InnerTrainer(model, cfg.train, torch.device("cpu")),
        TrainStream(corpus.train, cfg.model.seq_len, cfg.train.seed, peer),
    )


def test_inner_loop_lowers_training_loss(corpus):
    cfg = tiny()
    model, trainer, stream = make(cfg, corpus)
    losses = []
    stats = trainer.run(stream, 30, on_step=lambda step, loss: losses.append((step, loss)))
    assert [s for s, _ in losses] == list(range(1, 31)) and trainer.step == 30
    first, last = sum(v for _, v in losses[:5]) / 5, sum(v for _, v in losses[-5:]) / 5
    assert losses[0][1] > 5.0  # ~ln(256) at init
    assert last < first - 1.0 and last < 3.6, (first, last)
    assert stats.steps == 30 and stats.samples == 30 * 8 and stats.tokens == 30 * 8 * 64 and stats.seconds > 0
    assert abs(stats.loss - sum(v for _, v in losses) / 30) < 1e-9


def test_should_stop_between_steps(corpus):
    model, trainer, stream = make(tiny(), corpus)
    calls = []
    stats = trainer.run(stream, 10, should_stop=lambda: len(calls) >= 3, on_step=lambda s, v: calls.append(s))
    assert stats.steps == 3 and trainer.step == 3
    empty = trainer.run(stream, 5, should_stop=lambda: True)
    assert empty.steps == 0 and empty.samples == 0 and trainer.step == 3


def test_lr_schedule_shape():
    peak, warmup, total, floor = 1e-3, 10, 100, 0.1
    lrs = [lr_at(s, peak, warmup, total, floor) for s in range(130)]
    assert lrs[0] == pytest.approx(peak / warmup)
    assert all(a < b for a, b in zip(lrs[:warmup], lrs[1:warmup], strict=False))  # linear warmup up
    assert lrs[warmup - 1] == pytest.approx(peak) and lrs[warmup] == pytest.approx(peak)
    assert all(a >= b for a, b in zip(lrs[warmup:], lrs[warmup + 1 :], strict=False))  # cosine down
    mid = warmup + (total - warmup) // 2
    assert lrs[mid] == pytest.approx(peak * (floor + (1 - floor) * 0.5), rel=1e-6)
    assert lrs[total] == pytest.approx(floor * peak) and lrs[129] == pytest.approx(floor * peak)  # flat after
    assert min(lrs) >= floor * peak - 1e-15 and max(lrs) <= peak + 1e-15
    assert lr_at(0, peak, 0, total, floor) == pytest.approx(peak)  # no warmup starts at peak


def test_trainer_sets_lr_from_schedule(corpus):
    cfg = tiny("train.lr=1e-2", "train.warmup_steps=4", "train.total_steps=10")
    _, trainer, stream = make(cfg, corpus)
    seen = []
    trainer.run(stream, 6, on_step=lambda s, v: seen.append(trainer.opt.param_groups[0]["lr"]))
    assert seen == pytest.approx([lr_at(s, 1e-2, 4, 10, cfg.train.min_lr_ratio) for s in range(6)])


class RecordingStream:
    def __init__(self, inner):
        self.inner, self.calls = inner, []

    def batch(self, step, batch_size):
        self.calls.append((step, batch_size))
        return self.inner.batch(step, batch_size)


def test_grad_accumulation_same_samples(corpus):
    full_cfg = tiny("train.batch_size=8", "train.grad_accum_steps=1")
    acc_cfg = tiny("train.batch_size=8", "train.grad_accum_steps=4")
    _, t1, s1 = make(full_cfg, corpus)
    _, t4, s4 = make(acc_cfg, corpus)
    r1, r4 = RecordingStream(s1), RecordingStream(s4)
    a, b = t1.run(r1, 3), t4.run(r4, 3)
    assert (a.steps, a.samples, a.tokens) == (b.steps, b.samples, b.tokens) == (3, 24, 24 * 64)
    assert sum(n for _, n in r1.calls) == sum(n for _, n in r4.calls) == 24
    assert r1.calls == [(0, 8), (1, 8), (2, 8)]
    assert r4.calls == [(i, 2) for i in range(12)]  # distinct micro-batch indices, never reused


def test_grad_accumulation_matches_full_batch_gradient(corpus):
    """One step on 8 sequences equals 4 accumulated micro-batches of the same 8 (same data, same update)."""
    cfg1 = tiny("train.batch_size=8", "train.grad_accum_steps=1", "train.grad_clip=0")
    cfg4 = tiny("train.batch_size=8", "train.grad_accum_steps=4", "train.grad_clip=0")
    m1, t1, stream = make(cfg1, corpus)
    m4, t4, _ = make(cfg4, corpus)
    x, y = stream.batch(0, 8)

    class Fixed:
        def __init__(self, micro):
            self.micro = micro

        def batch(self, step, batch_size):
            i = (step % (8 // batch_size)) * batch_size
            return x[i : i + batch_size], y[i : i + batch_size]

    grads = {}

    def capture(name):
        def hook(opt, args, kwargs):
            grads[name] = [p.grad.clone() for g in opt.param_groups for p in g["params"]]

        return hook

    t1.opt.register_step_pre_hook(capture("full"))
    t4.opt.register_step_pre_hook(capture("accum"))
    a, b = t1.run(Fixed(8), 1), t4.run(Fixed(2), 1)
    assert a.loss == pytest.approx(b.loss, rel=1e-5)
    for g1, g4 in zip(grads["full"], grads["accum"], strict=True):
        torch.testing.assert_close(g1, g4, rtol=1e-4, atol=1e-6)


def test_inner_state_resume_is_exact(corpus):
    cfg = tiny()
    m_a, t_a, s_a = make(cfg, corpus)
    t_a.run(s_a, 3)
    tensors, meta = t_a.state_tensors()
    m_b, t_b, s_b = make(cfg, corpus)
    m_b.load_state_dict(m_a.state_dict())
    t_b.load_state_tensors(tensors, meta)
    assert t_b.step == 3
    t_a.run(s_a, 2)
    t_b.run(s_b, 2)
    assert state_digest(dict(m_a.named_parameters())) == state_digest(dict(m_b.named_parameters()))


def test_evaluate_is_deterministic_and_names_the_state(corpus):
    cfg = tiny()
    model, trainer, stream = make(cfg, corpus)
    trainer.run(stream, 3)
    model.train()
    before = state_digest(dict(model.named_parameters()))
    r1 = evaluate(model, corpus.val, 64, 3, 4)
    r2 = evaluate(model, corpus.val, 64, 3, 4)
    assert r1 == r2
    assert r1.digest == before == state_digest(dict(model.named_parameters()))  # eval changes nothing
    assert model.training  # mode restored
    assert r1.tokens == 3 * 4 * 64
    assert r1.perplexity == pytest.approx(torch.tensor(r1.val_loss).exp().item(), rel=1e-6)
    assert set(r1.as_dict()) == {"val_loss", "perplexity", "tokens", "digest"}
    fresh = build_model(cfg.model, cfg.train.seed)
    r0 = evaluate(fresh, corpus.val, 64, 3, 4)
    assert r0.digest != r1.digest and r0.val_loss > r1.val_loss


def test_same_seed_same_initial_weights():
    cfg = tiny()
    a, b = build_model(cfg.model, 0), build_model(cfg.model, 0)
    c = build_model(cfg.model, 1)
    da = state_digest(dict(a.named_parameters()))
    assert da == state_digest(dict(b.named_parameters())) != state_digest(dict(c.named_parameters()))
