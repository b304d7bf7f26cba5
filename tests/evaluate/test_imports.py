"""lm-evaluation-harness results from elsewhere as lmsuite's rows: Pythia's published files (the
old format), the harness's current format, and Pythia's term-frequency CSVs."""

import json
import subprocess
import sys

import pytest

from lmsuite.evaluate.imports import (
    import_files,
    metric_name,
    pythia_files,
    pythia_model,
    rows_of_file,
    rows_of_term_frequency_csv,
    task_metrics,
)
from lmsuite.results import read_rows
from tests.conftest import pythia_artifact

SIZES = ["70m", "160m", "410m", "1b", "1.4b", "2.8b", "6.9b", "12b"]


@pytest.fixture(scope="module")
def imported(tmp_path_factory):
    evals = pythia_artifact("evals")
    results = tmp_path_factory.mktemp("imported") / "pythia.jsonl"
    added, read = import_files(pythia_files(evals), results, suite="pythia")
    return evals, results, added, read, list(read_rows(results))


def test_every_published_model_and_checkpoint_imports(imported):
    _, _, added, _, rows = imported
    assert added == len(rows)
    zero_shot = {(r["model"], r["dataset"]) for r in rows if r["task"] == "harness:lambada_openai"
                 and "intervention" not in r["model"]}
    assert zero_shot == {(f"pythia-{s}", d) for s in SIZES for d in ("standard", "deduped")}
    for model, dataset in zero_shot:
        steps = {r["step"] for r in rows if (r["model"], r["dataset"]) == (model, dataset)
                 and r["task"] == "harness:lambada_openai"}
        assert len(steps) == 27, (model, dataset)
        assert {0, 1, 2, 4, 512, 1000, 143000} <= steps


def test_the_known_published_values_come_through(imported):
    _, _, _, _, rows = imported
    found = {r["metric"]: r for r in rows if r["model"] == "pythia-70m"
             and r["dataset"] == "standard" and r["step"] == 143000
             and r["task"] == "harness:lambada_openai"}
    assert found["acc"]["value"] == pytest.approx(0.18455, abs=5e-6)
    assert found["ppl"]["value"] == pytest.approx(142.43, abs=5e-3)
    assert found["acc"]["stderr"] > 0 and found["acc"]["suite"] == "pythia"


def test_pythias_quirks_import_under_the_right_names(imported):
    evals, _, _, _, rows = imported
    # The standard 1b's files say "5shot" in their names; their config says 0 shots.
    one_b = [r for r in rows if r["model"] == "pythia-1b" and r["dataset"] == "standard"]
    named = sorted((evals / "pythia-v1" / "pythia-1b-bf16" / "zero-shot").glob("*-5shot_step*"))
    assert named
    steps = {int(p.stem.rsplit("step", 1)[1]) for p in named}
    assert {r["step"] for r in one_b} >= steps
    assert one_b and not any(r["task"].endswith("shot") for r in one_b)
    # Intervention files share step 143000 with zero-shot ones: other model names.
    intervened = {r["model"] for r in rows if "intervention" in r["model"]}
    assert "pythia-410m-intervention" in intervened and all(
        r["dataset"] == "deduped" for r in rows if "intervention" in r["model"])
    # One vocabulary of metric names: the published CrowS-Pairs metric is lmsuite's.
    crows = {r["metric"] for r in rows if r["task"] == "harness:crows_pairs_english_gender"}
    assert {"likelihood_diff", "pct_stereotype"} <= crows and "likelihood_difference" not in crows
    # Term frequency: accuracies per first operand, by shot count, old size names renamed.
    terms = [r for r in rows if r["task"].startswith("term_frequency:")]
    assert {r["model"] for r in terms} <= {f"pythia-{s}" for s in SIZES}
    assert {r["dataset"] for r in terms} == {"deduped"}
    assert all(r["metric"].startswith("acc_x1_") and 0 <= r["value"] <= 1 for r in terms)


def test_reimporting_adds_nothing(imported):
    evals, results, _, _, rows = imported
    again, _ = import_files(pythia_files(evals), results, suite="pythia")
    assert again == 0 and len(list(read_rows(results))) == len(rows)


