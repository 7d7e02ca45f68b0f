"""Host <-> device transfer accounting, tested without a GPU.

During ``fit`` the only device -> host reads allowed are the progress figures at
the progress bar's refresh rate (``trainer._Trainer.REFRESH_INTERVAL``), the epoch's last
read, one read per validation pass and the input checks at the start.  Every one
goes through ``backend.read_to_host``, which counts its calls by purpose on every
backend.  Here, on NumPy:

* the schedule: with a frozen clock ``fit`` reads once per epoch; with a clock that
  jumps past the refresh interval at every batch it reads once per batch; with a
  clock stepping a quarter interval per batch the count stays within
  ``elapsed / interval + epochs`` (the bound the GPU test checks with real time);
* no hidden reads: the GPU's deferred schedule runs with parameters that refuse
  every implicit read (``gpu_utils.HostReadGuard``), trains exactly as the
  ordinary schedule does, and the guard does catch the ordinary schedule's
  per-batch ``float(loss)`` (so it can fail);
* NumPy itself copies nothing: the host<->device counters stay at zero.

The same accounting on a real GPU, under ``cupyx.allow_synchronize(False)``, is
in ``test_gpu.py``.
"""
import math
import re
import warnings

import numpy as np
import pytest

import nn_from_scratch as nf
from nn_from_scratch import backend
from nn_from_scratch.training import network, trainer  # noqa: F401
from gpu_utils import FakeClock, ImplicitRead, guard, guard_network

EPOCHS = 3


def blobs(rng, n=96, d=6, k=3):
    centres = 2.0 * rng.standard_normal((k, d))
    y = rng.integers(0, k, n)
    return centres[y] + 0.6 * rng.standard_normal((n, d)), y


def small_net(seed=0, lr=0.1, act=nf.Tanh):
    nf.set_seed(seed)
    return nf.NeuralNetwork([nf.Linear(6, 8), act(), nf.Linear(8, 3)], loss_fn=nf.SoftMaxLoss(),
                            optimizer=nf.GradientDescent(lr, momentum=0.9))


def small_cnn(seed=0):
    nf.set_seed(seed)
    return nf.NeuralNetwork([nf.Convolution((None, 1, 8, 8), kernel_size=3, output_layers=2, padding=1), nf.ReLU(),
                             nf.MaxPool((None, 2, 8, 8)), nf.Sigmoid(), nf.Vectorization(), nf.Linear(32, 3)],
                            loss_fn=nf.SoftMaxLoss(), optimizer=nf.Adam(0.01))


@pytest.fixture
def counts():
    """Reset the transfer counters; the test reads them with ``counts()``."""
    backend.reset_transfer_counts()
    yield backend.transfer_counts
    backend.reset_transfer_counts()


def _fit(net, X, y, monkeypatch, clock, defer=None, **kw):
    monkeypatch.setattr(trainer._Trainer, "_clock", staticmethod(clock))
    monkeypatch.setattr(trainer._Trainer, "DEFER_READS", defer)
    kw.setdefault("epochs", EPOCHS)
    kw.setdefault("batch_size", 8)
    kw.setdefault("verbose", 0)
    return net.fit(X, y, seed=0, **kw)


# ---------------------------------------------------------------- the counters themselves
def test_read_to_host_counts_by_purpose_and_returns_host_numbers(counts):
    a = np.arange(6.0).reshape(2, 3)
    loss, n, arr, num = backend.read_to_host(np.float32(0.25) * np.ones(()), np.int64(7), a, 3, why="progress")
    assert (loss, n, num) == (0.25, 7.0, 3.0)
    assert all(type(v) is float for v in (loss, n, num))
    assert isinstance(arr, np.ndarray) and arr.dtype == np.float64 and np.array_equal(arr, a)
    assert backend.read_scalars(np.array(2.5), why="check") == (2.5,)
    with pytest.raises(ValueError, match="arrays of more than one entry"):
        backend.read_scalars(a, why="check")
    c = counts()
    assert c["reads"] == {"progress": 1, "check": 2}
    assert c["host_to_device"] == 0 and c["device_to_host"] == 0  # NumPy data: nothing crosses


def test_to_device_and_to_numpy_copy_nothing_on_numpy(counts):
    a = np.arange(4.0)
    assert backend.to_device(a) is a and backend.to_numpy(a) is a
    c = counts()
    assert c["host_to_device"] == 0 and c["device_to_host"] == 0 and not c["reads"]


