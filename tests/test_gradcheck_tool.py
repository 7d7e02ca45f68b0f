"""The gradient checker itself: it must catch wrong backward passes.

A checker that passes everything proves nothing, so each test here plants a
known bug (a transposed matrix, a 0.1 % scale error, a dropped bias gradient,
a sum where a weighted sum belongs) and requires the check to FAIL, and shows
kink skipping works at exactly the kink.  The checks of layers run on NumPy and,
with a GPU, on CuPy (``backend``): the checker must catch the same bugs there.
"""
import numpy as np
import pytest

import nn_from_scratch as nf
from nn_from_scratch.checks import gradcheck as gc
from nn_from_scratch.backend import to_numpy
from nn_from_scratch.layers.activations import Softmax

TOL = 1e-7


class TransposedLinear(nf.Linear):
    """dL/dx uses W[1:] instead of W[1:].T (only shape-correct for square layers)."""

    def _backward(self, dy, need_input_grad=True):
        super()._backward(dy, need_input_grad=False)
        return dy @ self.W[1:]


class ScaledGradLinear(nf.Linear):
    """dL/dW off by 0.1 %: small enough to train, wrong all the same."""

    def _backward(self, dy, need_input_grad=True):
        dx = super()._backward(dy, need_input_grad)
        self._grads["W"] = self._grads["W"] * 1.001
        return dx


class NoBiasGradLinear(nf.Linear):
    """Forgets the bias row of dL/dW."""

    def _backward(self, dy, need_input_grad=True):
        dx = super()._backward(dy, need_input_grad)
        self._grads["W"][0] = 0
        return dx


class SummingSoftmax(Softmax):
    """Uses mean(dy) where sum(dy * y) belongs: correct only when dy is constant along the axis."""

    def _backward(self, dy):
        y = self._cache["y"]
        return y * (dy - dy.mean(axis=self.axis, keepdims=True))


class InPlaceTanh(nf.Tanh):
    """Overwrites the upstream gradient it is given (a contract violation)."""

    def _backward(self, dy):
        y = self._cache["y"]
        dy *= 1 - y * y
        return dy


def _square_linear(cls, seed=0):
    layer = cls(5, 5, dtype=np.float64, seed=seed)
    W = to_numpy(layer.W).copy()
    W[0] = np.linspace(-1, 1, 5)  # a non-zero bias
    layer.W = W
    return layer


def test_correct_linear_passes(backend, rng):
    res = gc.check_layer(_square_linear(nf.Linear), rng.standard_normal((4, 5)), kink_tol=None)
    assert res.passed(TOL), res


def test_transposed_backward_is_caught(backend, rng):
    res = gc.check_layer(_square_linear(TransposedLinear), rng.standard_normal((4, 5)), kink_tol=None)
    assert not res.passed(TOL)
    assert res.max_rel_error > 1e-2, res
    assert res.worst[0] == "x"
    assert res.per_array["W"] <= TOL  # the parameter gradient is still right: the check localises the bug


def test_scaled_weight_gradient_is_caught(backend, rng):
    res = gc.check_layer(_square_linear(ScaledGradLinear), rng.standard_normal((4, 5)), kink_tol=None)
    assert not res.passed(TOL)
    # |1.001 a - a| / (|1.001 a| + |a|) = 0.001 / 2.001
    assert res.per_array["W"] == pytest.approx(0.001 / 2.001, rel=1e-3)
    assert res.per_array["x"] <= TOL


def test_missing_bias_gradient_is_caught(backend, rng):
    res = gc.check_layer(_square_linear(NoBiasGradLinear), rng.standard_normal((4, 5)), kink_tol=None)
    assert not res.passed(TOL)
    assert res.worst[0] == "W" and res.worst[1][0] == 0  # the bias row
    assert res.max_rel_error == pytest.approx(1.0)


def test_bug_in_a_network_is_caught(backend, rng):
    layers = [nf.Linear(4, 5, dtype=np.float64, seed=1), nf.Tanh(), ScaledGradLinear(5, 3, dtype=np.float64, seed=2)]
    net = nf.NeuralNetwork(layers, loss_fn=nf.SoftMaxLoss())
    res = gc.check_network(net, rng.standard_normal((3, 4)), rng.integers(0, 3, 3), kink_tol=None)
    assert not res.passed(TOL)
    assert res.worst[0] == f"{layers[2].name}.W"


def test_random_upstream_catches_what_all_ones_hides(backend, rng):
    x = backend.asarray(rng.standard_normal((3, 6)))
    ones = backend.xp.ones((3, 6))
    # with dy = 1 both the right and the wrong formula give 0: the bug hides
    hidden = gc.check_layer(SummingSoftmax(), x, kink_tol=None, upstream=ones)
    assert hidden.passed(TOL), hidden
    caught = gc.check_layer(SummingSoftmax(), x, kink_tol=None)  # random upstream (the default)
    assert not caught.passed(TOL)
    assert caught.max_rel_error > 1e-2
    assert gc.check_layer(Softmax(), x, kink_tol=None).passed(TOL)


