"""The separation statistics validated by simulation (type-I error, null mean, power).

* Henze-Penrose under the null (two samples of one 5-D Gaussian): mean H (0 within its SE for
  m = n and m != n, where the seed's formula is biased), mean/sd of the Friedman-Rafsky z, and the
  rejection rate of the one-sided 5 % test (inside the binomial band?);
* power of that test under a mean shift;
* Fisher tests under the null: the rejection rate at 5 % of the unpaired test (two independent
  samples of 45) and of the paired sign-flip test (45 pairs with a shared pair effect), Monte
  Carlo, and their power under a shift.

    PYTHONPATH=$PWD python benchmarks/separation_validation.py [--draws 2000]
"""
import argparse
import os
import time

import numpy as np


def band(rate, n, alpha=0.05):
    se = np.sqrt(alpha * (1 - alpha) / n)
    return abs(rate - alpha) <= 3 * se, (alpha - 3 * se, alpha + 3 * se)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--draws", type=int, default=2000)
    args = p.parse_args(argv)
    from nn_from_scratch.analysis import separation as sep
    B = args.draws
    t0 = time.perf_counter()
    print(f"load {os.getloadavg()}; {B} draws per case")
    for m, n in ((50, 50), (30, 90)):
        rng = np.random.default_rng(m * 7 + n)
        H, Z, lib = np.empty(B), np.empty(B), np.empty(B)
        for i in range(B):
            r = sep.henze_penrose(rng.standard_normal((m, 5)), rng.standard_normal((n, 5)))
            H[i], Z[i] = r.H, r.z
            N = m + n
            lib[i] = 1 - 2 * min(N / 2, r.R) / N
        rate = float(np.mean(Z < -1.6449))
        ok, (lo, hi) = band(rate, B)
        print(f"null m={m:3d} n={n:3d}: mean H {H.mean():+.4f} (SE {H.std(ddof=1) / np.sqrt(B):.4f}); seed formula "
              f"{lib.mean():+.4f}; z mean {Z.mean():+.3f} sd {Z.std(ddof=1):.3f}; 5% rejections {rate:.4f} "
              f"band [{lo:.4f}, {hi:.4f}] {'inside' if ok else 'OUTSIDE'}")
        for shift in (0.5, 1.0):
            pw = np.mean([sep.henze_penrose(rng.standard_normal((m, 5)),
                                            rng.standard_normal((n, 5)) + shift * np.eye(5)[0]).p_value < 0.05
                          for _ in range(B // 4)])
            print(f"    power at a shift of {shift} sd on one axis: {pw:.3f}")
    rng = np.random.default_rng(1)
    nb = B // 4
    null = {"unpaired": [], "paired": []}
    power = {"unpaired": [], "paired": []}
    for i in range(nb):
        # unpaired: two independent samples of 45 values; paired: 45 pairs sharing a pair effect
        a, b = rng.uniform(0.3, 1.0, 45), rng.uniform(0.3, 1.0, 45)
        null["unpaired"].append(sep.fisher_test(a, b, n_permutations=999, seed=i).p_value)
        power["unpaired"].append(sep.fisher_test(a + 0.1, b, n_permutations=999, seed=i).p_value)
        base = rng.uniform(0.3, 1.0, 45)
        a, b = base + 0.01 * rng.standard_normal(45), base + 0.01 * rng.standard_normal(45)
        null["paired"].append(sep.fisher_test(a, b, paired=True, n_permutations=999, seed=i).p_value)
        power["paired"].append(sep.fisher_test(a + 0.005, b, paired=True, n_permutations=999, seed=i).p_value)
    shifts = {"unpaired": "0.1 (independent samples)", "paired": "0.005 (paired, pair sd 0.2, noise 0.01)"}
    for k in null:
        rate = float(np.mean(np.array(null[k]) <= 0.05))
        ok, (lo, hi) = band(rate, nb)
        print(f"Fisher {k:8s}: null 5% rejections {rate:.4f} band [{lo:.4f}, {hi:.4f}] {'inside' if ok else 'OUTSIDE'};"
              f" power at a shift of {shifts[k]}: {np.mean(np.array(power[k]) <= 0.05):.3f}")
    print(f"{time.perf_counter() - t0:.0f} s; load {os.getloadavg()}")


if __name__ == "__main__":
    main()
