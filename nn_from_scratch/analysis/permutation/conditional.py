"""The conditional randomization test with refitting, per group of inputs
(docs/analysis/permutation.md, "the conditional test").

For every group ``G`` (a feature, a patch of pixels):

1. the observed network (the one of the global test, trained on ``(X, y)``) gives
   ``T_0 = S_G(net_0, X)``, ``S_G(net, X) = (1/N) sum_i sum_{j in G} (d f(x_i) / d x_ij)^2``;
2. the sampler draws ``X_G`` given ``X_{-G}`` (``samplers.py``), ``y`` kept;
3. for ``b = 1..B`` a network is built from a fresh seed and trained with the identical recipe
   on ``(X^(b), y)``; ``T_b = S_G(net_b, X^(b))`` on that replicate's own training inputs;
4. ``p_G = (1 + #{b : T_b >= T_0}) / (B + 1)``, or with ``sequential=h`` Besag-Clifford's
   ``h / L`` when the ``h``-th exceedance comes at replicate ``L <= B`` (``pvalues.py``).

Validity: if ``X^(b)_G`` had the true law of ``X_G`` given ``X_{-G}``, the ``B + 1`` data sets
``(X^(b), y)`` would be exchangeable under ``H0_G: y independent of X_G given X_{-G}`` and the
p-value exact for any recipe and statistic; with an estimated sampler it is approximate and
its calibration is measured by simulation (``benchmarks/conditional_validity.py``).

Sequential stopping runs in rounds: every group still running gets its next replicates
(``h`` at first, since no group can stop before its ``h``-th replicate); after each round the
groups whose rule applies stop.  A group's p-value uses its replicates ``1..L`` only, each
with fixed seeds, so the result does not depend on ``n_jobs``, the backend or the round
sizes (replicates past a group's stop are run by a round but not used: NaN in the result).
"""
import functools
import math
import time

import numpy as np

from ...backend import to_numpy
from .checkpoints import Checkpoints, fingerprint, task_name
from .groups import check_groups, group_sums
from .guards import check_result_memory, warn_diverged
from .parallel import Replicates, Runner, Task, check_distinct_starts, execute, progress_bar, stat_shape
from .pvalues import sequential_stop
from .replicates import REDUCED_KEY, ConditionalDraws, replicate_seeds, run_task
from .result import PermutationTestResult
from .samplers import SAMPLERS, fit_residual, gram_of

__all__ = ["conditional_test"]


def _check_tested(tested, n_groups):
    if tested is None:
        return list(range(n_groups))
    try:
        ids = [int(g) for g in tested]
        ok = all(int(g) == g and not isinstance(g, bool) for g in tested)
    except (TypeError, ValueError):
        ok, ids = False, []
    if not ok or not ids or len(set(ids)) != len(ids) or not all(0 <= g < n_groups for g in ids):
        raise ValueError(f"permutation_test: tested must be distinct group ids in [0, {n_groups}), received {tested!r}")
    return sorted(ids)


def _draws(X, flat, n_groups, sampler, tested):
    """The ``ConditionalDraws`` of the test: the residual fits made here, once per group."""
    where = "permutation_test"
    if isinstance(sampler, str):
        if sampler not in SAMPLERS:
            raise ValueError(f"{where}: sampler must be one of {SAMPLERS} or a callable sampler(X, group_mask, rng) "
                             f"-> X_tilde, received {sampler!r}")
    elif not callable(sampler):
        raise TypeError(f"{where}: sampler must be one of {SAMPLERS} or a callable sampler(X, group_mask, rng) -> "
                        f"X_tilde, received {type(sampler).__name__}")
    draws = ConditionalDraws(sampler, flat, n_groups, X.shape[1:])
    if sampler == "residual":
        gram = functools.lru_cache(maxsize=1)(lambda: gram_of(X))
        draws.fits = [fit_residual(X, draws.mask(g), gram) if g in tested else None for g in range(n_groups)]
    return draws


