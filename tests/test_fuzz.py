"""Property-based: mutated configs and damaged files never give a traceback or an exit code
other than 0 or 2, and write nothing outside the run folder. The default run is short; the
`slow` one (make test-slow) tries many more cases."""

import json
import shutil
import tomllib
from pathlib import Path

import pytest
import tomli_w
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from lmsuite.config import save_suite, suite_to_dict
from tests.conftest import small_suite
from tests.test_faults import cli

ODD_VALUES = st.one_of(
    st.none().map(lambda _: "missing"), st.booleans(), st.integers(-10**12, 10**12),
    st.floats(allow_nan=True, allow_infinity=True), st.text(max_size=12),
    st.lists(st.integers(), max_size=3), st.dictionaries(st.text(max_size=4), st.integers(),
                                                         max_size=2))
FUZZ = dict(deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


def _fields(table: dict, prefix=()) -> list[tuple]:
    out = []
    for key, value in table.items():
        if isinstance(value, dict):
            out += _fields(value, (*prefix, key))
        elif isinstance(value, list) and value and isinstance(value[0], dict):
            for i, row in enumerate(value):
                out += _fields(row, (*prefix, key, i))
        else:
            out.append((*prefix, key))
    return out


BASE = tomllib.loads(tomli_w.dumps(suite_to_dict(small_suite())))
FIELDS = _fields(BASE)


def _mutate(table: dict, path: tuple, value) -> dict:
    table = json.loads(json.dumps(table))
    *parents, last = path
    node = table
    for part in parents:
        node = node[part]
    if value == "missing":
        del node[last]
    else:
        node[last] = value
    return table


def assert_clean(code: int, err: str) -> None:
    assert code in (0, 2), err
    assert "Traceback" not in err
    if code == 2:
        assert len([line for line in err.splitlines() if line.strip()]) == 1, err


def _config_case(tmp_path, capsys, field, value, extra):
    table = _mutate(BASE, field, value)
    if extra:
        table["data"]["not_a_field"] = 1
    folder = tmp_path / "case"
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir()
    config = folder / "suite.toml"
    try:
        config.write_text(tomli_w.dumps(table))
    except (TypeError, ValueError):  # a value TOML cannot hold (None, nan keys): not a config
        return
    before = sorted(p.name for p in tmp_path.iterdir())
    assert_clean(*cli(["model", "info", config], capsys))
    assert sorted(p.name for p in tmp_path.iterdir()) == before


@settings(max_examples=60, **FUZZ)
@given(field=st.sampled_from(FIELDS), value=ODD_VALUES, extra=st.booleans())
def test_a_mutated_config_is_accepted_or_refused_in_one_line(tmp_path, capsys, field, value,
                                                              extra):
    _config_case(tmp_path, capsys, field, value, extra)


@pytest.mark.slow
@settings(max_examples=2000, **FUZZ)
@given(field=st.sampled_from(FIELDS), value=ODD_VALUES, extra=st.booleans())
def test_many_mutated_configs(tmp_path, capsys, field, value, extra):
    _config_case(tmp_path, capsys, field, value, extra)


@pytest.fixture(scope="module")
def dataset(built_data):
    return built_data[1] / "standard"


DAMAGE = st.one_of(
    st.tuples(st.just("truncate"), st.floats(0, 1)),
    st.tuples(st.just("flip"), st.floats(0, 1)),
    st.tuples(st.just("json"), st.sampled_from(['{}', '[]', '1', '"x"', '{"params": 1}',
                                                '{"params": {"batch_size": -1}}', 'nul\x00'])),
)


def _damaged_case(dataset, tmp_path, capsys, name, damage):
    folder = tmp_path / "d"
    shutil.rmtree(folder, ignore_errors=True)
    shutil.copytree(dataset, folder)
    path = folder / name
    kind, how = damage
    data = path.read_bytes()
    if kind == "truncate":
        path.write_bytes(data[: int(len(data) * how)])
    elif kind == "flip":
        at = min(int(len(data) * how), len(data) - 1)
        path.write_bytes(data[:at] + bytes([data[at] ^ 0x5A]) + data[at + 1:])
    else:
        path.write_text(how)
    before = sorted(p.name for p in tmp_path.iterdir())
    for argv in (["batch", folder, "--step", 0], ["data", "verify", folder]):
        assert_clean(*cli(argv, capsys))
    assert sorted(p.name for p in tmp_path.iterdir()) == before


@settings(max_examples=40, **FUZZ)
@given(name=st.sampled_from(["manifest.json", "train.idx", "train.bin", "tokenizer.json"]),
       damage=DAMAGE)
def test_a_damaged_dataset_file_is_read_or_refused_in_one_line(dataset, tmp_path, capsys, name,
                                                               damage):
    _damaged_case(dataset, tmp_path, capsys, name, damage)


@pytest.mark.slow
@settings(max_examples=600, **FUZZ)
@given(name=st.sampled_from(["manifest.json", "train.idx", "train.bin", "tokenizer.json",
                             "val.idx", "val.bin"]), damage=DAMAGE)
def test_many_damaged_dataset_files(dataset, tmp_path, capsys, name, damage):
    _damaged_case(dataset, tmp_path, capsys, name, damage)


def test_the_base_config_is_valid(tmp_path, capsys):
    config = tmp_path / "suite.toml"
    save_suite(small_suite(), config)
    assert cli(["model", "info", config], capsys)[0] == 0
    assert Path(config).is_file()
