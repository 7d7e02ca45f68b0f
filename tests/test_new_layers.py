"""LeakyReLU, ELU, GELU, Softplus, GlobalAveragePooling, BinaryCrossEntropy, Huber, MAE
(and Dropout/BatchNorm inside the Keras cross-check).

References: formulas written here (SciPy's erf, NumPy's log1p), float64 centred differences
with random upstream gradients (``gradcheck``), and Keras through ``crosscheck.compare`` (every
output and gradient, both modes) and ``compare_training``.
"""
import numpy as np
import pytest
from scipy.special import erf

import nn_from_scratch as nf
from nn_from_scratch.checks import gradcheck as gc

ACTIVATIONS = [
    (lambda: nf.LeakyReLU(0.2), lambda x: np.where(x > 0, x, 0.2 * x)),
    (lambda: nf.LeakyReLU(), lambda x: np.where(x > 0, x, 0.3 * x)),
    (lambda: nf.ELU(), lambda x: np.where(x > 0, x, np.exp(x) - 1)),
    (lambda: nf.ELU(0.5), lambda x: np.where(x > 0, x, 0.5 * (np.exp(x) - 1))),
    (lambda: nf.GELU(), lambda x: 0.5 * x * (1 + erf(x / np.sqrt(2)))),
    (lambda: nf.GELU(approximate=True),
     lambda x: 0.5 * x * (1 + np.tanh(np.sqrt(2 / np.pi) * (x + 0.044715 * x ** 3)))),
    (lambda: nf.Softplus(), lambda x: np.log(1 + np.exp(x))),
]


@pytest.mark.parametrize("make,formula", ACTIVATIONS)
def test_activation_forward_and_gradient(make, formula, rng):
    x = 2 * rng.standard_normal((4, 3, 5))
    layer = make()
    np.testing.assert_allclose(layer.forward(x), formula(x), rtol=1e-13, atol=1e-15)
    res = gc.check_layer(make(), x, kink_tol=None)     # no entry within eps of the kinks at 0
    assert res.checked == x.size and res.max_rel_error <= 1e-7, res


@pytest.mark.parametrize("make,formula", ACTIVATIONS)
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_activation_dtype(make, formula, dtype, rng):
    x = rng.standard_normal((3, 4)).astype(dtype)
    layer = make()
    y = layer.forward(x)
    assert y.dtype == dtype and layer.backward(np.ones_like(y)).dtype == dtype
    np.testing.assert_allclose(y, formula(x.astype(np.float64)), rtol=1e-5 if dtype == np.float32 else 1e-13,
                               atol=1e-6 if dtype == np.float32 else 1e-15)


def test_kinks_take_the_left_slope_as_tensorflow():
    x = np.zeros((1, 2))
    for layer, slope in ((nf.LeakyReLU(0.2), 0.2), (nf.ELU(0.5), 0.5)):
        layer.forward(x)
        np.testing.assert_array_equal(layer.backward(np.ones((1, 2))), [[slope, slope]])


def test_softplus_never_overflows():
    x = np.array([[-1e4, -50.0, 0.0, 50.0, 1e4]])
    layer = nf.Softplus()
    y = layer.forward(x)
    np.testing.assert_allclose(y, [[0.0, np.log1p(np.exp(-50.0)), np.log(2), 50 + np.log1p(np.exp(-50.0)), 1e4]],
                               rtol=1e-15, atol=1e-300)
    np.testing.assert_allclose(layer.backward(np.ones_like(x)), [[0, 1 / (1 + np.exp(50)), 0.5,
                                                                  1 / (1 + np.exp(-50)), 1]], rtol=1e-15)


@pytest.mark.parametrize("shape", [(2, 3, 7), (2, 3, 4, 5), (2, 2, 3, 4, 2)])
def test_global_average_pooling(shape, rng):
    x = rng.standard_normal(shape)
    layer = nf.GlobalAveragePooling()
    np.testing.assert_allclose(layer.forward(x), x.reshape(shape[0], shape[1], -1).mean(axis=2), rtol=1e-14)
    res = gc.check_layer(nf.GlobalAveragePooling(), x, kink_tol=None)
    assert res.max_rel_error <= 1e-7, res
    alias = {3: nf.GlobalAveragePooling1D, 4: nf.GlobalAveragePooling2D, 5: nf.GlobalAveragePooling3D}[len(shape)]
    assert alias((None,) + shape[1:]).output_shape == (shape[1],)
    np.testing.assert_array_equal(alias().forward(x), layer.forward(x))


def test_global_average_pooling_bad_input():
    with pytest.raises(nf.ShapeError, match=r"GlobalAveragePooling2D layer .* expects \(N, C, \*S\) input with 2 "
                                            r"spatial axes, received \(2, 3, 4\)"):
        nf.GlobalAveragePooling2D().forward(np.zeros((2, 3, 4)))
    with pytest.raises(nf.ShapeError, match=r"1-3 spatial axes, received \(2, 3\)"):
        nf.GlobalAveragePooling().forward(np.zeros((2, 3)))
    with pytest.raises(ValueError, match=r"ndim must be 1, 2, 3 or None, received 4"):
        nf.GlobalAveragePooling(ndim=4)


