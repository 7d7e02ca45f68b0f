"""Can the batch split hang on a lock another thread holds?  Sequences run many times, each in a
fresh process under a timeout, counting hangs and wrong results.

Sequences (``--sequences``):

* ``daemon_blas``: a daemon thread of the user's calls ``np.linalg.svd`` in a loop while the main
  thread trains a small CNN with Dropout split over worker processes (float64, Adam), then
  predicts; the losses, weights and predictions must equal the one-worker run's (1e-12).  The
  process has another thread, so its workers come from the clean fork server (``launch ==
  "server"``), which the run checks;
* ``daemon_blas_bn``: the same with BatchNorm in the network (the split's batch statistics; SGD);
* ``user_class``: the same, with a layer class defined in ``__main__`` (the fork server cannot
  rebuild it): the split must use threads or run whole, never fork;
* ``daemon_blas_unsplit``: the control: ``daemon_blas`` with ``workers=1`` (no split at all);
* ``earlier``: one round of ``reliability_sequences.py`` (``fit`` in a thread beside ``svd`` in the
  main thread, two networks in two threads, parent and forked child training at once).

``--force-fork`` makes the daemon sequences fork their workers from the threaded process as the
split did before (to measure what the fork server prevents).  Each run gets ``--timeout`` seconds;
a run past it is a hang (killed; counted apart as an *exit hang* when the run had printed its
result: it hung in the interpreter's exit, where OpenBLAS's library destructor joins its thread
pool while the user's daemon thread may be inside BLAS, split or not: see the control; with ``STRESS_SHOW_HANGS=1`` its output and every thread's stack by
gdb are printed first), a non-zero exit a failure, and so is a worker or fork server of the run
still alive ``ORPHAN_S`` seconds after it ended.  The run's output goes to a file, not a pipe.
Prints one line per sequence:

    python benchmarks/split_hang_stress.py --runs 100 --timeout 60
"""
import argparse
import os
import subprocess
import sys
import threading
import time
import warnings

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SEQUENCES = ("daemon_blas", "daemon_blas_bn", "user_class", "earlier", "daemon_blas_unsplit")
ORPHAN_S = 5.0


def child(sequence, seed, force_fork, timeout):
    """One run of a daemon sequence in this (fresh) process; exit status 0 when all is right.  Past
    80 % of ``timeout`` every thread's stack is printed (what a hang was waiting for)."""
    import faulthandler
    faulthandler.dump_traceback_later(0.8 * timeout, exit=False)
    import nn_from_scratch as nf
    from nn_from_scratch.engine import parallel
    from nn_from_scratch.engine.parallel import allowed
    warnings.filterwarnings("ignore", category=nf.TrainingWarning)
    parallel.MIN_SHARD_PROCESSES = 10
    parallel.MIN_SHARD = 10
    if force_fork:
        allowed.alone = lambda: True            # the old rule: fork whatever else runs

    class Scale(nf.ReLU):                       # a user's layer class (in __main__)
        per_sample = True

    rng = np.random.default_rng(seed)
    size = int(rng.integers(60, 200))

    def blas():
        r = np.random.default_rng(seed + 1)
        while True:
            np.linalg.svd(r.random((size, size)))

    threading.Thread(target=blas, daemon=True).start()
    X, y = rng.standard_normal((240, 1, 12, 12)), rng.integers(0, 10, 240)

    def make(workers):
        act = Scale() if sequence == "user_class" else nf.ReLU()
        norm = [nf.BatchNorm((None, 4, None, None))] if sequence == "daemon_blas_bn" else []
        layers = [nf.Conv2D(1, 4, 3, seed=seed)] + norm + [act, nf.MaxPool(pool_size=2), nf.Flatten(),
                                                            nf.Dropout(0.2, seed=seed + 2), nf.Linear(100, 10, seed=seed + 1)]
        # SGD with BatchNorm: the bias before it has a zero gradient up to rounding, which Adam's
        # m / sqrt(v) would blow up to steps of the learning rate in both runs alike
        optimizer = nf.SGD(0.1) if norm else nf.Adam(1e-2)
        return nf.NeuralNetwork(layers, nf.SoftMaxLoss(), optimizer=optimizer, workers=workers).astype(np.float64)

    net, ref = make(1 if sequence == "daemon_blas_unsplit" else "auto"), make(1)
    loss = net.fit(X, y, epochs=2, batch_size=60, seed=seed, verbose=0).history["loss"]
    split = net.batch_split.current
    kind = "whole" if split is None else f"{split.kind}/{getattr(split, 'launch', '-')}"
    out = net.predict(X)
    ref_loss = ref.fit(X, y, epochs=2, batch_size=60, seed=seed, verbose=0).history["loss"]
    ref_out = ref.predict(X)
    bad = []
    if not np.allclose(loss, ref_loss, rtol=1e-12, atol=0):
        bad.append(f"losses {loss} != {ref_loss}")
    for a, b in zip(net.layers, ref.layers):
        for name in a.params:
            if not np.allclose(a.params[name], b.params[name], rtol=1e-10, atol=1e-13):
                bad.append(f"{a.name}.{name}")
    if not np.allclose(out, ref_out, rtol=1e-10, atol=1e-13):
        bad.append("predictions")
    expected = {"daemon_blas": "processes/server", "daemon_blas_bn": "processes/server",
                "user_class": ("threads/-", "whole"), "daemon_blas_unsplit": "whole"}[sequence]
    if force_fork:
        expected = "processes/fork"
    if kind not in (expected if isinstance(expected, tuple) else (expected,)):
        bad.append(f"split kind {kind}, expected {expected}")
    from nn_from_scratch.engine.parallel import server
    started = list(getattr(split, "pids", [])) + ([server.SERVER.proc.pid] if server.SERVER is not None else [])
    net.stop_workers()
    print(f"{sequence} seed {seed}: {kind} {'OK' if not bad else bad}", flush=True)
    print("PIDS " + " ".join(map(str, started)), flush=True)
    return 1 if bad else 0


