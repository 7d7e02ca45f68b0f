"""``permutation_test``: the entry point, its argument checks, and the label-permutation nulls
(docs/analysis/permutation.md).  The conditional null is in ``conditional.py``."""
import numbers
import os
import time

import numpy as np

from ...backend import to_numpy
from ...validation import as_array
from .checkpoints import Checkpoints, fingerprint, task_name
from .conditional import conditional_test
from .guards import check_result_memory, warn_diverged
from .parallel import (BACKENDS, Replicates, Runner, Task, check_deadline, check_distinct_starts, execute,
                       progress_bar, resolve_n_jobs, stat_shape)
from .recipe import check_fit_kwargs
from .replicates import check_build, fit_reduced, params_digest, run_task
from .result import STATISTICS, PermutationTestResult

__all__ = ["permutation_test", "NULLS"]

NULLS = ("labels", "conditional")


def _check_int(name, value, low):
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < low:
        raise ValueError(f"permutation_test: {name} must be an integer >= {low}, received {value!r}")
    return int(value)


def _check_fit_kwargs(fit_kwargs, where):
    """Every key is an argument of ``NeuralNetwork.fit`` (checked before any network is trained)."""
    import inspect  # noqa: PLC0415

    from ...training.network import NeuralNetwork  # noqa: PLC0415
    known = set(inspect.signature(NeuralNetwork.fit).parameters) - {"self", "X", "y"}
    unknown = sorted(str(k) for k in fit_kwargs if k not in known)
    if unknown:
        raise TypeError(f"{where}: fit_kwargs has {unknown}, not arguments of NeuralNetwork.fit; its arguments are "
                        f"{sorted(known)}")


