"""``grade --submissions``: a class graded in sandboxes against a trusted reference (docs/grading.md).

The fixture folder ``tests/fixtures/submissions`` holds correct layers in two styles, the classic
bugs and hostile submissions; every verdict must be right, in bubblewrap and in the weaker fallback,
the sibling's file and grade intact, and the batch must complete.  Exit statuses: 0, 1, 2 as documented.
"""
import csv
import hashlib
import json
import os

import pytest

from nn_from_scratch.checks import grade
from nn_from_scratch.checks.grading.sandbox import bwrap_works

HERE = os.path.dirname(os.path.abspath(__file__))
SUBS = os.path.join(HERE, "fixtures", "submissions")
GRADING = os.path.join(HERE, "fixtures", "grading")
LEAKY = os.path.join(SUBS, "leaky")
AFFINE = os.path.join(SUBS, "affine")

#: student -> (status, {check: passed}) for the LeakyReLU(alpha=0.1) reference
LEAKY_EXPECTED = {
    "alice": ("graded", {"output": True, "input gradient": True, "gradient check": True}),
    "bob": ("graded", {"output": True, "input gradient": True, "gradient check": True}),
    "carol": ("graded", {"output": True, "input gradient": False, "gradient check": False}),    # slope forgotten
    "dave": ("graded", {"output": True, "input gradient": False, "gradient check": False}),     # mask from dy
    "erin": ("graded", {"output": False, "input gradient": False, "gradient check": True}),    # 0.01, consistent
    "patcher": ("graded", {"output": False, "input gradient": False, "gradient check": True}),  # identity, patches
    "raiser": ("graded", {"output": False, "input gradient": False, "gradient check": False}),
    "quitter": ("exited", {}),
    "looper": ("timeout", {}),
    "hog": ("memory", {}),
    "vandal": ("graded", {"output": True, "input gradient": True, "gradient check": True}),
    "forger": (None, {}),             # forged answers on the protocol's pipe: whatever its status, no points
}


def _digest(folder):
    h = hashlib.sha256()
    for root, dirs, files in sorted(os.walk(folder)):
        dirs.sort()
        for name in sorted(files):
            if name.endswith(".pyc"):
                continue
            with open(os.path.join(root, name), "rb") as f:
                h.update(name.encode() + f.read())
    return h.hexdigest()


def _isolations():
    return ["bwrap", "rlimits"] if bwrap_works() else ["rlimits"]


@pytest.mark.parametrize("isolation", _isolations())
def test_a_class_of_layers_gets_every_verdict_right(tmp_path, capsys, isolation):
    before = _digest(SUBS)
    out = tmp_path / "out"
    argv = ["--submissions", LEAKY, "--layer", "leaky.py:LeakyReLU", "--reference", "LeakyReLU(alpha=0.1)",
            "--input-shape", "3,5,5", "--out", str(out), "--timeout", "12", "--memory-mb", "1024", "--jobs", "4",
            "--skip-keras", "--gradescope"] + (["--no-bwrap"] if isolation == "rlimits" else [])
    assert grade.main(argv) == 1
    text = capsys.readouterr()
    if isolation == "rlimits":
        assert "Isolation is WEAKER" in text.err
    assert _digest(SUBS) == before                     # nothing in the submissions changed (the sibling's file)
    with open(out / "grades.csv") as f:
        rows = {r["student"]: r for r in csv.DictReader(f)}
    assert set(rows) == set(LEAKY_EXPECTED)
    for student, (status, checks) in LEAKY_EXPECTED.items():
        r = rows[student]
        assert status is None or r["status"] == status, (student, r)
        assert float(r["max_score"]) == 6.0
        with open(out / f"{student}.json") as f:
            js = json.load(f)
        assert js["student"] == student and (status is None or js["status"] == status)
        got = {c["check"]: c["passed"] for c in js["checks"]}
        if checks:
            assert got == checks, (student, js["checks"])
        else:
            assert not any(got.values()) and float(r["score"]) == 0.0
        assert float(r["score"]) == sum(2.0 for ok in got.values() if ok)
        with open(out / student / "results.json") as f:
            gs = json.load(f)
        assert {"name", "score", "max_score", "output", "visibility"} <= set(gs["tests"][0])
        assert sum(t["score"] for t in gs["tests"]) == float(r["score"])
    # what the hostile ones printed is kept for the instructor, capped, and changed nothing
    with open(out / "patcher.json") as f:
        assert "PASSED" in json.load(f)["output"]
    with open(out / "looper.json") as f:
        looper = json.load(f)
    assert "dropped" in looper["output"] and len(looper["output"]) < 70 * 1024
    with open(out / "grading_run.json") as f:
        assert json.load(f)["isolation"] == isolation


