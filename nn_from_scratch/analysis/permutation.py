"""Permutation-based hypothesis tests for networks: which inputs matter, with p-values (seed 000).

Mandel & Barnett, "Permutation-based Hypothesis Testing for Neural Networks" (arXiv
2301.11354, AAAI-24); spec and conventions in ``../shared/research/perm-test-paper.md``.

Statistics (``gradients.py``): with ``D_ij = d f(x_i) / d x_j`` (``input_gradients``),

* association   ``T_j = (1/N) sum_i D_ij^2``                 H0_j: f does not depend on x_j
* nonlinearity  ``V_j = (1/N) sum_i (D_ij - mean_i D_ij)^2``   H0_j: f is linear in x_j

computed on the training inputs ``X`` for the observed network and for every null network alike.

The association null (scheme A of the spec): ``B`` networks, each built fresh by
``build(seed_b)`` and trained with the identical recipe (``fit_kwargs``) on ``(X, y[pi_b])``
with ONE permutation ``pi_b`` of the whole data set, fixed for its whole training.  Under
the global null ``y`` independent of ``X`` the ``B + 1`` training sets are exchangeable, so
the observed ``T_j`` is exchangeable with the ``B`` null ones and::

    p_j = (1 + #{b : T_j^(b) >= T_j}) / (B + 1)

is exactly valid: ``P(p_j <= k/(B+1)) <= k/(B+1)``, with equality without ties.  So with
``(B + 1) * alpha`` an integer (``B = 19, 39, 99`` at ``alpha = 0.05``) the level is exactly
``alpha``; otherwise it is ``floor((B+1) alpha)/(B+1)`` (conservative).  The same ``B`` null
networks give all features' nulls at once, jointly, which is what the Westfall-Young max-T
adjustment needs.  For one feature while other features act, scheme A is not exact (the
permutation breaks those effects too); the simulation in ``benchmarks/permutation_validity.py``
measures its type-I error (conservative, as the spec predicts).

Re-permuting the labels inside every minibatch (the seed's loop) is NOT this test: each
batch then sees fresh label noise, the network fits no fixed labelling, its derivatives
stay small, and the resulting "null" is far below the observed statistic of any network
trained on a fixed labelling - the real labels or a permuted one alike.  Its p-values are
then all ``1/(B+1)``, true effect or not (``notebooks/permutation_test.ipynb`` shows it).

The nonlinearity null (regression networks, tabular inputs), residual permutation under a
model linear in ``x_j`` (Freedman & Lane 1983; scheme D of the spec).  For each tested
feature ``j``:

1. fit the reduced model ``h(x) = a + beta x_j + g(x_{-j})`` by two rounds of backfitting:
   ``(a, beta)`` by least squares of ``y - g`` on ``[1, x_j]``, and ``g`` by the user's own
   network (``build``, the same recipe) trained on ``y - a - beta x_j`` with column ``j``
   replaced by its mean (so ``g`` cannot depend on ``x_j``); ``h`` is additive-linear in
   ``x_j``, i.e. it satisfies H0_j;
2. residuals ``e = y - h(x)``; null responses ``y^(b) = h(x) + e[pi_b]``;
3. train a fresh full network on ``(X, y^(b))``, record ``V_j^(b)``.

Why it is calibrated: under H0_j ``y = h(x) + eps``, and if ``h`` were known the
``y^(b)`` would have the distribution of ``y`` given ``X`` whenever the errors are
exchangeable, so ``V_j`` computed on ``(X, y)`` would be exchangeable with the ``V_j^(b)``.
``h`` is estimated, so the test is approximately (asymptotically) exact, not exactly; the
null keeps every effect of the other features and any linear effect of ``x_j``, which is
what makes it a test of *nonlinearity* rather than of association.  Its calibration is
established by simulation (type-I error inside the binomial band for a linear effect,
``benchmarks/RESULTS.md``).  Costs ``2 + B`` fits per tested feature.  For binary outcomes
the spec's parametric bootstrap is not implemented; the nonlinearity test asks for a
single-output regression network (``output="output"``).

Reproducibility: every replicate's seeds come from ``numpy.random.SeedSequence(seed,
spawn_key=(b,))`` (the build seed, the shuffling seed of ``fit``, the permutation), each
replicate trains with BLAS held to one thread (``threadpoolctl``) and with the network's
own split-step workers off (``net.workers = 1``: a split step would change the order of
float additions, and forking inside a joblib worker is not wanted), so the result is bitwise
the same whatever ``n_jobs`` and ``backend``.  Checkpoints: each finished replicate's
statistic is written atomically to ``checkpoint_dir`` (``replicate-<key>.npz``) beside an
``experiment.json`` fingerprint of the experiment (data, recipe, statistic, seed, the
build's initial parameters); a directory of another experiment is refused; a rerun loads
what is there and computes the rest (so a larger ``n_permutations`` extends a run).
"""
import hashlib
import json
import numbers
import os
import time
import warnings

