"""Convolution -> ReLU -> 2x2 MaxPool run by pooling phase (engine/phase_pool.py, ``fusion.PhaseBlockUnit``).

References: the three layers one by one - their own code (``engine=False``: the plain im2col
convolution and pooling, which the TensorFlow cross-checks hold) and the engine without the
phase blocks (``fusion.PHASES = False``) - float64 centred finite differences of the whole
network, and the adjoint identity of the backward pass.  Integer weights and data make every
sum exact in any order, so the phase path must then give the layers' numbers bit for bit,
windows with tied maxima included.  Which unit ran is read from the runner's tape.
"""
import os

import numpy as np
import pytest

import nn_from_scratch as nf
from engine_helpers import ThroughEngine, record_processes
from nn_from_scratch.checks import gradcheck
from nn_from_scratch.engine import conv as engine_conv
from nn_from_scratch.engine import fusion, phase_pool
from nn_from_scratch.engine.parallel import allowed
from nn_from_scratch.engine.pooling import MaxPoolUnit
from nn_from_scratch.layers.base import NotReadyError, ShapeError

# (C, F, kernel, padding, (H, W), batch): odd and even sizes (an odd conv output drops its last
# row/column in the pool), rectangular kernels, padding that leaves input rows no plane reads
CONFIGS = [
    (1, 6, 5, 2, (28, 28), 3),                 # LeNet-5's first block
    (6, 16, 5, 0, (14, 14), 2),                # and its second
    (2, 3, 5, "same", (9, 11), 2),             # odd conv output: 9x11 -> pooled 4x5
    (3, 2, (5, 7), (1, 3), (12, 13), 1),
    (2, 4, 7, "valid", (15, 16), 3),           # 9x10 -> 4x5: the input's last row is never read
    (1, 1, (7, 5), (0, 2), (10, 8), 4),
]


def _block(C, F, kernel, padding, seed, integer, use_bias=True):
    rng = np.random.default_rng(seed)
    conv = nf.Convolution(in_channels=C, out_channels=F, kernel_size=kernel, padding=padding, seed=seed,
                          dtype=np.float64, use_bias=use_bias)
    if integer:
        for p in conv.params.values():
            p[...] = rng.integers(-1, 2, p.shape)
    return [conv, nf.ReLU(), nf.MaxPool(pool_size=2)]


def _network(C, F, kernel, padding, hw, seed=0, integer=False, use_bias=True):
    layers = _block(C, F, kernel, padding, seed, integer, use_bias) + [nf.Vectorization()]
    h = np.zeros((1, C) + hw)
    for layer in layers:
        h = layer.forward(h)
    linear = nf.Linear(h.shape[1], 3, seed=seed + 1, dtype=np.float64)
    if integer:
        linear.params["W"][...] = np.random.default_rng(seed + 2).integers(-1, 2, linear.params["W"].shape)
    return layers + [linear]


def _data(C, hw, n, seed, integer):
    """``(x, dL/doutput)``: small integers (every sum exact) or normal."""
    rng = np.random.default_rng(seed + 10)
    if integer:
        return (rng.integers(-2, 3, (n, C) + hw).astype(np.float64),
                rng.integers(-2, 3, (n, 3)).astype(np.float64))
    return rng.standard_normal((n, C) + hw), rng.standard_normal((n, 3))


class _Result(tuple):
    """``(output, dL/dx, {(layer index, parameter): gradient})``, with ``.net`` the network that ran."""


def _run(layers, x, g, need_input_grad=True, engine=True):
    net = nf.NeuralNetwork(layers, engine=engine)
    y = net.forward(x)
    dx = net.backward(g, need_input_grad=need_input_grad)
    result = _Result((y, dx, {(i, k): v.copy() for i, layer in enumerate(layers) for k, v in layer.grads.items()}))
    result.net = net
    return result


def _own(layers, x, g, need_input_grad=True):
    """The layers' own code, one by one (``engine=False``)."""
    return _run(layers, x, g, need_input_grad, engine=False)


def _plain(monkeypatch, body):
    """``body()`` through the engine without the phase blocks (``fusion.PHASES = False``)."""
    with monkeypatch.context() as m:
        m.setattr(fusion, "PHASES", False)
        return body()


def _tape(runner):
    """``[(first layer index, unit or None)]`` of ``runner``'s last forward."""
    return runner._tape[1] if runner._tape is not None else []


