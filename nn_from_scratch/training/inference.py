"""Inference over data in batches: what ``predict`` and ``evaluate`` (and ``fit``'s validation) run.

``outputs(net, X, bs)`` yields each batch's output in inference mode, every cache dropped after.
While the workers that split training steps are there (``fit`` keeps them) and still fit the
network, each batch's forward pass is split over them too (``BatchSplit.forward``).  Besides
using the cores, this keeps this process's BLAS at one thread: multi-threaded BLAS here leaves
its threads spinning for ~0.1 s afterwards, on the core a worker needs (the first steps of each
epoch after a validation ran at half speed, benchmarks/RESULTS.md).  Workers are not started for
inference; without them, this process's BLAS is held to ``BLAS_THREADS`` all the same (see there).
No backward follows these forward passes: through the engine they run with
``for_backward=False`` (``Runner.forward``: nothing recorded for a backward, the units skip what only
the backward reads).  ``evaluate`` sums the loss (with the weight penalties, as Keras) and the metrics over
the batches and reads them in one device -> host read.
"""
import contextlib
import inspect

import numpy as np

from ..backend import get_array_module, read_scalars, to_device
from ..engine import parallel
from ..layers import regularizers

__all__ = ["outputs", "evaluate", "loss_value", "BLAS_THREADS"]

#: BLAS threads while ``predict``/``evaluate`` run a NumPy network in this process (None: leave them
#: as they are).  One: the engine's products are cut into cache-sized chunks (``engine/settings.py``)
#: that a second BLAS thread speeds up little, and on a busy machine multi-threaded OpenBLAS spins
#: waiting for its threads: LeNet-5's predict at 256 samples, 2 cores shared by ~6 agents (load 16),
#: 680 samples/s with 2 BLAS threads, 4,855 with one (benchmarks/RESULTS.md, inference).  Only
#: where the split may hold BLAS too (``parallel.split_allowed``: the main thread, no other thread
#: in BLAS), since the setting is the process's, not the thread's.
BLAS_THREADS = 1
_BLAS = []          # the ThreadpoolController's BLAS libraries, made at first use


def _blas_held(net):
    """A context holding this process's BLAS to ``BLAS_THREADS`` (see there), or doing nothing."""
    if BLAS_THREADS is None or get_array_module(net.parameter_like()) is not np or not parallel.split_allowed():
        return contextlib.nullcontext()
    if not _BLAS:
        from threadpoolctl import ThreadpoolController  # noqa: PLC0415 - only when inference runs
        _BLAS.append(ThreadpoolController().select(user_api="blas"))
    return _BLAS[0].limit(limits=BLAS_THREADS)


def loss_value(loss_fn, out, yb, sample_weight):
    """The batch's loss; ``sample_weight`` is passed only when there are weights, so a loss
    written against the older ``forward(prediction, target, validate=True)`` still works."""
    if sample_weight is None:
        return loss_fn.forward(out, yb, validate=False)
    params = inspect.signature(loss_fn.forward).parameters
    if "sample_weight" not in params and not any(p.kind is p.VAR_KEYWORD for p in params.values()):
        raise TypeError(f"{type(loss_fn).__name__}.forward(prediction, target, validate) takes no "
                        "sample_weight: to train with sample_weight/class_weight, accept "
                        "forward(..., sample_weight=None) and pass it on to Loss.forward")
    return loss_fn.forward(out, yb, validate=False, sample_weight=sample_weight)


def _forward_only(net):
    """``net``'s forward for batches no backward follows: the engine's runner told so, when the
    network's ``forward`` is ``NeuralNetwork``'s own with the engine on; else ``net.forward``."""
    own = getattr(type(net).forward, "__qualname__", None) == "NeuralNetwork.forward"   # not a subclass's
    if net.engine and own:
        return lambda xb: net.runner.forward(net.layers, xb, for_backward=False)
    return net.forward


def outputs(net, X, bs):
    """``(a, b, output of X[a:b])`` for each batch of ``bs`` samples of prepared data ``X``, in
    inference mode; then every cache dropped (see the module docstring)."""
    with net.inference(), _blas_held(net):
        net.batch_split.begin_inference(net)
        forward = _forward_only(net)
        try:
            for a in range(0, X.shape[0], bs):
                b = min(a + bs, X.shape[0])
                yield a, b, net.batch_split.forward(net, net._to_batch(X[a:b]), forward)
        finally:
            for layer in net.layers:
                layer.clear_cache()
            net.batch_split.end_inference()


def evaluate(net, X, y, bs, metrics, sample_weight):
    """``{"loss": mean loss, metric name: mean value, ...}`` over prepared data, one read."""
    n = X.shape[0]
    total_loss, sums = 0.0, [0] * len(metrics)
    for a, b, out in outputs(net, X, bs):
        yb = to_device(y[a:b], like=out)
        wb = None if sample_weight is None else to_device(sample_weight[a:b], like=out, dtype=out.dtype)
        total_loss = total_loss + loss_value(net.loss_fn, out, yb, wb) * (b - a)
        for i, m in enumerate(metrics):
            sums[i] = sums[i] + m.batch_sum(out, yb)
    pen = regularizers.penalty(net.layers)    # Keras: the loss includes the weight penalties
    total_loss, pen, *sums = read_scalars(total_loss, pen, *sums, why="validation")  # one read
    res = {"loss": total_loss / n + pen}
    res.update((m.name, v / n) for m, v in zip(metrics, sums))
    return res