import numpy as np

from ..backend import to_numpy
from ..training.network import TrainingWarning
from ..atomic import write_text_atomic
from ..training.serialization import write_npz_atomic
from .gradients import (OUTPUT_MODES, GradientMoments, association_statistic, check_output_mode,
                        gradient_statistics, input_gradients, iter_input_gradients, nonlinearity_statistic)

__all__ = ["input_gradients", "iter_input_gradients", "association_statistic", "nonlinearity_statistic",
           "gradient_statistics", "GradientMoments", "permutation_test", "PermutationTestResult",
           "permutation_p_values", "holm", "benjamini_hochberg", "max_t", "replicate_seeds", "train_replicate",
           "OUTPUT_MODES", "STATISTICS", "BACKENDS", "METHODS", "CheckpointError"]

STATISTICS = ("association", "nonlinearity")
BACKENDS = ("loky", "threading", "dask", "sequential")
METHODS = ("none", "bonferroni", "holm", "bh", "maxT")
_FORMAT = "nn_from_scratch-permutation-test/1"
_REDUCED_KEY = 1 << 30          # spawn keys of the reduced-model fits: (_REDUCED_KEY + j, round)


class CheckpointError(ValueError):
    """A checkpoint directory that belongs to another experiment, or a damaged checkpoint file."""


# ----------------------------------------------------------------------------- p-values
def permutation_p_values(statistic, null_distribution):
    """``p_j = (1 + #{b : null[b, j] >= statistic[j]}) / (B + 1)`` (ties count as exceeding)."""
    t = np.asarray(statistic, dtype=np.float64)
    null = np.asarray(null_distribution, dtype=np.float64)
    if null.ndim < 1 or tuple(null.shape[1:]) != tuple(t.shape):
        raise ValueError(f"permutation_p_values: null_distribution must have shape (B, *{tuple(t.shape)}), "
                         f"received {tuple(null.shape)}")
    b = null.shape[0]
    p = (1.0 + (null >= t).sum(axis=0)) / (b + 1.0)
    return np.where(np.isnan(t) | np.isnan(null).any(axis=0), np.nan, p)


def holm(p):
    """Holm's step-down adjusted p-values (family-wise error), any shape; NaN entries stay NaN."""
    p = np.asarray(p, dtype=np.float64)
    out = np.full(p.shape, np.nan)
    ok = ~np.isnan(p)
    q = p[ok]
    m = q.size
    if m:
        order = np.argsort(q, kind="stable")
        adj = np.minimum(1.0, np.maximum.accumulate((m - np.arange(m)) * q[order]))
        res = np.empty(m)
        res[order] = adj
        out[ok] = res
    return out


def benjamini_hochberg(p):
    """Benjamini-Hochberg adjusted p-values (false discovery rate): ``scipy.stats.false_discovery_control``."""
    from scipy.stats import false_discovery_control  # noqa: PLC0415
    p = np.asarray(p, dtype=np.float64)
    out = np.full(p.shape, np.nan)
    ok = ~np.isnan(p)
    if ok.any():
        out[ok] = false_discovery_control(p[ok], method="bh")
    return out


