"""Byte-level BPE tokenizers (HF `tokenizers`): train one, load one, save it as HF files."""

from __future__ import annotations

import json
import os
from collections.abc import Iterable
from pathlib import Path

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

from lmsuite.durable import write_file
from lmsuite.errors import DataFormatError

EOD = "<|endoftext|>"
PAD = "<|padding|>"


def train_tokenizer(texts: Iterable[str], vocab_size: int) -> Tokenizer:
    """Train a byte-level BPE with `<|endoftext|>` = 0 and `<|padding|>` = 1, as Pythia's."""
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tok.decoder = decoders.ByteLevel()
    tok.post_processor = processors.ByteLevel(trim_offsets=False)
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=[EOD, PAD],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer=trainer)
    return tok


def load_tokenizer(path: str | os.PathLike) -> Tokenizer:
    """A tokenizer from a tokenizer.json file or a folder holding one."""
    path = Path(path)
    if path.is_dir():
        path = path / "tokenizer.json"
    if not path.is_file():
        raise DataFormatError(f"{path}: tokenizer file not found")
    try:
        return Tokenizer.from_file(str(path))
    except Exception as e:  # tokenizers raises a bare Exception on malformed files
        raise DataFormatError(f"{path}: not a valid tokenizer.json ({e})") from None


def eod_id(tok: Tokenizer) -> int:
    """The id of `<|endoftext|>`, which ends every document."""
    token_id = tok.token_to_id(EOD)
    if token_id is None:
        raise DataFormatError(f"tokenizer has no {EOD} token to end documents with")
    return token_id


def save_tokenizer(tok: Tokenizer, folder: str | os.PathLike,
                   max_length: int | None = None) -> None:
    """Write tokenizer.json and the small files `transformers.AutoTokenizer` needs into `folder`."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    write_file(folder / "tokenizer.json", tok.to_str())
    special = {"bos_token": EOD, "eos_token": EOD, "unk_token": EOD}
    if tok.token_to_id(PAD) is not None:
        special["pad_token"] = PAD
    config = {
        # The generic fast tokenizer uses tokenizer.json as is; named classes may rebuild it.
        "tokenizer_class": "PreTrainedTokenizerFast",
        **special,
        "add_bos_token": False,
        "add_eos_token": False,
        "clean_up_tokenization_spaces": False,
    }
    if max_length is not None:
        config["model_max_length"] = max_length
    write_file(folder / "tokenizer_config.json", json.dumps(config, indent=2) + "\n")
    write_file(folder / "special_tokens_map.json", json.dumps(special, indent=2) + "\n")
