"""CuPy on a real GPU: agreement with NumPy, whole-network behaviour, and transfers.

Every test here needs CuPy and a CUDA GPU and is SKIPPED with the reason
otherwise (``gpu_utils.GPU_MARKS``).  Run them with
``NN_FROM_SCRATCH_BACKEND=cupy python -m pytest -m gpu`` on a machine with a GPU
(docs/GPU.md).  What they hold:

* every layer's forward and backward (same weights, same data, random upstream
  gradient) equals NumPy's to float32 rounding (float64 rounding for float64);
* a few training steps of the seed lab's CNN, and every optimizer over several
  steps, equal NumPy's to float32 rounding;
* save/load of a CuPy network: bitwise round trip, loadable into NumPy;
  ``summary``, ``to_numpy``, the bundled MNIST + ``fit``, plotting the history;
* during ``fit`` nothing crosses between host and device except the batches (or
  the data set once), the shuffling order once per epoch, and the progress reads
  at the refresh rate: counted, and every other synchronisation is an error
  (``backend.no_implicit_reads``, i.e. ``cupyx.allow_synchronize(False)``);
* the backend's errors (data on the wrong device, the environment variable).
"""
import contextlib
import os
import subprocess
import sys
import time

import numpy as np
import pytest

import nn_from_scratch as nf
from nn_from_scratch.examples import networks
from nn_from_scratch import backend as nnb
from nn_from_scratch.data import datasets
from nn_from_scratch.training import network, trainer  # noqa: F401
from gpu_utils import GPU_MARKS, assert_f32_agree, assert_f64_agree
from test_optimizers import CASES, IDS, STEPS, ParamHolder, _problem

pytestmark = GPU_MARKS

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@contextlib.contextmanager
def using(name):
    """Temporarily make ``name`` the default backend (where new layers put their parameters)."""
    previous = nnb.current()
    nnb.use(name)
    try:
        yield
    finally:
        nnb.use(previous)


def _agree(dtype):
    return assert_f32_agree if np.dtype(dtype) == np.float32 else assert_f64_agree


# ---------------------------------------------------------------- every layer, forward and backward
def _conv(shape, **kw):
    return lambda dtype: nf.Convolution((None,) + shape[1:], dtype=dtype, seed=3, **kw)


LAYER_CASES = {
    # name: (factory(dtype) -> layer, input shape)
    "relu": (lambda dtype: nf.ReLU(), (8, 3, 9)),
    "sigmoid": (lambda dtype: nf.Sigmoid(), (8, 17)),
    "tanh": (lambda dtype: nf.Tanh(), (8, 17)),
    "softmax": (lambda dtype: nf.Softmax(), (8, 10)),
    "softmax_axis1": (lambda dtype: nf.Softmax(axis=1), (4, 5, 6)),
    "vectorization": (lambda dtype: nf.Vectorization((None, 2, 3, 4)), (5, 2, 3, 4)),
    "reshape": (lambda dtype: nf.Reshape((None, 24), target_shape=(4, 6)), (5, 24)),
    "linear": (lambda dtype: nf.Linear(30, 12, dtype=dtype, seed=1), (16, 30)),
    "linear_nobias": (lambda dtype: nf.Linear(30, 12, use_bias=False, dtype=dtype, seed=1), (16, 30)),
    "conv2d_seed_lab": (_conv((4, 1, 28, 28), kernel_size=3, output_layers=4), (4, 1, 28, 28)),
    "conv2d_same": (_conv((3, 3, 11, 10), kernel_size=(3, 2), output_layers=5, padding="same"), (3, 3, 11, 10)),
    "conv2d_stride_pad": (_conv((3, 2, 13, 12), kernel_size=3, output_layers=4, stride=2, padding=1),
                          (3, 2, 13, 12)),
    "conv2d_dilation": (_conv((2, 2, 12, 12), kernel_size=3, output_layers=3, dilation=2, padding=(1, 2)),
                        (2, 2, 12, 12)),
    "conv1d": (_conv((4, 3, 20), kernel_size=4, output_layers=5, stride=(3,), padding=2), (4, 3, 20)),
    "conv3d": (_conv((2, 2, 6, 7, 5), kernel_size=(2, 3, 2), output_layers=3, padding="same"), (2, 2, 6, 7, 5)),
    "maxpool": (lambda dtype: nf.MaxPool((None, 3, 8, 8)), (4, 3, 8, 8)),
    "maxpool_same_stride1": (lambda dtype: nf.MaxPool((None, 2, 7, 7), pool_size=3, stride=1, padding="same"),
                             (3, 2, 7, 7)),
    "maxpool1d": (lambda dtype: nf.MaxPool1D(pool_size=3, stride=2), (4, 3, 15)),
    "maxpool3d": (lambda dtype: nf.MaxPool3D(pool_size=2), (2, 2, 4, 6, 4)),
    "avgpool": (lambda dtype: nf.AvgPool((None, 3, 8, 8)), (4, 3, 8, 8)),
    "avgpool_same": (lambda dtype: nf.AvgPool((None, 2, 7, 7), pool_size=3, stride=2, padding="same"),
                     (3, 2, 7, 7)),
}


