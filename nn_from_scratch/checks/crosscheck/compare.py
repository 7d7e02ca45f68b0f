"""``compare``: every forward output and every gradient, layer by layer, against Keras.

Both frameworks get the same input batch ``x`` and the same weights.  Then

* with labels ``y``: the loss (``SoftMaxLoss`` -> Keras's cross-entropy from
  logits, ``MSELoss`` -> ``MeanSquaredError``) is the scalar that is differentiated;
* without labels: ``L = sum(output * G)`` with a random upstream gradient ``G``
  (standard normal, from ``gradcheck.upstream_rng(seed)``: never the stream of
  ``default_rng(seed)`` a user draws ``x`` from) at the output: every layer's
  backward then sees a generic upstream gradient (an all-ones one would hide,
  e.g., a transposed square weight gradient; one equal to ``x``, a mask taken
  from ``dy``).

Tolerances: ``tolerances``; sums over the batch that cancel and BatchNorm's
float32 statistics are judged as ``scales`` says (docs/CROSSCHECK.md, "Tolerances").

Keras's side runs the Keras layers one by one under a ``tf.GradientTape`` and
asks for the gradient with respect to every intermediate tensor and every
variable; each group of Keras layers (e.g. ZeroPadding + Conv2D, Permute +
Flatten) is mapped back to our layer, and its tensors are converted to our
layout before comparing, so worst indices are in OUR layout.

Modes:

* ``"chained"``: Keras runs end to end from ``x`` (forward and backward), exactly
  as a Keras user would run it.
* ``"isolated"``: every Keras group gets OUR input of that layer (and, for the
  backward pass, OUR upstream gradient), so each row judges one layer alone.
* ``"auto"`` (default): forward outputs and the loss value chained (end to end),
  gradients isolated.  Forward maps are continuous, so end-to-end outputs differ
  only by rounding; gradients are not (ReLU at 0, a max-pool choosing between two
  nearly equal entries): when a ReLU input lies within float32 rounding of 0, a
  chained run may legitimately send the two frameworks to different sides of the
  kink and report an O(1) gradient difference that is no bug.  Isolated
  gradients see identical inputs, so that cannot happen, and a wrong backward
  pass is still caught at exactly its layer.
"""
import copy

import numpy as np
import tensorflow as tf

from ...backend import to_device, to_numpy
from ...layers.losses import SoftMaxLoss
from ..gradcheck import upstream_rng
from .convert import build_twin, copy_layers, keras_loss, unpack
from .layout import from_keras_layout, to_keras_layout
from .report import CompareReport, LayerRow
from .scales import batchnorm_tolerance, rounding_allowance
from .tolerances import Check, resolve_tolerances

__all__ = ["compare", "MODES"]


def _param_like(layers):
    for layer in layers:
        for v in layer.params.values():
            return v
    return None


def _dtype(layers):
    for layer in layers:
        if getattr(layer, "trainable", False):
            return np.dtype(layer.dtype)
    return np.dtype(np.float32)


def _adapt_input(x, shape):
    """Add a missing channel axis ``(N, H, W) -> (N, 1, H, W)`` when the layers want one."""
    if shape is not None and x.ndim == len(shape) and shape[0] == 1 and tuple(x.shape[1:]) == tuple(shape[1:]):
        return x[:, None]
    return x


def _run_ours(layers, x, loss, y, upstream):
    """Forward and backward through our layers; everything as NumPy arrays."""
    like = _param_like(layers)
    h = to_device(x, like=like) if like is not None else x
    ins, outs = [], []
    for layer in layers:
        ins.append(h)
        h = layer.forward(h)
        outs.append(h)
    res = {"ins": [to_numpy(a) for a in ins], "outs": [to_numpy(a) for a in outs]}
    if loss is not None:
        value = loss.forward(h, to_device(y, like=h))
        g = loss.backward()
        res["loss"] = float(to_numpy(value))
        res["dlogits"] = to_numpy(g)
    else:
        g = to_device(upstream, like=h)
    ups, dxs, grads = [None] * len(layers), [None] * len(layers), [None] * len(layers)
    for i in range(len(layers) - 1, -1, -1):
        ups[i] = to_numpy(g)
        g = layers[i].backward(g)
        dxs[i] = to_numpy(g)
        grads[i] = {k: to_numpy(v).copy() for k, v in layers[i].grads.items()}
    res.update(ups=ups, dxs=dxs, grads=grads)
    return res


