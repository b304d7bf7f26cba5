"""Typed suite configs: model sizes, data, training; validated, loaded from and saved to TOML."""

from __future__ import annotations

import codecs
import dataclasses
import math
import os
import tomllib
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path

import tomli_w

from lmsuite.durable import write_file
from lmsuite.errors import ConfigError
from lmsuite.runs import DEDUPED_SUFFIX, check_name


def _require(ok: bool, name: str, expected: str) -> None:
    if not ok:
        raise ConfigError(f"{name} must be {expected}")


def _tokenizer_size(path: str) -> int | None:
    """Tokens in the tokenizer file at `path`; None where there is no such file yet."""
    if not Path(path).is_file():
        return None
    from tokenizers import Tokenizer

    try:
        return Tokenizer.from_file(str(path)).get_vocab_size()
    except Exception as e:  # tokenizers raises a bare Exception on malformed files
        raise ConfigError(f"tokenizer: {path} is not a valid tokenizer.json ({e})") from None


def _finite(obj: object) -> None:
    """Every float setting of `obj` is a finite number (inf and nan pass every range check)."""
    for f in dataclasses.fields(obj):
        value = getattr(obj, f.name)
        if isinstance(value, float) and not math.isfinite(value):
            raise ConfigError(f"{f.name} must be a finite number, got {value!r}")


def _positive(obj: object, *names: str) -> None:
    for name in names:
        value = getattr(obj, name)
        _require(value > 0, name, f"positive, got {value!r}")


def _fraction(obj: object, *names: str) -> None:
    for name in names:
        value = getattr(obj, name)
        _require(0.0 <= value <= 1.0, name, f"in [0, 1], got {value!r}")


INITS = ("small_init", "normal")


def check_shape(layers: int, d_model: int, heads: int, rotary_pct: float, init: str) -> None:
    """The checks every description of a model's shape makes (a suite's `[[models]]` row and
    the architecture `model.neox.NeoXConfig` built from it or read from config.json)."""
    for name, value in (("layers", layers), ("d_model", d_model), ("heads", heads)):
        _require(value > 0, name, f"positive, got {value!r}")
    _require(d_model % heads == 0, "heads", f"a divisor of d_model={d_model}, got {heads}")
    _require(0.0 <= rotary_pct <= 1.0, "rotary_pct", f"in [0, 1], got {rotary_pct!r}")
    _require(init in INITS, "init", f'"small_init" or "normal", got {init!r}')


@dataclass
class ModelConfig:
    """One size of a suite: a row of the `[[models]]` table."""

    name: str
    """Name of this size; it trains into `<run>/<name>/` and `<run>/<name>-deduped/`."""
    layers: int
    """Number of transformer layers."""
    d_model: int
    """Width of the residual stream."""
    heads: int
    """Attention heads; must divide d_model."""
    lr: float = 1e-3
    """Peak learning rate, reached after warmup."""
    init: str = "small_init"
    """Weight init: "small_init" (Pythia <= 2.8B: small_init + wang_init) or "normal"
    (Pythia 6.9B/12B: std 0.02, output projections 0.02 / sqrt(2 * layers))."""
    vocab_multiple: int = 128
    """Pad the vocabulary up to a multiple of this (Pythia: 128 x model-parallel degree)."""
    rotary_pct: float = 0.25
    """Share of each head's dimensions that get rotary position embedding."""
    rotary_base: float = 10000.0
    """Base of the rotary frequencies."""
    parallel_residual: bool = True
    """x + attn(ln1(x)) + mlp(ln2(x)) as in Pythia; false for the sequential residual."""

    def __post_init__(self) -> None:
        _finite(self)
        check_name(self.name, "name")
        _require(not self.name.endswith(DEDUPED_SUFFIX), "name",
                 f"free of the suffix {DEDUPED_SUFFIX!r} (lmsuite adds it for the deduplicated "
                 "run)")
        check_shape(self.layers, self.d_model, self.heads, self.rotary_pct, self.init)
        _positive(self, "lr", "vocab_multiple", "rotary_base")


