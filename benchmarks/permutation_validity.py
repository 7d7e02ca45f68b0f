"""Validity of the permutation tests by simulation: type-I error and power.

    PYTHONPATH=$PWD python benchmarks/permutation_validity.py --replicates 200 --out perm_validity/
    PYTHONPATH=$PWD python benchmarks/permutation_validity.py --quick          # a few replicates

Data with known truth: ``x ~ N(0, Sigma)`` in ``p = 4`` dimensions, ``n = 200``,
``y = beta g(x1) + eps`` (``eps ~ N(0, 1)``), ``g`` linear, quadratic ``x^2 - 1``, ``|x| -
sqrt(2/pi)``, step ``1{x > 0} - 1/2``; independent predictors or ``corr(x1, x2) = rho``
(0.5, 0.8); and the complete null ``beta = 0``.  ``beta`` is 0.5 for the linear and quadratic
mechanisms and 1 for ``|x|`` and the step (whose variances are 0.36 and 0.25 against 1 and 2).  ``x2..x4`` never act, so their rejection
rates are type-I errors (with ``x1`` acting: the association test's null, permuting ``y``,
is then conservative for them, as the spec predicts).

The recipe, fixed before looking at any result (spec section 4): inputs and response
z-scored, an MLP ``4 -> 16 tanh -> 1`` (Glorot-normal), full-batch Adam lr 0.01, 60 steps
(``epochs=60, batch_size=n``).  ``B = 19`` null networks per test: ``(B + 1) alpha = 1`` is an
integer, so under exchangeability ``P(p <= 0.05) = P(the observed statistic is the largest of
20 exchangeable values) = 1/20`` exactly - the test is exact at alpha = 0.05, not merely
conservative (with ``B = 99`` the level is again exactly 5/100; with ``B = 50`` it would be
2/51 = 0.039).  The minimum attainable p-value is 1/20, so only alpha = 0.05 is meaningful here.

Side by side on the same data: the OLS t-test of each coefficient (statsmodels), and a GAM
(``pygam.LinearGAM`` with a spline per feature; its approximate p-values, which pygam's own
documentation says are too small when the smoothing parameters are estimated).  For the
nonlinearity test (x1 only): the OLS t-test of an added ``x1^2`` term.

Each cell's replicates are appended to ``<out>/<cell>.json`` as they finish, so a stopped run
resumes where it stopped (run it again with the same arguments).  The summary table (markdown)
goes to stdout and ``<out>/summary.md``, with the binomial 95% band of the rejection rate
around alpha for the number of replicates.
"""
import argparse
import json
import math
import os
import sys
import time
import warnings

import numpy as np

ALPHA = 0.05
B = 19
N, P = 200, 4

#: cell -> (statistic, mechanism, beta, rho)
CELLS = {
    "null": ("association", "linear", 0.0, 0.0),
    "linear": ("association", "linear", 0.5, 0.0),
    "quadratic": ("association", "quadratic", 0.5, 0.0),
    "abs": ("association", "abs", 1.0, 0.0),
    "step": ("association", "step", 1.0, 0.0),
    "linear_rho0.5": ("association", "linear", 0.5, 0.5),
    "linear_rho0.8": ("association", "linear", 0.5, 0.8),
    "nl_linear": ("nonlinearity", "linear", 0.5, 0.0),
    "nl_quadratic": ("nonlinearity", "quadratic+linear", 0.5, 0.0),
    "nl_abs": ("nonlinearity", "abs", 1.0, 0.0),
    "nl_step": ("nonlinearity", "step", 1.0, 0.0),
}

FIT = {"epochs": 60}


def mechanism(name, x):
    if name == "linear":
        return x
    if name == "quadratic":
        return x * x - 1
    if name == "quadratic+linear":
        return (x * x - 1) + x
    if name == "abs":
        return np.abs(x) - math.sqrt(2 / math.pi)
    if name == "step":
        return (x > 0) - 0.5
    raise ValueError(f"unknown mechanism {name!r}")