def test_weights_hidden_cases_points_and_the_keras_twin_of_the_reference(tmp_path):
    pytest.importorskip("tensorflow")
    out = tmp_path / "out"
    argv = ["--submissions", AFFINE, "--layer", "affine.py:Affine", "--reference",
            os.path.join(GRADING, "affine_solution.py") + ":Affine", "--args", "[6, 6]",
            "--config", os.path.join(GRADING, "affine.toml"), "--out", str(out), "--gradescope", "--jobs", "3"]
    assert grade.main(argv) == 1
    with open(out / "grades.csv") as f:
        rows = {r["student"]: r for r in csv.DictReader(f)}
    # points per case from the config (2 + 2 + 3 + 1 + 1 + 1), two cases, one hidden
    assert {k: float(v["max_score"]) for k, v in rows.items()} == {"grace": 20.0, "heidi": 20.0, "ivan": 20.0}
    assert float(rows["grace"]["score"]) == 20.0
    for bug in ("heidi", "ivan"):       # transposed dW; 1/N where the sum belongs: caught by every weight check
        r = rows[bug]
        assert float(r["output"]) == 4 and float(r["input gradient"]) == 4
        for col in ("parameter gradients", "gradient check", "sgd steps", "keras"):
            assert float(r[col]) == 0, (bug, col)
    with open(out / "heidi" / "results.json") as f:
        tests = json.load(f)["tests"]
    hidden = [t for t in tests if t["visibility"] == "hidden"]
    # the hidden case (6 checks) and the first case's sgd steps (hidden = ["sgd_steps"])
    assert len(hidden) == len(tests) // 2 + 1 and all(t["output"] == "hidden check" for t in hidden)
    assert any(t["name"].startswith("sgd steps [case 1") for t in hidden)


def test_single_submission_mode_for_gradescope(tmp_path, capsys):
    out = tmp_path / "results"
    argv = ["--submissions", os.path.join(LEAKY, "alice"), "--single", "--layer", "leaky.py:LeakyReLU",
            "--reference", "LeakyReLU(alpha=0.1)", "--input-shape", "6", "--out", str(out), "--gradescope",
            "--skip-keras", "--timeout", "30"]
    assert grade.main(argv) == 0
    with open(out / "results.json") as f:
        res = json.load(f)
    assert res["score"] == 6.0 and len(res["tests"]) == 3
    argv[1] = os.path.join(LEAKY, "dave")
    assert grade.main(argv) == 1
    with open(out / "results.json") as f:
        assert json.load(f)["score"] == 2.0


@pytest.mark.parametrize("change, message", [
    (lambda a: a.__setitem__(a.index("--reference") + 1, "NoSuchLayer(1)"), "not a built-in layer"),
    (lambda a: a.__setitem__(a.index("--reference") + 1, "LeakyReLU(alpha=__import__('os'))"), "literals"),
    (lambda a: a.__setitem__(a.index("--submissions") + 1, "/no/such/folder"), "not a folder"),
    (lambda a: a.__setitem__(a.index("--layer") + 1, "leaky.py"), "FILE:CLASS"),
    (lambda a: a.__setitem__(a.index("--layer") + 1, "../x.py:LeakyReLU"), "relative .py path"),
    (lambda a: a.extend(["--config", os.path.join(GRADING, "missing.toml")]), "cannot read"),
    (lambda a: a.extend(["--jobs", "0"]), "--jobs"),
    (lambda a: a.__setitem__(a.index("--out") + 1, os.path.join(LEAKY, "grades")), "outside"),
    (lambda a: a.remove("--skip-keras") or a.extend(["--model", "x.npz"]), ""),
])
def test_grading_that_cannot_start_exits_2(tmp_path, capsys, change, message):
    argv = ["--submissions", LEAKY, "--layer", "leaky.py:LeakyReLU", "--reference", "LeakyReLU(alpha=0.1)",
            "--input-shape", "6", "--out", str(tmp_path / "out"), "--skip-keras"]
    change(argv)
    assert grade.main(argv) == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "out" / "grades.csv").exists()


def test_a_bad_config_names_the_key(tmp_path, capsys):
    cfg = tmp_path / "g.toml"
    cfg.write_text("seed = 1\n[points]\nouptut = 2\n")
    argv = ["--submissions", LEAKY, "--layer", "leaky.py:LeakyReLU", "--reference", "LeakyReLU(alpha=0.1)",
            "--input-shape", "6", "--out", str(tmp_path / "out"), "--skip-keras", "--config", str(cfg)]
    assert grade.main(argv) == 2
    assert "ouptut" in capsys.readouterr().err


