"""The engine switch: ``NeuralNetwork(..., engine=False)`` runs every layer's own code, and the engine
(the default) gives the same numbers.

For every network the engine accelerates - the course lab's CNN, LeNet-5, a 1-D and a 3-D
network - in float64: engine on equals engine off for

(a) the forward output,
(b) every parameter gradient and dL/dx (``net.forward``/``net.backward`` and ``net.gradients``),
(c) the weights after 3 epochs of ``fit`` (SGD with momentum and Adam, shuffled with a fixed
    seed), with one worker and with the step split over two (``engine/parallel.py``),

to 1e-12 relative (the largest difference of an array against its largest entry): the engine's
fast paths compute the layers' formulas with their sums in other orders.  Each network's check
also asserts which units the engine ran (the runner's tape), so that an engine that silently did
nothing would fail it; and with ``engine=False`` that the engine did not run at all.  The point of
the switch: a student who edits ``ReLU.backward`` sees the effect in ``fit`` with the engine off
(and a subclass of a layer always runs its own code).  On CuPy (when present) the same equality.
"""
import numpy as np
import pytest

import nn_from_scratch as nf
from gpu_utils import requires_gpu
from nn_from_scratch.engine import fusion, parallel
from nn_from_scratch.engine.conv import ConvUnit
from nn_from_scratch.engine.pooling import MaxPoolUnit
from nn_from_scratch.examples import networks
from nn_from_scratch.layers import activations

RTOL = 1e-12
EPOCHS = 3
N_FIT, BATCH = 24, 12          # 2 batches an epoch; a batch of 12 splits over 2 workers (MIN_SHARD lowered)


def _float64(layers):
    for layer in layers:
        if hasattr(layer, "astype"):
            layer.astype(np.float64)
    return layers


def lab_cnn(seed):
    return _float64(networks.seed_lab_layers(seed=seed)), (1, 28, 28), 10


def lenet5(seed):
    return _float64(networks.lenet5_layers(seed=seed)), (1, 28, 28), 10


def net_1d(seed):
    rng = np.random.default_rng(seed)
    return [nf.Conv1D(2, 4, 3, padding=1, seed=rng, dtype=np.float64, name="conv"), nf.ReLU(name="relu"),
            nf.MaxPool1D(2, name="pool"), nf.Flatten(name="flatten"),
            nf.Linear(4 * 10, 5, seed=rng, dtype=np.float64, name="linear")], (2, 21), 5


def net_3d(seed):
    rng = np.random.default_rng(seed)
    return [nf.Conv3D(1, 3, 3, seed=rng, dtype=np.float64, name="conv"), nf.ReLU(name="relu"),
            nf.MaxPool3D(2, name="pool"), nf.Vectorization(name="flatten"),
            nf.Linear(3 * 2 * 3 * 2, 4, seed=rng, dtype=np.float64, name="linear")], (1, 6, 8, 6), 4


#: network -> the units the engine runs ({first layer index: unit class}; every other layer: None)
NETWORKS = {
    "lab-cnn": (lab_cnn, {0: ConvUnit, 1: fusion.ElementwiseUnit, 2: ConvUnit, 3: fusion.ElementwiseUnit}),
    "lenet5": (lenet5, {0: fusion.PhaseBlockUnit, 3: fusion.PhaseBlockUnit, 8: fusion.ElementwiseUnit,
                        10: fusion.ElementwiseUnit}),
    "1d": (net_1d, {0: ConvUnit, 1: fusion.ReluPoolUnit}),
    "3d": (net_3d, {0: ConvUnit, 1: fusion.ReluPoolUnit}),
}
OPTIMIZERS = {"sgd-momentum": lambda: nf.SGD(0.05, momentum=0.9), "adam": lambda: nf.Adam(1e-3)}


def build(name, engine, workers=1, optimizer=None, seed=0):
    make, _ = NETWORKS[name]
    layers, sample, classes = make(seed)
    net = nf.NeuralNetwork(layers, loss_fn=nf.SoftMaxLoss(), optimizer=optimizer, workers=workers, engine=engine)
    return net, sample, classes