def _layer_pair(make, dtype, rng):
    """The same layer (same weights) once on NumPy and once on CuPy."""
    with using("numpy"):
        host = make(dtype)
    dev = make(dtype)                       # the gpu fixture selected CuPy
    for k, p in host.params.items():        # non-zero biases, identical on both
        v = rng.standard_normal(p.shape) * 0.1 + nnb.to_numpy(p)
        host.set_params(**{k: v})
        dev.set_params(**{k: v})
    return host, dev


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("name", sorted(LAYER_CASES))
def test_layer_forward_backward_agree_with_numpy(gpu, rng, name, dtype):
    make, shape = LAYER_CASES[name]
    host, dev = _layer_pair(make, dtype, rng)
    assert all(nnb.is_device_array(p) for p in dev.params.values())
    x = rng.standard_normal(shape).astype(dtype)
    y_host = host.forward(x)
    y_dev = dev.forward(gpu.asarray(x))
    assert nnb.is_device_array(y_dev) and y_dev.dtype == y_host.dtype
    agree = _agree(dtype)
    agree(y_dev, y_host, f"{name}: forward")
    g = rng.standard_normal(y_host.shape).astype(dtype)
    agree(dev.backward(gpu.asarray(g)), host.backward(g), f"{name}: dL/dx")
    for k in host.grads:
        agree(dev.grads[k], host.grads[k], f"{name}: dL/d{k}")


def test_maxpool_ties_route_to_the_same_entry(gpu, rng):
    # after a ReLU many windows hold several zeros: both backends route the gradient to the FIRST maximum
    x = np.maximum(np.round(rng.standard_normal((4, 3, 8, 8)), 1), 0).astype(np.float32)
    host, dev = _layer_pair(lambda dtype: nf.MaxPool((None, 3, 8, 8)), np.float32, rng)
    g = rng.standard_normal((4, 3, 4, 4)).astype(np.float32)
    host.forward(x)
    dev.forward(gpu.asarray(x))
    assert np.array_equal(nnb.to_numpy(dev.backward(gpu.asarray(g))), host.backward(g))


@pytest.mark.parametrize("labels", ["index", "onehot"])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_losses_agree_with_numpy(gpu, rng, labels, dtype):
    z = (3 * rng.standard_normal((32, 10))).astype(dtype)
    t = rng.integers(0, 10, 32)
    t = t if labels == "index" else np.eye(10)[t]
    agree = _agree(dtype)
    for make in (nf.SoftMaxLoss, nf.MSELoss):
        if make is nf.MSELoss:
            t = rng.standard_normal(z.shape)
        host, dev = make(), make()
        agree(dev.forward(gpu.asarray(z), gpu.asarray(t)), np.asarray(host.forward(z, t)), f"{make.__name__} value")
        agree(dev.backward(1.5), host.backward(1.5), f"{make.__name__} gradient")


# ---------------------------------------------------------------- training and optimizers
def seed_lab_network(lr=0.05, optimizer=None):
    nf.set_seed(11)
    layers = networks.seed_lab_layers(50)
    return nf.NeuralNetwork(layers, loss_fn=nf.SoftMaxLoss(), optimizer=optimizer or nf.GradientDescent(lr))


