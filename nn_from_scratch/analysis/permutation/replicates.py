"""The networks of a permutation test: seeds, building, training, one replicate's statistic
(docs/analysis/permutation.md, "reproducibility").

Every replicate's seeds come from ``numpy.random.SeedSequence(seed, spawn_key=key)`` (the
build seed, the shuffling seed of ``fit``, the permutation or sampler seed), each replicate
trains with BLAS held to one thread (``threadpoolctl``) and with the network's own split-step
workers off (``net.workers = 1``), so a result is bitwise the same whatever ``n_jobs`` and
``backend``.
"""
import hashlib
import numbers
import time
import warnings

import numpy as np

from ...backend import to_numpy
from ...training.network import TrainingWarning
from ..gradients import check_output_mode, gradient_statistics
from .groups import group_sums
from .recipe import fresh_fit_kwargs
from .samplers import check_sampler_output, draw_residual, marginal_sampler

__all__ = ["replicate_seeds", "train_replicate", "run_task", "diverged", "fit_reduced", "check_build", "params_digest",
           "REDUCED_KEY"]

REDUCED_KEY = 1 << 30          # spawn keys of the reduced-model fits: (REDUCED_KEY + j, round)


def replicate_seeds(seed, key):
    """``(build seed, fit seed, permutation seed)`` of replicate ``key`` (an int, or a tuple of ints):
    ``SeedSequence(seed, spawn_key=key)``, independent of how the replicates are scheduled."""
    key = (key,) if isinstance(key, numbers.Integral) else tuple(key)
    state = np.random.SeedSequence(entropy=int(seed), spawn_key=key).generate_state(3)
    return tuple(int(s) for s in state)


def params_digest(net):
    h = hashlib.sha256()
    for i, layer in enumerate(net.layers):
        for k, v in sorted(layer.params.items()):
            a = np.ascontiguousarray(to_numpy(v))
            h.update(f"{i}/{k}/{a.dtype}/{a.shape}".encode())
            h.update(a.tobytes())
    return h.hexdigest()


def _built(build, seed, where="permutation_test"):
    from ...training.network import NeuralNetwork  # noqa: PLC0415
    net = build(seed)
    if not isinstance(net, NeuralNetwork):
        raise TypeError(f"{where}: build(seed) must return a NeuralNetwork, it returned {type(net).__name__}")
    trained = len(getattr(net, "history", None).epoch) if getattr(net, "history", None) is not None else 0
    if trained or getattr(net.optimizer, "iterations", 0):
        raise ValueError(f"{where}: build({seed}) returned a network that was already trained (history of "
                         f"{trained} epochs, {getattr(net.optimizer, 'iterations', 0)} optimizer steps); build must "
                         "return a fresh, untrained network for every call")
    net.workers = 1          # no split-step worker processes inside a replicate (reproducible, no forks)
    return net


def train_replicate(build, X, y, fit_kwargs, seed, key=0, permute=None):
    """Build and train the network of replicate ``key`` exactly as ``permutation_test`` does.

    ``key=0`` is the observed network (trained on ``(X, y)``); ``permute=True`` (the default
    for ``key != 0``) trains on ``y[pi]`` with the replicate's permutation.  Returns
    ``(network, initial-parameters digest)``.  BLAS runs on one thread; the callbacks of
    ``fit_kwargs`` are copied for this replicate (``recipe.py``).
    """
    net, digest, _ = _train(build, X, y, fit_kwargs, seed, key, permute)
    return net, digest