def data(sample, classes, n, seed=1):
    rng = np.random.default_rng(seed)
    return rng.standard_normal((n,) + sample), rng.integers(0, classes, n)


def tape(net):
    """``{first layer index: unit class or None}`` of the network's last forward; None if the engine did not run."""
    held = net._runner._tape
    return None if held is None else {i: (type(u) if u is not None else None) for i, u in held[1]}


def expected_tape(name, n_layers):
    """``tape`` as it must read for network ``name``: its units, and None for every layer outside them."""
    units = NETWORKS[name][1]
    covered = {j for i, u in units.items() for j in range(i, i + u.size)}
    return {**{i: None for i in range(n_layers) if i not in covered}, **units}


def assert_close(got, want, what):
    got, want = np.asarray(nf.backend.to_numpy(got)), np.asarray(nf.backend.to_numpy(want))
    assert got.shape == want.shape, what
    scale = float(np.abs(want).max(initial=0.0))
    err = float(np.abs(got - want).max(initial=0.0))
    assert err <= RTOL * scale, f"{what}: max difference {err:.3e} > {RTOL:g} * {scale:.3g}"


def forward_backward(net, x, y, up):
    """Output; loss, dL/dx and the gradients through the loss; dL/dx and the gradients for the
    upstream gradient ``up``; ``net.gradients`` (host arrays in and out; on the parameters' device
    in between).  Also the tape of the first forward."""
    to_host = nf.backend.to_numpy
    x, up = net._to_batch(x), net._to_batch(up)
    yd = nf.backend.to_device(y, like=x)

    def grads():
        return {(l.name, k): to_host(v).copy() for l in net.trainable_layers for k, v in l.grads.items()}

    out = net.forward(x)
    ran = tape(net)
    loss = net.loss_fn.forward(out, yd)
    dx_loss = to_host(net.backward(net.loss_fn.backward())).copy()
    grads_loss = grads()
    out = to_host(net.forward(x)).copy()
    dx_up = to_host(net.backward(up)).copy()
    grads_up = grads()
    return dict(out=out, loss=float(loss), dx_loss=dx_loss, grads_loss=grads_loss, dx_up=dx_up, grads_up=grads_up,
                gradients=net.gradients(to_host(x), y)), ran


def assert_all_close(got, want):
    assert_close(got["out"], want["out"], "output")
    assert abs(got["loss"] - want["loss"]) <= RTOL * abs(want["loss"])
    for part in ("dx_loss", "dx_up"):
        assert_close(got[part], want[part], part)
    for part in ("grads_loss", "grads_up", "gradients"):
        assert got[part].keys() == want[part].keys() and got[part], part
        for key in want[part]:
            assert np.abs(want[part][key]).max() > 0, (part, key)     # a gradient that could differ
            assert_close(got[part][key], want[part][key], f"{part} {key}")


@pytest.mark.parametrize("name", list(NETWORKS))
def test_engine_on_equals_engine_off_forward_and_gradients(name):
    net, sample, classes = build(name, engine=True)
    x, y = data(sample, classes, 6)
    up = np.random.default_rng(2).standard_normal((6, classes))
    on, ran = forward_backward(net, x, y, up)
    assert ran == expected_tape(name, len(net.layers))          # the engine ran its units
    assert any(u is not None for u in ran.values())

    off_net, _, _ = build(name, engine=False)                   # the same weights (same seed), own code
    off, ran_off = forward_backward(off_net, x, y, up)
    assert ran_off is None                                      # the engine did not run
    assert_all_close(on, off)
    # the switch on the same network, both ways
    net.engine = False
    again, ran_again = forward_backward(net, x, y, up)
    assert ran_again is None
    for part in ("out", "dx_loss", "dx_up"):                    # the layers' own code: the same numbers exactly
        np.testing.assert_array_equal(again[part], off[part])
    for part in ("grads_loss", "grads_up", "gradients"):
        for key in off[part]:
            np.testing.assert_array_equal(again[part][key], off[part][key])
    net.engine = True
    assert_all_close(forward_backward(net, x, y, up)[0], off)
    assert tape(net) == expected_tape(name, len(net.layers))


