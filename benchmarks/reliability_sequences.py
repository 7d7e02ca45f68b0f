"""Issue 22's thread and fork sequences, run many times: no hang, results equal to one thread's.

Each ``--repeats`` round, in this process:

* ``thread+blas``: ``fit`` in a thread while the main thread runs ``np.linalg.svd`` in a loop;
* ``two threads``: two networks trained by two threads at once;
* ``fork``: a network trains (its workers forked), then the process forks; parent and child
  both go on training the same network at the same time, the child exits normally
  (``sys.exit``: its interpreter shuts down, finalizers run), the parent trains again on
  the workers it had.

Every network's final loss and weights are compared with those of the same training run
single-threaded with ``workers=1`` (bitwise for the in-thread runs, which run unsplit; to
1e-12 relative in float64 for the split ones).  Prints one line per round and a summary;
exits 1 on any mismatch.  A hang is what the caller's timeout is for (tests/ run this with
a small ``--repeats`` under ``subprocess.run(timeout=...)``).

    python benchmarks/reliability_sequences.py --repeats 100
"""
import argparse
import os
import sys
import threading
import time
import warnings

import numpy as np

import nn_from_scratch as nf
from nn_from_scratch.engine import parallel


def make(workers, seed=0):
    layers = [nf.Conv2D(1, 4, 3, seed=seed), nf.ReLU(), nf.MaxPool(pool_size=2), nf.Flatten(),
              nf.Linear(4 * 5 * 5, 10, seed=seed + 1)]
    return nf.NeuralNetwork(layers, nf.SoftMaxLoss(), optimizer=nf.Adam(1e-2), workers=workers).astype(np.float64)


def data(n=240):
    rng = np.random.default_rng(0)
    return rng.standard_normal((n, 1, 12, 12)), rng.integers(0, 10, n)


def weights(net):
    return np.concatenate([p.ravel() for layer in net.trainable_layers for p in layer.params.values()])


def train(net, X, y, epochs=2, seed=0):
    return net.fit(X, y, epochs=epochs, batch_size=60, seed=seed, verbose=0).history["loss"][-1]


def same(a, b, exact):
    return np.array_equal(a, b) if exact else np.allclose(a, b, rtol=1e-12, atol=1e-14)


def one_round(X, y, ref_loss, ref_w, ref2_w):
    failures = []
    # fit in a thread while the main thread runs BLAS
    out = {}
    net = make("auto")
    t = threading.Thread(target=lambda: out.setdefault("loss", train(net, X, y)))
    t.start()
    while t.is_alive():
        np.linalg.svd(np.random.rand(120, 120))
    t.join()
    if out.get("loss") != ref_loss or not same(weights(net), ref_w, exact=True):
        failures.append("thread+blas")
    # two networks in two threads
    nets, outs = [make("auto"), make("auto")], [None, None]
    ts = [threading.Thread(target=lambda i=i: outs.__setitem__(i, train(nets[i], X, y))) for i in range(2)]
    [t.start() for t in ts]
    [t.join() for t in ts]
    if outs != [ref_loss, ref_loss] or not all(same(weights(n), ref_w, exact=True) for n in nets):
        failures.append("two threads")
    # fork while a network holds workers; both sides train on
    net = make("auto")
    train(net, X, y)
    if net._sharded is None:
        failures.append("fork (no workers were forked in the main thread)")
        return failures
    pids = list(net._sharded.pids)
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:                                    # the child: train on, report, exit normally
        os.close(r)
        code = 0
        try:
            train(net, X, y, seed=1)
            ok = same(weights(net), ref2_w, exact=False) and not set(pids) & set(net._sharded.pids)
            os.write(w, b"1" if ok else b"0")
        except BaseException as exc:                # noqa: BLE001 - reported to the parent
            os.write(w, f"error {exc!r}".encode()[:200])
            code = 1
        os.close(w)
        sys.exit(code)                              # finalizers and atexit run here
    os.close(w)
    train(net, X, y, seed=1)                        # at the same time as the child
    parent_ok = same(weights(net), ref2_w, exact=False) and list(net._sharded.pids) == pids
    child = os.read(r, 300)
    os.close(r)
    _, status = os.waitpid(pid, 0)
    if not parent_ok:
        failures.append("fork (parent)")
    if child != b"1" or status != 0:
        failures.append(f"fork (child: {child!r}, status {status})")
    # the child's exit left the parent's workers alone: a third fit uses them, no warning
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)
        try:
            train(net, X, y, epochs=1, seed=2)
        except RuntimeWarning as exc:
            failures.append(f"fork (parent after the child's exit: {exc})")
    if list(net._sharded.pids) != pids:
        failures.append("fork (parent's workers were replaced after the child's exit)")
    net.stop_workers()
    return failures


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--repeats", type=int, default=100)
    args = ap.parse_args(argv)
    warnings.filterwarnings("ignore", category=nf.TrainingWarning)      # random labels: "not learning"
    parallel.MIN_SHARD_PROCESSES = 10          # batches of 60 split in two on two cores
    parallel.MIN_SHARD = 10
    X, y = data()
    ref = make(1)
    ref_loss = train(ref, X, y)
    ref_w = weights(ref)
    train(ref, X, y, seed=1)
    ref2_w = weights(ref)
    start, bad = time.perf_counter(), 0
    for i in range(args.repeats):
        t0 = time.perf_counter()
        failures = one_round(X, y, ref_loss, ref_w, ref2_w)
        bad += bool(failures)
        print(f"round {i + 1}: {time.perf_counter() - t0:.2f} s {'OK' if not failures else failures}", flush=True)
    print(f"{args.repeats} rounds in {time.perf_counter() - start:.1f} s, {bad} with a mismatch, no hang", flush=True)
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