# ---------------------------------------------------------------- the reading schedule of fit
def test_frozen_clock_reads_once_per_epoch(rng, monkeypatch, counts):
    X, y = blobs(rng)
    hist = _fit(small_net(), X, y, monkeypatch, FakeClock(0.0), validation_data=(X[:20], y[:20]))
    c = counts()
    assert c["reads"]["progress"] == EPOCHS            # only each epoch's last batch
    assert c["reads"]["validation"] == EPOCHS          # one read per validation pass
    assert c["reads"]["check"] <= 4                    # finite inputs + label range, train and validation
    assert set(c["reads"]) == {"progress", "validation", "check"}
    assert len(hist.batch_loss) == EPOCHS * 12


def test_clock_past_the_interval_reads_every_batch(rng, monkeypatch, counts):
    X, y = blobs(rng)
    _fit(small_net(), X, y, monkeypatch, FakeClock(trainer._Trainer.REFRESH_INTERVAL * 1.01))
    assert counts()["reads"]["progress"] == EPOCHS * 12


@pytest.mark.parametrize("defer", [False, True], ids=["numpy_schedule", "gpu_schedule"])
def test_reads_are_bounded_by_elapsed_time(rng, monkeypatch, counts, defer):
    X, y = blobs(rng)
    clock = FakeClock(trainer._Trainer.REFRESH_INTERVAL / 4)
    _fit(small_net(), X, y, monkeypatch, clock, defer=defer)
    reads = counts()["reads"]["progress"]
    bound = clock.elapsed / trainer._Trainer.REFRESH_INTERVAL + EPOCHS
    assert reads <= bound
    # and it does refresh mid-epoch (12 batches of a quarter interval: every 4th batch)
    assert reads == EPOCHS * 3


# ---------------------------------------------------------------- no hidden reads (GPU schedule)
@pytest.mark.parametrize("make", [small_net, small_cnn], ids=["mlp", "cnn"])
def test_gpu_schedule_reads_nothing_implicitly_and_trains_the_same(rng, monkeypatch, counts, make):
    X, y = blobs(rng) if make is small_net else (rng.standard_normal((40, 1, 8, 8)), rng.integers(0, 3, 40))
    val = (X[:10], y[:10])
    ref = make()
    h_ref = _fit(ref, X, y, monkeypatch, FakeClock(0.03), defer=False, validation_data=val)
    net = guard_network(make())
    h = _fit(net, X, y, monkeypatch, FakeClock(0.03), defer=True, validation_data=val, verbose=1)
    assert all(isinstance(p, type(guard(np.zeros(1)))) for la in net.trainable_layers for p in la.params.values())
    for la, lb in zip(ref.trainable_layers, net.trainable_layers):
        for k in la.params:
            assert np.asarray(la.params[k]).tobytes() == np.asarray(lb.params[k]).tobytes()
    assert h.history == h_ref.history
    assert h.batch_loss == h_ref.batch_loss and all(type(v) is float for v in h.batch_loss)
    # predict/evaluate on the guarded network read through to_numpy/read_to_host only
    assert np.array_equal(net.predict(X[:5]), ref.predict(X[:5]))
    assert net.evaluate(X, y) == ref.evaluate(X, y)


def test_the_guard_catches_a_per_batch_read(rng, monkeypatch):
    # the ordinary (NumPy) schedule reads each batch's loss with float(): the guard must object
    X, y = blobs(rng)
    net = guard_network(small_net())
    with pytest.raises(ImplicitRead, match=r"float\(\)"):
        _fit(net, X, y, monkeypatch, FakeClock(0.0), defer=False)


def test_gpu_schedule_stops_at_the_first_nonfinite_batch_like_the_cpu(rng, monkeypatch):
    X, y = blobs(rng, n=200)
    runs = {}
    for defer in (False, True):
        net = small_net(lr=50.0, act=nf.ReLU)
        if defer:
            guard_network(net)
        with np.errstate(all="ignore"), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            runs[defer] = _fit(net, X, y, monkeypatch, FakeClock(0.0), defer=defer, epochs=20, batch_size=20)
    cpu, gpu = runs[False], runs[True]
    assert cpu.stopped is not None and gpu.stopped is not None
    where = [re.search(r"epoch (\d+), batch (\d+)", h.stopped).groups() for h in (cpu, gpu)]
    assert where[0] == where[1]                  # the same failing batch is named
    assert gpu.batch_loss == cpu.batch_loss      # the finite losses before it, none after
    assert all(math.isfinite(v) for v in gpu.batch_loss)
    assert "may already hold NaN/Inf" in gpu.stopped and "before the failing step" in cpu.stopped


def test_numpy_fit_moves_nothing(rng, counts):
    X, y = blobs(rng)
    small_net().fit(X, y, epochs=2, batch_size=8, verbose=0, validation_data=(X[:10], y[:10]))
    small_net().predict(X)
    c = counts()
    assert c["host_to_device"] == 0 and c["device_to_host"] == 0
    assert c["reads"]["progress"] >= 2