@pytest.fixture
def small_shards(monkeypatch):
    """Batches of ``BATCH`` samples split over two workers (forked processes on Linux)."""
    monkeypatch.setattr(parallel, "MIN_SHARD_PROCESSES", 2)
    monkeypatch.setattr(parallel, "MIN_SHARD", 2)


def _fit(net, X, y):
    net.fit(X, y, epochs=EPOCHS, batch_size=BATCH, shuffle=True, seed=7, verbose=0)
    return [nf.backend.to_numpy(w).copy() for w in net.get_weights()]


@pytest.mark.filterwarnings("ignore::nn_from_scratch.TrainingWarning")    # 3 short epochs: "not learning"
@pytest.mark.parametrize("opt", list(OPTIMIZERS))
@pytest.mark.parametrize("name", list(NETWORKS))
def test_engine_on_equals_engine_off_after_three_epochs_of_fit(name, opt, small_shards):
    _, sample, classes = build(name, engine=False)
    X, y = data(sample, classes, N_FIT, seed=3)
    off = build(name, engine=False, optimizer=OPTIMIZERS[opt]())[0]
    start = [w.copy() for w in off.get_weights()]
    want = _fit(off, X, y)
    assert tape(off) is None                                      # the engine did not run

    off2 = build(name, engine=False, workers=2, optimizer=OPTIMIZERS[opt]())[0]
    got = _fit(off2, X, y)
    assert off2._sharded is None and tape(off2) is None             # engine off: no split either
    for g, w in zip(got, want):
        np.testing.assert_array_equal(g, w)

    for workers in (1, 2):
        on = build(name, engine=True, workers=workers, optimizer=OPTIMIZERS[opt]())[0]
        try:
            got = _fit(on, X, y)
            assert (on._sharded is not None) == (workers == 2)       # workers=2: the step was split
            assert tape(on) == expected_tape(name, len(on.layers))  # and this process's shard ran the units
            on.engine = False                                        # switched off: the workers go, no tape
            assert on._sharded is None and tape(on) is None
        finally:
            on.stop_workers()
        assert len(got) == len(want)
        for i, (g, w, s) in enumerate(zip(got, want, start)):
            assert not np.array_equal(w, s)                          # the weights moved
            assert_close(g, w, f"{name}/{opt}/workers={workers}: weight array {i}")


def test_a_students_subclass_runs_its_own_code_with_the_engine_on_and_off():
    """``LoudReLU`` doubles its gradient: the engine never replaces a subclass (it runs its own
    ``backward``), and with ``engine=False`` ``net.backward`` is the student's hand-written loop."""
    class LoudReLU(nf.ReLU):
        def _backward(self, dy):
            return 2 * super()._backward(dy)

    def layers():
        rng = np.random.default_rng(0)
        return [nf.Conv2D(1, 3, 3, seed=rng, dtype=np.float64), LoudReLU(), nf.MaxPool(pool_size=2),
                nf.Vectorization(), nf.Linear(3 * 3 * 3, 4, seed=rng, dtype=np.float64)]

    x = np.random.default_rng(1).standard_normal((5, 1, 8, 8))
    up = np.random.default_rng(2).standard_normal((5, 4))
    off = nf.NeuralNetwork(layers(), engine=False)
    off.forward(x)
    dx_off = off.backward(up)
    grads_off = [g.copy() for l in off.trainable_layers for g in l.grads.values()]

    hand = layers()                                               # the student's loop
    h = x
    for layer in hand:
        h = layer.forward(h)
    d = up
    for layer in reversed(hand):
        d = layer.backward(d)
    np.testing.assert_array_equal(dx_off, d)
    for a, b in zip(grads_off, [g for l in hand for g in l.grads.values()]):
        np.testing.assert_array_equal(a, b)

    on = nf.NeuralNetwork(layers())
    on.forward(x)
    assert tape(on) == {0: ConvUnit, 1: None, 2: MaxPoolUnit, 3: None, 4: None}   # not fused: the subclass runs
    assert_close(on.backward(up), dx_off, "dL/dx")
    for a, b in zip([g for l in on.trainable_layers for g in l.grads.values()], grads_off):
        assert_close(a, b, "gradient")

    plain = nf.NeuralNetwork([l if not isinstance(l, LoudReLU) else nf.ReLU() for l in layers()], engine=False)
    plain.forward(x)
    np.testing.assert_allclose(plain.backward(up) * 2, dx_off, rtol=1e-14, atol=0)   # the subclass's own rule ran