def max_t(statistic, null_distribution):
    """Westfall-Young step-down max-T adjusted p-values from the joint null (family-wise error).

    Order the features by observed statistic, largest first: ``T_(1) >= ... >= T_(m)``.  Then::

        p~_(r) = (1 + #{b : max_{s >= r} T_(s)^(b) >= T_(r)}) / (B + 1),   made non-decreasing in r

    (Westfall & Young 1993, algorithm 4.1, with the observed data counted among the
    permutations as for the raw p-values).  It keeps the dependence between features, so on
    784 correlated pixels it is far less conservative than Holm.  The statistics should be on
    a common scale (standardized inputs; pixels of one image are).
    """
    t = np.asarray(statistic, dtype=np.float64)
    null = np.asarray(null_distribution, dtype=np.float64)
    if tuple(null.shape[1:]) != tuple(t.shape):
        raise ValueError(f"max_t: null_distribution must have shape (B, *{tuple(t.shape)}), received "
                         f"{tuple(null.shape)}")
    flat_t = t.reshape(-1)
    flat_null = null.reshape(null.shape[0], -1)
    out = np.full(flat_t.shape, np.nan)
    ok = ~(np.isnan(flat_t) | np.isnan(flat_null).any(axis=0))
    idx = np.flatnonzero(ok)
    if idx.size:
        order = idx[np.argsort(-flat_t[idx], kind="stable")]
        tail_max = np.maximum.accumulate(flat_null[:, order][:, ::-1], axis=1)[:, ::-1]     # (B, m)
        counts = (tail_max >= flat_t[order][None, :]).sum(axis=0)
        adj = np.maximum.accumulate((1.0 + counts) / (null.shape[0] + 1.0))
        out[order] = adj
    return out.reshape(t.shape)