def _train(build, X, y, fit_kwargs, seed, key=0, permute=None):
    """``train_replicate``, also saying whether training stopped at a NaN/Inf loss."""
    from threadpoolctl import threadpool_limits  # noqa: PLC0415

    from ...training.callbacks import Callback, TerminateOnNaN  # noqa: PLC0415
    build_seed, fit_seed, perm_seed = replicate_seeds(seed, key)
    permute = (key != 0) if permute is None else permute
    with threadpool_limits(limits=1):
        net = _built(build, build_seed)
        digest = params_digest(net)
        yy = y[np.random.default_rng(perm_seed).permutation(len(y))] if permute else y
        kwargs = {"verbose": 0, **fresh_fit_kwargs(fit_kwargs)}      # its own callbacks (recipe.py)
        cbs = kwargs.get("callbacks")
        cbs = [] if cbs is None else [cbs] if isinstance(cbs, Callback) else list(cbs)
        if kwargs.get("stop_on_nonfinite", True) and not any(isinstance(c, TerminateOnNaN) for c in cbs):
            cbs.append(TerminateOnNaN())              # what fit adds itself; kept here to read its verdict
            kwargs["callbacks"] = cbs
        net.fit(X, yy, seed=fit_seed, **kwargs)
    stopped = any(isinstance(c, TerminateOnNaN) and c.value is not None for c in cbs)
    return net, digest, stopped


def _statistic_of(net, X, statistic, output, index, batch_size):
    s = gradient_statistics(net, X, output=output, batch_size=batch_size, index=index)
    return to_numpy(s[statistic]).astype(np.float64)


def diverged(net, stat, stopped=False):
    """Did this replicate's training diverge: stopped at a NaN/Inf loss (``stopped``), a NaN/Inf loss in
    its history (``stop_on_nonfinite=False``), or a NaN/Inf statistic?"""
    history = getattr(net, "history", None)
    losses = list(getattr(history, "history", {}).get("loss", [])) + list(getattr(history, "batch_loss", []) or [])
    bad_loss = any(not np.isfinite(float(to_numpy(v))) for v in losses)
    return bool(stopped or bad_loss or not np.isfinite(stat).all())


def run_task(task, build, X, y, fit_kwargs, seed, statistic, output, index, batch_size, reduced=None,
             conditional=None):
    """One replicate: ``task = (kind, j, b)``; returns ``(task, statistic array, init digest, diverged,
    seconds)`` (``diverged``: see ``diverged``)."""
    from threadpoolctl import threadpool_limits  # noqa: PLC0415
    t0 = time.perf_counter()
    kind, j, b = task
    with threadpool_limits(limits=1), warnings.catch_warnings():
        if b != 0:      # a null network (permuted labels, redrawn inputs) may stay near chance: no warning
            warnings.simplefilter("ignore", TrainingWarning)
        if kind == "assoc" or b == 0:
            net, digest, stopped = _train(build, X, y, fit_kwargs, seed, key=b)
        elif kind == "cond":                    # conditional null of group j: X_j redrawn, y kept
            Xb = conditional.draw(X, j, replicate_seeds(seed, (b, j))[2])
            net, digest, stopped = _train(build, Xb, y, fit_kwargs, seed, key=(b, j), permute=False)
            stat = _statistic_of(net, Xb, statistic, output, index, batch_size)
            bad = diverged(net, stat, stopped)
            stat = group_sums(stat, conditional.flat_groups, conditional.n_groups)[j:j + 1]
            return task, stat, digest, bad, time.perf_counter() - t0
        else:                                   # nonlinearity null of feature j: y_b = h + e[pi_b]
            h, e = reduced[j]
            perm = np.random.default_rng(replicate_seeds(seed, b)[2]).permutation(len(e))
            yb = (h + e[perm]).astype(y.dtype, copy=False)
            net, digest, stopped = _train(build, X, yb, fit_kwargs, seed, key=(b, j), permute=False)
        stat = _statistic_of(net, X, statistic, output, index, batch_size)
    return task, stat, digest, diverged(net, stat, stopped), time.perf_counter() - t0


def fit_reduced(build, X, y, fit_kwargs, seed, j, output, rounds=2):
    """The reduced model of feature ``j`` (module docstring): ``(h(X), y - h(X))`` shaped like ``y``."""
    from threadpoolctl import threadpool_limits  # noqa: PLC0415
    yf = np.asarray(y, dtype=np.float64).reshape(len(y), -1)
    xj = np.asarray(X[:, j], dtype=np.float64)
    Xr = np.array(X, copy=True)
    Xr[:, j] = X[:, j].mean()
    A = np.column_stack([np.ones_like(xj), xj])
    g = np.zeros_like(yf)
    with threadpool_limits(limits=1):
        coef = np.linalg.lstsq(A, yf - g, rcond=None)[0]
        for r in range(rounds):
            target = (yf - A @ coef).astype(y.dtype).reshape(y.shape)
            net, _ = train_replicate(build, Xr, target, fit_kwargs, seed, key=(REDUCED_KEY + j, r), permute=False)
            g = np.asarray(net.predict(Xr), dtype=np.float64).reshape(yf.shape)
            coef = np.linalg.lstsq(A, yf - g, rcond=None)[0]
    h = A @ coef + g
    return h.reshape(y.shape), (yf - h).reshape(y.shape)


