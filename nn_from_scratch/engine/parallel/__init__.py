"""Data-parallel training steps on the CPU: one batch split over worker processes or threads.

Until the loss averages them, the samples of a batch never meet when every layer maps each
sample on its own (``Node.per_sample``).  So a batch can be cut into shards that go through the
network side by side, each worker running the whole, unchanged forward and backward pass of its
shard through its own copy of the layers, and the batch's gradient put back together from the
shards' (``sharding.py``).  The split changes only the order of floating-point additions: for a
given batch size and shard count the result is deterministic, and it agrees with the one-worker
step to rounding (tests/test_parallel.py, both kinds: loss, outputs and gradients to 1e-12 in
float64, with uneven shards; the weights after ``fit`` with each optimizer to 1e-10).

The network holds one ``BatchSplit`` (``batch_split.py``): ``step``, ``forward``, ``rest``,
``close``; it runs a batch whole when it may not be split and again as one when a split fails.
The rest, one concern per module:

* ``policy.py``: which batches are split, into how many shards, by which kind of worker; the
  settings (``MIN_SHARD``, ``SPLIT_WITH``, deadlines...), which may be set on this package
  (``parallel.MIN_SHARD = 2``) and are read when used;
* ``allowed.py``: only where no other thread can be inside BLAS (``split_allowed``, ``activity``),
  and workers forked from this process only while it runs no other thread (``alone``);
* ``identity.py``: what the workers' copies must still agree on with the network (``network_key``),
  the training modes and random states each message carries;
* ``threads.py``: ``ShardedStep``, shards in threads (off Linux);
* ``forked.py``: ``ForkedStep``, shards in worker processes (Linux), with ``memory.py`` (the
  shared-memory layout), ``wire.py`` (the messages, no pickle) and ``workers.py`` (the worker
  loop, reaping, killing, disowning after a fork).  The workers are forked from this process
  while it runs a single thread, else started by ``server.py`` (a fork server in a fresh
  interpreter, which no lock held here can reach) from the network's recipe (``rebuild.py``:
  layer configs as JSON; a network with a user's layer class splits over threads instead);
* ``sync.py``: layers that couple the samples (``BatchNorm``): the shards exchange partial batch
  statistics, so that every shard normalises with the whole batch's.

Training/inference mode and randomness: every message to a copy of the layers carries the
network's layers' ``training`` flags, and a training step also the random state of its
stochastic layers with the shard's first sample index: a ``Dropout`` shard draws exactly its
rows of the whole batch's mask, so the split result is the unsplit one.  ``BatchNorm`` couples
the samples of a batch (the batch statistics): its shards exchange per-channel counts, means and
sums of squared deviations and, backward, the two per-channel sums (``sync.py``), so the split
result is again the whole batch's to rounding; only the exact class is split so (a subclass keeps
its network whole).
"""
import sys
import types

from ... import layers as _layers
from . import policy, wire, workers
from .allowed import activity, split_allowed
from .batch_split import BatchSplit, make_step
from .forked import ForkedStep
from .identity import config_key, network_key
from .policy import (MIN_SHARD, MIN_SHARD_PROCESSES, QUIT_GRACE_S, REUSE_S, SPIN_S, SPLIT_WITH, WAIT_FACTOR,
                     WAIT_MIN_S, WORKER_IDLE_S, is_per_sample, shard_count, split_with, usable_cores)
from .threads import ShardedStep
from .wire import WorkerTimeout

__all__ = ["BatchSplit", "ShardedStep", "ForkedStep", "shard_count", "usable_cores", "is_per_sample", "split_with",
           "make_step", "config_key", "network_key", "split_allowed", "activity", "WorkerTimeout"]

#: the package's layer classes that may be split, for code that read the list this once was: derived
#: from the classes' own ``per_sample`` declarations (``Node.per_sample``), which are what counts
PER_SAMPLE = frozenset(cls for cls in vars(_layers).values()
                       if isinstance(cls, type) and vars(cls).get("per_sample", False))

#: names set on this package that are read in a module of it: ``parallel.MIN_SHARD = 2`` (and
#: ``monkeypatch.setattr(parallel, "_pack", spy)``) set them there, where they are read
_FORWARDED = {name: (policy, name) for name in policy.SETTINGS}
_FORWARDED.update({"_pack": (wire, "pack"), "_unpack": (wire, "unpack"), "_LIVE": (workers, "LIVE")})
_pack, _unpack, _LIVE = wire.pack, wire.unpack, workers.LIVE


class _Package(types.ModuleType):
    def __setattr__(self, name, value):
        home = _FORWARDED.get(name)
        if home is not None:
            setattr(home[0], home[1], value)
        super().__setattr__(name, value)


sys.modules[__name__].__class__ = _Package
