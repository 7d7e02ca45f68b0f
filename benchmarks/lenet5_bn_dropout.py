#!/usr/bin/env python3
"""LeNet-5 with BatchNorm and Dropout on Fashion-MNIST: ours vs Keras (same initial weights, same
batches) vs PyTorch eager (same initial weights), accuracy and samples/s in one run.

    PYTHONPATH=$PWD python benchmarks/lenet5_bn_dropout.py                        # 10 epochs, 60,000
    PYTHONPATH=$PWD python benchmarks/lenet5_bn_dropout.py --epochs 2 --train 20000 --json out.json

The network (channels-first for us and PyTorch, the converted twin channels-last for Keras)::

    Conv 6@5x5 pad 2 (no bias) -> BatchNorm -> ReLU -> MaxPool 2
    Conv 16@5x5 (no bias)      -> BatchNorm -> ReLU -> MaxPool 2 -> Flatten
    Linear 400->120 -> ReLU -> Dropout(0.3) -> Linear 120->84 -> ReLU -> Dropout(0.3) -> Linear 84->10

Adam(1e-3), batch 64, softmax cross-entropy from logits.  Keras's model is ``to_keras``'s twin of
our freshly built network (its weights, BatchNorm statistics included) with Keras's own
``Dropout`` in place of the cross-check's masked one; it is fed our epoch orders (the
permutations ``fit(seed=)`` draws), ``shuffle=False``.  PyTorch gets the same initial weights
(BatchNorm momentum 0.01 = 1 - Keras's 0.99, eps 1e-3) and the same batches.  Dropout masks
differ between frameworks (each draws its own), so accuracies agree statistically, not exactly.
Timings: wall-clock of the training epochs only (no evaluation), samples/s = samples / s.
``--threads N`` holds every framework to N threads (our BLAS through threadpoolctl, PyTorch's
``set_num_threads``, TensorFlow's intra-/inter-op pools); default: each framework's own choice.
"""
import argparse
import json
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402

import nn_from_scratch as nf  # noqa: E402
from nn_from_scratch.data import datasets  # noqa: E402
from nn_from_scratch.engine import fusion, parallel

THREADS = None
DIRS = [datasets.FASHION_MNIST_DIR, "/tmp/fmnist/usr/share/datasets/fashion-mnist"]


def build(seed):
    rng = np.random.default_rng(seed)
    return nf.NeuralNetwork([
        nf.Convolution((None, 1, 28, 28), kernel_size=5, output_layers=6, padding=2, use_bias=False, seed=rng,
                       name="conv1"),
        nf.BatchNorm((None, 6, 28, 28), name="bn1"), nf.ReLU(name="relu1"), nf.MaxPool(pool_size=2, name="pool1"),
        nf.Convolution((None, 6, 14, 14), kernel_size=5, output_layers=16, use_bias=False, seed=rng, name="conv2"),
        nf.BatchNorm((None, 16, 10, 10), name="bn2"), nf.ReLU(name="relu2"), nf.MaxPool(pool_size=2, name="pool2"),
        nf.Vectorization(name="flatten"),
        nf.Linear(400, 120, seed=rng, name="fc1"), nf.ReLU(name="relu3"), nf.Dropout(0.3, seed=seed, name="drop1"),
        nf.Linear(120, 84, seed=rng, name="fc2"), nf.ReLU(name="relu4"), nf.Dropout(0.3, seed=seed + 1, name="drop2"),
        nf.Linear(84, 10, seed=rng, name="fc3"),
    ], loss_fn=nf.SoftMaxLoss(), optimizer=nf.Adam(1e-3), batch_size=64, input_shape=(1, 28, 28))


def load(n_train):
    for d in DIRS:
        if os.path.isdir(d):
            X, y = datasets.load_fashion_mnist(split="train", directory=d)
            Xt, yt = datasets.load_fashion_mnist(split="test", directory=d)
            X = X.reshape(-1, 1, 28, 28).astype(np.float32)
            Xt = Xt.reshape(-1, 1, 28, 28).astype(np.float32)
            return X[:n_train], y[:n_train].astype(np.int64), Xt, yt.astype(np.int64), d
    raise SystemExit(f"no Fashion-MNIST in {DIRS}: apt-get install dataset-fashion-mnist")


def orders(n, epochs, seed):
    rng = np.random.default_rng(seed)            # what fit(seed=seed) draws, epoch after epoch
    return [rng.permutation(n) for _ in range(epochs)]


def run_ours(net, X, y, Xt, yt, epochs, seed):
    times, accs = [], []

    class Clock(nf.Callback):
        def on_epoch_begin(self, epoch, logs=None):
            self.t = time.perf_counter()

        def on_epoch_end(self, epoch, logs=None):
            times.append(time.perf_counter() - self.t)

    t = time.perf_counter()
    if THREADS:
        from threadpoolctl import threadpool_limits
        with threadpool_limits(limits=THREADS, user_api="blas"):
            net.fit(X, y, epochs=epochs, batch_size=64, seed=seed, verbose=0, callbacks=[Clock()])
    else:
        net.fit(X, y, epochs=epochs, batch_size=64, seed=seed, verbose=0, callbacks=[Clock()])
    total = time.perf_counter() - t
    accs.append(net.evaluate(Xt, yt)[1])
    return {"epoch_s": times, "train_s": total, "test_accuracy": float(accs[-1]),
            "samples_per_s": epochs * len(X) / sum(times)}


