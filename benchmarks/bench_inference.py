#!/usr/bin/env python3
"""Inference speed: ours (``predict``, ``evaluate``) vs PyTorch eager under ``torch.no_grad()``
vs Keras ``predict``, on the lab CNN, LeNet-5 and LeNet-5 with BatchNorm and Dropout, in one run.

    PYTHONPATH=$PWD python benchmarks/bench_inference.py                      # batch 256 and 1,000
    PYTHONPATH=$PWD python benchmarks/bench_inference.py --nets lenet5 --batches 256 --repeats 3
    PYTHONPATH=$PWD python benchmarks/bench_inference.py --cpu-time          # one thread each, CPU time
    PYTHONPATH=$PWD python benchmarks/bench_inference.py --profile lenet5_bn  # cProfile of our predict

The networks (``(N, 1, 28, 28)`` MNIST digits, float32, channels-first for us and PyTorch):

* ``lab_cnn``: the course lab's CNN (``examples.networks.seed_lab_cnn``);
* ``lenet5``: LeNet-5 (``examples.networks.lenet5_layers``);
* ``lenet5_bn``: LeNet-5 with BatchNorm and Dropout (``benchmarks/lenet5_bn_dropout.py``'s ``build``),
  its BatchNorm moving statistics set to non-trivial values (as after training).

Every framework gets the same weights (PyTorch's twin is built here, Keras's by the cross-check's
``build_twin``) and the outputs are checked to agree before anything is timed.  Each timed pass
predicts the 5,000 bundled digits in batches of ``--batch`` (the last batch smaller when it does not
divide 5,000); ``evaluate`` adds the mean softmax cross-entropy and the accuracy (PyTorch: the same,
computed in the loop).  Samples/s is the best of ``--repeats`` passes, the frameworks taking turns
within each repeat (the machine is shared: compare ratios of one run only).  Default threads for
every framework (``--threads N`` holds each to N).
"""
import argparse
import cProfile
import json
import os
import pstats
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402

import common  # noqa: E402
import nn_from_scratch as nf  # noqa: E402
from nn_from_scratch.examples import networks  # noqa: E402

NETS = ("lab_cnn", "lenet5", "lenet5_bn")


def build_ours(name, seed=0):
    """Our network ``name`` in float32, inference mode."""
    if name == "lab_cnn":
        net = networks.seed_lab_cnn(batch_size=50, seed=seed)
    elif name == "lenet5":
        net = nf.NeuralNetwork(networks.lenet5_layers(seed=seed), loss_fn=nf.SoftMaxLoss(),
                               optimizer=nf.GradientDescent(lr=0.01), input_shape=(1, 28, 28), name="lenet5")
    elif name == "lenet5_bn":
        import lenet5_bn_dropout  # noqa: PLC0415
        net = lenet5_bn_dropout.build(seed)
        rng = np.random.default_rng(seed + 7)
        for layer in net.layers:                 # moving statistics as after training, not 0 and 1
            if isinstance(layer, nf.BatchNorm):
                c = layer.channels
                layer.set_buffers(moving_mean=rng.normal(0, 0.5, c).astype(np.float32),
                                  moving_variance=rng.uniform(0.3, 2.0, c).astype(np.float32))
                layer.params["gamma"][...] = rng.uniform(0.5, 1.5, c)
                layer.params["beta"][...] = rng.normal(0, 0.2, c)
    else:
        raise ValueError(f"unknown network {name!r}; expected one of {NETS}")
    return net