def check_build(build, seed, output, index, statistic):
    """Two builds, checked: fresh, untrained, independent, and their output suits ``output=``."""
    where = "permutation_test"
    s0, s1 = replicate_seeds(seed, 0)[0], replicate_seeds(seed, 1)[0]
    net0, net1 = _built(build, s0), _built(build, s1)
    if net0 is net1:
        raise ValueError(f"{where}: build returned the same network object for two seeds; it must return a "
                         "fresh, untrained network for every call (the null networks must be independent)")
    for i, (a, b) in enumerate(zip(net0.layers, net1.layers)):
        if a is b:
            raise ValueError(f"{where}: build returns networks that share layer {i} ({a._describe()}); the null "
                             "networks must be independent - create new layers inside build")
        for k in a.params:
            pa, pb = a.params[k], b.params.get(k)
            if pb is not None and (pa is pb or np.shares_memory(to_numpy(pa), to_numpy(pb))):
                raise ValueError(f"{where}: build returns networks that share the parameter array {k!r} of layer "
                                 f"{i} ({a._describe()}); the null networks must be independent")
    if params_digest(net0) == params_digest(net1):
        raise ValueError(f"{where}: build({s0}) and build({s1}) returned networks with identical parameters: build "
                         "ignores its seed (or returns copies of one network); each null network needs a fresh "
                         "random initialization from the seed it is given")
    if statistic == "nonlinearity":
        from ...layers.losses import MSELoss  # noqa: PLC0415
        shape = net0.output_shape
        if not isinstance(net0.loss_fn, MSELoss) or shape is None or int(np.prod(shape)) != 1:
            raise ValueError(f"{where}: statistic='nonlinearity' needs a regression network with one output and "
                             f"MSELoss (its null permutes residuals of a continuous response); this network has "
                             f"{type(net0.loss_fn).__name__} and output shape {shape}")
        if output != "output":
            raise ValueError(f"{where}: statistic='nonlinearity' differentiates the regression output: use "
                             f"output='output', received {output!r}")
    check_output_mode(net0, output, index, where)
    return net0




class ConditionalDraws:
    """How the conditional test redraws group ``j`` (picklable: the worker processes receive it).

    ``sampler``: ``"residual"`` (fits made once, here, in ``fits``), ``"marginal"``, or a user
    callable ``sampler(X, group_mask, rng) -> X_tilde`` (called per replicate, output checked).
    ``draw(X, j, seed)`` returns the replicate's inputs, in ``X``'s dtype.
    """

    def __init__(self, sampler, flat_groups, n_groups, sample_shape, fits=None):
        self.sampler, self.flat_groups, self.n_groups = sampler, flat_groups, n_groups
        self.sample_shape, self.fits = tuple(sample_shape), fits

    def mask(self, j):
        return (self.flat_groups == j).reshape(self.sample_shape)

    def draw(self, X, j, sampler_seed):
        rng = np.random.default_rng(sampler_seed)
        if self.sampler == "residual":
            return draw_residual(X, self.fits[j], rng)
        if self.sampler == "marginal":
            return marginal_sampler(X, self.mask(j), rng)
        view = np.asarray(X).view()
        view.flags.writeable = False            # a sampler that writes into X fails loudly
        try:
            out = self.sampler(view, self.mask(j), rng)
        except ValueError as exc:
            if "read-only" not in str(exc):
                raise
            raise ValueError(f"permutation_test: sampler must return a new array and leave X unchanged; it tried to "
                             f"write into X (read-only) for group {j}: {exc}") from None
        return check_sampler_output(X, out, self.mask(j), j)
