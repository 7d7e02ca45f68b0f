"""Optimizers follow Keras's update rules.

Our optimizer and the Keras optimizer with the same hyperparameters are applied
to identical variables with identical gradients for several steps, and the
variables are compared after every step.

* float64 variables: Keras then evaluates its rule in float64 too, so any
  difference is rounding only: rtol = 1e-12 proves the rules are the same.
* float32 variables (what training uses): both sides evaluate the same formulas
  in float32 in a slightly different order of operations (e.g. ``lr * wd``
  folded first), so each step can differ by a few units in the last place
  (float32 ulp = 1.2e-7 relative).  Over STEPS = 6 steps that stays within
  rtol = 1e-6 (8.4 ulp of a value's own size) plus atol = 1e-7 for entries near
  zero.  Adam's bias correction ``sqrt(1 - beta_2^t) / (1 - beta_1^t)`` is formed
  in the parameter dtype from float32(beta_2) = 0.99900001287..., as Keras does;
  formed in float64 instead it differs by ~1.3e-5 relative at t = 1, which the
  strict bound catches (``test_adam_bias_correction_dtype_matters``).

A wrong rule is far outside these bounds: the epsilon outside instead of inside
the square root (RMSProp), a missing bias correction (Adam) or classic instead
of Nesterov momentum are all detected (checked below by planting them).

The Keras comparisons run on NumPy only.  The rules written out by hand (float64
loops at the end of this file) are checked on NumPy and, with a GPU, on CuPy
(the ``backend`` fixture), where SGD-momentum/Nesterov and plain RMSprop run as
fused CuPy kernels.
"""
import numpy as np
import pytest

import nn_from_scratch as nf
from nn_from_scratch.backend import to_numpy
from nn_from_scratch.interfaces import Optimizer
from gpu_utils import requires_gpu
from planted_bugs import AdamWithoutBiasCorrection

STEPS = 6
RTOL, ATOL = 1e-6, 1e-7


class ParamHolder:
    """The minimal trainable object an Optimizer works on (params + grads by name)."""

    trainable = True

    def __init__(self, **params):
        self.params = params
        self.grads = {}
        self.name = "holder"

    def _describe(self):
        return "ParamHolder 'holder'"


@pytest.fixture(scope="module")
def keras():
    pytest.importorskip("tensorflow")
    import keras as k
    return k


CASES = [
    # (our optimizer, keras class name, keras kwargs)
    (lambda: nf.GradientDescent(lr=0.05), "SGD", dict(learning_rate=0.05)),
    (lambda: nf.GradientDescent(lr=0.05, momentum=0.9), "SGD", dict(learning_rate=0.05, momentum=0.9)),
    (lambda: nf.GradientDescent(lr=0.05, momentum=0.8, nesterov=True), "SGD",
     dict(learning_rate=0.05, momentum=0.8, nesterov=True)),
    (lambda: nf.GradientDescent(lr=0.05, momentum=0.9, weight_decay=0.1), "SGD",
     dict(learning_rate=0.05, momentum=0.9, weight_decay=0.1)),
    (lambda: nf.GradientDescent(lr=0.1, weight_decay=0.3), "SGD", dict(learning_rate=0.1, weight_decay=0.3)),
    (lambda: nf.Adam(), "Adam", dict()),
    (lambda: nf.Adam(lr=0.01, beta_1=0.8, beta_2=0.95, epsilon=1e-4), "Adam",
     dict(learning_rate=0.01, beta_1=0.8, beta_2=0.95, epsilon=1e-4)),
    (lambda: nf.Adam(lr=0.01, amsgrad=True), "Adam", dict(learning_rate=0.01, amsgrad=True)),
    (lambda: nf.Adam(lr=0.01, weight_decay=0.05), "Adam", dict(learning_rate=0.01, weight_decay=0.05)),
    (lambda: nf.RMSProp(), "RMSprop", dict()),
    (lambda: nf.RMSProp(lr=0.01, rho=0.8, epsilon=1e-5), "RMSprop",
     dict(learning_rate=0.01, rho=0.8, epsilon=1e-5)),
    (lambda: nf.RMSProp(lr=0.01, momentum=0.7), "RMSprop", dict(learning_rate=0.01, momentum=0.7)),
    (lambda: nf.RMSProp(lr=0.01, centered=True), "RMSprop", dict(learning_rate=0.01, centered=True)),
    (lambda: nf.RMSProp(lr=0.01, momentum=0.5, centered=True, weight_decay=0.02), "RMSprop",
     dict(learning_rate=0.01, momentum=0.5, centered=True, weight_decay=0.02)),
]
IDS = ["sgd", "sgd_momentum", "sgd_nesterov", "sgd_momentum_wd", "sgd_wd", "adam", "adam_custom",
       "adam_amsgrad", "adam_wd", "rmsprop", "rmsprop_custom", "rmsprop_momentum", "rmsprop_centered",
       "rmsprop_all"]