def _keras_targets(loss, y):
    y = to_numpy(y)
    if isinstance(loss, SoftMaxLoss):
        sparse = y.ndim == 1 or (y.ndim == 2 and y.shape[1] == 1)
        return (y.reshape(-1).astype(np.int64) if sparse else y.astype(np.float32)), sparse
    return to_keras_layout(y), True



def _run_keras_chained(twin, x, loss, y, upstream, dtype):
    xk = tf.constant(to_keras_layout(x), dtype=dtype.name)
    with tf.GradientTape() as tape:
        tape.watch(xk)
        hs = [xk]
        h = xk
        for g in twin.groups:
            h = g(h)
            hs.append(h)
        if loss is not None:
            yk, sparse = _keras_targets(loss, y)
            L = keras_loss(loss, sparse, dtype)(tf.constant(yk), h)
        else:
            L = tf.reduce_sum(h * tf.constant(to_keras_layout(upstream), dtype=h.dtype))
    pms = [(g.index, pm) for g in twin.groups for pm in g.params if pm.keras_var is not None]
    grads = tape.gradient(L, hs + [pm.keras_var for _, pm in pms],
                          unconnected_gradients=tf.UnconnectedGradients.ZERO)
    n = len(twin.groups)
    res = {"outs": [from_keras_layout(t.numpy()) for t in hs[1:]],
           "dxs": [from_keras_layout(grads[i].numpy()) for i in range(n)],
           "pgrads": [{} for _ in range(n)]}
    for (i, pm), gr in zip(pms, grads[n + 1:]):
        res["pgrads"][i][pm.label] = pm.to_ours(gr.numpy())
    if loss is not None:
        res["loss"] = float(L.numpy())
        res["dlogits"] = from_keras_layout(grads[n].numpy())
    return res


def _run_keras_isolated(twin, ours, loss, y, dtype):
    n = len(twin.groups)
    res = {"outs": [None] * n, "dxs": [None] * n, "pgrads": [{} for _ in range(n)]}
    for i, g in enumerate(twin.groups):
        xin = tf.constant(to_keras_layout(ours["ins"][i]), dtype=dtype.name)
        with tf.GradientTape() as tape:
            tape.watch(xin)
            out = g(xin)
        pms = [pm for pm in g.params if pm.keras_var is not None]
        up = tf.constant(to_keras_layout(ours["ups"][i]), dtype=out.dtype)
        grads = tape.gradient(out, [xin] + [pm.keras_var for pm in pms], output_gradients=up,
                              unconnected_gradients=tf.UnconnectedGradients.ZERO)
        res["outs"][i] = from_keras_layout(out.numpy())
        res["dxs"][i] = from_keras_layout(grads[0].numpy())
        for pm, gr in zip(pms, grads[1:]):
            res["pgrads"][i][pm.label] = pm.to_ours(gr.numpy())
    if loss is not None:
        logits = tf.constant(to_keras_layout(ours["outs"][-1]), dtype=dtype.name)
        yk, sparse = _keras_targets(loss, y)
        with tf.GradientTape() as tape:
            tape.watch(logits)
            L = keras_loss(loss, sparse, dtype)(tf.constant(yk), logits)
        res["loss"] = float(L.numpy())
        res["dlogits"] = from_keras_layout(tape.gradient(L, logits).numpy())
    return res


MODES = ("auto", "chained", "isolated")


