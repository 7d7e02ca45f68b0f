"""Builds notebooks/class_separation.ipynb (unexecuted); execute it with nbclient afterwards.

    PYTHONPATH=$PWD python notebooks/make_class_separation.py
"""
import os

import nbformat

HERE = os.path.dirname(os.path.abspath(__file__))

cells = []


def md(text):
    cells.append(nbformat.v4.new_markdown_cell(text.strip()))


def code(text):
    cells.append(nbformat.v4.new_code_cell(text.strip()))


md("""
# Class separation at every layer

The reference PyTorch library ("Inside the Black Box", arXiv 1907.04223) measures how well each pair of classes
is separated at the output of every layer with the **Henze-Penrose statistic**, before and after
training, and tests the differences with Fisher permutation tests. Its users hand-write a
`snapshot_forward` copy of the network, save weights at every stage, and get numbers that are wrong
when two classes have different sizes.

Here the network already exposes every layer's output, so the whole workflow is: train, call
`class_separation` (or let a callback record it during `fit`), look, test.

For classes $a$ (m points) and $b$ (n points): build the Euclidean minimum spanning tree over all
$m+n$ points and count the $R$ tree edges joining $a$ to $b$;
$H = 1 - R\\,(m+n)/(2mn)$. Under the null $E[R] = 2mn/(m+n)$, so $E[H]=0$ for every $m, n$; $H$ can be
negative and tends to 1 as the classes separate.

Set `NN_FROM_SCRATCH_FAST=1` for a quick run (smaller samples, fewer epochs; the test suite runs it so).
""")

code("""
import os, time
import numpy as np
import matplotlib.pyplot as plt
from nn_from_scratch.data import datasets
from nn_from_scratch.train import find_test_set
from nn_from_scratch.training.optimizers import Adam
from nn_from_scratch.analysis import separation as sep
from nn_from_scratch.analysis.separation.cli import separation_cnn

FAST = os.environ.get("NN_FROM_SCRATCH_FAST") == "1"
t_start = time.perf_counter()

X, y = datasets.load_mnist("all")                 # 5,000 bundled digits, 500 per class
X_test, y_test, where = find_test_set()           # the official test set, if on this machine
if X_test is None:
    print("official test set not found; holding out 1,000 bundled digits instead")
    X, y = datasets.load_mnist("train", test_fraction=0.2, seed=0)
    X_test, y_test = datasets.load_mnist("test", test_fraction=0.2, seed=0)
else:
    print(where.split(", from ")[0])              # (not the folder: it differs between machines)
print("test images per class:", np.bincount(y_test).tolist())

N_TRAIN = 50 if FAST else 500                     # per class, training digits
N_TEST = 50 if FAST else 300                      # per class, test images (None: every one, ~1,000, unequal)
EPOCHS = 1 if FAST else 4
if FAST:                                          # quick mode: train on 1,000 of the digits
    sub = np.concatenate([np.random.default_rng(0).choice(np.flatnonzero(y == c), 100, replace=False) for c in range(10)])
    X, y = X[sub], y[sub]
""")

md("""
## The network: the reference library's shape

conv 3x3, ReLU, max-pool, conv 3x3, ReLU, max-pool, flatten, dense, ReLU, dense (the softmax is
inside `SoftMaxLoss`, so the last layer analysed is the logits). Narrower than the reference's
32/64/512 so that it trains in seconds on a CPU (`benchmarks/bench_separation.py` runs the full
widths on all 10,000 test images).
""")

code("""
net = separation_cnn(channels=(8, 16), hidden=64, optimizer=Adam(lr=1e-3), seed=0)
net.summary();
""")

md("""
## Before training

One call per data set: a seeded random sample per class (never "the first n"), one pass through the
network in inference mode, $H$ (with $R$, the Friedman-Rafsky $z$ and its p-value) for all 45 class
pairs at the input and at every layer.
""")

code("""
t = time.perf_counter()
train_before = sep.class_separation(net, X, y, n_per_class=N_TRAIN, seed=0)
test_before = sep.class_separation(net, X_test, y_test, n_per_class=N_TEST, seed=0)
train_before.name, test_before.name = "train, before", "test, before"
print(f"{time.perf_counter() - t:.1f} s for 2 x {len(train_before.layers)} layers x 45 pairs")
test_before.summary()
""")

md("""
## Training, with the separation recorded during `fit`

`SeparationHistory` is a `fit` callback: it analyses the network before training and after every
`every`-th epoch. No weights are saved by hand.
""")

