"""Bad input raises a clear error naming the layer, what was expected and what was received.

Every test asserts on the message content, not just the exception type: a
student has to be able to fix the call from the message alone.
"""
import os
import re

import numpy as np
import pytest

import nn_from_scratch as nf
from nn_from_scratch.examples import networks
from nn_from_scratch.interfaces import NotReadyError
from nn_from_scratch.training.serialization import ModelFileError


def _seed_lab_network(batch_size=50):
    """The seed lab's CNN, built exactly as the lab builds it."""
    return networks.seed_lab_cnn(batch_size, optimizer=nf.GradientDescent(lr=0.5))


def _mlp():
    return nf.NeuralNetwork([nf.Linear(4, 6, name="hidden"), nf.ReLU(name="act"), nf.Linear(6, 3, name="out")],
                            loss_fn=nf.SoftMaxLoss(), optimizer=nf.GradientDescent(0.1))


# ------------------------------------------------------------ layer input shapes
def test_linear_wrong_input_width():
    layer = nf.Linear(7, 5, name="fc7")
    with pytest.raises(nf.ShapeError) as err:
        layer.forward(np.zeros((3, 6)))
    msg = str(err.value)
    assert "Linear" in msg and "'fc7'" in msg
    assert "(N, 7)" in msg and "(3, 6)" in msg


def test_linear_given_images():
    layer = nf.Linear(784, 10, name="fc")
    with pytest.raises(nf.ShapeError) as err:
        layer.forward(np.zeros((2, 1, 28, 28)))
    msg = str(err.value)
    assert "'fc'" in msg and "(N, 784)" in msg and "(2, 1, 28, 28)" in msg


def test_activation_with_declared_shape_checks_it():
    layer = nf.ReLU((50, 4, 26, 26), name="relu_a")
    with pytest.raises(nf.ShapeError) as err:
        layer.forward(np.zeros((2, 4, 26, 25)))
    msg = str(err.value)
    assert "ReLU" in msg and "'relu_a'" in msg and "(N, 4, 26, 26)" in msg and "(2, 4, 26, 25)" in msg


def test_convolution_wrong_number_of_channels():
    layer = nf.Convolution((50, 3, 28, 28), kernel_size=3, output_layers=4, name="conv_rgb")
    with pytest.raises(nf.ShapeError) as err:
        layer.forward(np.zeros((2, 1, 28, 28)))
    msg = str(err.value)
    assert "Convolution" in msg and "'conv_rgb'" in msg
    assert re.search(r"expects 3 input channel", msg) and "received 1" in msg
    assert "(2, 1, 28, 28)" in msg


def test_convolution_missing_channel_axis():
    layer = nf.Convolution((50, 1, 28, 28), kernel_size=3, output_layers=4, name="conv_gray")
    with pytest.raises(nf.ShapeError) as err:
        layer.forward(np.zeros((2, 28, 28)))
    msg = str(err.value)
    assert "'conv_gray'" in msg and "4-d" in msg and "(2, 28, 28)" in msg


def test_convolution_wrong_spatial_size():
    layer = nf.Convolution((50, 1, 28, 28), kernel_size=3, output_layers=4, name="conv_s")
    with pytest.raises(nf.ShapeError) as err:
        layer.forward(np.zeros((2, 1, 27, 28)))
    msg = str(err.value)
    assert "'conv_s'" in msg and "(N, 1, 28, 28)" in msg and "(2, 1, 27, 28)" in msg


def test_kernel_larger_than_input():
    with pytest.raises(nf.ShapeError) as err:
        nf.Convolution((None, 1, 4, 4), kernel_size=5, output_layers=2, name="big_kernel")
    msg = str(err.value)
    assert "big_kernel" in msg and "(4, 4)" in msg and "(5, 5)" in msg


def test_pooling_wrong_rank():
    layer = nf.MaxPool((None, 2, 6, 6), name="pool_a")
    with pytest.raises(nf.ShapeError) as err:
        layer.forward(np.zeros((2, 6, 6)))
    msg = str(err.value)
    assert "MaxPool" in msg and "'pool_a'" in msg and "(2, 6, 6)" in msg


def test_wrong_upstream_gradient_shape(rng):
    layer = nf.Linear(4, 3, name="fc_up")
    layer.forward(rng.standard_normal((5, 4)))
    with pytest.raises(nf.ShapeError) as err:
        layer.backward(rng.standard_normal((5, 4)))
    msg = str(err.value)
    assert "'fc_up'" in msg and "(5, 3)" in msg and "(5, 4)" in msg


