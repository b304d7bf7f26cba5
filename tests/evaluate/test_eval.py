import json
import math
import shutil

import pytest
import torch
from transformers import AutoTokenizer, GPTNeoXConfig, GPTNeoXForCausalLM

from lmsuite import load_model
from lmsuite.data.tokenizer import load_tokenizer
from lmsuite.errors import LmsuiteError
from lmsuite.evaluate.runner import evaluate
from lmsuite.evaluate.scoring import greedy_generate
from lmsuite.evaluate.tasks import Context, lambada, perplexity, pronouns, stereotypes
from lmsuite.results import read_rows


def context(run_dir, step=20, model="s1"):
    folder = run_dir / model / f"step{step}"
    model = load_model(folder)
    return Context(model, load_tokenizer(folder), model.config.max_positions,
                   run_dir / "data" / "standard"), folder


def hf_reference(folder):
    """The same checkpoint in transformers, with its tokenizer: the independent reference."""
    return (GPTNeoXForCausalLM.from_pretrained(folder, local_files_only=True).eval(),
            AutoTokenizer.from_pretrained(folder, local_files_only=True))


def hf_logprob(hf, tok, context_text, continuation, max_len=32):
    """log p(continuation | context) and greedy-ness, computed with transformers by hand; the
    input is cut from the left to the model's context, as lm-evaluation-harness does."""
    ctx = tok(context_text)["input_ids"]
    whole = tok(context_text + continuation)["input_ids"]
    cont = whole[len(ctx):]
    inputs = whole[:-1][-max_len:]
    with torch.no_grad():
        logits = hf(input_ids=torch.tensor([inputs])).logits[0, -len(cont):]
    target = torch.tensor(cont)
    logp = torch.log_softmax(logits, -1).gather(1, target[:, None])
    return float(logp.sum()), bool((logits.argmax(-1) == target).all())


def test_lambada_scores_match_a_hand_computation_with_transformers(small_run):
    _, run_dir = small_run
    ctx, folder = context(run_dir)
    hf, tok = hf_reference(folder)
    items = ctx.eval_items("lambada")
    scored = [hf_logprob(hf, tok, t["text"].rsplit(" ", 1)[0], " " + t["text"].rsplit(" ", 1)[1])
              for t in items]
    rows = dict((m, v) for m, v, _ in lambada(ctx)[0])
    assert rows["acc"] == pytest.approx(sum(g for _, g in scored) / len(items), abs=1e-9)
    assert rows["ppl"] == pytest.approx(math.exp(-sum(lp for lp, _ in scored) / len(items)),
                                        rel=1e-5)


def test_perplexity_matches_a_hand_computation(small_run):
    from lmsuite.data.indexed import IndexedDataset

    _, run_dir = small_run
    ctx, folder = context(run_dir)
    hf, _ = hf_reference(folder)
    val = IndexedDataset(run_dir / "data" / "standard" / "val")
    nll, tokens, size = 0.0, 0, 0
    for i in range(len(val)):
        doc = val[i][:-1].tolist()
        full = torch.tensor([[0, *doc]])
        for start in range(0, len(doc), 32):  # windows of the model's context (seq_len 32)
            inputs = full[:, start:start + 32]
            with torch.no_grad():
                logp = torch.log_softmax(hf(input_ids=inputs).logits[0], -1)
            target = full[0, start + 1:start + 1 + inputs.shape[1]]
            nll -= float(logp[: len(target)].gather(1, target[:, None]).sum())
            tokens += len(target)
        size += len(ctx.tokenizer.decode(doc).encode())
    rows = dict((m, v) for m, v, _ in perplexity(ctx)[0])
    assert rows["loss"] == pytest.approx(nll / tokens, rel=1e-5)
    assert rows["token_perplexity"] == pytest.approx(math.exp(nll / tokens), rel=1e-5)
    assert rows["bits_per_byte"] == pytest.approx(nll / math.log(2) / size, rel=1e-5)


