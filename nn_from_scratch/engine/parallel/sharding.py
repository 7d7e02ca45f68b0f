"""The arithmetic of a split batch: which samples each shard takes, and each shard's pass.

Until the loss averages them, the samples of a batch never meet, so a batch of ``N`` can be cut
into shards of ``n_w`` samples and the gradient of the batch's mean loss put back together from
the shards' mean losses::

    L = sum_w (n_w / N) L_w          dL/dtheta = sum_w (n_w / N) dL_w/dtheta

Each shard starts its backward pass from ``dL/dL_w = n_w / N`` (the loss's ``upstream``), so its
gradients are already its share of the batch's and putting them together is one addition per
parameter (``summed``).
"""
__all__ = ["bounds", "summed", "forward", "forward_backward"]


def bounds(n, shards):
    """Shard ``w`` takes samples ``bounds[w]:bounds[w + 1]`` of a batch of ``n``; its gradients count
    with ``weights[w] = n_w / n``."""
    bounds = [n * w // shards for w in range(shards + 1)]
    return bounds, [(bounds[w + 1] - bounds[w]) / n for w in range(shards)]


def summed(parts):
    """The batch's gradient from the shards' weighted ones: one addition per extra shard."""
    total = parts[0] + parts[1] if len(parts) > 1 else parts[0]
    for part in parts[2:]:
        total += part
    return total


def forward(runner, layers, x):
    """The output of one shard through ``layers``, run by ``runner`` (as ``NeuralNetwork.forward``)."""
    return runner.forward(layers, x)


def forward_backward(runner, layers, loss_fn, x, y, weight=1.0):
    """``(loss, output)`` of one shard through ``layers``; their ``grads`` are set to ``weight``
    times the shard's (no dL/dx at the input)."""
    h = runner.forward(layers, x)
    loss, g = runner.loss(loss_fn, h, y, lambda out, t: loss_fn.forward(out, t, validate=False), weight)
    runner.backward(layers, g, need_input_grad=False)
    return loss, h
