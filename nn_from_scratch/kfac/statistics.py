"""What K-FAC reads from a batch: each layer's patches ``a_nt`` and per-example output gradients ``g_nt``.

The convention (derived in ``curvature.py``'s docstring) in array terms, for a layer with
``F`` outputs, ``T`` output positions and ``Dp`` patch entries (``C*K``, plus 1 with bias)::

    patch_rows(layer, x)  -> a: (N, T, Dp)   a[n, t] = im2col patch (channel-major), 1 appended last
    input_factor_sum(layer, x) -> sum_nt a a^T: (Dp, Dp)   without forming a (2-D convolutions) when cheaper
    output_rows(layer, g) -> g: (N, T, F)    the layer's output gradient, position-major
    to_matrix(layer, grads) -> (F, Dp)       [W.reshape(F, -1) | b] from the layer's own layout
    from_matrix(layer, M) -> {"W":..., "b":...}  and back

``record(net, X, y, fisher, ...)`` runs one forward pass layer by layer (no layers run together: every
layer's input is kept) and one backward pass per *column* of the Fisher type's output
factor, keeping what arrives at each Linear/Convolution output:

* ``"empirical"``: one column, ``N * dL/doutput`` of the batch's mean loss (labels ``y``);
  the pass that computes it is the training gradient itself (``keep_grads``);
* ``"mc"``: ``mc_samples`` columns, each the per-example gradient against a label drawn
  from the model (softmax: ``y ~ Cat(p)``; squared loss ``(1/D)||f - t||^2``: the Gaussian
  with that negative log-likelihood, ``t ~ N(f, D/2 I)``), scaled by ``1/sqrt(mc_samples)``;
* ``"type2"`` (softmax cross-entropy only): ``K`` columns ``S[:, c] = sqrt(p_c) (e_c - p)``,
  so ``sum_c S_c S_c^T = diag(p) - p p^T``, the Hessian of the per-example loss in the logits:
  the exact expectation over the softmax, deterministic;
* ``"gauss_newton"``: the columns of a square root of the per-example loss's Hessian in the
  network output: ``type2``'s for softmax cross-entropy, ``sqrt(2/D) e_d`` for the squared
  loss (``D`` outputs per example).  With it K-FAC is exact for linear models and squared
  loss (tests/test_curvature.py).

Samples never meet in these layers, so one backward pass with per-example upstream rows
gives every example's own gradient at every layer (never ``N`` separate passes).
"""
import math

import numpy as np

from ..backend import get_array_module, to_device
from ..layers.losses import MSELoss, SoftMaxLoss
from ..layers.conv import Convolution
from ..layers.dense import Linear
from ..layers.geometry import as_tuple, conv_output_shape, pad_input, patch_view, resolve_padding

__all__ = ["FISHER_TYPES", "SUPPORTED_LAYERS", "is_supported", "select_layers", "check_fisher",
           "patch_rows", "input_factor_sum", "input_factor_form", "output_rows", "to_matrix", "from_matrix",
           "matrix_shape", "n_positions", "record", "Record"]

FISHER_TYPES = ("empirical", "mc", "type2", "gauss_newton")
#: the layer classes the Kronecker factors are defined for (and their subclasses)
SUPPORTED_LAYERS = (Linear, Convolution)


def is_supported(layer):
    return isinstance(layer, SUPPORTED_LAYERS)


def select_layers(net, layers, where):
    """The layers to factor: ``layers=None`` every Linear/Convolution of ``net``; else the given
    names/layer objects, each checked (an unsupported one is named with its type)."""
    if not (hasattr(net, "layers") and hasattr(net, "loss_fn")):
        raise TypeError(f"{where}: net must be a NeuralNetwork, received {type(net).__name__}")
    if layers is None:
        chosen = [layer for layer in net.layers if is_supported(layer)]
        if not chosen:
            raise ValueError(f"{where}: the network has no Linear or Convolution layer; its layers are "
                             f"{[type(layer).__name__ for layer in net.layers]}")
        return chosen
    if isinstance(layers, (str,)) or not hasattr(layers, "__iter__"):
        layers = [layers]
    by_name = {layer.name: layer for layer in net.layers}
    chosen = []
    for spec in layers:
        layer = by_name.get(spec) if isinstance(spec, str) else spec
        if layer is None or all(layer is not other for other in net.layers):
            raise ValueError(f"{where}: no layer {spec!r} in this network; its layers are {list(by_name)}")
        if not is_supported(layer):
            raise TypeError(f"{where}: layer '{layer.name}' is a {type(layer).__name__}; Kronecker factors are "
                            "defined for Linear and Convolution layers only")
        if getattr(layer, "groups", 1) != 1:
            raise TypeError(f"{where}: layer '{layer.name}' is a grouped convolution (groups={layer.groups}); "
                            "its Fisher block is not one Kronecker product")
        chosen.append(layer)
    return chosen


