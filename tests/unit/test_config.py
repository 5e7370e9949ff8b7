"""Config tree: every recipe in configs/ loads, gpt2-small builds and steps, overrides, one-line ConfigErrors."""

from pathlib import Path

import pytest
import torch

from p2pmodel.config import Config, load_config, parse_override
from p2pmodel.core.errors import ConfigError, UsageError

CONFIGS = Path(__file__).resolve().parents[2] / "configs"
CONFIG_FILES = sorted(CONFIGS.glob("*.toml"))


def test_configs_dir_is_not_empty():
    names = {p.name for p in CONFIG_FILES}
    assert {"tiny.toml", "gpt2-small.toml"} <= names


@pytest.mark.timeout(30)
@pytest.mark.parametrize("path", CONFIG_FILES, ids=lambda p: p.name)
def test_every_config_file_loads(path):
    cfg = load_config(path)
    assert isinstance(cfg, Config)
    assert cfg.model.n_embd % cfg.model.n_head == 0
    assert cfg.train.batch_size % cfg.train.grad_accum_steps == 0
    # the effective config round-trips through the schema unchanged
    assert Config.model_validate(cfg.model_dump()) == cfg


def test_tiny_is_the_embedded_default_shape():
    cfg = load_config(CONFIGS / "tiny.toml")
    assert (cfg.run_name, cfg.data.source, cfg.model.vocab_size) == ("tiny", "stdlib", 256)
    assert (cfg.model.n_layer, cfg.model.n_embd, cfg.model.seq_len) == (4, 128, 128)


@pytest.mark.timeout(60)
def test_gpt2_small_parameter_count_is_124m():
    from p2pmodel.models import build_model

    cfg = load_config(CONFIGS / "gpt2-small.toml")
    with torch.device("meta"):  # shapes only: no 500 MB of weights
        model = build_model(cfg.model, cfg.train.seed)
    n = sum(p.numel() for p in model.parameters())  # tied embedding counted once
    assert 123_000_000 < n < 126_000_000, n


@pytest.mark.timeout(120)
def test_gpt2_small_reduced_builds_and_steps_on_cpu():
    from p2pmodel.data import TrainStream
    from p2pmodel.models import build_model
    from p2pmodel.train import InnerTrainer, pick_device

    cfg = load_config(
        CONFIGS / "gpt2-small.toml",
        [
            "model.n_layer=2",
            "model.seq_len=64",
            "model.n_embd=96",
            "model.n_head=4",
            "train.device=cpu",
            "train.batch_size=4",
            "train.grad_accum_steps=2",
        ],
    )
    assert cfg.model.vocab_size == 50304  # the recipe's vocabulary is kept
    device = pick_device(cfg.train.device)
    assert device.type == "cpu"
    model = build_model(cfg.model, cfg.train.seed).to(device)
    before = [p.detach().clone() for p in model.parameters()]
    tokens = torch.randint(0, cfg.model.vocab_size, (10_000,), generator=torch.Generator().manual_seed(0))
    stream = TrainStream(tokens, cfg.model.seq_len, cfg.train.seed, "peer-a")
    stats = InnerTrainer(model, cfg.train, device).run(stream, 1)
    assert stats.steps == 1 and stats.samples == 4 and stats.tokens == 4 * 64
    assert torch.isfinite(torch.tensor(stats.loss))
    assert any(not torch.equal(a, b) for a, b in zip(before, model.parameters(), strict=True))


# --- overrides -----------------------------------------------------------------------------------
def test_parse_override_json_and_strings():
    assert parse_override("train.lr=3e-4") == (["train", "lr"], 3e-4)
    assert parse_override('data.paths=["a/*.txt"]') == (["data", "paths"], ["a/*.txt"])
    assert parse_override("run_name=hello") == (["run_name"], "hello")
    assert parse_override("compress.error_feedback=false") == (["compress", "error_feedback"], False)


def test_dotted_overrides_apply_on_top_of_file():
    cfg = load_config(
        CONFIGS / "tiny.toml",
        ["train.lr=3e-4", "model.n_layer=2", "run_name=other", 'data.paths=["x/*.txt"]', "data.source=text"],
    )
    assert cfg.train.lr == 3e-4 and cfg.model.n_layer == 2 and cfg.run_name == "other"
    assert cfg.data.paths == ["x/*.txt"] and cfg.data.source == "text"
    assert cfg.model.n_embd == 128  # untouched fields keep the file's value


def test_overrides_without_file_use_defaults():
    cfg = load_config(None, ["train.inner_steps=7"])
    assert cfg.train.inner_steps == 7 and cfg.model == Config().model


@pytest.mark.parametrize("bad", ["trainlr", "=3", "train.lr"])
def test_malformed_override(bad):
    with pytest.raises(ConfigError, match="override"):
        load_config(CONFIGS / "tiny.toml", [bad])