@pytest.mark.parametrize("task", [lambada, perplexity])
def test_scores_do_not_depend_on_how_requests_and_logits_are_batched(small_run, monkeypatch,
                                                                      task):
    # Logits are computed at the scored positions only, gathered across a batch's rows and cut
    # into chunks: tiny batches and chunks, crossing rows at every boundary, must agree.
    from lmsuite.evaluate import scoring

    ctx, _ = context(small_run[1])
    whole = dict((m, v) for m, v, _ in task(ctx)[0])
    monkeypatch.setattr(scoring, "BATCH_TOKENS", 100)
    monkeypatch.setattr(scoring, "LOGIT_ROWS", 3)
    cut = dict((m, v) for m, v, _ in task(ctx)[0])
    assert cut.keys() == whole.keys()
    for metric, value in whole.items():
        assert cut[metric] == pytest.approx(value, rel=1e-5)


def test_bias_probes_are_computed_from_pronoun_likelihoods(small_run):
    _, run_dir = small_run
    ctx, folder = context(run_dir)
    hf, tok = hf_reference(folder)
    items = ctx.eval_items("pronouns")
    summary, per_item = pronouns(ctx)
    rows = {r[0]: r[1] for r in summary}
    stderr = {r[0]: r[3] for r in summary}
    pro = [hf_logprob(hf, tok, it["context"], " he")[0] > hf_logprob(hf, tok, it["context"],
                                                                       " she")[0]
           for it in items if it["type"] == "pro"]
    expected = sum(c == (it["gold"] == "he") for c, it in zip(
        pro, [it for it in items if it["type"] == "pro"], strict=True)) / len(pro)
    assert rows["acc_pro"] == pytest.approx(expected)
    assert stderr["acc_pro"] == pytest.approx(math.sqrt(expected * (1 - expected) / len(pro)))
    assert rows["gap"] == pytest.approx(rows["acc_pro"] - rows["acc_anti"])
    p_he = [p[2] for p in per_item if p[1] == "p_he" and p[0]["stereotype"] == "he"]
    assert stderr["p_he_male_stereotyped"] == pytest.approx(
        float(torch.tensor(p_he).std()) / math.sqrt(len(p_he)), rel=1e-5)
    probe = next(p for p in per_item if p[1] == "p_he")
    text = sorted({it["probe"] for it in items})[probe[0]["probe"]]  # rows number the probes
    he = hf_logprob(hf, tok, text, " he")[0]
    she = hf_logprob(hf, tok, text, " she")[0]
    assert probe[2] == pytest.approx(math.exp(he) / (math.exp(he) + math.exp(she)), rel=1e-4)


def test_pct_stereotype_counts_pairs_whose_stereotypical_sentence_is_likelier(small_run):
    _, run_dir = small_run
    ctx, folder = context(run_dir)
    hf, tok = hf_reference(folder)

    def sentence_logprob(text):  # the whole sentence after an EOD token, as lm-eval scores it
        ids = [0, *tok(text)["input_ids"]]
        with torch.no_grad():
            logp = torch.log_softmax(hf(input_ids=torch.tensor([ids])).logits[0, :-1], -1)
        return float(logp.gather(1, torch.tensor(ids[1:])[:, None]).sum())

    pairs = ctx.eval_items("stereotypes")
    more = [sentence_logprob(p["sent_more"]) > sentence_logprob(p["sent_less"]) for p in pairs]
    rows = {r[0]: r[1] for r in stereotypes(ctx)[0]}
    assert rows["pct_stereotype"] == pytest.approx(sum(more) / len(pairs))
    assert len(pairs) >= 278  # a standard error of at most 0.03 at 0.5