def check_fisher(fisher, loss_fn, where, mc_samples=1):
    if fisher not in FISHER_TYPES:
        raise ValueError(f"{where}: fisher must be one of {FISHER_TYPES}, received {fisher!r}")
    if fisher == "type2" and not isinstance(loss_fn, SoftMaxLoss):
        raise ValueError(f"{where}: fisher='type2' is the exact expectation over the model's softmax and needs a "
                         f"SoftMaxLoss, but the network's loss is {type(loss_fn).__name__}; use "
                         "fisher='gauss_newton' (the exact Gauss-Newton matrix of a squared loss), 'mc' or 'empirical'")
    if fisher in ("mc", "gauss_newton") and not isinstance(loss_fn, (SoftMaxLoss, MSELoss)):
        raise ValueError(f"{where}: fisher={fisher!r} needs the model's output distribution, known for SoftMaxLoss "
                         f"and MSELoss; the network's loss is {type(loss_fn).__name__}: use fisher='empirical'")
    if fisher == "mc" and not (isinstance(mc_samples, (int, np.integer)) and mc_samples >= 1):
        raise ValueError(f"{where}: mc_samples must be an int >= 1, received {mc_samples!r}")


# ---------------------------------------------------------------- layout
def n_positions(layer, x_shape):
    """``T``: output positions of ``layer`` for an input of shape ``x_shape`` (1 for Linear)."""
    if isinstance(layer, Linear):
        return 1
    return math.prod(layer.compute_output_shape(tuple(x_shape[1:]))[1:])


def matrix_shape(layer):
    """``(F, Dp)`` of ``[W.reshape(F, -1) | b]``."""
    if isinstance(layer, Linear):
        return layer.out_features, layer.in_features + int(layer.use_bias)
    ck = layer.in_channels * math.prod(layer.kernel_size)
    return layer.out_channels, ck + int(layer.use_bias)


def _conv_geometry(layer, x_shape):
    """``(kernel, stride, dilation, pads, out)`` of a convolution for an input of shape ``x_shape``."""
    nd = len(x_shape) - 2
    kernel, stride, dilation = (as_tuple(v, nd, name) for v, name in ((layer.kernel_size, "kernel_size"),
                                (layer.stride, "stride"), (layer.dilation, "dilation")))
    pads = resolve_padding(layer.padding, x_shape[2:], kernel, stride, dilation)
    return kernel, stride, dilation, pads, conv_output_shape(x_shape[2:], kernel, stride, pads, dilation)


def patch_rows(layer, x, bias=True):
    """``a: (N, T, Dp)``: the layer's patches for its input ``x``, a 1 appended last with bias
    (``bias=False``: without it, ``(N, T, C*K)``).  C-contiguous: one copy out of the strided patch view
    (``layers/geometry.patch_view``), rows ``(t)`` position-major, columns ``(c, i)`` as ``im2col``'s rows."""
    xp = get_array_module(x)
    if isinstance(layer, Linear):
        rows = x.reshape(x.shape[0], 1, -1)
    else:
        nd = x.ndim - 2
        kernel, stride, dilation, pads, out = _conv_geometry(layer, x.shape)
        view = patch_view(pad_input(x, pads), kernel, stride, dilation, out)       # (N, C, *k, *O)
        order = (0,) + tuple(range(2 + nd, 2 + 2 * nd)) + (1,) + tuple(range(2, 2 + nd))
        rows = view.transpose(order).reshape(x.shape[0], math.prod(out), -1)      # (N, *O, C, *k): one copy
    if bias and layer.use_bias:
        ones = xp.ones(rows.shape[:2] + (1,), dtype=rows.dtype)
        rows = xp.concatenate([rows, ones], axis=2)
    return rows


