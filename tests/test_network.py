"""The NeuralNetwork API: fit/predict/evaluate/summary/history, analysis hooks,
divergence handling, reproducibility, and the seed lab's constructor and
attribute conventions.

References: hand-computed parameter counts, a float64 log-sum-exp written
here, float64 finite differences (``gradcheck.numerical_gradient``) and the
seed lab's own manual forward/backward loop.

Tests taking the ``backend`` fixture run on NumPy and, with a GPU, on CuPy.
Two bitwise comparisons between label forms (integer vs one-hot) run with the
fused kernels off on CuPy: the fused cross-entropy multiplies by ``1/sum`` where
the one-hot path divides by the sum, equal to rounding, not bitwise.
"""
import re
import warnings

import itertools

import numpy as np
import pytest

from engine_helpers import ThroughEngine
from nn_from_scratch.engine import conv as engine_conv

import nn_from_scratch as nf
from nn_from_scratch.checks import gradcheck as gc
from nn_from_scratch.engine import kernels
from nn_from_scratch.backend import to_numpy
from nn_from_scratch.examples import networks
from nn_from_scratch.interfaces import Neuron


def seed_lab_layers(batch_size=50, use_bias=False):
    """The seed lab's CNN, constructed exactly as the lab constructs it."""
    return networks.seed_lab_layers(batch_size, use_bias)


def seed_lab_network(batch_size=50, lr=0.5, use_bias=False):
    layers = seed_lab_layers(batch_size, use_bias)
    return nf.NeuralNetwork(n_input=28 ** 2, n_output=10, batch_size=batch_size,
                            optimizer=nf.GradientDescent(lr=lr), layers=layers,
                            loss_fn=nf.SoftMaxLoss((batch_size, 10)))


def blobs(rng, n=240, d=10, k=3, spread=0.6):
    """k well separated Gaussian clusters in d dimensions (a task an MLP learns in a few epochs)."""
    centres = 2.0 * rng.standard_normal((k, d))
    y = rng.integers(0, k, n)
    X = centres[y] + spread * rng.standard_normal((n, d))
    return X, y


def mlp(seed=0, lr=0.1, d=10, k=3, dtype=np.float32):
    return nf.NeuralNetwork([nf.Linear(d, 16, seed=seed, dtype=dtype), nf.ReLU(),
                             nf.Linear(16, k, seed=seed + 1, dtype=dtype)],
                            loss_fn=nf.SoftMaxLoss(), optimizer=nf.GradientDescent(lr))


def logsumexp_loss(logits, labels):
    """Mean softmax cross-entropy in float64 (reference written for the tests)."""
    z = np.asarray(logits, dtype=np.float64)
    m = z.max(axis=1, keepdims=True)
    lse = m[:, 0] + np.log(np.exp(z - m).sum(axis=1))
    return float(np.mean(lse - z[np.arange(len(labels)), labels]))


# ---------------------------------------------------------------- fit
def test_fit_integer_labels_learns(backend, rng):
    X, y = blobs(rng)
    net = mlp()
    loss0, acc0 = net.evaluate(X, y)
    hist = net.fit(X, y, epochs=8, batch_size=20, seed=0, verbose=0)
    loss1, acc1 = net.evaluate(X, y)
    assert hist is net.history
    assert hist.epoch == list(range(1, 9))
    assert len(hist["loss"]) == len(hist["accuracy"]) == 8
    assert hist["loss"][-1] < 0.5 * hist["loss"][0]
    assert loss1 < 0.5 * loss0 and acc1 >= 0.9
    assert len(hist.batch_loss) == 8 * 12
    assert all(type(v) is float for v in hist.batch_loss + hist["loss"] + hist["accuracy"])  # host numbers
    # the epoch loss is the size-weighted mean of its batch losses (12 batches of 20)
    assert hist["loss"][0] == pytest.approx(np.mean(hist.batch_loss[:12]), rel=1e-6)
    assert hist.stopped is None


