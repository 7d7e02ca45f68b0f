"""Data-parallel training steps on the CPU: one batch split over worker processes or threads.

Until the loss averages them, the samples of a batch never meet: every layer here
maps each sample on its own.  So a batch of ``N`` can be cut into shards of ``n_w``
samples that go through the network side by side, and the gradient of the batch's
mean loss is put back together from the shards' mean losses::

    L = sum_w (n_w / N) L_w          dL/dtheta = sum_w (n_w / N) dL_w/dtheta

Each shard starts its backward pass from ``dL/dL_w = n_w / N`` (the loss's ``upstream``),
so its gradients are already its share of the batch's and putting them together is one
addition per parameter.

Each worker runs the whole, unchanged forward and backward pass of its shard
through its own copy of the layers.  While a training split's workers are there,
``predict`` and ``evaluate`` use them for forward passes too (``forward``).  Two kinds
of worker (``SPLIT_WITH``):

* ``ForkedStep`` (the default on Linux): worker processes forked from this one.
  Their layers read the parameters from a shared-memory mirror that this process
  refreshes before every step; shards go in through shared memory, a short message
  over a pipe (raw bytes with a JSON header, no pickle) starts each one, losses and
  outputs come back over the pipe and gradients through shared memory.  No
  interpreter lock is shared, so even shards of 25 samples gain (LeNet-5 on 2
  cores: x1.3 at batch 50, x1.6 at 256; benchmarks/RESULTS.md).
* ``ShardedStep`` (elsewhere, or ``SPLIT_WITH = "threads"``): threads, each with a
  replica of the layers sharing the parameter dictionary.  NumPy releases the
  interpreter lock inside its array operations, but between them the threads queue
  for it: shards below ``MIN_SHARD`` (64) samples lose more than the second core
  gains.

Either way BLAS is held to one thread per shard (``threadpoolctl``): the cores are
taken already.

Training/inference mode and randomness: every message to a copy of the layers carries the
network's layers' ``training`` flags, and a training step also carries the random state of its
stochastic layers with the shard's first sample index (``_random_states``): a ``Dropout`` shard
draws exactly its rows of the whole batch's mask, so masks differ per shard and the split
result is the unsplit one.  ``BatchNorm`` couples the samples of a batch (the batch statistics):
it is not in ``PER_SAMPLE``, so networks with it are never split.

Which batches are split: on NumPy only (a GPU runs one batch as one), with the engine on, when
every layer and the loss treat samples independently (their class is one of ``PER_SAMPLE``, or
a class of the user's own sets ``per_sample = True``; a subclass must say so again, since it may
add state), and
into at most ``workers`` shards of at least ``MIN_SHARD_PROCESSES`` (processes) or
``MIN_SHARD`` (threads) samples.

Where: only where no other thread can be inside BLAS (``split_allowed``: the main thread, every
other thread a daemon, no other thread in a network method); elsewhere a step runs whole.  A
process forked from this one disowns the workers it inherits (``os.register_at_fork``); every
wait on a worker ends by a deadline (``WAIT_MIN_S``), after which the workers are killed and the
step runs in this process; workers that ended by themselves are reaped at the next split.

The split changes only the order of floating-point additions: for a given batch
size and shard count the result is deterministic, and it agrees with the one-worker
step to rounding (tests/test_parallel.py, both kinds: loss, outputs and gradients to
1e-12 in float64, with uneven shards; the weights after ``fit`` with each optimizer
to 1e-10).
"""
import copy
import json
import math
import mmap
import os
import select
import signal
import struct
import sys
import threading
import time
import warnings
import weakref
from concurrent.futures import ThreadPoolExecutor, wait

import numpy as np

from .. import layers as L
from ..backend import get_array_module
from .runner import Runner

__all__ = ["ShardedStep", "ForkedStep", "shard_count", "usable_cores", "is_per_sample", "split_with",
           "make_step", "config_key", "network_key", "split_allowed", "activity", "WorkerTimeout"]

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


class WorkerTimeout(RuntimeError):
    """A worker process did not answer in time (see ``WAIT_MIN_S``)."""


# ------------------------------------------------------------------ when a batch may be split
# Forking a process while another thread is inside a multi-threaded OpenBLAS call can hang
# for ever: OpenBLAS's pre-fork handler joins its thread pool, which is busy with that call
# (issue 22: ``fit`` in a thread while the main thread ran ``np.linalg.svd`` hung 8 runs in 21).
# Changing BLAS's process-wide thread count under another thread's call is no better.  So the
# split step (forking, keeping workers, holding BLAS to one thread) runs only where nothing
# else can be in BLAS: in the main thread, while every other Python thread is a daemon (the
# helper threads of Jupyter, tqdm, ...) or one of the split's own, and no other thread is
# inside a network's method (``activity``).  Anywhere else a step runs whole in the calling
# thread: the same numbers as ``workers=1``, just not split.  A daemon thread that runs
# NumPy linear algebra of its own outside this package at the moment of a fork is the one
# case this cannot see.
_ACTIVE = {}                       # thread ident -> depth of network methods it is inside
_ACTIVE_LOCK = threading.Lock()    # held while checking and forking: a thread entering waits