def _with_bias(layer, body, col, count):
    """``[[body, col], [col^T, count]]`` with bias (the 1 appended to every patch), else ``body``."""
    if not layer.use_bias:
        return body
    d = body.shape[0]
    A = get_array_module(body).empty((d + 1, d + 1), dtype=np.float64)
    A[:d, :d] = body
    A[:d, d] = col
    A[d, :d] = col
    A[d, d] = count
    return A


def input_factor_sum(layer, x, form=None):
    """``sum_nt a_nt a_nt^T: (Dp, Dp)`` in float64 for the layer's input ``x`` (in ``x``'s dtype, summed
    in float64), the bias row and column (a 1 appended to every patch) from the patches' sum and the
    count ``N T``.  Two exact forms (``form``; None: the cheaper, ``input_factor_form``):

    * ``"patches"``: ``R^T R`` of the patch rows ``R = patch_rows(layer, x, bias=False)`` (one
      symmetric product, BLAS's ``syrk``);
    * ``"row windows"`` (2-D convolutions): the rows of the padded input that each output row reads,
      ``Z[(n, y), (c, i, w)] = x_pad[n, c, y s_1 + i d_1, w]`` (kernel row ``i``, every column ``w``),
      give ``M = Z^T Z``; entry ``((c, i, j), (c', i', j'))`` of the factor is the sum of
      ``M[(c, i, o s_2 + j d_2), (c', i', o s_2 + j' d_2)]`` over the output columns ``o``: a
      diagonal of a block of ``M``.  Cheaper when the padded width ``W`` is small against the
      kernel's (``W^2 < O_2 k_2^2``): no patch copy, ``W^2 / (O_2 k_2^2)`` of the products.
    """
    form = input_factor_form(layer, x.shape) if form is None else form
    if form not in ("patches", "row windows") or (form == "row windows" and x.ndim != 4):
        raise ValueError(f"input_factor_sum: form must be 'patches', or 'row windows' for a 2-D convolution, "
                         f"received {form!r} for input shape {tuple(x.shape)}")
    if isinstance(layer, Linear) or form == "patches":
        R = patch_rows(layer, x, bias=False)
        R = R.reshape(-1, R.shape[-1])
        return _with_bias(layer, (R.T @ R).astype(np.float64), R.sum(axis=0, dtype=np.float64), R.shape[0])
    xp = get_array_module(x)
    (kh, kw), (sh, sw), (dh, dw), pads, (oh, ow) = _conv_geometry(layer, x.shape)
    xpad = pad_input(x, pads)
    n, c, _, wp = xpad.shape
    st = xpad.strides
    Z = xp.lib.stride_tricks.as_strided(xpad, shape=(n, oh, c, kh, wp),
                                        strides=(st[0], st[2] * sh, st[1], st[2] * dh, st[3]))
    Z = Z.reshape(n * oh, c * kh * wp)                                                      # one copy
    M = (Z.T @ Z).astype(np.float64).reshape(c * kh, wp, c * kh, wp)
    A = xp.empty((c * kh, kw, c * kh, kw), dtype=np.float64)
    span = sw * (ow - 1) + 1
    for j in range(kw):
        for jj in range(kw):
            block = M[:, j * dw:j * dw + span:sw, :, jj * dw:jj * dw + span:sw]                # (ck, O_2, ck, O_2)
            A[:, j, :, jj] = xp.diagonal(block, axis1=1, axis2=3).sum(axis=-1)
    cols = Z.sum(axis=0, dtype=np.float64).reshape(c * kh, wp)
    col = xp.stack([cols[:, j * dw:j * dw + span:sw].sum(axis=1) for j in range(kw)], axis=1)   # (c kh, kw)
    d = c * kh * kw
    return _with_bias(layer, A.reshape(d, d), col.reshape(d), n * oh * ow)


def input_factor_form(layer, x_shape):
    """``"row windows"`` or ``"patches"``: which form ``input_factor_sum`` takes (module docstring)."""
    if isinstance(layer, Linear) or len(x_shape) != 4:
        return "patches"
    (_, kw), _, _, pads, (_, ow) = _conv_geometry(layer, x_shape)
    wp = x_shape[3] + sum(pads[1])
    return "row windows" if wp * wp < ow * kw * kw else "patches"