def test_a_current_format_file_imports_as_eval_harness_writes_its_rows(tmp_path):
    """The harness's current JSON (what `eval --harness` runs): filters stripped, stderr paired,
    n from n-samples, shots from the task's config, model and step given by the user."""
    results = {"lambada_openai": {"alias": "lambada_openai", "acc,none": 0.5,
                                  "acc_stderr,none": 0.01, "perplexity,none": 12.5,
                                  "perplexity_stderr,none": 0.4},
               "arc_easy": {"acc,none": 0.4, "acc_stderr,none": "N/A",
                            "acc_norm,none": 0.38}}
    data = {"results": results,
            "configs": {"lambada_openai": {"num_fewshot": 0}, "arc_easy": {"num_fewshot": 5}},
            "n-samples": {"lambada_openai": {"original": 5153, "effective": 5153},
                          "arc_easy": {"original": 2376, "effective": 100}},
            "config": {"model": "hf", "model_args": "pretrained=facebook/opt-125m"}}
    path = tmp_path / "opt-125m_step1000.json"
    path.write_text(json.dumps(data))
    rows = rows_of_file(path, step_from_name=True)
    by = {(r["task"], r["metric"]): r for r in rows}
    assert set(by) == {("harness:lambada_openai", "acc"), ("harness:lambada_openai", "ppl"),
                       ("harness:arc_easy_5shot", "acc"), ("harness:arc_easy_5shot", "acc_norm")}
    lam = by[("harness:lambada_openai", "acc")]
    assert (lam["model"], lam["dataset"], lam["step"], lam["n"], lam["stderr"]) == \
        ("opt-125m", "standard", 1000, 5153, 0.01)
    assert by[("harness:lambada_openai", "ppl")]["stderr"] == 0.4
    assert "stderr" not in by[("harness:arc_easy_5shot", "acc")]  # "N/A" is not a number
    assert by[("harness:arc_easy_5shot", "acc")]["n"] == 100
    # Without --step-from-name the step must be in model_args.
    with pytest.raises(Exception, match="revision=step"):
        rows_of_file(path)


def test_metric_names_share_one_vocabulary():
    assert metric_name("likelihood_difference") == "likelihood_diff"
    assert metric_name("perplexity,none") == "ppl"
    assert metric_name("acc_norm,none") == "acc_norm"
    assert task_metrics({"likelihood_difference": 3.1, "likelihood_difference_stderr": 0.2}) == \
        [("likelihood_diff", 3.1, 0.2)]


def test_pythia_model_names():
    assert pythia_model("EleutherAI/pythia-v1.1-1b-bf16") == ("pythia-1b", "standard")
    assert pythia_model("EleutherAI/pythia-v1.1-70m-deduped") == ("pythia-70m", "deduped")
    assert pythia_model("EleutherAI/intervention-pythia-v1.1-1.4b-deduped-long") == \
        ("pythia-1.4b-intervention-long", "deduped")
    assert pythia_model("facebook/opt-125m") is None


def test_a_damaged_csv_row_is_named_with_its_line(tmp_path):
    path = tmp_path / "term.csv"
    path.write_text("model,checkpoint,task,fewshot,acc,acc_stderr\n"
                    "EleutherAI/pythia-125m-deduped,13000,num_x_7,0,0.5,0.1\n"
                    "EleutherAI/pythia-125m-deduped,oops,num_x_7,0,0.5,0.1\n")
    with pytest.raises(Exception, match=r"term.csv:3: expected"):
        rows_of_term_frequency_csv(path)


def test_the_command_imports_the_tree_and_refuses_bad_files_in_one_line(tmp_path):
    evals = pythia_artifact("evals")
    out = tmp_path / "rows.jsonl"
    cmd = [sys.executable, "-m", "lmsuite", "import", "lm-eval", "--all", str(evals),
           "--results", str(out)]
    done = subprocess.run(cmd, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert "rows added" in done.stdout and out.stat().st_size > 0
    bad = tmp_path / "bad.json"
    bad.write_text("[1, 2]")
    refused = subprocess.run([*cmd[:5], str(bad), "--model", "m", "--results", str(out)],
                             capture_output=True, text=True)
    assert refused.returncode == 2 and refused.stderr.count("\n") == 1
    assert str(bad) in refused.stderr
