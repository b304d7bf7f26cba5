"""The run folder's owner: names, paths, the settings fingerprint; and that it is the only one."""

import re
from pathlib import Path

import pytest

from lmsuite import runs
from lmsuite.errors import ConfigError, LmsuiteError
from tests.conftest import small_suite

SRC = Path(__file__).resolve().parents[1] / "src" / "lmsuite"


@pytest.mark.parametrize("name", ["", ".", "..", ".hidden", "a/b", "a\\b", "nul\x00", "tab\t",
                                  "data", "results", "report", "step10", 3, None])
def test_names_that_are_not_plain_folder_names_are_refused(name):
    with pytest.raises(ConfigError, match="model name must be"):
        runs.check_name(name, "model name")


@pytest.mark.parametrize("name", ["tiny-1", "pythia-1.4b", "m", "Größe", "step", "data2"])
def test_plain_names_are_folder_names(name):
    assert runs.check_name(name, "name") == name


def test_every_path_a_run_hands_out_is_inside_it(tmp_path):
    run = runs.Run(tmp_path / "run")
    assert run.model("tiny-1", "deduped") == tmp_path / "run" / "tiny-1-deduped"
    assert run.dataset("standard") == tmp_path / "run" / "data" / "standard"
    assert run.eval_results == tmp_path / "run" / "results" / "eval.jsonl"
    assert run.study("memorization") == tmp_path / "run" / "results" / "memorization"
    for bad in ("..", "../x", "data"):
        with pytest.raises(LmsuiteError):
            run.model(bad, "standard")
    with pytest.raises(LmsuiteError, match="dataset must be one of standard, deduped"):
        run.dataset("other")


def test_model_folder_names_follow_pythias_convention_both_ways():
    assert runs.model_folder_name("m", "standard") == "m"
    assert runs.model_folder_name("m", "deduped") == "m-deduped"
    assert runs.split_model_folder("m-deduped") == ("m", "deduped")
    assert runs.split_model_folder("m") == ("m", "standard")


def test_changed_settings_names_each_difference_and_ignores_one_sided_ones():
    assert runs.changed_settings({"a": 1, "b": 2, "old": 0}, {"a": 1, "b": 3, "new": 0}) == \
        "b = 2; the config now has b = 3"
    assert runs.changed_settings({"a": 1}, {"a": 1}) is None


def test_the_fingerprints_hold_what_changes_a_build_or_a_run_and_not_the_rest():
    suite = small_suite()
    settings = runs.flat(runs.build_settings(suite))
    assert settings["data.seq_len"] == 32 and settings["seed"] == 1234
    assert settings["batch_size"] == 8
    trajectory = runs.trajectory(suite, suite.models[0])
    assert trajectory["model.lr"] == 3e-3 and "train.micro_batch_size" not in trajectory
    assert runs.samples_needed(suite) == 400 * 8


# What only runs.py may write: the run folder's own names joined into paths, and comparisons
# of saved settings. A module that needs one asks runs.
LAYOUT = [r'"-deduped"', r'/ "data"', r'/ "results"', r'/ "report"', r'"data" /',
          r'"results" /', r'"eval\.jsonl"', r'data/standard', r'changed_settings\(']


def test_no_module_but_runs_joins_run_folder_paths_or_compares_settings():
    offenders = []
    for path in SRC.rglob("*.py"):
        if path.name == "runs.py":
            continue
        text = path.read_text()
        offenders += [f"{path.relative_to(SRC)}: {p}" for p in LAYOUT if re.search(p, text)]
    assert offenders == []


def test_no_module_but_durable_renames_files_into_place():
    offenders = [str(p.relative_to(SRC)) for p in SRC.rglob("*.py") if p.name != "durable.py"
                 and re.search(r"os\.replace\(|os\.rename\(|\.rename\(|\.tmp-", p.read_text())]
    assert offenders == []
