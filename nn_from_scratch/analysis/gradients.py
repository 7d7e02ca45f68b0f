"""Per-sample input gradients of a network, and the statistics built from them.

``D[i] = d f(x_i) / d x_i`` for a scalar function ``f`` of the network's output
(the largest logit, a class's log-probability, one logit, the single output of a
regression network, or a user-given upstream).  In inference mode the samples of a
batch never meet, so for a batch ``X_b``::

    d/dX_b  sum_i  <g_i, out(x_i)>  =  [ J(x_i)^T g_i ]_i            (one backward pass)

and with ``g_i`` the upstream row that picks ``f`` for sample ``i`` (a one-hot row at
the sample's own arg-max for ``"max_logit"``, ``e_c - softmax(z_i)`` for
``"log_softmax"``) one forward and one backward pass per batch give every sample's
own gradient.  Nothing per sample, nothing per coordinate.

The passes run through the engine's input-gradient pass (``engine/input_gradients.py``) when
the network's engine is on: no parameter gradients, and a convolution with a large kernel
(e.g. 15x15 on 28x28) as one dense matrix, ``y = x @ A`` and ``dL/dx = dL/dy @ A.T``
(``engine/unrolled_conv.py``).  With ``net.engine = False`` they are the layers' own
``forward``/``backward``; the two agree to rounding (tests/test_input_gradient_pass.py).

Statistics over the ``N`` samples, per input coordinate ``j`` (Mandel & Barnett 2023,
``../shared/research/perm-test-paper.md`` section 2)::

    association   T_j = (1/N) sum_i D_ij^2
    nonlinearity  V_j = (1/N) sum_i (D_ij - mean_i D_ij)^2     (0 when f is linear in x_j)

They are accumulated batch by batch in float64 with the *first sample as the shift*
(``S1 = sum (D - D_0)``, ``S2 = sum (D - D_0)^2``, ``Q = sum (D^2 - D_0^2)``)::

    T = D_0^2 + Q / N          V = (S2 - S1^2 / N) / N

so memory stays at a few arrays of the input's shape, and a network that is linear
in ``x_j`` (every ``D_ij`` the same number) gives ``T_j = w_j^2`` and ``V_j = 0``
exactly, not to rounding.
"""
import contextlib
import numbers

import numpy as np

from ..backend import get_array_module, read_scalars, to_device, to_numpy
from ..engine.input_gradients import InputGradientPass
from ..validation import as_array

__all__ = ["input_gradients", "iter_input_gradients", "gradient_statistics", "association_statistic",
           "nonlinearity_statistic", "OUTPUT_MODES", "GradientMoments", "check_output_mode"]

#: the named ``output=`` modes (a callable is accepted too)
OUTPUT_MODES = ("max_logit", "log_softmax", "logit", "output")
#: samples per forward/backward pass when ``batch_size`` is not given
DEFAULT_BATCH = 256
#: per-layer attributes that a forward/backward pass writes (caches, gradients); ``input_gradients``
#: gives every layer fresh ones and puts the originals back (and the network's engine runner, which
#: holds the record of the last forward and the engine's scratch buffers)
_LAYER_STATE = ("_cache", "_out_shape", "_grads", "_pred_shape")


def _network_type():
    from ..training.network import NeuralNetwork  # noqa: PLC0415 - the analysis package imports lazily
    return NeuralNetwork


def _inference(net):
    """``net.inference()`` where the network has it (layers in inference mode), else nothing."""
    ctx = getattr(net, "inference", None)
    return ctx() if callable(ctx) else contextlib.nullcontext()


