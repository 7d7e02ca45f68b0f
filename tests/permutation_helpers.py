"""Small networks and data for the permutation-test tests (importable by subprocesses too)."""
import os
import time

import numpy as np

from nn_from_scratch import Adam, Linear, MSELoss, NeuralNetwork, Tanh


def make_data(n=60, p=3, seed=0, beta=1.0):
    """``y = beta * x1 + noise``: x1 matters, the others do not."""
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((n, p)).astype(np.float32)
    y = (beta * X[:, :1] + rng.standard_normal((n, 1))).astype(np.float32)
    return X, y


def build_mlp(seed, p=3, hidden=8):
    """The simulation recipe's MLP: p -> hidden tanh -> 1, Glorot-normal, Adam lr 0.01."""
    return NeuralNetwork([Linear(p, hidden, seed=seed, kernel_initializer="glorot_normal"), Tanh(),
                          Linear(hidden, 1, seed=seed + 1, kernel_initializer="glorot_normal")],
                         MSELoss(), optimizer=Adam(lr=0.01))


def slow_build_mlp(seed, p=3, hidden=8):
    """``build_mlp`` that takes ``PERM_TEST_SLEEP`` seconds (for the kill-and-resume test)."""
    time.sleep(float(os.environ.get("PERM_TEST_SLEEP", "0")))
    return build_mlp(seed, p, hidden)


FIT = {"epochs": 20, "batch_size": 60}


def stopping_build_mlp(seed, p=3, hidden=8):
    """``build_mlp`` whose worker process stops itself (SIGSTOP) when it builds seed
    ``PERM_STOP_SEED``, unless it is the process ``PERM_STOP_PARENT`` (the test's, which then
    builds it normally): a stopped loky worker."""
    import signal
    if os.environ.get("PERM_STOP_SEED") == str(seed) and str(os.getpid()) != os.environ.get("PERM_STOP_PARENT"):
        os.kill(os.getpid(), signal.SIGSTOP)
    return build_mlp(seed, p, hidden)


def diverging_build_mlp(seed, p=3, hidden=8):
    """``build_mlp``, with a learning rate that makes training diverge for seed ``PERM_DIVERGE_SEED``."""
    net = build_mlp(seed, p, hidden)
    if os.environ.get("PERM_DIVERGE_SEED") == str(seed):
        net.optimizer.lr = 1e30
    return net


def failing_build_mlp(seed, p=3, hidden=8):
    """``build_mlp`` that raises for seed ``PERM_FAIL_SEED`` (an error inside a worker)."""
    if os.environ.get("PERM_FAIL_SEED") == str(seed):
        raise RuntimeError(f"build failed for seed {seed}")
    return build_mlp(seed, p, hidden)


def assert_same(a, b):
    """Two permutation-test results bitwise equal: statistic, null distribution, p-values."""
    np.testing.assert_array_equal(a.statistic, b.statistic)
    np.testing.assert_array_equal(a.null_distribution, b.null_distribution)
    np.testing.assert_array_equal(a.p_values, b.p_values)