def conditional_test(build, X, y, fit_kwargs, B, seed, output, index, batch_size, n_jobs, backend, checkpoint_dir,
                     progress, net0, init_digest, example, groups, sampler, sequential, tested=None, deadline=None):
    """``permutation_test(..., null="conditional")``: see the module docstring."""
    from threadpoolctl import threadpool_limits  # noqa: PLC0415
    t_start = time.perf_counter()
    shape = stat_shape(net0, X)
    flat, G = check_groups(groups, X.shape[1:], shape)
    tested = _check_tested(tested, G)
    n_tasks = 1 + len(tested) * B
    check_result_memory(B, n_tasks, 1, B * G)
    Xh = np.asarray(to_numpy(X))
    with threadpool_limits(limits=1):
        draws = _draws(Xh, flat, G, sampler, tested)
        if not isinstance(sampler, str):            # a bad user sampler fails here, before any training
            draws.draw(Xh, tested[0], replicate_seeds(seed, (REDUCED_KEY, 0))[2])
    group_map = flat.reshape(X.shape[1:])
    fp = fingerprint(X, y, fit_kwargs, "association", output, index, seed, None, init_digest,
                     conditional={"groups": group_map, "sampler": sampler, "sequential": sequential,
                                  "tested": tested})
    ckpt = Checkpoints(checkpoint_dir, fp) if checkpoint_dir is not None else None
    fn = Task(run_task, build=build, X=Xh, y=y, fit_kwargs=fit_kwargs, seed=seed, statistic="association",
              output=output, index=index, batch_size=batch_size, conditional=draws)
    obs_task = ("obs", None, 0)
    shape_of = lambda t: shape if t == obs_task else (1,)  # noqa: E731
    reps = Replicates()
    results = reps.results
    bar = progress_bar(progress, n_tasks, 0)
    resumed = 0

    def tasks():                                # drawn lazily by the workers
        yield obs_task
        for g in tested:
            for b in range(1, B + 1):
                yield ("cond", g, b)

    try:
        with threadpool_limits(limits=1), Runner(fn, n_jobs, backend, n_tasks, deadline, seconds_of=lambda r: r[-1]) as runner:
            if sequential is None:
                resumed += execute(tasks(), runner, ckpt, shape_of, reps, bar)
            else:
                resumed += execute([obs_task], runner, ckpt, shape_of, reps, bar)
                T0 = group_sums(results[obs_task], flat, G)
                resumed += _sequential_rounds(T0, tested, B, sequential, runner.workers,
                                              lambda ts: execute(ts, runner, ckpt, shape_of, reps, bar), results)
    finally:
        if bar is not None:
            bar.close()
    check_distinct_starts(results, reps.digests)
    T0 = group_sums(results[obs_task], flat, G)
    T0[np.setdiff1d(np.arange(G), tested)] = np.nan        # untested groups: no p-value
    null = np.full((B, G), np.nan)
    for (kind, g, b), stat in results.items():
        if kind == "cond":
            null[b - 1, g] = stat[0]
    used = {g: B for g in tested}
    if sequential is not None:                     # replicates past a group's stop are not part of its test
        for g in tested:
            _, L = sequential_stop(T0[g], null[:, g], sequential, B)
            null[L:, g] = np.nan
            used[g] = max(L, next((b + 1 for b in range(B) if ("cond", g, b + 1) in reps.diverged
                                   and np.isnan(null[b, g])), 0))
    warn_diverged(reps.diverged, obs_task, used=lambda t: t == obs_task or t[2] <= used[t[1]])
    fits = [{"method": f.method, "penalty": f.penalty} for f in (draws.fits or []) if f is not None]
    sampler_fits = sorted({(f["method"], f["penalty"]) for f in fits}, key=str) if fits else None
    info = {"null": "conditional", "statistic": "association", "output": fp["output"], "index": index, "seed": seed,
            "n_permutations": B, "n_samples": int(X.shape[0]), "fit_kwargs": fp["fit_kwargs"], "n_groups": G,
            "tested": tested, "sampler": fp["sampler"], "sampler_fits": sampler_fits, "sequential": sequential,
            "n_jobs": n_jobs, "backend": backend, "wall_time_s": time.perf_counter() - t_start,
            "replicates_resumed": resumed, "n_fits": len(results),
            "n_fits_used": 1 + int((~np.isnan(null)).sum()),
            "diverged_replicates": sorted(task_name(t) for t in reps.diverged), "fingerprint": fp}
    return PermutationTestResult(T0, null, "association", example=example, info=info, scope="conditional",
                                 groups=group_map, sequential=sequential)


def _sequential_rounds(T0, tested, B, h, workers, run, results):
    """Draw replicates round by round until every group's sequential rule applies; returns resumed count."""
    next_b = {g: 1 for g in tested}
    resumed = 0
    first = True
    while next_b:
        active = sorted(next_b)
        size = min(h, B) if first else max(1, math.ceil(workers / len(active)))
        first = False
        tasks = []
        for g in active:
            last = min(B, next_b[g] + size - 1)
            tasks += [("cond", g, b) for b in range(next_b[g], last + 1)]
            next_b[g] = last + 1
        resumed += run(tasks)
        for g in active:
            column = [results[("cond", g, b)][0] for b in range(1, next_b[g])]
            stopped, _ = sequential_stop(T0[g], np.asarray(column, dtype=np.float64), h, B)
            if stopped or next_b[g] > B:           # (a NaN statistic - a diverged replicate - never stops it)
                del next_b[g]
    return resumed