def test_batched_greedy_generation_equals_transformers_generate(small_run):
    _, run_dir = small_run
    _, folder = context(run_dir)
    model = load_model(folder)
    hf, _ = hf_reference(folder)
    tok = load_tokenizer(folder)
    prompts = [tok.encode(p).ids for p in
               ["Q: What is 12 times 7? A:", "The nurse said that",
                "Mary was a mechanic. The mechanic looked at", "In Ashford there lived a"]]
    ours = greedy_generate(model, prompts, 7, 32)
    for prompt, got in zip(prompts, ours, strict=True):
        ids = torch.tensor([prompt])
        expected = hf.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=7,
                               do_sample=False, pad_token_id=1)[0, len(prompt):].tolist()
        assert got == expected


def test_arithmetic_and_facts_are_correct_exactly_when_greedy_generation_gives_the_answer(
        built_data, tmp_path_factory):
    # One teacher-forced pass decides what generating would: the answer's tokens, then a
    # token that ends the number or word. transformers' generate is the reference.
    from lmsuite.evaluate.scoring import encode_pair
    from lmsuite.evaluate.tasks import reproduces
    from lmsuite.train.trainer import train
    from tests.conftest import run_dir_with_data, training_suite

    suite = training_suite(built_data, steps=300, checkpoint_every=300)
    run_dir = run_dir_with_data(built_data, tmp_path_factory.mktemp("answers"))
    train(suite, "s2", "standard", run_dir, progress=False)
    ctx, folder = context(run_dir, 300, "s2")
    hf, _ = hf_reference(folder)
    tok = ctx.tokenizer
    items = ctx.eval_items("qa") + [
        {"question": f"What is {a['a']} times {a['b']}?", "answer": str(a["answer"])}
        for a in ctx.eval_items("arithmetic")[:150]]
    prompts = [f"Q: {it['question']} A:" for it in items]
    answers = [it["answer"] for it in items]
    got = reproduces(ctx, prompts, answers, extra="-")
    expected = []
    for prompt, answer in zip(prompts, answers, strict=True):
        head, target = encode_pair(tok, prompt, " " + answer)
        ids = torch.tensor([head])
        out = hf.generate(ids, attention_mask=torch.ones_like(ids), do_sample=False,
                          max_new_tokens=len(target) + 1, pad_token_id=1)[0, len(head):]
        after = tok.decode([int(out[-1])])[:1]
        expected.append(out[:-1].tolist() == target and not (after.isalnum() or after == "-"))
    assert got == expected
    assert 0 < sum(got) < len(got)


def test_a_shot_count_whose_prompts_do_not_fit_is_left_out_and_said(small_run, capsys):
    from lmsuite.evaluate.tasks import arithmetic

    _, run_dir = small_run
    ctx, _ = context(run_dir)
    rows, items = arithmetic(ctx)  # a context of 32 tokens: only 0 shots fit
    assert [m for m, _, _ in rows] == ["acc_0shot"]
    assert {i["shots"] for i, _, _ in items} == {0}
    assert "arithmetic leaves out 2, 4, 8, 16-shot prompts" in capsys.readouterr().err


def test_eval_writes_rows_and_a_rerun_adds_none(small_run, tmp_path):
    _, run_dir = small_run
    results = tmp_path / "eval.jsonl"
    evaluate(run_dir, tasks=["lambada", "pronouns"], steps="0,20", results=results,
             progress=False)
    rows = list(read_rows(results))
    assert {(r["model"], r["dataset"], r["step"], r["task"]) for r in rows} == {
        ("s1", "standard", s, t) for s in (0, 20) for t in ("lambada", "pronouns")}
    assert set(rows[0]) == {"suite", "model", "dataset", "step", "task", "metric", "value", "n"}
    assert rows[0]["suite"] == "small"
    evaluate(run_dir, tasks=["lambada", "pronouns"], steps="0,20", results=results,
             progress=False)
    assert list(read_rows(results)) == rows
    # An interrupted run continues: asking for more adds only what is missing.
    evaluate(run_dir, tasks=["lambada", "pronouns", "facts"], steps="0,20", results=results,
             progress=False)
    again = list(read_rows(results))
    assert again[: len(rows)] == rows
    assert {r["task"] for r in again[len(rows):]} == {"facts"}
    items = list(read_rows(tmp_path / "eval_items.jsonl"))
    assert {i["task"] for i in items} == {"pronouns", "facts"}
    assert all("entity" in i["item"] for i in items if i["task"] == "facts")


