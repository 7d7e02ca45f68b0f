"""Writing your own layer: what students write works, and every mistake gets an error that says what to do.

References: closed-form gradients written in the test (x.T @ dy, the leaky slope), central
differences done here by hand, and the messages' named causes.  Also the frozen randomness of
C3 (``Node.stochastic``, ``Node.fixed_randomness``) and ``gradcheck`` on a student's Dropout.
"""
import numpy as np
import pytest

from nn_from_scratch.layers.activations import ReLU
from nn_from_scratch.layers.reshape import Vectorization
from nn_from_scratch.checks.gradcheck import check_layer, check_network
from nn_from_scratch.interfaces import LayerDefinitionError, Neuron, Node, ShapeError
from nn_from_scratch.layers.losses import SoftMaxLoss
from nn_from_scratch.training.network import NeuralNetwork
from nn_from_scratch.neurons import Linear
from nn_from_scratch.optimizers import GradientDescent

TOL = 1e-7


# --- what a student writes first: forward/backward overridden directly -----------------------------
class StudentLeakyReLU(Node):
    """y = x for x > 0, slope * x otherwise (written the way students write it)."""

    def __init__(self, slope=0.1, shape=None, name=None):
        super().__init__(shape, name=name)
        self.slope = slope

    def forward(self, x):
        self.x = x
        return np.where(x > 0, x, self.slope * x)

    def backward(self, dy):
        return np.where(self.x > 0, dy, self.slope * dy)


class StudentDense(Neuron):
    """y = x @ W + b with W: (D, M), b: (M,); backward written with one argument."""

    def __init__(self, n_in, n_out, seed=0, name=None, dtype=np.float64):
        super().__init__((None, n_in), name=name, dtype=dtype)
        rng = np.random.default_rng(seed)
        self.add_param("W", rng.standard_normal((n_in, n_out)) / np.sqrt(n_in))
        self.add_param("b", np.zeros(n_out))
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


def test_forward_backward_written_directly_work_and_keep_the_checks(rng):
    layer = StudentLeakyReLU(0.1)
    x = rng.standard_normal((4, 6))
    y = layer.forward(x)
    np.testing.assert_array_equal(y, np.where(x > 0, x, 0.1 * x))
    dy = rng.standard_normal(y.shape)
    np.testing.assert_array_equal(layer.backward(dy), np.where(x > 0, dy, 0.1 * dy))
    assert layer.backward(dy, need_input_grad=False) is None
    assert check_layer(layer, x).passed(TOL)
    # the base class's checks still run in front of the student's code
    with pytest.raises(ShapeError, match="upstream gradient must have the shape of the last output"):
        layer.backward(dy[:, :3])
    fresh = StudentLeakyReLU()
    with pytest.raises(Exception, match="backward\\(\\) called before forward\\(\\)"):
        fresh.backward(dy)
    assert StudentLeakyReLU._adopted == ("forward", "backward")
    # integer input is cast to float as for every layer
    assert StudentLeakyReLU().forward(np.array([[1, -2]])).dtype == np.float32


def test_trainable_layer_with_one_argument_backward(rng):
    d = StudentDense(5, 3)
    x = rng.standard_normal((4, 5))
    y = d.forward(x)
    np.testing.assert_allclose(y, x @ d.W + d.b)
    dy = rng.standard_normal((4, 3))
    dx = d.backward(dy)
    np.testing.assert_allclose(d.W_grad, x.T @ dy)          # closed form
    np.testing.assert_allclose(d.grads["b"], dy.sum(0))
    np.testing.assert_allclose(dx, dy @ d.W.T)
    assert d.backward(dy, need_input_grad=False) is None       # first layer of a network
    assert d.count_params() == 5 * 3 + 3
    assert check_layer(d, x).passed(TOL)
    # self.W = ... replaces the registered parameter (the optimizer keeps seeing it)
    d.W = np.ones((5, 3))
    assert d.params["W"] is not None and np.all(d.params["W"] == 1)
    with pytest.raises(ShapeError, match=r"parameter 'W' must have shape \(5, 3\)"):
        d.W = np.ones((3, 5))


def test_student_layers_train_in_a_network(rng):
    X = rng.standard_normal((64, 6)).astype(np.float32)
    y = (X[:, 0] + X[:, 1] > 0).astype(int)
    layers = [StudentDense(6, 8, dtype=np.float32), StudentLeakyReLU(0.1), StudentDense(8, 2, seed=1, dtype=np.float32)]
    net = NeuralNetwork(layers=layers, loss_fn=SoftMaxLoss(), optimizer=GradientDescent(lr=0.3))
    before = net.evaluate(X, y)[0]
    net.fit(X, y, epochs=20, batch_size=16, verbose=0, seed=0)
    loss, acc = net.evaluate(X, y)
    assert loss < 0.5 * before and acc > 0.9
    assert check_network(net.astype(np.float64), X[:8], y[:8]).passed(1e-6)


