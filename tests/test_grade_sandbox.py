"""The grader's sandbox and protocol (docs/grading.md, "Isolation"): what a submission can see and send."""
import os
import struct

import numpy as np
import pytest

from nn_from_scratch.checks import grade
from nn_from_scratch.checks.grading import protocol
from nn_from_scratch.checks.grading.sandbox import Sandbox, bwrap_works

HERE = os.path.dirname(os.path.abspath(__file__))
ALICE = os.path.join(HERE, "fixtures", "submissions", "leaky", "alice", "leaky.py")


def test_messages_round_trip_and_refuse_what_is_not_json_and_arrays():
    data = protocol.encode({"op": "eval", "n": [1, 2]}, {"x": np.arange(6.0).reshape(2, 3)})
    header, arrays = protocol.decode(data[8:])
    assert header == {"op": "eval", "n": [1, 2]}
    np.testing.assert_array_equal(arrays["x"], np.arange(6.0).reshape(2, 3))
    with pytest.raises(protocol.ProtocolError, match="not JSON"):
        protocol.decode(struct.pack("<I", 3) + b"\xff\xfe\x00")
    with pytest.raises(protocol.ProtocolError, match="arrays unreadable"):       # an object array needs pickle
        import io
        buf = io.BytesIO()
        np.save(buf, np.array([{"a": 1}], dtype=object), allow_pickle=True)
        protocol.decode(struct.pack("<I", 2) + b"{}" + buf.getvalue())
    r, w = os.pipe()
    try:
        os.write(w, struct.pack("<Q", protocol.MAX_MESSAGE + 1))
        with pytest.raises(protocol.ProtocolError, match="announced"):
            protocol.read_message(r)
    finally:
        os.close(r)
        os.close(w)


def test_a_reader_that_never_answers_times_out():
    r, w = os.pipe()
    try:
        import time
        with pytest.raises(TimeoutError):
            protocol.read_message(r, deadline=time.monotonic() + 0.2)
    finally:
        os.close(r)
        os.close(w)


@pytest.mark.skipif(not bwrap_works(), reason="bubblewrap cannot run here (the fallback is tested elsewhere)")
def test_inside_bubblewrap_the_reference_siblings_and_outputs_are_invisible(tmp_path):
    solution = tmp_path / "course" / "solution.py"
    solution.parent.mkdir()
    solution.write_text("# SECRET-SOLUTION-MARKER\n" + open(ALICE).read())
    subs = tmp_path / "course" / "subs"
    (subs / "alice").mkdir(parents=True)
    (subs / "alice" / "leaky.py").write_text(open(ALICE).read())
    (subs / "snoop").mkdir()
    snoop = f'''
import os
from nn_from_scratch.interfaces import Node
for path in ({str(solution)!r}, {str(subs / "alice" / "leaky.py")!r}, {str(subs)!r}, {str(tmp_path / "out")!r}):
    try:
        print(path, "->", sorted(os.listdir(path)) if os.path.isdir(path) else repr(open(path).read()[:40]))
    except OSError as exc:
        print(path, "->", type(exc).__name__)
try:
    open("/etc/written-by-student", "w")
    print("WROTE /etc")
except OSError as exc:
    print("/etc ->", type(exc).__name__)
import socket
try:
    socket.create_connection(("1.1.1.1", 53), timeout=2)
    print("NETWORK")
except OSError as exc:
    print("network ->", type(exc).__name__)
'''
    (subs / "snoop" / "leaky.py").write_text(snoop + open(ALICE).read().split('"""', 2)[2])
    out = tmp_path / "out"
    out.mkdir()
    assert grade.main(["--submissions", str(subs), "--layer", "leaky.py:LeakyReLU", "--reference",
                       f"{solution}:LeakyReLU", "--kwargs", '{"alpha": 0.1}', "--input-shape", "6", "--out",
                       str(out), "--skip-keras", "--timeout", "60"]) == 0
    import json
    printed = json.loads((out / "snoop.json").read_text())["output"]
    assert "SECRET-SOLUTION-MARKER" not in printed and "class LeakyReLU" not in printed, printed
    assert f"{subs} -> []" in printed                          # the submissions folder: an empty tmpfs
    assert "WROTE" not in printed and "NETWORK" not in printed, printed


def test_the_fallback_cleans_its_environment_and_copies(tmp_path):
    box = Sandbox(timeout=30, memory_mb=1024, isolation="rlimits")
    try:
        child = box.start({"leaky.py": open(ALICE, "rb").read()})
        h, _ = child.request({"op": "init", "file": "leaky.py", "cls": "LeakyReLU", "args": [], "kwargs": {}})
        assert h["ok"] and h["params"] == {}
        workdir = child.workdir
        rc, output, _ = child.close()
        assert rc == 0 and not os.path.exists(workdir)       # the private copy is gone
    finally:
        box.cleanup()
    assert not os.path.exists(box.root)


def test_a_bwrap_that_cannot_create_namespaces_falls_back_loudly(tmp_path, monkeypatch, capsys):
    """Where bwrap exists but fails (no user namespaces), grading still runs, with the warning."""
    from nn_from_scratch.checks.grading import sandbox
    fake = tmp_path / "bin" / "bwrap"
    fake.parent.mkdir()
    fake.write_text("#!/bin/sh\necho 'bwrap: No permissions to creating new namespace' >&2\nexit 1\n")
    fake.chmod(0o755)
    monkeypatch.setenv("PATH", f"{fake.parent}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.setattr(sandbox, "_BWRAP_STATE", {})
    assert sandbox.bwrap_works() is False
    subs = tmp_path / "subs" / "alice"
    subs.mkdir(parents=True)
    (subs / "leaky.py").write_text(open(ALICE).read())
    out = tmp_path / "out"
    assert grade.main(["--submissions", str(subs.parent), "--layer", "leaky.py:LeakyReLU", "--reference",
                       "LeakyReLU(alpha=0.1)", "--input-shape", "6", "--out", str(out), "--skip-keras",
                       "--timeout", "60"]) == 0
    assert "Isolation is WEAKER" in capsys.readouterr().err
    import json
    assert json.loads((out / "grading_run.json").read_text())["isolation"] == "rlimits"
