"""Issue 22, item 7: after a NaN/Inf stop the weights are exactly the last finite ones; learning
rates finite and > 0; divergence warned about; non-finite weights saved or loaded with a warning.

The reference for "the last finite weights" is the same network trained step by step with
``train_step`` (one process, ``workers=1``) for the batches ``fit`` applied before it stopped.
"""
import warnings

import numpy as np
import pytest

import nn_from_scratch as nf


def convnet(lr, seed=0):
    layers = [nf.Conv2D(1, 4, 3, seed=seed), nf.ReLU(), nf.MaxPool(pool_size=2), nf.Flatten(),
              nf.Linear(4 * 5 * 5, 10, seed=seed + 1)]
    return nf.NeuralNetwork(layers, nf.SoftMaxLoss(), optimizer=nf.SGD(lr), workers=1)


def params(net):
    return [p.copy() for layer in net.trainable_layers for p in layer.params.values()]


def fit_recording(net, X, y, **kw):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        hist = net.fit(X, y, verbose=0, **kw)
    return hist, [str(w.message) for w in caught if issubclass(w.category, nf.TrainingWarning)]


def lenet(lr):
    from nn_from_scratch.examples.networks import lenet5_layers
    return nf.NeuralNetwork(lenet5_layers(seed=0), nf.SoftMaxLoss(), optimizer=nf.SGD(lr), workers=1)


def test_huge_inputs_stop_with_the_last_finite_weights():
    """The issue's case: MNIST x1e6 into LeNet-5 with SGD(0.05) (before: 2,119 of 61,706 weights
    NaN after the stop).  A gradient turns non-finite while the loss is still finite: the check
    of the gradients before the update stops it."""
    from nn_from_scratch.data import datasets
    X, y = datasets.load_mnist("train")
    X, y = X[:300] * np.float32(1e6), y[:300]
    net = lenet(0.05)
    hist, msgs = fit_recording(net, X, y, epochs=2, batch_size=100, shuffle=False)
    assert hist.stopped is not None and "the last finite ones" in hist.stopped
    assert any("training stopped" in m for m in msgs)
    applied = len(hist.batch_loss)
    assert 0 < applied < 6
    ref = lenet(0.05)
    with np.errstate(all="ignore"):
        for b in range(applied):
            ref.train_step(ref._to_batch(X[100 * b:100 * b + 100]), y[100 * b:100 * b + 100])
    got, want = params(net), params(ref)
    assert all(np.isfinite(p).all() for p in got)
    for a, b in zip(got, want):
        assert np.array_equal(a, b)


def test_an_overflowing_update_is_stopped_and_said_so():
    """Finite loss and gradients, an update beyond the float range (lr = 1e38): stopped at once,
    the message says the weights now hold Inf (the one case not kept finite)."""
    rng = np.random.default_rng(1)
    X, y = rng.standard_normal((40, 4)).astype(np.float32), np.full((40, 1), 1e3, dtype=np.float32)
    net = nf.NeuralNetwork([nf.Linear(4, 1, seed=0)], nf.MSELoss(), optimizer=nf.SGD(1e38), workers=1)
    hist, msgs = fit_recording(net, X, y, epochs=2, batch_size=20)
    assert hist.stopped is not None and "update itself overflowed" in hist.stopped
    assert len(hist.batch_loss) == 1 and not all(np.isfinite(p).all() for p in params(net))


def test_one_batch_per_epoch_does_not_end_normally_with_nonfinite_weights():
    """Before: with one batch per epoch ``fit`` returned normally, weights Inf/NaN, no warning."""
    rng = np.random.default_rng(2)
    X = rng.standard_normal((100, 4)).astype(np.float32)
    y = (X @ rng.standard_normal((4, 1))).astype(np.float32)
    net = nf.NeuralNetwork([nf.Linear(4, 1, seed=0)], nf.MSELoss(), optimizer=nf.SGD(1.5), workers=1)
    hist, msgs = fit_recording(net, X, y, epochs=500, batch_size=100)
    assert hist.stopped is not None and len(hist.epoch) < 500
    assert any("diverging" in m for m in msgs) and any("training stopped" in m for m in msgs)
    assert all(np.isfinite(p).all() for p in params(net))


def test_a_loss_rising_by_orders_of_magnitude_is_warned_about():
    """Least squares with a step size past 2/lambda_max: the loss grows geometrically from the
    first batches, where the start level of the rise check would hide it."""
    rng = np.random.default_rng(3)
    X = rng.standard_normal((400, 4)).astype(np.float32)
    y = (X @ rng.standard_normal((4, 1))).astype(np.float32)
    net = nf.NeuralNetwork([nf.Linear(4, 1, seed=0)], nf.MSELoss(), optimizer=nf.SGD(1.5), workers=1)
    hist, msgs = fit_recording(net, X, y, epochs=1, batch_size=20, shuffle=False)
    assert hist.batch_loss[-1] > 1e4 * hist.batch_loss[0]
    assert any("diverging" in m and "orders of magnitude" in m for m in msgs), msgs
    calm = nf.NeuralNetwork([nf.Linear(4, 1, seed=0)], nf.MSELoss(), optimizer=nf.SGD(0.05), workers=1)
    _, msgs = fit_recording(calm, X, y, epochs=1, batch_size=20, shuffle=False)
    assert not any("diverging" in m for m in msgs)


@pytest.mark.parametrize("lr,exc,text", [(float("inf"), ValueError, "must be finite, received inf"),
                                         (float("nan"), ValueError, "must be > 0, received nan"),
                                         (0.0, ValueError, "must be > 0, received 0.0"),
                                         (-1e-3, ValueError, "must be > 0, received -0.001"),
                                         ("0.1", TypeError, "must be a number"),
                                         (True, TypeError, "must be a number"),
                                         (None, TypeError, "must be a number")])
@pytest.mark.parametrize("cls", [nf.SGD, nf.Adam, nf.RMSProp])
def test_learning_rates_must_be_finite_and_positive(cls, lr, exc, text):
    with pytest.raises(exc, match=cls.__name__ if cls is not nf.SGD else "GradientDescent") as err:
        cls(lr=lr)
    assert text in str(err.value) and "learning rate" in str(err.value)


def test_saving_and_loading_nonfinite_weights_warns(tmp_path):
    net = convnet(0.1)
    net.layers[0].params["W"][0, 0, 0, 0] = np.nan
    path = str(tmp_path / "nan.npz")
    with pytest.warns(nf.TrainingWarning, match=r"saving .*nan.npz.*\['layer0/W'\] hold NaN/Inf"):
        net.save(path)
    with pytest.warns(nf.TrainingWarning, match=r"loading .*nan.npz.*\['layer0/W'\] hold NaN/Inf"):
        loaded = nf.NeuralNetwork.load(path)
    assert np.isnan(loaded.layers[0].W[0, 0, 0, 0])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        convnet(0.1).save(str(tmp_path / "fine.npz"))
