"""The array backend (NumPy default, CuPy on request) and dtype handling.

Backend selection is process-wide state, so the default and the environment
variable are tested in fresh subprocesses.
"""
import os
import subprocess
import sys

import numpy as np
import pytest

import nn_from_scratch as nf
from nn_from_scratch import backend

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def run_python(code, env_value=None):
    """Run ``code`` in a fresh interpreter importing this checkout; returns (rc, stdout, stderr)."""
    env = {k: v for k, v in os.environ.items() if k != backend.ENV_VAR}
    env["PYTHONPATH"] = ROOT + os.pathsep + env.get("PYTHONPATH", "")
    if env_value is not None:
        env[backend.ENV_VAR] = env_value
    proc = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    return proc.returncode, proc.stdout, proc.stderr


needs_no_cupy = pytest.mark.skipif(backend.cupy_available(), reason="CuPy and a GPU are usable here")


# ---------------------------------------------------------------- selection
def test_numpy_is_the_default():
    rc, out, err = run_python(
        "import nn_from_scratch as nf, numpy\n"
        "from nn_from_scratch import backend\n"
        "assert backend.current() == 'numpy'\n"
        "assert backend.xp() is numpy\n"
        "layer = nf.Linear(3, 2)\n"
        "assert type(layer.W) is numpy.ndarray\n"
        "print('ok', nf.__file__)\n")
    assert rc == 0, err
    assert out.startswith("ok") and ROOT in out  # this checkout was imported


@pytest.mark.parametrize("value", ["numpy", " NumPy ", ""])
def test_env_var_numpy(value):
    rc, out, err = run_python("from nn_from_scratch import backend; print(backend.current())", value)
    assert rc == 0, err
    assert out.strip() == "numpy"


@needs_no_cupy
def test_env_var_cupy_without_cupy_fails_clearly():
    rc, out, err = run_python(
        "import nn_from_scratch as nf\n"
        "from nn_from_scratch.backend import BackendError\n"
        "try:\n"
        "    nf.Linear(3, 2)\n"
        "except BackendError as e:\n"
        "    print('BackendError:', e)\n", "cupy")
    assert rc == 0, err
    assert "BackendError: backend 'cupy' was requested but" in out
    assert "CuPy is not installed" in out or "no CUDA GPU" in out


def test_env_var_unknown_backend():
    rc, out, err = run_python(
        "from nn_from_scratch import backend\n"
        "try:\n"
        "    backend.current()\n"
        "except backend.BackendError as e:\n"
        "    print(e)\n", "jax")
    assert rc == 0, err
    assert "unknown backend 'jax'" in out and "'numpy'" in out and "'cupy'" in out


def test_env_var_is_read_at_first_use_only():
    rc, out, err = run_python(
        "import os\n"
        "from nn_from_scratch import backend\n"
        "print(backend.current())\n"
        "os.environ[backend.ENV_VAR] = 'jax'\n"
        "print(backend.current())\n", "numpy")
    assert rc == 0, err
    assert out.split() == ["numpy", "numpy"]


@needs_no_cupy
def test_use_cupy_without_cupy_raises_and_keeps_numpy():
    before = backend.current()
    with pytest.raises(backend.BackendError) as err:
        backend.use("cupy")
    msg = str(err.value)
    assert "backend 'cupy' was requested" in msg
    assert ("CuPy is not installed" in msg and "numpy" in msg) or "no CUDA GPU" in msg
    assert backend.current() == before == "numpy"
    assert backend.cupy_available() is False


def test_use_unknown_backend():
    with pytest.raises(backend.BackendError, match=r"unknown backend 'torch'; expected one of \('numpy', 'cupy'\)"):
        backend.use("torch")
    assert backend.current() == "numpy"


def test_use_numpy_returns_numpy():
    assert backend.use("numpy") is np
    assert backend.current() == "numpy"


# ---------------------------------------------------------------- helpers on NumPy data
def test_get_array_module_on_numpy():
    a = np.zeros(3)
    assert backend.get_array_module(a) is np
    assert backend.get_array_module(a, 2.0, 3) is np
    assert backend.get_array_module() is np
    assert backend.is_device_array(a) is False