# ------------------------------------------------------------------ losses
def _sigmoid(z):
    return 1 / (1 + np.exp(-z))


LOSSES = [
    (lambda: nf.BinaryCrossEntropy(), "bin",
     lambda z, t: np.mean(-t * np.log(_sigmoid(z)) - (1 - t) * np.log(1 - _sigmoid(z)))),
    (lambda: nf.BinaryCrossEntropy(from_logits=False), "prob",
     lambda p, t: np.mean(-t * np.log(p) - (1 - t) * np.log(1 - p))),
    (lambda: nf.Huber(0.7), "real",
     lambda y, t: np.mean(np.where(np.abs(y - t) <= 0.7, 0.5 * (y - t) ** 2, 0.7 * (np.abs(y - t) - 0.35)))),
    (lambda: nf.Huber(), "real",
     lambda y, t: np.mean(np.where(np.abs(y - t) <= 1, 0.5 * (y - t) ** 2, np.abs(y - t) - 0.5))),
    (lambda: nf.MAE(), "real", lambda y, t: np.mean(np.abs(y - t))),
]


def _pair(kind, rng, shape=(6, 4)):
    if kind == "bin":
        return 2 * rng.standard_normal(shape), rng.uniform(0, 1, shape)
    if kind == "prob":
        return rng.uniform(0.05, 0.95, shape), rng.integers(0, 2, shape).astype(np.float64)
    return 2 * rng.standard_normal(shape), rng.standard_normal(shape)


@pytest.mark.parametrize("make,kind,formula", LOSSES)
def test_loss_value_and_gradient(make, kind, formula, rng):
    y, t = _pair(kind, rng)
    assert float(make().forward(y, t)) == pytest.approx(formula(y, t), rel=1e-13)
    res = gc.check_loss(make(), y, t)
    assert res.checked == y.size and res.max_rel_error <= 1e-7, res


def test_binary_cross_entropy_from_huge_logits_is_finite_and_exact():
    z = np.array([[1e4], [-1e4], [30.0], [-30.0]])
    t = np.array([0.0, 1.0, 1.0, 0.0])                     # (N,) targets for an (N, 1) prediction
    loss = nf.BinaryCrossEntropy()
    value = float(loss.forward(z, t))
    assert value == pytest.approx((1e4 + 1e4 + 2 * np.log1p(np.exp(-30.0))) / 4, rel=1e-15)
    np.testing.assert_allclose(loss.backward(), [[0.25], [-0.25], [(_sigmoid(30) - 1) / 4], [_sigmoid(-30) / 4]],
                               rtol=1e-12)


def test_probabilities_are_clipped_as_keras_clips_them():
    loss = nf.BinaryCrossEntropy(from_logits=False)
    value = float(loss.forward(np.array([[0.0], [1.0]]), np.array([[1.0], [0.0]])))
    assert value == pytest.approx(-np.log(1e-7), rel=1e-9)
    np.testing.assert_array_equal(loss.backward(), [[0.0], [0.0]])     # the clip's gradient is 0, as in Keras


@pytest.mark.parametrize("make,msg,args", [
    (lambda: nf.BinaryCrossEntropy(), r"targets must be probabilities in \[0, 1\] .* received values in "
                                      r"\[0.0, 2.0\]", (np.zeros((2, 1)), np.array([[0.0], [2.0]]))),
    (lambda: nf.BinaryCrossEntropy(from_logits=False), r"with from_logits=False the predictions must be "
                                                       r"probabilities", (np.array([[3.0]]), np.array([[1.0]]))),
    (lambda: nf.Huber(), r"targets must have the prediction's shape \(2, 3\), received \(2, 4\)",
     (np.zeros((2, 3)), np.zeros((2, 4)))),
])
def test_bad_loss_inputs_are_named(make, msg, args):
    with pytest.raises((ValueError, nf.ShapeError), match=msg):
        make().forward(*args)


@pytest.mark.parametrize("make,msg", [
    (lambda: nf.LeakyReLU(-0.1), r"LeakyReLU layer .*: alpha must be a finite number >= 0, received -0.1"),
    (lambda: nf.LeakyReLU(float("nan")), r"alpha must be a finite number"),
    (lambda: nf.ELU("1"), r"ELU layer .*: alpha must be"),
    (lambda: nf.GELU(approximate="tanh"), r"GELU layer .*: approximate must be True \(tanh\) or False \(erf\), "
                                          r"received 'tanh'"),
    (lambda: nf.Huber(0), r"Huber layer .*: delta must be a finite number > 0, received 0"),
    (lambda: nf.BinaryCrossEntropy(from_logits="yes"), r"from_logits must be True or False"),
])
def test_bad_arguments_are_named(make, msg):
    with pytest.raises(ValueError, match=msg):
        make()


