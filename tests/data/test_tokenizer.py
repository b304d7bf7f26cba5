from pathlib import Path

import pytest
from transformers import AutoTokenizer

from lmsuite.data.tokenizer import EOD, PAD, load_tokenizer, save_tokenizer, train_tokenizer

PYTHIA = Path(__file__).resolve().parents[3] / "shared" / "pythia" / "20B_tokenizer.json"
TEXTS = ["The nurse said that she would finish the work.", "Q: What is 12 times 7? A: 84",
         "Linda vivía en Jaén y trabajaba cada día con su cesta."] * 50


def test_special_tokens_have_pythias_ids():
    tok = train_tokenizer(TEXTS, 400)
    assert tok.token_to_id(EOD) == 0 and tok.token_to_id(PAD) == 1


def test_training_twice_gives_identical_files(tmp_path):
    for name in ("a", "b"):
        save_tokenizer(train_tokenizer(iter(TEXTS), 400), tmp_path / name)
    for f in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"):
        assert (tmp_path / "a" / f).read_bytes() == (tmp_path / "b" / f).read_bytes()


def test_saved_tokenizer_loads_in_transformers_with_the_same_ids(tmp_path):
    tok = train_tokenizer(TEXTS, 400)
    save_tokenizer(tok, tmp_path, max_length=128)
    hf = AutoTokenizer.from_pretrained(tmp_path, local_files_only=True)
    for text in TEXTS[:3] + ["unseen wörds ünïcode"]:
        assert hf(text)["input_ids"] == tok.encode(text).ids
        assert hf.decode(tok.encode(text).ids) == text
    assert hf.eos_token_id == 0 and hf.pad_token_id == 1


@pytest.mark.skipif(not PYTHIA.is_file(), reason="Pythia's tokenizer is not available")
def test_pythias_own_tokenizer_file_loads():
    tok = load_tokenizer(PYTHIA)
    assert tok.get_vocab_size() == 50277
    assert tok.token_to_id(EOD) == 0 and tok.token_to_id(PAD) == 1
    assert tok.decode(tok.encode("Hello world").ids) == "Hello world"


PARITY_TEXTS = [
    "The quick brown fox jumps over the lazy dog. It's 3:45pm, isn't it?",
    "El niño comió jamón y pidió más café; ¿qué pasó después? ¡Nadie lo sabe!",
    "我们今天去公园散步，天气非常好。东京和北京都是大城市。",
    "def f(x):\n    return {'a': [1, 2, 3], \"b\": x ** 2}  # comment\n\tpass\n",
    "    leading spaces,   runs   of    spaces\n\n\n\nand newlines\r\n \n  ",
    "3.14159 1,000,000 -42 0x1F 2026-12-03 123456789012345678901234567890",
    "emoji 😀👍🏽 🇯🇵 family 👨‍👩‍👧 and ✓ ☃ ∑ → ≠",
    "<|endoftext|>two documents<|endoftext|>",
]


@pytest.mark.skipif(not PYTHIA.is_file(), reason="Pythia's tokenizer is not available")
def test_pythia_tokenizer_ids_equal_transformers(tmp_path):
    from transformers import PreTrainedTokenizerFast

    ours = load_tokenizer(PYTHIA)
    reference = PreTrainedTokenizerFast(tokenizer_file=str(PYTHIA))
    for text in PARITY_TEXTS:
        assert ours.encode(text).ids == reference(text)["input_ids"], text
        assert ours.decode(ours.encode(text).ids, skip_special_tokens=False) == reference.decode(
            reference(text)["input_ids"])
    assert ours.token_to_id(EOD) == 0 == reference.convert_tokens_to_ids(EOD)
    assert ours.encode("<|endoftext|>").ids == [0]


def test_missing_or_broken_tokenizer_is_a_clear_error(tmp_path):
    from lmsuite.errors import DataFormatError

    with pytest.raises(DataFormatError, match="tokenizer file not found"):
        load_tokenizer(tmp_path / "nope.json")
    (tmp_path / "tokenizer.json").write_text("{not json")
    with pytest.raises(DataFormatError, match="not a valid tokenizer.json"):
        load_tokenizer(tmp_path)