# --- mistakes, each with its message --------------------------------------------------------------
def test_backward_that_wants_more_than_dy_is_refused_at_class_definition():
    with pytest.raises(LayerDefinitionError, match=r"_backward\(self, dy, x\): backward receives only dL/dy.*"
                                                   r"self\._cache.*`def _backward\(self, dy\):`"):
        class Bad(Node):  # noqa: F841
            def _forward(self, x):
                return 2 * x

            def _backward(self, dy, x):
                return 2 * dy


def test_backward_without_the_upstream_gradient_is_refused():
    with pytest.raises(LayerDefinitionError, match=r"Bad\._backward\(self\): backward receives the upstream "
                                                   r"gradient dL/dy; write `def _backward\(self, dy\):`"):
        class Bad(Node):  # noqa: F841
            def _forward(self, x):
                return 2 * x

            def _backward(self):
                return 2


def test_forward_with_two_arrays_is_refused():
    with pytest.raises(LayerDefinitionError, match=r"forward receives exactly one array, the batch x"):
        class Bad(Node):  # noqa: F841
            def _forward(self, x, w):
                return x * w

            def _backward(self, dy):
                return dy


def test_a_neuron_may_take_need_input_grad_but_a_node_may_not():
    class Fine(Neuron):  # the built-in form
        def _forward(self, x):
            return x

        def _backward(self, dy, need_input_grad=True):
            return dy

    assert Fine._backward_takes_flag
    with pytest.raises(LayerDefinitionError, match="only a Neuron gets need_input_grad"):
        class Bad(Node):  # noqa: F841
            def _forward(self, x):
                return x

            def _backward(self, dy, need_input_grad):
                return dy


class StudentFlatten(Node):
    """Forgets compute_output_shape."""

    def _forward(self, x):
        self._cache["shape"] = x.shape
        return x.reshape(len(x), -1)

    def _backward(self, dy):
        return dy.reshape(self._cache["shape"])


def test_missing_compute_output_shape_names_the_cause():
    with pytest.raises(ShapeError, match=r"StudentFlatten does not define compute_output_shape.*"
                                         r"here \(12,\) for input_shape \(3, 4\)"):
        StudentFlatten().forward(np.zeros((2, 3, 4)))
    # in a network the construction already points at it
    with pytest.raises(ShapeError, match=r"expects samples of shape \(12,\) but layer 0 \(studentflatten_\d+\) outputs "
                                         r"\(3, 4\); StudentFlatten does not define compute_output_shape"):
        NeuralNetwork(layers=[StudentFlatten((None, 3, 4)), Linear(12, 2)], loss_fn=SoftMaxLoss(),
                      optimizer=GradientDescent(0.1))


def test_wrong_compute_output_shape_is_named():
    class Half(Node):
        def compute_output_shape(self, input_shape):
            return input_shape

        def _forward(self, x):
            return x[:, ::2]

        def _backward(self, dy):
            return np.repeat(dy, 2, axis=1)

    with pytest.raises(ShapeError, match=r"into \(3,\), but Half\.compute_output_shape\(\(6,\)\) says \(6,\)"):
        Half().forward(np.zeros((2, 6)))


def test_backward_returning_the_wrong_thing():
    class NoReturn(Node):
        def _forward(self, x):
            self._cache["x"] = x
            return x * x

        def _backward(self, dy):
            self._cache["dx"] = 2 * self._cache["x"] * dy        # forgot to return it

    layer = NoReturn()
    layer.forward(np.ones((2, 3)))
    with pytest.raises(LayerDefinitionError, match="_backward returned None; it must return dL/dx"):
        layer.backward(np.ones((2, 3)))

    class SumsOverBatch(Node):
        def _forward(self, x):
            return 3 * x

        def _backward(self, dy):
            return 3 * dy.sum(axis=0)

    layer = SumsOverBatch()
    layer.forward(np.ones((2, 3)))
    with pytest.raises(ShapeError, match=r"returned dL/dx of shape \(3,\), but the input x had shape \(2, 3\)"):
        layer.backward(np.ones((2, 3)))


def test_forward_changing_the_batch_is_named():
    class Mean(Node):
        def _forward(self, x):
            return x.mean(axis=0, keepdims=True)

        def _backward(self, dy):
            return dy

    with pytest.raises(ShapeError, match="returned 1 samples for a batch of 4.*axis 0 is the batch"):
        Mean().forward(np.ones((4, 2)))


