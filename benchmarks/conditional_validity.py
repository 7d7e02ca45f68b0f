"""Validity of the conditional permutation test by simulation: type-I error and power.

    PYTHONPATH=$PWD python benchmarks/conditional_validity.py t1 --replicates 200 --cells linear_rho0.8_n200
    PYTHONPATH=$PWD python benchmarks/conditional_validity.py t2 --replicates 100
    PYTHONPATH=$PWD python benchmarks/conditional_validity.py t0 --replicates 200
    PYTHONPATH=$PWD python benchmarks/conditional_validity.py summary          # tables and figures

Three designs (docs/analysis/permutation.md, "validity"):

* **T0, complete null**: ``y`` independent of ``X``; 6x6 images with a blank 3x3 corner patch
  and correlated noise elsewhere, four 3x3 patches; ``P(p <= k/(B+1))`` for every ``k``, per
  patch, inside the binomial band (the blank patch too).
* **T1, tabular partial null**: ``p = 6``, ``x ~ N(0, Sigma)`` with ``corr(x1, x2) = rho``,
  ``y = beta g(x1) + 0.5 x3 + eps``; ``g`` linear, ``x^2 - 1`` or ``|x| - sqrt(2/pi)``
  (``beta`` 0.5, 0.5, 1); ``n`` 200 or 500; ``x2, x4, x5, x6`` are conditional nulls, ``x2``
  correlated with the active ``x1``.  The conditional test (residual sampler) and the global
  label-permutation test side by side, ``B = 19``.
* **T2, semi-synthetic images**: ``n`` real MNIST digits (the bundled 5,000), the label a fixed
  random filter of ONE 7x7 patch ``G*`` (``y = 1{<w, x_G*> > median}``, 10 % flipped): every
  other patch is a conditional null although its pixels correlate with ``G*``.  Tested: ``G*``,
  its four neighbours, a far stroke patch and a blank corner; the global test's per-patch
  p-values (patch sums of the per-pixel statistic, label null) beside them.

The recipes are small on purpose (the shared 2-core machine): T0/T1 an MLP ``p -> 8 tanh -> 1``,
full-batch Adam lr 0.01, 60 steps; T2 ``784 -> 8 tanh -> 2`` softmax, Adam lr 0.01, 5 epochs of
batch 100.  Each cell's replicates are appended to ``<out>/<cell>.json`` as they finish (a
stopped run resumes).
"""
import argparse
import json
import os
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from permutation_validity import mechanism  # noqa: E402  (g: linear, x^2 - 1, |x| - sqrt(2/pi))

ALPHA = 0.05
B = 19
T1_BETA = {"linear": 0.5, "quadratic": 0.5, "abs": 1.0}
T2_ACTIVE, T2_TESTED = 5, {"active": 5, "up": 1, "left": 4, "right": 6, "down": 9, "far stroke": 14, "blank corner": 0}


def mlp(seed, p, hidden=8):
    from nn_from_scratch import Adam, Linear, MSELoss, NeuralNetwork, Tanh  # noqa: PLC0415
    return NeuralNetwork([Linear(p, hidden, seed=seed, kernel_initializer="glorot_normal"), Tanh(),
                          Linear(hidden, 1, seed=seed + 7, kernel_initializer="glorot_normal")],
                         MSELoss(), optimizer=Adam(lr=0.01))


class TabularMLP:
    """Picklable ``build(seed)`` of the tabular recipe."""

    def __init__(self, p):
        self.p = p

    def __call__(self, seed):
        return mlp(seed, self.p)


class ImageMLP:
    """Picklable ``build(seed)``: images -> flatten -> hidden tanh -> outputs."""

    def __init__(self, shape, outputs, loss="mse", hidden=8):
        self.shape, self.outputs, self.loss, self.hidden = tuple(shape), outputs, loss, hidden

    def __call__(self, seed):
        from nn_from_scratch import Adam, Linear, MSELoss, NeuralNetwork, SoftMaxLoss, Tanh, Vectorization  # noqa
        size = int(np.prod(self.shape))
        return NeuralNetwork([Vectorization(), Linear(size, self.hidden, seed=seed, kernel_initializer="glorot_normal"),
                              Tanh(), Linear(self.hidden, self.outputs, seed=seed + 7, kernel_initializer="glorot_normal")],
                             MSELoss() if self.loss == "mse" else SoftMaxLoss(), optimizer=Adam(lr=0.01),
                             input_shape=self.shape)