@pytest.mark.filterwarnings("ignore::nn_from_scratch.TrainingWarning")
def test_an_edit_of_relu_backward_shows_in_fit_with_the_engine_off(monkeypatch):
    """What the switch is for: a student edits ``ReLU.backward`` (here: returns zeros) and sees it
    change what ``fit`` trains with ``engine=False``; with the engine on, its ``ElementwiseUnit``
    computes the ReLU instead (docs: the engine replaces the exact class ``ReLU``)."""
    _, sample, classes = build("lab-cnn", engine=False)
    X, y = data(sample, classes, N_FIT, seed=3)

    def trained(engine):
        return _fit(build("lab-cnn", engine=engine, optimizer=nf.SGD(0.05))[0], X, y)

    off, on = trained(False), trained(True)
    start = build("lab-cnn", engine=False)[0].get_weights()
    with monkeypatch.context() as m:
        m.setattr(activations.ReLU, "_backward", lambda self, dy: dy * 0)
        edited_off, edited_on = trained(False), trained(True)
    # engine off: no gradient gets through the ReLUs, so the convolutions never move; the
    # last layer still learns, differently from before
    np.testing.assert_array_equal(edited_off[0], start[0])
    np.testing.assert_array_equal(edited_off[1], start[1])
    assert not np.array_equal(off[0], start[0])
    assert not np.allclose(edited_off[-1], off[-1])
    # engine on: the edit is not what runs (ElementwiseUnit: the layer's forward, the engine's backward); the same weights as before
    for a, b in zip(edited_on, on):
        np.testing.assert_array_equal(a, b)
    for a, b in zip(on, off):
        assert_close(a, b, "engine on vs off, unedited")


@pytest.mark.parametrize("bad", ["yes", 1, None, "False"])
def test_engine_takes_only_true_or_false(bad):
    layers, _, _ = lab_cnn(0)
    with pytest.raises(TypeError, match=r"engine must be True or False"):
        nf.NeuralNetwork(layers, engine=bad)
    net = nf.NeuralNetwork(layers)
    with pytest.raises(TypeError, match=r"engine"):
        net.engine = bad
    assert net.engine is True


# ------------------------------------------------------------------ CuPy
@requires_gpu
@pytest.mark.filterwarnings("ignore::nn_from_scratch.TrainingWarning")
@pytest.mark.parametrize("name", list(NETWORKS))
def test_engine_on_equals_engine_off_on_cupy(name, gpu):
    """The same equality with the parameters and data on the GPU (the engine's CuPy kernels:
    the convolution's gathered patches, pooling, ReLU and the softmax loss; no phase blocks).
    Skipped without CuPy or without a CUDA GPU (``gpu_utils.requires_gpu``)."""
    pytest.importorskip("cupy")
    net, sample, classes = build(name, engine=True)
    assert isinstance(net.layers[0].params["W"], gpu.xp.ndarray)
    x, y = data(sample, classes, 6)
    up = np.random.default_rng(2).standard_normal((6, classes))
    on, ran = forward_backward(net, x, y, up)
    assert ran is not None and all(ran.get(i) is not None for i, layer in enumerate(net.layers)
                                   if type(layer) is nf.Convolution)     # the engine ran its units
    off_net = build(name, engine=False)[0]
    off, ran_off = forward_backward(off_net, x, y, up)
    assert ran_off is None
    assert_all_close(on, off)
    X, Y = data(sample, classes, N_FIT, seed=3)
    for opt in OPTIMIZERS.values():
        want = _fit(build(name, engine=False, optimizer=opt())[0], X, Y)
        got = _fit(build(name, engine=True, optimizer=opt())[0], X, Y)
        for i, (g, w) in enumerate(zip(got, want)):
            assert_close(g, w, f"{name} on CuPy: weight array {i}")