def permutation_test(build, X, y, fit_kwargs, n_permutations=99, statistic="association", output="max_logit",
                     n_jobs=1, backend="loky", seed=0, checkpoint_dir=None, progress=True, *, index=None,
                     features=None, batch_size=None, example=None, null="labels", groups=None, sampler="residual",
                     sequential=None, tested=None, deadline=None):
    """Which inputs matter: gradient statistics with a null from networks retrained on permuted data.

    ``build(seed)`` returns a fresh untrained ``NeuralNetwork`` (initialized from ``seed``);
    ``fit_kwargs`` are the ``fit`` arguments of the recipe (``epochs``, ``batch_size``, ...; not
    ``seed``: every replicate's shuffling seed is derived from ``seed``).  The observed network
    is trained on ``(X, y)``; ``B = n_permutations`` null networks, each from a fresh
    initialization with the identical recipe, on:

    * ``null="labels"`` (the global test, ``result.scope == "global"``): ``(X, y[pi_b])``, one
      fixed permutation ``pi_b`` per replicate (``statistic="association"``), or residual-permuted
      responses of the feature's reduced model (``"nonlinearity"``, scope ``"nonlinearity"``).
      Exact for ``y`` independent of all of ``X``; its per-feature p-values do not localise.
      Statistics on the original ``X``.
    * ``null="conditional"`` (``result.scope == "conditional"``): per group ``G`` of inputs,
      ``(X with X_G redrawn by sampler given the other inputs, y)``; ``T_G = mean_i sum_{j in G}
      D_ij^2`` on each replicate's own training inputs; ``p_G = (1 + #{b : T_b >= T_0}) / (B + 1)``,
      or Besag-Clifford's sequential p-value with ``sequential=h``.  ``groups``: None (every input
      its own group), or an integer map of one sample's shape with ids ``0..G-1``
      (``patch_groups``).  ``sampler``: ``"residual"`` (default), ``"marginal"``, or a callable
      ``sampler(X, group_mask, rng) -> X_tilde``.  ``tested``: the group ids to test (default
      all; the others get NaN).  Association statistic only.

    ``n_jobs``/``backend``: parallel replicates (``"loky"`` processes, ``"threading"``, ``"dask"``
    - a running ``distributed.Client`` - or ``"sequential"``); the result is bitwise the same for
    any of them.  ``n_jobs`` follows joblib (``-1``: every core) and is capped at the number of
    replicates and at the usable cores (the cluster's threads for dask).  ``deadline`` (seconds,
    default 60): a replicate a worker has not returned after ``max(deadline, 10 x the slowest
    replicate so far)`` is run in this process instead, with a warning (``parallel.py``).  ``checkpoint_dir``: each finished replicate is written there atomically and a
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
    if backend != "dask":              # (dask: the cluster's threads are counted when the test starts)
        resolve_n_jobs(n_jobs, backend, 1, where, quiet=True)
    elif isinstance(n_jobs, bool) or not isinstance(n_jobs, numbers.Integral) or n_jobs == 0:
        raise ValueError(f"{where}: n_jobs must be a non-zero integer (-1: every core, -2: all but one, ...), "
                         f"received {n_jobs!r}")
    check_deadline(deadline, where)
    check_fit_kwargs(fit_kwargs)
    if not isinstance(null, str) or null not in NULLS:
        raise ValueError(f"{where}: null must be one of {NULLS}, received {null!r}")
    if null == "labels":
        for name, value, default in (("groups", groups, None), ("sequential", sequential, None),
                                     ("tested", tested, None)):
            if value is not default:
                raise ValueError(f"{where}: {name}= belongs to null='conditional' (per-group nulls); the label "
                                 f"permutation test has one global null - received {name}={value!r} with null='labels'")
        if not (isinstance(sampler, str) and sampler == "residual"):
            raise ValueError(f"{where}: sampler= belongs to null='conditional'; received sampler={sampler!r} with "
                             "null='labels'")
    else:
        if statistic != "association":
            raise ValueError(f"{where}: null='conditional' tests y independent of X_G given the other inputs with the "
                             f"association statistic; statistic='nonlinearity' asks another question (is f linear in "
                             f"x_j?) whose null is the residual permutation of null='labels': use "
                             f"statistic='association' with null='conditional', received statistic={statistic!r}")
        if features is not None:
            raise ValueError(f"{where}: features= selects the columns of the nonlinearity test; null='conditional' "
                             "chooses what is tested with groups= (received features)")
        if sequential is not None:
            _check_int("sequential", sequential, 1)
    _check_fit_kwargs(fit_kwargs, where)
    if not isinstance(progress, (bool, np.bool_)):
        raise TypeError(f"{where}: progress must be True or False, received {type(progress).__name__} {progress!r}")
    if checkpoint_dir is not None:
        if not isinstance(checkpoint_dir, (str, os.PathLike)):
            raise TypeError(f"{where}: checkpoint_dir must be a directory path (str or pathlib.Path) or None, "
                            f"received {type(checkpoint_dir).__name__} {checkpoint_dir!r}")
        if os.path.exists(checkpoint_dir) and not os.path.isdir(checkpoint_dir):
            raise ValueError(f"{where}: checkpoint_dir {os.fspath(checkpoint_dir)!r} is a file, not a directory")
    X, y = as_array(where, "X", X), as_array(where, "y", y)
    if X.ndim < 1 or y.ndim < 1 or X.shape[0] != y.shape[0]:
        raise ValueError(f"{where}: X and y must hold the same number of samples, received X of shape "
                         f"{tuple(X.shape)} and y of shape {tuple(y.shape)}")
    if X.shape[0] < 2:
        raise ValueError(f"{where}: needs at least 2 samples to permute, received {X.shape[0]}")
    net0 = check_build(build, seed, output, index, statistic)
    init_digest = params_digest(net0)
    if example is None:
        example = to_numpy(X[0])
    else:
        example = as_array(where, "example", example)
        if int(np.prod(example.shape)) != int(np.prod(X.shape[1:])):
            raise ValueError(f"{where}: example must be one input of shape {tuple(X.shape[1:])} (drawn beside the "
                             f"maps), received shape {tuple(example.shape)}")
    common = dict(build=build, X=X, y=y, fit_kwargs=fit_kwargs, B=B, seed=seed, output=output, index=index,
                  batch_size=batch_size, n_jobs=n_jobs, backend=backend, checkpoint_dir=checkpoint_dir,
                  progress=progress, net0=net0, init_digest=init_digest, example=example, deadline=deadline)
    if null == "conditional":
        return conditional_test(groups=groups, sampler=sampler, sequential=sequential, tested=tested, **common)
    return _labels_test(statistic=statistic, features=features, **common)


def _labels_test(build, X, y, fit_kwargs, B, seed, output, index, batch_size, n_jobs, backend, checkpoint_dir,
                 progress, net0, init_digest, example, statistic, features, deadline):
    """The label-permutation tests: global association, or per-feature nonlinearity."""
    where = "permutation_test"
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

    shape = stat_shape(net0, X)
    size = int(np.prod(shape))
    n_tasks = 1 + B * (len(feats) if feats else 1)
    check_result_memory(B, n_tasks, size, B * size)
    fp = fingerprint(X, y, fit_kwargs, statistic, output, index, seed, feats, init_digest)
    ckpt = Checkpoints(checkpoint_dir, fp) if checkpoint_dir is not None else None
    t_start = time.perf_counter()
    obs_task = ("obs", None, 0) if statistic == "nonlinearity" else ("assoc", None, 0)

    def tasks():                                # drawn lazily by the workers
        yield obs_task
        if statistic == "nonlinearity":
            for j in feats:
                for b in range(1, B + 1):
                    yield ("nonlin", j, b)
        else:
            for b in range(1, B + 1):
                yield ("assoc", None, b)

    with threadpool_limits(limits=1):         # the threading/sequential/in-process replicates too
        reduced = None
        if statistic == "nonlinearity":
            reduced = {j: fit_reduced(build, X, y, fit_kwargs, seed, j, output) for j in feats}
        reps = Replicates()
        fn = Task(run_task, build=build, X=X, y=y, fit_kwargs=fit_kwargs, seed=seed, statistic=statistic,
                  output=output, index=index, batch_size=batch_size, reduced=reduced)
        bar = progress_bar(progress, n_tasks, 0)
        try:
            with Runner(fn, n_jobs, backend, n_tasks, deadline, seconds_of=lambda r: r[-1]) as runner:
                resumed = execute(tasks(), runner, ckpt, lambda t: shape, reps, bar)
        finally:
            if bar is not None:
                bar.close()
    results = reps.results
    check_distinct_starts(results, reps.digests)
    warn_diverged(reps.diverged, obs_task)
    observed = results[obs_task]
    if statistic == "association":
        null = np.stack([results[("assoc", None, b)] for b in range(1, B + 1)])
    else:
        null = np.full((B,) + shape, np.nan)
        obs = np.full(shape, np.nan)
        for j in feats:
            obs[j] = observed[j]
            null[:, j] = [results[("nonlin", j, b)][j] for b in range(1, B + 1)]
        observed = obs
    info = {"null": "labels", "statistic": statistic, "output": fp["output"], "index": index, "seed": seed,
            "n_permutations": B, "n_samples": int(n), "fit_kwargs": fp["fit_kwargs"],
            "features": feats, "n_jobs": n_jobs, "backend": backend, "wall_time_s": time.perf_counter() - t_start,
            "replicates_resumed": resumed, "n_fits": n_tasks + (2 * len(feats) if feats else 0),
            "diverged_replicates": sorted(task_name(t) for t in reps.diverged),
            "fingerprint": fp}
    return PermutationTestResult(observed, null, statistic, example=example, info=info)
