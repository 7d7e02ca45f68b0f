"""Class separation: the reference workload (the PyTorch library's CNN on MNIST), ours against a straightforward baseline.

Workload: 10 classes, 45 pairs, the input and every layer of the reference CNN at its full
widths (``separation.cli.separation_cnn(channels=(32, 64), hidden=512)``: convolutions of 32
and 64 channels, a 512-unit hidden layer), every image of the official MNIST test set (about
1,000 per class, unequal sizes).

* ours: ``class_separation(net, X_test, y_test, n_per_class=None)`` - forward passes that
  collect the layer outputs (``--memory-budget`` bytes per pass), each class's distance
  block computed once per layer and reused by its 9 pairs, float32 Gram products with a
  float64 recheck of near-ties on layers at least 4,096 wide (``--precision``), dense Prim
  per pair;
* baseline (written here): the layer outputs from one forward pass too, then per layer and
  per pair ``scipy.spatial.distance.cdist`` on the pair's points and
  ``scipy.sparse.csgraph.minimum_spanning_tree`` (zeros replaced by 1e-300 so that duplicates
  keep their edges).  It is slow, so by default it runs on ``--baseline-pairs`` pairs of every
  layer and its total is extrapolated (its cost per pair is nearly constant: N^2 d); the R of
  those pairs is checked against ours.

Prints wall and CPU times, peak memory (tracemalloc: NumPy's allocations; and the process's
peak resident size) and the ratios; ``--json`` writes them.  The machine's load
(``os.getloadavg``) is printed with every figure.

    PYTHONPATH=$PWD python benchmarks/bench_separation.py                                  # full widths
    PYTHONPATH=$PWD python benchmarks/bench_separation.py --channels 8 16 --hidden 64      # narrower
"""
import argparse
import itertools
import json
import os
import resource
import sys
import time
import tracemalloc

import numpy as np


def load():
    from nn_from_scratch.data import datasets
    from nn_from_scratch.train import find_test_set
    X, y, where = find_test_set()
    if X is None:
        print("NOTE: the official MNIST test set was not found; using the 5,000 bundled digits")
        X, y = datasets.load_mnist("all")
        where = "bundled digits"
    return X, y, where


def baseline_pair(Za, Zb):
    from scipy.sparse import csr_matrix
    from scipy.sparse.csgraph import minimum_spanning_tree
    from scipy.spatial.distance import cdist
    Z = np.concatenate([Za, Zb]).astype(np.float64)
    D = cdist(Z, Z)
    D[D == 0] = 1e-300
    T = minimum_spanning_tree(csr_matrix(np.triu(D, 1))).tocoo()
    m = len(Za)
    return int(np.sum((T.row < m) != (T.col < m)))


