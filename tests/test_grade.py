"""Grading: custom layers with ``to_keras`` in the Keras cross-check (C4), and ``python -m nn_from_scratch grade``.

References: TensorFlow/Keras (the layers' twins), float64 central differences; the planted bugs
(tests/planted_bugs.py) are the classic student mistakes, each of which must fail at its layer
and at the quantity it corrupts, while the correct built-in layer passes the same grading.
"""
import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest

pytest.importorskip("tensorflow")

import keras  # noqa: E402

import planted_bugs  # noqa: E402
from nn_from_scratch.checks import grade  # noqa: E402
from nn_from_scratch.layers.activations import ReLU  # noqa: E402
from nn_from_scratch.layers.reshape import Vectorization
from nn_from_scratch.checks.crosscheck import compare, compare_training  # noqa: E402
from nn_from_scratch.interfaces import Neuron, Node  # noqa: E402
from nn_from_scratch.layers.losses import SoftMaxLoss  # noqa: E402
from nn_from_scratch.training.network import NeuralNetwork  # noqa: E402
from nn_from_scratch.neurons import Convolution, Linear  # noqa: E402
from nn_from_scratch.optimizers import GradientDescent  # noqa: E402

pytestmark = pytest.mark.keras
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PLANTED = os.path.join(ROOT, "tests", "planted_bugs.py")


class GradeLeakyReLU(Node):
    def __init__(self, slope=0.1, shape=None, name=None):
        super().__init__(shape, name=name)
        self.slope = slope

    def _forward(self, x):
        self._cache["x"] = x
        return np.where(x > 0, x, self.slope * x)

    def _backward(self, dy):
        return np.where(self._cache["x"] > 0, dy, self.slope * dy)

    def to_keras(self):
        return keras.layers.LeakyReLU(negative_slope=self.slope)


class GradeAffine(Neuron):
    """W stored (in, out) like Keras's kernel."""

    def __init__(self, n_in, n_out, seed=0, name=None, dtype=np.float32):
        super().__init__((None, n_in), name=name, dtype=dtype)
        rng = np.random.default_rng(seed)
        self.add_param("W", rng.standard_normal((n_in, n_out)) * np.sqrt(2 / n_in))
        self.add_param("b", rng.standard_normal(n_out) * 0.1)
        self.n_out = n_out

    def compute_output_shape(self, input_shape):
        return (self.n_out,)

    def _forward(self, x):
        self._cache["x"] = x
        return x @ self.W + self.b

    def _backward(self, dy):
        self.grads["W"] = self._cache["x"].T @ dy
        self.grads["b"] = dy.sum(axis=0)
        return dy @ self.W.T

    def to_keras(self):
        return keras.layers.Dense(self.n_out)


class OutInAffine(GradeAffine):
    """Stores its matrix (out, in) as in PyTorch; square, so the layout has to be said."""

    keras_param_layout = {"W": "transpose"}

    def __init__(self, n, seed=0, name=None):
        super().__init__(n, n, seed=seed, name=name)

    def _forward(self, x):
        self._cache["x"] = x
        return x @ self.W.T + self.b

    def _backward(self, dy):
        self.grads["W"] = dy.T @ self._cache["x"]
        self.grads["b"] = dy.sum(axis=0)
        return dy @ self.W


def _custom_net():
    return NeuralNetwork([Convolution((None, 1, 8, 8), kernel_size=3, output_layers=2, seed=0), GradeLeakyReLU(),
                          Vectorization(), GradeAffine(72, 6), OutInAffine(6, seed=3), GradeLeakyReLU(0.2),
                          GradeAffine(6, 3, seed=1)], SoftMaxLoss(), optimizer=GradientDescent(0.05))


def test_custom_layers_with_to_keras_pass_compare_and_compare_training():
    rng = np.random.default_rng(1)
    X = rng.random((64, 1, 8, 8)).astype(np.float32)
    y = rng.integers(0, 3, 64)
    net = _custom_net()
    report = compare(net, X[:16], y[:16])
    assert report.passed, str(report)
    row = report.row(net.layers[3].name)
    assert row.kind == "GradeAffine" and row.keras.startswith("dense")
    assert set(row.checks) == {"output", "dL/dx", "dL/dW", "dL/db"}
    assert row.checks["dL/dW"].max_rel < 1e-5          # the kernel really compared (not an empty check)
    tr = compare_training(net, X, y, steps=15, batch_size=16)
    assert tr.passed, str(tr)
    assert tr.max_weight_rel < 1e-4 and len(tr.steps) == 15
    assert {w.quantity for w in tr.weights} >= {f"{net.layers[4].name}.W", f"{net.layers[3].name}.b"}