class activity:
    """Context manager around a network's public methods: records that this thread is inside
    one (``split_allowed`` refuses to split while another thread is); waits while a fork runs."""

    __slots__ = ("ident",)

    def __enter__(self):
        self.ident = threading.get_ident()
        with _ACTIVE_LOCK:
            _ACTIVE[self.ident] = _ACTIVE.get(self.ident, 0) + 1
        return self

    def __exit__(self, *exc):
        with _ACTIVE_LOCK:
            depth = _ACTIVE.get(self.ident, 1) - 1
            if depth:
                _ACTIVE[self.ident] = depth
            else:
                _ACTIVE.pop(self.ident, None)
        return False


def _others_quiet():
    """No other thread inside a network method, and every other live thread a daemon or a
    split's own (``_ACTIVE_LOCK`` held by the caller, or a snapshot is good enough)."""
    me = threading.get_ident()
    if any(ident != me for ident in _ACTIVE):
        return False
    for t in threading.enumerate():
        if t.ident == me or t.daemon or t.name.startswith("nn_shard"):
            continue
        return False
    return True


def split_allowed():
    """May a step split its batch here and now (see the comment above ``activity``)?  True in
    the main thread while no other non-daemon thread is alive and no other thread is inside a
    network's method."""
    return threading.current_thread() is threading.main_thread() and _others_quiet()


def split_with():
    """"processes" or "threads": how a split step runs its shards (``SPLIT_WITH``, checked)."""
    if SPLIT_WITH not in ("processes", "threads"):
        raise ValueError(f"parallel.SPLIT_WITH must be 'processes' or 'threads', received {SPLIT_WITH!r}")
    if SPLIT_WITH == "processes" and not hasattr(os, "fork"):
        return "threads"
    return SPLIT_WITH


def _min_shard():
    return MIN_SHARD_PROCESSES if split_with() == "processes" else MIN_SHARD


def usable_cores():
    """CPUs this process may run on."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not on Linux
        return os.cpu_count() or 1


#: the package's classes (exact classes) that map each sample of a batch on its own (``BatchNorm`` does not)
PER_SAMPLE = frozenset({L.Linear, L.Convolution, L.ReLU, L.Sigmoid, L.Tanh, L.Softmax, L.LeakyReLU, L.ELU, L.GELU,
                        L.Softplus, L.Dropout, L.MaxPool, L.AvgPool, L.GlobalAveragePooling, L.GlobalAveragePooling1D,
                        L.GlobalAveragePooling2D, L.GlobalAveragePooling3D, L.Vectorization, L.Reshape,
                        L.SoftMaxLoss, L.MSELoss, L.BinaryCrossEntropy, L.Huber, L.MAE})


def is_per_sample(node):
    """Does ``node`` treat the samples of a batch independently: its class is one of ``PER_SAMPLE``, or
    a class of the user's own declares ``per_sample = True`` itself?"""
    return type(node) in PER_SAMPLE or bool(vars(type(node)).get("per_sample", False))


