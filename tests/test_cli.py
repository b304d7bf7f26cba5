import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from lmsuite.cli import main

PYTHIA = Path(__file__).resolve().parents[1] / "configs" / "pythia.toml"

# Pythia's published parameter counts (total, non-embedding).
PUBLISHED = {
    "pythia-70m": (70_426_624, 18_915_328),
    "pythia-160m": (162_322_944, 85_056_000),
    "pythia-410m": (405_334_016, 302_311_424),
    "pythia-1b": (1_011_781_632, 805_736_448),
    "pythia-1.4b": (1_414_647_808, 1_208_602_624),
    "pythia-2.8b": (2_775_208_960, 2_517_652_480),
    "pythia-6.9b": (6_857_302_016, 6_444_163_072),
    "pythia-12b": (11_846_072_320, 11_327_027_200),
}


def test_model_info_prints_pythia_published_parameter_counts(capsys):
    main(["model", "info", str(PYTHIA), "--json"])
    rows = json.loads(capsys.readouterr().out)
    assert {r["name"]: (r["total_params"], r["non_embedding_params"]) for r in rows} == PUBLISHED
    assert set(rows[0]) == {"name", "layers", "d_model", "heads", "total_params",
                            "non_embedding_params"}


def test_model_info_table_lists_every_size(capsys):
    main(["model", "info", str(PYTHIA)])
    out = capsys.readouterr().out
    assert "11,846,072,320" in out and "18,915,328" in out


def test_counted_parameters_equal_a_built_model():
    from lmsuite.config import load_suite
    from lmsuite.model.neox import GPTNeoX, config_for_size, count_parameters

    size = load_suite(PYTHIA).models[0]
    cfg = config_for_size(size, 50277, 2048)
    assert cfg.vocab_size == 50304
    built = sum(p.numel() for p in GPTNeoX(cfg).parameters())
    assert count_parameters(cfg) == built


def test_user_mistake_exits_2_with_one_line_and_no_traceback(tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text(PYTHIA.read_text().replace("heads = 8\n", "heads = 7\n", 1))
    result = subprocess.run([sys.executable, "-m", "lmsuite", "model", "info", str(bad)],
                            capture_output=True, text=True)
    assert result.returncode == 2
    assert result.stderr.strip().count("\n") == 0
    assert "heads must be a divisor of d_model=512" in result.stderr
    assert "Traceback" not in result.stderr


def test_debug_shows_the_traceback(tmp_path, capsys):
    with pytest.raises(SystemExit) as e:
        main(["model", "info", str(tmp_path / "missing.toml"), "--debug"])
    assert e.value.code == 2
    assert "Traceback" in capsys.readouterr().err


def test_data_synth_writes_the_corpus_and_its_ground_truth(tmp_path, capsys):
    main(["data", "synth", "--out", str(tmp_path / "c.jsonl"), "--docs", "300", "--seed", "3"])
    lines = (tmp_path / "c.jsonl").read_text().splitlines()
    assert len(lines) == 300 and all("text" in json.loads(line) for line in lines)
    assert (tmp_path / "c.meta" / "ground_truth.json").is_file()


@pytest.mark.parametrize("argv, message", [
    (["data", "synth", "--out", "OUT/c.jsonl", "--docs", "0"], "number of documents must be "
                                                               "positive, got 0"),
    (["data", "synth", "--out", "OUT/c.txt", "--docs", "5"], "c.txt: the corpus is written as "
                                                             "JSON lines; name it \\*.jsonl"),
    (["eval", "OUT", "--tasks", ","], "--tasks ',' names no task"),
    (["eval", "OUT", "--harness", ""], "--harness '' names no task"),
])
def test_arguments_that_ask_for_nothing_or_the_wrong_thing_are_errors(tmp_path, capsys, argv,
                                                                      message):
    with pytest.raises(SystemExit) as e:
        main([a.replace("OUT", str(tmp_path)) for a in argv])
    assert e.value.code == 2
    assert re.search(message, capsys.readouterr().err)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("flags, bar", [([], True), (["--no-progress"], False)])
def test_data_build_draws_a_progress_bar_unless_told_not_to(tmp_path, capsys, flags, bar):
    from lmsuite.config import save_suite
    from tests.conftest import small_suite

    save_suite(small_suite(documents=100), tmp_path / "suite.toml")
    main(["data", "build", str(tmp_path / "suite.toml"), "--out", str(tmp_path / "data"),
          *flags])
    out, err = capsys.readouterr()
    assert "standard: " in out and ("tokenize + dedup" in err) == bar
