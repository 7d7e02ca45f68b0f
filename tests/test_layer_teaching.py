"""Whose class is a student's: ``layers/teaching.is_package_class`` (the adoption of ``forward``/
``backward`` and the teaching checks are for classes defined outside this package).

A student's package whose name merely starts with the package's (``nn_from_scratch_lab``) is a
student's: it gets the adoption and the teaching messages, not Python's bare abstract-class error.
"""
import importlib
import sys
import textwrap

import numpy as np
import pytest

from nn_from_scratch.layers import LayerDefinitionError, Linear, Node
from nn_from_scratch.layers.teaching import is_package_class

LAB_MODULE = textwrap.dedent('''
    import numpy as np
    from nn_from_scratch.interfaces import Neuron, Node


    class Double(Node):
        """y = 2 x, written as a student writes it first: public forward/backward."""

        def forward(self, x):
            return 2 * x

        def backward(self, dy):
            return 2 * dy


    class NoParams(Neuron):
        """A Neuron that sets self.W instead of registering it with add_param."""

        def __init__(self):
            super().__init__((None, 3))
            self.W = np.ones((3, 3))

        def _forward(self, x):
            return x @ self.W

        def _backward(self, dy, need_input_grad=True):
            return dy @ self.W.T
''')


@pytest.fixture
def lab_package(tmp_path, monkeypatch):
    pkg = tmp_path / "nn_from_scratch_lab"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "layers.py").write_text(LAB_MODULE)
    monkeypatch.syspath_prepend(str(tmp_path))
    yield importlib.import_module("nn_from_scratch_lab.layers")
    for name in [n for n in sys.modules if n == "nn_from_scratch_lab" or n.startswith("nn_from_scratch_lab.")]:
        del sys.modules[name]


def test_a_package_named_like_ours_is_a_students(lab_package):
    Double = lab_package.Double
    assert not is_package_class(Double) and Double._user_layer
    assert Double._adopted == ("forward", "backward")          # adopted, not an abstract-class error
    x = np.arange(6, dtype=np.float64).reshape(2, 3)
    np.testing.assert_array_equal(Double().forward(x), 2 * x)
    np.testing.assert_array_equal(Double().forward(np.array([[1, 2]])), [[2.0, 4.0]])   # int input cast
    layer = Double()
    layer.forward(x)
    with pytest.raises(ValueError, match="upstream gradient must have the shape"):
        layer.backward(np.ones((2, 2)))                         # the base class's checks run first


def test_a_students_neuron_without_add_param_gets_the_teaching_message(lab_package):
    with pytest.raises(LayerDefinitionError, match="add_param"):
        lab_package.NoParams().forward(np.ones((2, 3)))


def test_the_packages_own_classes_are_the_packages():
    assert is_package_class(Linear) and is_package_class(Node) and not Linear._user_layer

    class Local(Node):             # defined in this test module: a user's
        def _forward(self, x):
            return x

        def _backward(self, dy):
            return dy
    assert not is_package_class(Local) and Local._user_layer
    for module, expected in [("nn_from_scratch", True), ("nn_from_scratch.layers.dense", True),
                             ("nn_from_scratch_lab", False), ("nn_from_scratch_lab.layers", False),
                             ("nn_from_scratchy", False), ("", False)]:
        cls = type("Probe", (), {"__module__": module})
        assert is_package_class(cls) is expected, module
