"""Gradient checks: hand-written backward passes against float64 finite differences.

For a layer ``y = f(x; W)`` and a random upstream gradient ``r`` (same shape as
``y``) the scalar ``phi = <f(x; W), r>`` has gradients ``dphi/dx = backward(r)``
and ``dphi/dW = W_grad``.  Each checked coordinate ``u`` (of ``x`` or of a
parameter) is compared with the centred difference::

    num_u = <f(u + eps) - f(u - eps), r> / (2 eps)

and the relative error::

    rel_u = max(|ana - num| - noise_u, 0) / max(|ana| + |num|, floor)

(``floor`` keeps coordinates whose gradient is exactly 0 from dividing by 0).
``noise_u`` is the rounding noise of the centred difference itself: the outputs
are only known to about ``macheps`` relative precision, so::

    noise_u = NOISE_ULPS * macheps * sum_i (|f_i(u + eps)| + |f_i(u - eps)|) |r_i| / (2 eps)

summed over the output entries ``i`` that the coordinate changes.  Without it, a
coordinate whose true gradient is tiny next to the output (say 1e-7 against a
loss of 1) would show a relative error of 1e-5 from rounding alone, although
both gradients agree to every digit that float64 differences can resolve.
(Measured over ~80,000 coordinates of linear layers, where the centred
difference has no truncation error, ``|ana - num|`` stayed below 4 * noise/NOISE_ULPS.)

Kinks (ReLU at 0, a max-pool changing its argmax) make the centred difference
meaningless; a coordinate is skipped when its one-sided differences disagree::

    second(eps) = |(f(u + eps) - f(u)) - (f(u) - f(u - eps))| / eps

is the jump between the one-sided slopes: about ``eps * f''`` for a smooth
function, the slope jump itself at a kink.  A coordinate whose ``second(eps)``
exceeds ``kink_tol * max(|num|, |ana|)`` (and the rounding noise) is looked at
again with half the step: a smooth function's second difference halves and its
centred difference stays put (to ``O(eps^2)``); if either fails the coordinate
sits at a kink and is skipped.  (The scale is the coordinate's own gradient, not
a constant: with a batch-mean loss the gradients, and so the kinks' slope
jumps, can be 1e-5, and a kink would then pass for a wrong gradient.)

A random upstream gradient (not all ones) is essential: with ``r = 1`` a
backward pass that, e.g., sums where it should weight, or transposes a square
matrix, can still pass.  It must also be unrelated to the input: drawn from
``default_rng(seed)`` it would equal the ``x`` a user draws the same way
(``rng = np.random.default_rng(0); x = rng.standard_normal(...)``), and a
LeakyReLU that takes its mask from ``dy`` instead of ``x`` would pass.  So
``r`` (and the coordinates picked) come from ``upstream_rng(seed)``: the stream
of ``SeedSequence(seed, spawn_key=(UPSTREAM_KEY,))``, a child stream that no
``default_rng(int)``, ``default_rng([ints])`` or ``SeedSequence(int)`` a user
writes produces.

Randomness: finite differences need ``f`` to be a function of its input.  The
checks run inside ``fixed_randomness()`` of the layer (of every layer of a
network), where a stochastic layer (a dropout) reuses one draw of its random
numbers, and first compute the forward twice at the same point: when the two
differ the result says which layer is not deterministic (and what to implement)
instead of reporting kinks or errors, and nothing is checked.

The result says how many coordinates were checked; ``passed(tol)`` is False when
none were (all at kinks, or a non-deterministic forward), whatever the errors.
"""
import contextlib
from dataclasses import dataclass, field

import numpy as np

from ..backend import read_scalars, to_device, to_numpy
from ..layers.base import Neuron

__all__ = ["GradCheckResult", "check_layer", "check_loss", "check_network", "numerical_gradient", "upstream_rng",
           "UPSTREAM_KEY"]

#: spawn key of the upstream gradients' stream (a fixed odd 64-bit constant; see the module docstring)
UPSTREAM_KEY = 0x9E3779B97F4A7C15


def upstream_rng(seed=0):
    """The generator of random upstream gradients for ``seed``: never the stream of ``default_rng(seed)``."""
    return np.random.default_rng(np.random.SeedSequence(int(seed), spawn_key=(UPSTREAM_KEY,)))

