import fcntl
import subprocess
import sys
import time

from lmsuite.results import ResultStore, Source, read_rows

WRITER = """
import sys
from lmsuite.results import ResultStore, Source
source = Source("s", "m", "standard", 0)
items = [source.row("t", "correct", 1.0, 1, item=i) for i in range(500)]
ResultStore(sys.argv[1]).add(source, "t", [source.row("t", "acc", 0.5, 500)], items)
"""


def test_appends_to_a_results_file_take_turns_on_a_lock(tmp_path):
    # Evaluations of several models, one job each, share <run>/results/eval.jsonl: a task's
    # rows, written in more than one system call, must not interleave with another job's.
    path = tmp_path / "eval.jsonl"
    path.touch()
    with open(path, "ab") as held:
        fcntl.flock(held, fcntl.LOCK_EX)  # another process appending right now
        proc = subprocess.Popen([sys.executable, "-c", WRITER, str(path)])
        time.sleep(3)
        assert proc.poll() is None and path.stat().st_size == 0  # it waits its turn
        held.write(b'{"model": "m", "step": 0, "task": "other", "metric": "acc", "value": 1}\n')
        held.flush()
    assert proc.wait(timeout=60) == 0
    assert [r["task"] for r in read_rows(path)] == ["other", "t"]
    assert len(list(read_rows(tmp_path / "eval_items.jsonl"))) == 500


def test_a_torn_last_row_is_cut_off_before_the_next_is_appended(tmp_path):
    path = tmp_path / "eval.jsonl"
    source = Source("s", "m", "standard", 0)
    ResultStore(path).add(source, "a", [source.row("a", "acc", 0.5, 10)])
    with path.open("a") as f:
        f.write('{"suite": "s", "model": "m", "dat')  # a writer killed mid-row
    store = ResultStore(path)
    assert not store.done(source, "b")
    store.add(source, "b", [source.row("b", "acc", 0.25, 10)])
    assert [r["task"] for r in read_rows(path)] == ["a", "b"]
    assert path.read_text().endswith("\n")


def test_a_pair_another_process_appended_meanwhile_is_not_appended_twice(tmp_path):
    # Two evaluations of the same checkpoint running at once both see the pair missing when
    # they start; the one that appends second finds it done, under the file's lock.
    path = tmp_path / "eval.jsonl"
    source = Source("s", "m", "standard", 0)
    first, second = ResultStore(path), ResultStore(path)
    assert not first.done(source, "t") and not second.done(source, "t")
    assert first.add(source, "t", [source.row("t", "acc", 0.5, 10)],
                     [source.row("t", "correct", 1.0, 1, item=0)])
    assert not second.add(source, "t", [source.row("t", "acc", 0.5, 10)],
                          [source.row("t", "correct", 1.0, 1, item=0)])
    assert second.done(source, "t")
    assert len(list(read_rows(path))) == 1
    assert len(list(read_rows(tmp_path / "eval_items.jsonl"))) == 1
    # Each goes on appending other pairs after the rows of the other.
    assert second.add(source, "u", [source.row("u", "acc", 0.1, 10)])
    assert first.add(source, "v", [source.row("v", "acc", 0.2, 10)])
    assert not first.add(source, "u", [source.row("u", "acc", 0.1, 10)])
    assert [r["task"] for r in read_rows(path)] == ["t", "u", "v"]