def _phase_unit(runner):
    """The ``PhaseBlockUnit`` that ran layers 0-2 in ``runner``'s last forward, or None."""
    for first, unit in _tape(runner):
        if first == 0 and isinstance(unit, fusion.PhaseBlockUnit):
            return unit
    return None


def _ran_by_phase(net_or_engine):
    return _phase_unit(net_or_engine._runner if hasattr(net_or_engine, "_runner") else net_or_engine.runner) is not None


def _compare(got, want, exact):
    check = np.testing.assert_array_equal if exact else (
        lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-13 * max(1.0, np.abs(b).max())))
    (y, dx, grads), (y0, dx0, grads0) = got, want
    check(y, y0)
    if dx0 is None:
        assert dx is None
    else:
        check(dx, dx0)
    assert grads.keys() == grads0.keys()
    for k in grads:
        check(grads[k], grads0[k])


@pytest.mark.parametrize("integer", [True, False], ids=["integers-exact", "normal-float64"])
@pytest.mark.parametrize("C,F,kernel,padding,hw,n", CONFIGS)
def test_by_phase_equals_the_layers_one_by_one(monkeypatch, C, F, kernel, padding, hw, n, integer):
    layers = _network(C, F, kernel, padding, hw, integer=integer)
    x, g = _data(C, hw, n, 0, integer)
    want = _own(layers, x, g)
    plain = _plain(monkeypatch, lambda: _run(layers, x, g))
    assert [(i, type(u) if u else None) for i, u in _tape(plain.net._runner)][:2] == \
        [(0, engine_conv.ConvUnit), (1, fusion.ReluPoolUnit)]          # no phase block
    got = _run(layers, x, g)
    assert _ran_by_phase(got.net)
    _compare(got, want, exact=integer)
    _compare(got, plain, exact=integer)
    if integer:     # ties are there: windows whose maximum is shared, and zeros the ReLU makes
        h = layers[0].forward(x)
        assert (h <= 0).mean() > 0.2 and (h > 0).sum() > 3 * len(np.unique(h[h > 0]))
    # the first layer of a network: no dL/dx
    got = _run(layers, x, g, need_input_grad=False)
    assert _ran_by_phase(got.net)
    _compare(got, _own(layers, x, g, need_input_grad=False), exact=integer)


def test_without_bias(monkeypatch):
    C, F, kernel, padding, hw, n = CONFIGS[3]
    layers = _network(C, F, kernel, padding, hw, integer=True, use_bias=False)
    x, g = _data(C, hw, n + 2, 9, True)
    want = _own(layers, x, g)
    got = _run(layers, x, g)
    assert _ran_by_phase(got.net) and "b" not in layers[0].grads
    _compare(got, want, exact=True)
    _compare(got, _plain(monkeypatch, lambda: _run(layers, x, g)), exact=True)


@pytest.mark.parametrize("chunk_bytes", [1, 40_000, 1 << 30])
def test_any_chunking_gives_the_same_numbers(chunk_bytes):
    """One sample per chunk, a few uneven chunks, one chunk: each chunk's rows gathered again in
    backward or reused (the last one's) must not change a number."""
    C, F, kernel, padding, hw, _ = CONFIGS[2]
    layers = _network(C, F, kernel, padding, hw, integer=True)
    x, g = _data(C, hw, 7, 3, True)
    want = _own(layers, x, g)
    with engine_conv.settings(phase_chunk_bytes=chunk_bytes):
        net = nf.NeuralNetwork(layers)
        y = net.forward(x)
        dx = net.backward(g)
        got = y, dx, {(i, k): v.copy() for i, layer in enumerate(layers) for k, v in layer.grads.items()}
        plan = _phase_unit(net._runner).plan
        assert {1: len(plan.chunks) == 7, 40_000: 1 < len(plan.chunks) < 7,
                1 << 30: len(plan.chunks) == 1}[chunk_bytes], plan.chunks
        _compare(got, want, exact=True)
        y = net.forward(x)                                     # and again, buffers reused
        assert _phase_unit(net._runner).plan is plan
        _compare((y, net.backward(g), {(i, k): v.copy() for i, layer in enumerate(layers)
                                      for k, v in layer.grads.items()}), want, exact=True)


