"""Replicates run in parallel, every wait with a deadline (docs/analysis/permutation.md, "parallel runs").

Backends: ``"loky"`` (worker processes: loky's executor, as joblib's), ``"threading"`` (daemon
threads of this process), ``"dask"`` (a running ``distributed.Client``) and ``"sequential"``.
``Runner.run(tasks)`` yields ``fn(task)`` as the replicates finish, in any order; the caller
files them by task, so the result does not depend on the order.

* Workers: ``n_jobs`` (joblib's convention for negative values: ``-1`` every usable core,
  ``-2`` all but one, ...; 0 and values below ``-cores`` are refused) capped at the number of
  tasks and at ``JOBS_PER_CORE`` x the usable cores (loky, threading: a replicate is
  CPU-bound on one BLAS thread, more workers than cores only cost memory and time) or at the cluster's threads (dask); a cap other
  than the number of tasks is reported with a warning.
* Tasks are drawn lazily from the iterable given: at most one per worker is in flight.
* Deadline: a replicate not back ``limit`` seconds after it was handed out, ``limit =
  max(deadline, DEADLINE_FACTOR x the slowest replicate of this test so far)`` (the time a
  worker reports it took; ``DEADLINE_FACTOR x deadline`` while none has come back, which
  leaves the workers time to start; ``deadline`` defaults to ``DEADLINE_FLOOR_S``), is
  abandoned with a ``ReplicateDeadlineWarning`` and run in this process.  A replicate is a pure
  function of its seeds, so the result is bitwise the same.  An abandoned loky worker is killed
  when the test ends; an abandoned dask worker gets no more tasks of this test; a thread is
  left to finish (daemon: it does not hold the interpreter at exit).  The slots of abandoned
  workers are not refilled; with none left the remaining replicates run in this process.
* loky workers watch their parent: if it dies (``kill -9``) they exit within a second, and
  loky's resource tracker with them (its pipe closes); idle workers exit after
  ``IDLE_TIMEOUT_S``.
"""
import concurrent.futures as cf
import math
import numbers
import os
import queue
import threading
import time
import warnings

from .checkpoints import task_name

__all__ = ["BACKENDS", "Runner", "Task", "Replicates", "ReplicateDeadlineWarning", "progress_bar", "execute",
           "check_distinct_starts", "stat_shape", "resolve_n_jobs", "check_deadline", "usable_cores",
           "DEADLINE_FLOOR_S", "DEADLINE_FACTOR", "JOBS_PER_CORE", "IDLE_TIMEOUT_S"]

BACKENDS = ("loky", "threading", "dask", "sequential")
DEADLINE_FLOOR_S = 60.0
DEADLINE_FACTOR = 10.0
JOBS_PER_CORE = 1
IDLE_TIMEOUT_S = 10


class ReplicateDeadlineWarning(RuntimeWarning):
    """A worker did not return a replicate in time; it was run in this process instead."""


def usable_cores():
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        return max(1, os.cpu_count() or 1)


def check_deadline(deadline, where="permutation_test"):
    if deadline is None:
        return DEADLINE_FLOOR_S
    if isinstance(deadline, bool) or not isinstance(deadline, numbers.Real) or math.isnan(deadline) or deadline <= 0:
        raise ValueError(f"{where}: deadline must be a number of seconds > 0 (None: {DEADLINE_FLOOR_S:g}; inf: wait "
                         f"for ever), received {deadline!r}")
    return float(deadline)


def _dask_client(where):
    try:
        from distributed import get_client  # noqa: PLC0415
    except ImportError:
        raise ValueError(f"{where}: backend='dask' needs dask.distributed (pip install distributed)") from None
    try:
        return get_client()
    except ValueError:
        raise ValueError(f"{where}: backend='dask' needs a running dask.distributed Client: "
                         "create one first, e.g. distributed.Client(address) or "
                         "distributed.Client(distributed.LocalCluster())") from None