def test_the_same_layer_with_a_bug_fails_at_its_quantity():
    """OutInAffine without the transposition in backward: compare names that layer and dL/dW."""
    class WrongGrad(OutInAffine):
        def _backward(self, dy):
            dx = super()._backward(dy)
            self.grads["W"] = self.grads["W"].T.copy()           # the classic: dW transposed
            return dx

    rng = np.random.default_rng(2)
    X = rng.standard_normal((8, 5)).astype(np.float32)
    net = NeuralNetwork([GradeAffine(5, 4), WrongGrad(4, seed=1, name="wrong")], SoftMaxLoss())
    report = compare(net, X, np.arange(8) % 4)
    f = report.first_failure
    assert (f.name, f.quantity) == ("wrong", "dL/dW"), str(report)
    assert report.row(0).passed                              # the layer before it is fine


def test_to_keras_mistakes_are_explained():
    class WrongKind(GradeAffine):
        def to_keras(self):
            return "Dense"

    with pytest.raises(TypeError, match=r"to_keras\(\) must return a Keras layer or a list of Keras layers"):
        compare(WrongKind(3, 2), np.zeros((2, 3), np.float32))

    class MissingBias(GradeAffine):
        def to_keras(self):
            return keras.layers.Dense(self.n_out, use_bias=False)

    with pytest.raises(ValueError, match=r"its parameters \['W', 'b'\] must correspond, in order, to the trainable "
                                         r"variables"):
        compare(MissingBias(3, 2), np.zeros((2, 3), np.float32))

    class NoTwin(Node):
        def _forward(self, x):
            return x

        def _backward(self, dy):
            return dy

    with pytest.raises(NotImplementedError, match=r"define a method to_keras\(self\)"):
        compare(NoTwin((None, 3)), np.zeros((2, 3), np.float32))


# --- the grading entry point ---------------------------------------------------------------------------
PLANTED_CASES = [
    # class, constructor args/kwargs, input shapes, (failing check, quantity) that must be first
    ("TransposedLinear", [6, 6], {}, None, ("gradient", "dL/dW")),
    ("SoftMaxLossNoMean", [], {}, [(5,)], ("gradient", "dL/dx")),
    ("FlippedConvolution", [[None, 2, 6, 6]], {"kernel_size": 3, "output_layers": 2}, None, ("keras", "output")),
    ("ReLUNoMask", [], {}, [(3, 4, 4)], ("gradient", "dL/dx")),
    ("NHWCVectorization", [], {}, [(2, 3, 3)], ("keras", "output")),
]


@pytest.mark.parametrize("name,args,kwargs,shapes,expected", PLANTED_CASES, ids=[c[0] for c in PLANTED_CASES])
def test_grade_catches_each_planted_bug_at_its_quantity(name, args, kwargs, shapes, expected):
    cls = getattr(planted_bugs, name)
    report = grade.grade_layer(cls, args=args, kwargs=kwargs, input_shapes=shapes, steps=0)
    assert not report.passed
    first = report.failures[0]
    assert (first.check, first.quantity) == expected, str(report)
    assert name in first.layer                                  # the message names the student's layer
    keras_fail = [c for c in report.failures if c.check == "keras"]
    assert keras_fail and keras_fail[0].quantity == expected[1] and keras_fail[0].error > 1e-2
    # the correct built-in parent passes the very same grading
    parent = cls.__mro__[1]
    good = grade.grade_layer(parent, args=args, kwargs=kwargs, input_shapes=shapes, steps=0)
    assert good.passed, str(good)


def test_grade_a_correct_trainable_layer_with_training_steps():
    report = grade.grade_layer(GradeAffine, args=[5, 3], steps=5, batch=4)
    assert report.passed, str(report)
    assert [c.check for c in report.checks] == ["gradient", "keras", "keras training"]
    assert "coordinates checked" in report.checks[0].message


STUDENT = textwrap.dedent('''
    import numpy as np
    import keras
    from nn_from_scratch.interfaces import Neuron


    class Affine(Neuron):
        def __init__(self, n_in, n_out, name=None):
            super().__init__((None, n_in), name=name)
            rng = np.random.default_rng(0)
            self.add_param("W", rng.standard_normal((n_in, n_out)) * 0.5)
            self.add_param("b", np.zeros(n_out))
            self.n_out = n_out

        def compute_output_shape(self, input_shape):
            return (self.n_out,)

        def _forward(self, x):
            self._cache["x"] = x
            return x @ self.W + self.b

        def _backward(self, dy):
            self.grads["W"] = {dW}
            self.grads["b"] = dy.sum(axis=0)
            return dy @ self.W.T

        def to_keras(self):
            return keras.layers.Dense(self.n_out)
''')


def _student(tmp_path, dW):
    path = tmp_path / f"student_{abs(hash(dW)) % 1000}.py"
    path.write_text(STUDENT.format(dW=dW))
    return str(path)