def test_parameter_gradient_missing_or_transposed(rng):
    class NoBiasGrad(StudentDense):
        def _backward(self, dy):
            self.grads["W"] = self._cache["x"].T @ dy
            return dy @ self.W.T

    layer = NoBiasGrad(4, 3)
    layer.forward(rng.standard_normal((2, 4)))
    with pytest.raises(LayerDefinitionError, match=r"stored no gradient for parameter 'b'; set self.grads\['b'\] "
                                                   r"= dL/db \(shape \(3,\)\)"):
        layer.backward(np.ones((2, 3)))

    class TransposedGrad(StudentDense):
        def _backward(self, dy):
            self.grads["W"] = dy.T @ self._cache["x"]
            self.grads["b"] = dy.sum(0)
            return dy @ self.W.T

    layer = TransposedGrad(4, 3)
    layer.forward(rng.standard_normal((2, 4)))
    with pytest.raises(ShapeError, match=r"'W' has shape \(3, 4\) but W has shape \(4, 3\) \(transposed\?\)"):
        layer.backward(np.ones((2, 3)))


def test_neuron_with_plain_attributes_and_missing_super_init():
    class PlainW(Neuron):
        def __init__(self):
            super().__init__((None, 3))
            self.W = np.ones((3, 3))

        def _forward(self, x):
            return x @ self.W

        def _backward(self, dy):
            return dy @ self.W.T

    with pytest.raises(LayerDefinitionError, match=r"has none registered: in __init__ write "
                                                   r"`self.add_param\('W', initial_array\)`"):
        PlainW().forward(np.ones((2, 3)))

    class NoSuper(Node):
        def __init__(self, k):
            self.k = k

        def _forward(self, x):
            return self.k * x

        def _backward(self, dy):
            return self.k * dy

    with pytest.raises(LayerDefinitionError, match=r"NoSuper.__init__ did not call the base class's __init__: "
                                                   r"begin it with `super\(\).__init__\(shape, name=name\)`"):
        NoSuper(2).forward(np.ones((2, 3)))


def test_a_users_class_never_replaces_a_built_in_one_for_loading():
    from nn_from_scratch.training import serialization

    class Linear(StudentDense):       # a student's class with a built-in's name
        pass

    assert serialization._REGISTRY["Linear"].__module__ == "nn_from_scratch.layers.dense"
    assert serialization._REGISTRY["StudentDense"] is StudentDense


def test_add_param_errors():
    d = StudentDense(2, 2)
    with pytest.raises(ValueError, match="already has a parameter 'W'"):
        d.add_param("W", np.zeros((2, 2)))
    with pytest.raises(ValueError, match="must be an identifier"):
        d.add_param("my weight", np.zeros(2))
    assert d.add_param("scale", [1.0, 2.0]).dtype == np.float64


# --- frozen randomness (C3) and the gradient check ----------------------------------------------
class FrozenDropout(Node):
    """A student's inverted dropout, drawing its mask through random_draw (freezable)."""

    stochastic = True

    def __init__(self, rate=0.5, seed=0, shape=None, name=None):
        super().__init__(shape, name=name)
        self.rate, self.rng = rate, np.random.default_rng(seed)

    def _mask(self, shape):
        return (self.rng.random(shape) >= self.rate) / (1 - self.rate)

    def _forward(self, x):
        mask = self.random_draw("mask", lambda: self._mask(x.shape))
        self._cache["mask"] = mask
        return x * mask

    def _backward(self, dy):
        return dy * self._cache["mask"]


class UnfrozenDropout(FrozenDropout):
    """The same, drawing a new mask at every forward, even inside fixed_randomness()."""

    def _forward(self, x):
        mask = self._mask(x.shape)
        self._cache["mask"] = mask
        return x * mask


def test_gradcheck_on_a_frozen_dropout_passes(rng):
    layer = FrozenDropout(0.5, seed=3)
    x = rng.standard_normal((4, 10))
    res = check_layer(layer, x)
    assert res.passed(TOL) and res.checked == 40 and res.problem is None
    # outside the check the mask is drawn anew at every forward
    assert not np.array_equal(layer.forward(x), layer.forward(x))


def test_gradcheck_on_an_unfrozen_dropout_says_not_deterministic(rng):
    layer = UnfrozenDropout(0.5, seed=3, name="my_dropout")
    res = check_layer(layer, rng.standard_normal((4, 10)))
    assert not res.passed(1.0) and res.checked == 0
    assert "forward of my_dropout (UnfrozenDropout) is not deterministic" in str(res)
    assert "random_draw" in str(res) and "kink" not in str(res)
    assert str(res).startswith("NOT CHECKED")

    class Noisy(Node):                       # not marked stochastic at all
        def _forward(self, x):
            return x + np.random.default_rng().standard_normal(x.shape)

        def _backward(self, dy):
            return dy

    res = check_layer(Noisy(name="noisy"), np.zeros((2, 3)))
    assert "set the class attribute stochastic = True and implement fixed_randomness()" in str(res)