def _problem(seed=0, dtype=np.float32):
    """Initial values and a gradient sequence with entries of very different sizes."""
    rng = np.random.default_rng(seed)
    shapes = {"W": (7, 5), "b": (5,)}
    init = {k: rng.standard_normal(s).astype(dtype) for k, s in shapes.items()}
    grads = []
    for _ in range(STEPS):
        step = {}
        for k, s in shapes.items():
            scale = 10.0 ** rng.uniform(-4, 1, s)  # 1e-4 .. 10: exercises epsilon and the moments
            step[k] = (rng.standard_normal(s) * scale).astype(dtype)
        grads.append(step)
    return init, grads


def _run_ours(opt, init, grads):
    holder = ParamHolder(**{k: v.copy() for k, v in init.items()})
    history = []
    for g in grads:
        holder.grads = {k: v.copy() for k, v in g.items()}
        opt.step([holder])
        history.append({k: v.copy() for k, v in holder.params.items()})
        for k in g:
            assert holder.params[k].dtype == init[k].dtype
    return history


def _run_keras(keras, opt, init, grads):
    import tensorflow as tf
    names = sorted(init)
    dtype = init[names[0]].dtype.name
    variables = [keras.Variable(init[k], dtype=dtype) for k in names]
    history = []
    for g in grads:
        opt.apply_gradients([(tf.constant(g[k]), v) for k, v in zip(names, variables)])
        history.append({k: np.array(v.numpy()) for k, v in zip(names, variables)})
        assert history[-1][names[0]].dtype == np.dtype(dtype)
    return history


def _assert_close(ours, theirs, label, rtol=RTOL, atol=ATOL):
    for t, (a, b) in enumerate(zip(ours, theirs), start=1):
        for k in a:
            bound = atol + rtol * np.abs(b[k])
            diff = np.abs(a[k].astype(np.float64) - b[k])
            bad = diff > bound
            assert not bad.any(), (f"{label}: step {t}, {k}: {int(bad.sum())} entries differ, worst "
                                   f"{diff[bad].max():.3e} against a bound of {bound[bad].min():.3e}")


@pytest.mark.parametrize("make,kname,kkw", CASES, ids=IDS)
def test_matches_keras_float32(keras, make, kname, kkw):
    init, grads = _problem()
    ours = _run_ours(make(), init, grads)
    theirs = _run_keras(keras, getattr(keras.optimizers, kname)(**kkw), init, grads)
    # the parameters really moved (a no-op optimizer would not pass by accident)
    assert np.abs(ours[-1]["W"] - init["W"]).max() > 1e-3
    _assert_close(ours, theirs, kname)