def test_to_numpy_does_not_copy_numpy_arrays():
    a = np.arange(6.0).reshape(2, 3)
    assert backend.to_numpy(a) is a
    lst = backend.to_numpy([[1, 2], [3, 4]])
    assert isinstance(lst, np.ndarray) and lst.shape == (2, 2)


def test_to_device_on_numpy():
    a = np.arange(4, dtype=np.int64)
    out = backend.to_device(a)
    assert out is a  # already where it belongs: no copy
    f32 = backend.to_device(a, dtype=np.float32)
    assert f32.dtype == np.float32 and np.array_equal(f32, a)
    assert a.dtype == np.int64  # input untouched
    like = np.zeros(2, dtype=np.float64)
    out = backend.to_device([1.5, 2.5], like=like)
    assert type(out) is np.ndarray and out.tolist() == [1.5, 2.5]


# ---------------------------------------------------------------- dtypes
def _cnn(dtype=None):
    kw = {} if dtype is None else {"dtype": dtype}
    layers = [nf.Convolution((None, 1, 8, 8), kernel_size=3, output_layers=2, seed=0, **kw), nf.ReLU(),
              nf.AvgPool((None, 2, 6, 6)), nf.Sigmoid(), nf.Vectorization(), nf.Linear(18, 3, seed=1, **kw),
              nf.Softmax()]
    return nf.NeuralNetwork(layers, loss_fn=nf.MSELoss(), optimizer=nf.Adam(0.01))


def test_float32_is_the_default(rng):
    net = _cnn()
    assert net.dtype == np.float32
    for layer in net.trainable_layers:
        assert all(p.dtype == np.float32 for p in layer.params.values())
    X = rng.standard_normal((4, 1, 8, 8))  # float64 data
    assert net.predict(X).dtype == np.float32
    outs = net.layer_outputs(X)
    assert all(o.dtype == np.float32 for o in outs.values())
    images = rng.integers(0, 256, (4, 8, 8)).astype(np.uint8)  # raw image bytes
    assert net.predict(images).dtype == np.float32
    assert nf.ReLU().forward(np.arange(4, dtype=np.int32).reshape(2, 2)).dtype == np.float32


def test_float64_network_stays_float64_end_to_end(rng):
    net = _cnn(np.float64)
    assert net.dtype == np.float64
    X = rng.standard_normal((6, 1, 8, 8))
    T = rng.random((6, 3))
    for name, o in net.layer_outputs(X).items():
        assert o.dtype == np.float64, name
    assert net.predict(X.astype(np.float32)).dtype == np.float64  # float32 data computed in float64
    grads = net.gradients(X, T)
    assert all(g.dtype == np.float64 for g in grads.values())
    assert net.input_gradient(X, y=T).dtype == np.float64
    out = net.forward(X)
    loss = net.loss_fn.forward(out, T)
    assert np.asarray(loss).dtype == np.float64
    assert net.loss_fn.backward().dtype == np.float64
    net.fit(X, T, epochs=2, batch_size=3, verbose=0)
    for layer in net.trainable_layers:
        assert all(p.dtype == np.float64 for p in layer.params.values()), layer.name


def test_astype_converts_a_network(rng):
    net = _cnn()
    X = rng.standard_normal((3, 1, 8, 8))
    y32 = net.predict(X)
    net.astype(np.float64)
    assert net.dtype == np.float64
    y64 = net.predict(X)
    assert y64.dtype == np.float64
    np.testing.assert_allclose(y64, y32, rtol=1e-5, atol=1e-6)


def test_parameter_free_nodes_keep_the_input_dtype(rng):
    for dtype in (np.float32, np.float64):
        x = rng.standard_normal((2, 3, 4, 4)).astype(dtype)
        for layer in (nf.ReLU(), nf.Sigmoid(), nf.Tanh(), nf.Softmax(), nf.Vectorization(), nf.MaxPool(),
                      nf.AvgPool(padding="same")):
            y = layer.forward(x)
            assert y.dtype == dtype, (type(layer).__name__, dtype)
            assert layer.backward(np.ones_like(y) * 0.5).dtype == dtype


def test_neuron_rejects_integer_dtype():
    with pytest.raises(TypeError, match=r"dtype must be a float type, received int32"):
        nf.Linear(3, 2, dtype=np.int32)