def make_data(rng, mech, beta, rho, n=N, p=P):
    cov = np.eye(p)
    cov[0, 1] = cov[1, 0] = rho
    X = rng.multivariate_normal(np.zeros(p), cov, size=n)
    y = beta * mechanism(mech, X[:, 0]) + rng.standard_normal(n)
    X = (X - X.mean(0)) / X.std(0)
    y = (y - y.mean()) / y.std()
    return X.astype(np.float32), y.reshape(-1, 1).astype(np.float32)


def build(seed, p=P, hidden=16):
    from nn_from_scratch import Adam, Linear, MSELoss, NeuralNetwork, Tanh  # noqa: PLC0415
    return NeuralNetwork([Linear(p, hidden, seed=seed, kernel_initializer="glorot_normal"), Tanh(),
                          Linear(hidden, 1, seed=seed + 7, kernel_initializer="glorot_normal")],
                         MSELoss(), optimizer=Adam(lr=0.01))


def ols_p(X, y):
    import statsmodels.api as sm  # noqa: PLC0415
    return np.asarray(sm.OLS(y.ravel().astype(np.float64), sm.add_constant(X.astype(np.float64))).fit().pvalues[1:])


def ols_quadratic_p(X, y):
    import statsmodels.api as sm  # noqa: PLC0415
    Z = np.column_stack([X.astype(np.float64), X[:, 0].astype(np.float64) ** 2])
    return float(sm.OLS(y.ravel().astype(np.float64), sm.add_constant(Z)).fit().pvalues[-1])


def gam_p(X, y):
    try:
        from pygam import LinearGAM, s  # noqa: PLC0415
    except ImportError:
        return None
    terms = s(0)
    for j in range(1, X.shape[1]):
        terms = terms + s(j)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        g = LinearGAM(terms, n_splines=8).fit(X.astype(np.float64), y.ravel().astype(np.float64))
        return np.asarray(g.statistics_["p_values"][:X.shape[1]], dtype=float)


def one_replicate(cell, r, base_seed=2024, n=N, b=B, fit=None, gam=True, settings=None):
    """The p-values of replicate ``r`` of ``cell``: network test, OLS, GAM (a dict of lists).

    ``settings``: ``(statistic, mechanism, beta, rho)`` instead of ``CELLS[cell]`` (the CI test's cells)."""
    from nn_from_scratch.analysis import permutation as pt  # noqa: PLC0415
    statistic, mech, beta, rho = CELLS[cell] if settings is None else settings
    cell_id = list(CELLS).index(cell) if cell in CELLS else sum(map(ord, cell))
    rng = np.random.default_rng([base_seed, cell_id, r])
    X, y = make_data(rng, mech, beta, rho, n=n)
    fit = dict(FIT, batch_size=n) if fit is None else fit
    kw = {"features": [0]} if statistic == "nonlinearity" else {}
    res = pt.permutation_test(build, X, y, fit, n_permutations=b, statistic=statistic, output="output",
                              seed=int(rng.integers(2 ** 31)), progress=False, **kw)
    out = {"net": [None if np.isnan(v) else float(v) for v in res.p_values]}
    if statistic == "association":
        out["ols"] = ols_p(X, y).tolist()
        g = gam_p(X, y) if gam else None
        out["gam"] = None if g is None else g.tolist()
    else:
        out["ols_x2"] = ols_quadratic_p(X, y)
    return out


def binomial_band(R, alpha=ALPHA, level=0.95):
    """The central ``level`` interval of the rejection rate of a level-alpha test over R replicates."""
    from scipy.stats import binom  # noqa: PLC0415
    lo, hi = binom.ppf((1 - level) / 2, R, alpha), binom.ppf(1 - (1 - level) / 2, R, alpha)
    return lo / R, hi / R