def test_network_with_mismatched_neighbours():
    with pytest.raises(nf.ShapeError) as err:
        nf.NeuralNetwork([nf.Vectorization((None, 2, 15, 15)), nf.Linear(400, 10, name="head")])
    msg = str(err.value)
    assert "head" in msg and "(400,)" in msg and "(450,)" in msg


# ------------------------------------------------------------ backward before forward
@pytest.mark.parametrize("make", [
    lambda: nf.ReLU(name="never_run"),
    lambda: nf.Linear(3, 2, name="never_run"),
    lambda: nf.Convolution((None, 1, 5, 5), kernel_size=3, output_layers=2, name="never_run"),
    lambda: nf.MaxPool(name="never_run"),
])
def test_backward_before_forward(make):
    layer = make()
    with pytest.raises(NotReadyError) as err:
        layer.backward(np.zeros((2, 2)))
    msg = str(err.value)
    assert "never_run" in msg and type(layer).__name__ in msg and "before forward" in msg


def test_loss_backward_before_forward():
    with pytest.raises(NotReadyError, match=r"SoftMaxLoss layer 'loss_x'.*before forward"):
        nf.SoftMaxLoss(name="loss_x").backward()


def test_backward_after_clear_cache(rng):
    layer = nf.Tanh(name="cleared")
    layer.forward(rng.standard_normal((2, 3)))
    layer.clear_cache()
    with pytest.raises(NotReadyError, match="cleared"):
        layer.backward(rng.standard_normal((2, 3)))


# ------------------------------------------------------------ labels
@pytest.mark.parametrize("labels,lo,hi", [([0, 4, 1], 0, 4), ([0, -1, 1], -1, 1)])
def test_softmax_loss_labels_out_of_range(labels, lo, hi):
    loss = nf.SoftMaxLoss(name="ce")
    with pytest.raises(ValueError) as err:
        loss.forward(np.zeros((3, 4)), np.array(labels))
    msg = str(err.value)
    assert "SoftMaxLoss" in msg and "'ce'" in msg
    assert "[0, 4)" in msg and f"[{lo}, {hi}]" in msg


def test_softmax_loss_label_count_mismatch():
    with pytest.raises(nf.ShapeError) as err:
        nf.SoftMaxLoss(name="ce").forward(np.zeros((3, 4)), np.array([0, 1]))
    msg = str(err.value)
    assert "'ce'" in msg and "2 labels" in msg and "3 predictions" in msg


def test_softmax_loss_one_hot_of_wrong_width():
    with pytest.raises(nf.ShapeError) as err:
        nf.SoftMaxLoss(name="ce").forward(np.zeros((3, 4)), np.zeros((3, 5)))
    msg = str(err.value)
    assert "'ce'" in msg and "(3, 4)" in msg and "(3, 5)" in msg


def test_softmax_loss_fractional_labels():
    with pytest.raises(ValueError, match=r"'ce'.*whole numbers"):
        nf.SoftMaxLoss(name="ce").forward(np.zeros((3, 4)), np.array([0.5, 1.0, 2.0]))


def test_mse_loss_target_shape():
    with pytest.raises(nf.ShapeError) as err:
        nf.MSELoss(name="mse").forward(np.zeros((3, 2)), np.zeros((3, 3)))
    msg = str(err.value)
    assert "'mse'" in msg and "(3, 2)" in msg and "(3, 3)" in msg


@pytest.mark.parametrize("labels,lo,hi", [([0, 1, 2, 3, 0], 0, 3), ([0, -2, 1, 1, 0], -2, 1)])
def test_fit_labels_out_of_range(labels, lo, hi):
    net = _mlp()
    with pytest.raises(nf.DataError) as err:
        net.fit(np.zeros((5, 4)), np.array(labels), verbose=0)
    msg = str(err.value)
    assert msg.startswith("fit") and "[0, 3)" in msg and f"[{lo}, {hi}]" in msg and "3 outputs" in msg


def test_fit_one_hot_labels_of_wrong_width():
    with pytest.raises(nf.DataError) as err:
        _mlp().fit(np.zeros((5, 4)), np.eye(4)[[0, 1, 2, 1, 0]], verbose=0)
    msg = str(err.value)
    assert "fit" in msg and "(N, 3)" in msg and "(5, 4)" in msg


def test_fit_nan_in_labels():
    Y = np.eye(3)[[0, 1, 2, 1, 0]]
    Y[3, 1] = np.nan
    with pytest.raises(nf.DataError, match=r"fit \(labels\).*1 NaN"):
        _mlp().fit(np.zeros((5, 4)), Y, verbose=0)