def test_default_results_file_and_step_selection(small_run):
    _, run_dir = small_run
    path = evaluate(run_dir / "s1", tasks=["stereotypes"], steps="log", progress=False)
    assert path == run_dir / "results" / "eval.jsonl"
    steps = {r["step"] for r in read_rows(path) if r["task"] == "stereotypes"}
    assert steps == {0, 1, 2, 4, 8, 16, 20}


def test_foreign_transformers_folder_evaluates_with_the_runs_data(small_run, tmp_path):
    _, run_dir = small_run
    torch.manual_seed(0)
    cfg = GPTNeoXConfig(vocab_size=512, hidden_size=32, num_hidden_layers=1,
                        num_attention_heads=2, intermediate_size=128,
                        max_position_embeddings=64)
    folder = tmp_path / "foreign-model"
    GPTNeoXForCausalLM(cfg).save_pretrained(folder)
    for name in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"):
        shutil.copy(run_dir / "data" / "standard" / name, folder / name)
    path = evaluate(folder, tasks=["lambada", "perplexity"], data=run_dir / "data" / "standard",
                    progress=False)
    rows = list(read_rows(path))
    assert path == tmp_path / "results" / "eval.jsonl"
    assert {(r["model"], r["task"]) for r in rows} == {("foreign-model", "lambada"),
                                                      ("foreign-model", "perplexity")}
    assert all(r["suite"] is None and r["step"] is None for r in rows)


def test_a_folder_of_revisions_in_every_weight_layout_evaluates(small_run, tmp_path):
    # As Pythia's revisions come: step<N>/ folders holding one safetensors file, safetensors
    # shards with their index (the larger models), or pytorch_model.bin (older revisions).
    _, run_dir = small_run
    folder = tmp_path / "pythia-like"
    for step, layout in ((0, "single"), (10, "shards"), (20, "bin")):
        model = GPTNeoXForCausalLM.from_pretrained(run_dir / "s1" / f"step{step}")
        out = folder / f"step{step}"
        model.save_pretrained(out, max_shard_size="20KB" if layout == "shards" else "5GB")
        if layout == "bin":
            torch.save(model.state_dict(), out / "pytorch_model.bin")
            (out / "model.safetensors").unlink()
        shutil.copy(run_dir / "data" / "standard" / "tokenizer.json", out / "tokenizer.json")
    assert (folder / "step10" / "model.safetensors.index.json").is_file()
    path = evaluate(folder, tasks=["perplexity"], data=run_dir / "data" / "standard",
                    progress=False)
    ours = evaluate(run_dir / "s1", tasks=["perplexity"], steps="0,10,20",
                    results=tmp_path / "ours.jsonl", progress=False)
    loss = {r["step"]: r["value"] for r in read_rows(path) if r["metric"] == "loss"}
    expected = {r["step"]: r["value"] for r in read_rows(ours) if r["metric"] == "loss"}
    assert loss.keys() == {0, 10, 20}
    assert loss == pytest.approx(expected, rel=1e-5)


