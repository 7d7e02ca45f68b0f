"""Data-parallel training steps on the CPU: one batch split over threads.

Until the loss averages them, the samples of a batch never meet: every layer here
maps each sample on its own.  So a batch of ``N`` can be cut into shards of ``n_w``
samples that go through the network side by side, and the gradient of the batch's
mean loss is put back together from the shards' mean losses::

    L = sum_w (n_w / N) L_w          dL/dtheta = sum_w (n_w / N) dL_w/dtheta

Each worker thread runs the whole forward and backward pass of its shard through
its own *replica* of the layers: the same parameter arrays (the replica shares the
layer's parameter dictionary), its own caches, gradients and scratch buffers.  The
layers' code is unchanged; NumPy releases the interpreter lock inside its array
operations, so the shards really run on different cores.  Meanwhile BLAS is held
to one thread per shard (``threadpoolctl``): the cores are taken already.

Which batches are split: on NumPy only (a GPU runs one batch as one), when every
layer and the loss say they treat samples independently (the class itself sets
``per_sample = True``; a subclass must say so again, since it may add state), and
into at most ``workers`` shards of at least ``MIN_SHARD`` samples (smaller shards
lose more to thread hand-offs than the second core gains: benchmarks/RESULTS.md).

The split changes only the order of floating-point additions: for a given batch
size and shard count the result is deterministic, and it agrees with the one-thread
step to rounding (tests/test_parallel.py: loss, outputs and gradients to 1e-12 in
float64, with uneven shards; the weights after ``fit`` with each optimizer to 1e-10).
"""
import copy
import os
from concurrent.futures import ThreadPoolExecutor, wait

import numpy as np

from .backend import get_array_module

__all__ = ["ShardedStep", "shard_count", "usable_cores", "is_per_sample"]

#: the smallest shard worth a thread (measured: benchmarks/RESULTS.md)
MIN_SHARD = 64


def usable_cores():
    """CPUs this process may run on."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not on Linux
        return os.cpu_count() or 1


def is_per_sample(node):
    """Does ``node``'s own class declare that it treats the samples of a batch independently?"""
    return bool(vars(type(node)).get("per_sample", False))


def shard_count(net, n):
    """How many threads a training step of ``n`` samples is split over (1: not split)."""
    workers = usable_cores() if net.workers == "auto" else int(net.workers)
    shards = min(workers, n // MIN_SHARD)
    if shards <= 1 or get_array_module(net._param_like()) is not np:
        return 1
    if not all(is_per_sample(node) for node in list(net.layers) + [net.loss_fn]):
        return 1
    return shards


def _replica(node):
    """A copy sharing the parameter dictionary (so the very arrays the optimizer updates),
    with fresh caches, gradients and scratch buffers, and its own copy of everything else."""
    memo = {}
    for name in ("_cache", "_grads", "_workspace"):
        if isinstance(getattr(node, name, None), dict):
            memo[id(getattr(node, name))] = {}
    if isinstance(getattr(node, "_params", None), dict):
        memo[id(node._params)] = node._params
    return copy.deepcopy(node, memo)


class ShardedStep:
    """Forward and backward of a batch over ``shards`` threads (see the module docstring).

    Built for one network and shard count; ``matches`` tells whether it still fits
    the network (same layers, same dtypes).
    """

    def __init__(self, net, shards):
        self.shards = int(shards)
        self.key = self._key(net)
        self.replicas = [[_replica(layer) for layer in net.layers] for _ in range(self.shards)]
        self.losses = [_replica(net.loss_fn) for _ in range(self.shards)]
        self.pool = ThreadPoolExecutor(max_workers=self.shards - 1, thread_name_prefix="nn_shard")
        from threadpoolctl import ThreadpoolController
        self.blas = ThreadpoolController().select(user_api="blas")

    @staticmethod
    def _key(net):
        return (tuple((id(layer), getattr(layer, "dtype", None)) for layer in net.layers), id(net.loss_fn))

    def matches(self, net, shards):
        return shards == self.shards and self._key(net) == self.key

    def close(self):
        self.pool.shutdown(wait=False)

    def _one(self, w, x, y, err):
        """Forward, loss and backward of one shard through replica ``w``."""
        with np.errstate(**err):                      # NumPy's error state is per thread
            layers, loss_fn = self.replicas[w], self.losses[w]
            h = x
            for layer in layers:
                h = layer.forward(h)
            loss = loss_fn.forward(h, y, validate=False)
            g = loss_fn.backward()
            for i in range(len(layers) - 1, -1, -1):
                g = layers[i].backward(g, need_input_grad=i > 0)
            return loss, h

    def run(self, net, xb, yb):
        """``(loss, output)`` of the batch; the layers' ``grads`` hold the batch's gradients."""
        xp = get_array_module(xb)
        n = xb.shape[0]
        bounds = [n * w // self.shards for w in range(self.shards + 1)]
        err = np.geterr()
        with self.blas.limit(limits=1):
            futures = [self.pool.submit(self._one, w, xb[bounds[w]:bounds[w + 1]], yb[bounds[w]:bounds[w + 1]], err)
                       for w in range(1, self.shards)]
            try:
                results = [self._one(0, xb[:bounds[1]], yb[:bounds[1]], err)]
            finally:
                wait(futures)                         # no shard left running, whatever happened
            results += [f.result() for f in futures]
        weights = [(bounds[w + 1] - bounds[w]) / n for w in range(self.shards)]
        for k, layer in enumerate(net.layers):
            if not layer.trainable:
                continue
            for name in layer.params:
                total = self.replicas[0][k].grads[name] * weights[0]
                for w in range(1, self.shards):
                    total += self.replicas[w][k].grads[name] * weights[w]
                layer.grads[name] = total
        loss = sum(r[0] * wt for r, wt in zip(results, weights))
        return loss, xp.concatenate([r[1] for r in results], axis=0)
