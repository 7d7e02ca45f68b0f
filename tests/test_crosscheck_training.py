"""Whole training runs against Keras: identical batches, identical optimizer settings, 100 steps.

Every weight must stay within 1e-3 (relative to its scale) of Keras's after every
step, for every optimizer; a deliberately wrong optimizer must be caught.
"""
import os

import numpy as np
import pytest

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
pytest.importorskip("tensorflow")
pytestmark = pytest.mark.keras

from nn_from_scratch import (AdaGrad, Adam, AdamW, Convolution, GradientDescent, Linear, MaxPool2D, MSELoss,
                             NeuralNetwork, ReLU, RMSProp, SoftMaxLoss, Tanh, Vectorization)
from nn_from_scratch.data import datasets
from nn_from_scratch.training import schedules  # noqa: E402
from nn_from_scratch.checks.crosscheck import TOLERANCES, compare_training  # noqa: E402
from nn_from_scratch.checks.crosscheck.cli import seed_lab_cnn  # noqa: E402
from planted_bugs import AdamWithoutBiasCorrection  # noqa: E402


@pytest.fixture(scope="module")
def mnist():
    X, y = datasets.load_mnist("train")
    return X[:1200], y[:1200]


def small_cnn():
    """A fast CNN for MNIST: Conv 5x5 stride 3 (4 filters) -> ReLU -> MaxPool 2 -> Linear 64 -> 10."""
    return NeuralNetwork([
        Convolution((None, 1, 28, 28), kernel_size=5, output_layers=4, stride=3, seed=11, name="conv"),
        ReLU(name="relu"), MaxPool2D(2, name="pool"), Vectorization(name="flat"),
        Linear(64, 10, seed=12, name="out"),
    ], loss_fn=SoftMaxLoss())


OPTIMIZERS = {
    "sgd": lambda: GradientDescent(0.5),
    "momentum": lambda: GradientDescent(0.05, momentum=0.9),
    "nesterov": lambda: GradientDescent(0.05, momentum=0.9, nesterov=True),
    "sgd_momentum_weight_decay": lambda: GradientDescent(0.05, momentum=0.8, weight_decay=0.05),
    "adam": lambda: Adam(2e-3),
    "adam_amsgrad_weight_decay": lambda: Adam(2e-3, amsgrad=True, weight_decay=0.01),
    "rmsprop": lambda: RMSProp(1e-3),
    "rmsprop_centered_momentum": lambda: RMSProp(5e-4, momentum=0.5, centered=True, weight_decay=0.01),
}


# the new optimizers, gradient clipping and learning-rate schedules (each setting clips / moves
# the rate inside the 60 steps: see test_clipping_and_schedules_act)
NEW_OPTIMIZERS = {
    "adagrad": lambda: AdaGrad(0.3),
    "adamw": lambda: AdamW(2e-3, weight_decay=0.05),
    "sgd_clipnorm": lambda: GradientDescent(0.5, clipnorm=0.05),
    "momentum_global_clipnorm": lambda: GradientDescent(0.05, momentum=0.9, global_clipnorm=0.1),
    "adamw_clipvalue": lambda: AdamW(2e-3, clipvalue=0.002),
    "rmsprop_clipnorm": lambda: RMSProp(1e-3, clipnorm=0.05),
    "sgd_exponential": lambda: GradientDescent(schedules.ExponentialDecay(1.0, decay_steps=20, decay_rate=0.7)),
    "sgd_step_decay": lambda: GradientDescent(schedules.StepDecay(0.5, step_size=20, factor=0.3), momentum=0.5),
    "sgd_piecewise": lambda: GradientDescent(schedules.PiecewiseConstantDecay([20, 40], [1.0, 0.5, 0.2])),
    "adam_cosine_warmup": lambda: Adam(schedules.CosineDecay(1e-4, decay_steps=40, alpha=0.1, warmup_target=3e-3,
                                                             warmup_steps=15), weight_decay=0.01),
}


@pytest.mark.parametrize("name", sorted(NEW_OPTIMIZERS))
def test_new_optimizers_clipping_and_schedules_match_keras(mnist, name):
    X, y = mnist
    report = compare_training(small_cnn(), X, y, steps=60, optimizer=NEW_OPTIMIZERS[name](), batch_size=32, seed=1)
    assert report.passed, str(report)
    assert len(report.steps) == 60 and report.max_weight_rel <= TOLERANCES["training"]
    assert np.mean(report.losses_ours[-10:]) < np.mean(report.losses_ours[:10]) - 0.05


def test_clipping_and_schedules_act(mnist):
    """The settings above are not no-ops: the gradients they see are clipped, the rates move."""
    X, y = mnist
    net = small_cnn()
    out = net.forward(X[:32].astype(np.float32))
    net.loss_fn.forward(out, y[:32])
    net.backward(net.loss_fn.backward(), need_input_grad=False)
    norms = [float(np.linalg.norm(g)) for layer in net.trainable_layers for g in layer.grads.values()]
    assert min(norms) > 0.05 and np.sqrt(np.sum(np.square(norms))) > 0.1
    assert max(float(np.abs(g).max()) for layer in net.trainable_layers for g in layer.grads.values()) > 0.002
    for name in ("sgd_exponential", "sgd_step_decay", "sgd_piecewise", "adam_cosine_warmup"):
        sched = NEW_OPTIMIZERS[name]().lr
        rates = {round(sched(s), 12) for s in range(60)}
        assert len(rates) >= 3, name


