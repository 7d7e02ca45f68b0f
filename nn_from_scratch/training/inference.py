"""Inference over data in batches: what ``predict`` and ``evaluate`` (and ``fit``'s validation) run.

``outputs(net, X, bs)`` yields each batch's output in inference mode, every cache dropped after.
While the workers that split training steps are there (``fit`` keeps them) and still fit the
network, each batch's forward pass is split over them too (``BatchSplit.forward``).  Besides
using the cores, this keeps this process's BLAS at one thread: multi-threaded BLAS here leaves
its threads spinning for ~0.1 s afterwards, on the core a worker needs (the first steps of each
epoch after a validation ran at half speed, benchmarks/RESULTS.md).  Workers are not started for
inference.  No backward follows these forward passes: through the engine they run with
``for_backward=False`` (``Runner.forward``: nothing recorded for a backward, the units skip what only
the backward reads).  ``evaluate`` sums the loss (with the weight penalties, as Keras) and the metrics over
the batches and reads them in one device -> host read.
"""
import inspect

from ..backend import read_scalars, to_device
from ..layers import regularizers

__all__ = ["outputs", "evaluate", "loss_value"]


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
    with net.inference():
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
