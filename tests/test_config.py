import dataclasses
import json
from pathlib import Path

import pytest

from lmsuite.config import (
    DataConfig,
    ModelConfig,
    SuiteConfig,
    SyntheticConfig,
    TrainConfig,
    load_suite,
    save_suite,
    suite_from_dict,
)
from lmsuite.errors import ConfigError

CONFIGS = Path(__file__).resolve().parents[1] / "configs"

TINY = """
name = "tiny"
seed = 1234

[data]
source = "synthetic"
documents = 20000
vocab_size = 4096
seq_len = 128
validation_fraction = 0.01
dedup_threshold = 0.87

[train]
batch_size = 32
micro_batch_size = 32
steps = 1000
warmup_fraction = 0.01
min_lr_fraction = 0.1
checkpoint_every = 50
log_checkpoints = true

[[models]]
name = "tiny-1m"
layers = 2
d_model = 64
heads = 2
lr = 1e-3
"""


def write(tmp_path, text: str) -> Path:
    path = tmp_path / "suite.toml"
    path.write_text(text)
    return path


def test_issue_example_loads(tmp_path):
    suite = load_suite(write(tmp_path, TINY))
    assert suite.name == "tiny" and suite.train.batch_size == 32
    assert suite.models[0] == ModelConfig(name="tiny-1m", layers=2, d_model=64, heads=2, lr=1e-3)


@pytest.mark.parametrize("path", sorted(CONFIGS.glob("*.toml")), ids=lambda p: p.name)
def test_shipped_configs_round_trip_through_toml_without_loss(path, tmp_path):
    suite = load_suite(path)
    out = tmp_path / "again.toml"
    save_suite(suite, out)
    assert load_suite(out) == suite


def test_round_trip_keeps_every_non_default_field(tmp_path):
    suite = SuiteConfig(
        name="x", seed=7,
        data=DataConfig(source=["a.jsonl", "b/"], tokenizer="tok.json", vocab_size=50277,
                        seq_len=2048, txt_separator="\n\n"),
        train=TrainConfig(batch_size=8, micro_batch_size=2, adam_eps=1e-6, precision="bf16"),
        models=[ModelConfig(name="m", layers=3, d_model=48, heads=3, lr=2.5e-4, init="normal",
                            vocab_multiple=512, rotary_pct=0.5, parallel_residual=False)],
    )
    save_suite(suite, tmp_path / "s.toml")
    assert load_suite(tmp_path / "s.toml") == suite


def test_micro_batch_defaults_to_the_whole_batch(tmp_path):
    # A suite that sets only its batch size (here smaller than any fixed default) loads.
    suite = load_suite(write(tmp_path, TINY.replace("batch_size = 32\nmicro_batch_size = 32\n",
                                                    "batch_size = 8\n")))
    assert suite.train.batch_size == 8 and suite.train.micro_batch_size == 8


@pytest.mark.parametrize("edit, message", [
    (("models", "heads", 3), r"models\[0\]: heads must be a divisor of d_model=64, got 3"),
    (("models", "layers", 0), r"models\[0\]: layers must be positive, got 0"),
    (("train", "micro_batch_size", 5), r"\[train\]: micro_batch_size must be a divisor"),
    (("train", "micro_batch_size", -4), r"\[train\]: micro_batch_size must be positive \(or 0"),
    (("train", "warmup_fraction", 1.5), r"\[train\]: warmup_fraction must be in \[0, 1\]"),
    (("data", "dedup_threshold", -0.1), r"\[data\]: dedup_threshold must be in \[0, 1\]"),
    (("data", "seq_len", "128"), r"\[data\]: seq_len must be of type int, got '128'"),
    (("data", "colour", 1), r"\[data\]: unknown field 'colour'"),
    (("train", "precision", "fp8"), r"\[train\]: precision must be"),
    (("models", "name", "a-deduped"), r"name must be free of the suffix '-deduped'"),
])
def test_bad_fields_are_named_in_the_error(tmp_path, edit, message):
    import tomllib

    table = tomllib.loads(TINY)
    section, key, value = edit
    target = table[section][0] if section == "models" else table[section]
    target[key] = value
    with pytest.raises(ConfigError, match=message):
        suite_from_dict(table)


def test_error_names_the_file(tmp_path):
    path = write(tmp_path, TINY.replace("heads = 2", "heads = 5"))
    with pytest.raises(ConfigError, match=f"{path}: models\\[0\\]: heads"):
        load_suite(path)
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_suite(write(tmp_path, "name = "))
    with pytest.raises(ConfigError, match="config file not found"):
        load_suite(tmp_path / "missing.toml")


def test_duplicate_model_names_are_refused():
    m = ModelConfig(name="a", layers=1, d_model=8, heads=1)
    with pytest.raises(ConfigError, match="appear twice"):
        SuiteConfig(name="s", models=[m, dataclasses.replace(m)])


def test_every_field_has_a_docstring():
    import inspect

    for cls in (ModelConfig, DataConfig, SyntheticConfig, TrainConfig, SuiteConfig):
        source = inspect.getsource(cls)
        for f in dataclasses.fields(cls):
            after = source.split(f"    {f.name}:", 1)[1].split("\n", 2)[1]
            assert after.strip().startswith('"""'), f"{cls.__name__}.{f.name} has no docstring"


def test_pythia_config_holds_the_published_hyperparameters():
    suite = load_suite(CONFIGS / "pythia.toml")
    shapes = {m.name: (m.layers, m.d_model, m.heads, m.lr) for m in suite.models}
    assert shapes == {
        "pythia-70m": (6, 512, 8, 1e-3), "pythia-160m": (12, 768, 12, 6e-4),
        "pythia-410m": (24, 1024, 16, 3e-4), "pythia-1b": (16, 2048, 8, 2.5e-4),
        "pythia-1.4b": (24, 2048, 16, 2e-4), "pythia-2.8b": (32, 2560, 32, 1.6e-4),
        "pythia-6.9b": (32, 4096, 32, 1.2e-4), "pythia-12b": (36, 5120, 40, 1.2e-4),
    }
    t = suite.train
    assert (t.batch_size, suite.data.seq_len, t.steps) == (1024, 2048, 143000)
    assert (t.adam_beta1, t.adam_beta2, t.adam_eps, t.weight_decay, t.grad_clip) == (
        0.9, 0.95, 1e-8, 0.1, 1.0)
    assert (t.warmup_fraction, t.min_lr_fraction, t.checkpoint_every) == (0.01, 0.1, 1000)
    assert suite.seed == 1234 and suite.data.vocab_size == 50277
    assert [m.init for m in suite.models] == ["small_init"] * 6 + ["normal"] * 2
    assert json.dumps(suite.data.source)  # a list of paths the user points at the Pile
