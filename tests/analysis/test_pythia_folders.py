"""The studies on a real Pythia model folder and Pythia's pre-shuffled data: a randomly
initialised model of pythia-70m's shape saved by transformers as its revisions step<N>/, and a
small data file in Pythia's layout (items of 2,049 tokens, cut into shards), with Pythia's
sequence length and a small batch size given on the command line."""

import json
import re
import shutil

import numpy as np
import torch
from transformers import GenerationConfig, GPTNeoXConfig, GPTNeoXForCausalLM

from lmsuite.analysis.frequency import OPERANDS
from lmsuite.cli import main
from lmsuite.data.indexed import IndexedDatasetWriter
from lmsuite.results import read_rows
from tests.conftest import pythia_artifact

SEQ, BATCH, K = 2048, 4, 32


def pythia_70m(folder, tokenizer=None, layers=6, width=512):
    """pythia-70m's shape (6 layers, d 512, 8 heads, rotary 0.25, vocab 50,304), random; or
    narrower and shallower where only Pythia's vocabulary and layout matter."""
    torch.manual_seed(0)
    config = GPTNeoXConfig(vocab_size=50304, hidden_size=width, num_hidden_layers=layers,
                           num_attention_heads=8, intermediate_size=4 * width, rotary_pct=0.25,
                           max_position_embeddings=2048, use_parallel_residual=True,
                           bos_token_id=0, eos_token_id=0, tie_word_embeddings=False)
    model = GPTNeoXForCausalLM(config).eval()
    model.save_pretrained(folder / "step0")
    shutil.copytree(folder / "step0", folder / "step1")
    if tokenizer is not None:
        for step in ("step0", "step1"):
            tokenizer.save_pretrained(folder / step)
    return model


def write_shards(folder, items, shard_bytes=5000):
    """Pythia's layout: document.idx and document-0000i-of-0000N.bin."""
    folder.mkdir(parents=True, exist_ok=True)
    with IndexedDatasetWriter(folder / "document", np.uint16) as w:
        for item in items:
            w.add_item(np.asarray(item, np.uint16))
    data = (folder / "document.bin").read_bytes()
    (folder / "document.bin").unlink()
    pieces = [data[i:i + shard_bytes] for i in range(0, len(data), shard_bytes)]
    for i, piece in enumerate(pieces):
        (folder / f"document-{i:05d}-of-{len(pieces) - 1:05d}.bin").write_bytes(piece)


def test_memorization_of_a_pythia_model_on_its_preshuffled_shards(tmp_path):
    model = pythia_70m(tmp_path / "pythia-70m")
    rng = np.random.default_rng(0)
    items = rng.integers(2, 50000, size=(2 * BATCH, SEQ + 1))
    # Every other sample starts with the model's own greedy continuation: memorized by
    # construction, as transformers' generate says.
    chosen = [0, 3, 5, 6]
    prompts = torch.from_numpy(items[chosen, :K].astype(np.int64))
    with torch.no_grad():
        out = model.generate(prompts, attention_mask=torch.ones_like(prompts),
                             generation_config=GenerationConfig(
                                 max_new_tokens=K, do_sample=False, pad_token_id=1,
                                 eos_token_id=None, bos_token_id=None))
    items[chosen, K:2 * K] = out[:, K:].numpy()
    write_shards(tmp_path / "data", items)
    main(["memorization", str(tmp_path / "pythia-70m"), "--data", str(tmp_path / "data"),
          "--batch-size", str(BATCH), "--seq-len", str(SEQ), "--steps", "all",
          "--no-progress"])
    rows = list(read_rows(tmp_path / "results" / "memorization.jsonl"))
    count = {r["step"]: r["value"] for r in rows if r["metric"] == "count"}
    # Checkpoint step<N> has trained on batches 0 .. N-1: step 0 on none, step 1 on samples
    # 0-3, of which 0 and 3 are memorized.
    assert count == {0: 0, 1: 2}
    assert {r["model"] for r in rows} == {"pythia-70m"}
    flags = np.load(next((tmp_path / "results").rglob("step1.npz")))
    assert flags["index"][flags["memorized"]].tolist() == [0, 3]


def test_term_frequency_counts_terms_in_pythias_data_with_the_models_tokenizer(
        tmp_path, built_data):
    from transformers import PreTrainedTokenizerFast

    tokenizer = PreTrainedTokenizerFast(
        tokenizer_file=str(pythia_artifact("20B_tokenizer.json")))
    # the counting is what is tested here: Pythia's vocabulary and layout, a smaller trunk
    pythia_70m(tmp_path / "pythia-70m", tokenizer, layers=1, width=64)
    rng = np.random.default_rng(1)
    texts, items = [], []
    for _ in range(2 * BATCH):
        sentences = [f"Q: What is {a} times {b}? A: {a * b}." for a, b in
                     rng.integers(0, 30, size=(40, 2))]
        text = " " + " ".join(sentences) + " and the rest"
        ids = tokenizer(text)["input_ids"]
        filler = tokenizer(" the")["input_ids"] * (SEQ + 1)
        items.append((ids + filler)[:SEQ + 1])
        texts.append(text)
    assert all(len(tokenizer(t)["input_ids"]) < SEQ for t in texts)
    write_shards(tmp_path / "data", items)
    _, data = built_data
    main(["frequency", str(tmp_path / "pythia-70m"), "--data", str(tmp_path / "data"),
          "--batch-size", str(BATCH), "--seq-len", str(SEQ), "--steps", "1",
          "--items", str(data / "standard"), "--no-progress"])
    counts = json.loads(next((tmp_path / "results").rglob("*counts*.json")).read_text())
    # The reference: whole-number occurrences in the texts, seen by each step.
    for term in OPERANDS[:40]:
        pattern = re.compile(rf"(?<![\w]){term}(?![\w])")
        seen = [len(pattern.findall(t)) for t in texts]
        expected = [0, sum(seen[:BATCH])]  # step<N> has trained on batches 0 .. N-1
        assert counts["operands"][term] == expected, term
    rows = list(read_rows(tmp_path / "results" / "frequency.jsonl"))
    assert {r["metric"] for r in rows} >= {"delta_arithmetic_0shot"}
    assert {r["step"] for r in rows} == {1}
