"""Builds notebooks/curvature_kfac.ipynb (unexecuted); execute and store it with notebooks/execute.py.

    PYTHONPATH=$PWD python notebooks/make_curvature_kfac.py && python notebooks/execute.py curvature_kfac.ipynb
"""
import os

import nbformat

HERE = os.path.dirname(os.path.abspath(__file__))

cells = []


def md(text):
    cells.append(nbformat.v4.new_markdown_cell(text.strip()))


def code(text):
    cells.append(nbformat.v4.new_code_cell(text.strip()))


md(r"""
# From the gathering filter to K-FAC and EKFAC

The seed notebook set out to build EKFAC for convolutional layers. Its key idea: the **patch matrix**
of a convolution is itself a convolution, with an identity "gathering" filter; with it a convolution
becomes a matrix product $h = \tilde W a$, and then the Fisher block of the layer factors into a
Kronecker product of an input-patch covariance $A$ and an output-gradient covariance $G$
(KFC, Grosse & Martens 2016; EKFAC, George et al. 2018). The notebook stopped at its 2-D test,
which failed (max error 1.84).

Here: the gathering filter done right and why the seed's `groups=C_in` was wrong; the patch
matrix; the Kronecker factors; how well they approximate the true Fisher block during training;
and K-FAC / EKFAC training against SGD and Adam.

Set `NN_FROM_SCRATCH_FAST=1` for a quick run (fewer steps; the test suite runs it so).
""")

code(r"""
import os, time
import numpy as np
import matplotlib.pyplot as plt
from nn_from_scratch import (Adam, Convolution, EKFAC, Flatten, GradientDescent, KFAC, Linear, NeuralNetwork,
                             ReLU, SoftMaxLoss)
from nn_from_scratch.layers.geometry import gathering_filter, im2col
from nn_from_scratch.analysis import curvature

FAST = os.environ.get("NN_FROM_SCRATCH_FAST") == "1"
t_start = time.perf_counter()
rng = np.random.default_rng(0)
""")

md(r"""
## 1. The gathering filter, with `groups=1`

For a kernel $W$ of shape $(F, C, k_1, k_2)$ (volume $K = k_1 k_2$) the gathering filter is
`eye(C*K).reshape(C*K, C, k1, k2)`: output channel $j = (c, i)$ holds a single 1, at input channel
$c$ and kernel offset $i$. Convolving with it (same stride, padding, dilation) copies the input value
that weight $W_{f,c,i}$ multiplies into channel $j$: the result is the patch matrix, in the order of
`W.reshape(F, C*K)` (channel-major), exactly what `patches.im2col` builds.
""")

code(r"""
C, H, Wd, F = 3, 7, 6, 4
kernel, stride, padding, dilation = (2, 3), 2, 1, 1
x = rng.standard_normal((2, C, H, Wd))

gather = Convolution((None, C, H, Wd), kernel_size=kernel, output_layers=C * 6, stride=stride,
                     padding=padding, dilation=dilation, use_bias=False, dtype=np.float64)
gather.set_params(W=gathering_filter(C, kernel))          # (C*K, C, 2, 3), groups=1
by_conv = gather.forward(x).reshape(2, C * 6, -1)         # (N, C*K, T)
cols = im2col(x, kernel, stride, padding, dilation)        # (N, C*K, T)
print("patch matrix shape (N, C*K, T):", cols.shape)
print("gathering-filter convolution == im2col:", np.array_equal(by_conv, cols))

conv = Convolution((None, C, H, Wd), kernel_size=kernel, output_layers=F, stride=stride, padding=padding,
                   use_bias=False, seed=1, dtype=np.float64)
h = conv.forward(x).reshape(2, F, -1)
print("conv(x) == W.reshape(F, C*K) @ patches:", np.allclose(h, conv.W.reshape(F, -1) @ cols, atol=1e-12))
""")

md(r"""
### Why the seed's `groups=C_in` was wrong

A convolution with `groups=g` splits the input channels into $g$ groups and lets each output channel
read **one group only**: its weight has $C/g$ input channels. With `groups=C_in` the filter must have
shape `(C*K, 1, k1, k2)`, and output channel $j$ (of group $c = j / K$) sees input channel $c$ alone.

The seed's filter is the `groups=1` one, `(C*K, C, k1, k2)`. Read as a grouped filter, each output
channel keeps only its first input-channel slice: output channel $(c, i)$ then holds the 1 of
$(0, i)$ only when $c = 0$ and zeros otherwise, so every channel but the first comes out wrong (the
seed's 2-D test: error 1.84). Both constructions are right in their own convention: the
full identity with `groups=1`, or a per-channel identity `eye(K)` tiled with `groups=C`;
the seed mixed the two. A grouped convolution, written out:
""")

