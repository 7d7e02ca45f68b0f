"""Shards in threads (``ShardedStep``; off Linux, or ``SPLIT_WITH = "threads"``).

Each thread runs its shard through a replica of the layers that shares the parameter dictionary
(so the very arrays the optimizer updates).  NumPy releases the interpreter lock inside its array
operations, but between them the threads queue for it: shards below ``policy.MIN_SHARD`` (64)
samples lose more than the second core gains.  BLAS is held to one thread per shard.
"""
import contextlib
import copy
from concurrent.futures import ThreadPoolExecutor, wait

import numpy as np

from ...backend import get_array_module
from ..runner import Runner
from . import allowed, identity, sharding, sync

__all__ = ["ShardedStep", "replica"]


def replica(node):
    """A copy sharing the parameter dictionary (so the very arrays the optimizer updates),
    with fresh caches, gradients and scratch buffers, and its own copy of everything else."""
    memo = {}
    for name in ("_cache", "_grads"):
        if isinstance(getattr(node, name, None), dict):
            memo[id(getattr(node, name))] = {}
    if isinstance(getattr(node, "_params", None), dict):
        memo[id(node._params)] = node._params
    if isinstance(getattr(node, "_buffers", None), dict):   # moving statistics: the network's own
        memo[id(node._buffers)] = node._buffers
    return copy.deepcopy(node, memo)


class ShardedStep:
    """Forward and backward of a batch over ``shards`` threads (see the module docstring).

    Built for one network and shard count; ``matches`` tells whether it still fits
    the network (same layers, same dtypes).
    """

    kind = "threads"

    def __init__(self, net, shards):
        self.shards = int(shards)
        self.key = identity.network_key(net)
        self.replicas = [[replica(layer) for layer in net.layers] for _ in range(self.shards)]
        self.losses = [replica(net.loss_fn) for _ in range(self.shards)]
        self.synced = sync.has_synced(net.layers)       # BatchNorm: statistics exchanged (``sync.py``)
        self.runners = [sync.SplitRunner() if self.synced else Runner() for _ in range(self.shards)]
        self.exchange = sync.ThreadExchange(self.shards)
        for w, layers in enumerate(self.replicas):      # shard 0 updates the (shared) moving statistics
            sync.install(layers, self.exchange.member(w), owner=w == 0)
        self.pool = ThreadPoolExecutor(max_workers=self.shards - 1, thread_name_prefix="nn_shard")
        from threadpoolctl import ThreadpoolController
        self.blas = ThreadpoolController().select(user_api="blas")

    def matches(self, net, shards):
        """Does this split still fit ``net`` (same layers and loss, configured as they were)?"""
        return shards == self.shards and identity.network_key(net) == self.key

    def _sync_modes(self, net):
        modes = identity.modes(net)
        for replica in self.replicas:
            identity.set_modes(replica, modes)

    def rest(self):
        """Between ``fit`` calls: let the replicas' caches go."""
        for node in [n for r in self.replicas for n in r] + self.losses:
            node.clear_cache()

    def close(self):
        self.pool.shutdown(wait=False)

    def _side_by_side(self, n, work):
        """``[work(w, shard w's slice) for every shard]``, the shards in the pool's threads and this one,
        BLAS at one thread per shard."""
        bounds, _ = sharding.bounds(n, self.shards)
        err = np.geterr()

        def one(w):
            try:
                with np.errstate(**err):              # NumPy's error state is per thread
                    return work(w, slice(bounds[w], bounds[w + 1]))
            except BaseException:
                self.exchange.abort()                 # no other shard waits for this one's statistics
                raise
        self.exchange.reset()
        # BLAS at one thread per shard, unless another thread could be inside BLAS (setting its
        # thread count under a running call can hang: ``allowed.py``)
        with self.blas.limit(limits=1) if allowed.alone() else contextlib.nullcontext():
            futures = [self.pool.submit(one, w) for w in range(1, self.shards)]
            try:
                results = [one(0)]
            finally:
                wait(futures)                         # no shard left running, whatever happened
            return results + [f.result() for f in futures]

    def run(self, net, xb, yb):
        """``(loss, output)`` of the batch; the layers' ``grads`` hold the batch's gradients."""
        xp = get_array_module(xb)
        _, weights = sharding.bounds(xb.shape[0], self.shards)
        self._sync_modes(net)
        states = identity.random_states(net)
        bounds, _ = sharding.bounds(xb.shape[0], self.shards)
        for w, replica in enumerate(self.replicas):
            identity.set_random_states(replica, states, bounds[w])
        results = self._side_by_side(xb.shape[0], lambda w, s: sharding.forward_backward(
            self.runners[w], self.replicas[w], self.losses[w], xb[s], yb[s], weights[w]))
        for k, _ in states:                     # the network's layers move on as shard 0's did
            net.layers[k].set_random_state(self.replicas[0][k].random_state())
        for k, layer in enumerate(net.layers):
            if not layer.params:
                continue
            for name in layer.params:
                layer.grads[name] = sharding.summed([self.replicas[w][k].grads[name] for w in range(self.shards)])
        loss = sum(r[0] * wt for r, wt in zip(results, weights))
        return loss, xp.concatenate([r[1] for r in results], axis=0)

    def forward(self, net, xb):
        """The output of the batch (``predict``, ``evaluate``): the shards' forward passes side by side."""
        self._sync_modes(net)
        outs = self._side_by_side(xb.shape[0], lambda w, s: sharding.forward(self.runners[w], self.replicas[w], xb[s]))
        return get_array_module(xb).concatenate(outs, axis=0)