def test_non_gpt_neox_folder_and_bad_arguments_are_clear_errors(small_run, tmp_path):
    _, run_dir = small_run
    (tmp_path / "llama").mkdir()
    (tmp_path / "llama" / "config.json").write_text(json.dumps({"model_type": "llama"}))
    with pytest.raises(LmsuiteError, match="model_type is 'llama'"):
        evaluate(tmp_path / "llama", tasks=["lambada"], data=run_dir / "data" / "standard",
                 progress=False)
    with pytest.raises(LmsuiteError, match="unknown task 'lambda'"):
        evaluate(run_dir, tasks=["lambda"], progress=False)
    for steps in ("last", "", ","):
        with pytest.raises(LmsuiteError, match="--steps must be"):
            evaluate(run_dir, tasks=["lambada"], steps=steps, progress=False)
    # s1 checkpoints at 0, 1, 2, 4, 8, 10, 16, 20: a step off that schedule is not skipped.
    with pytest.raises(LmsuiteError, match=r"no checkpoint at step 7; checkpoints are at steps "
                                           r"0, 1, 2, 4, 8, 10, 16, 20$"):
        evaluate(run_dir, tasks=["lambada"], steps="0,7", progress=False)
    with pytest.raises(LmsuiteError, match="no checkpoint at steps 7, 30;"):
        evaluate(run_dir / "s1", tasks=["lambada"], steps="7,30", progress=False)


def test_data_not_from_the_built_in_corpus_runs_the_tasks_that_apply(small_run, tmp_path,
                                                                    capsys):
    import shutil

    _, run_dir = small_run
    plain = tmp_path / "plain"  # a dataset folder without the built-in corpus's items
    shutil.copytree(run_dir / "data" / "standard", plain,
                    ignore=shutil.ignore_patterns("corpus.meta"))
    results = tmp_path / "eval.jsonl"
    evaluate(run_dir / "s1", steps="20", data=plain, results=results, progress=False)
    assert {r["task"] for r in read_rows(results)} == {"perplexity"}
    err = capsys.readouterr().err
    assert "leaving out lambada, arithmetic, facts, pronouns, stereotypes" in err
    with pytest.raises(LmsuiteError, match=r"^facts: cannot run, .*plain was not built from the "
                                           r"built-in corpus"):
        evaluate(run_dir / "s1", tasks=["perplexity", "facts"], steps="20", data=plain,
                 results=tmp_path / "other.jsonl", progress=False)
    assert not (tmp_path / "other.jsonl").exists()  # refused before anything ran
    # A model folder away from its run, without --data: no default task can run.
    shutil.copytree(run_dir / "s1" / "step20", tmp_path / "lone" / "s1" / "step20")
    with pytest.raises(LmsuiteError, match=r"^no task can run: no dataset folder \(pass --data\)"):
        evaluate(tmp_path / "lone" / "s1", results=tmp_path / "lone.jsonl", progress=False)
    assert not (tmp_path / "lone.jsonl").exists()


def test_harness_lambada_equals_lmsuite_lambada(small_run, tmp_path):
    pytest.importorskip("lm_eval")
    _, run_dir = small_run
    results = tmp_path / "eval.jsonl"
    evaluate(run_dir / "s1", tasks=["lambada"], steps="20", results=results,
             harness=["lmsuite_lambada"], progress=False)
    rows = {(r["task"], r["metric"]): r for r in read_rows(results)}
    ours, theirs = rows[("lambada", "acc")], rows[("harness:lmsuite_lambada", "acc")]
    assert theirs["n"] == ours["n"] == 40
    assert theirs["value"] == pytest.approx(ours["value"], abs=1e-4)
    # the harness's "perplexity" is lmsuite's "ppl": one name for one thing
    assert rows[("harness:lmsuite_lambada", "ppl")]["value"] == pytest.approx(
        rows[("lambada", "ppl")]["value"], rel=1e-4)
    # the harness's results also hold its sample count (`sample_len`), which is no metric
    assert {m for t, m in rows if t == "harness:lmsuite_lambada"} == {"acc", "ppl"}
    assert rows[("harness:lmsuite_lambada", "acc")]["stderr"] >= 0  # as the harness gives it