code(r"""
def grouped_conv(x, W, groups, **geometry):
    # each group of input channels with its own block of output channels
    c_in, f_out = x.shape[1] // groups, W.shape[0] // groups
    outs = []
    for g in range(groups):
        layer = Convolution((None, c_in) + x.shape[2:], kernel_size=W.shape[2:], output_layers=f_out,
                            use_bias=False, dtype=np.float64, **geometry)
        layer.set_params(W=W[g * f_out:(g + 1) * f_out])
        outs.append(layer.forward(x[:, g * c_in:(g + 1) * c_in]))
    return np.concatenate(outs, axis=1).reshape(x.shape[0], W.shape[0], -1)

geom = dict(stride=stride, padding=padding, dilation=dilation)
seed_filter = gathering_filter(C, kernel)                     # (C*K, C, 2, 3): the groups=1 filter
as_grouped = seed_filter[:, :1]                               # what a groups=C_in convolution can read
wrong = grouped_conv(x, as_grouped, groups=C, **geom)
print("seed's filter with groups=C_in: max |error| =", np.abs(wrong - cols).max())
per_channel = np.tile(np.eye(6).reshape(6, 1, *kernel), (C, 1, 1, 1))   # (C*K, 1, 2, 3)
print("per-channel identity with groups=C_in: equal to im2col:",
      np.array_equal(grouped_conv(x, per_channel, groups=C, **geom), cols))
""")

md(r"""
## 2. From the patch matrix to the Kronecker factors

Per example $n$ and output position $t$: $a_{nt}$ = the patch with a 1 appended **last** for the bias,
$g_{nt}$ = the gradient of the example's own loss with respect to the pre-activation output. The
per-example gradient is $G_n = \sum_t g_{nt} a_{nt}^T$ and the Fisher block
$F = \frac1N \sum_n \mathrm{vec}(G_n)\mathrm{vec}(G_n)^T$. K-FAC/KFC approximate it by
$$A = \frac1N \sum_{n,t} a_{nt}a_{nt}^T, \qquad G = \frac1{NT}\sum_{n,t} g_{nt}g_{nt}^T, \qquad F \approx G \otimes A$$
(row-major flattening of $[W.\mathrm{reshape}(F,-1) \mid b]$). A small CNN on sklearn's 8x8 digits:
""")

code(r"""
from sklearn.datasets import load_digits
digits = load_digits()
X = (digits.images / 16.0).reshape(-1, 1, 8, 8)
y = digits.target
X_train, y_train, X_test, y_test = X[:1400], y[:1400], X[1400:], y[1400:]

def small_cnn(optimizer=None, dtype=np.float64, seed=0):
    r = np.random.default_rng(seed)
    return NeuralNetwork([Convolution((None, 1, 8, 8), kernel_size=3, output_layers=4, padding=1, seed=r,
                                      dtype=dtype, name="conv1"), ReLU(),
                          Convolution((None, 4, 8, 8), kernel_size=3, output_layers=4, stride=2, seed=r,
                                      dtype=dtype, name="conv2"), ReLU(), Flatten(),
                          Linear(36, 10, seed=r, dtype=dtype, name="fc")],
                         loss_fn=SoftMaxLoss(), optimizer=optimizer or GradientDescent(0.05, momentum=0.9),
                         workers=1)

net = small_cnn()
net.fit(X_train, y_train, epochs=1, batch_size=64, verbose=0, seed=0)
X_eval, y_eval = X_train[:256], y_train[:256]
factors = curvature.kfac_factors(net, X_eval, y_eval, fisher="type2")
for name, f in factors.items():
    print(f"{name}: A {f.A.shape}, G {f.G.shape}, T = {f.n_positions} positions, block {f.size} x {f.size}")
""")

code(r"""
name = "conv2"
F_block = curvature.fisher_block(net, X_eval, y_eval, name, fisher="type2")
K_block = factors[name].dense()
E_block = curvature.ekfac_factors(net, X_eval, y_eval, fisher="type2")[name].dense()
fig, axes = plt.subplots(1, 5, figsize=(16, 3.4))
panels = [(factors[name].A, "A (patches, 37 x 37)"), (factors[name].G, "G (output grads, 4 x 4)"),
          (F_block, "true Fisher block F"), (K_block, "K-FAC  G (x) A"), (E_block, "EKFAC")]
lim = np.abs(F_block).max()
for ax, (M, title) in zip(axes, panels):
    m = np.abs(M).max() if M.shape[0] < 40 else lim
    ax.imshow(M, cmap="RdBu_r", vmin=-m, vmax=m)
    ax.set_title(title, fontsize=9)
    ax.set_xticks([]); ax.set_yticks([])
fig.suptitle(f"layer {name}: ||F-K||/||F|| = {np.linalg.norm(F_block - K_block) / np.linalg.norm(F_block):.3f}, "
             f"||F-E||/||F|| = {np.linalg.norm(F_block - E_block) / np.linalg.norm(F_block):.3f}")
plt.show()
""")

md(r"""
## 3. How good is the approximation during training?

Relative Frobenius error $\|F-\tilde F\|_F/\|F\|_F$ per layer, for K-FAC and for EKFAC (same eigenbasis,
eigenvalues re-estimated from the real per-example gradients: never worse than K-FAC in this norm),
with the type-2 Fisher (exact expectation over the softmax) and the empirical one (labels), while
the network trains with SGD + momentum. (`benchmarks/kfac_approximation.py` runs the longer version;
figures in `benchmarks/RESULTS.md`.)
""")