def compare(network_or_layers, x, y=None, loss=None, seed=0, rtol=None, mode="auto", input_shape=None):
    """Compare ours with Keras on one batch; returns a ``CompareReport``.

    ``network_or_layers``: a ``NeuralNetwork``, a list of layers (optionally ending
    with a loss) or one layer.  ``x``: a batch in our layout ``(N, C, *S)``/``(N, D)``.
    ``y``: labels (integers ``(N,)`` or one-hot rows) or regression targets; then
    the loss is ``loss`` (default: the network's ``loss_fn``, else ``SoftMaxLoss``).
    Without ``y`` a random upstream gradient (``seed``) is used at the output.
    ``rtol``: None (``TOLERANCES``), a float, or a dict with keys
    ``forward``/``gradient``.  ``mode``: ``"auto"`` (default), ``"chained"`` or
    ``"isolated"`` (see the module docstring).

    The user's layers are not touched: the comparison runs on copies.
    """
    if mode not in MODES:
        raise ValueError(f"compare: mode must be one of {MODES}, received {mode!r}")
    layers, net_loss, _, shape = unpack(network_or_layers, input_shape)
    if y is None and loss is not None:
        raise ValueError("compare: a loss needs labels/targets y=")
    if y is not None:
        loss = copy.deepcopy(loss if loss is not None else (net_loss if net_loss is not None else SoftMaxLoss()))
    else:
        loss = None
    layers = copy_layers(layers)
    dtype = _dtype(layers)
    x = _adapt_input(np.asarray(to_numpy(x)), shape).astype(dtype, copy=False)
    tol = resolve_tolerances(rtol)
    twin = build_twin(layers, tuple(x.shape[1:]), dtype=dtype.name)
    upstream = None
    if loss is None:
        out_shape = (x.shape[0],) + twin.groups[-1].out_shape
        upstream = upstream_rng(seed).standard_normal(out_shape).astype(dtype)
    ours = _run_ours(layers, x, loss, y, upstream)
    if mode == "chained":
        ref = _run_keras_chained(twin, x, loss, y, upstream, dtype)
    elif mode == "isolated":
        ref = _run_keras_isolated(twin, ours, loss, y, dtype)
    else:
        ref = _run_keras_isolated(twin, ours, loss, y, dtype)
        chained = _run_keras_chained(twin, x, loss, y, upstream, dtype)
        ref["outs"] = chained["outs"]
        if loss is not None:
            ref["loss"] = chained["loss"]
    return _report(twin, ours, ref, loss, tol, mode, x, dtype)


def _report(twin, ours, ref, loss, tol, mode, x, dtype):
    rows = []
    fwd, grad = tol["forward"], tol["gradient"]
    carried = fwd      # outputs compared end to end inherit a BatchNorm's float32 tolerance (scales, case 2)
    for i, g in enumerate(twin.groups):
        layer = g.layer
        x_in, up = ours["ins"][i], ours["ups"][i]
        fwd_i = batchnorm_tolerance(layer, x_in, fwd, dtype)
        grad_i = batchnorm_tolerance(layer, x_in, grad, dtype)
        if mode != "isolated":
            carried = max(carried, fwd_i)
            fwd_i = carried
        checks = {"output": Check.of("output", ours["outs"][i], ref["outs"][i], fwd_i, "y"),
                  "dL/dx": Check.of("dL/dx", ours["dxs"][i], ref["dxs"][i], grad_i, "x")}
        for pm in g.params:
            mine = to_numpy(pm.ours(ours["grads"][i]))
            theirs = ref["pgrads"][i].get(pm.label)
            if theirs is None:
                theirs = np.zeros(pm.shape, dtype=mine.dtype)
            allow = rounding_allowance(layer, pm.label, x_in, up, dtype, bn_tol=grad_i if grad_i > grad else None)
            checks[f"dL/d{pm.label}"] = Check.of(f"dL/d{pm.label}", mine, theirs, grad, pm.array, pm.index_map,
                                                 allowance=allow)
        rows.append(LayerRow(i, layer.name, type(layer).__name__, g.keras_names, checks))
    n = len(rows)
    if loss is not None:
        checks = {"output": Check.of("output", np.float64(ours["loss"]), np.float64(ref["loss"]),
                                     carried if mode != "isolated" else fwd, "loss"),
                  "dL/dx": Check.of("dL/dx", ours["dlogits"], ref["dlogits"], grad, "x")}
        rows.append(LayerRow(n, loss.name, type(loss).__name__, "keras loss", checks))
    order = [(i, "output") for i in range(len(rows))]
    if loss is not None:
        order.append((n, "dL/dx"))
    for i in range(n - 1, -1, -1):
        order += [(i, q) for q in rows[i].checks if q not in ("output", "dL/dx")] + [(i, "dL/dx")]
    target = "labels, " + type(loss).__name__ if loss is not None else "random upstream gradient"
    return CompareReport(rows, order, tol, mode, target, x.shape[0], dtype.name)