code("""
history = sep.SeparationHistory(X_test, y_test, every=1, n_per_class=30 if FAST else 100,
                                layers=["input", "maxpool1", "maxpool2", "fc1", "relu3", "fc2"])
t = time.perf_counter()
fit = net.fit(X, y, epochs=EPOCHS, batch_size=32, seed=0, verbose=0,
              validation_data=(X_test[:2000], y_test[:2000]) if FAST else (X_test, y_test), callbacks=[history])
print(f"trained {EPOCHS} epoch(s) in {time.perf_counter() - t:.1f} s; test accuracy "
      f"{fit.history['val_accuracy'][-1]:.1%}; separation recorded at epochs {history.epochs}")
history.plot()
""")

code("""
train_after = sep.class_separation(net, X, y, n_per_class=N_TRAIN, seed=0)
test_after = sep.class_separation(net, X_test, y_test, n_per_class=N_TEST, seed=0)
train_after.name, test_after.name = "train, after", "test, after"
test_after.summary()
""")

md("""
Every number is in `table`: one row per (layer, class pair), a pandas `DataFrame` when pandas is
installed (rows of dicts otherwise; slicing gives rows either way). Besides $H$ and $R$ it has the
Friedman-Rafsky $z$, its one-sided p-value $\\Phi(z)$ and `log10_p`: well separated pairs reach
$z \\approx -40$ and below, where $\\Phi(z)$ underflows to 0 in floating point while its logarithm
stays exact, so rank pairs by `log10_p`.
""")

code("""
table = test_after.table
print(type(table).__name__, len(table), "rows")
table[:3]
""")

code("""
fc2 = {k: test_after.values("fc2", k) for k in ("H", "z", "p_value", "log10_p")}
print("the five most separated class pairs at fc2:")
for j in np.argsort(fc2["log10_p"])[:5]:
    print(f"  {test_after.pairs[j]}: H {fc2['H'][j]:.3f}, z {fc2['z'][j]:.1f}, p {fc2['p_value'][j]:.3g}, "
          f"log10 p {fc2['log10_p'][j]:.1f}")
""")

md("""
## The plots

The reference library's histograms (one row per layer, before and after), the mean through the layers for every
stage (band: quartiles of the 45 pairs), the classes x classes matrix at the last layer, and a PCA
picture of one layer. The H axis is not clipped at 0: below-chance values would show.
""")

code("""
sep.plot_histograms({"before": test_before, "after": test_after}, title="Test set: pairwise H per layer")
""")

code("""
sep.plot_separation_curve([train_before, test_before, train_after, test_after])
""")

code("""
fig, axes = plt.subplots(1, 2, figsize=(11, 4.2), layout="constrained")
sep.plot_heatmap(test_before, "fc2", ax=axes[0])
sep.plot_heatmap(test_after, "fc2", ax=axes[1]);
""")

code("""
fig, axes = plt.subplots(1, 2, figsize=(11, 4.4), layout="constrained")
sep.plot_pca(net, X_test, y_test, "input", n_per_class=150, ax=axes[0], title="input (PCA)")
sep.plot_pca(net, X_test, y_test, "fc1", n_per_class=150, ax=axes[1], title="fc1 after training (PCA)");
""")

md("""
## The tests

Fisher permutation tests of the mean of the 45 values. The values at two layers (or two stages) belong
to the same class pairs, so the **paired sign-flip** test is the right one; the reference library used
the unpaired test, shown for comparison. p-values are exact when the rearrangements are few, otherwise
Monte Carlo with $p = (1 + \\#\\{T^* \\ge T\\})/(B+1)$, never 0.
""")

code("""
print("Test set after training, each layer against the previous one (paired):")
print(sep.compare_layers(test_after))
print("\\n... the same with the unpaired test:")
print(sep.compare_layers(test_after, paired=False))
""")

code("""
print("Training digits: after vs before training")
print(sep.compare_stages(train_before, train_after))
print("\\nTest set: after vs before training")
print(sep.compare_stages(test_before, test_after))
""")

md("""
## Checking a number by hand, and why unequal class sizes matter

Any value can be recomputed with `henze_penrose` on `net.layer_outputs` (the result records which
samples it drew). A trained model saved with `net.save("model.npz")` can be analysed from the command
line without retraining: `python -m nn_from_scratch separation --model model.npz` (add
`--import mylayers.py` when it has layer classes of its own, `--data samples.npz` for data other than
MNIST). The test set has unequal class sizes (892 fives, 1,135 ones); the reference library's formula
$1 - 2\\min(N/2, R)/N$ is biased then. The clearest case is a class split in two unequal random
halves: no separation, yet the reference library's formula reports some.
""")