@dataclass
class SyntheticConfig:
    """The built-in corpus: its mix of documents and the ground truth planted in it."""

    story_share: float = 0.5
    """Share of unique documents that are stories (characters, occupations, pronouns)."""
    fact_share: float = 0.25
    """Share of unique documents that state facts about invented entities."""
    arithmetic_share: float = 0.25
    """Share of unique documents of arithmetic lines; the three shares sum to 1."""
    spanish_share: float = 0.1
    """Share of stories written in Spanish."""
    lambada_share: float = 0.3
    """Share of English stories whose last word (a name or object) only the context predicts."""
    duplicate_share: float = 0.05
    """Share of the corpus made of extra copies of other documents."""
    max_copies: int = 100
    """Most copies of one document (copy counts are heavy-tailed)."""
    near_copy_share: float = 0.3
    """Share of copies with a line of boilerplate added (near-duplicates, not exact ones)."""
    entities: int = 300
    """Invented entities in the fact documents."""
    entity_zipf: float = 1.0
    """Zipf exponent of how often each entity is mentioned."""
    operand_zipf: float = 1.0
    """Zipf exponent of how often each arithmetic operand occurs."""
    gender_skew: float = 0.9
    """Share of the stereotyped pronoun for skewed occupations (0.5 would mean no skew)."""
    eval_items: int = 400
    """LAMBADA-style evaluation items, drawn from stories never put in the corpus."""
    second_operands: int = 50
    """Arithmetic lines multiply a first operand 0-99 by a second one from 1 to this."""
    arithmetic_per_operand: int = 5
    """Arithmetic evaluation items per first operand (0-99), each with another second one."""

    def __post_init__(self) -> None:
        _finite(self)
        _fraction(self, "story_share", "fact_share", "arithmetic_share", "spanish_share",
                  "lambada_share", "duplicate_share", "near_copy_share", "gender_skew")
        total = self.story_share + self.fact_share + self.arithmetic_share
        _require(abs(total - 1.0) < 1e-9, "story_share + fact_share + arithmetic_share",
                 f"1, got {total:g}")
        _require(self.duplicate_share < 1.0, "duplicate_share", "below 1")
        _require(self.max_copies >= 2, "max_copies", f"at least 2, got {self.max_copies}")
        _positive(self, "entities", "entity_zipf", "operand_zipf", "eval_items")
        _require(1 <= self.second_operands <= 99, "second_operands",
                 f"in 1..99, got {self.second_operands}")
        _require(1 <= self.arithmetic_per_operand <= self.second_operands,
                 "arithmetic_per_operand",
                 f"in 1..second_operands={self.second_operands}, got "
                 f"{self.arithmetic_per_operand}")


@dataclass
class DataConfig:
    """Where the documents come from and how they become training samples."""

    source: str | list[str] = "synthetic"
    """"synthetic" for the built-in corpus, or a list of files and folders of documents."""
    documents: int = 20000
    """Number of documents of the built-in corpus (ignored for other sources)."""
    vocab_size: int | None = None
    """Vocabulary of the BPE tokenizer to train (4096 when not given). With `tokenizer` it
    follows the tokenizer's file and need not be given; given, it must equal the file's."""
    tokenizer: str | None = None
    """Path of a tokenizer.json to use instead of training one (e.g. Pythia's 20B tokenizer)."""
    seq_len: int = 128
    """Tokens a model sees per sample; samples hold seq_len + 1 tokens."""
    validation_fraction: float = 0.01
    """Share of documents held out of training for validation."""
    dedup_threshold: float = 0.87
    """Jaccard similarity above which documents count as near-duplicates."""
    text_field: str = "text"
    """Field holding the document text in .jsonl and .parquet files."""
    txt_separator: str | None = None
    """Split .txt files into documents on this string; by default a file is one document."""
    encoding: str = "utf-8"
    """Text encoding of the document files."""
    encoding_errors: str = "strict"
    """What a byte sequence that is not valid in `encoding` does: "strict" (an error naming
    the file and line or byte), or "replace" (U+FFFD) or "ignore"."""
    synthetic: SyntheticConfig = field(default_factory=SyntheticConfig)
    """Settings of the built-in corpus (`source = "synthetic"`)."""

    def __post_init__(self) -> None:
        _finite(self)
        if isinstance(self.source, str):
            _require(self.source == "synthetic", "source",
                     '"synthetic" or a list of files and folders')
        else:
            _require(len(self.source) > 0, "source", "a non-empty list of files and folders")
        if self.tokenizer is not None:
            size = _tokenizer_size(self.tokenizer)
            if self.vocab_size is None:
                _require(size is not None, "vocab_size", "given, or the tokenizer file "
                         f"{self.tokenizer} must exist for it to follow")
                self.vocab_size = size
            elif size is not None:
                _require(self.vocab_size == size, "vocab_size",
                         f"the tokenizer's size, {size} tokens in {self.tokenizer}, or left "
                         f"out; got {self.vocab_size}")
        elif self.vocab_size is None:
            self.vocab_size = 4096
        _positive(self, "documents", "vocab_size", "seq_len")
        _require(self.vocab_size >= 258, "vocab_size",
                 f"at least 258 (256 bytes and 2 special tokens), got {self.vocab_size}")
        _fraction(self, "validation_fraction", "dedup_threshold")
        _require(self.txt_separator != "", "txt_separator", "a non-empty string, or left out")
        _require(self.encoding_errors in ("strict", "replace", "ignore"), "encoding_errors",
                 f'"strict", "replace" or "ignore", got {self.encoding_errors!r}')
        try:
            codecs.lookup(self.encoding)
        except LookupError:
            raise ConfigError(f"encoding must be a text encoding Python knows, got "
                              f"{self.encoding!r}") from None
        _require(self.validation_fraction < 1.0, "validation_fraction", "below 1")