# For float64 weights Keras still turns Python-float hyperparameters into float32
# tensors before casting them (tf.cast(0.9, float64) == 0.899999976, and the
# learning rate lives in a float32 variable), so the rules themselves can only be
# compared in float64 with hyperparameters that float32 holds exactly: dyadic ones.
CASES64 = [
    (lambda: nf.GradientDescent(lr=0.0625), "SGD", dict(learning_rate=0.0625)),
    (lambda: nf.GradientDescent(lr=0.0625, momentum=0.875), "SGD", dict(learning_rate=0.0625, momentum=0.875)),
    (lambda: nf.GradientDescent(lr=0.0625, momentum=0.75, nesterov=True), "SGD",
     dict(learning_rate=0.0625, momentum=0.75, nesterov=True)),
    (lambda: nf.GradientDescent(lr=0.0625, momentum=0.875, weight_decay=0.125), "SGD",
     dict(learning_rate=0.0625, momentum=0.875, weight_decay=0.125)),
    (lambda: nf.Adam(lr=2 ** -10, beta_1=0.875, beta_2=1 - 2 ** -10, epsilon=2 ** -23), "Adam",
     dict(learning_rate=2 ** -10, beta_1=0.875, beta_2=1 - 2 ** -10, epsilon=2 ** -23)),
    (lambda: nf.Adam(lr=2 ** -7, beta_1=0.75, beta_2=0.96875, epsilon=2 ** -14, amsgrad=True, weight_decay=0.0625),
     "Adam", dict(learning_rate=2 ** -7, beta_1=0.75, beta_2=0.96875, epsilon=2 ** -14, amsgrad=True,
                  weight_decay=0.0625)),
    (lambda: nf.RMSProp(lr=2 ** -10, rho=0.875, epsilon=2 ** -23), "RMSprop",
     dict(learning_rate=2 ** -10, rho=0.875, epsilon=2 ** -23)),
    (lambda: nf.RMSProp(lr=2 ** -7, rho=0.75, momentum=0.5, epsilon=2 ** -17, centered=True, weight_decay=0.03125),
     "RMSprop", dict(learning_rate=2 ** -7, rho=0.75, momentum=0.5, epsilon=2 ** -17, centered=True,
                     weight_decay=0.03125)),
]
IDS64 = ["sgd", "sgd_momentum", "sgd_nesterov", "sgd_momentum_wd", "adam", "adam_amsgrad_wd", "rmsprop",
         "rmsprop_momentum_centered_wd"]


@pytest.mark.parametrize("make,kname,kkw", CASES64, ids=IDS64)
def test_matches_keras_float64(keras, make, kname, kkw):
    init, grads = _problem(seed=1, dtype=np.float64)
    ours = _run_ours(make(), init, grads)
    theirs = _run_keras(keras, getattr(keras.optimizers, kname)(**kkw), init, grads)
    assert np.abs(ours[-1]["W"] - init["W"]).max() > 1e-3
    _assert_close(ours, theirs, kname, rtol=1e-12, atol=1e-14)


class Float64BiasCorrectionAdam(nf.Adam):
    """Adam with the bias correction formed in float64 Python math (the exact rule)."""

    def _update(self, param, grad, key):
        t = self.iterations
        m = self.state(key, param, "m")
        v = self.state(key, param, "v")
        m += (grad - m) * (1 - self.beta_1)
        v += (grad * grad - v) * (1 - self.beta_2)
        alpha = self.lr * (1 - self.beta_2 ** t) ** 0.5 / (1 - self.beta_1 ** t)
        param -= (m * alpha) / (v ** 0.5 + self.epsilon)


def test_adam_bias_correction_dtype_matters(keras):
    # Keras forms the bias correction in float32; the float64 form is measurably different,
    # so matching Keras at the strict bound really tests the arithmetic, not just the formula
    kkw = dict(learning_rate=0.01)
    init, grads = _problem()
    theirs = _run_keras(keras, keras.optimizers.Adam(**kkw), init, grads)
    _assert_close(_run_ours(nf.Adam(lr=0.01), init, grads), theirs, "Adam")
    with pytest.raises(AssertionError):
        _assert_close(_run_ours(Float64BiasCorrectionAdam(lr=0.01), init, grads), theirs, "Adam")


def test_defaults_match_keras(keras):
    pairs = [(nf.Adam(), keras.optimizers.Adam()), (nf.RMSProp(), keras.optimizers.RMSprop()),
             (nf.GradientDescent(), keras.optimizers.SGD())]
    for ours, theirs in pairs:
        cfg = theirs.get_config()
        assert ours.lr == pytest.approx(cfg["learning_rate"])
        for key in ("beta_1", "beta_2", "epsilon", "amsgrad", "rho", "momentum", "centered", "nesterov"):
            if key in cfg and hasattr(ours, key):
                assert getattr(ours, key) == pytest.approx(cfg[key]), (type(ours).__name__, key)


# --- the comparison can fail: planted wrong rules are far outside the tolerance -------------
class EpsilonOutsideRMSProp(nf.RMSProp):
    """sqrt(v) + eps instead of sqrt(v + eps)."""

    def _update(self, param, grad, key):
        v = self.state(key, param, "velocity")
        v *= self.rho
        v += (1 - self.rho) * grad * grad
        param -= self.lr * grad / (v ** 0.5 + self.epsilon)