#: safety factor on the rounding-noise estimate of a centred difference (see module docstring)
NOISE_ULPS = 10.0


@dataclass
class GradCheckResult:
    """Outcome of a gradient check.

    ``max_rel_error`` is the worst relative error over all checked coordinates,
    ``worst`` is ``(array name, index, analytic, numeric)`` for that coordinate
    (array name ``"x"`` for the input or a parameter name); ``per_array`` has the worst error of each
    array and ``per_array_checked`` how many of its coordinates were checked;
    ``checked``/``skipped`` count coordinates (skipped = at a kink).  ``problem``
    says why nothing could be checked (a forward that is not deterministic), else None.
    """

    max_rel_error: float = 0.0
    worst: tuple = None
    per_array: dict = field(default_factory=dict)
    checked: int = 0
    skipped: int = 0
    per_array_checked: dict = field(default_factory=dict)
    problem: str = None

    def passed(self, tol):
        """True when coordinates were checked and every relative error is at most ``tol``."""
        return self.problem is None and self.checked > 0 and self.max_rel_error <= tol

    def __str__(self):
        if self.problem is not None:
            return f"NOT CHECKED: {self.problem}"
        if self.checked == 0:
            return (f"NOTHING CHECKED: all {self.skipped} coordinates sit at kinks (points where the function "
                    f"is not differentiable); check at another point")
        where = "-" if self.worst is None else f"{self.worst[0]}{list(self.worst[1])}"
        if self.max_rel_error == 0:
            err = "max relative error 0 (analytic and numerical gradients agree in every digit)"
        else:
            err = f"max relative error {self.max_rel_error:.3e} at {where}"
        arrays = ", ".join(f"{k} {v}" for k, v in self.per_array_checked.items())
        return (f"{self.checked} coordinates checked ({arrays}; {self.skipped} skipped at kinks): {err}")


def _fixed(stack, layers):
    """Enter ``fixed_randomness()`` of every layer that has it."""
    for layer in layers:
        cm = getattr(layer, "fixed_randomness", None)
        if cm is not None:
            stack.enter_context(cm())


def _not_deterministic(layer, a, b):
    diff = float(np.max(np.abs(to_numpy(a).astype(np.float64) - to_numpy(b).astype(np.float64)))) \
        if np.shape(to_numpy(a)) == np.shape(to_numpy(b)) else float("nan")
    name = getattr(layer, "name", type(layer).__name__)
    text = (f"forward of {name} ({type(layer).__name__}) is not deterministic: two forwards of the same x "
            f"differ (by up to {diff:.3g}), so finite differences cannot check its backward. ")
    if getattr(layer, "stochastic", False):
        text += ("It is marked stochastic, but its random numbers were drawn again inside fixed_randomness(): "
                 "draw them with self.random_draw('mask', lambda: ...) or implement fixed_randomness() so that "
                 "inside it every forward reuses one draw")
    else:
        text += ("If it draws random numbers, set the class attribute stochastic = True and implement "
                 "fixed_randomness() (or draw them with self.random_draw('mask', lambda: ...)), so that inside "
                 "`with layer.fixed_randomness():` every forward reuses one draw")
    return text


def _pick(size, n_coords, rng):
    if n_coords is None or n_coords >= size:
        return np.arange(size)
    return rng.choice(size, size=n_coords, replace=False)


def _merge(result, name, arr_shape, flat_idx, ana, num, rel, skipped):
    result.skipped += int(skipped.sum())
    ok = ~skipped
    result.checked += int(ok.sum())
    result.per_array_checked[name] = int(ok.sum())
    if not ok.any():
        result.per_array[name] = 0.0
        return
    r = np.where(ok, rel, -1.0)
    j = int(np.argmax(r))
    result.per_array[name] = float(r[j])
    if r[j] > result.max_rel_error or result.worst is None:
        result.max_rel_error = float(r[j])
        where = tuple(int(i) for i in np.unravel_index(int(flat_idx[j]), arr_shape))
        result.worst = (name, where, float(ana[j]), float(num[j]))


