"""nn_from_scratch.atomic: a write appears whole or not at all, with ordinary permissions."""
import json
import os
import stat

import pytest

from nn_from_scratch.atomic import atomic_open, write_json_atomic, write_text_atomic


def test_text_and_json_round_trip(tmp_path):
    write_text_atomic(tmp_path / "a.txt", "hello\n")
    assert (tmp_path / "a.txt").read_text() == "hello\n"
    write_json_atomic(tmp_path / "b.json", {"x": [1, 2.5]})
    assert json.loads((tmp_path / "b.json").read_text()) == {"x": [1, 2.5]}
    assert sorted(os.listdir(tmp_path)) == ["a.txt", "b.json"]     # no temporary file left


def test_failure_keeps_the_old_file_and_leaves_no_temporary(tmp_path):
    path = tmp_path / "keep.txt"
    path.write_text("old")
    with pytest.raises(RuntimeError, match="boom"):
        with atomic_open(path, "w") as f:
            f.write("half of the new")
            raise RuntimeError("boom")
    assert path.read_text() == "old"
    assert os.listdir(tmp_path) == ["keep.txt"]


def test_new_file_gets_umask_permissions_not_private(tmp_path):
    old = os.umask(0o022)
    try:
        write_text_atomic(tmp_path / "p.txt", "x")
    finally:
        os.umask(old)
    assert stat.S_IMODE(os.stat(tmp_path / "p.txt").st_mode) == 0o644    # mkstemp alone gives 0600


def test_bad_mode_is_named():
    with pytest.raises(ValueError, match="mode must be 'w' or 'wb', received 'a'"):
        with atomic_open("x", "a"):
            pass


def test_atomic_writes_never_touch_the_process_umask(tmp_path, monkeypatch):
    """Another thread's file created during a write must not see a changed umask: none is made."""
    from nn_from_scratch import atomic
    old = os.umask(0o027)
    try:
        def forbidden(*_):
            raise AssertionError("os.umask called during an atomic write")
        monkeypatch.setattr(os, "umask", forbidden)
        write_text_atomic(tmp_path / "q.txt", "x")
        assert atomic.new_file_mode(str(tmp_path)) == 0o640
    finally:
        monkeypatch.undo()
        os.umask(old)
    assert stat.S_IMODE(os.stat(tmp_path / "q.txt").st_mode) == 0o640
    assert sorted(os.listdir(tmp_path)) == ["q.txt"]