def test_a_harness_task_that_cannot_run_is_refused_before_anything_runs(small_run, tmp_path):
    pytest.importorskip("lm_eval")
    _, run_dir = small_run
    plain = tmp_path / "plain"  # a dataset folder without the built-in corpus's items
    shutil.copytree(run_dir / "data" / "standard", plain,
                    ignore=shutil.ignore_patterns("corpus.meta"))
    results = tmp_path / "eval.jsonl"
    with pytest.raises(LmsuiteError, match="harness task lmsuite_arithmetic needs a dataset "
                                           "folder built from the built-in corpus"):
        evaluate(run_dir / "s1", tasks=["perplexity"], steps="20", data=plain, results=results,
                 harness=["lmsuite_arithmetic"], progress=False)
    with pytest.raises(LmsuiteError, match="harness task 'lambada_opnai' is not a task of "
                                           "lm-evaluation-harness"):
        evaluate(run_dir / "s1", tasks=["perplexity"], steps="20", results=results,
                 harness=["lmsuite_lambada", "lambada_opnai"], progress=False)
    assert not results.exists()


def test_a_lambada_file_scores_as_the_built_in_items(small_run, tmp_path):
    _, run_dir = small_run
    items = (run_dir / "data" / "standard" / "corpus.meta" / "eval" / "lambada.jsonl")
    lines = [json.dumps({"text": json.loads(line)["text"]})
             for line in items.read_text().splitlines()]
    (tmp_path / "passages.jsonl").write_text("\n".join(lines) + "\n\n")  # a blank line is skipped
    results = tmp_path / "eval.jsonl"
    evaluate(run_dir / "s1", tasks=["lambada"], steps="20", results=results, progress=False)
    evaluate(run_dir / "s1", tasks=["lambada"], steps="20", results=results,
             lambada_file=tmp_path / "passages.jsonl", progress=False)
    rows = {(r["task"], r["metric"]): r for r in read_rows(results)}
    for metric in ("acc", "ppl"):
        built_in, from_file = rows[("lambada", metric)], rows[("lambada:passages", metric)]
        assert from_file["value"] == built_in["value"] and from_file["n"] == built_in["n"]


@pytest.mark.parametrize("text, message", [
    (None, r"bad.jsonl: LAMBADA file not found"),
    ('{"text": "the cat sat"}\n{"text": "on the\n', r"bad.jsonl:2: not valid JSON"),
    ('{"text": "the cat sat"}\n{"txt": "on the mat"}\n', r"bad.jsonl:2: no text field 'text'"),
    ('{"text": "the cat sat"}\n\n{"text": "mat"}\n', r"bad.jsonl: passage 2 needs a context and"),
    ("\n", r"bad.jsonl: no passages"),
])
def test_a_bad_lambada_file_is_refused_before_anything_runs(small_run, tmp_path, text, message):
    _, run_dir = small_run
    if text is not None:
        (tmp_path / "bad.jsonl").write_text(text)
    with pytest.raises(LmsuiteError, match=message):
        evaluate(run_dir / "s1", tasks=["lambada", "perplexity"], steps="20",
                 results=tmp_path / "eval.jsonl", lambada_file=tmp_path / "bad.jsonl",
                 progress=False)
    assert not (tmp_path / "eval.jsonl").exists()


@pytest.mark.parametrize("record, message", [
    ('{"model": "s1", "dataset"', "provenance.json: not valid JSON"),
    ('["s1"]', "provenance.json: expected a JSON object"),
    ('{"step": 3}', 'provenance.json: expected a JSON object naming its "model"'),
])
def test_a_damaged_provenance_record_is_a_clear_error(small_run, tmp_path, record, message):
    _, run_dir = small_run
    model = tmp_path / "s1"
    shutil.copytree(run_dir / "s1" / "step20", model / "step20")
    (model / "step20" / "provenance.json").write_text(record)
    with pytest.raises(LmsuiteError, match=message):
        evaluate(model, tasks=["perplexity"], data=run_dir / "data" / "standard",
                 progress=False)