@pytest.fixture(scope="module")
def mnist():
    X, y = datasets.load_mnist("train")
    Xt, yt = datasets.load_mnist("test")
    return X[:1200], y[:1200], Xt[:300], yt[:300]


@pytest.mark.parametrize("make_opt", [lambda: nf.GradientDescent(0.05), lambda: nf.Adam(1e-3),
                                      lambda: nf.GradientDescent(0.02, momentum=0.9, nesterov=True),
                                      lambda: nf.RMSProp(1e-3)], ids=["sgd", "adam", "nesterov", "rmsprop"])
def test_seed_cnn_training_steps_agree_with_numpy(gpu, mnist, make_opt):
    X, y = mnist[0][:200], mnist[1][:200]
    with using("numpy"):
        host = seed_lab_network(optimizer=make_opt())
        h_host = host.fit(X, y, epochs=1, batch_size=40, seed=0, verbose=0)   # 5 steps
    dev = seed_lab_network(optimizer=make_opt())
    h_dev = dev.fit(X, y, epochs=1, batch_size=40, seed=0, verbose=0)
    # 5 steps: each step's float32 rounding differences are carried into the next; 10x the one-layer bound
    for lh, ld in zip(host.trainable_layers, dev.trainable_layers):
        assert_f32_agree(ld.W, lh.W, f"{ld.name}.W after 5 steps", rtol=1e-4, atol_scale=2e-5)
    np.testing.assert_allclose(h_dev.batch_loss, h_host.batch_loss, rtol=1e-4)
    assert h_dev.history["accuracy"] == pytest.approx(h_host.history["accuracy"], abs=1 / 200 + 1e-12)


@pytest.mark.parametrize("make,kname,kkw", CASES, ids=IDS)
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_optimizers_agree_with_numpy(gpu, make, kname, kkw, dtype):
    init, grads = _problem(dtype=dtype)
    opts = {"numpy": make(), "cupy": make()}
    holders = {"numpy": ParamHolder(**{k: v.copy() for k, v in init.items()}),
               "cupy": ParamHolder(**{k: gpu.asarray(v) for k, v in init.items()})}
    for t, g in enumerate(grads, start=1):
        holders["numpy"].grads = {k: v.copy() for k, v in g.items()}
        holders["cupy"].grads = {k: gpu.asarray(v) for k, v in g.items()}
        for name in opts:
            opts[name].step([holders[name]])
        for k in init:
            got = holders["cupy"].params[k]
            assert nnb.is_device_array(got) and got.dtype == dtype
            # each step a few ulp of float32 apart (fused kernels round in another order), STEPS steps
            _agree(dtype)(got, holders["numpy"].params[k], f"{kname} {kkw}: {k} after step {t} of {STEPS}")


# ---------------------------------------------------------------- save/load, summary, to_numpy
def rich_cnn():
    """Layers named explicitly: automatic names count up per class, so two builds would differ."""
    nf.set_seed(5)
    return nf.NeuralNetwork([
        nf.Convolution((None, 2, 9, 9), kernel_size=(3, 2), output_layers=4, padding="same", stride=(1, 2),
                       name="conv_a"),
        nf.ReLU(name="relu"), nf.MaxPool((None, 4, 9, 5), pool_size=2, stride=1, name="max"),
        nf.Convolution((None, 4, 8, 4), kernel_size=3, output_layers=3, padding=((1, 0), 1), dilation=(2, 1),
                       use_bias=False, name="conv_b"),
        nf.AvgPool((None, 3, 5, 4), pool_size=2, padding="same", name="avg"), nf.Vectorization(name="flat"),
        nf.Linear(18, 6, name="fc_a"), nf.Tanh(name="tanh"), nf.Linear(6, 5, name="fc_b")],
        optimizer=nf.Adam(0.003), name="rich")