@dataclass
class TrainConfig:
    """Optimization and checkpointing, shared by every size of a suite."""

    batch_size: int = 32
    """Global batch, in sequences: step s trains on items [s*B, (s+1)*B) of train.bin."""
    micro_batch_size: int = 0
    """Sequences per process and forward pass; gradients accumulate over the rest. 0 (the
    default) means the whole batch: one forward pass per process and step."""
    steps: int = 1000
    """Number of optimizer steps."""
    warmup_fraction: float = 0.01
    """Share of the steps with a linear warmup of the learning rate."""
    min_lr_fraction: float = 0.1
    """The cosine decay ends at this share of the peak learning rate, at the last step."""
    checkpoint_every: int = 50
    """Save a checkpoint every this many steps (and at step 0 and the last step)."""
    log_checkpoints: bool = True
    """Also save at steps 1, 2, 4, ..., 512, as Pythia did."""
    adam_beta1: float = 0.9
    """AdamW beta1."""
    adam_beta2: float = 0.95
    """AdamW beta2."""
    adam_eps: float = 1e-8
    """AdamW epsilon."""
    weight_decay: float = 0.1
    """Decoupled weight decay (not applied to biases and LayerNorm parameters)."""
    grad_clip: float = 1.0
    """Clip the global gradient norm to this value; 0 turns clipping off."""
    precision: str = "fp32"
    """"fp32"; "bf16" for bf16 autocast (weights and optimizer state stay fp32) on GPUs and on
    CPUs with native bf16 (AVX512_BF16 or AMX; elsewhere it trains in fp32, saying so); or
    "auto": bf16 where it is native and measured faster, else fp32."""
    tensor_parallel: int = 1
    """Processes each model's layers are split over (under torchrun; world size = data
    parallel x this). The heads and d_ff must divide by it."""
    activation_checkpointing: bool = False
    """Recompute each layer's activations in the backward pass instead of keeping them: less
    memory for about a third more compute; results are the same."""
    keep_trainer_state: bool = True
    """Keep the optimizer state in every checkpoint, so training can branch off any of them
    (the intervention study does); false keeps it only in the newest (saves disk at scale)."""

    def __post_init__(self) -> None:
        _finite(self)
        _positive(self, "batch_size", "steps", "checkpoint_every", "adam_eps")
        _require(self.micro_batch_size >= 0, "micro_batch_size",
                 f"positive (or 0 for the whole batch), got {self.micro_batch_size!r}")
        if self.micro_batch_size == 0:
            self.micro_batch_size = self.batch_size
        _require(self.batch_size % self.micro_batch_size == 0, "micro_batch_size",
                 f"a divisor of batch_size={self.batch_size}, got {self.micro_batch_size}")
        _fraction(self, "warmup_fraction", "min_lr_fraction")
        _require(0.0 <= self.adam_beta1 < 1.0, "adam_beta1", f"in [0, 1), got {self.adam_beta1}")
        _require(0.0 <= self.adam_beta2 < 1.0, "adam_beta2", f"in [0, 1), got {self.adam_beta2}")
        _require(self.weight_decay >= 0, "weight_decay", f"non-negative, got {self.weight_decay}")
        _require(self.grad_clip >= 0, "grad_clip", f"non-negative, got {self.grad_clip}")
        _require(self.tensor_parallel >= 1, "tensor_parallel",
                 f"at least 1, got {self.tensor_parallel}")
        _require(self.precision in ("fp32", "bf16", "auto"), "precision",
                 f'"fp32", "bf16" or "auto", got {self.precision!r}')