# ----------------------------------------------------------------------------- T0
def t0_data(rng, n=100):
    """6x6 images: the top-left 3x3 patch blank (0), the rest a shared component plus noise; y ~ N(0, 1)."""
    X = 0.6 * rng.standard_normal((n, 1, 1, 1)) + rng.standard_normal((n, 1, 6, 6))
    X[:, :, :3, :3] = 0.0
    y = rng.standard_normal((n, 1))
    return X.astype(np.float32), y.astype(np.float32)


def t0_replicate(r, b=B, n=100, sampler="residual", base_seed=100):
    from nn_from_scratch.analysis import permutation as pt  # noqa: PLC0415
    rng = np.random.default_rng([base_seed, r])
    X, y = t0_data(rng, n)
    res = pt.permutation_test(ImageMLP((1, 6, 6), 1), X, y, {"epochs": 60, "batch_size": n}, n_permutations=b,
                              output="output", progress=False, seed=int(rng.integers(2 ** 31)), null="conditional",
                              groups=pt.patch_groups((1, 6, 6), 3), sampler=sampler)
    return {"p": res.p_values.tolist()}


# ----------------------------------------------------------------------------- T1
def t1_data(rng, mech, rho, n, p=6):
    cov = np.eye(p)
    cov[0, 1] = cov[1, 0] = rho
    X = rng.multivariate_normal(np.zeros(p), cov, size=n)
    y = T1_BETA[mech] * mechanism(mech, X[:, 0]) + 0.5 * X[:, 2] + rng.standard_normal(n)
    X = (X - X.mean(0)) / X.std(0)
    y = (y - y.mean()) / y.std()
    return X.astype(np.float32), y.reshape(-1, 1).astype(np.float32)


def t1_cells():
    return {f"{m}_rho{rho}_n{n}": (m, rho, n) for n in (200, 500) for m in ("linear", "quadratic", "abs")
            for rho in (0.0, 0.5, 0.8, 0.95)}


def t1_order(cell):
    """Tables and figures list the cells by n, mechanism, rho."""
    mech, rho, n = t1_cells()[cell]
    return n, ["linear", "quadratic", "abs"].index(mech), rho


def t1_replicate(cell, r, b=B, sampler="residual", labels=True, base_seed=200, epochs=60):
    from nn_from_scratch.analysis import permutation as pt  # noqa: PLC0415
    mech, rho, n = t1_cells()[cell] if isinstance(cell, str) else cell
    rng = np.random.default_rng([base_seed, int(round(rho * 100)), n, ["linear", "quadratic", "abs"].index(mech), r])
    X, y = t1_data(rng, mech, rho, n)
    seed = int(rng.integers(2 ** 31))
    fit = {"epochs": epochs, "batch_size": n}
    build = TabularMLP(X.shape[1])
    res = pt.permutation_test(build, X, y, fit, n_permutations=b, output="output", progress=False, seed=seed,
                              null="conditional", sampler=sampler)
    out = {"conditional": res.p_values.tolist()}
    if labels:
        glob = pt.permutation_test(build, X, y, fit, n_permutations=b, output="output", progress=False, seed=seed)
        out["labels"] = glob.p_values.tolist()
    return out


# ----------------------------------------------------------------------------- T2
def t2_filter(seed=7):
    return np.random.default_rng(seed).standard_normal(49)


def t2_data(rng, n, X_all):
    from nn_from_scratch.analysis import permutation as pt  # noqa: PLC0415
    idx = rng.choice(len(X_all), size=n, replace=False)
    X = X_all[idx]
    g = pt.patch_groups((1, 28, 28), 7)
    score = X.reshape(n, -1)[:, (g == T2_ACTIVE).reshape(-1)] @ t2_filter()
    y = (score > np.median(score)).astype(np.int64)
    flip = rng.uniform(size=n) < 0.10
    y[flip] = 1 - y[flip]
    return X, y