code(r"""
net = small_cnn()
checkpoints = [0, 10, 50] if FAST else [0, 10, 30, 100, 300]
history, done, order = [], 0, np.random.default_rng(1).permutation(1400)
for target in checkpoints:
    while done < target:
        sel = order[(done * 64) % 1344:(done * 64) % 1344 + 64]
        net.train_step(X_train[sel], y_train[sel])
        done += 1
    history.append({fisher: curvature.approximation_errors(net, X_eval, y_eval, fisher=fisher)
                    for fisher in ("type2", "empirical")})

fig, axes = plt.subplots(1, 2, figsize=(11, 3.6), sharey=True)
for ax, fisher in zip(axes, ("type2", "empirical")):
    for layer, color in zip(("conv1", "conv2", "fc"), ("tab:blue", "tab:orange", "tab:green")):
        ax.plot(checkpoints, [h[fisher][layer]["kfac"] for h in history], "-o", color=color, label=f"{layer} K-FAC")
        ax.plot(checkpoints, [h[fisher][layer]["ekfac"] for h in history], "--s", color=color, label=f"{layer} EKFAC")
    ax.set_xscale("symlog", linthresh=10); ax.set_title(f"{fisher} Fisher"); ax.set_xlabel("training step")
    ax.grid(alpha=0.3)
axes[0].set_ylabel("||F - approx||_F / ||F||_F"); axes[1].legend(fontsize=7, ncol=2)
plt.show()
""")

md(r"""
The last layer's type-2 block is almost exactly Kronecker at initialisation (the logits' Hessian
$\mathrm{diag}(p) - pp^T$ hardly depends on the example while $p$ is near uniform) and drifts away
as the predictions become confident. The convolutions are further from Kronecker: their positions
are not independent (the "spatially uncorrelated derivatives" assumption of KFC). EKFAC is closer
every time, as it must be.

## 4. Training with K-FAC and EKFAC

`KFAC` and `EKFAC` are optimizers like the others: `fit` hands them the batch's patches and
per-example output gradients only on the steps where they update their factors (every
`cov_every = 10` steps; eigendecompositions every `inv_every = 100`). They run here with their
defaults, `KFAC()` and `EKFAC()` (`lr=0.01`, `damping=0.1`: `docs/analysis/curvature.md` says why;
much less damping, such as 1e-3, diverges on LeNet-5, and K-FAC then warns that the damping is too
small). Same network, same batches:
""")

code(r"""
steps = 60 if FAST else 300
optimizers = {"SGD+momentum": lambda: GradientDescent(0.05, momentum=0.9), "Adam": lambda: Adam(3e-3),
              "KFAC": KFAC, "EKFAC": EKFAC}
curves = {}
for label, make in optimizers.items():
    net = small_cnn(make(), dtype=np.float32)
    r = np.random.default_rng(2)
    order, pos, seconds, curve = r.permutation(1400), 0, 0.0, []
    for step in range(1, steps + 1):
        if pos + 64 > 1400:
            order, pos = r.permutation(1400), 0
        sel = order[pos:pos + 64]; pos += 64
        t0 = time.perf_counter()
        net.train_step(net._to_batch(X_train[sel]), y_train[sel])
        seconds += time.perf_counter() - t0
        if step % 10 == 0:
            curve.append((step, seconds, net.evaluate(X_train, y_train)[0]))
    curves[label] = np.array(curve)
    print(f"{label:13s} training loss {curve[-1][2]:.4f}, test accuracy {net.evaluate(X_test, y_test)[1]:.3f}, "
          f"{1e3 * seconds / steps:.1f} ms per step")

fig, axes = plt.subplots(1, 2, figsize=(11, 3.6))
for label, c in curves.items():
    axes[0].plot(c[:, 0], c[:, 2], label=label)
    axes[1].plot(c[:, 1], c[:, 2], label=label)
for ax, xl in zip(axes, ("step", "training seconds")):
    ax.set_yscale("log"); ax.set_xlabel(xl); ax.set_ylabel("training loss"); ax.grid(alpha=0.3)
axes[0].legend()
plt.show()
print(f"notebook ran in {time.perf_counter() - t_start:.0f} s")
""")

md(r"""
K-FAC and EKFAC are optimisation-speed tools: fewer steps to a given training loss. Whether that
buys wall time depends on the statistics' cost against a step (here, tiny layers: cheap; the seed
CNN's 7x7 convolution with 400 positions and 2 filters is the expensive case), and faster
optimisation is not better generalisation: see `benchmarks/RESULTS.md` ("K-FAC / EKFAC") for the seed lab
CNN, LeNet-5 and an autoencoder, every configuration of the grid recorded.
""")

nb = nbformat.v4.new_notebook()
nb.cells = cells
nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
path = os.path.join(HERE, "curvature_kfac.ipynb")
nbformat.write(nb, path)
print(path)