@contextlib.contextmanager
def _preserved(net):
    """Run with fresh caches/gradients/buffers on every layer; put the originals back after.

    The parameters are never written (no optimizer step), so the network is left exactly as
    it was: the same cache, gradient and workspace objects, the same ``_out_shape``.
    """
    saved = []
    runner = getattr(net, "_runner", None)
    if runner is not None:
        net._runner = type(runner)()
    for layer in net.layers:
        d = vars(layer)
        state = {k: d[k] for k in _LAYER_STATE if k in d}
        saved.append(state)
        for k, v in state.items():
            if isinstance(v, dict):
                setattr(layer, k, {})
    try:
        yield
    finally:
        for layer, state in zip(net.layers, saved):
            for k, v in state.items():
                setattr(layer, k, v)
        if runner is not None:
            net._runner = runner


def _output_size(net, where):
    shape = net.output_shape
    return None if shape is None or None in shape else tuple(shape)


def check_output_mode(net, output, index=None, where="input_gradients"):
    """Raise a clear error unless the network's output suits ``output=`` (and ``index=``)."""
    if callable(output):
        if index is not None:
            raise ValueError(f"{where}: index= goes with output='logit', not with a callable output")
        return
    if not isinstance(output, str) or output not in OUTPUT_MODES:
        raise ValueError(f"{where}: output must be one of {OUTPUT_MODES} or a callable returning the upstream "
                         f"gradient, received {output!r}")
    if output == "logit":
        if isinstance(index, bool) or not isinstance(index, numbers.Integral):
            raise ValueError(f"{where}: output='logit' needs index=k, an integer class index, received "
                             f"index={index!r}")
    elif index is not None:
        raise ValueError(f"{where}: index= is used only with output='logit', received output={output!r}, "
                         f"index={index!r}")
    shape = _output_size(net, where)
    if shape is None:
        return                     # checked on the first batch
    _check_out_shape(shape, output, index, where)


def _check_out_shape(shape, output, index, where):
    if callable(output):
        return
    size = int(np.prod(shape))
    if output == "output":
        if size != 1:
            raise ValueError(f"{where}: output='output' needs a network with a single output per sample (a "
                             f"regression network), but this network's output per sample has shape {shape}; "
                             "use output='max_logit', 'log_softmax' or 'logit' for a classifier")
        return
    if len(shape) != 1:
        raise ValueError(f"{where}: output={output!r} needs a vector of logits per sample, but this network's "
                         f"output per sample has shape {shape}")
    k = shape[0]
    if output == "log_softmax" and k < 2:
        raise ValueError(f"{where}: output='log_softmax' needs at least 2 logits per sample, this network has "
                         f"{k}; use output='output' for a single-output network")
    if output == "logit" and not 0 <= int(index) < k:
        raise ValueError(f"{where}: output='logit' with index={index}, but this network has {k} logits "
                         f"(index must be in [0, {k}))")


def _upstream(out, output, index, where):
    """The upstream rows ``g_i`` (shaped like ``out``) that pick each sample's scalar ``f``."""
    xp = get_array_module(out)
    if callable(output):
        g = output(out)
        if not hasattr(g, "shape") or tuple(g.shape) != tuple(out.shape):
            got = tuple(g.shape) if hasattr(g, "shape") else type(g).__name__
            raise ValueError(f"{where}: the callable output= must return an upstream gradient of the output's "
                             f"shape {tuple(out.shape)}, it returned {got}")
        kind = getattr(getattr(g, "dtype", None), "kind", None)
        if kind not in ("f", "i", "u", "b"):
            raise ValueError(f"{where}: the callable output= must return real numbers, it returned dtype "
                             f"{getattr(g, 'dtype', None)}")
        g = to_device(g, like=out, dtype=out.dtype)
        (bad,) = read_scalars((~get_array_module(g).isfinite(g)).sum(), why="analysis")
        if bad:
            bad = int(bad)
            raise ValueError(f"{where}: the callable output= returned {bad} NaN/Inf value(s) of "
                             f"{int(g.size)} for a batch of outputs of shape {tuple(out.shape)}; every "
                             "statistic would be NaN (check the function, e.g. a log of 0)")
        return g
    _check_out_shape(tuple(out.shape[1:]), output, index, where)
    n = out.shape[0]
    if output == "output":
        return xp.ones_like(out)
    g = xp.zeros_like(out)
    rows = xp.arange(n)
    if output == "logit":
        g[:, int(index)] = 1
    elif output == "max_logit":
        g[rows, out.argmax(axis=1)] = 1
    else:                                    # log_softmax: d log p_c / dz = e_c - softmax(z)
        z = out - out.max(axis=1, keepdims=True)
        e = xp.exp(z)
        g -= e / e.sum(axis=1, keepdims=True)
        g[rows, out.argmax(axis=1)] += 1
    return g


