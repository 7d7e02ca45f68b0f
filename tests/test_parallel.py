"""Data-parallel training steps (``nn_from_scratch/parallel.py``).

The reference is the one-thread step (``workers=1``), itself held to float64 finite
differences and Keras elsewhere: a batch split over worker processes or threads must
give the same loss, the same gradients and, after training, the same weights, to
float64 rounding.  Every test runs with both kinds of split (``parallel.SPLIT_WITH``);
the smallest shard is lowered so that small batches split (fast tests).
"""
import os
import time
import warnings

import numpy as np
import pytest
from threadpoolctl import threadpool_info

import nn_from_scratch as nf
from nn_from_scratch.engine import parallel
from nn_from_scratch.examples import networks
from nn_from_scratch.engine.parallel import allowed
from nn_from_scratch.interfaces import Node


KINDS = ["threads"] + (["processes"] if hasattr(os, "fork") else [])


@pytest.fixture(autouse=True, params=KINDS)
def kind(request, monkeypatch):
    """Each test once with shards in threads and once in forked processes (where there is fork)."""
    monkeypatch.setattr(parallel, "SPLIT_WITH", request.param)
    monkeypatch.setattr(parallel, "MIN_SHARD", 2)
    monkeypatch.setattr(parallel, "MIN_SHARD_PROCESSES", 2)
    # the workers forked from this process (what these tests are about), even where an earlier test
    # left idle helper threads here (a Jupyter client's); the fork server: test_parallel_clean_start.py
    monkeypatch.setattr(allowed, "alone", lambda: True)
    return request.param


def lenet(workers, optimizer=None, seed=0):
    net = nf.NeuralNetwork(networks.lenet5_layers(seed=seed), loss_fn=nf.SoftMaxLoss(),
                           optimizer=optimizer or nf.Adam(1e-3), workers=workers)
    return net.astype(np.float64)


def digits(rng, n):
    return rng.standard_normal((n, 1, 28, 28)), rng.integers(0, 10, n)


def grads_of(net):
    return {(layer.name, k): g.copy() for layer in net.trainable_layers for k, g in layer.grads.items()}


@pytest.mark.parametrize("workers,n", [(2, 8), (2, 7), (3, 11), (4, 9)])
def test_split_step_gives_the_one_thread_loss_and_gradients(workers, n):
    """Uneven shards included (7 = 3 + 4): the shards' gradients are weighted by their sizes."""
    rng = np.random.default_rng(n)
    x, y = digits(rng, n)
    one, split = lenet(1), lenet(workers)
    assert parallel.shard_count(split, n) == workers and parallel.shard_count(one, n) == 1
    loss1, out1 = one._forward_backward(x, y)
    loss2, out2 = split._forward_backward(x, y)
    assert split._sharded is not None and split._sharded.shards == workers
    assert split._sharded.kind == parallel.split_with()
    np.testing.assert_allclose(float(loss2), float(loss1), rtol=1e-13)
    np.testing.assert_allclose(out2, out1, rtol=1e-12, atol=1e-14)
    g1, g2 = grads_of(one), grads_of(split)
    assert g1.keys() == g2.keys() and len(g1) == 7
    for key in g1:
        scale = np.abs(g1[key]).max()
        assert scale > 0
        np.testing.assert_allclose(g2[key], g1[key], rtol=0, atol=1e-12 * scale, err_msg=str(key))


@pytest.mark.filterwarnings("ignore::nn_from_scratch.TrainingWarning")   # 2 epochs of noise: "not learning"
@pytest.mark.parametrize("make_opt", [lambda: nf.SGD(0.05), lambda: nf.Adam(1e-3), lambda: nf.RMSProp(1e-3)])
def test_fit_split_over_threads_trains_the_same_weights(make_opt):
    rng = np.random.default_rng(1)
    X, y = digits(rng, 60)
    nets = [lenet(w, make_opt()) for w in (1, 2)]
    hists = [net.fit(X, y, epochs=2, batch_size=20, seed=3, verbose=0) for net in nets]
    np.testing.assert_allclose(hists[1].history["loss"], hists[0].history["loss"], rtol=1e-10)
    for la, lb in zip(nets[0].trainable_layers, nets[1].trainable_layers):
        for k in la.params:
            np.testing.assert_allclose(lb.params[k], la.params[k], rtol=0, atol=1e-10, err_msg=f"{la.name}.{k}")
    kept = nets[1]._sharded                         # fit keeps its workers for the next fit
    assert kept is not None
    nets[1].fit(X, y, epochs=1, batch_size=20, seed=3, verbose=0)
    assert nets[1]._sharded is kept
    nets[1].stop_workers()
    assert nets[1]._sharded is None