def test_finite_differences_of_the_whole_network():
    C, F, kernel, padding, hw, n = CONFIGS[3]
    layers = _network(C, F, kernel, padding, hw, seed=4)
    net = nf.NeuralNetwork(layers, loss_fn=nf.SoftMaxLoss())
    x, _ = _data(C, hw, n + 1, 4, False)
    res = gradcheck.check_network(net, x, np.array([0, 2]), n_coords=60, seed=2)
    assert _ran_by_phase(net)
    assert res.passed(1e-6), str(res)
    assert res.checked >= 150


def test_backward_is_the_adjoint_of_the_forwards_linear_part():
    """With the ReLU's mask and the maxima's phases fixed by one forward, the block is linear in
    ``(x, W, b)``: <J (dx, dW, db), r> = <(dx, dW, db), backward(r)> to float64 rounding."""
    C, F, kernel, padding, hw, n = CONFIGS[2]
    layers = _block(C, F, kernel, padding, 5, False)
    conv = layers[0]
    rng = np.random.default_rng(6)
    x = rng.standard_normal((n, C) + hw)
    engine = ThroughEngine(layers)
    y = engine.forward(x)
    assert [type(u) for u in engine.units()] == [fusion.PhaseBlockUnit]
    r = rng.standard_normal(y.shape)
    dx = engine.backward(r)
    plan = engine.units()[0].plan
    arg, alive = plan.argmax(), y > 0
    tx, tW, tb = rng.standard_normal(x.shape), rng.standard_normal(conv.params["W"].shape), rng.standard_normal(F)
    # J t: the convolution of the perturbation (the layer's own code), read at the kept maxima
    probe = nf.Convolution(in_channels=C, out_channels=F, kernel_size=kernel, padding=padding, dtype=np.float64)
    probe.params["W"][...] = tW
    probe.params["b"][...] = tb
    h_t = probe.forward(x)
    conv_copy = nf.Convolution(in_channels=C, out_channels=F, kernel_size=kernel, padding=padding, dtype=np.float64)
    conv_copy.params["W"][...] = conv.params["W"]
    conv_copy.params["b"][...] = 0
    h_t = h_t + conv_copy.forward(tx)
    U, V = y.shape[2:]
    phases = h_t[:, :, :2 * U, :2 * V].reshape(n, F, U, 2, V, 2).transpose(0, 1, 2, 4, 3, 5).reshape(n, F, U, V, 4)
    Jt = np.take_along_axis(phases, arg[..., None].astype(np.intp), axis=-1)[..., 0] * alive
    lhs = np.vdot(Jt, r)
    rhs = np.vdot(tx, dx) + np.vdot(tW, conv.grads["W"]) + np.vdot(tb, conv.grads["b"])
    assert abs(lhs - rhs) <= 1e-10 * (abs(lhs) + 1.0)
    # where the ReLU lets a window through, the phase the unit kept is the layers' own argmax
    # (MaxPool's first maximum, row-major: offset 2a + b)
    nf.NeuralNetwork(layers, engine=False).forward(x)
    np.testing.assert_array_equal(arg[alive], layers[2]._cache["argmax"][alive])


def test_a_layer_the_engine_ran_has_no_cache_and_a_students_loop_runs_with_the_engine_off():
    """After ``net.forward`` with the engine on (by phase), the three layers' own ``backward``
    say that no forward ran (each naming itself), rather than use an older forward's cache; with
    ``engine=False``, ``net.forward`` then each layer's own ``backward`` in a hand-written loop
    gives exactly the engine's numbers (integer data: every sum exact)."""
    C, F, kernel, padding, hw, n = CONFIGS[4]
    layers = _network(C, F, kernel, padding, hw, integer=True)
    for i, layer in enumerate(layers):
        layer.name = f"layer{i}"
    x, g = _data(C, hw, n, 1, True)
    layers[0].forward(x)                                      # an older forward of the layer's own
    net = nf.NeuralNetwork(layers)
    y = net.forward(x)
    assert _ran_by_phase(net)
    engine = (y, net.backward(g), {(i, k): v.copy() for i, layer in enumerate(layers) for k, v in layer.grads.items()})
    net.forward(x)
    for i in (2, 1, 0):
        with pytest.raises(NotReadyError, match=rf"layer '{layers[i].name}'.*before forward"):
            layers[i].backward(np.ones((1,)))

    off = nf.NeuralNetwork(layers, engine=False)
    y = off.forward(x)
    d = g
    for layer in reversed(layers):
        d = layer.backward(d)
    _compare((y, d, {(i, k): v.copy() for i, layer in enumerate(layers) for k, v in layer.grads.items()}),
             engine, exact=True)
    # a forward of the convolution alone after an engine forward: its own backward, its own numbers
    net.forward(x)
    h = layers[0].forward(x)
    dh = np.random.default_rng(3).integers(-2, 3, h.shape).astype(np.float64)
    dx = layers[0].backward(dh)
    ref = nf.NeuralNetwork([layers[0]], engine=False)
    ref.forward(x)
    np.testing.assert_array_equal(ref.backward(dh), dx)