def _compare(outputs, array, analytic, weights, flat_idx, eps, kink_tol, floor):
    """Centred differences at flat indices of ``array``.

    ``outputs()`` recomputes the output (reading ``array``); the difference of
    two outputs is taken element-wise *before* weighting with ``weights`` (the
    upstream gradient), so entries the coordinate does not touch cancel exactly.
    """
    if not array.flags.c_contiguous:  # reshape(-1) must be a view: the perturbations write through it
        raise ValueError("gradient check: the perturbed array must be C-contiguous")
    flat = array.reshape(-1)
    olds = to_numpy(flat)[flat_idx].tolist()   # one device->host copy, not one per coordinate
    ana = to_numpy(analytic).reshape(-1)[flat_idx]
    num = np.empty(len(flat_idx))
    rel = np.empty(len(flat_idx))
    skipped = np.zeros(len(flat_idx), dtype=bool)
    base = to_numpy(outputs()).copy() if kink_tol is not None else None
    w = to_numpy(weights)

    def differences(i, old, h):
        """(centred difference, second difference, rounding noise) of step h at flat index i."""
        flat[i] = old + h
        yp = to_numpy(outputs()).copy()
        flat[i] = old - h
        ym = to_numpy(outputs()).copy()
        flat[i] = old
        centred = float(((yp - ym) * w).sum()) / (2 * h)
        changed = yp != ym
        noise = NOISE_ULPS * np.finfo(np.float64).eps * float(
            ((np.abs(yp) + np.abs(ym)) * np.abs(w) * changed).sum()) / (2 * h)
        second = None if base is None else float((((yp - base) - (base - ym)) * w).sum()) / h
        return centred, second, noise

    for j, (i, old) in enumerate(zip(flat_idx, olds)):
        num[j], second, noise = differences(i, old, eps)
        if kink_tol is not None and abs(second) > 4 * noise and \
                abs(second) > kink_tol * max(abs(num[j]), abs(ana[j])):
            # a candidate kink: look again with half the step.  For a smooth function the
            # second difference halves and the centred difference stays put; at a kink
            # inside the stencil one of the two fails.
            num2, second2, _ = differences(i, old, eps / 2)
            if abs(second2) > 0.75 * abs(second) or \
                    abs(num2 - num[j]) > kink_tol * max(abs(num[j]), abs(ana[j])) + 4 * noise:
                skipped[j] = True
        rel[j] = max(abs(ana[j] - num[j]) - noise, 0.0) / max(abs(ana[j]) + abs(num[j]), floor)
    return ana, num, rel, skipped


def _require_float64(layer):
    if isinstance(layer, Neuron) and layer.dtype != np.float64:
        raise ValueError(f"gradient checks need float64: call {layer.name}.astype(np.float64) first "
                         f"(the layer computes in {layer.dtype})")


def check_layer(layer, x, n_coords=None, eps=1e-5, kink_tol=1e-3, seed=0, upstream=None,
                params=True, floor=1e-12):
    """Check ``layer.backward`` (dL/dx and every parameter gradient) at input ``x``.

    ``n_coords``: how many random coordinates per array (None: all).
    ``kink_tol``: None disables kink skipping (for smooth layers).
    Returns a ``GradCheckResult``.
    """
    _require_float64(layer)
    with contextlib.ExitStack() as stack:
        _fixed(stack, [layer])
        return _check_layer(layer, x, n_coords, eps, kink_tol, seed, upstream, params, floor)


def _check_layer(layer, x, n_coords, eps, kink_tol, seed, upstream, params, floor):
    rng = upstream_rng(seed)
    like = next(iter(layer.params.values()), x)   # a neuron's data go where its parameters are
    x = to_device(np.array(to_numpy(x), dtype=np.float64), like=like)
    y_first = to_numpy(layer.forward(x)).copy()
    y = layer.forward(x)
    if not np.array_equal(y_first, to_numpy(y)):
        return GradCheckResult(problem=_not_deterministic(layer, y_first, y))
    r = to_device(upstream if upstream is not None else rng.standard_normal(y.shape), like=y)
    x_before, r_before = to_numpy(x).copy(), to_numpy(r).copy()
    dx = layer.backward(r)
    grads = {k: v.copy() for k, v in layer.grads.items()}
    if not np.array_equal(to_numpy(x), x_before) or not np.array_equal(to_numpy(r), r_before):
        raise AssertionError(f"{layer.name}: forward/backward modified its input or upstream gradient")

    xw = x.copy()

    def outputs():
        return layer.forward(xw)

    result = GradCheckResult()
    idx = _pick(xw.size, n_coords, rng)
    _merge(result, "x", xw.shape, idx, *_compare(outputs, xw, dx, r, idx, eps, kink_tol, floor))
    if params:
        for name, p in layer.params.items():
            idx = _pick(p.size, n_coords, rng)
            _merge(result, name, p.shape, idx, *_compare(outputs, p, grads[name], r, idx, eps, kink_tol, floor))
    layer.forward(x)  # leave the caches as for x
    return result