def test_override_into_a_scalar_is_an_error():
    with pytest.raises(ConfigError):
        load_config(CONFIGS / "tiny.toml", ["run_name.x=1"])


# --- errors name the field ------------------------------------------------------------------------
def _one_line(err: pytest.ExceptionInfo) -> str:
    msg = str(err.value)
    assert msg and "\n" not in msg
    assert isinstance(err.value, UsageError) and err.value.exit_code == 2
    return msg


def test_unknown_field_in_file(tmp_path):
    p = tmp_path / "c.toml"
    p.write_text("[train]\nlearning_rate = 0.1\n")
    with pytest.raises(ConfigError) as e:
        load_config(p)
    msg = _one_line(e)
    assert "train.learning_rate" in msg and "unknown field" in msg


def test_unknown_section(tmp_path):
    p = tmp_path / "c.toml"
    p.write_text("[trainer]\nlr = 0.1\n")
    with pytest.raises(ConfigError) as e:
        load_config(p)
    assert "trainer" in _one_line(e)


def test_unknown_field_by_override():
    with pytest.raises(ConfigError) as e:
        load_config(CONFIGS / "tiny.toml", ["model.n_layers=3"])
    assert "model.n_layers" in _one_line(e)


@pytest.mark.parametrize(
    "override, field",
    [
        ("train.lr=5", "train.lr"),
        ("train.inner_steps=0", "train.inner_steps"),
        ("data.val_fraction=0.9", "data.val_fraction"),
        ("model.seq_len=4", "model.seq_len"),
        ('compress.codec="int3"', "compress.codec"),
        ("train.device=tpu", "train.device"),
        ("train.batch_size=banana", "train.batch_size"),
    ],
)
def test_out_of_bound_or_wrong_type_names_the_field(override, field):
    with pytest.raises(ConfigError) as e:
        load_config(CONFIGS / "tiny.toml", [override])
    assert field in _one_line(e)


def test_cross_field_rules(tmp_path):
    with pytest.raises(ConfigError) as e:
        load_config(CONFIGS / "tiny.toml", ["model.n_embd=130"])
    assert "model" in _one_line(e) and "n_head" in str(e.value)
    with pytest.raises(ConfigError) as e:
        load_config(CONFIGS / "tiny.toml", ["train.grad_accum_steps=3"])
    assert "train" in _one_line(e) and "grad_accum_steps" in str(e.value)


def test_broadcast_settings_fit_together_and_only_broadcast_runs_carry_them_in_their_spec():
    with pytest.raises(ConfigError) as e:
        load_config(CONFIGS / "tiny.toml", ["compress.codec=sparse"])
    assert "sync.mode = 'broadcast'" in _one_line(e)
    with pytest.raises(ConfigError) as e:
        load_config(CONFIGS / "tiny.toml", ["sync.mode=broadcast", "sync.overlap=true"])
    assert "sync.overlap" in _one_line(e)
    allreduce = load_config(CONFIGS / "tiny.toml").lineage_spec()
    assert "mode" not in allreduce["sync"] and "aggregator" not in allreduce["sync"]  # existing run ids unchanged
    assert load_config(CONFIGS / "tiny.toml", ["sync.aggregator=mean"]).lineage_spec() == allreduce
    clip = load_config(CONFIGS / "tiny.toml", ["sync.mode=broadcast", "compress.codec=sparse"]).lineage_spec()
    trimmed = load_config(
        CONFIGS / "tiny.toml", ["sync.mode=broadcast", "compress.codec=sparse", "sync.aggregator=trimmed_mean"]
    ).lineage_spec()
    assert clip["sync"]["mode"] == "broadcast" and clip["sync"]["aggregator"] == "centered_clip"
    assert clip != trimmed  # every peer computes the aggregate: they must agree on how


def test_bad_value_in_file_names_file_and_field(tmp_path):
    p = tmp_path / "c.toml"
    p.write_text("[eval]\nbatches = -1\n")
    with pytest.raises(ConfigError) as e:
        load_config(p)
    msg = _one_line(e)
    assert str(p) in msg and "eval.batches" in msg


def test_bad_toml(tmp_path):
    p = tmp_path / "c.toml"
    p.write_text("[train\nlr = = 1\n")
    with pytest.raises(ConfigError) as e:
        load_config(p)
    msg = _one_line(e)
    assert "invalid TOML" in msg and str(p) in msg


def test_missing_file(tmp_path):
    p = tmp_path / "nope.toml"
    with pytest.raises(ConfigError) as e:
        load_config(p)
    msg = _one_line(e)
    assert "not found" in msg and str(p) in msg


def test_directory_instead_of_file(tmp_path):
    with pytest.raises(ConfigError) as e:
        load_config(tmp_path)
    _one_line(e)


def test_not_utf8(tmp_path):
    p = tmp_path / "c.toml"
    p.write_bytes(b'run_name = "\xff\xfe"\n')
    with pytest.raises(ConfigError) as e:
        load_config(p)
    _one_line(e)
