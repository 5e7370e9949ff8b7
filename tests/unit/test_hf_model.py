"""models/hf.py: a transformers causal LM from a local config behind the (logits, loss) interface; no download."""

import sys
from pathlib import Path

import pytest
import torch

from p2pmodel.config import load_config
from p2pmodel.core.errors import ConfigError

ROOT = Path(__file__).resolve().parents[2]
RECIPE = ROOT / "configs" / "hf-gpt2-tiny.toml"
HF_CONFIG = ROOT / "configs" / "hf" / "gpt2-tiny" / "config.json"


@pytest.fixture
def one_thread():
    """One torch thread, as the recipe's peers use: on a loaded 2-core runner two threads are 20x slower."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _cfg(*overrides: str):
    return load_config(RECIPE, [f"model.hf_config_path={HF_CONFIG}", *overrides])


def test_recipe_loads_and_points_at_the_shipped_config():
    cfg = load_config(RECIPE)
    assert cfg.model.kind == "hf" and cfg.model.vocab_size == 256
    assert (ROOT / cfg.model.hf_config_path).resolve() == HF_CONFIG.resolve()


def test_shipped_hf_assets_are_small():
    total = sum(f.stat().st_size for f in (ROOT / "configs" / "hf").rglob("*") if f.is_file())
    assert total < 200_000, total


def test_without_transformers_the_error_names_the_extra(monkeypatch):
    from p2pmodel.models import build_model

    monkeypatch.setitem(sys.modules, "transformers", None)  # import transformers -> ImportError
    with pytest.raises(ConfigError, match=r"p2pmodel\[hf\]"):
        build_model(_cfg().model, 0)


@pytest.mark.parametrize(
    "overrides, message",
    [
        (["model.hf_config_path=/nonexistent/config.json"], "does not exist"),
        (["model.hf_config_path=null"], "needs model.hf_config_path"),
        (["model.vocab_size=512"], r"model.vocab_size \(512\) must equal vocab_size"),
        (["model.seq_len=256"], r"exceeds the 128 positions"),
    ],
)
def test_bad_configs_give_one_line_config_errors(overrides, message):
    pytest.importorskip("transformers")
    from p2pmodel.models import build_model

    with pytest.raises(ConfigError, match=message) as exc:
        build_model(_cfg(*overrides).model, 0)
    assert "\n" not in str(exc.value)


def test_config_dir_without_config_json_is_a_config_error(tmp_path):
    from p2pmodel.models import build_model

    with pytest.raises(ConfigError, match="no config.json"):
        build_model(_cfg(f"model.hf_config_path={tmp_path}").model, 0)


@pytest.mark.timeout(120)
def test_gpt2_from_local_config_trains_and_evaluates(one_thread):
    pytest.importorskip("transformers")
    from p2pmodel.data import TrainStream, load_corpus
    from p2pmodel.eval import evaluate
    from p2pmodel.eval.digest import state_digest
    from p2pmodel.models import build_model
    from p2pmodel.models.hf import HFCausalLM
    from p2pmodel.train import InnerTrainer

    cfg = _cfg("train.lr=3e-3", "train.warmup_steps=0")
    model = build_model(cfg.model, cfg.train.seed)
    assert isinstance(model, HFCausalLM) and model.config.seq_len == 128
    assert model.lm.config.model_type == "gpt2"
    # tied weights: the head is the embedding, and named_parameters() (the digest's input) lists it once
    assert model.lm.lm_head.weight is model.lm.transformer.wte.weight
    names = [n for n, _ in model.named_parameters()]
    assert len(names) == len(set(names)) == len(list(model.parameters()))
    assert not any("lm_head" in n for n in names)
    assert all(p.dtype == torch.float32 for p in model.parameters())

    # the genesis seed alone fixes the weights
    digest = state_digest(dict(model.named_parameters()))
    assert state_digest(dict(build_model(cfg.model, cfg.train.seed).named_parameters())) == digest
    assert state_digest(dict(build_model(cfg.model, cfg.train.seed + 1).named_parameters())) != digest

    x = torch.randint(0, 256, (2, 128))
    logits, loss = model(x, x)
    assert logits.shape == (2, 128, 256) and loss.ndim == 0
    assert model(x)[1] is None
    with pytest.raises(ValueError, match="exceeds the model's seq_len"):
        model(torch.zeros(1, 129, dtype=torch.long))

    corpus = load_corpus("stdlib", [], 300_000, 0.05, 130)
    before = evaluate(model, corpus.val, 128, 2, 8)
    assert before.digest == digest
    trainer = InnerTrainer(model, cfg.train, torch.device("cpu"))
    stats = trainer.run(TrainStream(corpus.train, 128, 0, "test"), 20)
    assert stats.steps == 20 and stats.tokens == 20 * cfg.train.batch_size * 128
    after = evaluate(model, corpus.val, 128, 2, 8)
    assert after.val_loss < before.val_loss - 0.5, (before.val_loss, after.val_loss)
