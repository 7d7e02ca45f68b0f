"""Layers that couple the samples of a batch, split all the same: ``BatchNorm``'s batch statistics
computed over the whole batch from the shards' partial ones.

A ``BatchNorm`` in training mode normalises with the mean and variance of the *whole* batch, and
its dL/dx needs two sums over the whole batch.  Split over shards, every shard stops at the
layer, hands over its partial results, and goes on with the combined ones (an *exchange*):

forward, per channel (``m_w`` values of shard ``w``, its mean ``mu_w``, ``M2_w = sum (x - mu_w)^2``),
combined in shard order by Chan's parallel formula (no ``sum x^2 - n mu^2`` cancellation in
float32)::

    n = n_a + n_b,   d = mu_b - mu_a,   mu = mu_a + d n_b / n,   M2 = M2_a + M2_b + d^2 n_a n_b / n
    var = M2 / n     (biased, as the layer: ``normalization.py``)

then every shard normalises its rows with the whole batch's ``mu`` and ``var``; the moving
statistics are updated once, by the shard that owns the network's layer (shard 0), as the unsplit
layer would.  Backward, the two reductions ``sum dy`` and ``sum dy * xhat`` are summed over the
shards and every shard computes its rows of::

    dL/dx = gamma / sqrt(var + eps) * (dy - sum dy / n - xhat * sum dy xhat / n)

Each shard's dL/dgamma and dL/dbeta are its partial sums: the split adds them up as it adds up
every other gradient (``sharding.summed``).  The result equals the unsplit step to rounding.

The layer's own code is untouched (the readable path): the split installs ``BatchNormSync`` on the
copies it runs (and, for the length of a step, on the network's own layers for this process's
shard) as the instance's ``_forward``/``_backward``.  Only the exact class ``BatchNorm`` is synced
(a subclass may compute otherwise: it keeps its network whole).  An engine fast path that would
run such a layer inside a fused unit is not used for it (``SplitRunner``).  Exchanges: between
processes over the workers' pipes (``ParentExchange`` in this process, which combines, and
``WorkerExchange`` in a worker), between threads through a barrier (``ThreadExchange``).
"""
import contextlib
import threading
import time

import numpy as np

from ...backend import get_array_module
from ...layers.normalization import BatchNorm, one_over_sqrt
from ..runner import Runner
from . import policy, wire

__all__ = ["SYNCED", "supported", "has_synced", "combine", "BatchNormSync", "installed", "SplitRunner",
           "ParentExchange", "WorkerExchange", "ThreadExchange"]

#: the layer classes (exact) whose batch coupling the split reproduces (``policy.synced`` says so)
SYNCED = (BatchNorm,)
supported = policy.synced


def has_synced(layers):
    return any(supported(layer) for layer in layers)


def combine_stats(parts):
    """``[n, mu, var]`` of the whole batch from the shards' ``[n_w, mu_w, M2_w]`` (Chan), in shard order."""
    n, mean, m2 = parts[0]
    n = float(n)
    for nb, mb, m2b in parts[1:]:
        nb = float(nb)
        total = n + nb
        delta = mb - mean
        mean = mean + delta * (nb / total)
        m2 = m2 + m2b + delta * delta * (n * nb / total)
        n = total
    return [np.asarray(n), mean, m2 / n]


def combine_sums(parts):
    """The shards' partial sums added up, in shard order."""
    total = [p.copy() for p in parts[0]]
    for part in parts[1:]:
        for t, p in zip(total, part):
            t += p
    return total


combine = {"stats": combine_stats, "sums": combine_sums}


class BatchNormSync:
    """A ``BatchNorm``'s forward and backward over one shard, with the whole batch's statistics
    from ``exchange`` (module docstring).  ``k``: the layer's index (checked by the exchange);
    ``owner``: this shard updates the layer's moving statistics (shard 0 only)."""

    def __init__(self, layer, k, exchange, owner):
        self.layer, self.k, self.exchange, self.owner = layer, k, exchange, owner

    def forward(self, x):
        layer = self.layer
        if not layer.uses_batch_statistics():
            return BatchNorm._forward(layer, x)
        xp = get_array_module(x)
        axes, col = layer._axes(x), (lambda v: layer._column(v, x))
        m = x.size // layer.channels if layer.channels else 0
        local_mean = x.mean(axis=axes) if m else xp.zeros(layer.channels, dtype=x.dtype)
        xc = x - col(local_mean)
        n, mean, var = self.exchange.combine(self.k, "stats",
                                             [np.asarray(float(m)), local_mean, (xc * xc).sum(axis=axes)])
        n = int(n)
        if n < 2:
            raise ValueError(f"{layer._describe()}: training mode normalises with the batch's statistics and needs "
                             f"at least 2 values per channel, received a batch with {n} value per channel")
        mean, var = mean.astype(layer.dtype, copy=False), var.astype(layer.dtype, copy=False)
        if self.owner:
            one, mom = layer.dtype.type(1), layer.dtype.type(layer.momentum)
            layer._buffers["moving_mean"] = layer._buffers["moving_mean"] * mom + mean * (one - mom)
            layer._buffers["moving_variance"] = layer._buffers["moving_variance"] * mom + var * (one - mom)
        inv = one_over_sqrt(var + layer.dtype.type(layer.epsilon), xp)
        xc -= col(mean - local_mean)            # x - mu, from x - mu_w already at hand
        xc *= col(inv)
        xhat = xc
        layer._cache.update(xhat=xhat, inv=inv, batch=True, total=n)
        y = xhat * col(layer._params["gamma"])
        y += col(layer._params["beta"])
        return y

    def backward(self, dy, need_input_grad=True):
        layer = self.layer
        if not layer._cache.get("batch") or "total" not in layer._cache:
            return BatchNorm._backward(layer, dy, need_input_grad)
        xhat, inv, n = layer._cache["xhat"], layer._cache["inv"], layer._cache["total"]
        dy = dy.astype(layer.dtype, copy=False)
        axes, col = layer._axes(dy), (lambda v: layer._column(v, dy))
        dbeta = dy.sum(axis=axes)
        dgamma = (dy * xhat).sum(axis=axes)
        layer._grads["gamma"], layer._grads["beta"] = dgamma, dbeta
        if not need_input_grad:                 # the same for every shard: none of them exchanges
            return None
        total_beta, total_gamma = self.exchange.combine(self.k, "sums", [dbeta, dgamma])
        t = layer.dtype.type(1.0 / n)
        dx = dy - col(total_beta.astype(layer.dtype, copy=False) * t)
        dx -= xhat * col(total_gamma.astype(layer.dtype, copy=False) * t)
        dx *= col(layer._params["gamma"] * inv)
        return dx