@pytest.mark.parametrize("make,kname,kkw", [
    (lambda: EpsilonOutsideRMSProp(lr=0.01, epsilon=1e-3), "RMSprop", dict(learning_rate=0.01, epsilon=1e-3)),
    (lambda: AdamWithoutBiasCorrection(lr=0.01), "Adam", dict(learning_rate=0.01)),
    (lambda: nf.GradientDescent(lr=0.05, momentum=0.8), "SGD", dict(learning_rate=0.05, momentum=0.8, nesterov=True)),
], ids=["rmsprop_eps_outside", "adam_no_bias_correction", "classic_vs_nesterov"])
def test_wrong_rules_are_detected(keras, make, kname, kkw):
    init, grads = _problem()
    ours = _run_ours(make(), init, grads)
    theirs = _run_keras(keras, getattr(keras.optimizers, kname)(**kkw), init, grads)
    with pytest.raises(AssertionError):
        _assert_close(ours, theirs, kname)


# --- behaviour that needs no Keras ----------------------------------------------------------
def test_plain_sgd_by_hand(backend):
    w0 = np.array([1.0, -2.0, 3.0])
    g = np.array([0.5, 0.25, -1.0])
    holder = ParamHolder(W=backend.asarray(w0))
    holder.grads = {"W": backend.asarray(g)}
    nf.GradientDescent(lr=0.1).step([holder])
    np.testing.assert_allclose(to_numpy(holder.params["W"]), w0 - 0.1 * g, rtol=1e-15)


def test_state_is_kept_per_parameter_and_layer(backend):
    a = ParamHolder(W=backend.xp.zeros(3))
    b = ParamHolder(W=backend.xp.zeros(3))
    opt = nf.GradientDescent(lr=1.0, momentum=0.5)
    a.grads = {"W": backend.xp.ones(3)}
    b.grads = {"W": -backend.xp.ones(3)}
    opt.step([a, b])
    opt.step([a, b])
    # v1 = -g, v2 = 0.5 v1 - g = -1.5 g; w = v1 + v2 = -2.5 g
    np.testing.assert_allclose(to_numpy(a.params["W"]), -2.5 * np.ones(3))
    np.testing.assert_allclose(to_numpy(b.params["W"]), 2.5 * np.ones(3))
    assert opt.iterations == 2
    opt.reset()
    assert opt.iterations == 0


def test_state_goes_with_its_layer_and_is_never_inherited():
    """Momenta belong to the layer object: a layer that is garbage-collected takes its state
    with it (an optimizer kept across networks does not grow), and a new layer - even one that
    CPython places at the freed layer's address, so with the same ``id`` - starts from zero."""
    import gc
    opt = nf.GradientDescent(lr=1.0, momentum=0.5)
    old = ParamHolder(W=np.zeros(3))
    old.grads = {"W": np.ones(3)}
    opt.step([old])
    assert len(opt._state) == 1
    del old
    gc.collect()
    assert len(opt._state) == 0
    new = ParamHolder(W=np.zeros(3))
    new.grads = {"W": np.ones(3)}
    opt.step([new])                                 # v = -lr g: no momentum from "old"
    np.testing.assert_array_equal(new.params["W"], -np.ones(3))


def test_state_is_per_layer_object_even_for_unhashable_equal_or_slotted_layers():
    """The state is keyed by the layer object, never by its ``==``/hash: a ``@dataclass``
    layer (unhashable) trains, two equal layers keep their own momenta, and a layer without
    weak references (``__slots__``) keeps its state until ``reset``."""
    from dataclasses import dataclass, field

    @dataclass
    class DataHolder:
        params: dict
        grads: dict = field(default_factory=dict)
        trainable: bool = True

        def _describe(self):
            return "DataHolder"

    class SlotHolder:
        __slots__ = ("params", "grads", "trainable")

        def __init__(self):
            self.params, self.grads, self.trainable = {"W": np.zeros(1)}, {"W": np.ones(1)}, True

    opt = nf.GradientDescent(lr=1.0, momentum=0.5)
    a, b = DataHolder({"W": np.zeros(1)}, {"W": np.ones(1)}), DataHolder({"W": np.zeros(1)}, {"W": np.ones(1)})
    assert a == b
    opt.step([a])
    opt.step([a, b])
    np.testing.assert_array_equal(a.params["W"], [-2.5])      # v1 = -g, v2 = 0.5 v1 - g: w = -2.5 g
    np.testing.assert_array_equal(b.params["W"], [-1.0])      # its first step: no momentum from a
    slotted = SlotHolder()
    opt.step([slotted])
    opt.step([slotted])
    np.testing.assert_array_equal(slotted.params["W"], [-2.5])
    assert len(opt._state) == 3
    opt.reset()
    assert len(opt._state) == 0