def test_inputs_and_upstream_gradients_are_left_alone():
    C, F, kernel, padding, hw, n = CONFIGS[1]
    layers = _network(C, F, kernel, padding, hw)
    x, g = _data(C, hw, n, 2, False)
    x0, g0 = x.copy(), g.copy()
    net = nf.NeuralNetwork(layers)
    net.forward(x)
    assert _ran_by_phase(net)
    block = ThroughEngine(layers[:3])
    y = block.forward(x)
    assert [type(u) for u in block.units()] == [fusion.PhaseBlockUnit]
    up = np.random.default_rng(0).standard_normal(y.shape)
    up0 = up.copy()
    dx = block.backward(up)
    net.backward(g)
    np.testing.assert_array_equal(x, x0)
    np.testing.assert_array_equal(g, g0)
    np.testing.assert_array_equal(up, up0)
    assert not np.shares_memory(y, x) and not np.shares_memory(dx, up)
    y2 = block.forward(x)
    assert not np.shares_memory(y2, x) and not np.shares_memory(block.backward(up), up)


def test_a_wrong_upstream_gradient_names_the_pool():
    layers = _block(2, 3, 5, 0, 0, False)
    layers[2].name = "pool1"
    block = ThroughEngine(layers)
    block.forward(np.ones((2, 2, 10, 10)))
    assert [type(u) for u in block.units()] == [fusion.PhaseBlockUnit]
    with pytest.raises(ShapeError, match=r"pool1.*\(2, 3, 3, 3\).*\(2, 3, 4, 4\)"):
        block.backward(np.ones((2, 3, 4, 4)))


@pytest.mark.parametrize("case", ["3x3 kernel", "conv stride 2", "pool 3x3", "pool same", "float32 data",
                                  "ReLU subclass", "frozen conv"])
def test_what_stays_with_the_layers(monkeypatch, case):
    """Where the phase path does not apply, the block runs otherwise (and still agrees with the
    layers' own code)."""
    kernel, stride, pool_kw, dtype = 5, 1, dict(pool_size=2), np.float64
    relu_cls = nf.ReLU
    if case == "3x3 kernel":
        kernel = 3
    elif case == "conv stride 2":
        stride = 2
    elif case == "pool 3x3":
        pool_kw = dict(pool_size=3, stride=2)
    elif case == "pool same":
        pool_kw = dict(pool_size=2, padding="same")
    elif case == "ReLU subclass":
        relu_cls = type("MyReLU", (nf.ReLU,), {})
    conv = nf.Convolution(in_channels=2, out_channels=3, kernel_size=kernel, stride=stride, seed=0, dtype=dtype)
    if case == "frozen conv":
        conv.trainable = False
    layers = [conv, relu_cls(), nf.MaxPool(**pool_kw)]
    x = np.random.default_rng(0).standard_normal((2, 2, 13, 13))
    if case == "float32 data":
        x = x.astype(np.float32)      # the float64 layer casts it in its own forward
    assert not phase_pool.applies(conv, layers[2], x) or case == "ReLU subclass"
    block = ThroughEngine(layers)
    y = block.forward(x)
    units = [type(u) if u is not None else None for u in block.units()]
    assert fusion.PhaseBlockUnit not in units
    if case == "ReLU subclass":       # the subclass runs its own code; the others their units
        assert units == [engine_conv.ConvUnit, None, MaxPoolUnit]
    else:
        assert units == [engine_conv.ConvUnit, fusion.ReluPoolUnit]
    y0 = _plain(monkeypatch, lambda: ThroughEngine(layers).forward(x))
    np.testing.assert_allclose(y, y0, rtol=1e-12, atol=1e-12)
    own = nf.NeuralNetwork(layers, engine=False).forward(x)
    np.testing.assert_allclose(y, own, rtol=1e-12, atol=1e-12)