# ------------------------------------------------------------ lengths
def test_fit_flat_length_mismatch():
    with pytest.raises(nf.DataError) as err:
        _mlp().fit(np.zeros((5, 4)), np.array([0, 1, 2, 1]), verbose=0)
    msg = str(err.value)
    assert "5 samples" in msg and "4 labels" in msg


def test_fit_prebatched_batch_count_mismatch_like_the_seed_lab(rng):
    # the seed lab cut 1000 images into 20 batches of 50 but all 60000 labels
    # into 1200 batches: the mistake must be reported with both numbers
    net = _seed_lab_network()
    X = rng.random((20, 50, 1, 28, 28))
    Y = np.zeros((1200, 50, 10))
    Y[..., 0] = 1
    before = [layer.W.copy() for layer in net.trainable_layers]
    with pytest.raises(nf.DataError) as err:
        net.fit(X, Y, n_epochs=2, verbose=0)
    msg = str(err.value)
    assert "20 batches" in msg and "1200 batches" in msg
    assert "(20, 50, 1, 28, 28)" in msg and "(1200, 50, 10)" in msg
    for layer, w in zip(net.trainable_layers, before):  # nothing was trained
        assert np.array_equal(layer.W, w)


def test_fit_prebatched_batch_size_mismatch(rng):
    net = _seed_lab_network()
    with pytest.raises(nf.DataError) as err:
        net.fit(rng.random((2, 50, 1, 28, 28)), np.zeros((2, 40, 10)), n_epochs=1, verbose=0)
    msg = str(err.value)
    assert "batches of 50 samples" in msg and "(2, 40, 10)" in msg


def test_fit_wrong_sample_shape():
    net = _seed_lab_network()
    with pytest.raises(nf.DataError) as err:
        net.fit(np.zeros((10, 1, 27, 27)), np.zeros(10, dtype=int), verbose=0)
    msg = str(err.value)
    assert "Convolution" in msg and "(1, 28, 28)" in msg and "(10, 1, 27, 27)" in msg


# ------------------------------------------------------------ NaN / Inf data
@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_nan_in_fit_input(bad):
    X = np.zeros((5, 4))
    X[2, 1] = bad
    X[4, 3] = bad
    net = _mlp()
    before = net.layers[0].W.copy()
    with pytest.raises(nf.DataError) as err:
        net.fit(X, np.array([0, 1, 2, 1, 0]), verbose=0)
    msg = str(err.value)
    assert msg.startswith("fit") and "2 NaN/Inf" in msg
    assert np.array_equal(net.layers[0].W, before)


def test_nan_in_predict_and_evaluate_input():
    X = np.zeros((5, 4))
    X[0, 0] = np.nan
    net = _mlp()
    with pytest.raises(nf.DataError, match=r"^predict.*1 NaN/Inf"):
        net.predict(X)
    with pytest.raises(nf.DataError, match=r"^evaluate.*1 NaN/Inf"):
        net.evaluate(X, np.zeros(5, dtype=int))


def test_nan_in_validation_data():
    Xv = np.zeros((3, 4))
    Xv[1, 2] = np.nan
    with pytest.raises(nf.DataError, match=r"validation_data.*1 NaN/Inf"):
        _mlp().fit(np.zeros((5, 4)), np.zeros(5, dtype=int), validation_data=(Xv, np.zeros(3, dtype=int)),
                   verbose=0)


# ------------------------------------------------------------ model files
def test_load_model_of_another_architecture(tmp_path):
    path = str(tmp_path / "mlp.npz")
    _mlp().save(path)
    other = nf.NeuralNetwork([nf.Linear(4, 3)])
    with pytest.raises(ModelFileError) as err:
        other.load(path)
    msg = str(err.value)
    assert "another architecture" in msg
    assert "['Linear', 'ReLU', 'Linear']" in msg and "['Linear']" in msg


def test_load_same_layer_types_other_sizes(tmp_path):
    path = str(tmp_path / "mlp.npz")
    _mlp().save(path)
    other = nf.NeuralNetwork([nf.Linear(4, 5), nf.ReLU(), nf.Linear(5, 3)])
    w = other.layers[0].W.copy()
    with pytest.raises(ModelFileError) as err:
        other.load(path)
    msg = str(err.value)
    assert "layer0/W" in msg and "(5, 6)" in msg and "(5, 5)" in msg
    assert np.array_equal(other.layers[0].W, w)  # nothing half-loaded