def test_state_of_a_replaced_parameter_is_a_clear_error():
    opt = nf.Adam(0.1)
    layer = ParamHolder(W=np.zeros((4, 2), dtype=np.float32))
    layer.grads = {"W": np.ones((4, 2), dtype=np.float32)}
    opt.step([layer])
    layer.params["W"] = np.zeros((5, 2), dtype=np.float32)
    layer.grads = {"W": np.ones((5, 2), dtype=np.float32)}
    with pytest.raises(ValueError, match=r"Adam: its 'm' state for ParamHolder 'holder' parameter 'W' is "
                                         r"float32\(4, 2\) but the parameter is now float32\(5, 2\).*reset"):
        opt.step([layer])
    opt.reset()
    opt.step([layer])                               # after reset: fresh state of the new shape


def test_updates_are_in_place_and_keep_dtype(backend):
    W = backend.xp.ones((2, 2), dtype=np.float32)
    holder = ParamHolder(W=W)
    holder.grads = {"W": backend.xp.full((2, 2), 0.5, dtype=np.float32)}
    for opt in (nf.GradientDescent(0.1, momentum=0.9), nf.GradientDescent(0.1, momentum=0.9, nesterov=True),
                nf.Adam(0.1), nf.RMSProp(0.1), nf.RMSProp(0.1, centered=True)):
        before = to_numpy(W).copy()
        opt.step([holder])
        assert holder.params["W"] is W and W.dtype == np.float32
        assert not np.array_equal(to_numpy(W), before)  # it did update, in place


def test_step_without_gradient_is_a_clear_error():
    layer = nf.Linear(3, 2, name="fresh")
    with pytest.raises(RuntimeError, match=r"'fresh'.*no gradient for parameter 'W'.*backward"):
        nf.Adam().step([layer])


def test_non_trainable_layers_are_skipped():
    relu = nf.ReLU()
    nf.GradientDescent(0.1).step([relu])  # no error, nothing to do


@pytest.mark.parametrize("make,pattern", [
    (lambda: nf.GradientDescent(lr=0), r"GradientDescent: learning rate must be > 0, received 0"),
    (lambda: nf.GradientDescent(lr=-0.1), r"learning rate must be > 0, received -0.1"),
    (lambda: nf.GradientDescent(lr=0.1, momentum=1.0), r"GradientDescent: momentum must be in \[0, 1\), received 1.0"),
    (lambda: nf.GradientDescent(lr=0.1, momentum=-0.1), r"momentum must be in \[0, 1\), received -0.1"),
    (lambda: nf.GradientDescent(lr=0.1, weight_decay=-1), r"weight_decay must be in \[0, inf\], received -1"),
    (lambda: nf.Adam(beta_1=1.0), r"Adam: beta_1 must be in \[0, 1\), received 1.0"),
    (lambda: nf.Adam(beta_2=1.5), r"Adam: beta_2 must be in \[0, 1\), received 1.5"),
    (lambda: nf.Adam(epsilon=0), r"Adam: epsilon must be in \(0, inf\], received 0"),
    (lambda: nf.Adam(lr=float("nan")), r"Adam: learning rate must be > 0, received nan"),
    (lambda: nf.RMSProp(rho=1.0), r"RMSProp: rho must be in \[0, 1\), received 1.0"),
    (lambda: nf.RMSProp(momentum=2), r"RMSProp: momentum must be in \[0, 1\), received 2"),
    (lambda: nf.RMSProp(epsilon=-1e-7), r"RMSProp: epsilon must be in \(0, inf\], received -1e-07"),
])
def test_invalid_hyperparameters(make, pattern):
    with pytest.raises(ValueError, match=pattern):
        make()