def check_loss(loss, prediction, target, eps=1e-5, seed=0, floor=1e-12, n_coords=None):
    """Check ``loss.backward(upstream)`` against differences of ``upstream * loss``."""
    rng = upstream_rng(seed)
    z = to_device(np.array(to_numpy(prediction), dtype=np.float64), like=prediction)  # stays on its backend
    up = float(rng.uniform(0.5, 2.0))
    loss.forward(z, target)
    dz = loss.backward(up)
    zw = z.copy()

    def outputs():
        return np.asarray(read_scalars(loss.forward(zw, target), why="gradcheck")[0])

    result = GradCheckResult()
    idx = _pick(zw.size, n_coords, rng)
    _merge(result, "prediction", zw.shape, idx, *_compare(outputs, zw, dz, up, idx, eps, None, floor))
    return result


def check_network(network, x, y, n_coords=None, eps=1e-5, kink_tol=1e-3, seed=0, floor=1e-12):
    """Check the whole chain: d(mean loss)/d(input) and every parameter gradient."""
    for layer in network.trainable_layers:
        _require_float64(layer)
    with contextlib.ExitStack() as stack:
        _fixed(stack, list(network.layers) + [network.loss_fn])
        return _check_network(network, x, y, n_coords, eps, kink_tol, seed, floor)


def _first_nondeterministic(network, x):
    """The first layer whose output differs between two forwards of the same ``x`` (or None)."""
    a = network.forward(x, return_all=True)
    a = [to_numpy(o).copy() for o in a]
    b = network.forward(x, return_all=True)
    for layer, oa, ob in zip(network.layers, a, b):
        if not np.array_equal(oa, to_numpy(ob)):
            return layer, oa, ob
    return None


def _check_network(network, x, y, n_coords, eps, kink_tol, seed, floor):
    rng = upstream_rng(seed)
    x = network._to_batch(np.array(to_numpy(x), dtype=np.float64))   # onto the parameters' device
    culprit = _first_nondeterministic(network, x)
    if culprit is not None:
        return GradCheckResult(problem=_not_deterministic(*culprit))
    out = network.forward(x)
    network.loss_fn.forward(out, y)
    dx = network.backward(network.loss_fn.backward())
    grads = {(layer.name, k): v.copy() for layer in network.trainable_layers for k, v in layer.grads.items()}
    xw = x.copy()

    def outputs():
        return np.asarray(read_scalars(network.loss_fn.forward(network.forward(xw), y), why="gradcheck")[0])

    result = GradCheckResult()
    idx = _pick(xw.size, n_coords, rng)
    _merge(result, "x", xw.shape, idx, *_compare(outputs, xw, dx, 1.0, idx, eps, kink_tol, floor))
    for layer in network.trainable_layers:
        for name, p in layer.params.items():
            idx = _pick(p.size, n_coords, rng)
            key = f"{layer.name}.{name}"
            _merge(result, key, p.shape, idx,
                   *_compare(outputs, p, grads[(layer.name, name)], 1.0, idx, eps, kink_tol, floor))
    return result


def numerical_gradient(f, x, eps=1e-5):
    """Centred-difference gradient of a scalar function ``f`` at ``x`` (float64, all coordinates)."""
    x = np.array(x, dtype=np.float64)
    g = np.empty_like(x)
    flat, gf = x.reshape(-1), g.reshape(-1)
    for i in range(flat.size):
        old = flat[i]
        flat[i] = old + eps
        fp = f(x)
        flat[i] = old - eps
        fm = f(x)
        flat[i] = old
        gf[i] = (fp - fm) / (2 * eps)
    return g