def prim_vs_scipy(N=2000, d=50, reps=3):
    """The tree alone: our dense Prim against SciPy's minimum_spanning_tree on one distance matrix."""
    from scipy.sparse import csr_matrix
    from scipy.sparse.csgraph import minimum_spanning_tree
    from scipy.spatial.distance import cdist

    from nn_from_scratch.analysis.separation import _mst
    Z = np.random.default_rng(0).standard_normal((N, d))
    D = cdist(Z, Z, "sqeuclidean")
    t = time.perf_counter()
    for _ in range(reps):
        child, parent = _mst.prim_dense(D)
    prim = (time.perf_counter() - t) / reps
    t = time.perf_counter()
    for _ in range(reps):
        T = minimum_spanning_tree(csr_matrix(np.triu(D, 1)))
    sp = (time.perf_counter() - t) / reps
    same = np.isclose(D[child, parent].sum(), T.sum(), rtol=1e-12)
    print(f"tree of N={N}: dense Prim {prim * 1e3:.1f} ms, SciPy minimum_spanning_tree {sp * 1e3:.1f} ms "
          f"(x{sp / prim:.0f}); same total weight: {same}; load {os.getloadavg()}")
    return prim, sp


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--channels", type=int, nargs=2, default=(32, 64))
    p.add_argument("--hidden", type=int, default=512)
    p.add_argument("--precision", default="auto", choices=("auto", "float64", "float32"))
    p.add_argument("--memory-budget", type=float, default=1.0, help="GiB of layer outputs per forward pass")
    p.add_argument("--per-class", type=int, default=None, help="samples per class (default: all test images)")
    p.add_argument("--baseline-pairs", type=int, default=2, help="pairs per layer the baseline runs (45: all)")
    p.add_argument("--json", default=None)
    p.add_argument("--quick", action="store_true", help="a smoke run: 20 per class, a tiny network")
    args = p.parse_args(argv)
    if args.quick:
        args.per_class, args.channels, args.hidden, args.baseline_pairs = 20, (2, 2), 8, 1
    prim_s, scipy_s = prim_vs_scipy(N=300 if args.quick else 2000)
    from nn_from_scratch.analysis import separation as sep
    from nn_from_scratch.analysis.separation.cli import separation_cnn
    X, y, where = load()
    net = separation_cnn(tuple(args.channels), args.hidden, seed=0)
    print(f"data: {where}; class sizes {np.bincount(y).tolist()}; per class: {args.per_class or 'all'}")
    print(f"network: {[layer.name for layer in net.layers]}, channels {args.channels}, hidden {args.hidden}")
    print(f"load before: {os.getloadavg()}")

    tracemalloc.start()
    t, c = time.perf_counter(), time.process_time()
    res = sep.class_separation(net, X, y, n_per_class=args.per_class, seed=0, precision=args.precision,
                               memory_budget=int(args.memory_budget * 2 ** 30))
    ours_s, ours_cpu = time.perf_counter() - t, time.process_time() - c
    ours_peak = tracemalloc.get_traced_memory()[1] / 2 ** 20
    tracemalloc.stop()
    ours_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2 ** 10
    print(f"ours: {ours_s:.1f} s wall, {ours_cpu:.1f} s CPU (all threads) for {len(res.layers)} layers x "
          f"{len(res.pairs)} pairs; peak traced memory {ours_peak:.0f} MiB, process peak RSS {ours_rss:.0f} MiB; "
          f"load {os.getloadavg()}")
    print(f"mixed precision: {res.info['mixed_precision']}")
    print(res.summary())

    # baseline: same samples (ours records them), one forward pass, then per pair cdist + MST
    idx = {int(c): np.array(v) for c, v in res.info["indices"].items()}
    order = np.concatenate([idx[c] for c in res.classes])
    tracemalloc.start()
    t, c = time.perf_counter(), time.process_time()
    outs = {}
    for a in range(0, len(order), 256):
        got = net.layer_outputs(X[order[a:a + 256]])
        for k, v in got.items():
            outs.setdefault(k, []).append(v.reshape(len(v), -1))
    outs = {k: np.concatenate(v) for k, v in outs.items()}
    outs["input"] = X[order].reshape(len(order), -1)
    fwd_s = time.perf_counter() - t
    start = np.cumsum([0] + [len(idx[c]) for c in res.classes])
    pos = {c: slice(start[i], start[i + 1]) for i, c in enumerate(res.classes)}
    pairs = list(itertools.combinations(res.classes, 2))
    rng = np.random.default_rng(0)
    chosen = pairs if args.baseline_pairs >= len(pairs) else \
        [pairs[i] for i in sorted(rng.choice(len(pairs), args.baseline_pairs, replace=False))]
    fwd_cpu = time.process_time() - c
    per_layer, per_layer_cpu = {}, {}
    mismatches = 0
    for layer in res.layers:
        t, c = time.perf_counter(), time.process_time()
        for a, b in chosen:
            R = baseline_pair(outs[layer][pos[a]], outs[layer][pos[b]])
            ours_R = res.R[res.layers.index(layer), res.pairs.index((a, b))]
            mismatches += R != ours_R
        per_layer[layer] = (time.perf_counter() - t) / len(chosen)
        per_layer_cpu[layer] = (time.process_time() - c) / len(chosen)
        print(f"  baseline {layer:10s} d={outs[layer].shape[1]:6d}: {per_layer[layer]:.2f} s per pair")
    base_peak = tracemalloc.get_traced_memory()[1] / 2 ** 20
    tracemalloc.stop()
    base_total = fwd_s + sum(per_layer.values()) * len(pairs)
    base_cpu = fwd_cpu + sum(per_layer_cpu.values()) * len(pairs)
    note = "measured" if len(chosen) == len(pairs) else f"extrapolated from {len(chosen)} pairs per layer"
    print(f"baseline: {base_total:.0f} s ({note}); peak traced memory {base_peak:.0f} MiB; "
          f"R equal to ours on {len(chosen) * len(res.layers) - mismatches} of {len(chosen) * len(res.layers)} "
          f"(pair, layer); load {os.getloadavg()}")
    print(f"baseline CPU: {base_cpu:.0f} s ({note})")
    print(f"ratio baseline / ours: wall {base_total / ours_s:.1f}x, CPU {base_cpu / ours_cpu:.1f}x  (goal >= 10x); "
          f"ours < 60 s wall: {'met' if ours_s < 60 else 'NOT met'}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"prim_ms": prim_s * 1e3, "scipy_mst_ms": scipy_s * 1e3, "ours_s": ours_s, "ours_cpu_s": ours_cpu,
                       "baseline_cpu_s": base_cpu, "ours_peak_mib": ours_peak, "ours_peak_rss_mib": ours_rss,
                       "precision": args.precision, "mixed_precision": res.info["mixed_precision"],
                       "channels": list(args.channels), "hidden": args.hidden, "baseline_s": base_total,
                       "baseline_note": note, "baseline_peak_mib": base_peak, "per_layer_baseline_s": per_layer,
                       "mismatches": int(mismatches), "load": os.getloadavg()}, f, indent=2)
    return 0 if mismatches == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