def test_fit_one_hot_labels_equals_integer_labels(backend, rng):
    kernels.use_fused(False)  # see the module docstring (the fixture switches them back on)
    X, y = blobs(rng)
    a, b = mlp(seed=3), mlp(seed=3)
    ha = a.fit(X, y, epochs=3, batch_size=16, seed=5, verbose=0)
    hb = b.fit(X, np.eye(3)[y], epochs=3, batch_size=16, seed=5, verbose=0)
    for la, lb in zip(a.trainable_layers, b.trainable_layers):
        np.testing.assert_array_equal(to_numpy(la.W), to_numpy(lb.W))
    np.testing.assert_allclose(ha["loss"], hb["loss"], rtol=1e-6)
    assert ha["accuracy"] == hb["accuracy"]


def test_fit_prebatched_equals_the_manual_seed_lab_loop(backend, rng):
    # the seed lab's form: X (n_batches, batch, C, H, W), Y one-hot (n_batches, batch, 10)
    nb, b = 3, 6
    X = rng.random((nb, b, 1, 28, 28))
    Y = np.eye(10)[rng.integers(0, 10, (nb, b))]
    nf.set_seed(11)
    net = seed_lab_network(batch_size=b, lr=0.5)
    nf.set_seed(11)
    ref_layers = seed_lab_layers(b)
    ref_loss = nf.SoftMaxLoss((b, 10))
    for la, lb in zip(net.trainable_layers, [l for l in ref_layers if isinstance(l, Neuron)]):
        np.testing.assert_array_equal(to_numpy(la.W), to_numpy(lb.W))

    hist = net.fit(X, Y, n_epochs=2, verbose=0)

    # the same training written out by hand, batch by batch in the given order
    for _ in range(2):
        for xb, yb in zip(X, Y):
            state = backend.asarray(xb, dtype=np.float32)
            for layer in ref_layers:
                state = layer.forward(state)
            ref_loss.forward(state, yb)
            g = ref_loss.backward()
            for layer in reversed(ref_layers):
                g = layer.backward(g)
            for layer in ref_layers:
                if isinstance(layer, Neuron):
                    layer.W -= 0.5 * layer.W_grad  # SGD by hand
    for la, lb in zip(net.trainable_layers, [l for l in ref_layers if isinstance(l, Neuron)]):
        np.testing.assert_allclose(to_numpy(la.W), to_numpy(lb.W), rtol=1e-5, atol=1e-6)
    assert hist.epoch == [1, 2] and len(hist.batch_loss) == 2 * nb


def test_batch_size_in_layer_shapes_never_binds(backend, rng):
    net = seed_lab_network(batch_size=50)
    X = rng.random((7, 1, 28, 28))
    out = net.predict(X)
    assert out.shape == (7, 10)
    hist = net.fit(X, rng.integers(0, 10, 7), epochs=1, batch_size=7, verbose=0)
    assert len(hist.batch_loss) == 1
    # a ragged last batch is fine too
    hist = net.fit(rng.random((19, 1, 28, 28)), rng.integers(0, 10, 19), epochs=1, batch_size=7, verbose=0)
    assert len(hist.batch_loss) == 3
    y = net.layers[0].forward(backend.asarray(X, dtype=np.float32))
    assert y.shape == (7, 4, 26, 26)


def test_predict_without_channel_axis(backend, rng):
    # the seed lab calls predict on (batch, 28, 28) batches of a 1-channel network
    net = seed_lab_network()
    X = rng.random((50, 28, 28))
    out = net.predict(X)
    assert out.shape == (50, 10)
    np.testing.assert_array_equal(out, net.predict(X[:, None]))
    # and the result is the layers applied in order
    state = backend.asarray(X[:, None], dtype=np.float32)
    for layer in net.layers:
        state = layer.forward(state)
    np.testing.assert_allclose(out, to_numpy(state), rtol=1e-6, atol=1e-6)


def test_predict_seed_lab_accuracy_loop_runs(backend, rng):
    net = seed_lab_network()
    test_X = rng.random((3, 50, 28, 28))
    test_y = rng.integers(0, 10, (3, 50))
    correct = total = 0
    for inputs, labels in zip(test_X, test_y):
        pred = np.argmax(net.predict(inputs), axis=1)
        correct += (pred == labels).sum()
        total += len(labels)
    assert total == 150
    acc = net.evaluate(test_X.reshape(150, 1, 28, 28), test_y.reshape(150))[1]
    assert acc == pytest.approx(correct / total, abs=1e-12)