def test_single_layer_mode_exit_statuses_for_bad_paths(tmp_path, capsys):
    """--layer FOLDER:Class and --json into a missing folder: exit 2 before anything is graded."""
    assert grade.main(["--layer", f"{LEAKY}/alice:LeakyReLU", "--skip-keras", "--input-shape", "6"]) == 2
    assert "folder" in capsys.readouterr().err
    assert grade.main(["--layer", f"{LEAKY}/alice/leaky.py:LeakyReLU", "--kwargs", '{"alpha": 0.1}',
                       "--skip-keras", "--input-shape", "6", "--json", str(tmp_path / "no" / "g.json")]) == 2
    assert "does not exist" in capsys.readouterr().err
    assert grade.main(["--layer", f"{LEAKY}/alice/leaky.py:LeakyReLU", "--kwargs", '{"alpha": 0.1}',
                       "--skip-keras", "--input-shape", "6", "--json", str(tmp_path / "g.json")]) == 0
    assert json.loads((tmp_path / "g.json").read_text())["passed"] is True


def test_single_layer_mode_a_module_that_exits_at_import_cannot_be_graded(capsys):
    """In-process, sys.exit(0) at import is a module that cannot be loaded: exit 2, never 0."""
    assert grade.main(["--layer", f"{LEAKY}/quitter/leaky.py:LeakyReLU", "--skip-keras", "--input-shape", "6"]) == 2
    assert "sys.exit(0)" in capsys.readouterr().err


def test_the_keras_check_uses_the_references_twin_not_the_students_to_keras(tmp_path):
    """erin's layer uses slope 0.01 in forward, backward and its own to_keras: the Keras check still fails."""
    pytest.importorskip("tensorflow")
    out = tmp_path / "results"
    argv = ["--submissions", os.path.join(LEAKY, "erin"), "--single", "--layer", "leaky.py:LeakyReLU",
            "--reference", "LeakyReLU(alpha=0.1)", "--input-shape", "6", "--out", str(out), "--timeout", "60"]
    assert grade.main(argv) == 1
    checks = {c["check"]: c["passed"] for c in json.loads((out / "submission.json").read_text())["checks"]}
    assert checks == {"output": False, "input gradient": False, "gradient check": True, "keras": False}


def test_odd_submission_names_get_safe_output_names(tmp_path, capsys):
    subs = tmp_path / "subs"
    (subs / "Jane Doe").mkdir(parents=True)
    (subs / "Jane Doe" / "leaky.py").write_bytes(open(os.path.join(LEAKY, "alice", "leaky.py"), "rb").read())
    out = tmp_path / "out"
    assert grade.main(["--submissions", str(subs), "--layer", "leaky.py:LeakyReLU", "--reference",
                       "LeakyReLU(alpha=0.1)", "--input-shape", "6", "--out", str(out), "--skip-keras",
                       "--timeout", "60"]) == 0
    assert (out / "Jane_Doe.json").exists() and "'Jane Doe'" in capsys.readouterr().err


def test_a_convolution_against_a_built_in_reference(tmp_path):
    """A flipped kernel is self-consistent (the gradient check passes) but not the reference's convolution."""
    subs = tmp_path / "subs"
    (subs / "good").mkdir(parents=True)
    (subs / "good" / "conv.py").write_text("from nn_from_scratch.layers import Convolution  # noqa: F401\n")
    (subs / "flip").mkdir()
    (subs / "flip" / "conv.py").write_text(
        "import numpy as np\n"
        "from nn_from_scratch.layers import Convolution as _C\n\n\n"
        "class Convolution(_C):\n"
        "    def _forward(self, x):\n"
        "        W = self._params['W']\n"
        "        self._params['W'] = np.ascontiguousarray(W[..., ::-1, ::-1])\n"
        "        try:\n"
        "            return super()._forward(x)\n"
        "        finally:\n"
        "            self._params['W'] = W\n\n"
        "    def _backward(self, dy, need_input_grad=True):\n"
        "        W = self._params['W']\n"
        "        self._params['W'] = np.ascontiguousarray(W[..., ::-1, ::-1])\n"
        "        try:\n"
        "            dx = super()._backward(dy, need_input_grad)\n"
        "        finally:\n"
        "            self._params['W'] = W\n"
        "        self._grads['W'] = np.ascontiguousarray(self._grads['W'][..., ::-1, ::-1])\n"
        "        return dx\n")
    out = tmp_path / "out"
    assert grade.main(["--submissions", str(subs), "--layer", "conv.py:Convolution", "--reference",
                       "Convolution(in_channels=3, kernel_size=3, output_layers=4, ndim=2)", "--input-shape",
                       "3,6,6", "--out", str(out), "--skip-keras", "--timeout", "60"]) == 1
    with open(out / "grades.csv") as f:
        rows = {r["student"]: r for r in csv.DictReader(f)}
    assert float(rows["good"]["score"]) == float(rows["good"]["max_score"]) == 9.0
    flip = {c["check"]: c["passed"] for c in json.loads((out / "flip.json").read_text())["checks"]}
    assert flip == {"output": False, "input gradient": False, "parameter gradients": False, "gradient check": True,
                    "sgd steps": False}
