"""Replicates run in parallel through joblib (docs/analysis/permutation.md, "parallel runs").

Backends: ``"loky"`` processes, ``"threading"``, ``"dask"`` (a running
``distributed.Client``) and ``"sequential"``; results are yielded as they finish, in any
order, and the caller files them by task, so the result does not depend on the order.
"""
import contextlib

from .checkpoints import task_name

__all__ = ["BACKENDS", "parallel", "Task", "progress_bar", "pool", "execute", "check_distinct_starts", "stat_shape"]

BACKENDS = ("loky", "threading", "dask", "sequential")


def _check_dask():
    try:
        from distributed import get_client  # noqa: PLC0415
        get_client()
    except ImportError:
        raise ValueError("permutation_test: backend='dask' needs dask.distributed (pip install distributed)") from None
    except ValueError:
        raise ValueError("permutation_test: backend='dask' needs a running dask.distributed Client: "
                         "create one first, e.g. distributed.Client(address) or "
                         "distributed.Client(distributed.LocalCluster())") from None


@contextlib.contextmanager
def pool(backend):
    """Around every ``parallel`` call of one test: the loky pool is shut down once, at the end.

    loky keeps its worker pool, and a non-daemon manager thread, alive for reuse; while that
    thread lives, ``NeuralNetwork.fit`` in this process will not split its steps over the cores
    (``parallel.split_allowed``), so the pool goes when the test is done."""
    try:
        yield
    finally:
        if backend == "loky":
            from joblib.externals.loky import get_reusable_executor  # noqa: PLC0415
            get_reusable_executor().shutdown(wait=True)


def parallel(n_jobs, backend, tasks, fn):
    """Yield results of ``fn(task)`` over ``tasks`` as they finish (joblib; any order)."""
    import joblib  # noqa: PLC0415
    if not tasks:
        return
    if backend == "sequential" or n_jobs == 1 and backend != "dask":
        for t in tasks:
            yield fn(t)
        return
    if backend == "dask":
        _check_dask()
    with joblib.parallel_config(backend=backend, n_jobs=n_jobs):
        par = joblib.Parallel(return_as="generator_unordered")
        yield from par(joblib.delayed(fn)(t) for t in tasks)


class Task:
    """A picklable ``task -> fn(task, **kw)`` closure for the joblib workers."""

    def __init__(self, fn, **kw):
        self.fn, self.kw = fn, kw

    def __call__(self, task):
        return self.fn(task, **self.kw)


def progress_bar(progress, total, initial, desc="permutation test"):
    if not progress:
        return None
    from tqdm.auto import tqdm  # noqa: PLC0415
    return tqdm(total=total, initial=initial, desc=desc, unit="net")


def stat_shape(net, X):
    """One sample's shape as the network sees it (a channel axis added where the network adds one)."""
    shape = net.input_shape
    if shape is not None and None not in shape:
        return tuple(shape)
    return tuple(X.shape[1:])


def execute(tasks, fn, ckpt, n_jobs, backend, shape_of, results, digests, bar):
    """Run ``tasks`` not already in ``results`` (loading checkpoints first); file results by task.
    Returns the number of tasks loaded from checkpoints."""
    pending, resumed = [], 0
    for t in tasks:
        if t in results:
            continue
        got = ckpt.load(t, shape_of(t)) if ckpt is not None else None
        if got is None:
            pending.append(t)
        else:
            results[t], digests[t] = got
            resumed += 1
            if bar is not None:
                bar.update(1)
    for task, stat, digest, _secs in parallel(n_jobs, backend, pending, fn):
        if ckpt is not None:
            ckpt.store(task, stat, digest)
        results[task], digests[task] = stat, digest
        if bar is not None:
            bar.update(1)
    return resumed


def check_distinct_starts(tasks, digests):
    """Refuse replicates that started from identical parameters (build ignores its seed)."""
    seen = {}
    for t in tasks:
        d = digests[t]
        if d in seen:
            raise ValueError(f"permutation_test: replicates {task_name(seen[d])} and {task_name(t)} started from "
                             "identical parameters: build ignores its seed or returns copies of one network; each "
                             "null network needs a fresh random initialization")
        seen[d] = t