def test_evaluate_consistent_with_predict(backend, rng):
    X, y = blobs(rng, n=90)
    net = mlp(seed=2)
    net.fit(X, y, epochs=2, batch_size=10, seed=0, verbose=0)
    logits = net.predict(X)
    loss, acc = net.evaluate(X, y, batch_size=32)
    assert loss == pytest.approx(logsumexp_loss(logits, y), rel=1e-5)
    assert acc == pytest.approx(np.mean(logits.argmax(axis=1) == y), abs=1e-12)
    loss_oh, acc_oh = net.evaluate(X, np.eye(3)[y])
    assert loss_oh == pytest.approx(loss, rel=1e-5) and acc_oh == acc


def test_evaluate_mse_has_no_accuracy(backend, rng):
    net = nf.NeuralNetwork([nf.Linear(3, 2, seed=0)], loss_fn=nf.MSELoss())
    X, T = rng.standard_normal((10, 3)), rng.standard_normal((10, 2))
    loss, acc = net.evaluate(X, T)
    assert acc is None
    assert loss == pytest.approx(np.mean((net.predict(X) - T) ** 2), rel=1e-5)


def test_validation_data_and_history(backend, rng):
    X, y = blobs(rng, n=200)
    Xv, yv = X[150:], y[150:]
    net = mlp(seed=4)
    hist = net.fit(X[:150], y[:150], epochs=3, batch_size=25, validation_data=(Xv, yv), seed=1, verbose=0)
    assert set(hist.history) == {"loss", "accuracy", "val_loss", "val_accuracy"}
    assert all(len(v) == 3 for v in hist.history.values())
    vl, va = net.evaluate(Xv, yv)
    assert hist["val_loss"][-1] == pytest.approx(vl, rel=1e-6)
    assert hist["val_accuracy"][-1] == pytest.approx(va, abs=1e-12)
    assert "epochs=3" in repr(hist)


def test_summary_counts_by_hand(backend):
    net = nf.NeuralNetwork([
        nf.Convolution((None, 3, 12, 12), kernel_size=3, output_layers=5, name="c1"),            # 5*3*3*3 + 5
        nf.ReLU(name="r1"),
        nf.MaxPool((None, 5, 10, 10), name="p1"),
        nf.Convolution((None, 5, 5, 5), kernel_size=2, output_layers=4, use_bias=False, name="c2"),  # 4*5*2*2
        nf.Vectorization(name="v1"),
        nf.Linear(64, 7, name="d1"),                                                             # 64*7 + 7
        nf.Tanh(name="t1"),
        nf.Linear(7, 3, use_bias=False, name="d2"),                                              # 7*3
    ], name="handcount")
    expected = {"c1": 5 * 3 * 3 * 3 + 5, "r1": 0, "p1": 0, "c2": 4 * 5 * 2 * 2, "v1": 0,
                "d1": 64 * 7 + 7, "t1": 0, "d2": 7 * 3}
    shapes = {"c1": "(N, 5, 10, 10)", "p1": "(N, 5, 5, 5)", "c2": "(N, 4, 4, 4)", "v1": "(N, 64)",
              "d1": "(N, 7)", "d2": "(N, 3)"}
    printed = []
    text = net.summary(print_fn=printed.append)
    assert printed == [text]
    assert 'Model: "handcount"' in text
    for layer in net.layers:
        row = [line for line in text.splitlines() if line.startswith(f"{layer.name} ({type(layer).__name__})")]
        assert len(row) == 1, layer.name
        assert row[0].rstrip().endswith(f"{expected[layer.name]:,}"), row[0]
        if layer.name in shapes:
            assert shapes[layer.name] in row[0]
    total = sum(expected.values())
    assert net.count_params() == total
    assert f"Total params: {total:,}" in text and f"Trainable params: {total:,}" in text
    assert "Non-trainable params: 0" in text


def test_summary_of_the_seed_lab_network_matches_keras_count():
    # the seed notebook's Keras summary of the same model: 36 + 392 + 8010 = 8438
    text = seed_lab_network().summary(print_fn=None)
    assert re.search(r"Total params: 8,438\b", text)
    rows = [line for line in text.splitlines() if "(Convolution)" in line or "(Linear)" in line]
    assert [r.split()[-1] for r in rows] == ["36", "392", "8,010"]