# ----------------------------------------------------------------------------- the result
class PermutationTestResult:
    """What ``permutation_test`` returns.

    ``statistic``: the observed network's statistic, shape ``input_shape``;
    ``null_distribution``: ``(B, *input_shape)``; ``p_values``; ``adjusted(method)`` and
    ``significant(alpha, method)``; ``save``/``load`` (``.npz``, no pickle); ``plot``.
    ``example``: an input drawn beside the maps (the data's first sample by default);
    ``info``: the settings (statistic, output, seed, recipe, fingerprint, timings).
    """

    def __init__(self, statistic, null_distribution, statistic_name="association", example=None, info=None):
        self.statistic = np.asarray(statistic, dtype=np.float64)
        self.null_distribution = np.asarray(null_distribution, dtype=np.float64)
        if self.null_distribution.ndim < 1 or tuple(self.null_distribution.shape[1:]) != self.statistic.shape:
            raise ValueError(f"PermutationTestResult: null_distribution must have shape (B, "
                             f"*{self.statistic.shape}), received {tuple(self.null_distribution.shape)}")
        if statistic_name not in STATISTICS:
            raise ValueError(f"PermutationTestResult: statistic_name must be one of {STATISTICS}, received "
                             f"{statistic_name!r}")
        self.statistic_name = statistic_name
        self.example = None if example is None else np.asarray(example)
        self.info = dict(info or {})
        self.p_values = permutation_p_values(self.statistic, self.null_distribution)

    @property
    def n_permutations(self):
        return int(self.null_distribution.shape[0])

    @property
    def input_shape(self):
        return self.statistic.shape

    @property
    def joint_null(self):
        """True when one set of null networks gave every feature's null (association): max-T applies."""
        return self.statistic_name == "association"

    def _default_method(self):
        return "maxT" if self.joint_null else "holm"

    def adjusted(self, method="maxT"):
        """Adjusted p-values: ``"holm"``, ``"bh"`` (SciPy's ``false_discovery_control``), ``"maxT"``
        (Westfall-Young step-down from the joint null), ``"bonferroni"`` or ``"none"``."""
        if method not in METHODS:
            raise ValueError(f"adjusted: method must be one of {METHODS}, received {method!r}")
        p = self.p_values
        if method == "none":
            return p.copy()
        if method == "bonferroni":
            return np.minimum(1.0, p * int((~np.isnan(p)).sum()))
        if method == "holm":
            return holm(p)
        if method == "bh":
            return benjamini_hochberg(p)
        if not self.joint_null:
            raise ValueError("adjusted: method='maxT' needs a joint null of all features (the association "
                             "test); the nonlinearity test's nulls are fitted feature by feature: use "
                             "'holm' or 'bh'")
        return max_t(self.statistic, self.null_distribution)

    def significant(self, alpha=0.05, method=None):
        """Boolean array ``adjusted(method) <= alpha`` (``method`` None: ``"maxT"`` for the association
        test, ``"holm"`` for the nonlinearity test); NaN (untested) entries are False."""
        if not (isinstance(alpha, numbers.Real) and 0 < alpha < 1):
            raise ValueError(f"significant: alpha must be in (0, 1), received {alpha!r}")
        adj = self.adjusted(method or self._default_method())
        return np.nan_to_num(adj, nan=2.0) <= alpha

    def summary(self, alpha=0.05, method=None):
        """A JSON-able dictionary of the settings and the headline numbers."""
        method = method or self._default_method()
        sig = self.significant(alpha, method)
        p = self.p_values
        return {
            "statistic": self.statistic_name, "n_permutations": self.n_permutations,
            "input_shape": list(self.input_shape), "alpha": alpha, "method": method,
            "n_features": int(self.statistic.size), "n_tested": int((~np.isnan(p)).sum()),
            "n_significant": int(sig.sum()), "n_raw_p_below_alpha": int((np.nan_to_num(p, nan=2.0) <= alpha).sum()),
            "min_p": float(np.nanmin(p)) if np.isfinite(p).any() else None,
            "smallest_attainable_p": 1.0 / (self.n_permutations + 1),
            "info": self.info,
        }

    # ------------------------------------------------------------- files
    def save(self, path):
        """Write the result to ``path`` (``.npz``), atomically; ``PermutationTestResult.load`` reads it."""
        arrays = {"__format__": np.array(_FORMAT), "statistic": self.statistic,
                  "null_distribution": self.null_distribution, "p_values": self.p_values,
                  "statistic_name": np.array(self.statistic_name),
                  "info": np.array(json.dumps(self.info, default=_json_default))}
        if self.example is not None:
            arrays["example"] = self.example
        write_npz_atomic(path, arrays)
        return path

    @classmethod
    def load(cls, path):
        """Read a file written by ``save`` (``allow_pickle=False``); a damaged file raises ``ValueError``."""
        path = os.fspath(path)
        if not os.path.exists(path):
            raise FileNotFoundError(f"PermutationTestResult.load: no file at {os.path.abspath(path)!r}")
        try:
            with np.load(path, allow_pickle=False) as f:
                arrays = {k: f[k] for k in f.files}
        except Exception as exc:            # zipfile/pickle/format errors: one clear message
            raise ValueError(f"PermutationTestResult.load: {path!r} is not a readable .npz file "
                             f"({type(exc).__name__}: {exc})") from None
        fmt = arrays.get("__format__")
        if fmt is None or str(fmt) != _FORMAT:
            raise ValueError(f"PermutationTestResult.load: {path!r} is not a permutation-test result (format "
                             f"{None if fmt is None else str(fmt)!r}, expected {_FORMAT!r})")
        missing = [k for k in ("statistic", "null_distribution", "statistic_name", "info") if k not in arrays]
        if missing:
            raise ValueError(f"PermutationTestResult.load: {path!r} lacks {missing}")
        res = cls(arrays["statistic"], arrays["null_distribution"], str(arrays["statistic_name"]),
                  example=arrays.get("example"), info=json.loads(str(arrays["info"])))
        if "p_values" in arrays and not np.array_equal(res.p_values, arrays["p_values"], equal_nan=True):
            raise ValueError(f"PermutationTestResult.load: {path!r} is inconsistent (its p-values do not follow "
                             "from its statistic and null distribution)")
        return res

    def plot(self, alpha=0.05, method=None, example=None, feature_names=None):
        """Image inputs: the statistic map and the ``-log10 p`` map side by side with an example input;
        tabular inputs: a bar chart of ``-log10 p`` with the significance threshold.  Returns the figure."""
        from . import permutation_plots  # noqa: PLC0415 - matplotlib only when plotting
        return permutation_plots.plot_result(self, alpha=alpha, method=method or self._default_method(),
                                             example=example, feature_names=feature_names)

    def __repr__(self):
        return (f"PermutationTestResult({self.statistic_name}, input_shape={self.input_shape}, "
                f"B={self.n_permutations}, min p={np.nanmin(self.p_values):.3g})")


def _json_default(o):
    if isinstance(o, np.generic):
        return o.item()
    if isinstance(o, np.ndarray):
        return o.tolist()
    return repr(o)


