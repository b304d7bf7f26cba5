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


def test_missing_or_broken_tokenizer_is_a_clear_error(tmp_path):
    from lmsuite.errors import DataFormatError

    with pytest.raises(DataFormatError, match="tokenizer file not found"):
        load_tokenizer(tmp_path / "nope.json")
    (tmp_path / "tokenizer.json").write_text("{not json")
    with pytest.raises(DataFormatError, match="not a valid tokenizer.json"):
        load_tokenizer(tmp_path)
