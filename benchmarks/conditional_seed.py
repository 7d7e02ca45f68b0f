"""The seed's experiment with the conditional test: the maps figure, and loky against a Dask LocalCluster.

    PYTHONPATH=$PWD python benchmarks/conditional_seed.py maps [--conditional NPZ] [--global NPZ] [--out PNG]
    PYTHONPATH=$PWD python benchmarks/conditional_seed.py cluster --permutations 39 --sequential 4 --root DIR

``maps``: an example digit, the global (label-permutation) test's ``-log10 p`` per pixel, and the
conditional test's ``-log10 p`` per patch over the digit with the Benjamini-Hochberg-significant
patches outlined (docs/analysis/permutation.md, "the conditional test").

``cluster``: the same fixed workload (the CLI's ``--null conditional --patch 7`` run, fresh
checkpoint directories) twice, back to back: ``--jobs 2`` with joblib's loky processes, then through a
``distributed.LocalCluster`` of 2 worker processes with 1 thread each (the CLI's ``--scheduler``);
prints both wall times and whether the p-values and null distributions are bitwise equal.
"""
import argparse
import json
import os
import sys
import time

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
RESULTS = os.path.join(HERE, "results")


def maps(conditional, global_, out, method="bh", alpha=0.05):
    import matplotlib  # noqa: PLC0415
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # noqa: PLC0415

    from nn_from_scratch.analysis import permutation as pt  # noqa: PLC0415
    cond = pt.PermutationTestResult.load(conditional)
    glob = pt.PermutationTestResult.load(global_)
    digit = np.asarray(cond.example).reshape(28, 28)
    fig, axes = plt.subplots(1, 3, figsize=(15, 5))
    axes[0].imshow(digit, cmap="gray")
    axes[0].set_title("example digit")
    im = axes[1].imshow(-np.log10(glob.p_values).reshape(28, 28), cmap="magma", vmin=0,
                        vmax=np.log10(glob.n_permutations + 1))
    axes[1].set_title(f"GLOBAL test (labels permuted), B = {glob.n_permutations}:\n"
                      "-log10 p per pixel - does not localise", fontsize=9)
    fig.colorbar(im, ax=axes[1], shrink=0.8)
    axes[2].imshow(digit, cmap="gray")
    lp = -np.log10(cond.p_values)
    im = axes[2].imshow(cond.map(lp).reshape(28, 28), cmap="magma", alpha=0.65, vmin=0,
                        vmax=np.log10(cond.n_permutations + 1))
    sig = cond.significant(alpha, method)
    if sig.any():
        axes[2].contour(cond.map(sig).reshape(28, 28).astype(float), levels=[0.5], colors="cyan", linewidths=2)
    side = int(round(cond.n_groups ** 0.5))
    size = 28 // side
    for g in range(cond.n_groups):
        r, c = divmod(g, side)
        axes[2].text(c * size + size / 2 - 0.5, r * size + size / 2 - 0.5, f"{cond.p_values[g]:.3g}",
                     ha="center", va="center", color="white", fontsize=8,
                     bbox={"facecolor": "black", "alpha": 0.6, "pad": 1, "edgecolor": "none"})
    axes[2].set_title(f"CONDITIONAL test per 7x7 patch, B = {cond.n_permutations}, h = {cond.sequential}:\n"
                      f"-log10 p per patch ({method.upper()} at {alpha}: outlined)", fontsize=9)
    fig.colorbar(im, ax=axes[2], shrink=0.8)
    for ax in axes:
        ax.set_xticks([])
        ax.set_yticks([])
    fig.savefig(out, dpi=100, bbox_inches="tight")
    plt.close(fig)
    return out


def _same(a, b):
    a, b = np.asarray(a), np.asarray(b)
    return a.shape == b.shape and bool(np.array_equal(a, b, equal_nan=True))


def cluster(root, permutations, sequential, patch=7):
    from distributed import LocalCluster  # noqa: PLC0415

    from nn_from_scratch.analysis import permutation as pt  # noqa: PLC0415
    from nn_from_scratch.analysis.permutation_cli import run  # noqa: PLC0415
    common = {"null": "conditional", "patch": patch, "sequential": sequential, "permutations": permutations,
              "method": "bh", "progress": False}
    out = {"load_before": os.getloadavg()}
    for_loky = os.path.join(root, "loky")
    t = time.perf_counter()
    s_loky = run(jobs=2, out=for_loky, **common)
    out["loky_wall_s"] = time.perf_counter() - t
    out["loky_permutation_test_s"] = s_loky["permutation_test_seconds"]
    out["load_between"] = os.getloadavg()
    t = time.perf_counter()
    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None) as lc:
        out["cluster_start_s"] = time.perf_counter() - t
        s_dask = run(jobs=2, out=os.path.join(root, "dask"), scheduler=lc.scheduler_address, **common)
    out["dask_wall_s"] = time.perf_counter() - t
    out["dask_permutation_test_s"] = s_dask["permutation_test_seconds"]
    out["load_after"] = os.getloadavg()
    a = pt.PermutationTestResult.load(os.path.join(for_loky, "result.npz"))
    b = pt.PermutationTestResult.load(os.path.join(root, "dask", "result.npz"))
    out.update({"n_fits": [s_loky["n_fits"], s_dask["n_fits"]],
                "p_values_bitwise_equal": _same(a.p_values, b.p_values),
                "statistic_bitwise_equal": _same(a.statistic, b.statistic),
                "null_distribution_bitwise_equal": _same(a.null_distribution, b.null_distribution),
                "p_values": a.p_values.tolist(), "test_accuracy": [s_loky["test_accuracy"], s_dask["test_accuracy"]]})
    return out


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("what", choices=["maps", "cluster"])
    ap.add_argument("--conditional", default=os.path.join(RESULTS, "permutation_mnist_conditional.npz"))
    ap.add_argument("--global", dest="global_", default=os.path.join(RESULTS, "permutation_mnist.npz"))
    ap.add_argument("--out", default=os.path.join(RESULTS, "permutation_mnist_conditional_maps.png"))
    ap.add_argument("--permutations", type=int, default=39)
    ap.add_argument("--sequential", type=int, default=4)
    ap.add_argument("--root", default=os.path.join("outputs", "conditional_cluster"))
    args = ap.parse_args(argv)
    if args.what == "maps":
        print("wrote", maps(args.conditional, args.global_, args.out))
    else:
        res = cluster(args.root, args.permutations, args.sequential)
        print(json.dumps(res, indent=1))
        with open(os.path.join(args.root, "comparison.json"), "w") as f:
            json.dump(res, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
