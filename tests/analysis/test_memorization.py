"""The memorization study: the one-pass scan against transformers' generate, the counts
against a brute-force count, the files and rows on a micro run."""

import json

import numpy as np
import pytest
import torch
from transformers import GPTNeoXForCausalLM

from lmsuite import load_model
from lmsuite.analysis import memorization as mem
from lmsuite.analysis.index import TokenIndex
from lmsuite.data.order import open_train
from lmsuite.results import read_rows

K = 4  # the micro suite's samples hold 33 tokens; Pythia's k = 32 needs 64


@pytest.fixture(scope="module")
def checkpoint(built_data, tmp_path_factory):
    """s1 trained long enough to reproduce some samples' targets, and some not."""
    from lmsuite.train.trainer import train
    from tests.conftest import run_dir_with_data, training_suite

    suite = training_suite(built_data, steps=300, checkpoint_every=300)
    run_dir = run_dir_with_data(built_data, tmp_path_factory.mktemp("memorizing"))
    train(suite, "s1", "standard", run_dir, progress=False)
    return run_dir, run_dir / "s1" / "step300"


def generated(folder, samples, k):
    """transformers' greedy generate, batched: the k tokens after each prompt of k. EOD is a
    token like any other here (no end-of-sequence stop, no suppression of it before k tokens):
    a training sample's target may hold one."""
    from transformers import GenerationConfig

    hf = GPTNeoXForCausalLM.from_pretrained(folder, local_files_only=True).eval()
    prompts = torch.from_numpy(samples[:, :k].astype(np.int64))
    greedy = GenerationConfig(max_new_tokens=k, do_sample=False, pad_token_id=1,
                              eos_token_id=None, bos_token_id=None)
    with torch.no_grad():
        out = hf.generate(prompts, attention_mask=torch.ones_like(prompts),
                          generation_config=greedy)
    return out[:, k:].numpy()


def test_the_one_pass_scan_equals_greedy_generation(checkpoint):
    run_dir, folder = checkpoint
    samples = np.asarray(open_train(run_dir / "data" / "standard").rows(0, 400))
    memorized, prefix = mem.scan(load_model(folder), samples, K, batch_size=64)
    gen = generated(folder, samples, K)
    hits = gen == samples[:, K:2 * K]
    assert 0 < memorized.sum() < len(samples)  # a test that can tell the two apart
    assert np.array_equal(memorized, hits.all(axis=1))
    assert np.array_equal(prefix, np.cumprod(hits, axis=1).sum(axis=1))


def test_pythias_score_equals_transformers_generate(checkpoint):
    run_dir, folder = checkpoint
    samples = np.asarray(open_train(run_dir / "data" / "standard").rows(0, 300))
    score = mem.pythia_scores(load_model(folder), samples, K)
    expected = (generated(folder, samples, K) == samples[:, K:2 * K]).mean(axis=1)
    assert np.array_equal(score, expected)
    assert len(set(score.tolist())) > 2


def test_window_counts_equal_a_brute_force_count(built_data, tmp_path):
    _, data = built_data
    index = TokenIndex.open(data / "standard", tmp_path / "train.suffix.idx", progress=False)
    length = index.sample_len
    items = index.tokens[: len(index.data) * length].reshape(-1, length)
    counts = mem.window_counts(index, 300, K)
    # brute force: every window of 2k tokens inside an item, as bytes, counted
    windows = {}
    for row in items:
        for start in range(length - 2 * K + 1):
            key = row[start:start + 2 * K].tobytes()
            windows[key] = windows.get(key, 0) + 1
    assert counts.tolist() == [windows[row[:2 * K].tobytes()] for row in items[:300]]
    assert counts.max() > 1


def test_the_poisson_view_of_known_counts():
    per_window = np.array([0, 1, 2, 1, 0, 3, 1, 1, 2, 0] * 4)
    flags = np.zeros(len(per_window) * 10, bool)
    for w, c in enumerate(per_window):
        flags[w * 10:w * 10 + c] = True
    view = mem.poisson_view(flags, 10)
    assert view["lambda"] == pytest.approx(per_window.mean())
    assert view["dispersion"] == pytest.approx(per_window.var(ddof=1) / per_window.mean())
    assert view["per_window"].tolist() == per_window.tolist()
    assert 0 <= view["chi2_p"] <= 1 and len(view["qq_poisson"]) == 40
    assert mem.poisson_window(100_000) == 512 and mem.poisson_window(900) == 30


def test_prediction_precision_and_recall_on_the_samples_both_saw():
    truth = np.array([1, 1, 0, 0, 1, 0, 1], bool)
    predictor = np.array([1, 0, 1, 0, 1], bool)
    precision, recall, n = mem.predict(predictor, truth)
    assert (precision, n) == (2 / 3, 5) and recall == pytest.approx(2 / 3)


def test_the_study_writes_flags_rows_and_a_rerun_adds_nothing(small_run, tmp_path):
    import shutil

    run_dir = tmp_path / "run"  # a copy: the shared fixture's run stays as the other tests expect
    shutil.copytree(small_run[1], run_dir)
    results = tmp_path / "memorization.jsonl"
    mem.memorization(str(run_dir), steps="0,4,20", k=K, heldout=50, results=str(results),
                     progress=False)
    rows = list(read_rows(results))
    flags = np.load(run_dir / "results" / "memorization" / "s1" / "step20.npz")
    assert len(flags["memorized"]) == 20 * 8 and flags["index"].tolist() == list(range(160))
    scanned = {r["step"]: r for r in rows if r["task"] == "memorization" and
               r["metric"] == "count"}
    assert sorted(scanned) == [0, 4, 20] and scanned[4]["n"] == 32
    assert scanned[20]["value"] == int(flags["memorized"].sum())
    bins = [r for r in rows if r["step"] == 20 and r["metric"].startswith("rate_dups")]
    assert sum(r["n"] for r in bins) == 160
    held = next(r for r in rows if r["step"] == 20 and r["metric"] == "heldout_rate")
    assert held["n"] == 50
    assert {r["metric"] for r in rows if r["task"] == "memorization_poisson"} == {
        "lambda", "dispersion", "chi2_p", "window", "position_rho", "position_p"}
    before = results.read_text()
    mem.memorization(str(run_dir), steps="0,4,20", k=K, heldout=50, results=str(results),
                     progress=False)
    assert results.read_text() == before
    assert json.loads(before.splitlines()[0])["suite"] == "small"
