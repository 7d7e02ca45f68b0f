"""permutation_test with a stopped worker (SIGSTOP loky worker, a hung thread, a SIGSTOP dask worker)
and the life of loky's workers after a kill -9 of the run (docs/analysis/permutation.md, "parallel runs").

For each backend: the wall time of the run and whether its result is bitwise the reference
(sequential, no fault), with the default deadline and with ``--deadline``.  Then a run killed
with SIGKILL: the seconds until its workers and resource trackers are gone.

    PYTHONPATH=$PWD python benchmarks/stopped_workers.py [--permutations 12] [--deadline 5]
"""
import argparse
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
import warnings

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, os.path.join(ROOT, "tests"))

from nn_from_scratch.analysis import permutation as pt  # noqa: E402
from permutation_helpers import FIT, build_mlp, make_data, stopping_build_mlp  # noqa: E402

SEED = 11
_release = threading.Event()


def sleepy_build(seed):
    if seed == pt.replicate_seeds(SEED, 2)[0] and threading.current_thread() is not threading.main_thread():
        _release.wait(3600)
    return build_mlp(seed)


def run(build, B, **kw):
    X, y = make_data()
    return pt.permutation_test(build, X, y, FIT, n_permutations=B, output="output", progress=False, seed=SEED, **kw)


def timed(fn):
    t0 = time.monotonic()
    with warnings.catch_warnings(record=True) as rec:
        warnings.simplefilter("always")
        res = fn()
    late = sum(issubclass(w.category, pt.ReplicateDeadlineWarning) for w in rec)
    return res, time.monotonic() - t0, late


def same(a, b):
    return (np.array_equal(a.statistic, b.statistic) and np.array_equal(a.null_distribution, b.null_distribution))


def children(pid):
    out = []
    for d in os.listdir("/proc"):
        if d.isdigit():
            try:
                with open(f"/proc/{d}/stat") as f:
                    fields = f.read().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[1]) == pid and fields[0] != "Z":
                out.append(int(d))
    return out


def alive(pid):
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def orphans(limit_s=400):
    script = textwrap.dedent("""
        from nn_from_scratch.analysis import permutation as pt
        from permutation_helpers import FIT, make_data, slow_build_mlp
        X, y = make_data()
        pt.permutation_test(slow_build_mlp, X, y, FIT, n_permutations=50, output="output", progress=False,
                            n_jobs=2, backend="loky", seed=1)
    """)
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([ROOT, os.path.join(ROOT, "tests")]), PERM_TEST_SLEEP="0.5")
    proc = subprocess.Popen([sys.executable, "-c", script], env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    t0 = time.monotonic()
    while time.monotonic() - t0 < 60 and len(children(proc.pid)) < 3:
        time.sleep(0.1)
    time.sleep(1.0)
    kids = children(proc.pid)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    t0 = time.monotonic()
    while time.monotonic() - t0 < limit_s and any(alive(p) for p in kids):
        time.sleep(0.1)
    return len(kids), time.monotonic() - t0


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--permutations", type=int, default=12)
    ap.add_argument("--deadline", type=float, default=5.0)
    ap.add_argument("--skip-default", action="store_true", help="only the --deadline runs")
    args = ap.parse_args()
    B = args.permutations
    ref, t_ref, _ = timed(lambda: run(build_mlp, B, backend="sequential"))
    print(f"reference (sequential, no fault): {t_ref:.1f} s", flush=True)
    deadlines = ([None] if not args.skip_default else []) + [args.deadline]
    rows = []
    for deadline in deadlines:
        label = f"deadline={'default' if deadline is None else deadline}"
        os.environ["PERM_STOP_SEED"] = str(pt.replicate_seeds(SEED, 3)[0])
        os.environ["PERM_STOP_PARENT"] = str(os.getpid())
        res, t, late = timed(lambda: run(stopping_build_mlp, B, n_jobs=2, backend="loky", deadline=deadline))
        rows.append(("loky, 1 of 2 workers SIGSTOPped", label, t, late, same(res, ref)))
        print(rows[-1], flush=True)
        _release.clear()
        res, t, late = timed(lambda: run(sleepy_build, B, n_jobs=2, backend="threading", deadline=deadline))
        _release.set()
        rows.append(("threading, 1 of 2 threads hung", label, t, late, same(res, ref)))
        print(rows[-1], flush=True)
        import distributed  # noqa: PLC0415
        with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                                      dashboard_address=None) as cl, distributed.Client(cl) as client:
            pid = sorted(client.run(os.getpid).items())[0][1]
            os.kill(pid, signal.SIGSTOP)
            try:
                res, t, late = timed(lambda: run(build_mlp, B, n_jobs=2, backend="dask", deadline=deadline))
            finally:
                os.kill(pid, signal.SIGCONT)
        rows.append(("dask LocalCluster, 1 of 2 workers SIGSTOPped", label, t, late, same(res, ref)))
        print(rows[-1], flush=True)
    n, gone = orphans()
    print(f"\nkill -9 of a loky run: {n} child processes (workers, resource trackers) gone {gone:.1f} s later")
    print(f"\n| fault | deadline | wall | replicates run in-process | bitwise = reference |\n|---|---|---|---|---|")
    for what, label, t, late, ok in rows:
        print(f"| {what} | {label} | {t:.1f} s | {late} | {'yes' if ok else 'NO'} |")


if __name__ == "__main__":
    main()
