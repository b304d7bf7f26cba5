import os

import pytest

from lmsuite import durable
from lmsuite.durable import put_back_moved_aside, replace_folder


def make(folder, text):
    folder.mkdir()
    (folder / "a.txt").write_text(text)
    (folder / "b.txt").write_text(text)
    return folder


def test_replace_folder_puts_the_new_in_place_and_leaves_nothing_aside(tmp_path):
    make(tmp_path / "final", "old")
    replace_folder(make(tmp_path / "new", "new"), tmp_path / "final")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["final"]
    assert (tmp_path / "final" / "a.txt").read_text() == "new"


def test_a_failed_last_rename_leaves_the_old_folder_whole(tmp_path, monkeypatch):
    make(tmp_path / "final", "old")
    make(tmp_path / "new", "new")
    real_replace = os.replace

    def fail_on_the_new(src, dst):
        if src == tmp_path / "new":
            raise KeyboardInterrupt
        real_replace(src, dst)

    monkeypatch.setattr(durable.os, "replace", fail_on_the_new)
    with pytest.raises(KeyboardInterrupt):
        replace_folder(tmp_path / "new", tmp_path / "final")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["final", "new"]
    assert [(tmp_path / "final" / n).read_text() for n in ("a.txt", "b.txt")] == ["old", "old"]


def test_a_folder_left_aside_by_a_kill_is_put_back_or_dropped(tmp_path):
    # Killed between the two renames: the old folder is aside and nothing is in its place.
    make(tmp_path / ".data.old-999999", "old")
    # Killed while deleting the old folder: the new one is in place.
    make(tmp_path / "step2", "new")
    make(tmp_path / ".step2.old-999998", "old")
    put_back_moved_aside(tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data", "step2"]
    assert (tmp_path / "data" / "a.txt").read_text() == "old"
    assert (tmp_path / "step2" / "a.txt").read_text() == "new"


def test_only_folders_moved_aside_by_lmsuite_are_touched(tmp_path):
    (tmp_path / ".notes.old-draft").write_text("a user's file")  # not a pid: not ours
    make(tmp_path / ".data.old-12", "old")
    make(tmp_path / ".other.old-13", "old")
    put_back_moved_aside(tmp_path, "data")
    assert sorted(p.name for p in tmp_path.iterdir()) == [".notes.old-draft", ".other.old-13",
                                                          "data"]
    put_back_moved_aside(tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == [".notes.old-draft", "data", "other"]


@pytest.mark.parametrize("content, expected", [
    (b"\x00bytes", b"\x00bytes"),
    ("text é\n", "text é\n".encode()),
    ({"a": [1, 2]}, b'{\n  "a": [\n    1,\n    2\n  ]\n}\n'),
])
def test_write_file_writes_bytes_text_and_json(tmp_path, content, expected):
    durable.write_file(tmp_path / "f", content)
    assert (tmp_path / "f").read_bytes() == expected
    assert [p.name for p in tmp_path.iterdir()] == ["f"]


def test_write_file_flushes_the_file_before_the_rename_and_the_folder_after(tmp_path,
                                                                            monkeypatch):
    from tests.conftest import record_fsyncs_and_renames

    events = record_fsyncs_and_renames(monkeypatch)
    durable.write_file(tmp_path / "f.json", lambda path: path.write_text("{}"))
    tmp = str(durable.temporary(tmp_path / "f.json"))
    assert events == [("fsync", tmp), ("rename", tmp, str(tmp_path / "f.json")),
                      ("fsync", str(tmp_path))]


def test_a_writer_that_fails_leaves_the_old_file_and_no_temporary(tmp_path):
    (tmp_path / "f").write_text("old")

    def broken(path):
        path.write_text("half")
        raise RuntimeError("disk on fire")

    with pytest.raises(RuntimeError, match="disk on fire"):
        durable.write_file(tmp_path / "f", broken)
    assert (tmp_path / "f").read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["f"]


def test_temporary_names_are_hidden_and_recognised(tmp_path):
    tmp = durable.temporary(tmp_path / "step10")
    assert tmp.parent == tmp_path and tmp.name.startswith(".step10")
    assert durable.is_temporary(tmp) and not durable.is_temporary(tmp_path / "step10")