def run_keras(net, X, y, Xt, yt, epochs, seed):
    import keras
    import tensorflow as tf
    if THREADS:
        tf.config.threading.set_intra_op_parallelism_threads(THREADS)
        tf.config.threading.set_inter_op_parallelism_threads(THREADS)
    from nn_from_scratch.checks.crosscheck import to_keras_layout
    from nn_from_scratch.checks.crosscheck.convert import MaskedDropout, build_twin
    twin = build_twin(net.layers, (1, 28, 28))
    layers = [keras.layers.Dropout(kl.source.rate) if isinstance(kl, MaskedDropout) else kl
              for kl in twin.model.layers]
    model = keras.Sequential([keras.Input((28, 28, 1))] + layers)
    model.compile(optimizer=keras.optimizers.Adam(1e-3),
                  loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True), metrics=["accuracy"])
    Xk, Xtk = to_keras_layout(X), to_keras_layout(Xt)
    times = []
    for order in orders(len(X), epochs, seed):
        xs, ys = Xk[order], y[order]
        t = time.perf_counter()
        model.fit(xs, ys, epochs=1, batch_size=64, shuffle=False, verbose=0)
        times.append(time.perf_counter() - t)
    _, acc = model.evaluate(Xtk, yt, batch_size=256, verbose=0)
    return {"epoch_s": times, "test_accuracy": float(acc), "samples_per_s": epochs * len(X) / sum(times),
            "note": "the first epoch includes tracing"}


def run_torch(net, X, y, Xt, yt, epochs, seed):
    import torch
    from torch import nn
    torch.manual_seed(seed)
    torch.set_num_threads(THREADS or os.cpu_count() or 1)
    L = net.layers
    model = nn.Sequential(
        nn.Conv2d(1, 6, 5, padding=2, bias=False), nn.BatchNorm2d(6, eps=1e-3, momentum=0.01), nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Conv2d(6, 16, 5, bias=False), nn.BatchNorm2d(16, eps=1e-3, momentum=0.01), nn.ReLU(), nn.MaxPool2d(2),
        nn.Flatten(), nn.Linear(400, 120), nn.ReLU(), nn.Dropout(0.3), nn.Linear(120, 84), nn.ReLU(),
        nn.Dropout(0.3), nn.Linear(84, 10))
    with torch.no_grad():
        model[0].weight.copy_(torch.from_numpy(np.asarray(L[0].W)))
        model[4].weight.copy_(torch.from_numpy(np.asarray(L[4].W)))
        for tl, ol in ((model[9], L[9]), (model[12], L[12]), (model[15], L[15])):
            tl.weight.copy_(torch.from_numpy(np.ascontiguousarray(ol.W[1:].T)))
            tl.bias.copy_(torch.from_numpy(np.asarray(ol.W[0])))
    opt = torch.optim.Adam(model.parameters(), lr=1e-3, eps=1e-7)     # Keras's epsilon, as ours
    lossf = nn.CrossEntropyLoss()
    Xtt, ytt = torch.from_numpy(X), torch.from_numpy(y)
    times = []
    for order in orders(len(X), epochs, seed):
        model.train()
        idx = torch.from_numpy(order)
        t = time.perf_counter()
        for a in range(0, len(X), 64):
            b = idx[a:a + 64]
            opt.zero_grad()
            loss = lossf(model(Xtt[b]), ytt[b])
            loss.backward()
            opt.step()
        times.append(time.perf_counter() - t)
    model.eval()
    with torch.no_grad():
        pred = torch.cat([model(torch.from_numpy(Xt[a:a + 256])).argmax(1) for a in range(0, len(Xt), 256)])
    return {"epoch_s": times, "test_accuracy": float((pred.numpy() == yt).mean()),
            "samples_per_s": epochs * len(X) / sum(times)}


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--epochs", type=int, default=10)
    p.add_argument("--train", type=int, default=60000)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--frameworks", nargs="+", default=["ours", "keras", "torch"])
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--json", default=None)
    args = p.parse_args(argv)
    global THREADS
    THREADS = args.threads
    X, y, Xt, yt, where = load(args.train)
    net = build(args.seed)
    out = {"threads": args.threads, "data": where, "train": len(X), "test": len(Xt), "epochs": args.epochs, "batch": 64,
           "uptime_before": open("/proc/loadavg").read().split()[:3],
           "fast_paths": {"split_shards_at_batch_64": parallel.shard_count(net, 64),
                          "relu_maxpool_pairs_fused": fusion.fused_pairs(net.layers),
                          "conv_relu_pool_by_phase": "no: a BatchNorm sits between each Convolution and its ReLU"}}
    runs = {"ours": run_ours, "keras": run_keras, "torch": run_torch}
    for fw in args.frameworks:
        fresh = build(args.seed)               # the same initial weights for every framework
        print(f"{fw} ...", flush=True)
        out[fw] = runs[fw](fresh, X, y, Xt, yt, args.epochs, args.seed)
        print(f"{fw}: test accuracy {out[fw]['test_accuracy']:.4f}, {out[fw]['samples_per_s']:.0f} samples/s "
              f"(epochs {', '.join(f'{t:.1f}' for t in out[fw]['epoch_s'])} s)", flush=True)
    out["uptime_after"] = open("/proc/loadavg").read().split()[:3]
    if "ours" in out:
        for fw in ("keras", "torch"):
            if fw in out:
                out[f"ours_over_{fw}"] = out["ours"]["samples_per_s"] / out[fw]["samples_per_s"]
                out[f"accuracy_points_ours_minus_{fw}"] = 100 * (out["ours"]["test_accuracy"]
                                                                  - out[fw]["test_accuracy"])
    print(json.dumps({k: v for k, v in out.items() if k not in ("ours", "keras", "torch")}, indent=1))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(out, f, indent=1)


if __name__ == "__main__":
    main()
