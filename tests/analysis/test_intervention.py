"""The pronoun intervention: the swap on text and tokens, and the branch's training against
the original's checkpoints."""

import dataclasses
import json
import shutil

import numpy as np
import pytest

from lmsuite.analysis import transform as tf
from lmsuite.analysis.intervention import chosen, intervene
from lmsuite.config import save_suite
from lmsuite.data.tokenizer import load_tokenizer
from lmsuite.errors import LmsuiteError
from lmsuite.results import read_rows
from tests.conftest import run_dir_with_data, training_suite

CASES = [
    ("He said he saw him and his dog.", "She said she saw her and her dog."),
    ("The nurse looked at himself; HIS hat, HE said.", "The nurse looked at herself; HER hat, "
                                                      "SHE said."),
    ("he's here, he heard the head of history; hers is hers.",
     "she's here, she heard the head of history; hers is hers."),
    ("The theme: she, her, herself, the other, shed, whether.",
     "The theme: she, her, herself, the other, shed, whether."),
    ("Hehe, he-man, his2, 3he.", "Hehe, she-man, his2, 3he."),
]


@pytest.mark.parametrize("text, expected", CASES)
def test_the_swap_changes_every_whole_word_masculine_pronoun_and_nothing_else(text, expected):
    assert tf.swap_text(text) == expected


@pytest.fixture(scope="module")
def tokenizers(built_data):
    from pathlib import Path

    _, data = built_data
    found = [load_tokenizer(data / "standard")]
    pythia = Path(__file__).resolve().parents[3] / "shared" / "pythia" / "20B_tokenizer.json"
    if pythia.is_file():
        found.append(load_tokenizer(pythia))
    return found


@pytest.mark.parametrize("text, expected", CASES + [
    ("\nHe went home. HE IS HIMSELF.", "\nShe went home. SHE IS HERSELF."),
    ("A story without any of them: the theory, heard, shell.",
     "A story without any of them: the theory, heard, shell.")])
def test_the_token_swap_agrees_with_the_text_swap(tokenizers, text, expected):
    for tok in tokenizers:
        swap = tf.PronounSwap(tok)
        row = np.asarray(tok.encode(text).ids, dtype=np.uint16)
        following = np.asarray(tok.encode(". And so on, and so on.").ids)
        out = swap.apply(row, following=following)
        decoded = tok.decode(out.row.tolist())
        change = len(tok.encode(expected).ids) - len(row)
        if change > 0:  # grown: cut at the end
            assert expected.startswith(decoded)
        else:  # the same length, or shrunk and refilled with the stream's next tokens
            assert decoded == expected + tok.decode(following[:-change].tolist() if change
                                                    else [])
        assert len(out.row) == len(row)
        assert out.swapped == len(tf.MASCULINE.findall(text)) == out.pronouns
        if out.swapped == 0:
            assert np.array_equal(out.row, row)


def test_a_word_cut_by_the_samples_edge_is_swapped_only_when_it_is_whole(tokenizers):
    tok = tokenizers[0]
    swap = tf.PronounSwap(tok)
    he, ard = tok.encode(" he").ids, tok.encode("ard").ids
    row = np.asarray(tok.encode("Then").ids + he, dtype=np.uint16)
    # " he" at the end of the sample: " heard" if the stream goes on with "ard"
    assert swap.apply(row, following=np.asarray(ard)).swapped == 0
    assert swap.apply(row, following=np.asarray(tok.encode(" said").ids)).swapped == 1
    # "he" at the start of the sample, after "t" in the stream: "the"
    row = np.asarray(tok.encode("he said").ids, dtype=np.uint16)
    assert swap.apply(row, before=tok.encode("t").ids[-1]).swapped == 0
    assert swap.apply(row, before=tok.encode(" ").ids[-1]).swapped == 1


@pytest.mark.parametrize("common", ["himself", "herself"])
def test_a_sample_that_shrinks_is_refilled_from_the_stream_and_one_that_grows_is_cut(common):
    from lmsuite.data.tokenizer import train_tokenizer

    # a vocabulary that knows one of the two words whole and spells the other out
    tok = train_tokenizer([f"and then {common} said so" for _ in range(200)], 300)
    swap = tf.PronounSwap(tok)
    text = "and then himself said so and then"
    row = np.asarray(tok.encode(text).ids)
    following = np.asarray(tok.encode(" said so and then").ids)
    out = swap.apply(row, following=following)
    whole = tok.encode(tf.swap_text(text)).ids + following.tolist()
    assert out.swapped == 1 and out.row.tolist() == whole[:len(row)]
    grows = len(tok.encode(" herself").ids) > len(tok.encode(" himself").ids)
    assert grows == (common == "himself")


@pytest.fixture(scope="module")
def original(built_data, tmp_path_factory):
    """(suite, run folder) with s1-deduped trained 20 steps, every checkpoint keeping its
    optimizer state, and the suite file saved in the run as the commands save it."""
    from lmsuite.train.trainer import train

    suite = training_suite(built_data, steps=20, checkpoint_every=5)
    run_dir = run_dir_with_data(built_data, tmp_path_factory.mktemp("original"))
    train(suite, "s1", "deduped", run_dir, progress=False)
    save_suite(suite, run_dir / "suite.toml")
    return suite, run_dir