def t2_replicate(r, X_all, n=1500, b=B, labels=True, base_seed=300, sampler="residual"):
    from nn_from_scratch.analysis import permutation as pt  # noqa: PLC0415
    rng = np.random.default_rng([base_seed, r])
    X, y = t2_data(rng, n, X_all)
    seed = int(rng.integers(2 ** 31))
    groups = pt.patch_groups((1, 28, 28), 7)
    fit = {"epochs": 5, "batch_size": 100}
    build = ImageMLP((1, 28, 28), 2, loss="softmax")
    tested = sorted(set(T2_TESTED.values()))
    res = pt.permutation_test(build, X, y, fit, n_permutations=b, output="log_softmax", progress=False, seed=seed,
                              null="conditional", groups=groups, tested=tested, sampler=sampler)
    out = {"conditional": {k: float(res.p_values[g]) for k, g in T2_TESTED.items()},
           "sampler_fits": res.info["sampler_fits"]}
    if labels:
        glob = pt.permutation_test(build, X, y, fit, n_permutations=b, output="log_softmax", progress=False, seed=seed)
        flat = groups.reshape(-1)
        t = np.bincount(flat, weights=glob.statistic.reshape(-1), minlength=16)
        null = np.stack([np.bincount(flat, weights=row.reshape(-1), minlength=16) for row in glob.null_distribution])
        p = pt.permutation_p_values(t, null)
        out["labels"] = {k: float(p[g]) for k, g in T2_TESTED.items()}
    return out


def mnist_inputs():
    from nn_from_scratch.data.datasets import load_mnist  # noqa: PLC0415
    X, _ = load_mnist("all")
    return np.asarray(X, dtype=np.float32)


# ----------------------------------------------------------------------------- running and summaries
def run_cell(path, R, one, log=print):
    reps = []
    if os.path.exists(path):
        with open(path) as f:
            reps = json.load(f)["replicates"]
    t0 = time.perf_counter()
    while len(reps) < R:
        reps.append(one(len(reps)))
        if len(reps) % 5 == 0 or len(reps) == R:
            from nn_from_scratch.atomic import write_json_atomic  # noqa: PLC0415
            write_json_atomic(path, {"replicates": reps})
            log(f"{os.path.basename(path)}: {len(reps)}/{R} ({time.perf_counter() - t0:.0f} s)")
    return reps[:R]


def run_t1_cell(out_dir, cell, R):
    """One T1 cell in this process (a picklable target for ``--workers``)."""
    log = lambda m: print(m, file=sys.stderr, flush=True)  # noqa: E731
    return run_cell(os.path.join(out_dir, f"t1_{cell}.json"), R, lambda r: t1_replicate(cell, r), log)


def band(R, rate=ALPHA, level=0.95):
    from scipy.stats import binom  # noqa: PLC0415
    return binom.ppf((1 - level) / 2, R, rate) / R, binom.ppf(1 - (1 - level) / 2, R, rate) / R


def rejection(values, alpha=ALPHA):
    a = np.array(values, dtype=float)
    return (np.nan_to_num(a, nan=2.0) <= alpha + 1e-12).mean(axis=0)


def summarize(out_dir):
    lines = []
    files = sorted(f for f in os.listdir(out_dir) if f.endswith(".json"))
    t1 = sorted((f for f in files if f.startswith("t1_")), key=lambda f: t1_order(f[3:-5]))
    if t1:
        lines += ["T1, tabular partial null: type-I error of each null feature at alpha = 0.05 (B = 19; p = 1/20 is "
                  "the only rejecting value): x2 correlated (rho) with the active x1, x4-x6 independent; "
                  "outside the binomial 95 % band marked *.", "",
                  "| cell | R | 95% band | cond x2 | cond x4 | cond x5 | cond x6 | labels x2 | labels x4 | labels x5 |"
                  " labels x6 |", "|---|---|---|---|---|---|---|---|---|---|---|"]
        power = ["", "T1 power (rejection rate at 0.05) of the active x1 (beta g(x1)) and x3 (0.5 x3):", "",
                 "| cell | R | cond x1 | cond x3 | labels x1 | labels x3 |", "|---|---|---|---|---|---|"]
        for f in t1:
            reps = json.load(open(os.path.join(out_dir, f)))["replicates"]
            R = len(reps)
            c = rejection([r["conditional"] for r in reps])
            lab = rejection([r["labels"] for r in reps]) if all("labels" in r for r in reps) else None
            lo, hi = band(R)
            mark = lambda v: f"{v:.3f}" + ("*" if not lo - 1e-12 <= v <= hi + 1e-12 else "")  # noqa: E731
            nulls = [1, 3, 4, 5]
            row = [f[3:-5], str(R), f"[{lo:.3f}, {hi:.3f}]"] + [mark(c[j]) for j in nulls]
            row += ["-"] * 4 if lab is None else [mark(lab[j]) for j in nulls]
            lines.append("| " + " | ".join(row) + " |")
            pw = [f"{c[0]:.3f}", f"{c[2]:.3f}"] + (["-", "-"] if lab is None else [f"{lab[0]:.3f}", f"{lab[2]:.3f}"])
            power.append(f"| {f[3:-5]} | {R} | " + " | ".join(pw) + " |")
        lines += power + [""]
    if "t2.json" in files:
        reps = json.load(open(os.path.join(out_dir, "t2.json")))["replicates"]
        R = len(reps)
        lo, hi = band(R)
        lines += [f"T2, semi-synthetic MNIST (R = {R}, B = 19, 95% band [{lo:.3f}, {hi:.3f}]): rejection rates at "
                  "alpha = 0.05 per tested patch.", "", "| patch | id | conditional | labels (global, patch sums) |",
                  "|---|---|---|---|"]
        for k, g in T2_TESTED.items():
            c = rejection([r["conditional"][k] for r in reps])
            lab = rejection([r["labels"][k] for r in reps]) if all("labels" in r for r in reps) else None
            lines.append(f"| {k} | {g} | {float(c):.3f} | {'-' if lab is None else f'{float(lab):.3f}'} |")
        lines.append("")
    if "t0.json" in files:
        reps = json.load(open(os.path.join(out_dir, "t0.json")))["replicates"]
        p = np.array([r["p"] for r in reps])
        R = len(reps)
        lines += [f"T0, complete null (R = {R}, B = 19): P(p <= k/20) per patch (patch 0 blank) against k/20.", "",
                  "| k/20 | " + " | ".join(f"patch {g}" for g in range(p.shape[1])) + " | 95% band |",
                  "|---" * (p.shape[1] + 2) + "|"]
        for k in (1, 2, 4, 10, 19):
            lo, hi = band(R, k / 20)
            rates = (p <= k / 20 + 1e-12).mean(axis=0)
            lines.append(f"| {k / 20:.2f} | " + " | ".join(f"{v:.3f}" for v in rates) + f" | [{lo:.3f}, {hi:.3f}] |")
    return "\n".join(lines)