def install(layers, exchange, owner):
    """Give every synced layer of ``layers`` a ``BatchNormSync`` (instance ``_forward``/``_backward``);
    returns the layers hooked."""
    hooked = []
    for k, layer in enumerate(layers):
        if supported(layer):
            hook = BatchNormSync(layer, k, exchange, owner)
            layer.__dict__["_forward"], layer.__dict__["_backward"] = hook.forward, hook.backward
            hooked.append(layer)
    return hooked


@contextlib.contextmanager
def installed(layers, exchange, owner=True):
    """``install`` for the length of a ``with`` block (the network's own layers: plain again after)."""
    hooked = install(layers, exchange, owner)
    try:
        yield hooked
    finally:
        for layer in hooked:
            layer.__dict__.pop("_forward", None)
            layer.__dict__.pop("_backward", None)


class SplitRunner(Runner):
    """The engine's runner, except that no fused unit covers a synced layer (a unit computing
    ``BatchNorm`` itself would bypass the exchange): such a layer runs by its own (hooked) code,
    and a unit that would include it is replaced by the one-layer unit of its first layer."""

    def _unit(self, layers, i, x, fuse):
        unit = super()._unit(layers, i, x, fuse)
        if unit is None:
            return None
        if any(supported(layer) for layer in layers[i:i + getattr(unit, "size", 1)]):
            unit = super()._unit(layers, i, x, False) if fuse else None
            if unit is not None and any(supported(layer) for layer in layers[i:i + getattr(unit, "size", 1)]):
                unit = None
        return unit


class ParentExchange:
    """This process's side of the exchange with its worker processes (``conns``): it reads each
    worker's partial results, combines them with its own shard's and sends the result back."""

    def __init__(self, conns):
        self.conns = conns

    def combine(self, k, kind, mine):
        deadline = time.monotonic() + policy.WAIT_MIN_S
        parts = [mine]
        for conn in self.conns:
            header, arrays = wire.unpack(wire.recv(conn, deadline))
            if header.get("op") != "sync" or header.get("k") != k:
                raise RuntimeError(header.get("message", f"a worker answered {header.get('op')!r} at layer {k}"))
            parts.append(arrays)
        result = combine[kind](parts)
        message = wire.pack({"op": "sync", "k": k}, result)
        for conn in self.conns:
            conn.send_bytes(message)
        return result


class WorkerExchange:
    """A worker process's side: send its partial results, wait for the combined ones."""

    def __init__(self, conn):
        self.conn = conn

    def combine(self, k, kind, mine):
        self.conn.send_bytes(wire.pack({"op": "sync", "k": k}, mine))
        header, arrays = wire.unpack(wire.recv(self.conn, time.monotonic() + policy.WORKER_IDLE_S))
        if header.get("op") != "sync" or header.get("k") != k:
            raise RuntimeError(f"the split's exchange at layer {k} received {header.get('op')!r}")
        return arrays


class ThreadExchange:
    """The exchange between the threads of a split: each shard leaves its partial results in its
    slot, and after a barrier every one combines all slots in shard order (the same result in each)."""

    def __init__(self, shards):
        self.slots = [None] * shards
        self.barrier = threading.Barrier(shards)

    def reset(self):
        self.barrier.reset()

    def abort(self):
        self.barrier.abort()

    def member(self, w):
        exchange = self

        class Member:
            def combine(self, k, kind, mine):
                exchange.slots[w] = (k, mine)
                exchange.barrier.wait(policy.WAIT_MIN_S)
                if any(slot[0] != k for slot in exchange.slots):
                    raise RuntimeError(f"the split's threads reached different layers ({k})")
                result = combine[kind]([slot[1] for slot in exchange.slots])
                exchange.barrier.wait(policy.WAIT_MIN_S)
                return result
        return Member()