def test_split_is_deterministic_and_leaves_blas_threads_as_they_were():
    rng = np.random.default_rng(2)
    X, y = digits(rng, 40)
    before = [p["num_threads"] for p in threadpool_info()]
    runs = []
    for _ in range(2):
        net = lenet(2, nf.SGD(0.1))
        for a in range(0, 40, 10):
            net.train_step(X[a:a + 10], y[a:a + 10])
        runs.append([p.copy() for layer in net.trainable_layers for p in layer.params.values()])
    for a, b in zip(*runs):
        np.testing.assert_array_equal(a, b)
    assert [p["num_threads"] for p in threadpool_info()] == before


class Counting(Node):
    """A per-sample layer (identity) that records the batch sizes it sees."""

    per_sample = True

    def __init__(self, fail_below=0, **kw):
        super().__init__(**kw)
        self.fail_below = fail_below
        self.seen = []

    def _forward(self, x):
        self.seen.append(x.shape[0])
        if x.shape[0] < self.fail_below:
            raise RuntimeError(f"batch of {x.shape[0]}")
        return x

    def _backward(self, dy):
        return dy


class CountingSubclass(Counting):
    """Inherits ``per_sample`` without declaring it: may hold state of its own."""


def small_net(extra, workers=2):
    return nf.NeuralNetwork([nf.Linear(4, 5, seed=0), extra, nf.ReLU(), nf.Linear(5, 3, seed=1)],
                            loss_fn=nf.SoftMaxLoss(), optimizer=nf.SGD(0.1), workers=workers)


def test_which_steps_are_split(kind):
    x = np.ones((8, 4), dtype=np.float32)
    y = np.zeros(8, dtype=np.int64)
    assert parallel.shard_count(small_net(Counting()), 8) == 2
    assert parallel.shard_count(small_net(Counting()), 3) == 1          # shards of >= the smallest shard
    assert parallel.shard_count(small_net(Counting(), workers=1), 8) == 1
    assert parallel.shard_count(small_net(CountingSubclass()), 8) == 1  # undeclared subclass: one batch
    net = small_net(Counting())
    _, out = net.train_step(x, y)
    assert out.shape == (8, 3)
    if kind == "threads":                           # every shard on a replica of the layers
        replicas = [r[1] for r in net._sharded.replicas]
        assert [r.seen for r in replicas] == [[4], [4]] and net.layers[1].seen == []
    else:                                           # shard 0 here, shard 1 in the worker's copy
        assert net.layers[1].seen == [4]
    net = small_net(CountingSubclass())
    net.train_step(x, y)
    assert net._sharded is None and net.layers[1].seen == [8]
    with pytest.raises(ValueError, match="workers"):
        small_net(Counting(), workers=0)


def test_a_failing_shard_falls_back_to_one_batch_and_says_so(kind):
    x = np.ones((8, 4), dtype=np.float32)
    y = np.zeros(8, dtype=np.int64)
    net, ref = small_net(Counting(fail_below=5)), small_net(Counting(), workers=1)
    with pytest.warns(RuntimeWarning, match=f"split over 2 {kind} failed.*batch of 4"):
        loss, _ = net.train_step(x, y)
    ref_loss, _ = ref.train_step(x, y)
    assert float(loss) == pytest.approx(float(ref_loss), rel=1e-6)
    # an error that is not the split's: raised by the one-batch run, naming the whole batch
    net = small_net(Counting(fail_below=100))
    with pytest.raises(RuntimeError, match="batch of 8"), warnings.catch_warnings():
        warnings.simplefilter("error")
        net.train_step(x, y)


def test_numpy_error_state_reaches_the_shards():
    """fit ignores overflow (its own NaN/Inf checks report it): the shard workers must too."""
    net = small_net(Counting())
    net.layers[0].set_params(W=np.full((5, 5), 1e30, dtype=np.float32))   # W: (1 + 4, 5), row 0 the bias
    x = np.full((16, 4), 1e10, dtype=np.float32)
    y = np.zeros(16, dtype=np.int64)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        net.fit(x, y, epochs=1, batch_size=16, verbose=0)
    kinds = {type(w.message).__name__ for w in caught}
    assert "TrainingWarning" in kinds and "RuntimeWarning" not in kinds, [str(w.message) for w in caught]