def figures(out_dir, fig_dir):
    """PNG figures of the results: T0's p-value CDF, T1's type-I and power, T2's rates per patch."""
    import matplotlib  # noqa: PLC0415
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # noqa: PLC0415
    written = []
    os.makedirs(fig_dir, exist_ok=True)
    path = os.path.join(out_dir, "t0.json")
    if os.path.exists(path):
        p = np.array([r["p"] for r in json.load(open(path))["replicates"]])
        fig, ax = plt.subplots(figsize=(4.5, 4))
        grid = np.arange(1, 21) / 20
        for g in range(p.shape[1]):
            ax.step(grid, [(p[:, g] <= u + 1e-12).mean() for u in grid], where="post",
                    label=f"patch {g}" + (" (blank)" if g == 0 else ""))
        ax.plot([0, 1], [0, 1], "k--", lw=1)
        ax.set_xlabel("u")
        ax.set_ylabel("P(p <= u)")
        ax.set_title(f"T0 complete null, R = {len(p)}, B = 19")
        ax.legend(fontsize=8)
        out = os.path.join(fig_dir, "conditional_t0_uniformity.png")
        fig.savefig(out, dpi=100, bbox_inches="tight")
        plt.close(fig)
        written.append(out)
    t1 = sorted((f for f in os.listdir(out_dir) if f.startswith("t1_") and f.endswith(".json")),
                key=lambda f: t1_order(f[3:-5]))
    if t1:
        fig, axes = plt.subplots(1, 2, figsize=(12, 4.5))
        names, cond, lab, Rs = [], [], [], []
        for f in t1:
            reps = json.load(open(os.path.join(out_dir, f)))["replicates"]
            names.append(f"{f[3:-5]} (R={len(reps)})")
            Rs.append(len(reps))
            cond.append(rejection([r["conditional"] for r in reps]))
            lab.append(rejection([r["labels"] for r in reps]))
        cond, lab = np.array(cond), np.array(lab)
        pos = np.arange(len(names))
        bands = np.array([band(R) for R in Rs])
        axes[0].bar(pos, bands[:, 1] - bands[:, 0], 0.8, bottom=bands[:, 0], color="0.85", zorder=0,
                    label="binomial 95% band at the cell's R")
        axes[0].axhline(ALPHA, color="k", ls="--", lw=1)
        for j, (m, name) in zip([1, 3, 4, 5], [("o", "x2 (corr. null)"), ("s", "x4"), ("^", "x5"), ("v", "x6")]):
            axes[0].plot(pos + (j - 3) * 0.08, cond[:, j], m, label=f"conditional, {name}",
                         color="C0" if j == 1 else "C2", ms=6 if j == 1 else 4)
        axes[0].plot(pos + 0.3, lab[:, 1], "o", mfc="none", color="C3", label="labels (global), x2")
        axes[0].set_ylabel("rejection rate at 0.05")
        axes[0].set_title("T1 type-I error of each null feature")
        axes[1].bar(pos - 0.2, cond[:, 0], 0.4, label="conditional x1")
        axes[1].bar(pos + 0.2, lab[:, 0], 0.4, label="labels (global) x1")
        axes[1].plot(pos - 0.2, cond[:, 2], "k^", label="conditional x3")
        axes[1].plot(pos + 0.2, lab[:, 2], "k^", mfc="none", label="labels x3")
        axes[1].set_title("T1 power")
        for ax in axes:
            ax.set_xticks(pos)
            ax.set_xticklabels(names, rotation=60, ha="right", fontsize=7)
            ax.legend(fontsize=7)
        out = os.path.join(fig_dir, "conditional_t1.png")
        fig.savefig(out, dpi=100, bbox_inches="tight")
        plt.close(fig)
        written.append(out)
    path = os.path.join(out_dir, "t2.json")
    if os.path.exists(path):
        reps = json.load(open(path))["replicates"]
        keys = list(T2_TESTED)
        c = [float(rejection([r["conditional"][k] for r in reps])) for k in keys]
        lab = [float(rejection([r["labels"][k] for r in reps])) for k in keys]
        fig, ax = plt.subplots(figsize=(7, 3.8))
        pos = np.arange(len(keys))
        ax.bar(pos - 0.2, c, 0.4, label="conditional (residual sampler)")
        ax.bar(pos + 0.2, lab, 0.4, label="labels (global test, patch sums)")
        lo, hi = band(len(reps))
        ax.axhspan(lo, hi, color="0.85", zorder=0, label=f"95% band, R = {len(reps)}")
        ax.set_xticks(pos)
        ax.set_xticklabels(keys, rotation=20)
        ax.set_ylabel("rejection rate at 0.05")
        ax.set_title("T2 semi-synthetic MNIST: only the active patch carries the label")
        ax.legend(fontsize=8)
        out = os.path.join(fig_dir, "conditional_t2.png")
        fig.savefig(out, dpi=100, bbox_inches="tight")
        plt.close(fig)
        written.append(out)
    return written


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("design", choices=["t0", "t1", "t2", "summary"])
    ap.add_argument("--replicates", type=int, default=200)
    ap.add_argument("--cells", nargs="*", default=["linear_rho0.8_n200"], help="T1 cells (t1_cells())")
    ap.add_argument("--workers", type=int, default=1,
                    help="T1: cells run in this many processes at once (one process per cell; fits n_jobs=1)")
    ap.add_argument("--n", type=int, default=1500, help="T2: digits per replicate")
    ap.add_argument("--out", default="conditional_validity")
    ap.add_argument("--figures", default=os.path.join("benchmarks", "results"))
    args = ap.parse_args(argv)
    os.makedirs(args.out, exist_ok=True)
    log = lambda m: print(m, file=sys.stderr, flush=True)  # noqa: E731
    t0 = time.perf_counter()
    if args.design == "t0":
        run_cell(os.path.join(args.out, "t0.json"), args.replicates, t0_replicate, log)
    elif args.design == "t1":
        for cell in args.cells:
            if cell not in t1_cells():
                ap.error(f"--cells: unknown cell {cell!r}; one of {sorted(t1_cells())}")
        if args.workers < 1:
            ap.error(f"--workers: expected an integer >= 1, received {args.workers}")
        if args.workers == 1:
            for cell in args.cells:
                run_t1_cell(args.out, cell, args.replicates)
        else:                                   # one process per cell, each fitting with n_jobs=1
            from concurrent.futures import ProcessPoolExecutor  # noqa: PLC0415
            with ProcessPoolExecutor(max_workers=args.workers) as ex:
                for f in [ex.submit(run_t1_cell, args.out, c, args.replicates) for c in args.cells]:
                    f.result()
    elif args.design == "t2":
        X_all = mnist_inputs()
        run_cell(os.path.join(args.out, "t2.json"), args.replicates, lambda r: t2_replicate(r, X_all, n=args.n), log)
    else:
        text = summarize(args.out)
        print(text)
        print("figures:", figures(args.out, args.figures))
    log(f"{time.perf_counter() - t0:.0f} s, load {os.getloadavg()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