code("""
idx = {int(c): np.array(v) for c, v in test_after.info["indices"].items()}
out3 = net.layer_outputs(X_test[idx[3]])["fc1"]
out8 = net.layer_outputs(X_test[idx[8]])["fc1"]
hp = sep.henze_penrose(out3, out8)
print(hp, " == result:", test_after.value("fc1", 3, 8))

X1 = X_test[y_test == 1]
perm = np.random.default_rng(0).permutation(len(X1))
cut = len(X1) // 5 if not FAST else 40
a, b = X1[perm[:cut]], X1[perm[cut:cut + 4 * cut]]
r = sep.henze_penrose(a, b)
N = r.m + r.n
print(f"digit 1 split {r.m} | {r.n}: H = {r.H:+.4f} (z = {r.z:+.2f}),  reference formula: {1 - 2 * min(N / 2, r.R) / N:+.4f}")
""")

md("""
## The paper's control: random labels

The same network trained on randomly permuted labels until it fits them. Its last layers then separate
the (meaningless) training classes, but nothing of that carries over to new data: on the test set the
same layers separate the *random* classes no better than chance. We also look at the true classes.
""")

code("""
import warnings
from nn_from_scratch import TrainingWarning
warnings.simplefilter("ignore", TrainingWarning)          # random labels start at chance level, as expected
rng = np.random.default_rng(1)
n_mem = 20 if FAST else 50                               # training digits per class to memorise
keep = np.concatenate([rng.choice(np.flatnonzero(y == c), n_mem, replace=False) for c in range(10)])
Xr, y_true_r = X[keep], y[keep]
y_rand = rng.permutation(y_true_r)                       # the labels it is trained on
rnet = separation_cnn(channels=(8, 16), hidden=128, optimizer=Adam(lr=3e-3), seed=2)
t, epochs_run, acc = time.perf_counter(), 0, 0.0
while acc < 0.99 and epochs_run < (15 if FAST else 100):
    h = rnet.fit(Xr, y_rand, epochs=5, batch_size=16, seed=epochs_run, verbose=0)
    epochs_run += 5
    acc = float(np.mean(rnet.predict(Xr).argmax(1) == y_rand))
print(f"random labels: training accuracy {acc:.1%} after {epochs_run} epochs ({time.perf_counter() - t:.0f} s); "
      f"test accuracy {np.mean(rnet.predict(X_test).argmax(1) == y_test):.1%}")
y_test_rand = rng.integers(0, 10, len(y_test))           # random classes for the test images
last = ["flatten", "fc1", "relu3", "fc2"]
k = n_mem
ctrl = {
    "train, random labels (fitted)": sep.class_separation(rnet, Xr, y_rand, n_per_class=None, layers=last),
    "test, random labels": sep.class_separation(rnet, X_test, y_test_rand, n_per_class=k, layers=last),
    "train, true labels": sep.class_separation(rnet, Xr, y_true_r, n_per_class=None, layers=last),
    "test, true labels": sep.class_separation(rnet, X_test, y_test, n_per_class=k, layers=last),
}
for name, r in ctrl.items():
    r.name = name
    print(f"{name:32s}", "  ".join(f"{l} {h.mean():+.3f}" for l, h in zip(r.layers, r.H)))
print()
print(sep.compare_stages(ctrl["test, random labels"], ctrl["train, random labels (fitted)"]))
sep.plot_separation_curve(ctrl, title="Random-label control: mean H at the last layers")
""")

md("""
Reading it: the memorising network's last layers separate its random training classes (mean H well
above 0 and rising towards `fc2`), while on test images the same random classes sit at H ~ 0: what it
learned is a lookup of individual training images, not a feature. The paired test between training
and test data says the gap is not chance. The true classes stay partly separated in its early layers
(the input's own structure), less so where it memorised.
""")

code("""
print(f"whole notebook: {time.perf_counter() - t_start:.0f} s (FAST={FAST})")
""")

nb = nbformat.v4.new_notebook(cells=cells, metadata={
    "kernelspec": {"display_name": "Python 3", "language": "python", "name": "python3"},
    "language_info": {"name": "python"}})
nbformat.write(nb, os.path.join(HERE, "class_separation.ipynb"))