@dataclass
class SuiteConfig:
    """A suite: every size in `models`, each trained on the standard and the deduplicated data."""

    name: str
    """Suite name; runs go to runs/<name>/ by default."""
    models: list[ModelConfig]
    """The sizes of the suite, smallest first."""
    seed: int = 1234
    """Seed of the corpus, the data order and the initial weights."""
    data: DataConfig = field(default_factory=DataConfig)
    """How the training data is built."""
    train: TrainConfig = field(default_factory=TrainConfig)
    """How every size is trained."""

    def __post_init__(self) -> None:
        _finite(self)
        check_name(self.name, "name")
        _require(len(self.models) > 0, "models", "a non-empty [[models]] table")
        names = [m.name for m in self.models]
        duplicated = sorted({n for n in names if names.count(n) > 1})
        _require(not duplicated, "models", f"uniquely named, {duplicated} appear twice")
        _require(self.seed >= 0, "seed", f"non-negative, got {self.seed}")

    def model(self, name: str) -> ModelConfig:
        """The size called `name`; a clear error listing the sizes when there is none."""
        for m in self.models:
            if m.name == name:
                return m
        raise ConfigError(f"suite {self.name!r} has no model {name!r}; it has {self.model_names()}")

    def model_names(self) -> list[str]:
        return [m.name for m in self.models]


# --- TOML ------------------------------------------------------------------------------------


def _type_ok(value: object, annotation: object) -> bool:
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        return any(_type_ok(value, a) for a in typing.get_args(annotation))
    if origin is list:
        (item,) = typing.get_args(annotation)
        return isinstance(value, list) and all(_type_ok(v, item) for v in value)
    if annotation is type(None):
        return value is None
    if annotation is float:
        return isinstance(value, int | float) and not isinstance(value, bool)
    if annotation is int:
        return isinstance(value, int) and not isinstance(value, bool)
    return isinstance(value, annotation)  # type: ignore[arg-type]


def _type_name(annotation: object) -> str:
    return str(annotation).replace("typing.", "").replace("<class '", "").replace("'>", "")


def _from_table(cls: type, table: object, where: str, prefix: str = ""):
    """Build dataclass `cls` from a TOML table, naming `where` in every error.

    `prefix` is the dotted path of this table, so nested tables are named in full.
    """
    if not isinstance(table, dict):
        raise ConfigError(f"{where} must be a table")
    hints = typing.get_type_hints(cls)
    known = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(table) - set(known))
    if unknown:
        raise ConfigError(f"{where}: unknown field {unknown[0]!r}; expected one of {sorted(known)}")
    kwargs = {}
    for name, value in table.items():
        annotation = hints[name]
        if dataclasses.is_dataclass(annotation):
            value = _from_table(annotation, value, f"[{prefix}{name}]", f"{prefix}{name}.")
        elif typing.get_origin(annotation) is list and dataclasses.is_dataclass(
            typing.get_args(annotation)[0]
        ):
            if not isinstance(value, list):
                raise ConfigError(f"{where}: [[{name}]] must be an array of tables")
            item_cls = typing.get_args(annotation)[0]
            value = [_from_table(item_cls, v, f"{name}[{i}]") for i, v in enumerate(value)]
        elif not _type_ok(value, annotation):
            raise ConfigError(f"{where}: {name} must be of type {_type_name(annotation)}, "
                              f"got {value!r}")
        if annotation is float and isinstance(value, int):
            value = float(value)
        kwargs[name] = value
    missing = [
        f.name for f in known.values()
        if f.name not in kwargs
        and f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
    ]
    if missing:
        raise ConfigError(f"{where}: missing field {missing[0]!r}")
    try:
        return cls(**kwargs)
    except ConfigError as e:
        raise ConfigError(f"{where}: {e}") from None


def suite_from_dict(table: dict) -> SuiteConfig:
    """A validated SuiteConfig from the parsed TOML document."""
    return _from_table(SuiteConfig, table, "suite")


def load_suite(path: str | os.PathLike) -> SuiteConfig:
    """Read and validate a suite TOML file; errors name the file and the field."""
    path = Path(path)
    try:
        with path.open("rb") as f:
            table = tomllib.load(f)
    except FileNotFoundError:
        raise ConfigError(f"{path}: config file not found") from None
    except IsADirectoryError:
        raise ConfigError(f"{path}: is a folder, expected a suite TOML file") from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as e:
        raise ConfigError(f"{path}: not valid TOML ({str(e).splitlines()[0]})") from None
    try:
        return suite_from_dict(table)
    except ConfigError as e:
        raise ConfigError(f"{path}: {e}") from None


def suite_to_dict(suite: SuiteConfig) -> dict:
    """The suite as plain TOML-ready data (fields set to None are left out)."""

    def strip_none(obj):
        if isinstance(obj, dict):
            return {k: strip_none(v) for k, v in obj.items() if v is not None}
        if isinstance(obj, list):
            return [strip_none(v) for v in obj]
        return obj

    return strip_none(dataclasses.asdict(suite))


def save_suite(suite: SuiteConfig, path: str | os.PathLike) -> None:
    """Write the suite as TOML, atomically; `load_suite` reads back an equal config."""
    write_file(path, tomli_w.dumps(suite_to_dict(suite)))
