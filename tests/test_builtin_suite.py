"""The built-in suite as shipped: its standard data trains exactly one epoch."""

from pathlib import Path

from lmsuite.config import load_suite
from lmsuite.data.build import build_data

TINY = Path(__file__).resolve().parents[1] / "configs" / "tiny.toml"


def test_the_built_in_suite_trains_its_standard_data_for_exactly_one_epoch(tmp_path):
    suite = load_suite(TINY)
    standard, deduped = build_data(suite, tmp_path / "data", progress=False)
    import json

    counts = json.loads((standard / "manifest.json").read_text())["counts"]
    batch, steps = suite.train.batch_size, suite.train.steps
    # every sample of the epoch but fewer than a batch's remainder
    assert steps * batch <= counts["samples_per_epoch"] < (steps + 1) * batch
    deduped_counts = json.loads((deduped / "manifest.json").read_text())["counts"]
    assert deduped_counts["removed_duplicates"] > 0 and deduped_counts["epochs"] > 1