def test_gradcheck_of_a_network_freezes_every_layer_and_names_the_culprit(rng):
    X = rng.standard_normal((6, 5))
    y = np.arange(6) % 3

    def net(drop):
        return NeuralNetwork(layers=[StudentDense(5, 8), drop, StudentDense(8, 3, seed=2)], loss_fn=SoftMaxLoss(),
                             optimizer=GradientDescent(0.1))

    assert check_network(net(FrozenDropout(0.3, seed=1)), X, y).passed(1e-6)
    res = check_network(net(UnfrozenDropout(0.3, seed=1, name="drop")), X, y)
    assert not res.passed(1.0) and "forward of drop (UnfrozenDropout) is not deterministic" in str(res)


def test_fixed_randomness_semantics(rng):
    x = rng.standard_normal((3, 8))
    d = FrozenDropout(0.5, seed=0)
    with d.fixed_randomness():
        a = d.forward(x)
        with d.fixed_randomness():               # nested: still the same draw
            b = d.forward(x)
        c = d.forward(2 * x)
        assert d.randomness_fixed
    np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(c, 2 * a)      # the same mask on another input
    assert not d.randomness_fixed
    with d.fixed_randomness():                   # a new context: a new draw
        e = d.forward(x)
    assert not np.array_equal(a, e)
    # on a layer without randomness it changes nothing
    assert ReLU.stochastic is False and FrozenDropout.stochastic is True
    r = ReLU()
    with r.fixed_randomness() as same:
        assert same is r
        np.testing.assert_array_equal(r.forward(x), np.maximum(x, 0))


def test_report_says_how_much_was_checked(rng):
    x = rng.standard_normal((2, 3, 4, 4))
    res = check_layer(Vectorization(), x)
    assert res.max_rel_error == 0 and res.checked == 96
    assert str(res).startswith("96 coordinates checked (x 96; 0 skipped at kinks): max relative error 0 "
                               "(analytic and numerical gradients agree in every digit)")
    at_kinks = check_layer(ReLU(), np.zeros((2, 5)))           # every coordinate on ReLU's kink
    assert at_kinks.checked == 0 and at_kinks.skipped == 10 and not at_kinks.passed(1.0)
    assert str(at_kinks).startswith("NOTHING CHECKED: all 10 coordinates sit at kinks")


def test_a_hand_rolled_difference_agrees_with_the_student_dense(rng):
    """Central differences done here, independently of gradcheck, on the student's Dense."""
    d = StudentDense(3, 2, seed=4)
    x = rng.standard_normal((5, 3))
    r = rng.standard_normal((5, 2))
    d.forward(x)
    d.backward(r)
    W = d.W
    num = np.zeros_like(W)
    for i in range(W.shape[0]):
        for j in range(W.shape[1]):
            old = W[i, j]
            W[i, j] = old + 1e-6
            plus = (d.forward(x) * r).sum()
            W[i, j] = old - 1e-6
            minus = (d.forward(x) * r).sum()
            W[i, j] = old
            num[i, j] = (plus - minus) / 2e-6
    np.testing.assert_allclose(d.W_grad, num, rtol=1e-7, atol=1e-9)


def test_a_neuron_written_with_forward_and_backward_trains(rng):
    """forward/backward overridden on a Neuron: adopted; the optimizer sees the registered weight."""
    class Scale(Neuron):
        def __init__(self, n):
            super().__init__((None, n), dtype=np.float64)
            self.add_param("s", np.ones(n))

        def forward(self, x):
            self.x = x
            return x * self.s

        def backward(self, dy):
            self.grads["s"] = (dy * self.x).sum(axis=0)
            return dy * self.s

    layer = Scale(3)
    assert Scale._adopted == ("forward", "backward") and not Scale._backward_takes_flag
    x = rng.standard_normal((5, 3))
    dy = rng.standard_normal((5, 3))
    layer.forward(x)
    assert layer.backward(dy, need_input_grad=False) is None          # dL/dx dropped, dL/ds kept
    np.testing.assert_allclose(layer.grads["s"], (dy * x).sum(axis=0))
    assert check_layer(layer, x).passed(TOL)
    GradientDescent(lr=0.5).step([layer])
    np.testing.assert_allclose(layer.s, 1 - 0.5 * layer.grads["s"])