def torch_twin(net, torch):
    """A ``torch.nn.Sequential`` computing our ``net.layers`` with their weights (eval mode)."""
    from nn_from_scratch.layers.geometry import resolve_padding  # noqa: PLC0415
    tnn, mods, shape = torch.nn, [], (1, 28, 28)
    for layer in net.layers:
        kind = type(layer).__name__
        if kind == "Convolution":
            pads = resolve_padding(layer.padding, shape[1:], layer.kernel_size, layer.stride, layer.dilation)
            if any(lo != hi for lo, hi in pads):
                raise ValueError("asymmetric padding")
            m = tnn.Conv2d(layer.in_channels, layer.out_channels, layer.kernel_size, stride=layer.stride,
                           padding=tuple(lo for lo, _ in pads), dilation=layer.dilation, bias=layer.use_bias)
            with torch.no_grad():
                m.weight.copy_(torch.from_numpy(np.asarray(layer.params["W"])))
                if layer.use_bias:
                    m.bias.copy_(torch.from_numpy(np.asarray(layer.params["b"])))
        elif kind == "BatchNorm":
            m = tnn.BatchNorm2d(layer.channels, eps=layer.epsilon, momentum=1 - layer.momentum)
            with torch.no_grad():
                m.weight.copy_(torch.from_numpy(np.asarray(layer.gamma)))
                m.bias.copy_(torch.from_numpy(np.asarray(layer.beta)))
                m.running_mean.copy_(torch.from_numpy(np.asarray(layer.moving_mean)))
                m.running_var.copy_(torch.from_numpy(np.asarray(layer.moving_variance)))
        elif kind == "ReLU":
            m = tnn.ReLU()
        elif kind == "MaxPool":
            m = tnn.MaxPool2d(layer.pool_size)
        elif kind == "Vectorization":
            m = tnn.Flatten()
        elif kind == "Dropout":
            m = tnn.Dropout(layer.rate)
        elif kind == "Linear":
            W = np.asarray(layer.params["W"])           # (1 + in, out): row 0 the bias
            m = tnn.Linear(W.shape[0] - 1, W.shape[1])
            with torch.no_grad():
                m.weight.copy_(torch.from_numpy(np.ascontiguousarray(W[1:].T)))
                m.bias.copy_(torch.from_numpy(np.ascontiguousarray(W[0])))
        else:
            raise ValueError(f"no PyTorch twin for {kind}")
        mods.append(m)
        shape = tuple(layer.compute_output_shape(shape))
    return tnn.Sequential(*mods).eval()


def torch_predict(model, torch, Xt, bs):
    with torch.no_grad():
        return torch.cat([model(Xt[a:a + bs]) for a in range(0, Xt.shape[0], bs)])


def torch_evaluate(model, torch, Xt, yt, bs):
    n, loss, correct = Xt.shape[0], 0.0, 0
    with torch.no_grad():
        for a in range(0, n, bs):
            out = model(Xt[a:a + bs])
            yb = yt[a:a + bs]
            loss += float(torch.nn.functional.cross_entropy(out, yb, reduction="sum"))
            correct += int((out.argmax(1) == yb).sum())
    return loss / n, correct / n


#: the clock of the timed passes: wall clock, or this thread's CPU time (``--cpu-time``)
CLOCK = time.perf_counter


def best_rate(fn, n, repeats_done):
    t = CLOCK()
    fn()
    repeats_done.append(n / (CLOCK() - t))