def resolve_n_jobs(n_jobs, backend, n_tasks, where="permutation_test", capacity=None, quiet=False):
    """The number of workers: ``n_jobs`` checked, its negative convention applied, capped (module docstring)."""
    if isinstance(n_jobs, bool) or not isinstance(n_jobs, numbers.Integral) or n_jobs == 0:
        raise ValueError(f"{where}: n_jobs must be a non-zero integer (-1: every core, -2: all but one, ...), "
                         f"received {n_jobs!r}")
    n_jobs = int(n_jobs)
    if backend == "sequential":
        return 1
    cores = usable_cores()
    if capacity is None:                                  # loky, threading
        base, capacity = cores, JOBS_PER_CORE * cores
        what = f"{cores} usable cores" if JOBS_PER_CORE == 1 else f"{JOBS_PER_CORE} x {cores} usable cores"
    else:                                                 # dask: the cluster's threads
        base, what = capacity, f"the {capacity} threads of the dask cluster"
    if n_jobs < 0:
        if n_jobs < -base:
            raise ValueError(f"{where}: n_jobs={n_jobs} leaves no worker: negative values count back from "
                             f"{base} ({'cores' if backend != 'dask' else 'cluster threads'}; -1: all of them), so "
                             f"n_jobs must be >= {-base} or positive")
        n = base + 1 + n_jobs
    else:
        n = n_jobs
    if n > capacity and not quiet:
        warnings.warn(f"{where}: n_jobs={n_jobs} capped at {capacity} workers ({what}): more workers than that "
                      "only cost memory", UserWarning, stacklevel=3)
    n = min(n, capacity)
    return max(1, min(n, max(1, int(n_tasks))))


class Task:
    """A picklable ``task -> fn(task, **kw)`` closure for the workers."""

    def __init__(self, fn, **kw):
        self.fn, self.kw = fn, kw

    def __call__(self, task):
        return self.fn(task, **self.kw)


# ----------------------------------------------------------------------------- loky workers
_INSTALLED = None


def _loky_init(parent_pid, fn):
    """In each loky worker: keep ``fn`` (sent once) and exit when the parent process is gone."""
    global _INSTALLED
    _INSTALLED = fn
    threading.Thread(target=_watch_parent, args=(parent_pid,), daemon=True, name="nnfs-parent-watch").start()


def _watch_parent(parent_pid, every_s=0.2):
    while True:
        time.sleep(every_s)
        if os.getppid() != parent_pid:
            os._exit(1)


def _call_installed(task):
    return _INSTALLED(task)


class _Threads:
    """A minimal pool of daemon threads with ``concurrent.futures`` futures."""

    def __init__(self, n, fn):
        self.fn, self.q = fn, queue.SimpleQueue()
        self.threads = [threading.Thread(target=self._loop, daemon=True, name=f"nnfs-replicate-{i}")
                        for i in range(n)]
        for t in self.threads:
            t.start()

    def submit(self, task):
        f = cf.Future()
        self.q.put((f, task))
        return f

    def _loop(self):
        while True:
            item = self.q.get()
            if item is None:
                return
            f, task = item
            if not f.set_running_or_notify_cancel():
                continue
            try:
                f.set_result(self.fn(task))
            except BaseException as exc:  # noqa: BLE001 - handed to the waiting thread
                f.set_exception(exc)

    def close(self, stuck):
        for _ in self.threads:
            self.q.put(None)
        if not stuck:
            for t in self.threads:
                t.join(timeout=5)