def test_optimizer_by_name():
    from nn_from_scratch.optimizers import get
    assert isinstance(get("adam", lr=0.1), nf.Adam) and get("adam", lr=0.1).lr == 0.1
    assert isinstance(get("SGD"), nf.GradientDescent) and isinstance(get("rmsprop"), nf.RMSProp)
    opt = nf.Adam()
    assert get(opt) is opt
    with pytest.raises(ValueError, match=r"unknown optimizer 'adadelta'.*'adam'"):
        get("adadelta")
    assert issubclass(nf.SGD, Optimizer) and nf.SGD is nf.GradientDescent and nf.RMSprop is nf.RMSProp


# --- the rules written out by hand, on every backend ------------------------------------------
def _by_hand(kind, hp, w0, grads):
    """The update rules of the module docstring as plain float64 loops over steps (no arrays shared).

    Adam's bias correction uses beta rounded to the weights' dtype, as Keras (and we) form it.
    """
    w = w0.astype(np.float64).copy()
    v = np.zeros_like(w)
    m = np.zeros_like(w)
    a = np.zeros_like(w)
    u = np.zeros_like(w)
    vmax = np.zeros_like(w)
    out = []
    for t, g in enumerate(grads, start=1):
        g = g.astype(np.float64)
        lr = hp["lr"]
        if kind == "sgd":
            mom = hp.get("momentum", 0.0)
            if mom == 0:
                w = w - lr * g
            else:
                v = mom * v - lr * g
                w = w + (mom * v - lr * g if hp.get("nesterov") else v)
        elif kind == "adam":
            b1, b2, eps = hp["beta_1"], hp["beta_2"], hp["epsilon"]
            m = b1 * m + (1 - b1) * g
            v = b2 * v + (1 - b2) * g * g
            vmax = np.maximum(vmax, v)
            vv = vmax if hp.get("amsgrad") else v
            c1, c2 = (float(w0.dtype.type(b)) for b in (b1, b2))
            w = w - lr * np.sqrt(1 - c2 ** t) / (1 - c1 ** t) * m / (np.sqrt(vv) + eps)
        elif kind == "rmsprop":
            rho, eps, mom = hp["rho"], hp["epsilon"], hp.get("momentum", 0.0)
            v = rho * v + (1 - rho) * g * g
            if hp.get("centered"):
                a = rho * a + (1 - rho) * g
                inc = lr * g / np.sqrt(v - a * a + eps)
            else:
                inc = lr * g / np.sqrt(v + eps)
            if mom > 0:
                u = mom * u + inc
                w = w - u
            else:
                w = w - inc
        out.append(w.copy())
    return out


HAND_CASES = {
    "sgd": ("sgd", dict(lr=0.05)),
    "sgd_momentum": ("sgd", dict(lr=0.05, momentum=0.9)),
    "sgd_nesterov": ("sgd", dict(lr=0.05, momentum=0.8, nesterov=True)),
    "adam": ("adam", dict(lr=0.01, beta_1=0.9, beta_2=0.999, epsilon=1e-7)),
    "adam_amsgrad": ("adam", dict(lr=0.01, beta_1=0.8, beta_2=0.95, epsilon=1e-4, amsgrad=True)),
    "rmsprop": ("rmsprop", dict(lr=0.01, rho=0.9, epsilon=1e-7)),
    "rmsprop_momentum_centered": ("rmsprop", dict(lr=0.01, rho=0.8, epsilon=1e-5, momentum=0.5, centered=True)),
}


def _make(kind, hp):
    cls = {"sgd": nf.GradientDescent, "adam": nf.Adam, "rmsprop": nf.RMSProp}[kind]
    return cls(**hp)


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("case", sorted(HAND_CASES))
def test_rules_by_hand(backend, case, dtype):
    kind, hp = HAND_CASES[case]
    init, grads = _problem(seed=3, dtype=dtype)
    expected = _by_hand(kind, hp, init["W"], [g["W"] for g in grads])
    holder = ParamHolder(W=backend.asarray(init["W"]))
    opt = _make(kind, hp)
    for t, g in enumerate(grads):
        holder.grads = {"W": backend.asarray(g["W"])}
        opt.step([holder])
        got = to_numpy(holder.params["W"])
        assert got.dtype == dtype
        # float64: rounding only; float32: STEPS updates of a few ulp each (see the module docstring)
        rtol, atol = (1e-12, 1e-14) if dtype == np.float64 else (RTOL, ATOL)
        np.testing.assert_allclose(got, expected[t], rtol=rtol, atol=atol, err_msg=f"{case}, step {t + 1}")
    assert np.abs(expected[-1] - init["W"]).max() > 1e-3  # the rule really moved the weights