def test_save_load_of_a_cupy_network(gpu, rng, tmp_path):
    net = rich_cnn()
    x = rng.standard_normal((6, 2, 9, 9))
    net.fit(x, rng.integers(0, 5, 6), epochs=2, batch_size=3, verbose=0)   # trained weights
    path = str(tmp_path / "gpu.npz")
    net.save(path)
    with np.load(path, allow_pickle=False) as f:
        for i, layer in enumerate(net.layers):
            for k, p in layer.params.items():
                assert f[f"layer{i}/{k}"].tobytes() == nnb.to_numpy(p).tobytes()   # to_numpy: the exact bytes
    back = nf.NeuralNetwork.load(path)                   # CuPy selected: loads onto the GPU
    with using("numpy"):
        host = nf.NeuralNetwork.load(path)               # the same file into a NumPy network
    for a, b, c in zip(net.trainable_layers, back.trainable_layers, host.trainable_layers):
        for k in a.params:
            assert nnb.is_device_array(b.params[k]) and not nnb.is_device_array(c.params[k])
            assert nnb.to_numpy(a.params[k]).tobytes() == nnb.to_numpy(b.params[k]).tobytes()
            assert nnb.to_numpy(a.params[k]).tobytes() == c.params[k].tobytes()
    assert net.predict(x).tobytes() == back.predict(x).tobytes()
    assert_f32_agree(net.predict(x), host.predict(x), "CuPy network vs its NumPy copy")
    # a NumPy-saved file loads into a CuPy network (instance load) too
    host.save(path)
    other = rich_cnn().load(path)
    assert all(nnb.is_device_array(p) for la in other.trainable_layers for p in la.params.values())
    assert net.predict(x).tobytes() == other.predict(x).tobytes()


def test_summary_and_to_numpy_of_a_cupy_network(gpu):
    dev = rich_cnn()
    with using("numpy"):
        host = rich_cnn()
    assert dev.summary(print_fn=None) == host.summary(print_fn=None)
    assert dev.count_params() == host.count_params()
    for a, b in zip(dev.trainable_layers, host.trainable_layers):
        w = nnb.to_numpy(a.W)
        assert type(w) is np.ndarray and w.tobytes() == b.W.tobytes()   # same seed, same weights


def test_mnist_fit_evaluate_and_plot_on_the_gpu(gpu, mnist, tmp_path):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    X, y, Xt, yt = mnist
    net = seed_lab_network(lr=0.05)
    loss0, _ = net.evaluate(Xt, yt)
    hist = net.fit(X, y, epochs=3, batch_size=50, validation_data=(Xt, yt), seed=0, verbose=0)
    loss1, acc1 = net.evaluate(Xt, yt)
    assert loss1 < loss0 and acc1 > 0.5
    assert hist["val_accuracy"][-1] == pytest.approx(acc1, abs=1e-12)
    for key, values in hist.history.items():
        assert all(type(v) is float for v in values), key      # host numbers, ready to plot
    assert len(hist.batch_loss) == 3 * 24 and all(type(v) is float for v in hist.batch_loss)
    fig, ax = plt.subplots()
    ax.plot(hist.epoch, hist["loss"], label="loss")
    ax.plot(hist.epoch, hist["val_loss"], label="val_loss")
    ax.plot(np.arange(len(hist.batch_loss)) / 24 + 1, hist.batch_loss, alpha=0.3)
    ax.legend()
    out = tmp_path / "history.png"
    fig.savefig(out)
    plt.close(fig)
    assert out.stat().st_size > 1000
    pred = net.predict(Xt)
    assert type(pred) is np.ndarray and pred.shape == (300, 10)
    assert np.mean(pred.argmax(axis=1) == yt) == pytest.approx(acc1, abs=1e-12)