# ----------------------------------------------------------------------------- replicates
def replicate_seeds(seed, key):
    """``(build seed, fit seed, permutation seed)`` of replicate ``key`` (an int, or a tuple of ints):
    ``SeedSequence(seed, spawn_key=key)``, independent of how the replicates are scheduled."""
    key = (key,) if isinstance(key, numbers.Integral) else tuple(key)
    state = np.random.SeedSequence(entropy=int(seed), spawn_key=key).generate_state(3)
    return tuple(int(s) for s in state)


def _params_digest(net):
    h = hashlib.sha256()
    for i, layer in enumerate(net.layers):
        for k, v in sorted(layer.params.items()):
            a = np.ascontiguousarray(to_numpy(v))
            h.update(f"{i}/{k}/{a.dtype}/{a.shape}".encode())
            h.update(a.tobytes())
    return h.hexdigest()


def _built(build, seed, where="permutation_test"):
    from ..training.network import NeuralNetwork  # noqa: PLC0415
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
    ``(network, initial-parameters digest)``.  BLAS runs on one thread.
    """
    from threadpoolctl import threadpool_limits  # noqa: PLC0415
    build_seed, fit_seed, perm_seed = replicate_seeds(seed, key)
    permute = (key != 0) if permute is None else permute
    with threadpool_limits(limits=1):
        net = _built(build, build_seed)
        digest = _params_digest(net)
        yy = y[np.random.default_rng(perm_seed).permutation(len(y))] if permute else y
        kwargs = {"verbose": 0, **dict(fit_kwargs or {})}
        net.fit(X, yy, seed=fit_seed, **kwargs)
    return net, digest


def _statistic_of(net, X, statistic, output, index, batch_size):
    s = gradient_statistics(net, X, output=output, batch_size=batch_size, index=index)
    return to_numpy(s[statistic]).astype(np.float64)


def _run_task(task, build, X, y, fit_kwargs, seed, statistic, output, index, batch_size, reduced):
    """One replicate: ``task = (kind, j, b)``; returns ``(task, statistic array, init digest, seconds)``."""
    from threadpoolctl import threadpool_limits  # noqa: PLC0415
    t0 = time.perf_counter()
    kind, j, b = task
    with threadpool_limits(limits=1), warnings.catch_warnings():
        if b != 0:      # a network fitting permuted labels stays near chance: expected, not worth a warning
            warnings.simplefilter("ignore", TrainingWarning)
        if kind == "assoc" or b == 0:
            net, digest = train_replicate(build, X, y, fit_kwargs, seed, key=b)
        else:                                   # nonlinearity null of feature j: y_b = h + e[pi_b]
            h, e = reduced[j]
            perm = np.random.default_rng(replicate_seeds(seed, b)[2]).permutation(len(e))
            yb = (h + e[perm]).astype(y.dtype, copy=False)
            net, digest = train_replicate(build, X, yb, fit_kwargs, seed, key=(b, j), permute=False)
        stat = _statistic_of(net, X, statistic, output, index, batch_size)
    return task, stat, digest, time.perf_counter() - t0


def _fit_reduced(build, X, y, fit_kwargs, seed, j, output, rounds=2):
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
            net, _ = train_replicate(build, Xr, target, fit_kwargs, seed, key=(_REDUCED_KEY + j, r), permute=False)
            g = np.asarray(net.predict(Xr), dtype=np.float64).reshape(yf.shape)
            coef = np.linalg.lstsq(A, yf - g, rcond=None)[0]
    h = A @ coef + g
    return h.reshape(y.shape), (yf - h).reshape(y.shape)


# ----------------------------------------------------------------------------- checkpoints
def _digest_array(a):
    a = np.ascontiguousarray(to_numpy(a))
    return hashlib.sha256(f"{a.dtype}/{a.shape}".encode() + a.tobytes()).hexdigest()


def _describe_kwargs(kw):
    out = {}
    for k, v in sorted((kw or {}).items()):
        if hasattr(v, "shape") and hasattr(v, "dtype"):
            out[k] = "array:" + _digest_array(v)
        elif isinstance(v, (tuple, list)) and any(hasattr(x, "shape") for x in v):
            out[k] = ["array:" + _digest_array(x) if hasattr(x, "shape") else repr(x) for x in v]
        else:
            out[k] = repr(v)
    return out


def _task_name(task):
    kind, j, b = task
    return f"b{b:06d}" if kind == "assoc" or b == 0 else f"f{j:06d}-b{b:06d}"


class _Checkpoints:
    """``checkpoint_dir``: ``experiment.json`` (the fingerprint) and ``replicate-<key>.npz`` files."""

    def __init__(self, directory, fingerprint):
        self.dir = os.fspath(directory)
        os.makedirs(self.dir, exist_ok=True)
        self.fingerprint = fingerprint
        path = os.path.join(self.dir, "experiment.json")
        if os.path.exists(path):
            try:
                with open(path) as f:
                    theirs = json.load(f)
            except (OSError, ValueError) as exc:
                raise CheckpointError(f"permutation_test: checkpoint_dir {self.dir!r} has an unreadable "
                                      f"experiment.json ({exc}); use another directory") from None
            if theirs != fingerprint:
                diff = sorted(k for k in set(theirs) | set(fingerprint) if theirs.get(k) != fingerprint.get(k))
                raise CheckpointError(
                    f"permutation_test: checkpoint_dir {self.dir!r} holds replicates of another experiment "
                    f"(it differs in: {', '.join(diff)}); refusing to mix them - use a new directory or the "
                    "original settings")
        else:
            write_text_atomic(path, json.dumps(fingerprint, indent=1, sort_keys=True))
        self.digest = hashlib.sha256(json.dumps(fingerprint, sort_keys=True).encode()).hexdigest()

    def _path(self, task):
        return os.path.join(self.dir, f"replicate-{_task_name(task)}.npz")

    def load(self, task, shape):
        path = self._path(task)
        if not os.path.exists(path):
            return None
        try:
            with np.load(path, allow_pickle=False) as f:
                stat, fp, digest = f["statistic"], str(f["experiment"]), str(f["init_digest"])
        except Exception as exc:
            raise CheckpointError(f"permutation_test: checkpoint file {path!r} is damaged "
                                  f"({type(exc).__name__}: {exc}); delete it to recompute that replicate") from None
        if fp != self.digest or tuple(stat.shape) != tuple(shape):
            raise CheckpointError(f"permutation_test: checkpoint file {path!r} belongs to another experiment "
                                  f"(fingerprint or shape {tuple(stat.shape)} differs); refusing to mix")
        return stat.astype(np.float64), digest

    def store(self, task, stat, digest):
        write_npz_atomic(self._path(task), {"statistic": stat, "experiment": np.array(self.digest),
                                            "init_digest": np.array(digest)})


# ----------------------------------------------------------------------------- the test
def _check_int(name, value, low):
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < low:
        raise ValueError(f"permutation_test: {name} must be an integer >= {low}, received {value!r}")
    return int(value)


def _check_build(build, seed, output, index, statistic):
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
    if _params_digest(net0) == _params_digest(net1):
        raise ValueError(f"{where}: build({s0}) and build({s1}) returned networks with identical parameters: build "
                         "ignores its seed (or returns copies of one network); each null network needs a fresh "
                         "random initialization from the seed it is given")
    if statistic == "nonlinearity":
        from ..layers.losses import MSELoss  # noqa: PLC0415
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


def _fingerprint(X, y, fit_kwargs, statistic, output, index, seed, features, init_digest):
    return {
        "format": _FORMAT, "X": _digest_array(X), "y": _digest_array(y), "fit_kwargs": _describe_kwargs(fit_kwargs),
        "statistic": statistic, "output": output if isinstance(output, str) else
        f"callable:{getattr(output, '__module__', '?')}.{getattr(output, '__qualname__', repr(output))}",
        "index": index, "seed": int(seed), "features": None if features is None else list(features),
        "build_initial_parameters": init_digest,
    }


def _parallel(n_jobs, backend, tasks, fn, progress_total, done):
    """Yield results of ``fn(task)`` over ``tasks`` as they finish (joblib; any order)."""
    import joblib  # noqa: PLC0415
    if not tasks:
        return
    if backend == "sequential" or n_jobs == 1 and backend != "dask":
        for t in tasks:
            yield fn(t)
        return
    if backend == "dask":
        try:
            from distributed import get_client  # noqa: PLC0415
            get_client()
        except ImportError:
            raise ValueError("permutation_test: backend='dask' needs dask.distributed (pip install distributed)") from None
        except ValueError:
            raise ValueError("permutation_test: backend='dask' needs a running dask.distributed Client: "
                             "create one first, e.g. distributed.Client(address) or "
                             "distributed.Client(distributed.LocalCluster())") from None
    try:
        with joblib.parallel_config(backend=backend, n_jobs=n_jobs):
            par = joblib.Parallel(return_as="generator_unordered")
            yield from par(joblib.delayed(fn)(t) for t in tasks)
    finally:
        if backend == "loky":
            # loky keeps its worker pool, and a non-daemon manager thread, alive for reuse; while that
            # thread lives, NeuralNetwork.fit in this process will not split its steps over the cores
            # (parallel.split_allowed), so the pool goes when the test is done
            from joblib.externals.loky import get_reusable_executor  # noqa: PLC0415
            get_reusable_executor().shutdown(wait=True)


class _Task:
    """A picklable ``task -> _run_task(task, ...)`` closure for the joblib workers."""

    def __init__(self, **kw):
        self.kw = kw

    def __call__(self, task):
        return _run_task(task, **self.kw)


def permutation_test(build, X, y, fit_kwargs, n_permutations=99, statistic="association", output="max_logit",
                     n_jobs=1, backend="loky", seed=0, checkpoint_dir=None, progress=True, *, index=None,
                     features=None, batch_size=None, example=None):
    """Which inputs matter: gradient statistics with a null from networks retrained on permuted data.

    ``build(seed)`` returns a fresh untrained ``NeuralNetwork`` (initialized from ``seed``);
    ``fit_kwargs`` are the ``fit`` arguments of the recipe (``epochs``, ``batch_size``, ...; not
    ``seed``: every replicate's shuffling seed is derived from ``seed``).  The observed network
    is trained on ``(X, y)``, each of the ``B = n_permutations`` null networks from a fresh
    initialization with the identical recipe on ``(X, y[pi_b])``, one fixed permutation
    ``pi_b`` per replicate (``statistic="association"``), or on residual-permuted responses of
    the feature's reduced model (``"nonlinearity"``; module docstring).  Statistics are computed
    on the original ``X`` with ``input_gradients(net, X, output, index=index)``.

    ``n_jobs``/``backend`` go to joblib (``"loky"`` processes, ``"threading"``, ``"dask"`` - a
    running ``distributed.Client`` - or ``"sequential"``); the result is bitwise the same for
    any of them.  ``checkpoint_dir``: each finished replicate is written there atomically and a
    rerun resumes.  ``progress``: a tqdm bar counting networks.  Keyword-only extras:
    ``index`` (for ``output="logit"``), ``features`` (the nonlinearity test: which columns to
    test, default all), ``batch_size`` (of the gradient passes), ``example`` (an input drawn
    beside the maps; default ``X[0]``).
    """
    where = "permutation_test"
    if not callable(build):
        raise TypeError(f"{where}: build must be a callable build(seed) -> NeuralNetwork, received "
                        f"{type(build).__name__}")
    if fit_kwargs is None:
        fit_kwargs = {}
    if not isinstance(fit_kwargs, dict):
        raise TypeError(f"{where}: fit_kwargs must be a dict of NeuralNetwork.fit arguments, received "
                        f"{type(fit_kwargs).__name__}")
    if "seed" in fit_kwargs:
        raise ValueError(f"{where}: fit_kwargs must not contain 'seed' (received seed={fit_kwargs['seed']!r}); each "
                         "replicate's shuffling seed is derived from permutation_test's seed=")
    B = _check_int("n_permutations", n_permutations, 1)
    seed = _check_int("seed", seed, 0)
    if statistic not in STATISTICS:
        raise ValueError(f"{where}: statistic must be one of {STATISTICS}, received {statistic!r}")
    if backend not in BACKENDS:
        raise ValueError(f"{where}: backend must be one of {BACKENDS}, received {backend!r}")
    if isinstance(n_jobs, bool) or not isinstance(n_jobs, numbers.Integral) or n_jobs == 0:
        raise ValueError(f"{where}: n_jobs must be a non-zero integer (-1: all cores), received {n_jobs!r}")
    X = X if hasattr(X, "shape") else np.asarray(X)
    y = y if hasattr(y, "shape") else np.asarray(y)
    if X.ndim < 1 or y.ndim < 1 or X.shape[0] != y.shape[0]:
        raise ValueError(f"{where}: X and y must hold the same number of samples, received X of shape "
                         f"{tuple(X.shape)} and y of shape {tuple(y.shape)}")
    if X.shape[0] < 2:
        raise ValueError(f"{where}: needs at least 2 samples to permute, received {X.shape[0]}")
    net0 = _check_build(build, seed, output, index, statistic)
    init_digest = _params_digest(net0)
    n = X.shape[0]
    if statistic == "nonlinearity":
        if X.ndim != 2:
            raise ValueError(f"{where}: statistic='nonlinearity' is for tabular inputs (N, p); received X of shape "
                             f"{tuple(X.shape)}")
        p = X.shape[1]
        feats = list(range(p)) if features is None else [int(f) for f in features]
        bad = [f for f in feats if not 0 <= f < p]
        if bad or not feats or len(set(feats)) != len(feats):
            raise ValueError(f"{where}: features must be distinct column indices in [0, {p}), received {features!r}")
    elif features is not None:
        raise ValueError(f"{where}: features= selects the columns of the nonlinearity test; the association test "
                         "tests every input at once (received features with statistic='association')")
    else:
        feats = None
    from threadpoolctl import threadpool_limits  # noqa: PLC0415

    fingerprint = _fingerprint(X, y, fit_kwargs, statistic, output, index, seed, feats, init_digest)
    ckpt = _Checkpoints(checkpoint_dir, fingerprint) if checkpoint_dir is not None else None
    t_start = time.perf_counter()
    with threadpool_limits(limits=1):         # the threading/sequential/in-process replicates too
        reduced = None
        if statistic == "nonlinearity":
            reduced = {j: _fit_reduced(build, X, y, fit_kwargs, seed, j, output) for j in feats}
            tasks = [("obs", None, 0)] + [("nonlin", j, b) for j in feats for b in range(1, B + 1)]
        else:
            tasks = [("assoc", None, b) for b in range(0, B + 1)]
        results, digests = {}, {}
        pending = []
        for t in tasks:
            got = ckpt.load(t, _stat_shape(net0, X)) if ckpt is not None else None
            if got is None:
                pending.append(t)
            else:
                results[t], digests[t] = got
        fn = _Task(build=build, X=X, y=y, fit_kwargs=fit_kwargs, seed=seed, statistic=statistic, output=output,
                   index=index, batch_size=batch_size, reduced=reduced)
        bar = _bar(progress, len(tasks), len(tasks) - len(pending))
        try:
            for task, stat, digest, _secs in _parallel(n_jobs, backend, pending, fn, len(tasks), len(results)):
                if ckpt is not None:
                    ckpt.store(task, stat, digest)
                results[task], digests[task] = stat, digest
                if bar is not None:
                    bar.update(1)
        finally:
            if bar is not None:
                bar.close()
    seen = {}
    for t in tasks:
        d = digests[t]
        if d in seen:
            raise ValueError(f"{where}: replicates {_task_name(seen[d])} and {_task_name(t)} started from identical "
                             "parameters: build ignores its seed or returns copies of one network; each null network "
                             "needs a fresh random initialization")
        seen[d] = t
    observed = results[tasks[0]]
    shape = observed.shape
    if statistic == "association":
        null = np.stack([results[("assoc", None, b)] for b in range(1, B + 1)])
    else:
        null = np.full((B,) + shape, np.nan)
        obs = np.full(shape, np.nan)
        for j in feats:
            obs[j] = observed[j]
            null[:, j] = [results[("nonlin", j, b)][j] for b in range(1, B + 1)]
        observed = obs
    info = {"statistic": statistic, "output": fingerprint["output"], "index": index, "seed": seed,
            "n_permutations": B, "n_samples": int(n), "fit_kwargs": fingerprint["fit_kwargs"],
            "features": feats, "n_jobs": n_jobs, "backend": backend, "wall_time_s": time.perf_counter() - t_start,
            "replicates_resumed": len(tasks) - len(pending), "fingerprint": fingerprint}
    if example is None:
        example = to_numpy(X[0])
    return PermutationTestResult(observed, null, statistic, example=example, info=info)


def _stat_shape(net, X):
    shape = net.input_shape
    if shape is not None and None not in shape:
        return tuple(shape)
    return tuple(X.shape[1:])


def _bar(progress, total, initial):
    if not progress:
        return None
    from tqdm.auto import tqdm  # noqa: PLC0415
    return tqdm(total=total, initial=initial, desc="permutation test", unit="net")