def _prepare(net, X, batch_size, where):
    if not isinstance(net, _network_type()):
        raise TypeError(f"{where}: net must be a NeuralNetwork, received {type(net).__name__}")
    if batch_size is None:
        batch_size = DEFAULT_BATCH
    if isinstance(batch_size, bool) or not isinstance(batch_size, numbers.Integral) or batch_size < 1:
        raise ValueError(f"{where}: batch_size must be an integer >= 1 (or None), received {batch_size!r}")
    X, _, _ = net._prepare_xy(X, None, where)      # shape (channel axis added), finiteness, DataError
    return X, int(batch_size)


def iter_input_gradients(net, X, output="max_logit", batch_size=None, index=None):
    """Yield ``(start, stop, D[start:stop])`` batch by batch (the batch on the network's device).

    The streaming form of ``input_gradients``: memory holds one batch of gradients.  The
    parameters are read at every batch (a convolution's unrolled matrix is rebuilt when its
    weights changed between batches).
    """
    where = "input_gradients"
    if not isinstance(net, _network_type()):
        raise TypeError(f"{where}: net must be a NeuralNetwork, received {type(net).__name__}")
    check_output_mode(net, output, index, where)
    X, bs = _prepare(net, X, batch_size, where)
    fast = InputGradientPass(net.layers) if getattr(net, "engine", False) else None
    for a in range(0, X.shape[0], bs):
        b = min(a + bs, X.shape[0])
        with _inference(net), _preserved(net):
            xb = to_device(X[a:b], like=net._param_like(), dtype=net.dtype)
            if fast is not None:                 # the engine: dL/dx only, no parameter gradients
                out = fast.forward(xb)
                dx = fast.input_gradient(_upstream(out, output, index, where))
            else:                                # engine=False: the layers' own forward/backward
                out = net.forward(xb)
                dx = net.backward(_upstream(out, output, index, where))
        yield a, b, dx


def input_gradients(net, X, output="max_logit", batch_size=None, index=None):
    """``D[i] = d f(x_i) / d x_i`` for every sample: an array ``(N, *input_shape)``.

    ``output`` chooses ``f``:

    * ``"max_logit"``: the largest logit of each sample (the permutation test's default);
    * ``"log_softmax"``: the log-probability of the predicted class, ``z_c - logsumexp(z)``;
    * ``"logit"`` with ``index=k``: logit ``k``;
    * ``"output"``: the single output of a regression network;
    * a callable ``output(out) -> upstream``: ``f_i = <upstream_i, out_i>`` (the function is
      given the batch's outputs ``(n, *out_shape)`` and returns rows of the same shape).

    One forward and one backward pass per batch of ``batch_size`` samples (default
    ``DEFAULT_BATCH``), in inference mode: the engine's input-gradient pass (no parameter
    gradients; see the module docstring), or with ``net.engine = False`` the layers' own
    ``forward``/``backward``.  The parameters, caches and stored gradients are left as they were.  The
    result lives where ``X`` lives (NumPy, or CuPy for CuPy data) in the network's dtype.
    """
    X = as_array("input_gradients", "X", X)
    xp = get_array_module(X)
    D = None
    for a, b, dx in iter_input_gradients(net, X, output, batch_size, index):
        if D is None:
            n = X.shape[0]
            D = xp.empty((n,) + tuple(dx.shape[1:]), dtype=dx.dtype)
        D[a:b] = dx if xp is not np else to_numpy(dx)
    return D


