"""Speed of per-sample input gradients on the seed 000 CNN: ours against PyTorch CPU (issue 18).

    PYTHONPATH=$PWD python benchmarks/bench_input_gradients.py [--n 15000] [--repeats 3] [--threads 1]

The seed's CNN (conv 1->2 15x15, ReLU, flatten, linear 392->10), the same weights in both
frameworks (ours copied into the PyTorch module), over N MNIST images (the 5,000 bundled ones
and the official test set when it is found, as the main job finds it; repeated to N otherwise).
``f`` is each sample's largest logit, as in the seed.  Measured, in the same run, best of
``--repeats``:

* ``ours.input_gradients``: ``analysis.permutation.input_gradients(net, X)``, one forward and one
  backward pass of the network per batch (``--batch``) with a one-hot row per sample;
* ``ours.statistics``: ``gradient_statistics`` (the same passes, T and V accumulated, D not kept);
* ``torch.batched``: one forward, ``out.gather(argmax).sum().backward()`` per batch, parameters
  with ``requires_grad=False`` (only dL/dx is computed: PyTorch's best case);
* ``torch.vmap``: ``torch.func.vmap(torch.func.grad(f))`` over each batch.

The gradients of the two frameworks are compared (max relative difference, float32).  The
seed's own per-sample loop took 8.7 s for ONE sample (0.11 samples/s).  BLAS and PyTorch
threads are set to ``--threads`` for both (default 1: the 2-core machine is shared).
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


def torch_model(net):
    import torch  # noqa: PLC0415
    conv, lin = net.layers[0], net.layers[3]
    m = torch.nn.Sequential(torch.nn.Conv2d(1, 2, 15), torch.nn.ReLU(), torch.nn.Flatten(), torch.nn.Linear(392, 10))
    with torch.no_grad():
        m[0].weight.copy_(torch.from_numpy(np.asarray(conv.params["W"])))
        m[0].bias.copy_(torch.from_numpy(np.asarray(conv.params["b"])))
        m[3].weight.copy_(torch.from_numpy(np.asarray(lin.weight).T.copy()))
        m[3].bias.copy_(torch.from_numpy(np.asarray(lin.bias).copy()))
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
        z = m(x[None])[0]
        return z.max()
    g = vmap(grad(f))
    out = np.empty_like(X)
    for a in range(0, len(X), bs):
        out[a:a + bs] = g(torch.from_numpy(X[a:a + bs])).numpy()
    return out


CPU = {}


def best_of(fn, repeats):
    """Best wall time of ``repeats`` calls (and, in ``CPU``, the best process CPU time: on a shared
    machine the CPU time is the figure that other processes do not inflate)."""
    times, cpu, res = [], [], None
    for _ in range(repeats):
        t, c = time.perf_counter(), time.process_time()
        res = fn()
        times.append(time.perf_counter() - t)
        cpu.append(time.process_time() - c)
    CPU[fn] = min(cpu)
    return min(times), res


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--n", type=int, default=15000)
    ap.add_argument("--batch", type=int, default=256)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--no-vmap", action="store_true")
    ap.add_argument("--json", default=None)
    args = ap.parse_args(argv)
    from threadpoolctl import threadpool_limits  # noqa: PLC0415

    from nn_from_scratch.analysis import permutation as pt  # noqa: PLC0415
    from nn_from_scratch.analysis.permutation_cli import build_seed_cnn  # noqa: PLC0415

    X, src = load_images(args.n)
    net = build_seed_cnn(0)
    rows = {}
    with threadpool_limits(args.threads):
        cpu = {}
        f = lambda: pt.input_gradients(net, X, batch_size=args.batch)  # noqa: E731
        s, D = best_of(f, args.repeats)
        rows["ours.input_gradients"], cpu["ours.input_gradients"] = s, CPU[f]
        f = lambda: pt.gradient_statistics(net, X, batch_size=args.batch)  # noqa: E731
        s, _ = best_of(f, args.repeats)
        rows["ours.statistics"], cpu["ours.statistics"] = s, CPU[f]
        try:
            import torch  # noqa: PLC0415
        except ImportError:
            torch = None
        diff = {}
        if torch is not None:
            torch.set_num_threads(args.threads)
            m = torch_model(net)
            f = lambda: torch_batched(m, X, args.batch)  # noqa: E731
            s, Dt = best_of(f, args.repeats)
            rows["torch.batched"], cpu["torch.batched"] = s, CPU[f]
            diff["torch.batched"] = float(np.abs(Dt - D).max() / np.abs(Dt).max())
            if not args.no_vmap:
                f = lambda: torch_vmap(m, X, args.batch)  # noqa: E731
                s, Dv = best_of(f, args.repeats)
                rows["torch.vmap"], cpu["torch.vmap"] = s, CPU[f]
                diff["torch.vmap"] = float(np.abs(Dv - D).max() / np.abs(Dv).max())
    n = len(X)
    print(f"Per-sample input gradients of the seed 000 CNN, {src}; batch {args.batch}, {args.threads} thread(s), "
          f"best of {args.repeats}; load average {os.getloadavg()[0]:.2f}\n")
    ours_cpu = cpu["ours.input_gradients"]
    print("| method | wall s | samples/s (wall) | CPU s | samples/s (CPU) | ours / this (CPU) | max rel. diff. to ours |")
    print("|---|---|---|---|---|---|---|")
    for k, s in rows.items():
        print(f"| {k} | {s:.2f} | {n / s:,.0f} | {cpu[k]:.2f} | {n / cpu[k]:,.0f} | {cpu[k] / ours_cpu:.2f} | "
              f"{diff.get(k, 0.0):.1e} |")
    print(f"\n(the seed's per-sample loop: 8.7 s per sample = 0.11 samples/s)")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"n": n, "source": src, "seconds": rows, "cpu_seconds": cpu, "diff": diff, "threads": args.threads,
                       "batch": args.batch, "loadavg": os.getloadavg()}, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