def test_relu_kink_at_exactly_zero_is_skipped(backend, rng):
    x = rng.standard_normal((4, 6))
    x[0, :3] = 0.0
    x[2, 5] = 0.0
    x = backend.asarray(x)
    res = gc.check_layer(nf.ReLU(), x)
    assert res.skipped == 4
    assert res.checked == x.size - 4
    assert res.passed(1e-5), res
    # without kink skipping the centred difference at 0 is r/2 against an analytic 0
    raw = gc.check_layer(nf.ReLU(), x, kink_tol=None)
    assert raw.skipped == 0
    assert raw.max_rel_error == pytest.approx(1.0)
    assert raw.worst[1] in {(0, 0), (0, 1), (0, 2), (2, 5)}


def test_maxpool_ties_are_skipped_not_failed(backend):
    # a window of equal values: the max is a kink along every direction inside it
    x = np.arange(16, dtype=np.float64).reshape(1, 1, 4, 4)
    x[0, 0, :2, :2] = 5.0
    res = gc.check_layer(nf.MaxPool((None, 1, 4, 4)), backend.asarray(x))
    assert res.skipped == 4
    assert res.passed(1e-5), res


def test_checker_rejects_float32_layers(backend, rng):
    layer = nf.Linear(3, 2, name="lin_f32")
    with pytest.raises(ValueError, match=r"float64.*lin_f32|lin_f32.*float64"):
        gc.check_layer(layer, rng.standard_normal((2, 3)))


def test_checker_detects_a_layer_that_modifies_the_upstream_gradient(backend, rng):
    with pytest.raises(AssertionError, match="modified"):
        gc.check_layer(InPlaceTanh(), backend.asarray(rng.standard_normal((3, 4))), kink_tol=None)


def test_numerical_gradient_against_calculus(rng):
    x = rng.standard_normal((3, 4))
    a = rng.standard_normal((3, 4))

    def f(v):
        return float(np.sum(np.sin(v) * a) + 0.5 * np.sum(v ** 2))

    g = gc.numerical_gradient(f, x)
    np.testing.assert_allclose(g, np.cos(x) * a + x, rtol=1e-8, atol=1e-10)
    assert np.array_equal(x, x.copy())  # returned gradient is separate from x


def test_tiny_true_gradients_are_not_failed_by_rounding_noise(backend, rng):
    # Input column 2 barely influences the output (its weights are ~1e-9), so
    # dL/dx[:, 2] ~ 1e-9 while the outputs are O(1): the centred difference of
    # those outputs carries ~1e-12 of rounding noise, a 1e-3 "relative error"
    # that no float64 check can resolve.  The checker must discount it.
    layer = nf.Linear(4, 6, dtype=np.float64, seed=5)
    W = to_numpy(layer.W).copy()
    W[3] *= 1e-9
    layer.W = W
    x = 3 * rng.standard_normal((5, 4))
    res = gc.check_layer(layer, x, kink_tol=None)
    assert res.passed(TOL), res
    dx = to_numpy(layer.backward(backend.asarray(rng.standard_normal((5, 6)))))
    assert np.abs(dx[:, 2]).max() < 1e-7  # the column really is tiny


def test_a_one_in_a_million_scale_error_is_still_caught(backend, rng):
    class Off(nf.Linear):
        def _backward(self, dy, need_input_grad=True):
            dx = super()._backward(dy, need_input_grad)
            return dx * (1 + 1e-6)

    res = gc.check_layer(_square_linear(Off), rng.standard_normal((4, 5)), kink_tol=None)
    assert not res.passed(TOL)
    assert res.per_array["x"] == pytest.approx(1e-6 / 2, rel=0.05)


class LeakyMaskFromDy(nf.LeakyReLU):
    """Bug: the backward takes its mask from dy instead of x."""

    def _backward(self, dy):
        return np.where(dy > 0, dy, self.alpha * dy)


def test_mask_from_dy_fails_the_gradient_check_on_the_readme_input():
    """The input a user draws with default_rng(0) is not the upstream gradient the check draws."""
    rng = np.random.default_rng(0)
    x = rng.standard_normal((4, 3, 5, 5))
    assert gc.check_layer(nf.LeakyReLU(0.1), x).passed(1e-7)
    res = gc.check_layer(LeakyMaskFromDy(0.1), x)
    assert not res.passed(1e-3), str(res)
    for seed in range(3):       # whatever seed, whichever ordinary stream the user drew x from
        for x in (np.random.default_rng(seed).standard_normal((4, 3, 5, 5)),
                  np.random.default_rng([seed]).standard_normal((4, 3, 5, 5)),
                  np.random.RandomState(seed).standard_normal((4, 3, 5, 5))):
            assert not gc.check_layer(LeakyMaskFromDy(0.1), x, seed=seed).passed(1e-3)