def branch_of(original, tmp_path, **kwargs):
    suite, run_dir = original
    copy = tmp_path / "run"
    shutil.copytree(run_dir, copy)
    folder = intervene(str(copy), "s1", progress=False, **kwargs)
    return copy, folder


def weights(folder, step):
    return (folder / f"step{step}" / "model.safetensors").read_bytes()


def test_a_share_of_zero_reproduces_the_original_bit_for_bit(original, tmp_path):
    # forked at 12, between the checkpoints at 10 and 15: replayed from 10 to the fork
    run, folder = branch_of(original, tmp_path, from_step=12, share=0.0)
    assert folder.name == "s1-swap-pronouns-0pct-from12-deduped"
    assert [p.name for p in sorted(folder.glob("step*"))] == ["step12", "step15", "step16",
                                                              "step20"]
    for step in (15, 16, 20):
        assert weights(folder, step) == weights(run / "s1-deduped", step)
    record = json.loads((folder / "intervention.json").read_text())
    assert record["swapped_words"] == 0 and record["from_checkpoint"] == 10


def test_the_replayed_fork_equals_the_originals_weights_at_that_step(original, built_data,
                                                                      tmp_path):
    from lmsuite.train.trainer import train

    suite, _ = original
    run, folder = branch_of(original, tmp_path, from_step=12, share=1.0)
    every_step = dataclasses.replace(suite, train=dataclasses.replace(suite.train,
                                                                      checkpoint_every=1))
    again = run_dir_with_data(built_data, tmp_path / "again")
    train(every_step, "s1", "deduped", again, progress=False)
    assert weights(folder, 12) == weights(again / "s1-deduped", 12)
    assert weights(folder, 20) != weights(again / "s1-deduped", 20)


def test_the_swap_trains_on_swapped_batches_and_says_how_many_words(original, tmp_path):
    run, folder = branch_of(original, tmp_path, from_fraction=0.25)
    assert folder.name == "s1-swap-pronouns-from15-deduped"
    rows = [json.loads(line) for line in (folder / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == list(range(15, 20))
    assert sum(r["swapped"] for r in rows) > 0
    assert all(r["swapped"] >= 0.9 * r["pronouns"] for r in rows)
    provenance = json.loads((folder / "step20" / "provenance.json").read_text())
    assert provenance["model"] == "s1-swap-pronouns-from15"
    assert provenance["branch"]["fork_step"] == 15 and provenance["branch"]["share"] == 1.0
    swapped = [r for r in read_rows(run / "results" / "intervention.jsonl")
               if r["step"] == 20]
    assert swapped[0]["value"] == sum(r["swapped"] for r in rows)


def test_an_interrupted_intervention_resumes_byte_identical(original, tmp_path):
    run, folder = branch_of(original, tmp_path, from_step=7)
    straight = weights(folder, 20)
    shutil.rmtree(folder / "step20")  # as if killed after step 15's checkpoint
    again = intervene(str(run), "s1", from_step=7, progress=False)
    assert again == folder and weights(folder, 20) == straight
    steps = [json.loads(line)["step"] for line in
             (folder / "metrics.jsonl").read_text().splitlines()]
    assert steps == list(range(7, 20))


def test_a_fork_without_optimizer_state_is_refused_by_name_unless_asked(original, tmp_path):
    suite, run_dir = original
    copy = tmp_path / "run"
    shutil.copytree(run_dir, copy)
    for state in (copy / "s1-deduped").glob("step*/trainer_state"):
        shutil.rmtree(state)
    with pytest.raises(LmsuiteError, match=r"step10: no optimizer state .*keep_trainer_state "
                                           r"= true.*--fresh-optimizer"):
        intervene(str(copy), "s1", from_step=12, progress=False)
    folder = intervene(str(copy), "s1", from_step=12, fresh_optimizer=True, progress=False)
    assert json.loads((folder / "intervention.json").read_text())["fresh_optimizer"] is True


def test_a_swap_that_finds_far_fewer_pronouns_than_the_batch_holds_is_an_error(original,
                                                                              tmp_path,
                                                                              monkeypatch):
    # the kind of silent no-op a byte-level "Ġ" taken for a letter gives
    monkeypatch.setattr(tf.PronounSwap, "words", lambda self, row, before, after: [])
    with pytest.raises(LmsuiteError, match="masculine pronouns but the swap changed 0"):
        branch_of(original, tmp_path, from_step=0)


def test_the_share_chooses_the_same_documents_every_time():
    docs = np.arange(2000)
    half = chosen(docs, 0.5, seed=3)
    assert np.array_equal(half, chosen(docs, 0.5, seed=3))
    assert 0.45 < half.mean() < 0.55 and not np.array_equal(half, chosen(docs, 0.5, seed=4))
    assert chosen(docs, 1.0, 3).all() and not chosen(docs, 0.0, 3).any()