def test_n_input_n_output_checked():
    with pytest.raises(nf.ShapeError, match=r"n_input=11.*\(10,\)"):
        nf.NeuralNetwork([nf.Linear(10, 3)], n_input=11)
    with pytest.raises(nf.ShapeError, match=r"n_output=4.*\(3,\)"):
        nf.NeuralNetwork([nf.Linear(10, 3)], n_output=4)


# ---------------------------------------------------------------- analysis hooks
def test_layer_outputs(backend, rng):
    net = seed_lab_network()
    X = rng.random((4, 28, 28))
    outs = net.layer_outputs(X)
    assert list(outs) == [layer.name for layer in net.layers]
    assert [o.shape for o in outs.values()] == [(4, 4, 26, 26), (4, 4, 26, 26), (4, 2, 20, 20), (4, 2, 20, 20),
                                               (4, 800), (4, 10)]
    np.testing.assert_array_equal(outs[net.layers[1].name], np.maximum(outs[net.layers[0].name], 0))
    np.testing.assert_array_equal(outs[net.layers[-1].name], net.predict(X))


def _f64_cnn():
    nf.set_seed(21)
    layers = [nf.Convolution((None, 1, 6, 6), kernel_size=3, output_layers=2, dtype=np.float64), nf.Tanh(),
              nf.Vectorization(), nf.Linear(32, 3, dtype=np.float64)]
    return nf.NeuralNetwork(layers, loss_fn=nf.SoftMaxLoss())


def test_input_gradient_of_one_output_against_finite_differences(backend, rng):
    net = _f64_cnn()
    x = rng.standard_normal((2, 6, 6))  # channel axis added by the network
    k = 1
    g = net.input_gradient(x, output_index=k)
    assert g.shape == (2, 1, 6, 6)
    num = gc.numerical_gradient(lambda v: float(net.predict(v)[:, k].sum()), x[:, None])
    np.testing.assert_allclose(g, num, rtol=1e-7, atol=1e-10)


def test_input_gradient_of_the_loss_against_finite_differences(backend, rng):
    net = _f64_cnn()
    x = rng.standard_normal((3, 1, 6, 6))
    y = rng.integers(0, 3, 3)
    g = net.input_gradient(x, y=y)
    num = gc.numerical_gradient(lambda v: net.evaluate(v, y)[0], x)
    np.testing.assert_allclose(g, num, rtol=1e-7, atol=1e-10)
    up = rng.standard_normal((3, 3))
    g_up = net.input_gradient(x, upstream=up)
    num_up = gc.numerical_gradient(lambda v: float((net.predict(v) * up).sum()), x)
    np.testing.assert_allclose(g_up, num_up, rtol=1e-7, atol=1e-10)
    with pytest.raises(ValueError, match="exactly one"):
        net.input_gradient(x, y=y, output_index=0)


def test_gradients_hook_matches_finite_differences(backend, rng):
    net = _f64_cnn()
    x = rng.standard_normal((3, 1, 6, 6))
    y = rng.integers(0, 3, 3)
    grads = net.gradients(x, y)
    lin = net.layers[-1]
    W0 = lin.W.copy()

    def loss_at(W):
        lin.W = W
        return net.evaluate(x, y)[0]

    num = gc.numerical_gradient(loss_at, to_numpy(W0))
    lin.W = W0
    np.testing.assert_allclose(grads[(lin.name, "W")], num, rtol=1e-7, atol=1e-10)


# ---------------------------------------------------------------- divergence
def test_too_high_learning_rate_warns_and_stops(backend, rng):
    X, y = blobs(rng, n=200)
    net = mlp(seed=0, lr=50.0)
    with np.errstate(all="ignore"), pytest.warns(nf.TrainingWarning, match=r"learning rate \(50\.0\)") as rec:
        hist = net.fit(X, y, epochs=20, batch_size=20, seed=0, verbose=0)
    assert hist.stopped is not None
    assert re.search(r"the loss became (nan|inf|-inf)", hist.stopped)
    assert any("training stopped" in str(w.message) for w in rec)
    assert len(hist.epoch) < 20  # it did stop early
    assert len(hist.batch_loss) < 20 * 10
    if not backend.is_gpu:  # on the CPU the failing step is not applied
        for layer in net.trainable_layers:
            assert np.all(np.isfinite(layer.W)), layer.name
    else:  # the GPU reads the loss only at refreshes: said so in the message
        assert "may already hold NaN/Inf" in hist.stopped
    # either way the recorded batch losses stop before the first non-finite one, which the message names
    assert all(np.isfinite(hist.batch_loss))
    failed = int(re.search(r"batch (\d+)", hist.stopped).group(1))
    assert len(hist.batch_loss) == 10 * (len(hist.epoch)) + failed - 1