def test_the_split_training_step_runs_by_phase_too(monkeypatch, tmp_path):
    """Forked workers and this process run their shards' blocks by phase: a split step's loss and
    parameters equal the one-worker step's of the layers' own code (float64, to rounding)."""
    X = np.random.default_rng(1).standard_normal((60, 1, 12, 12))
    y = np.arange(60) % 3
    # workers forked from this process (they inherit the recording patch), even beside an earlier
    # test's idle helper threads (engine/parallel/allowed.py: ``alone``)
    monkeypatch.setattr(allowed, "alone", lambda: True)

    def net(workers, engine=True):
        layers = [nf.Convolution(in_channels=1, out_channels=3, kernel_size=5, padding=2, seed=2, dtype=np.float64),
                  nf.ReLU(), nf.MaxPool(pool_size=2), nf.Vectorization(), nf.Linear(108, 3, seed=3, dtype=np.float64)]
        return nf.NeuralNetwork(layers, loss_fn=nf.SoftMaxLoss(), optimizer=nf.SGD(0.1), workers=workers,
                                engine=engine)

    one = net(1, engine=False)
    loss1 = one.train_step(X, y)[0]
    plain = net(1)
    loss_plain = _plain(monkeypatch, lambda: plain.train_step(X, y)[0])
    seen = record_processes(monkeypatch, fusion.PhaseBlockUnit, tmp_path / "pids")
    split = net(2)
    loss2, _ = split.train_step(X, y)
    assert split._sharded is not None                      # the step was split
    assert _ran_by_phase(split)                            # and this process's shard ran by phase
    workers = set(split._sharded.pids) if split._sharded.kind == "processes" else set()
    split.stop_workers()
    pids = seen()
    assert os.getpid() in pids and workers <= pids        # and the workers' shards too
    for ref_loss, ref in ((loss1, one), (loss_plain, plain)):
        np.testing.assert_allclose(float(loss2), float(ref_loss), rtol=1e-12)
        for a, b in zip(ref.trainable_layers, split.trainable_layers):
            for k in a.params:
                np.testing.assert_allclose(b.params[k], a.params[k], rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("C,F,kernel,padding,hw,n", CONFIGS[:5])
def test_by_phase_equals_tensorflow(C, F, kernel, padding, hw, n):
    """The block as the trainer runs it against TensorFlow's ``conv2d -> relu -> max_pool2d``
    (float64), with a random upstream gradient through ``GradientTape(output_gradients=...)``."""
    tf = pytest.importorskip("tensorflow")
    import tf_reference as ref

    layers = _block(C, F, kernel, padding, 7, False)
    conv = layers[0]
    rng = np.random.default_rng(8)
    x = rng.standard_normal((n, C) + hw)
    block = ThroughEngine(layers)
    y = block.forward(x)
    assert [type(u) for u in block.units()] == [fusion.PhaseBlockUnit]
    r = rng.standard_normal(y.shape)
    dx = block.backward(r)
    (lo_h, hi_h), (lo_w, hi_w) = conv._pads(hw)
    xt = tf.constant(ref.to_channels_last(x))
    kt = tf.constant(ref.kernel_to_tf(conv.params["W"]))
    bt = tf.constant(conv.params["b"])
    with tf.GradientTape() as tape:
        tape.watch([xt, kt, bt])
        h = tf.nn.conv2d(tf.pad(xt, [[0, 0], [lo_h, hi_h], [lo_w, hi_w], [0, 0]]), kt, 1, "VALID") + bt
        yt = tf.nn.max_pool2d(tf.nn.relu(h), 2, 2, "VALID")
    gx, gk, gb = tape.gradient(yt, [xt, kt, bt], output_gradients=tf.constant(ref.to_channels_last(r)))
    np.testing.assert_allclose(y, ref.to_channels_first(yt.numpy()), rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(dx, ref.to_channels_first(gx.numpy()), rtol=1e-11, atol=1e-12)
    np.testing.assert_allclose(conv.grads["W"], ref.kernel_from_tf(gk.numpy()), rtol=1e-11, atol=1e-12)
    np.testing.assert_allclose(conv.grads["b"], gb.numpy(), rtol=1e-11, atol=1e-12)