# --- the fused CuPy branch of each _update against its NumPy formula ---------------------------
@requires_gpu
@pytest.mark.parametrize("case", sorted(HAND_CASES))
def test_fused_branch_equals_the_formula_in_update(gpu, case):
    """On CuPy, ``_update`` runs one fused kernel where it has one (SGD, plain RMSProp, Adam without
    amsgrad); with the kernels switched off the same ``_update`` runs its NumPy formula on CuPy
    arrays.  The two agree to float32 rounding at every step (GPU only)."""
    import cupy
    from nn_from_scratch.engine import kernels
    kind, hp = HAND_CASES[case]
    init, grads = _problem(seed=5, dtype=np.float32)
    results = {}
    try:
        for fused in (True, False):
            kernels.use_fused(fused)
            holder, opt, got = ParamHolder(W=cupy.asarray(init["W"])), _make(kind, hp), []
            for g in grads:
                holder.grads = {"W": cupy.asarray(g["W"])}
                opt.step([holder])
                got.append(to_numpy(holder.params["W"]).copy())
            results[fused] = got
    finally:
        kernels.use_fused(True)
    for t, (a, b) in enumerate(zip(results[True], results[False])):
        np.testing.assert_allclose(a, b, rtol=RTOL, atol=ATOL, err_msg=f"{case}, step {t + 1}")


# --- the registry of optimizer names ----------------------------------------------------------
def test_every_optimizer_is_registered_by_its_names():
    from nn_from_scratch.training.optimizer_base import optimizer_class, optimizer_names
    expected = {"sgd": nf.GradientDescent, "gradientdescent": nf.GradientDescent, "adam": nf.Adam,
                "adamw": nf.AdamW, "adagrad": nf.AdaGrad, "rmsprop": nf.RMSProp, "kfac": nf.KFAC, "ekfac": nf.EKFAC}
    for name, cls in expected.items():
        assert optimizer_class(name) is cls and optimizer_class(name.upper()) is cls, name
        assert name in optimizer_names()
    assert nf.GradientDescent.names[0] == "sgd"          # the canonical name first
    # a model file records the class's own name
    for cls in (nf.GradientDescent, nf.AdamW, nf.RMSProp, nf.KFAC):
        assert optimizer_class(cls.__name__) is cls
    with pytest.raises(ValueError, match=r"unknown optimizer 'adamm'; expected one of \[.*'adam'.*'sgd'"):
        optimizer_class("adamm")
    with pytest.raises(ValueError, match="unknown optimizer 3"):
        optimizer_class(3)


def test_a_new_optimizer_registers_itself_and_loads_from_a_model_file(tmp_path):
    from nn_from_scratch.optimizers import get

    class SignDescent(Optimizer):
        """w <- w - lr sign(g)."""

        names = ("signdescent", "signsgd")

        def __init__(self, lr=0.01):
            super().__init__(lr)

        def _update(self, param, grad, key):
            param -= self.current_lr * np.sign(grad)

    assert type(get("signsgd", lr=0.5)) is SignDescent and get("SignDescent").lr == 0.01
    net = nf.NeuralNetwork([nf.Linear(3, 2)], loss_fn=nf.MSELoss(), optimizer=SignDescent(lr=0.25))
    path = str(tmp_path / "m.npz")
    net.save(path)
    loaded = nf.NeuralNetwork.load(path)
    assert type(loaded.optimizer) is SignDescent and loaded.optimizer.lr == 0.25


def test_names_must_be_lowercase_and_cannot_take_a_built_in_name():
    with pytest.raises(TypeError, match="lowercase"):
        type("Loud", (Optimizer,), {"names": ("Loud",), "_update": lambda self, p, g, k: None})
    with pytest.raises(TypeError, match="tuple"):
        type("Single", (Optimizer,), {"names": "single", "_update": lambda self, p, g, k: None})
    with pytest.raises(ValueError, match="'adam' already names the optimizer Adam"):
        type("MyAdam", (nf.Adam,), {"names": ("adam",)})
    from nn_from_scratch.training.optimizer_base import optimizer_class
    assert optimizer_class("adam") is nf.Adam