@pytest.mark.parametrize("how", ["truncated", "empty", "garbled"])
def test_load_damaged_file(tmp_path, how):
    path = str(tmp_path / "m.npz")
    net = _mlp()
    net.save(path)
    data = open(path, "rb").read()
    if how == "truncated":
        data = data[: len(data) // 2]
    elif how == "empty":
        data = b""
    else:
        mid = len(data) // 2
        data = data[:mid] + bytes(b ^ 0xFF for b in data[mid:mid + 64]) + data[mid + 64:]
    bad = str(tmp_path / "bad.npz")
    open(bad, "wb").write(data)
    for loader in (net.load, nf.NeuralNetwork.load):
        with pytest.raises(ModelFileError) as err:
            loader(bad)
        msg = str(err.value)
        assert "bad.npz" in msg and "truncated or corrupt" in msg


def test_load_missing_file_and_foreign_npz(tmp_path):
    with pytest.raises(ModelFileError, match="no model file"):
        nf.NeuralNetwork.load(str(tmp_path / "nothing.npz"))
    foreign = str(tmp_path / "foreign.npz")
    np.savez(foreign, a=np.zeros(3))
    with pytest.raises(ModelFileError, match=r"not an nn_from_scratch model file.*nn_from_scratch-model/1"):
        _mlp().load(foreign)
    assert os.path.exists(foreign)


# ------------------------------------------------------------ hyperparameters / constructors
def test_linear_needs_vectors():
    with pytest.raises(nf.ShapeError, match=r"Vectorization"):
        nf.Linear((50, 4, 26, 26), (50, 10))


def test_convolution_needs_filters():
    with pytest.raises(ValueError, match=r"output_layers"):
        nf.Convolution((50, 1, 28, 28), kernel_size=3)


def test_fit_bad_epochs_and_batch_size():
    with pytest.raises(ValueError, match=r"epochs must be >= 1, received 0"):
        _mlp().fit(np.zeros((5, 4)), np.zeros(5, dtype=int), epochs=0, verbose=0)
    with pytest.raises(ValueError, match=r"epochs=2 and n_epochs=3 disagree"):
        _mlp().fit(np.zeros((5, 4)), np.zeros(5, dtype=int), epochs=2, n_epochs=3, verbose=0)


@pytest.mark.parametrize("cls", [nf.MaxPool, nf.AvgPool])
def test_pool_padding_as_large_as_the_window(cls):
    # padding >= pool_size leaves windows made only of padding (-inf or 0/0 outputs)
    with pytest.raises(ValueError) as err:
        cls(pool_size=2, padding=2, name="overpadded")
    msg = str(err.value)
    assert "'overpadded'" in msg and "(2, 2)" in msg and "padding=2" in msg
    with pytest.raises(ValueError, match=r"padding=\(\(0, 3\), 0\)"):
        cls(pool_size=3, padding=((0, 3), 0))
    y = cls(pool_size=2, padding=1).forward(np.ones((1, 1, 4, 4)))  # the largest allowed padding works
    assert y.shape == (1, 1, 3, 3) and np.all(np.isfinite(y))


@pytest.mark.parametrize("shape", [(2, 3, 4), (2,)])
def test_softmax_loss_needs_2d_logits(shape):
    with pytest.raises(nf.ShapeError) as err:
        nf.SoftMaxLoss(name="ce").forward(np.zeros(shape), np.array([0, 1]))
    msg = str(err.value)
    assert "'ce'" in msg and "(N, K)" in msg and str(shape) in msg


def test_string_labels():
    with pytest.raises(nf.DataError, match=r"fit \(labels\): class labels must be integers.*<U1"):
        _mlp().fit(np.zeros((4, 4)), np.array(["a", "b", "a", "c"]), verbose=0)
    with pytest.raises(ValueError, match=r"'ce'.*must be integers.*<U1"):
        nf.SoftMaxLoss(name="ce").forward(np.zeros((2, 3)), np.array(["a", "b"]))


# ------------------------------------------------------------ empty batches
@pytest.mark.parametrize("loss", [nf.SoftMaxLoss(name="ce"), nf.MSELoss(name="mse")])
def test_loss_of_an_empty_batch(loss):
    """A mean over no samples is undefined: a clear error, not NaN or ZeroDivisionError."""
    with pytest.raises(nf.ShapeError) as err:
        loss.forward(np.zeros((0, 10), np.float32), np.zeros((0,), np.int64))
    msg = str(err.value)
    assert f"'{loss.name}'" in msg and "empty" in msg and "(0, 10)" in msg


def test_train_step_on_an_empty_batch_names_the_loss():
    net = nf.NeuralNetwork(networks.lenet5_layers(), loss_fn=nf.SoftMaxLoss(name="ce"),
                           optimizer=nf.GradientDescent(0.1), workers=1)
    with pytest.raises(nf.ShapeError, match=r"'ce'.*empty"):
        net.train_step(np.zeros((0, 1, 28, 28), np.float32), np.zeros((0,), np.int64))
