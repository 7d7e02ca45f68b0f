"""Speed of per-sample input gradients on the permutation test's CNN: ours against PyTorch CPU.

    PYTHONPATH=$PWD python benchmarks/bench_input_gradients.py [--n 15000] [--repeats 3] [--threads 1]
    PYTHONPATH=$PWD python benchmarks/bench_input_gradients.py --crossover     # when the unrolled matrix pays

The permutation test's CNN (``permutation_cli.build_seed_cnn``: conv 1->2 15x15, ReLU, flatten,
linear 392->10), the same weights in both frameworks (ours copied into the PyTorch module), over N
MNIST images (the 5,000 bundled ones and the official test set when it is found, as the main job
finds it; repeated to N otherwise), in float32 and in float64.  ``f`` is each sample's largest
logit.  Measured in the same run, the methods taking turns (``--repeats`` rounds, best CPU time of
each: on a shared machine the CPU time of a one-thread process is what other processes inflate
least):

* ``ours.engine``: ``analysis.gradients.input_gradients(net, X)``, the engine's input-gradient pass
  (``engine/input_gradients.py``: no parameter gradients; the convolution as the dense unrolled
  matrix ``A``, ``engine/unrolled_conv.py``);
* ``ours.statistics``: ``gradient_statistics`` (the same passes, T and V accumulated, D not kept);
* ``ours.engine.general``: the same pass with the unrolled matrix off (``unrolled_conv.ENABLED``):
  the engine's convolution forward, dL/dx by the flipped kernel, still no parameter gradients;
* ``ours.layers``: ``input_gradients`` with ``net.engine = False``: every layer's own
  ``forward``/``backward`` (im2col, col2im, parameter gradients computed and dropped);
* ``torch.batched``: one forward, ``out.gather(argmax).sum().backward()`` per batch, parameters
  with ``requires_grad=False`` (only dL/dx is computed: PyTorch's best case);
* ``torch.vmap`` (``--vmap``): ``torch.func.vmap(torch.func.grad(f))`` over each batch.

The gradients are compared with ours (max difference relative to the largest entry).  BLAS and
PyTorch threads are set to ``--threads`` for both (default 1: the 2-core machine is shared).

``--crossover``: a convolution 1->4 on 28x28 with kernels 3x3 ... 15x15 (density of ``A`` about
``k^2 / 784``), forward and input gradient by the unrolled matrix and by the general path
(the engine's arrangements forward, dL/dx by the flipped kernel), float64: where the matrix
stops paying sets ``unrolled_conv.MIN_DENSITY``.
"""
import argparse
import json
import os
import sys
import time

import numpy as np


