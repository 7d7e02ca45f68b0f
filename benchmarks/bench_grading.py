"""Seconds per submission when grading a class: a batch of 30 LeakyReLU submissions, with and without bwrap.

    PYTHONPATH=. python benchmarks/bench_grading.py [--n 30] [--jobs 2] [--keras]

Each mode runs twice, in the order A B B A.

The 30 submissions cycle through the test suite's fixture folder (correct ones in two styles and the
classic bugs; no hostile ones: their time is the timeout).  Each mode grades the same batch with the
same arguments in this run; the figure is wall-clock seconds of the whole ``grade --submissions`` call
(reference, sandbox starts, outputs) divided by the number of submissions.  Goal (docs/grading.md):
at most 3 s per submission amortised.
"""
import argparse
import os
import shutil
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))

from nn_from_scratch.checks import grade  # noqa: E402
from nn_from_scratch.checks.grading.sandbox import bwrap_works  # noqa: E402

FIXTURES = os.path.join(os.path.dirname(HERE), "tests", "fixtures", "submissions", "leaky")
ORDINARY = ("alice", "bob", "carol", "dave", "erin")


def main(argv=None):
    p = argparse.ArgumentParser()
    p.add_argument("--n", type=int, default=30)
    p.add_argument("--jobs", type=int, default=2)
    p.add_argument("--keras", action="store_true", help="include the Keras check (TensorFlow in the grader)")
    args = p.parse_args(argv)
    root = tempfile.mkdtemp(prefix="bench-grading-")
    try:
        subs = os.path.join(root, "subs")
        for i in range(args.n):
            shutil.copytree(os.path.join(FIXTURES, ORDINARY[i % len(ORDINARY)]), os.path.join(subs, f"s{i:03d}"))
        modes = (["bwrap"] if bwrap_works() else []) + ["rlimits"]
        print(f"{args.n} submissions, --jobs {args.jobs}, keras {'on' if args.keras else 'off'}, "
              f"{os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f}")
        if args.keras:      # the grader imports TensorFlow once per batch: timed apart, before the runs
            t0 = time.perf_counter()
            import nn_from_scratch.checks.crosscheck  # noqa: F401
            print(f"TensorFlow import (once per batch): {time.perf_counter() - t0:.1f} s")
        totals = {m: [] for m in modes}
        for mode in modes + modes[::-1]:        # A B B A: the machine's drift cancels in the mean
            out = os.path.join(root, f"out-{mode}")
            argv = ["--submissions", subs, "--layer", "leaky.py:LeakyReLU", "--reference", "LeakyReLU(alpha=0.1)",
                    "--input-shape", "3,5,5", "--out", out, "--jobs", str(args.jobs), "--timeout", "60"] \
                + ([] if args.keras else ["--skip-keras"]) + (["--no-bwrap"] if mode == "rlimits" else [])
            t0 = time.perf_counter()
            devnull = open(os.devnull, "w")
            old = sys.stdout
            sys.stdout = devnull
            try:
                status = grade.main(argv)
            finally:
                sys.stdout = old
                devnull.close()
            dt = time.perf_counter() - t0
            totals[mode].append(dt)
            print(f"{mode:8s}: {dt:6.1f} s total, {dt / args.n:5.2f} s per submission (exit {status})")
        for mode in modes:
            mean = sum(totals[mode]) / len(totals[mode])
            print(f"mean {mode:8s}: {mean / args.n:5.2f} s per submission")
        if len(modes) == 2:
            print(f"bwrap / rlimits: {sum(totals['bwrap']) / sum(totals['rlimits']):.2f}")
    finally:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