def shard_count(net, n):
    """How many shards (threads or processes) a training step of ``n`` samples is split into (1: not split)."""
    workers = usable_cores() if net.workers == "auto" else int(net.workers)
    shards = min(workers, n // _min_shard())
    if shards <= 1 or not net.engine or get_array_module(net._param_like()) is not np or not split_allowed():
        return 1
    if not all(is_per_sample(node) for node in list(net.layers) + [net.loss_fn]):
        return 1
    if any(getattr(node, "stochastic", False) and not hasattr(node, "set_random_state") for node in net.layers):
        return 1            # random draws the split cannot hand out per shard (see _random_states)
    return shards


_PLAIN = (bool, int, float, complex, str, bytes, type(None), np.generic, np.dtype)


def _plain(value):
    """A comparable summary of an attribute: plain values as they are, arrays by shape and
    dtype, other objects by their type."""
    if isinstance(value, _PLAIN):
        return value
    if type(value) is tuple and all(isinstance(v, _PLAIN) for v in value):    # e.g. kernel sizes
        return value
    if isinstance(value, (tuple, list)):
        return tuple(_plain(v) for v in value)
    if isinstance(value, dict):
        return tuple((k, _plain(v)) for k, v in value.items())
    if hasattr(value, "shape") and hasattr(value, "dtype"):
        return ("array", tuple(value.shape), str(value.dtype))
    return type(value).__qualname__


def config_key(node):
    """What a copy of ``node`` made earlier (a replica, or the layers of a forked worker) must
    still agree on with it: the object, its class and its public attributes (sizes, flags,
    names, dtypes), read through ``_plain``.  Private state (parameters, caches, gradients)
    is excluded: parameters reach the copies at every step; so is the ``training`` flag, which
    every message to the copies carries (``_modes``)."""
    return (id(node), type(node), tuple((k, _plain(v)) for k, v in vars(node).items()
                                        if k[0] != "_" and k != "training"))


def _modes(net):
    """The layers' training flags as a string ("1": training, "0": inference) for the split's copies."""
    return "".join("1" if layer.training else "0" for layer in net.layers)


def _set_modes(layers, modes):
    """Give the copies ``layers`` the training flags ``modes`` (``_modes``) of the network's layers."""
    for layer, m in zip(layers, modes):
        layer.training = m == "1"


def _random_states(net):
    """``[[layer index, random state]]`` of the network's stochastic layers (``Dropout``).

    A stochastic layer that may be split implements ``random_state()`` and
    ``set_random_state(state, sample_offset)``: given the step's state and the index of its first
    sample in the whole batch, a shard draws exactly its samples' part of the batch's random
    numbers (``dropout.py``), so the shards' draws differ and the result is the unsplit one.
    (Stochastic layers without them keep the network unsplit: ``shard_count``.)"""
    return [[k, layer.random_state()] for k, layer in enumerate(net.layers)
            if getattr(layer, "stochastic", False) and hasattr(layer, "set_random_state")]


def _set_random_states(layers, states, offset):
    for k, state in states:
        layers[k].set_random_state(state, offset)


def network_key(net):
    """``config_key`` of every layer and of the loss, with the trainable parameters' slots."""
    return (tuple(config_key(layer) for layer in net.layers), config_key(net.loss_fn),
            tuple((k, n, s, d.str) for k, n, s, d in _param_slots(net)))


def _replica(node):
    """A copy sharing the parameter dictionary (so the very arrays the optimizer updates),
    with fresh caches, gradients and scratch buffers, and its own copy of everything else."""
    memo = {}
    for name in ("_cache", "_grads"):
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

    kind = "threads"

    def __init__(self, net, shards):
        self.shards = int(shards)
        self.key = network_key(net)
        self.replicas = [[_replica(layer) for layer in net.layers] for _ in range(self.shards)]
        self.losses = [_replica(net.loss_fn) for _ in range(self.shards)]
        self.runners = [Runner() for _ in range(self.shards)]
        self.pool = ThreadPoolExecutor(max_workers=self.shards - 1, thread_name_prefix="nn_shard")
        from threadpoolctl import ThreadpoolController
        self.blas = ThreadpoolController().select(user_api="blas")

    def matches(self, net, shards):
        """Does this split still fit ``net`` (same layers and loss, configured as they were)?"""
        return shards == self.shards and network_key(net) == self.key

    def _sync_modes(self, net):
        modes = _modes(net)
        for replica in self.replicas:
            _set_modes(replica, modes)

    def rest(self):
        """Between ``fit`` calls: let the replicas' caches go."""
        for node in [n for r in self.replicas for n in r] + self.losses:
            node.clear_cache()

    def close(self):
        self.pool.shutdown(wait=False)

    def _side_by_side(self, n, work):
        """``[work(w, shard w's slice) for every shard]``, the shards in the pool's threads and this one,
        BLAS at one thread per shard."""
        bounds, _ = _shard_bounds(n, self.shards)
        err = np.geterr()

        def one(w):
            with np.errstate(**err):                  # NumPy's error state is per thread
                return work(w, slice(bounds[w], bounds[w + 1]))
        with self.blas.limit(limits=1):
            futures = [self.pool.submit(one, w) for w in range(1, self.shards)]
            try:
                results = [one(0)]
            finally:
                wait(futures)                         # no shard left running, whatever happened
            return results + [f.result() for f in futures]

    def run(self, net, xb, yb):
        """``(loss, output)`` of the batch; the layers' ``grads`` hold the batch's gradients."""
        xp = get_array_module(xb)
        _, weights = _shard_bounds(xb.shape[0], self.shards)
        self._sync_modes(net)
        states = _random_states(net)
        bounds, _ = _shard_bounds(xb.shape[0], self.shards)
        for w, replica in enumerate(self.replicas):
            _set_random_states(replica, states, bounds[w])
        results = self._side_by_side(xb.shape[0], lambda w, s: _forward_backward(self.runners[w], self.replicas[w],
                                                                                   self.losses[w], xb[s], yb[s],
                                                                                   weights[w]))
        for k, _ in states:                     # the network's layers move on as shard 0's did
            net.layers[k].set_random_state(self.replicas[0][k].random_state())
        for k, layer in enumerate(net.layers):
            if not layer.params:
                continue
            for name in layer.params:
                layer.grads[name] = _summed([self.replicas[w][k].grads[name] for w in range(self.shards)])
        loss = sum(r[0] * wt for r, wt in zip(results, weights))
        return loss, xp.concatenate([r[1] for r in results], axis=0)

    def forward(self, net, xb):
        """The output of the batch (``predict``, ``evaluate``): the shards' forward passes side by side."""
        self._sync_modes(net)
        outs = self._side_by_side(xb.shape[0], lambda w, s: _forward(self.runners[w], self.replicas[w], xb[s]))
        return get_array_module(xb).concatenate(outs, axis=0)


def make_step(net, shards, xb=None, yb=None):
    """A split step of the kind ``split_with()`` names (``xb``, ``yb``: a batch like those it will
    run, which sizes the forked workers' shared inboxes).  ``None`` when, checked again while no
    other thread can enter a network's method, splitting is no longer allowed (``split_allowed``)."""
    _reap()
    if split_with() != "processes":
        return ShardedStep(net, shards) if split_allowed() else None
    with _ACTIVE_LOCK:                  # threads entering a network's method wait for the forks
        if not split_allowed():
            return None
        return ForkedStep(net, shards, xb, yb)


def _shard_bounds(n, shards):
    """Shard ``w`` takes samples ``bounds[w]:bounds[w + 1]`` of a batch of ``n``; its gradients count
    with ``weights[w] = n_w / n``."""
    bounds = [n * w // shards for w in range(shards + 1)]
    return bounds, [(bounds[w + 1] - bounds[w]) / n for w in range(shards)]


def _summed(parts):
    """The batch's gradient from the shards' weighted ones: one addition per extra shard."""
    total = parts[0] + parts[1] if len(parts) > 1 else parts[0]
    for part in parts[2:]:
        total += part
    return total


# ------------------------------------------------------------------ shards in forked processes
# Messages between the processes are a JSON header and raw array bytes (no pickle anywhere):
#   4 bytes header length | JSON {"op": ..., "arrays": [[dtype, shape], ...], ...} | array bytes
#: message headers packed (by header and array shapes) and parsed (by their bytes): a split sends
#: the same few at every step (building a shard's message and parsing the reply cost 0.07 + 0.10 ms
#: a step in place, with the caches cold after a shard; 0.02 + 0.02 ms with the headers kept)
_HEADS, _HEADERS = {}, {}


def _pack(header, arrays=()):
    arrays = [np.asarray(a, order="C") for a in arrays]        # (ascontiguousarray makes 0-d 1-d)
    specs = tuple((a.dtype.str, a.shape) for a in arrays)
    try:                                                        # a worker's reply: the same every step
        key = (tuple(header.items()), specs)
        head = _HEADS.get(key)
    except TypeError:                                           # a header holding a dict or list
        key = head = None
    if head is None:
        text = json.dumps(dict(header, arrays=[[d, list(shape)] for d, shape in specs])).encode()
        head = struct.pack("<I", len(text)) + text
        if key is not None:
            if len(_HEADS) >= 64:
                _HEADS.clear()
            _HEADS[key] = head
    return b"".join([head] + [a.tobytes() for a in arrays])


def _unpack(buf):
    """``(header, arrays)`` of a ``_pack`` message; the header dict is shared: read it, never change it."""
    (size,) = struct.unpack_from("<I", buf)
    head = bytes(buf[4:4 + size])
    parsed = _HEADERS.get(head)
    if parsed is None:
        header = json.loads(head)
        if len(_HEADERS) >= 64:
            _HEADERS.clear()
        parsed = _HEADERS[head] = (header, [(np.dtype(d), tuple(shape), math.prod(shape))
                                            for d, shape in header["arrays"]])
    header, specs = parsed
    off, arrays = 4 + size, []
    for dtype, shape, count in specs:
        arrays.append(np.frombuffer(buf, dtype=dtype, count=count, offset=off).reshape(shape))
        off += count * dtype.itemsize
    return header, arrays


def _param_slots(net):
    """``[(layer index, name, shape, dtype)]`` of every trainable parameter, in a fixed order."""
    return [(k, name, tuple(p.shape), p.dtype) for k, layer in enumerate(net.layers) if layer.params
            for name, p in layer.params.items()]


def _layout(specs, start):
    """Byte offsets of arrays ``specs`` = ``[(shape, dtype)]`` laid out from byte ``start``, each
    64-byte aligned, and the end of the last one: ``(offsets, end)``."""
    offsets, off = [], start
    for shape, dtype in specs:
        off = -(-off // 64) * 64
        offsets.append(off)
        off += math.prod(shape) * np.dtype(dtype).itemsize
    return offsets, off


def _region(buf, specs, start):
    """Arrays over ``buf`` for ``specs`` = ``[(shape, dtype)]`` as ``_layout`` places them; ``(views, end)``."""
    offsets, end = _layout(specs, start)
    views = [np.frombuffer(buf, dtype=np.dtype(dtype), count=math.prod(shape), offset=off).reshape(shape)
             for (shape, dtype), off in zip(specs, offsets)]
    return views, end


def _views(buf, slots, start):
    """``_region`` for parameter slots ``[(layer index, name, shape, dtype)]``."""
    return _region(buf, [(shape, dtype) for _, _, shape, dtype in slots], start)


def _wait(conn, timeout):
    """``conn.poll(timeout)``, polling without sleeping for the first ``SPIN_S`` seconds."""
    end = time.perf_counter() + SPIN_S
    while not conn.poll():
        if time.perf_counter() > end:
            return conn.poll(timeout)
    return True


def _forward(runner, layers, x):
    """The output of one shard through ``layers``, run by ``runner`` (as ``NeuralNetwork.forward``)."""
    return runner.forward(layers, x)


def _forward_backward(runner, layers, loss_fn, x, y, weight=1.0):
    """``(loss, output)`` of one shard through ``layers``; their ``grads`` are set to ``weight``
    times the shard's (no dL/dx at the input)."""
    h = runner.forward(layers, x)
    loss, g = runner.loss(loss_fn, h, y, lambda out, t: loss_fn.forward(out, t, validate=False), weight)
    runner.backward(layers, g, need_input_grad=False)
    return loss, h


def _worker(conn, net, slots, params, grads, inbox):
    """The loop of a forked worker: shards in (its shared ``inbox``, or the pipe when a shard
    does not fit), gradients (shared memory) and outputs (pipe) out.

    Messages: "step" (a shard's forward and backward), "forward" (a shard's output only: ``predict``
    and ``evaluate``), "rest" (between ``fit`` calls: drop the caches), "quit".
    Without a message for ``WORKER_IDLE_S`` seconds the worker ends by itself.
    """
    signal.signal(signal.SIGINT, signal.SIG_IGN)       # Ctrl-C is the parent's to handle
    runner = Runner()                                   # this worker's own scratch buffers
    for (k, name, _, _), view in zip(slots, params):    # this process's layers read the parent's
        net.layers[k]._params[name] = view              # parameters from the shared mirror
    from threadpoolctl import threadpool_limits
    with threadpool_limits(limits=1, user_api="blas"):
        while True:
            try:
                if not _wait(conn, WORKER_IDLE_S):
                    break
                header, arrays = _unpack(conn.recv_bytes())
                if "inbox" in header:                   # the shard is in shared memory
                    arrays = _region(inbox, [(shape, dtype) for dtype, shape in header["inbox"]], 0)[0]
            except (EOFError, OSError):
                break
            if header["op"] == "rest":
                for node in list(net.layers) + [net.loss_fn]:
                    node.clear_cache()
                continue
            if header["op"] not in ("step", "forward"):
                break
            _set_modes(net.layers, header["modes"])
            _set_random_states(net.layers, header.get("random", ()), header.get("offset", 0))
            try:
                with np.errstate(**header["err"]):
                    if header["op"] == "forward":
                        reply = _pack({"op": "ok"}, [_forward(runner, net.layers, arrays[0])])
                    else:
                        loss, out = _forward_backward(runner, net.layers, net.loss_fn, arrays[0], arrays[1],
                                                      header["weight"])
                        for (k, name, _, _), g in zip(slots, grads):
                            g[...] = net.layers[k].grads[name]
                        reply = _pack({"op": "ok"}, [np.asarray(loss), out])
            except BaseException as exc:                # the parent re-runs the batch as one
                reply = _pack({"op": "error", "message": f"{type(exc).__name__}: {exc}"})
            conn.send_bytes(reply)


#: the ForkedSteps alive in this process (a new worker closes its inherited copies of their pipes)
_LIVE = weakref.WeakSet()


def _ended(pid):
    """Reap worker ``pid`` if it has exited; True when it is gone (or not this process's child)."""
    try:
        done, _ = os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:
        return True
    return done == pid


def _kill(pids):
    """Kill workers ``pids`` (a stopped one too) and reap them."""
    for pid in pids:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    for pid in pids:
        try:
            os.waitpid(pid, 0)
        except ChildProcessError:
            pass


def _shutdown(conns, pids, owner):
    """Tell the workers to stop and reap them, killing any that has not ended within
    ``QUIT_GRACE_S`` (also run when the step is garbage-collected, and at exit).  Only in the
    process that forked them: a process forked from it (a user's ``multiprocessing``) must not
    stop its parent's workers."""
    if os.getpid() != owner:
        return
    for conn in conns:
        try:
            conn.send_bytes(_pack({"op": "quit"}))
        except (OSError, ValueError):
            pass
        try:
            conn.close()
        except OSError:
            pass
    end = time.monotonic() + QUIT_GRACE_S
    left = [pid for pid in pids if not _ended(pid)]
    while left and time.monotonic() < end:
        time.sleep(0.002)
        left = [pid for pid in left if not _ended(pid)]
    _kill(left)


def _reap():
    """Reap the workers of live splits that ended by themselves (``WORKER_IDLE_S``): no zombies
    are left for longer than until the next split step is made."""
    me = os.getpid()
    for step in list(_LIVE):
        if step.owner == me and step._finalizer.alive:      # a reaped pid leaves: it may be reused
            step.pids[:] = [pid for pid in step.pids if not _ended(pid)]


def _after_fork_in_child():
    """In any process forked from this one: the splits inherited belong to the parent.  Their
    pipe ends are closed here (the parent's workers keep talking to the parent only) and they
    are never used, closed or reaped here; the child forks workers of its own when it trains.
    The lock guarding forks is made anew (a fork may have happened while it was held), and only
    this thread's record of network methods it is inside survives (the others did not come)."""
    global _ACTIVE_LOCK
    _ACTIVE_LOCK = threading.Lock()
    me = threading.get_ident()
    for ident in [i for i in _ACTIVE if i != me]:
        del _ACTIVE[ident]
    for step in list(_LIVE):
        step._disown()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)


def _send(conn, data, deadline):
    """``conn.send_bytes(data)`` (the same framing), giving up at ``deadline`` (``WorkerTimeout``):
    a stopped worker does not drain a message larger than the socket's buffer."""
    if len(data) <= 32768:                 # the worker has read every earlier message: fits at once
        conn.send_bytes(data)
        return
    fd = conn.fileno()
    view = memoryview(struct.pack("!i", len(data)) + data if len(data) <= 0x7FFFFFFF
                      else struct.pack("!i", -1) + struct.pack("!Q", len(data)) + data)
    os.set_blocking(fd, False)
    try:
        while view:
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([], [fd], [], left)[1]:
                raise WorkerTimeout("a worker process did not take its shard in time")
            try:
                view = view[os.write(fd, view):]
            except BlockingIOError:
                continue
    finally:
        os.set_blocking(fd, True)


def _read_exact(fd, n, deadline):
    buf = bytearray(n)
    view, got = memoryview(buf), 0
    while got < n:
        left = deadline - time.monotonic()
        if left <= 0 or not select.select([fd], [], [], left)[0]:
            raise WorkerTimeout("a worker process stopped answering in the middle of its reply")
        k = os.readv(fd, [view[got:]])
        if k == 0:
            raise EOFError("the worker process ended in the middle of its reply")
        got += k
    return buf


def _recv(conn, deadline):
    """``conn.recv_bytes()`` that gives up at ``deadline`` (``WorkerTimeout``)."""
    left = deadline - time.monotonic()
    if not _wait(conn, max(left, 0.0)):
        raise WorkerTimeout("a worker process did not answer in time")
    fd = conn.fileno()
    (n,) = struct.unpack("!i", _read_exact(fd, 4, deadline))
    if n == -1:
        (n,) = struct.unpack("!Q", _read_exact(fd, 8, deadline))
    return _read_exact(fd, n, deadline)


class ForkedStep:
    """Forward and backward of a batch over ``shards`` processes: shard 0 in this one, the others
    in workers forked from it (each with its own copy of the layers, so nothing is shared but
    what is said here).  Unlike threads, processes do not queue for Python's interpreter lock
    between NumPy calls, which is what made shards of 25 samples slower than one thread.

    * Parameters: before every step this process copies its parameters into a shared memory
      mirror (anonymous ``mmap``, shared with the children across ``fork``), which the workers'
      layers use as theirs; this process keeps its own arrays (nobody's reference changes).
    * A worker's shard (images, targets) is written into its own shared-memory inbox, sized
      for shards twice those of the batch the split was made for (a larger shard travels in
      the message), and a short message over a pipe (NumPy's error state; raw bytes and a
      JSON header: no pickle) starts it.  The worker runs the unchanged forward/backward,
      writes its gradients into its own shared region and sends back its loss and outputs.
    * Either side waits for the other's message polling for ``SPIN_S`` seconds before it
      blocks (waking a blocked process cost 0.1-0.2 ms a step on the 2-vCPU VM).  This
      process runs its shard with BLAS held to one thread (the workers have the other cores).
    * Gradients are added up here as in ``ShardedStep`` (each shard's already weighted by its
      size).  ``forward`` (inference) sends a "forward" message instead and gets outputs only.
      An error in a worker comes back as a message; the caller then re-runs the batch as one.
    * The workers outlive a ``fit`` call (a fork costs ~0.1 s): the next step reuses them
      while ``matches`` holds, i.e. the network's layers, loss and their public settings
      are those the workers copied (``network_key``), the workers are alive and the split
      was used less than ``REUSE_S`` seconds ago.  ``rest`` (end of ``fit``) lets the
      workers drop their caches.  ``close`` (or garbage collection, or the end of the
      interpreter) tells them to stop and waits for them; a worker also stops when its
      pipe closes or after ``WORKER_IDLE_S`` seconds without a message.
    """

    kind = "processes"

    def __init__(self, net, shards, xb=None, yb=None):
        import multiprocessing
        from threadpoolctl import ThreadpoolController
        self.shards = int(shards)
        self.key = network_key(net)
        self.slots = _param_slots(net)
        self.last_used = time.monotonic()
        size = 64 + sum(-(-math.prod(s) * d.itemsize // 64) * 64 + 64 for *_, s, d in self.slots)
        # each worker's inbox holds a shard of twice the size the batch ``xb`` gives (larger: the pipe)
        self.inbox_bytes = 0
        if xb is not None and yb is not None:
            shard = -(-len(xb) // self.shards)
            self.inbox_bytes = _layout([((2 * shard,) + a.shape[1:], a.dtype) for a in (xb, yb)], 0)[1]
        self.mem = mmap.mmap(-1, size * self.shards + self.inbox_bytes * (self.shards - 1))  # MAP_SHARED|ANONYMOUS
        self.params, end = _views(self.mem, self.slots, 0)
        self.grads = []
        for _ in range(1, self.shards):
            views, end = _views(self.mem, self.slots, end)
            self.grads.append(views)
        start = -(-end // 64) * 64
        self.inboxes = [memoryview(self.mem)[start + w * self.inbox_bytes:start + (w + 1) * self.inbox_bytes]
                        for w in range(self.shards - 1)]
        self.conns, self.pids = [], []
        self.owner = os.getpid()                        # the process whose workers these are
        # registered first, on the lists filled below: a fork failing half-way still stops the others
        self._finalizer = weakref.finalize(self, _shutdown, self.conns, self.pids, self.owner)
        _LIVE.add(self)
        for w in range(1, self.shards):
            parent_end, child_end = multiprocessing.Pipe()
            with warnings.catch_warnings():             # Python 3.12+: fork of a threaded process
                warnings.simplefilter("ignore", DeprecationWarning)
                pid = os.fork()
            if pid == 0:                                # the worker: never returns
                code = 0
                try:
                    parent_end.close()
                    # this process's ends of every worker's pipe, this split's (in _LIVE already)
                    # and other networks' (a worker must see EOF when its own parent end closes)
                    for c in [c for step in list(_LIVE) for c in step.conns]:
                        c.close()
                    _worker(child_end, net, self.slots, self.params, self.grads[w - 1], self.inboxes[w - 1])
                except BaseException:                   # pragma: no cover - reported by the parent's EOF
                    code = 1
                finally:
                    os._exit(code)
            child_end.close()
            self.conns.append(parent_end)
            self.pids.append(pid)
        self.blas = ThreadpoolController().select(user_api="blas")
        self._messages = {}                             # (worker, shapes, ...) -> (inbox views, message)

    def _disown(self):
        """In a process forked from the owner (``_after_fork_in_child``): let go of the parent's
        workers without a word to them (their pipes' ends here closed, nothing sent or reaped)."""
        self._finalizer.detach()
        for conn in self.conns:
            try:
                conn.close()
            except OSError:
                pass
        self.owner = None

    def matches(self, net, shards):
        """May the next step of ``net`` run on these workers? (See the class docstring.)"""
        if self.owner != os.getpid() or shards != self.shards or time.monotonic() - self.last_used > REUSE_S:
            return False
        if any(conn.poll() for conn in self.conns):     # readable between steps: the worker ended
            return False
        return network_key(net) == self.key

    def rest(self):
        """Between ``fit`` calls: the workers drop their layers' caches (their memory)."""
        if self.owner != os.getpid():
            return
        for conn in self.conns:
            try:
                conn.send_bytes(_pack({"op": "rest"}))
            except OSError:                             # already gone: matches() will notice
                pass

    def close(self):
        self._finalizer()

    def _shard_message(self, w, header, arrays):
        """The message for worker ``w``: ``header`` (its "op" and settings) and the shard ``arrays``,
        written into the worker's inbox when they fit there, else their bytes in the message itself.
        (The inbox's views and the message are kept per header and shapes: the same ones serve every
        step of a ``fit``.)"""
        key = (w, tuple((k, tuple(v.items()) if isinstance(v, dict) else
                         tuple(map(tuple, v)) if isinstance(v, list) else v) for k, v in header.items()),
               tuple((a.shape, a.dtype.str) for a in arrays))
        held = self._messages.get(key)
        if held is None:
            specs = [(a.shape, a.dtype) for a in arrays]
            if _layout(specs, 0)[1] > self.inbox_bytes:
                return _pack(header, arrays)
            if len(self._messages) >= 64:
                self._messages.clear()
            inbox = [[a.dtype.str, list(a.shape)] for a in arrays]
            held = self._messages[key] = (_region(self.inboxes[w - 1], specs, 0)[0], _pack(dict(header, inbox=inbox)))
        views, message = held
        for view, a in zip(views, arrays):
            view[...] = a
        return message

    def _side_by_side(self, net, message, local):
        """Start every worker ``w`` on ``message(w)``, run ``local()`` (this process's shard, BLAS at
        one thread) meanwhile; ``(local's result, [each worker's reply arrays])``.

        Every wait on a worker ends by a deadline (``WAIT_MIN_S``, ``WAIT_FACTOR``): past it the
        workers are killed and reaped and ``WorkerTimeout`` raised (the caller runs the step in
        this process and the next split step forks new workers)."""
        if self.owner != os.getpid():
            raise RuntimeError("these workers belong to the process this one was forked from")
        self.last_used = start = time.monotonic()
        for (k, name, _, _), view in zip(self.slots, self.params):
            view[...] = net.layers[k].params[name]
        try:
            for w, conn in enumerate(self.conns, start=1):
                _send(conn, message(w), start + WAIT_MIN_S)
        except BaseException:
            self._abort()
            raise
        blas = [(lib, lib.get_num_threads()) for lib in self.blas.lib_controllers]
        error = None
        try:
            for lib, _ in blas:                         # one BLAS thread while the workers run
                lib.set_num_threads(1)
            mine = local()
        except BaseException as exc:                    # the workers' replies are read all the same
            error = exc
        finally:
            for lib, threads in blas:
                if threads is not None:
                    lib.set_num_threads(threads)
        limit = max(WAIT_MIN_S, WAIT_FACTOR * (time.monotonic() - start))
        deadline = time.monotonic() + limit
        replies = []
        try:
            for conn in self.conns:                     # every worker answered, whatever happened
                try:
                    replies.append(_unpack(_recv(conn, deadline)))
                except (EOFError, OSError) as exc:
                    replies.append(({"op": "error", "message": f"the worker process ended ({exc!r})"}, []))
        except BaseException as exc:                    # WorkerTimeout, KeyboardInterrupt
            self._abort()
            if isinstance(exc, WorkerTimeout):
                raise WorkerTimeout(f"{exc} (waited {time.monotonic() - start:.1f} s, limit {limit:.1f} s "
                                    "after this process's own shard); the split's workers were killed") from None
            raise
        if error is not None:
            raise error
        for header, _ in replies:
            if header["op"] != "ok":
                raise RuntimeError(header["message"])
        return mine, [arrays for _, arrays in replies]

    def _abort(self):
        """Kill and reap every worker now (a hung one does not answer "quit"); the split is unusable."""
        _kill(self.pids)
        self._finalizer.detach()                        # reaped already
        for conn in self.conns:
            try:
                conn.close()
            except OSError:
                pass
        self.shards = -1                                # matches() is False from now on

    def run(self, net, xb, yb):
        """``(loss, output)`` of the batch; the layers' ``grads`` hold the batch's gradients."""
        bounds, weights = _shard_bounds(xb.shape[0], self.shards)
        err, modes, states = np.geterr(), _modes(net), _random_states(net)
        parts = [(xb[bounds[w]:bounds[w + 1]], yb[bounds[w]:bounds[w + 1]]) for w in range(self.shards)]
        mine, replies = self._side_by_side(
            net, lambda w: self._shard_message(w, {"op": "step", "err": err, "weight": weights[w], "modes": modes,
                                              "random": states, "offset": bounds[w]}, parts[w]),
            lambda: _forward_backward(net._runner, net.layers, net.loss_fn, parts[0][0], parts[0][1],
                                      weights[0]))
        results = [mine] + [(arrays[0], arrays[1]) for arrays in replies]
        for i, (k, name, _, _) in enumerate(self.slots):
            layer = net.layers[k]
            layer.grads[name] = _summed([layer.grads[name]] + [g[i] for g in self.grads])
        loss = sum(np.asarray(r[0]) * wt for r, wt in zip(results, weights))
        return loss, np.concatenate([r[1] for r in results], axis=0)

    def forward(self, net, xb):
        """The output of the batch (``predict``, ``evaluate``): the shards' forward passes side by side."""
        bounds, _ = _shard_bounds(xb.shape[0], self.shards)
        err, modes = np.geterr(), _modes(net)
        mine, replies = self._side_by_side(
            net, lambda w: self._shard_message(w, {"op": "forward", "err": err, "modes": modes},
                                               [xb[bounds[w]:bounds[w + 1]]]),
            lambda: _forward(net._runner, net.layers, xb[:bounds[1]]))
        return np.concatenate([mine] + [arrays[0] for arrays in replies], axis=0)