class Runner:
    """The workers of one test (a context manager; ``run(tasks)`` may be called several times)."""

    def __init__(self, fn, n_jobs, backend, n_tasks, deadline=None, where="permutation_test", seconds_of=None):
        self.fn, self.backend, self.where, self.seconds_of = fn, backend, where, seconds_of
        self.floor = check_deadline(deadline, where)
        self.client = _dask_client(where) if backend == "dask" else None
        capacity = sum(self.client.nthreads().values()) or 1 if self.client is not None else None
        self.workers = resolve_n_jobs(n_jobs, backend, n_tasks, where, capacity)
        self.inline = backend == "sequential" or (self.workers == 1 and backend != "dask")
        self.slowest = None
        self.abandoned = []                  # futures given up on (their workers are lost to this test)
        self.bad_workers = set()             # dask workers that held an abandoned replicate
        self._pool = None

    def __enter__(self):
        return self

    def __exit__(self, exc_type, *exc):
        self.close(kill=exc_type is not None)

    def limit(self):
        if self.slowest is None:
            return DEADLINE_FACTOR * self.floor
        return max(self.floor, DEADLINE_FACTOR * self.slowest)

    # ------------------------------------------------------------------ backends
    def _start(self):
        if self._pool is not None:
            return
        if self.backend == "loky":
            from joblib.externals.loky import ProcessPoolExecutor  # noqa: PLC0415
            self._pool = ProcessPoolExecutor(max_workers=self.workers, timeout=IDLE_TIMEOUT_S,
                                             initializer=_loky_init, initargs=(os.getpid(), self.fn))
        elif self.backend == "threading":
            self._pool = _Threads(self.workers, self.fn)
        else:
            self._pool = self.client

    def _submit(self, task):
        if self.backend == "loky":
            return self._pool.submit(_call_installed, task)
        if self.backend == "threading":
            return self._pool.submit(task)
        good = sorted(set(self.client.nthreads()) - self.bad_workers)
        where = {"workers": good, "allow_other_workers": False} if self.bad_workers else {}
        return self.client.submit(self.fn, task, pure=False, **where)

    def _wait(self, futures, timeout):
        if self.backend != "dask":
            done, _ = cf.wait(futures, timeout=timeout, return_when=cf.FIRST_COMPLETED)
            return done
        from distributed import wait  # noqa: PLC0415
        try:
            wait(list(futures), timeout=timeout, return_when="FIRST_COMPLETED")
        except TimeoutError:
            pass
        return {f for f in futures if f.done()}

    def _abandon(self, future):
        self.abandoned.append(future)
        if self.backend == "dask":
            try:
                for worker, keys in self.client.processing().items():
                    if future.key in keys:
                        self.bad_workers.add(worker)
            except Exception:  # noqa: BLE001 - the scheduler could not say: nothing to exclude
                pass
            future.cancel()
        else:
            future.cancel()

    def _stuck(self):
        return sum(1 for f in self.abandoned if not f.done())

    def close(self, kill=False):
        stuck = self._stuck()
        if self._pool is None:
            return
        pool, self._pool = self._pool, None
        if self.backend == "loky":
            pool.shutdown(wait=True, kill_workers=bool(stuck) or kill)
        elif self.backend == "threading":
            pool.close(stuck or kill)

    # ------------------------------------------------------------------ the loop
    def run(self, tasks):
        """Yield ``fn(task)`` for every task of the iterable ``tasks`` (drawn lazily), as they finish."""
        if self.inline:
            for t in tasks:
                yield self.fn(t)
            return
        self._start()
        source = iter(tasks)
        inflight = {}                                   # future -> (task, time handed out)
        exhausted = False
        try:
            while True:
                slots = self.workers - self._stuck()
                if self.backend == "dask" and self.bad_workers and not set(self.client.nthreads()) - self.bad_workers:
                    slots = 0
                while not exhausted and len(inflight) < slots:
                    task = next(source, None)
                    if task is None:
                        exhausted = True
                    else:
                        inflight[self._submit(task)] = (task, time.monotonic())
                if not inflight:
                    if exhausted:
                        return
                    task = next(source, None)           # no worker left: this process does the work
                    if task is None:
                        return
                    yield self.fn(task)
                    continue
                now = time.monotonic()
                limit = self.limit()
                first_due = min(t0 for _, t0 in inflight.values()) + limit
                done = self._wait(list(inflight), timeout=max(0.0, min(first_due - now, 3600.0)))
                for f in done:
                    task, t0 = inflight.pop(f)
                    result = f.result()
                    took = time.monotonic() - t0 if self.seconds_of is None else self.seconds_of(result)
                    self.slowest = took if self.slowest is None else max(self.slowest, took)
                    yield result
                now = time.monotonic()
                for f, (task, t0) in list(inflight.items()):
                    if f.done() or now - t0 < limit:
                        continue
                    del inflight[f]
                    self._abandon(f)
                    warnings.warn(f"{self.where}: replicate {task_name(task)} not back from its {self.backend} "
                                  f"worker after {now - t0:.1f} s (deadline {limit:.1f} s: max(deadline="
                                  f"{self.floor:g} s, {DEADLINE_FACTOR:g} x the slowest replicate so far)); running "
                                  "it in this process (the result is the same: a replicate is a pure function of "
                                  "its seeds)", ReplicateDeadlineWarning, stacklevel=2)
                    yield self.fn(task)
        finally:
            for f in inflight:
                f.cancel()


# ----------------------------------------------------------------------------- results of one test
class Replicates:
    """The finished replicates of one test: statistics, initial-parameter digests, which diverged."""

    def __init__(self):
        self.results, self.digests, self.diverged = {}, {}, set()

    def file(self, task, stat, digest, diverged):
        self.results[task], self.digests[task] = stat, digest
        if diverged:
            self.diverged.add(task)


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


def execute(tasks, runner, ckpt, shape_of, reps, bar):
    """Run the tasks of the iterable ``tasks`` (drawn lazily) not already in ``reps``, loading
    checkpoints first; file the results by task.  Returns the number loaded from checkpoints."""
    resumed = 0

    def pending():
        nonlocal resumed
        for t in tasks:
            if t in reps.results:
                continue
            got = ckpt.load(t, shape_of(t)) if ckpt is not None else None
            if got is None:
                yield t
            else:
                reps.file(t, *got)
                resumed += 1
                if bar is not None:
                    bar.update(1)

    for task, stat, digest, diverged, _secs in runner.run(pending()):
        if ckpt is not None:
            ckpt.store(task, stat, digest, diverged)
        reps.file(task, stat, digest, diverged)
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