def output_rows(layer, g):
    """``(N, T, F)`` from the layer's output gradient ``(N, F)`` or ``(N, F, *O)``."""
    if isinstance(layer, Linear):
        return g.reshape(g.shape[0], 1, -1)
    return g.reshape(g.shape[0], g.shape[1], -1).transpose(0, 2, 1)


def to_matrix(layer, arrays):
    """``[W.reshape(F, -1) | b]`` (``(..., F, Dp)``) from arrays in the layer's own layout.

    ``arrays``: ``{"W": (..., *W.shape), "b": (..., F)}`` (``b`` only for a Convolution with bias).
    Linear keeps its bias in row 0 of ``W: (D + 1, M)``: the matrix is ``[W[1:].T | W[0]]``
    (``F = M``; without bias row 0 is dropped).
    """
    xp = get_array_module(arrays["W"])
    W = arrays["W"]
    if isinstance(layer, Linear):
        body = xp.swapaxes(W[..., 1:, :], -1, -2)                          # (..., M, D)
        if not layer.use_bias:
            return body
        return xp.concatenate([body, W[..., 0, :][..., None]], axis=-1)
    F = layer.out_channels
    body = W.reshape(W.shape[:W.ndim - 2 - layer.ndim] + (F, -1))
    if not layer.use_bias:
        return body
    return xp.concatenate([body, arrays["b"][..., None]], axis=-1)


def from_matrix(layer, M):
    """The inverse of ``to_matrix``: ``{"W": ..., "b": ...}`` in the layer's layout (Linear: bias in row 0,
    zero there without bias)."""
    xp = get_array_module(M)
    lead = M.shape[:-2]
    if isinstance(layer, Linear):
        W = xp.zeros(lead + (layer.in_features + 1, layer.out_features), dtype=M.dtype)
        W[..., 1:, :] = xp.swapaxes(M[..., :layer.in_features], -1, -2)
        if layer.use_bias:
            W[..., 0, :] = M[..., layer.in_features]
        return {"W": W}
    ck = layer.in_channels * math.prod(layer.kernel_size)
    out = {"W": xp.ascontiguousarray(M[..., :ck]).reshape(lead + (layer.out_channels, layer.in_channels)
                                                          + tuple(layer.kernel_size))}
    if layer.use_bias:
        out["b"] = xp.ascontiguousarray(M[..., ck])
    return out