class GradientMoments:
    """Running sums over batches of per-sample gradients (float64, shifted by the first sample).

    ``add(batch)`` with ``batch: (n, *S)``; then ``n``, ``mean``, ``association`` (``T``)
    and ``nonlinearity`` (``V``), each of shape ``S`` (see the module docstring).
    """

    def __init__(self):
        self.n = 0

    def add(self, batch):
        if not hasattr(batch, "shape") or batch.ndim < 1:
            raise ValueError(f"gradient statistics: each batch must be an array (n, *input_shape), received "
                             f"{type(batch).__name__}")
        xp = get_array_module(batch)
        d = batch.astype(np.float64, copy=False)
        if d.shape[0] == 0:
            return self
        if self.n == 0:
            self.k1 = d[0].copy()
            self.k2 = self.k1 * self.k1
            self.s1 = xp.zeros_like(self.k1)
            self.s2 = xp.zeros_like(self.k1)
            self.q = xp.zeros_like(self.k1)
        elif tuple(d.shape[1:]) != tuple(self.k1.shape):
            raise ValueError(f"gradient statistics: a batch of shape {tuple(d.shape)} does not continue batches "
                             f"of samples of shape {tuple(self.k1.shape)}")
        c = d - self.k1
        self.s1 += c.sum(axis=0)
        self.s2 += (c * c).sum(axis=0)
        self.q += (d * d - self.k2).sum(axis=0)
        self.n += d.shape[0]
        return self

    def _need(self):
        if self.n == 0:
            raise ValueError("gradient statistics: no samples (D is empty)")

    @property
    def mean(self):
        self._need()
        return self.k1 + self.s1 / self.n

    @property
    def association(self):
        self._need()
        return self.k2 + self.q / self.n

    @property
    def nonlinearity(self):
        self._need()
        xp = get_array_module(self.s2)
        return xp.maximum((self.s2 - self.s1 * self.s1 / self.n) / self.n, 0.0)


def _moments(D, batch_size=4096):
    m = GradientMoments()
    if hasattr(D, "shape"):
        if D.ndim < 1:
            raise ValueError(f"gradient statistics: D must have shape (N, *input_shape), received {tuple(D.shape)}")
        for a in range(0, D.shape[0], batch_size):
            m.add(D[a:a + batch_size])
    else:
        try:
            batches = iter(D)
        except TypeError:
            raise TypeError(f"gradient statistics: D must be an array (N, *input_shape) or an iterable of "
                            f"batches, received {type(D).__name__}") from None
        for batch in batches:
            if isinstance(batch, tuple) and len(batch) == 3:      # iter_input_gradients' (a, b, D_batch)
                batch = batch[2]
            m.add(batch)
    return m


def association_statistic(D):
    """``T_j = (1/N) sum_i D_ij^2``, float64, shape ``input_shape``.

    ``D``: an array ``(N, *input_shape)`` or an iterable of batches (arrays, or the
    ``(start, stop, batch)`` triples of ``iter_input_gradients``), summed batch by batch.
    """
    return _moments(D).association


def nonlinearity_statistic(D):
    """``V_j = (1/N) sum_i (D_ij - mean_i D_ij)^2``, float64; exactly 0 where ``D_.j`` is constant.

    ``D`` as for ``association_statistic``.
    """
    return _moments(D).nonlinearity


def gradient_statistics(net, X, output="max_logit", batch_size=None, index=None):
    """``{"association": T, "nonlinearity": V, "mean": mean_i D_i, "n": N}`` without holding all of ``D``.

    One pass of ``iter_input_gradients``; arrays on the network's device, float64.
    """
    m = _moments(iter_input_gradients(net, X, output, batch_size, index))
    return {"association": m.association, "nonlinearity": m.nonlinearity, "mean": m.mean, "n": m.n}
