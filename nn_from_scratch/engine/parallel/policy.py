"""When and how a batch is split: the settings, the kind of worker, the number of shards.

A batch is split on NumPy only (a GPU runs one batch as one), with the engine on, when every
layer and the loss treat samples independently (their class declares ``per_sample = True``,
``Node.per_sample``) or couple them in a way the split reproduces (``BatchNorm``: ``sync.py``),
every stochastic layer can hand out its random numbers per shard, splitting
is allowed here and now (``allowed.split_allowed``), and into at most ``workers`` shards of at
least ``MIN_SHARD_PROCESSES`` (processes) or ``MIN_SHARD`` (threads) samples.

The settings below are read when used: ``parallel.MIN_SHARD = 2`` (the package forwards it
here) takes effect at the next step.
"""
import os
import sys

import numpy as np

from ...backend import get_array_module
from ...layers.normalization import BatchNorm
from . import allowed

__all__ = ["split_with", "min_shard", "usable_cores", "is_per_sample", "synced", "shard_count", "SETTINGS"]

#: how shards run: "processes" (forked workers, Linux) or "threads"; see ``split_with``
SPLIT_WITH = "processes" if sys.platform.startswith("linux") and hasattr(os, "fork") else "threads"
#: the smallest shard worth a worker, per kind (measured: benchmarks/RESULTS.md)
MIN_SHARD = 64
MIN_SHARD_PROCESSES = 25
#: worker processes are kept from one ``fit`` (or ``train_step``) to the next: forking costs
#: ~0.1 s (copy-on-write faults, BLAS thread pools started again).  A split step unused for
#: ``REUSE_S`` seconds is forked afresh; a worker without a step for ``WORKER_IDLE_S``
#: seconds ends itself, releasing the memory it still shares with this process.
REUSE_S = 30.0
WORKER_IDLE_S = 60.0
#: a process waiting for a message from the other side of a split (a worker for its next
#: shard, this process for a worker's reply) polls without sleeping for up to ``SPIN_S``
#: seconds before it blocks: a blocked process took 0.1-0.2 ms to wake on the 2-vCPU VM of
#: benchmarks/RESULTS.md, and the other side's message is usually less than that away
SPIN_S = 0.002
#: the longest this process waits for a worker's reply: ``max(WAIT_MIN_S, WAIT_FACTOR * t)``
#: with ``t`` the time this process took for its own shard of the same step (a worker's shard
#: is as large).  Past it the worker is taken as hung (stopped by a signal or a debugger,
#: swapped out): every worker of the split is killed and reaped, and the step runs again in
#: this process with a warning; the next split step forks new workers.
WAIT_MIN_S = 10.0
WAIT_FACTOR = 50.0
#: ``close``: how long a worker told to quit may take before it is killed
QUIT_GRACE_S = 1.0

#: the settings above, by name (``parallel.<name> = value`` sets them here)
SETTINGS = ("SPLIT_WITH", "MIN_SHARD", "MIN_SHARD_PROCESSES", "REUSE_S", "WORKER_IDLE_S", "SPIN_S", "WAIT_MIN_S",
            "WAIT_FACTOR", "QUIT_GRACE_S")


def split_with():
    """"processes" or "threads": how a split step runs its shards (``SPLIT_WITH``, checked)."""
    if SPLIT_WITH not in ("processes", "threads"):
        raise ValueError(f"parallel.SPLIT_WITH must be 'processes' or 'threads', received {SPLIT_WITH!r}")
    if SPLIT_WITH == "processes" and not hasattr(os, "fork"):
        return "threads"
    return SPLIT_WITH


def min_shard():
    return MIN_SHARD_PROCESSES if split_with() == "processes" else MIN_SHARD


def usable_cores():
    """CPUs this process may run on."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not on Linux
        return os.cpu_count() or 1


def is_per_sample(node):
    """Does ``node`` treat the samples of a batch independently: does its class declare
    ``per_sample = True`` in its own body (``Node.per_sample``; a subclass must say so again)?"""
    return bool(vars(type(node)).get("per_sample", False))


def synced(node):
    """May a split run ``node`` although it couples the samples?  Yes for the exact classes whose
    coupling the shards reproduce by exchanging partial results (``sync.py``: ``BatchNorm``)."""
    return type(node) is BatchNorm


def shard_count(net, n):
    """How many shards (threads or processes) a training step of ``n`` samples is split into (1: not split)."""
    workers = usable_cores() if net.workers == "auto" else int(net.workers)
    shards = min(workers, n // min_shard())
    if shards <= 1 or not net.engine or get_array_module(net.parameter_like()) is not np or not allowed.split_allowed():
        return 1
    if not all(is_per_sample(node) or synced(node) for node in list(net.layers) + [net.loss_fn]):
        return 1            # a layer coupling the samples that the split cannot reproduce (``sync.py``)
    if any(getattr(node, "stochastic", False) and not hasattr(node, "set_random_state") for node in net.layers):
        return 1            # random draws the split cannot hand out per shard (see identity.random_states)
    return shards