@pytest.mark.parametrize("name", sorted(OPTIMIZERS))
def test_training_matches_keras_for_100_steps(mnist, name):
    X, y = mnist
    report = compare_training(small_cnn(), X, y, steps=100, optimizer=OPTIMIZERS[name](), batch_size=32, seed=1)
    assert report.passed, str(report)
    assert len(report.steps) == 100 and report.max_weight_rel <= TOLERANCES["training"]
    assert {c.quantity for c in report.weights} == {"conv.W", "conv.b", "out.W", "out.b"}
    # training happened: the loss went down and the weights moved away from the start
    assert np.mean(report.losses_ours[-10:]) < np.mean(report.losses_ours[:10]) - 0.1


def test_seed_lab_cnn_trains_like_keras_with_adam(mnist):
    # the seed lab's network; Adam is the most sensitive optimizer (it normalises every coordinate)
    X, y = mnist
    net = seed_lab_cnn(batch_size=32)
    report = compare_training(net, X, y, steps=100, optimizer=Adam(1e-3), batch_size=32)
    assert report.passed, str(report)
    assert report.losses_ours[-1] < 1.5 and report.max_loss_rel <= TOLERANCES["training"]


def test_one_hot_labels_and_mse_regression():
    rng = np.random.default_rng(0)
    X = rng.standard_normal((200, 6)).astype(np.float32)
    W = rng.standard_normal((6, 3))
    targets = np.tanh(X @ W).astype(np.float32)
    mlp = [Linear(6, 16, seed=1), Tanh(), Linear(16, 3, seed=2)]
    r = compare_training(mlp, X, targets, steps=100, optimizer=Adam(1e-2), loss=MSELoss(), batch_size=16)
    assert r.passed, str(r)
    assert r.losses_ours[-1] < 0.5 * r.losses_ours[0]
    labels = np.eye(3, dtype=np.float32)[np.argmax(targets, axis=1)]
    r = compare_training(mlp, X, labels, steps=50, optimizer=RMSProp(1e-3), batch_size=16)
    assert r.passed, str(r)


class ClassicMomentumOnly(GradientDescent):
    """Bug: ignores nesterov=True (always classic momentum)."""

    def _update(self, param, grad, key):
        v = self.state(key, param, "velocity")
        v *= self.momentum
        v -= self.lr * grad
        param += v


@pytest.mark.parametrize("lockstep", [False, True], ids=["free", "lockstep"])
@pytest.mark.parametrize("broken", [ClassicMomentumOnly(0.05, momentum=0.9, nesterov=True),
                                    AdamWithoutBiasCorrection(1e-3)], ids=["nesterov", "adam"])
def test_a_wrong_optimizer_is_caught(mnist, broken, lockstep):
    X, y = mnist
    report = compare_training(small_cnn(), X, y, steps=5, optimizer=broken, batch_size=32, lockstep=lockstep)
    assert not report.passed
    assert report.first_failure.step == 1 and report.first_failure.weight_rel > 1e-2
    assert "first failure at step 1" in str(report)
    assert report.sudden_jump is None          # wrong from the start: no "kink" note
    assert "note:" not in str(report)


def test_lockstep_judges_every_update_from_identical_weights(mnist):
    X, y = mnist
    report = compare_training(seed_lab_cnn(batch_size=32), X, y, steps=30, optimizer=GradientDescent(0.1),
                              lockstep=True)
    assert report.passed and report.lockstep, str(report)
    assert "lockstep" in str(report) and report.max_weight_rel < 1e-5


def test_sudden_jump_note_points_at_a_kink_like_divergence():
    from nn_from_scratch.checks.crosscheck.report import StepRecord, TrainingReport
    rels = [1e-7] * 10 + [2e-4, 6e-4, 2e-3, 5e-3]        # clean, then a jump at step 11, then a cascade
    steps = [StepRecord(i + 1, 1.0, 1.0, 0.0, r, "conv.W") for i, r in enumerate(rels)]
    report = TrainingReport(steps, [], 1e-3, GradientDescent(0.1), "SGD()", 32, "float32")
    assert not report.passed and report.first_failure.step == 13
    assert report.sudden_jump.step == 11
    assert "jumped at step 11" in str(report)
    smooth = TrainingReport(steps[:1] + [StepRecord(2, 1.0, 1.0, 0.0, 1.5e-7, "conv.W")], [], 1e-3,
                            GradientDescent(0.1), "SGD()", 32, "float32")
    assert smooth.passed and smooth.sudden_jump is None


def test_the_users_network_and_optimizer_are_not_modified(mnist):
    X, y = mnist
    net = small_cnn()
    opt = Adam(1e-3)
    net.optimizer = opt
    net.fit(X[:64], y[:64], epochs=1, batch_size=32, verbose=0)   # give the optimizer some state
    params = [{k: v.copy() for k, v in layer.params.items()} for layer in net.layers]
    iterations, n_state = opt.iterations, len(opt._state)
    # uses (a fresh copy of) net's Adam; the eager Keras step as well
    report = compare_training(net, X, y, steps=10, batch_size=32, graph=False)
    assert report.passed, str(report)
    assert "Adam" in str(report) and "<table" in report._repr_html_()
    for layer, saved in zip(net.layers, params):
        for k, v in saved.items():
            np.testing.assert_array_equal(layer.params[k], v)
    assert opt.iterations == iterations and len(opt._state) == n_state