# ------------------------------------------------------------------ Keras cross-check
def all_new_layers(rng):
    layers = [nf.Convolution((None, 2, 6, 6), kernel_size=3, output_layers=4, use_bias=False, dtype=np.float64,
                             seed=1),
              nf.BatchNorm((None, 4, 4, 4), dtype=np.float64, momentum=0.9), nf.LeakyReLU(0.2), nf.ELU(0.8),
              nf.GELU(), nf.GELU(approximate=True), nf.Softplus(), nf.GlobalAveragePooling2D(),
              nf.Dropout(0.4, seed=3), nf.Linear(4, 5, dtype=np.float64, seed=2), nf.BatchNorm(5, dtype=np.float64),
              nf.Dropout(0.3, seed=4), nf.Linear(5, 3, dtype=np.float64, seed=5)]
    layers[1].set_params(gamma=rng.uniform(0.5, 2, 4), beta=rng.standard_normal(4))
    layers[1].set_buffers(moving_mean=rng.standard_normal(4), moving_variance=rng.uniform(0.5, 2, 4))
    return layers


@pytest.mark.parametrize("training", [True, False])
def test_keras_cross_check_of_every_new_layer_and_loss(training, rng):
    pytest.importorskip("tensorflow")
    from nn_from_scratch.checks.crosscheck import compare
    layers = all_new_layers(rng)
    for layer in layers:
        layer.training = training
    x = rng.standard_normal((6, 2, 6, 6))
    cases = [(None, None), (nf.SoftMaxLoss(), rng.integers(0, 3, 6)),
             (nf.BinaryCrossEntropy(), rng.integers(0, 2, (6, 3)).astype(np.float64)),
             (nf.Huber(0.7), rng.standard_normal((6, 3))), (nf.MAE(), rng.standard_normal((6, 3)))]
    for loss, y in cases:
        report = compare(layers + ([loss] if loss is not None else []), x, y)
        assert report.passed, report
        bn = report.row(layers[1].name)
        assert "dL/dgamma" in bn.checks and "dL/dbeta" in bn.checks
    # the Dropout rows really dropped when training (the Keras side used our masks)
    with layers[8].fixed_randomness():
        out = layers[8].forward(np.ones((6, 4)))
    assert (out == 0).any() == training


def test_keras_cross_check_of_probability_cross_entropy(rng):
    pytest.importorskip("tensorflow")
    from nn_from_scratch.checks.crosscheck import compare
    layers = [nf.Linear(4, 3, dtype=np.float64, seed=0), nf.Sigmoid()]
    report = compare(layers + [nf.BinaryCrossEntropy(from_logits=False)], rng.standard_normal((5, 4)),
                     rng.integers(0, 2, (5, 3)).astype(np.float64))
    assert report.passed, report


def test_keras_training_side_by_side_with_batchnorm_and_dropout(rng):
    """Same weights, batches and (through MaskedDropout) masks: the weights stay together step after step."""
    pytest.importorskip("tensorflow")
    from nn_from_scratch.checks.crosscheck import compare_training
    # no bias before the BatchNorm: its gradient is 0 up to rounding noise, which Adam would
    # turn into full-size steps of either sign (in both frameworks, differently)
    layers = [nf.Linear(6, 8, seed=0, dtype=np.float64, use_bias=False), nf.BatchNorm(8, dtype=np.float64, momentum=0.9),
              nf.GELU(), nf.Dropout(0.3, seed=2), nf.Linear(8, 3, seed=1, dtype=np.float64)]
    net = nf.NeuralNetwork(layers, loss_fn=nf.SoftMaxLoss(), optimizer=nf.Adam(1e-2))
    X, y = rng.standard_normal((48, 6)), rng.integers(0, 3, 48)
    report = compare_training(net, X, y, steps=6, batch_size=16)
    assert report.passed, report


# ------------------------------------------------------------------ saving
def test_save_load_round_trip_of_every_new_layer(tmp_path, rng):
    layers = all_new_layers(rng)
    net = nf.NeuralNetwork(layers, loss_fn=nf.Huber(0.5), input_shape=(2, 6, 6))
    X, y = rng.standard_normal((8, 2, 6, 6)), rng.standard_normal((8, 3))
    net.fit(X, y, epochs=1, batch_size=4, verbose=0)
    path = str(tmp_path / "all.npz")
    net.save(path)
    back = nf.NeuralNetwork.load(path)
    assert [type(a) for a in back.layers] == [type(b) for b in net.layers]
    assert [a.get_config() for a in back.layers] == [b.get_config() for b in net.layers]
    assert isinstance(back.loss_fn, nf.Huber) and back.loss_fn.delta == 0.5
    np.testing.assert_array_equal(back.predict(X), net.predict(X))
    for loss in (nf.BinaryCrossEntropy(from_logits=False), nf.MAE()):
        other = nf.NeuralNetwork([nf.Linear(3, 1, seed=0)], loss_fn=loss)
        other.save(path)
        assert nf.NeuralNetwork.load(path).loss_fn.get_config() == loss.get_config()