# ---------------------------------------------------------------- columns of the output factor
def _softmax(z):
    xp = get_array_module(z)
    e = xp.exp(z - z.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def _columns(net, out, fisher, mc_samples, rng):
    """Per-example upstream rows ``(N, *out)`` for the non-empirical Fisher types (see module docstring)."""
    xp = get_array_module(out)
    n = out.shape[0]
    loss = net.loss_fn
    if isinstance(loss, SoftMaxLoss):
        p = _softmax(out.astype(np.float64))
        k = p.shape[1]
        if fisher == "mc":
            ph = np.asarray(p.get() if hasattr(p, "get") else p)
            scale = 1.0 / math.sqrt(mc_samples)
            for _ in range(mc_samples):
                # inverse-CDF sampling on the host (seeded, the same on both backends)
                u = rng.random(n)
                idx = np.minimum((np.cumsum(ph, axis=1) < u[:, None]).sum(axis=1), k - 1)
                onehot = xp.zeros_like(p)
                onehot[xp.arange(n), to_device(idx, like=p)] = 1.0
                yield ((p - onehot) * scale).astype(out.dtype)
            return
        sq = xp.sqrt(p)
        for c in range(k):
            col = -p * sq[:, c:c + 1]
            col[:, c] += sq[:, c]
            yield col.astype(out.dtype)
        return
    # MSELoss: per-example loss (1/D) ||f - t||^2, Hessian (2/D) I
    d = math.prod(out.shape[1:])
    if fisher == "mc":
        scale = math.sqrt(2.0 / d) / math.sqrt(mc_samples)
        for _ in range(mc_samples):
            eps = to_device(rng.standard_normal(out.shape), like=out)
            yield (-scale * eps).astype(out.dtype)
        return
    flat = xp.zeros((n, d), dtype=out.dtype)
    for j in range(d):
        flat[:] = 0
        flat[:, j] = math.sqrt(2.0 / d)
        yield flat.reshape(out.shape).copy()


class Record:
    """One batch's statistics: ``inputs[layer]`` (the layer's input), ``grads[layer]`` (one output-gradient
    array per column, per-example scale: ``N * dL/dy`` for the empirical Fisher), ``loss``, ``output``."""

    def __init__(self, layers):
        self.layers = list(layers)
        self.inputs = {}
        self.grads = {id(layer): [] for layer in self.layers}
        self.loss = self.output = None

    def patches(self, layer):
        return patch_rows(layer, self.inputs[id(layer)])

    def output_gradients(self, layer):
        """``[(N, T, F), ...]``: one per column."""
        return [output_rows(layer, g) for g in self.grads[id(layer)]]


class _LayerByLayer:
    """Each layer's forward and backward on its own (every layer's input and output gradient is
    seen): through the network's engine runner one layer at a time when its engine is on (its
    faster convolution and pooling), else by the layers' own code."""

    def __init__(self, net):
        self.net = net
        self.runner = getattr(net, "_runner", None) if getattr(net, "engine", False) else None
        if self.runner is not None:
            self.runner.forget_forward()    # its units of the last forward are about to be overwritten
        self.units = {}

    def forward(self, i, x):
        if self.runner is None:
            return self.net.layers[i].forward(x)
        y, _, self.units[i] = self.runner.forward_step(self.net.layers, i, x, fuse=False)
        return y

    def backward(self, i, g, need_input_grad):
        if self.runner is None:
            return self.net.layers[i].backward(g, need_input_grad=need_input_grad)
        return self.runner.backward_step(self.net.layers, i, self.units[i], g, need_input_grad)


def _backward(net, upstream, targets, rec, first_needed, run):
    """Layer by layer from the output; keep the upstream at each target layer; stop after ``first_needed``."""
    g = upstream
    for i in range(len(net.layers) - 1, first_needed - 1, -1):
        layer = net.layers[i]
        if id(layer) in rec.grads and id(layer) in targets:
            rec.grads[id(layer)].append(g)
        g = run.backward(i, g, i > first_needed)


def record(net, xb, yb, fisher, layers, mc_samples=1, rng=None, keep_grads=False, sample_weight=None):
    """A ``Record`` of the batch ``(xb, yb)`` (already on the parameters' device).

    ``keep_grads``: the empirical pass is the batch's training backward (mean loss): every
    neuron's ``grads`` hold the training gradient afterwards, whatever the Fisher type (the
    extra columns' passes do not overwrite it).  Otherwise the passes stop at the first target
    layer and every neuron's ``grads`` are restored as they were.  ``sample_weight`` (``(N,)``) goes
    to the loss (``L = (1/N) sum_n w_n l_n``): the empirical columns are then ``N dL/dy`` of that loss.
    """
    rec = Record(layers)
    targets = {id(layer) for layer in layers}
    index = {id(layer): i for i, layer in enumerate(net.layers)}
    x = xb
    run = _LayerByLayer(net)
    for i, layer in enumerate(net.layers):
        if id(layer) in targets:
            rec.inputs[id(layer)] = layer._as_float(x) if hasattr(layer, "_as_float") else x
        x = run.forward(i, x)
    out = x
    rec.output = out
    trainable = net.trainable_layers
    saved = {id(layer): dict(layer._grads) for layer in trainable}
    first = 0 if keep_grads else min(index[id(layer)] for layer in layers)
    if sample_weight is None:
        rec.loss = net.loss_fn.forward(out, yb, validate=False)
    else:
        rec.loss = net.loss_fn.forward(out, yb, validate=False, sample_weight=sample_weight)
    n = out.shape[0]
    if fisher == "empirical" or keep_grads:
        mean_grad = net.loss_fn.backward()
        _backward(net, mean_grad, targets if fisher == "empirical" else set(), rec, first, run)
        if fisher == "empirical":
            for key in rec.grads:
                rec.grads[key] = [g * n for g in rec.grads[key]]
        if keep_grads:
            saved = {id(layer): dict(layer._grads) for layer in trainable}
            first = min(index[id(layer)] for layer in layers)
    if fisher != "empirical":
        for col in _columns(net, out, fisher, mc_samples, rng):
            _backward(net, col, targets, rec, first, run)
    for layer in trainable:
        layer._grads.clear()
        layer._grads.update(saved[id(layer)])
    return rec