def test_divergence_can_be_allowed(backend, rng):
    X, y = blobs(rng, n=100)
    net = mlp(seed=0, lr=50.0)
    with np.errstate(all="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        hist = net.fit(X, y, epochs=8, batch_size=10, seed=0, verbose=0, stop_on_nonfinite=False)
    assert hist.stopped is None


# ---------------------------------------------------------------- reproducibility
def _train(seed, fit_seed, rng_data):
    nf.set_seed(seed)
    net = nf.NeuralNetwork([nf.Convolution((None, 1, 8, 8), kernel_size=3, output_layers=3), nf.ReLU(),
                            nf.MaxPool((None, 3, 6, 6)), nf.Vectorization(), nf.Linear(27, 3)],
                           optimizer=nf.Adam(0.01))
    X, y = rng_data
    net.fit(X, y, epochs=2, batch_size=8, seed=fit_seed, verbose=0)
    return [p.copy() for layer in net.trainable_layers for p in layer.params.values()]


def test_same_seed_same_weights_bitwise(backend, rng):
    data = (rng.standard_normal((40, 1, 8, 8)), rng.integers(0, 3, 40))
    a = _train(7, 1, data)
    b = _train(7, 1, data)
    for pa, pb in zip(a, b):
        np.testing.assert_array_equal(to_numpy(pa), to_numpy(pb))
    c = _train(8, 1, data)    # other initial weights
    d = _train(7, 2, data)    # other shuffling order
    for other in (c, d):
        assert any(not np.array_equal(to_numpy(pa), to_numpy(po)) for pa, po in zip(a, other))


def test_per_layer_seed(backend, rng):
    l1 = nf.Linear(5, 4, seed=123)
    nf.set_seed(999)  # the global generator does not affect seeded layers
    l2 = nf.Linear(5, 4, seed=123)
    np.testing.assert_array_equal(to_numpy(l1.W), to_numpy(l2.W))
    assert not np.array_equal(to_numpy(l1.W), to_numpy(nf.Linear(5, 4, seed=124).W))
    c1 = nf.Convolution((None, 2, 5, 5), kernel_size=3, output_layers=3, seed=5)
    c2 = nf.Convolution((None, 2, 5, 5), kernel_size=3, output_layers=3, seed=5)
    np.testing.assert_array_equal(to_numpy(c1.W), to_numpy(c2.W))


# ---------------------------------------------------------------- seed lab compatibility
def test_seed_lab_import_paths():
    from nn_from_scratch.examples.simple_nn import NeuralNetwork
    from nn_from_scratch.interfaces import Neuron as N2
    from nn_from_scratch.neurons import Convolution, Linear
    from nn_from_scratch.nodes import ReLU, SoftMaxLoss, Vectorization
    from nn_from_scratch.optimizers import GradientDescent
    assert NeuralNetwork is nf.NeuralNetwork and N2 is Neuron
    assert (Convolution, Linear, ReLU, SoftMaxLoss, Vectorization, GradientDescent) == (
        nf.Convolution, nf.Linear, nf.ReLU, nf.SoftMaxLoss, nf.Vectorization, nf.GradientDescent)


def test_seed_lab_manual_loop_and_attributes(backend, rng):
    net = seed_lab_network()
    layers, loss_fn = net.layers, net.loss_fn
    example_pic = backend.asarray(rng.random((50, 1, 28, 28)))
    example_label = backend.asarray(np.eye(10)[rng.integers(0, 10, 50)])

    # the seed lab's cell, as written
    state = example_pic.copy()
    for layer in layers:
        state = layer.forward(state)
    loss = loss_fn.forward(state, example_label)
    dL_dy = loss_fn.backward()
    partial_derivative = dL_dy
    dL_dx, dL_dw = [], []
    for layer in layers[::-1]:
        partial_derivative = layer.backward(partial_derivative)
        dL_dx.append(partial_derivative)
        if isinstance(layer, Neuron):
            dL_dw.append(layer._W_pd)

    assert np.isfinite(float(loss))
    assert dL_dx[-1].shape == example_pic.shape
    assert [isinstance(layer, Neuron) for layer in layers] == [True, False, True, False, False, True]
    # _W_pd is the seed's name for W_grad
    for layer in net.trainable_layers:
        assert layer._W_pd is layer.W_grad
    assert [w.shape for w in dL_dw] == [(801, 10), (2, 4, 7, 7), (4, 1, 3, 3)]
    # the same gradients through the network's own API
    grads = net.gradients(example_pic, example_label)
    for layer, w in zip(net.trainable_layers[::-1], dL_dw):
        np.testing.assert_allclose(grads[(layer.name, "W")], to_numpy(w), rtol=1e-5, atol=1e-7)


def test_linear_augmented_weight_layout(backend, rng):
    layer = nf.Linear((50, 6), (50, 4), seed=0, dtype=np.float64)
    assert layer.W.shape == (7, 4)
    W = rng.standard_normal((7, 4))
    layer.W = W
    x = rng.standard_normal((3, 6))
    np.testing.assert_allclose(to_numpy(layer.forward(backend.asarray(x))), x @ W[1:] + W[0], rtol=1e-14, atol=1e-14)
    np.testing.assert_array_equal(to_numpy(layer.weight), W[1:])
    np.testing.assert_array_equal(to_numpy(layer.bias), W[0])
    g = rng.standard_normal((3, 4))
    dx = to_numpy(layer.backward(backend.asarray(g)))
    np.testing.assert_allclose(dx, g @ W[1:].T, rtol=1e-14)
    np.testing.assert_allclose(to_numpy(layer.W_grad)[1:], x.T @ g, rtol=1e-14)
    np.testing.assert_allclose(to_numpy(layer.W_grad)[0], g.sum(axis=0), rtol=1e-14)


def test_convolution_weight_layout(backend, rng):
    layer = nf.Convolution((50, 3, 9, 9), kernel_size=(3, 2), output_layers=5, dtype=np.float64)
    assert layer.W.shape == (5, 3, 3, 2)
    assert layer.b.shape == (5,)
    assert isinstance(layer, Neuron) and isinstance(nf.Linear(3, 2), Neuron)
    assert not isinstance(nf.ReLU(), Neuron)
    # y[n, f, i, j] = b[f] + sum_{c, u, v} W[f, c, u, v] x[n, c, i + u, j + v]  (checked at one spot)
    x = rng.standard_normal((2, 3, 9, 9))
    y = to_numpy(layer.forward(backend.asarray(x)))
    n, f, i, j = 1, 3, 4, 6
    W, b = to_numpy(layer.W), to_numpy(layer.b)
    expect = b[f] + np.sum(W[f] * x[n, :, i:i + 3, j:j + 2])
    assert y[n, f, i, j] == pytest.approx(expect, rel=1e-13)
    layer.backward(backend.asarray(rng.standard_normal(y.shape)))
    assert layer._W_pd is layer.W_grad and layer.W_grad.shape == layer.W.shape


def test_verbose_fit_reports_every_epoch(backend, rng, capsys):
    X, y = blobs(rng, n=60)
    net = mlp(seed=1)
    hist = net.fit(X, y, epochs=2, batch_size=20, validation_data=(X[:10], y[:10]), seed=0, verbose=1)
    out = capsys.readouterr()
    text = out.out + out.err
    for epoch in (1, 2):
        line = [ln for ln in text.splitlines() if ln.startswith(f"Epoch {epoch}/2, ")]
        assert len(line) == 1, text
        assert f"loss: {hist['loss'][epoch - 1]:.4f}" in line[0]
        assert f"val_accuracy: {hist['val_accuracy'][epoch - 1]:.4f}" in line[0]


def test_prebatched_integer_labels_equal_one_hot(backend, rng):
    kernels.use_fused(False)  # see the module docstring (the fixture switches them back on)
    X = rng.random((3, 5, 1, 28, 28))
    labels = rng.integers(0, 10, (3, 5))
    nets = []
    for y in (labels, np.eye(10)[labels]):
        nf.set_seed(4)
        net = seed_lab_network(batch_size=5, lr=0.1)
        net.fit(X, y, n_epochs=1, verbose=0)
        nets.append(net)
    for la, lb in zip(nets[0].trainable_layers, nets[1].trainable_layers):
        np.testing.assert_array_equal(to_numpy(la.W), to_numpy(lb.W))
    (la, aa), (lb, ab) = nets[0].evaluate(X, labels), nets[1].evaluate(X, np.eye(10)[labels])
    assert la == pytest.approx(lb, rel=1e-6) and aa == ab


def test_a_rising_loss_warns_before_it_overflows():
    """Linear regression with a step beyond the stability limit: the loss grows geometrically;
    the trainer says so (rising), then stops on the first non-finite loss."""
    rng = np.random.default_rng(0)
    X = rng.standard_normal((400, 5)).astype(np.float32)
    t = (X @ rng.standard_normal((5, 1))).astype(np.float32)
    net = nf.NeuralNetwork([nf.Linear(5, 1, seed=0)], nf.MSELoss(), nf.GradientDescent(lr=1.2))
    with pytest.warns(nf.TrainingWarning) as record:
        hist = net.fit(X, t, epochs=3, batch_size=10, verbose=0, seed=0)
    messages = [str(w.message) for w in record]
    assert any("rising" in m for m in messages), messages
    assert hist.stopped is not None and "inf" in hist.stopped
    assert all(np.isfinite(p).all() for layer in net.trainable_layers for p in layer.params.values())


def test_no_rising_warning_for_the_noise_of_a_converged_loss():
    """A trained classifier's batch losses are small and noisy (one batch 0.02, the next 0.3):
    that is no divergence, and no warning may say otherwise."""
    import warnings
    rng = np.random.default_rng(1)
    X = rng.standard_normal((2000, 10)).astype(np.float32)
    y = (X[:, 0] + 0.3 * rng.standard_normal(2000) > 0).astype(int)
    net = nf.NeuralNetwork([nf.Linear(10, 16, seed=0), nf.ReLU(), nf.Linear(16, 2, seed=1)], nf.SoftMaxLoss(),
                        nf.GradientDescent(lr=0.1))
    net.fit(X, y, epochs=5, batch_size=10, verbose=0, seed=0)
    with warnings.catch_warnings():
        warnings.simplefilter("error", nf.TrainingWarning)
        for seed in range(5):   # more training: its batch losses spread widely around a small mean
            net.fit(X, y, epochs=1, batch_size=10, verbose=0, seed=seed)
    assert net.history["loss"][-1] < 0.4


@pytest.mark.parametrize("algorithm", ["patches", "rowshift", "samplelast"])
def test_empty_batch_passes_through_every_layer(algorithm):
    """Zero samples in, zero samples out: every layer's output has the shape of a one-sample
    batch's with N = 0, the parameter gradients are exactly zero (a sum over no samples) and
    dL/dx is empty; nothing divides by N or reshapes with -1."""
    rng = np.random.default_rng(0)
    layers = networks.lenet5_layers() + [nf.Conv1D(2, 3, 3, padding=1), nf.AvgPool(ndim=1)]
    nets = [layers[:-2], layers[-2:]]
    for (net, shape), path in itertools.product(zip(nets, [(1, 28, 28), (2, 6)]), ("layer", "engine")):
        one = rng.standard_normal((1,) + shape).astype(np.float32)
        empty = one[:0]
        for layer in net:
            layer = layer if path == "layer" else ThroughEngine(layer)
            with engine_conv.settings(algorithm=algorithm):
                y1 = layer.forward(one)
                y0 = layer.forward(empty)
            assert y0.shape == (0,) + y1.shape[1:], layer
            dx = layer.backward(np.zeros_like(y0))
            assert dx.shape == empty.shape, layer
            for name, g in getattr(layer, "grads", {}).items():
                assert g.shape == layer.params[name].shape and not np.any(g), (layer, name)
            one, empty = y1, y0