def load_images(n):
    from nn_from_scratch.data import datasets  # noqa: PLC0415
    from nn_from_scratch.train import find_test_set  # noqa: PLC0415
    X, _ = datasets.load_mnist("all")
    Xt, _, where = find_test_set()
    parts = [X] + ([Xt] if Xt is not None else [])
    X = np.concatenate(parts)
    src = f"{len(X):,} images: 5,000 bundled" + (f" + the official test set ({where})" if Xt is not None else "")
    if len(X) < n:
        X = np.concatenate([X] * (n // len(X) + 1))
        src += f", repeated to {n:,}"
    return ((X[:n] - 0.5) / 0.5).astype(np.float32), src


def torch_model(net, dtype):
    import torch  # noqa: PLC0415
    conv, lin = net.layers[0], net.layers[3]
    m = torch.nn.Sequential(torch.nn.Conv2d(1, 2, 15), torch.nn.ReLU(), torch.nn.Flatten(), torch.nn.Linear(392, 10))
    with torch.no_grad():
        m[0].weight.copy_(torch.from_numpy(np.asarray(conv.params["W"], dtype=np.float64)))
        m[0].bias.copy_(torch.from_numpy(np.asarray(conv.params["b"], dtype=np.float64)))
        m[3].weight.copy_(torch.from_numpy(np.asarray(lin.weight, dtype=np.float64).T.copy()))
        m[3].bias.copy_(torch.from_numpy(np.asarray(lin.bias, dtype=np.float64).copy()))
    m = m.double() if dtype == np.float64 else m.float()
    for p in m.parameters():
        p.requires_grad_(False)
    return m


def torch_batched(m, X, bs):
    import torch  # noqa: PLC0415
    out = np.empty_like(X)
    for a in range(0, len(X), bs):
        x = torch.from_numpy(X[a:a + bs]).requires_grad_(True)
        z = m(x)
        z.gather(1, z.argmax(1, keepdim=True)).sum().backward()
        out[a:a + bs] = x.grad.numpy()
    return out


def torch_vmap(m, X, bs):
    import torch  # noqa: PLC0415
    from torch.func import grad, vmap  # noqa: PLC0415

    def f(x):
        return m(x[None])[0].max()
    g = vmap(grad(f))
    out = np.empty_like(X)
    for a in range(0, len(X), bs):
        out[a:a + bs] = g(torch.from_numpy(X[a:a + bs])).numpy()
    return out


def take_turns(methods, repeats):
    """``{name: (best wall s, best CPU s, last result)}``: ``repeats`` rounds, each method once per round."""
    best = {k: [np.inf, np.inf, None] for k in methods}
    for _ in range(repeats):
        for k, fn in methods.items():
            t, c = time.perf_counter(), time.process_time()
            res = fn()
            wall, cpu = time.perf_counter() - t, time.process_time() - c
            b = best[k]
            b[0], b[1], b[2] = min(b[0], wall), min(b[1], cpu), res
    return {k: tuple(v) for k, v in best.items()}


def general_path(fn, net, X, bs):
    """``fn(net, X)`` with the unrolled matrix off: the engine's general input-gradient path."""
    from nn_from_scratch.engine import unrolled_conv  # noqa: PLC0415
    unrolled_conv.ENABLED = False
    try:
        return fn(net, X, batch_size=bs)
    finally:
        unrolled_conv.ENABLED = True


def run_dtype(dtype, X32, args, torch):
    from nn_from_scratch.analysis import gradients as ig  # noqa: PLC0415
    from nn_from_scratch.analysis.permutation_cli import build_seed_cnn  # noqa: PLC0415

    X = X32.astype(dtype)
    net = build_seed_cnn(0).astype(dtype)
    plain = build_seed_cnn(0).astype(dtype)
    plain.engine = False
    methods = {"ours.engine": lambda: ig.input_gradients(net, X, batch_size=args.batch),
               "ours.statistics": lambda: ig.gradient_statistics(net, X, batch_size=args.batch),
               "ours.engine.general": lambda: general_path(ig.input_gradients, net, X, args.batch),
               "ours.layers": lambda: ig.input_gradients(plain, X, batch_size=args.batch)}
    if torch is not None:
        m = torch_model(net, dtype)
        methods["torch.batched"] = lambda: torch_batched(m, X, args.batch)
        if args.vmap:
            methods["torch.vmap"] = lambda: torch_vmap(m, X, args.batch)
    res = take_turns(methods, args.repeats)
    D = res["ours.engine"][2]
    diff = {}
    for k, (_, _, R) in res.items():
        if k != "ours.statistics":
            diff[k] = float(np.abs(R - D).max() / np.abs(R).max())
    return res, diff


def crossover(args):
    """Unrolled matrix against the general input-gradient path, 1->4 channels on 28x28, float64."""
    from nn_from_scratch import Convolution  # noqa: PLC0415
    from nn_from_scratch.engine import unrolled_conv  # noqa: PLC0415
    from nn_from_scratch.engine.input_gradients import ConvInputUnit  # noqa: PLC0415
    from nn_from_scratch.engine.unrolled_conv import _density  # noqa: PLC0415

    rng = np.random.default_rng(0)
    X = rng.standard_normal((args.batch, 1, 28, 28))
    print(f"Convolution 1 -> 4 on 28x28, valid, float64, batch {args.batch}, {args.threads} thread(s), forward + "
          f"input gradient, best of {args.repeats} (CPU time); load average {os.getloadavg()[0]:.2f}\n")
    print("| kernel | density of A | A MB | unrolled samples/s | general samples/s | unrolled / general |")
    print("|---|---|---|---|---|---|")
    for k in (3, 5, 7, 9, 11, 13, 15):
        conv = Convolution((None, 1, 28, 28), kernel_size=k, output_layers=4, seed=0).astype(np.float64)
        nnz, rows, cols = _density(conv, (28, 28))
        units, g = {}, None
        for name, on in (("unrolled", True), ("general", False)):
            unrolled_conv.ENABLED, saved = on, unrolled_conv.MIN_DENSITY
            unrolled_conv.MIN_DENSITY = 0.0
            unit = ConvInputUnit(conv)
            y = unit.forward(X)
            unrolled_conv.ENABLED, unrolled_conv.MIN_DENSITY = True, saved
            g = rng.standard_normal(y.shape) if g is None else g

            def step(unit=unit, g=g):
                unit.forward(X)
                return unit.backward(g)
            units[name] = step
        res = take_turns(units, args.repeats)
        err = float(np.abs(res["unrolled"][2] - res["general"][2]).max())
        assert err < 1e-10, err
        u, gen = args.batch / res["unrolled"][1], args.batch / res["general"][1]
        print(f"| {k}x{k} | {nnz / (rows * cols):.3f} | {rows * cols * 8 / 1e6:.1f} | {u:,.0f} | {gen:,.0f} | "
              f"{u / gen:.2f} |")


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--n", type=int, default=15000)
    ap.add_argument("--batch", type=int, default=256)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--vmap", action="store_true", help="also torch.func.vmap(grad(f))")
    ap.add_argument("--crossover", action="store_true", help="the unrolled matrix against the general path")
    ap.add_argument("--json", default=None)
    args = ap.parse_args(argv)
    from threadpoolctl import threadpool_limits  # noqa: PLC0415

    with threadpool_limits(args.threads):
        if args.crossover:
            crossover(args)
            return 0
        X, src = load_images(args.n)
        try:
            import torch  # noqa: PLC0415
            torch.set_num_threads(args.threads)
        except ImportError:
            torch = None
        results = {np.dtype(d).name: run_dtype(d, X, args, torch) for d in (np.float32, np.float64)}
    n = len(X)
    print(f"Per-sample input gradients (f = largest logit) of the permutation test's CNN, {src}; batch "
          f"{args.batch}, {args.threads} thread(s), best CPU time of {args.repeats} rounds taking turns; "
          f"load average {os.getloadavg()[0]:.2f}"
          + ("" if torch is not None else "; PyTorch not installed") + "\n")
    print("| dtype | method | CPU s | samples/s (CPU) | wall s | ours.engine speed / this (CPU) | "
          "max rel. diff. to ours.engine |")
    print("|---|---|---|---|---|---|---|")
    record = {}
    for dt, (res, diff) in results.items():
        ours = res["ours.engine"][1]
        for k, (wall, cpu, _) in res.items():
            d = f"{diff[k]:.1e}" if k in diff else "-"
            print(f"| {dt} | {k} | {cpu:.2f} | {n / cpu:,.0f} | {wall:.2f} | {cpu / ours:.2f} | {d} |")
        record[dt] = {k: {"wall_s": v[0], "cpu_s": v[1]} for k, v in res.items()}
        record[dt]["diff"] = diff
    if args.json:
        from nn_from_scratch.atomic import write_text_atomic  # noqa: PLC0415
        write_text_atomic(args.json, json.dumps({"n": n, "source": src, "results": record, "threads": args.threads,
                                                 "batch": args.batch, "loadavg": os.getloadavg()}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