def run_cell(cell, R, out_dir, gam=True, log=print):
    path = os.path.join(out_dir, f"{cell}.json")
    reps = []
    if os.path.exists(path):
        with open(path) as f:
            reps = json.load(f)["replicates"]
    t0 = time.perf_counter()
    while len(reps) < R:
        reps.append(one_replicate(cell, len(reps), gam=gam))
        if len(reps) % 10 == 0 or len(reps) == R:
            tmp = path + ".tmp"
            with open(tmp, "w") as f:
                json.dump({"cell": cell, "settings": CELLS[cell], "replicates": reps}, f)
            os.replace(tmp, path)
            log(f"{cell}: {len(reps)}/{R} ({time.perf_counter() - t0:.0f} s)")
    return reps[:R]


def rates(reps, key, alpha=ALPHA):
    """Rejection rate per feature of the test ``key``; None when missing."""
    vals = [r.get(key) for r in reps]
    if any(v is None for v in vals):
        return None
    a = np.array(vals, dtype=float)
    return (np.nan_to_num(a, nan=2.0) <= alpha + 1e-12).mean(axis=0)


def summarize(results, R):
    lo, hi = binomial_band(R)
    lines = [f"Rejection rates at alpha = {ALPHA}, R = {R} replicates per cell, B = {B}, n = {N}, p = {P}; "
             f"binomial 95% band for a true level of 0.05: [{lo:.3f}, {hi:.3f}].", "",
             "Association test (network, permute y) vs OLS t-test vs GAM (pygam), per feature:", "",
             "| cell | beta | rho | net x1 | net x2 | net x3,x4 | OLS x1 | OLS x2 | OLS x3,x4 | GAM x1 | GAM x2 | GAM x3,x4 |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    fmt = lambda v: "-" if v is None else f"{v:.3f}"  # noqa: E731
    for cell, reps in results.items():
        stat, mech, beta, rho = CELLS[cell]
        if stat != "association":
            continue
        row = [f"{cell}", f"{beta}", f"{rho}"]
        for key in ("net", "ols", "gam"):
            r = rates(reps, key)
            row += [fmt(None), fmt(None), fmt(None)] if r is None else [fmt(r[0]), fmt(r[1]), fmt(r[2:].mean())]
        lines.append("| " + " | ".join(row) + " |")
    lines += ["", "Nonlinearity test of x1 (network, residual permutation under a model linear in x1) vs OLS "
              "t-test of an added x1^2 term:", "", "| cell | mechanism of x1 | beta | net | OLS x1^2 |", "|---|---|---|---|---|"]
    for cell, reps in results.items():
        stat, mech, beta, rho = CELLS[cell]
        if stat != "nonlinearity":
            continue
        rn, ro = rates(reps, "net"), rates(reps, "ols_x2")
        lines.append(f"| {cell} | {mech} | {beta} | {fmt(rn[0])} | {fmt(float(ro))} |")
    return "\n".join(lines)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--replicates", type=int, default=200)
    ap.add_argument("--cells", nargs="*", default=list(CELLS), choices=list(CELLS))
    ap.add_argument("--out", default="perm_validity")
    ap.add_argument("--no-gam", action="store_true")
    ap.add_argument("--quick", action="store_true", help="5 replicates per cell (a smoke run)")
    args = ap.parse_args(argv)
    R = 5 if args.quick else args.replicates
    os.makedirs(args.out, exist_ok=True)
    t0 = time.perf_counter()
    results = {c: run_cell(c, R, args.out, gam=not args.no_gam, log=lambda m: print(m, file=sys.stderr, flush=True))
               for c in args.cells}
    text = summarize(results, R)
    text += f"\n\nWall time of this invocation: {time.perf_counter() - t0:.0f} s (os.getloadavg: {os.getloadavg()})."
    print(text)
    with open(os.path.join(args.out, "summary.md"), "w") as f:
        f.write(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