def descendants(pid):
    """The pids of every live process below ``pid`` (its fork server included: another session)."""
    children = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as f:
                    ppid = int(f.read().rsplit(")", 1)[1].split()[1])
            except (OSError, ValueError, IndexError):
                continue
            children.setdefault(ppid, []).append(int(entry))
    found, todo = [], [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


def stacks(pid):
    """Every thread's C stack of ``pid`` (gdb), when gdb is there: what a hang waits for."""
    try:
        return subprocess.run(["gdb", "-p", str(pid), "-batch", "-ex", "thread apply all bt 25"], capture_output=True,
                              text=True, timeout=60).stdout
    except (OSError, subprocess.TimeoutExpired):
        return "(no gdb)"


def one_run(sequence, seed, timeout, force_fork):
    """``"ok"``, ``"hang"`` or ``"fail: ..."`` of one run in a fresh process (its output in a file: a
    worker left behind cannot hold a pipe open)."""
    import tempfile
    env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
    if sequence == "earlier":
        args = [os.path.join(ROOT, "benchmarks", "reliability_sequences.py"), "--repeats", "1"]
    else:
        args = [os.path.abspath(__file__), "--child", sequence, "--seed", str(seed), "--timeout", str(timeout)] + \
               (["--force-fork"] if force_fork else [])
    with tempfile.TemporaryFile("w+") as log:
        proc = subprocess.Popen([sys.executable, *args], cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT,
                                text=True, start_new_session=True)
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            below = descendants(proc.pid)
            if os.environ.get("STRESS_SHOW_HANGS"):
                log.seek(0)
                print(f"--- hang of {sequence} seed {seed}; below it: {below}\n" + log.read()[-3000:], flush=True)
                for pid in [proc.pid] + below:
                    print(f"--- stacks of {pid}:\n{stacks(pid)[-6000:]}", flush=True)
            for pid in [proc.pid] + below:
                try:
                    os.kill(pid, 9)
                except ProcessLookupError:
                    pass
            proc.wait()
            log.seek(0)
            done = any(line.startswith("PIDS") or "rounds in" in line for line in log.read().splitlines())
            return "exit-hang" if done else "hang"
        log.seek(0)
        out = log.read()
    if proc.returncode != 0:
        return "fail: " + out.strip().splitlines()[-1][:300] if out.strip() else f"fail: status {proc.returncode}"
    # no worker or fork server outlives the run by more than ORPHAN_S seconds
    pids = [int(p) for line in out.splitlines() if line.startswith("PIDS ") for p in line.split()[1:]]
    end = time.monotonic() + ORPHAN_S
    while time.monotonic() < end and any(os.path.exists(f"/proc/{p}") for p in pids):
        time.sleep(0.05)
    left = [p for p in pids if os.path.exists(f"/proc/{p}")]
    if left:
        for p in left:
            try:
                os.kill(p, 9)
            except ProcessLookupError:
                pass
        return f"fail: processes {left} outlived the run by {ORPHAN_S} s"
    return "ok"


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--runs", type=int, default=100)
    ap.add_argument("--timeout", type=float, default=60.0)
    ap.add_argument("--sequences", default=",".join(SEQUENCES))
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--force-fork", action="store_true")
    ap.add_argument("--child", choices=[s for s in SEQUENCES if s != "earlier"])
    args = ap.parse_args(argv)
    if args.child:
        return child(args.child, args.seed, args.force_fork, args.timeout)
    total_bad = 0
    for sequence in args.sequences.split(","):
        counts, start, notes = {"ok": 0, "hang": 0, "exit-hang": 0, "fail": 0}, time.perf_counter(), []
        for i in range(args.runs):
            result = one_run(sequence, args.seed + i, args.timeout, args.force_fork)
            counts[result.split(":")[0]] += 1
            if result != "ok":
                notes.append(f"run {i}: {result}")
        total_bad += counts["hang"] + counts["fail"]
        print(f"{sequence}{' (forced fork)' if args.force_fork else ''}: {args.runs} runs in "
              f"{time.perf_counter() - start:.0f} s: {counts['hang']} hangs, {counts['fail']} failures, "
              f"{counts['exit-hang']} exit hangs", flush=True)
        for note in notes[:5]:
            print("   ", note, flush=True)
    return 1 if total_bad else 0


if __name__ == "__main__":
    sys.exit(main())