# ---------------------------------------------------------------- no hidden transfers
@pytest.mark.parametrize("verbose", [0, 1])
def test_fit_moves_only_batches_and_progress_reads(gpu, mnist, verbose):
    if not nnb.sync_detection_available():
        pytest.skip("this CuPy has no cupyx.allow_synchronize: implicit synchronisation cannot be detected")
    X, y, Xt, yt = mnist
    epochs, bs = 2, 50
    val_batches = -(-len(yt) // max(bs, 256))     # fit's validation batch size: max(batch_size, 256)
    assert val_batches >= 2                        # uploading per validation batch would show in the count
    net = seed_lab_network()
    net.fit(X[:100], y[:100], epochs=1, batch_size=bs, verbose=0)   # compile every kernel first
    nnb.reset_transfer_counts()
    t0 = time.monotonic()
    with nnb.no_implicit_reads():    # any float()/int()/bool()/.item()/.get() outside read_to_host raises
        hist = net.fit(X, y, epochs=epochs, batch_size=bs, seed=0, verbose=verbose, validation_data=(Xt, yt))
    elapsed = time.monotonic() - t0
    c = nnb.transfer_counts()
    refresh = trainer._Trainer.REFRESH_INTERVAL
    # device -> host: progress reads (<= elapsed / refresh interval + one per epoch) and one per validation pass
    assert c["reads"]["progress"] <= elapsed / refresh + epochs
    assert c["reads"]["validation"] == epochs
    assert c["device_to_host"] <= elapsed / refresh + 2 * epochs
    assert c["device_to_host"] == c["reads"]["progress"] + c["reads"]["validation"]  # nothing else came back
    # host -> device: the data set and the validation set once each (they fit), the shuffling order
    # once per epoch; nothing per batch or per validation pass
    assert c["host_to_device"] == 2 + 2 + epochs
    assert len(hist.batch_loss) == epochs * len(y) // bs and all(np.isfinite(hist.batch_loss))


def test_the_sync_detector_catches_an_implicit_read(gpu):
    # the guard the test above relies on really raises (so that test can fail)
    if not nnb.sync_detection_available():
        pytest.skip("this CuPy has no cupyx.allow_synchronize")
    import cupyx
    a = gpu.xp.arange(3.0)
    with nnb.no_implicit_reads():
        with pytest.raises(cupyx.DeviceSynchronized):
            float(a.sum())
        assert nnb.read_scalars(a.sum()) == (3.0,)   # the counted path is allowed
        assert nnb.to_numpy(a).tolist() == [0.0, 1.0, 2.0]


def test_big_data_set_goes_in_batch_by_batch(gpu, mnist, monkeypatch):
    X, y = mnist[0][:200], mnist[1][:200]
    monkeypatch.setattr(trainer._Trainer, "_fits_on_device", lambda self, X: False)
    net = seed_lab_network()
    nnb.reset_transfer_counts()
    net.fit(X, y, epochs=1, batch_size=50, seed=0, verbose=0, validation_data=(X[:100], y[:100]))
    # 4 training batches and 1 validation batch (of 256), images and labels each
    assert nnb.transfer_counts()["host_to_device"] == 2 * 4 + 2 * 1


# ---------------------------------------------------------------- backend behaviour and errors
def test_backend_basics_on_the_gpu(gpu, rng):
    import cupy
    assert nnb.current() == "cupy" and nnb.xp() is cupy
    layer = nf.Linear(4, 3, seed=0)
    assert isinstance(layer.W, cupy.ndarray)
    a = rng.standard_normal((2, 4))
    d = nnb.to_device(a)
    assert isinstance(d, cupy.ndarray) and nnb.get_array_module(d) is cupy and nnb.is_device_array(d)
    assert np.array_equal(nnb.to_numpy(d), a)
    with pytest.raises(TypeError, match=r"Linear layer .* parameters on the GPU \(CuPy\) but received a NumPy"):
        layer.forward(a)
    with using("numpy"):
        host = nf.Linear(4, 3, seed=0)
    with pytest.raises(TypeError, match=r"parameters on the host \(NumPy\) but received a CuPy"):
        host.forward(d)
    host.set_params(W=layer.W)                     # device -> host through set_params
    assert type(host.W) is np.ndarray and host.W.tobytes() == nnb.to_numpy(layer.W).tobytes()


def test_env_var_selects_cupy():
    env = {k: v for k, v in os.environ.items() if k != nnb.ENV_VAR}
    env["PYTHONPATH"] = ROOT + os.pathsep + env.get("PYTHONPATH", "")
    env[nnb.ENV_VAR] = "cupy"
    code = ("import nn_from_scratch as nf, cupy\n"
            "from nn_from_scratch import backend\n"
            "assert backend.current() == 'cupy'\n"
            "assert isinstance(nf.Linear(3, 2).W, cupy.ndarray)\n"
            "print('ok')\n")
    proc = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "ok"