def test_grade_cli_passing_student_module_exit_0_and_json(tmp_path):
    module = _student(tmp_path, "self._cache['x'].T @ dy")
    out_json = tmp_path / "grade.json"
    env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
    proc = subprocess.run([sys.executable, "-m", "nn_from_scratch", "grade", "--layer", f"{module}:Affine",
                           "--args", "[4, 4]", "--steps", "3", "--json", str(out_json)],
                          capture_output=True, text=True, env=env, timeout=600, cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "PASSED: 3 of 3 checks passed" in proc.stdout
    data = json.loads(out_json.read_text())
    assert data["passed"] is True and data["n_failed"] == 0
    assert [c["check"] for c in data["checks"]] == ["gradient", "keras", "keras training"]
    assert set(os.listdir(tmp_path)) == {os.path.basename(module), "grade.json"}      # no temporary file left


def test_grade_cli_failing_student_module_exit_1_names_layer_and_quantity(tmp_path, capsys):
    module = _student(tmp_path, "(self._cache['x'].T @ dy).T")            # transposed (square W)
    out_json = tmp_path / "grade.json"
    rc = grade.main(["--layer", f"{module}:Affine", "--args", "[4, 4]", "--steps", "0", "--json", str(out_json)])
    assert rc == 1
    text = capsys.readouterr().out
    assert "FAILED" in text and "dL/dW" in text and "(Affine)" in text
    data = json.loads(out_json.read_text())
    assert data["passed"] is False
    failing = [c for c in data["checks"] if not c["passed"]]
    assert {c["check"] for c in failing} == {"gradient", "keras"}
    assert all(c["quantity"] == "dL/dW" and "Affine" in c["layer"] for c in failing)


def test_grade_cli_usage_errors_exit_2(tmp_path, capsys):
    module = _student(tmp_path, "self._cache['x'].T @ dy")
    assert grade.main(["--layer", f"{module}:Nope"]) == 2
    assert "has no class 'Nope'" in capsys.readouterr().err
    assert grade.main(["--layer", str(tmp_path / "missing.py") + ":Affine"]) == 2
    assert "no file" in capsys.readouterr().err
    assert grade.main(["--layer", "planted_bugs:ReLUNoMask"]) == 2          # a ReLU() does not know its shape
    assert "give one or more --input-shape" in capsys.readouterr().err
    assert grade.main(["--model", str(tmp_path / "none.npz")]) == 2
    assert "no model file" in capsys.readouterr().err


def test_grade_and_crosscheck_a_saved_model(tmp_path, capsys):
    from nn_from_scratch.checks.crosscheck import cli

    good = NeuralNetwork([Convolution((None, 1, 6, 6), kernel_size=3, output_layers=2, seed=0), ReLU(),
                          Vectorization(), Linear(32, 3, seed=1)], SoftMaxLoss(), optimizer=GradientDescent(0.05))
    good.save(tmp_path / "good.npz")
    bad = NeuralNetwork([Convolution((None, 1, 6, 6), kernel_size=3, output_layers=2, seed=0),
                         planted_bugs.ReLUNoMask(), Vectorization(), Linear(32, 3, seed=1)], SoftMaxLoss())
    bad.layers[1].name = "student_relu"
    bad.save(tmp_path / "bad.npz")
    assert grade.main(["--model", str(tmp_path / "good.npz"), "--steps", "5"]) == 0
    assert "PASSED" in capsys.readouterr().out
    rc = grade.main(["--model", str(tmp_path / "bad.npz"), "--import", PLANTED, "--steps", "0",
                     "--json", str(tmp_path / "bad.json")])
    assert rc == 1
    data = json.loads((tmp_path / "bad.json").read_text())
    keras_fail = [c for c in data["checks"] if c["check"] == "keras" and not c["passed"]]
    assert keras_fail and keras_fail[0]["layer"] == "student_relu (ReLUNoMask)"
    assert keras_fail[0]["quantity"] == "dL/dx"
    capsys.readouterr()
    assert cli.main(["--model", str(tmp_path / "good.npz"), "--steps", "5", "--batch-size", "8"]) == 0
    out = capsys.readouterr().out
    assert "random data" in out and "ALL PASSED" in out
    assert cli.main(["--model", str(tmp_path / "bad.npz"), "--import", PLANTED, "--steps", "3",
                     "--batch-size", "8"]) == 1
    assert cli.main(["--model", str(tmp_path / "none.npz")]) == 2


def test_grade_a_saved_conv_bias_batchnorm_network(tmp_path, capsys):
    """A correct Conv (with bias) -> BatchNorm -> ReLU model passes every check, float32 and float64 alike
    (its convolution's bias gradient is zero in exact arithmetic: docs/CROSSCHECK.md, "Tolerances")."""
    from nn_from_scratch.layers.normalization import BatchNorm

    for dtype in (np.float32, np.float64):
        net = NeuralNetwork([Convolution((None, 1, 8, 8), kernel_size=3, output_layers=3, seed=0, dtype=dtype),
                             BatchNorm((None, 3, 6, 6), dtype=dtype), ReLU(), Vectorization(),
                             Linear(108, 4, seed=1, dtype=dtype)], SoftMaxLoss(), optimizer=GradientDescent(0.05))
        net.save(tmp_path / "bn.npz")
        assert grade.main(["--model", str(tmp_path / "bn.npz"), "--steps", "5"]) == 0, capsys.readouterr().out
        capsys.readouterr()