class Scale(Node):
    """A per-sample layer multiplying by a public ``factor`` (a setting a worker's copy must follow)."""

    per_sample = True

    def __init__(self, factor, **kw):
        super().__init__(**kw)
        self.factor = factor

    def _forward(self, x):
        return x * self.factor

    def _backward(self, dy):
        return dy * self.factor


def scale_net(workers):
    return nf.NeuralNetwork([nf.Linear(4, 5, seed=0), Scale(1.0), nf.ReLU(), nf.Linear(5, 3, seed=1)],
                            loss_fn=nf.SoftMaxLoss(), optimizer=nf.SGD(0.1), workers=workers)


def worker_ids(net):
    return list(net._sharded.pids) if net._sharded.kind == "processes" else [id(net._sharded)]


def ended(pid):
    """Has worker process ``pid`` exited (and been waited for, or is a zombie)?"""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] == "Z"
    except FileNotFoundError:
        return True


def test_workers_are_kept_until_a_setting_changes_and_follow_it(kind):
    """A setting changed between steps must reach the workers' copies of the layers: the split
    is rebuilt (a stale copy would compute its shard with the old factor)."""
    rng = np.random.default_rng(5)
    x, y = rng.standard_normal((8, 4)).astype(np.float32), rng.integers(0, 3, 8)
    split, one = scale_net(2), scale_net(1)
    split.train_step(x, y)
    one.train_step(x, y)
    first = split._sharded
    split.train_step(x, y)
    one.train_step(x, y)
    assert split._sharded is first                 # same layers, same settings: kept
    for net in (split, one):
        net.layers[1].factor = 3.0
    loss2, out2 = split.train_step(x, y)
    loss1, out1 = one.train_step(x, y)
    assert split._sharded is not first              # rebuilt for the new setting
    np.testing.assert_allclose(out2, out1, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(float(loss2), float(loss1), rtol=1e-5)
    if kind == "processes":
        old = first.pids[0]
        for _ in range(100):
            if ended(old):
                break
            time.sleep(0.01)
        assert ended(old)
        new = split._sharded.pids[0]
        split.stop_workers()
        assert split._sharded is None and ended(new)


def test_unused_or_ended_workers_are_replaced_without_a_warning(kind, monkeypatch):
    """No step for a while: the worker processes end (or are replaced) and the next step
    forks new ones quietly; threads are kept."""
    rng = np.random.default_rng(6)
    x, y = rng.standard_normal((8, 4)).astype(np.float32), rng.integers(0, 3, 8)
    net = scale_net(2)
    monkeypatch.setattr(parallel, "WORKER_IDLE_S", 0.2)      # read by the worker forked next
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        net.train_step(x, y)
        first = net._sharded
        if kind == "processes":                     # the worker ends itself after 0.2 s idle
            for _ in range(200):
                if any(c.poll() for c in first.conns):
                    break
                time.sleep(0.01)
            assert not first.matches(net, 2)
            net.train_step(x, y)
            assert net._sharded is not first and net._sharded.pids != first.pids
            first = net._sharded
        monkeypatch.setattr(parallel, "REUSE_S", 0.0)       # unused for longer than REUSE_S
        time.sleep(0.01)
        net.train_step(x, y)
        # processes are forked afresh (their shared memory goes); threads hold nothing of the sort
        assert (net._sharded is not first) == (kind == "processes")


def test_a_worker_holds_no_pipe_of_another_networks_worker(kind):
    """Each worker must see its pipe close when its own network lets go: a worker forked later
    (for another network) must not keep a copy of an earlier worker's parent end."""
    if kind != "processes":
        pytest.skip("threads share this process's pipes by nature (there are none)")
    rng = np.random.default_rng(8)
    x, y = rng.standard_normal((8, 4)).astype(np.float32), rng.integers(0, 3, 8)
    first, second = scale_net(2), scale_net(2)
    first.train_step(x, y)
    second.train_step(x, y)
    theirs = {os.fstat(c.fileno()).st_ino for c in first._sharded.conns}
    pid = second._sharded.pids[0]
    held = set()
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            link = os.readlink(f"/proc/{pid}/fd/{fd}")
        except OSError:
            continue
        if link.startswith(("socket:[", "pipe:[")):
            held.add(int(link.split("[")[1].rstrip("]")))
    assert theirs and not theirs & held
    first.stop_workers()
    second.stop_workers()


def test_shards_go_through_shared_memory_or_the_pipe_when_too_large(kind, monkeypatch):
    """A worker's inbox holds shards up to twice the size of the batch the split was made for;
    a larger shard travels in the message itself.  Both give the one-worker step's results."""
    if kind != "processes":
        pytest.skip("threads read the batch itself")
    sent = []
    pack = parallel._pack

    def spy(header, arrays=()):
        if header.get("op") == "step":
            sent.append(("inbox" in header, len(arrays)))
        return pack(header, arrays)

    monkeypatch.setattr(parallel, "_pack", spy)
    rng = np.random.default_rng(9)
    split, one = lenet(2, nf.SGD(0.1)), lenet(1, nf.SGD(0.1))
    for n in (4, 8, 12):                 # inbox sized for shards of 2 * 2 = 4 samples
        x, y = digits(rng, n)
        loss1, out1 = one._forward_backward(x, y)
        loss2, out2 = split._forward_backward(x, y)
        np.testing.assert_allclose(float(loss2), float(loss1), rtol=1e-13)
        np.testing.assert_allclose(out2, out1, rtol=1e-12, atol=1e-14)
        g1, g2 = grads_of(one), grads_of(split)
        for key in g1:
            np.testing.assert_allclose(g2[key], g1[key], rtol=0, atol=1e-12 * np.abs(g1[key]).max(), err_msg=str(key))
    assert sent == [(True, 0), (True, 0), (False, 2)]
    split.stop_workers()


@pytest.mark.filterwarnings("ignore::nn_from_scratch.TrainingWarning")
def test_fit_checks_the_workers_once_per_epoch(kind, monkeypatch):
    """Within an epoch nothing runs between the steps that could change a layer: ``fit`` checks
    that the workers' copies still match the network at each epoch's first step only."""
    calls = []
    cls = parallel.ForkedStep if kind == "processes" else parallel.ShardedStep
    matches = cls.matches
    monkeypatch.setattr(cls, "matches", lambda self, net, shards: calls.append(1) or matches(self, net, shards))
    rng = np.random.default_rng(10)
    X, y = digits(rng, 40)
    net = lenet(2, nf.SGD(0.1))
    net.fit(X, y, epochs=3, batch_size=10, verbose=0)      # 4 steps per epoch
    assert len(calls) == 2                                  # epochs 2 and 3 (epoch 1 made the split)
    net.stop_workers()


def test_messages_round_trip_with_their_headers_kept(kind):
    """``_pack``/``_unpack`` keep packed and parsed headers for the next step: headers that differ
    only in an array's dtype or shape, or in a value, must still come back as sent."""
    if kind != "processes":
        pytest.skip("threads send no messages")
    rng = np.random.default_rng(3)
    cases = [({"op": "ok"}, [np.asarray(1.5), rng.standard_normal((3, 4))]),
             ({"op": "ok"}, [np.asarray(np.float32(1.5)), rng.standard_normal((3, 4)).astype(np.float32)]),
             ({"op": "ok"}, [np.asarray(2.5), rng.standard_normal((4, 3))]),
             ({"op": "error", "message": "ValueError: x"}, []),
             ({"op": "step", "err": {"over": "warn"}, "weight": 0.5}, [rng.integers(0, 9, 5)]),
             ({"op": "step", "err": {"over": "raise"}, "weight": 0.25}, [rng.integers(0, 9, 5)])]
    for _ in range(2):                                   # the second round reads the kept headers
        for header, arrays in cases:
            got_header, got = parallel._unpack(parallel._pack(header, arrays))
            assert {k: v for k, v in got_header.items() if k != "arrays"} == header
            assert len(got) == len(arrays)
            for a, b in zip(got, arrays):
                assert a.dtype == b.dtype and a.shape == b.shape
                np.testing.assert_array_equal(a, b)


def split_class(kind):
    return parallel.ForkedStep if kind == "processes" else parallel.ShardedStep


def count_forward_calls(kind, monkeypatch):
    """Spy on the split's forward-only passes; returns the list of their batch sizes."""
    calls, cls = [], split_class(kind)
    forward = cls.forward
    monkeypatch.setattr(cls, "forward", lambda self, net, xb: calls.append(len(xb)) or forward(self, net, xb))
    return calls


def test_predict_and_evaluate_split_over_the_workers_training_left(kind, monkeypatch):
    """While a split's workers are there, inference batches are split over them too: the same
    outputs, loss and accuracy as the one-worker network, with the parameters of the latest step
    (the workers' mirror is refreshed), odd batch sizes included; BLAS threads as they were."""
    calls = count_forward_calls(kind, monkeypatch)
    rng = np.random.default_rng(11)
    X, y = digits(rng, 30)
    split, one = lenet(2, nf.SGD(0.1)), lenet(1, nf.SGD(0.1))
    assert split.predict(X[:10]).shape == (10, 10) and split._sharded is None and calls == []  # none started
    before = [p["num_threads"] for p in threadpool_info()]
    for step in range(2):
        for net in (split, one):
            net.train_step(X[10 * step:10 * step + 10], y[10 * step:10 * step + 10])
        for bs in (10, 8, 30):      # 8: batches 8, 8, 8, 6; 30: shards of 15, too large for the inbox
            del calls[:]
            np.testing.assert_allclose(split.predict(X, batch_size=bs), one.predict(X, batch_size=bs),
                                       rtol=1e-12, atol=1e-14)
            assert calls == [bs] * (30 // bs) + ([30 % bs] if 30 % bs else [])
            (l2, a2), (l1, a1) = split.evaluate(X, y, batch_size=bs), one.evaluate(X, y, batch_size=bs)
            np.testing.assert_allclose(l2, l1, rtol=1e-12)
            assert a2 == a1
    assert [p["num_threads"] for p in threadpool_info()] == before
    split.stop_workers()


@pytest.mark.filterwarnings("ignore::nn_from_scratch.TrainingWarning")
def test_fit_validation_runs_on_the_workers(kind, monkeypatch):
    calls = count_forward_calls(kind, monkeypatch)
    rng = np.random.default_rng(12)
    X, y = digits(rng, 40)
    hists = [lenet(w, nf.SGD(0.05)).fit(X[:30], y[:30], epochs=2, batch_size=10, seed=1, verbose=0,
                                        validation_data=(X[30:], y[30:])) for w in (2, 1)]
    assert calls == [10, 10]                             # one validation batch per epoch, split
    for key in ("loss", "val_loss", "val_accuracy"):
        np.testing.assert_allclose(hists[0].history[key], hists[1].history[key], rtol=1e-10, err_msg=key)


def test_a_failing_split_forward_falls_back_to_one_batch_and_says_so(kind, monkeypatch):
    rng = np.random.default_rng(13)
    X, y = digits(rng, 20)
    split, one = lenet(2, nf.SGD(0.1)), lenet(1, nf.SGD(0.1))
    for net in (split, one):
        net.train_step(X[:10], y[:10])

    def broken(self, net, xb):
        raise RuntimeError("worker gone")
    monkeypatch.setattr(split_class(kind), "forward", broken)
    with pytest.warns(RuntimeWarning, match=f"forward pass split over 2 {kind} failed.*worker gone"):
        out = split.predict(X, batch_size=10)
    np.testing.assert_allclose(out, one.predict(X, batch_size=10), rtol=1e-12, atol=1e-14)
    assert split._sharded is None                        # the next training step makes a fresh split


def test_the_layers_say_themselves_which_are_per_sample(kind):
    """``Node.per_sample`` declared in a class's own body replaces a list kept in the engine: the
    package's classes that may be split are exactly those whose samples never meet."""
    from nn_from_scratch import layers as L
    declared = {cls for cls in vars(L).values() if isinstance(cls, type) and issubclass(cls, Node)
                and vars(cls).get("per_sample", False)}
    assert declared == {L.Linear, L.Convolution, L.ReLU, L.Sigmoid, L.Tanh, L.Softmax, L.LeakyReLU, L.ELU, L.GELU,
                        L.Softplus, L.Dropout, L.MaxPool, L.AvgPool, L.GlobalAveragePooling, L.GlobalAveragePooling1D,
                        L.GlobalAveragePooling2D, L.GlobalAveragePooling3D, L.Vectorization, L.Reshape,
                        L.SoftMaxLoss, L.MSELoss, L.BinaryCrossEntropy, L.Huber, L.MAE}
    assert parallel.PER_SAMPLE == declared              # the old name, now derived from the declarations
    assert not parallel.is_per_sample(L.BatchNorm(shape=(None, 3))) and parallel.is_per_sample(L.ReLU())
    net = small_net(nf.ReLU())
    assert net.batch_split is not None and net.runner is net._runner and net._sharded is net.batch_split.current