def run(names, batches, repeats, frameworks, print_fn=print, samples=None):
    X, y = common.load_data(samples)
    n = X.shape[0]
    torch = tf_keras = None
    if "torch" in frameworks:
        import torch  # noqa: PLC0415
    if "keras" in frameworks:
        import keras as tf_keras  # noqa: PLC0415
        from nn_from_scratch.checks.crosscheck import to_keras_layout  # noqa: PLC0415
        from nn_from_scratch.checks.crosscheck.convert import build_twin  # noqa: PLC0415
        Xk = to_keras_layout(X)
    results = {}
    for name in names:
        net = build_ours(name)
        ref = net.predict(X[:512], batch_size=256)
        m = ref.shape[0]
        todo = {"ours.predict": lambda bs: net.predict(X, batch_size=bs),
                "ours.evaluate": lambda bs: net.evaluate(X, y, batch_size=bs)}
        if torch is not None:
            model = torch_twin(net, torch)
            Xt, yt = torch.from_numpy(X), torch.from_numpy(y)
            got = torch_predict(model, torch, Xt[:m], 256).numpy()
            assert np.allclose(got, ref, rtol=1e-3, atol=1e-4), f"{name}: PyTorch's twin disagrees"
            todo["torch.predict"] = lambda bs: torch_predict(model, torch, Xt, bs)
            todo["torch.evaluate"] = lambda bs: torch_evaluate(model, torch, Xt, yt, bs)
        if tf_keras is not None:
            kmodel = build_twin(net.layers, (1, 28, 28)).model
            got = kmodel.predict(Xk[:m], batch_size=256, verbose=0)
            assert np.allclose(got, ref, rtol=1e-3, atol=1e-4), f"{name}: Keras's twin disagrees"
            todo["keras.predict"] = lambda bs: kmodel.predict(Xk, batch_size=bs, verbose=0)
        for bs in batches:
            rates = {k: [] for k in todo}
            for fn in todo.values():              # warm-up: allocations, plans, Keras's tracing
                fn(bs)
            for _ in range(repeats):
                for k, fn in todo.items():
                    best_rate(lambda: fn(bs), n, rates[k])
            row = {k: max(v) for k, v in rates.items()}
            results[f"{name}@{bs}"] = row
            parts = [f"{k} {v:,.0f}" for k, v in row.items()]
            ratios = []
            for op in ("predict", "evaluate"):
                for other in ("torch", "keras"):
                    if f"{other}.{op}" in row:
                        ratios.append(f"{op} ours/{other} {row[f'ours.{op}'] / row[f'{other}.{op}']:.2f}x")
            print_fn(f"{name:10s} batch {bs:5d}: " + ", ".join(parts) + " samples/s | " + ", ".join(ratios),
                     flush=True)
    return results


def profile(name, bs, print_fn=print):
    X, _ = common.load_data()
    net = build_ours(name)
    net.predict(X, batch_size=bs)
    prof = cProfile.Profile()
    prof.enable()
    for _ in range(5):
        net.predict(X, batch_size=bs)
    prof.disable()
    pstats.Stats(prof).sort_stats("tottime").print_stats(20)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--nets", nargs="+", default=list(NETS), choices=NETS)
    p.add_argument("--batches", nargs="+", type=int, default=[256, 1000])
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--frameworks", nargs="+", default=["torch", "keras"], choices=["torch", "keras"],
                   help="which to compare with (ours always runs)")
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--samples", type=int, default=None, help="predict the first N digits (default all 5,000)")
    p.add_argument("--cpu-time", action="store_true",
                   help="one thread each (BLAS, PyTorch), timed by this thread's CPU time: steadier on a shared "
                        "machine; Keras is left out (its work runs on TensorFlow's own threads)")
    p.add_argument("--profile", choices=NETS, default=None, help="cProfile our predict at the first --batches")
    p.add_argument("--json", default=None)
    args = p.parse_args(argv)
    if args.cpu_time:
        global CLOCK
        CLOCK = time.thread_time
        args.threads = 1
        args.frameworks = [f for f in args.frameworks if f != "keras"]
    if args.threads:
        from threadpoolctl import threadpool_limits  # noqa: PLC0415
        threadpool_limits(limits=args.threads, user_api="blas")
        if "torch" in args.frameworks:
            import torch  # noqa: PLC0415
            torch.set_num_threads(args.threads)
    if args.profile:
        return profile(args.profile, args.batches[0])
    print(f"load before: {open('/proc/loadavg').read().split()[:3]}", flush=True)
    res = run(args.nets, args.batches, args.repeats, args.frameworks, samples=args.samples)
    print(f"load after: {open('/proc/loadavg').read().split()[:3]}", flush=True)
    if args.json:
        common.write_json(args.json, res)
    return res


if __name__ == "__main__":
    main()
