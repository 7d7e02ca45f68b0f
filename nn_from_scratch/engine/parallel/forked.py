"""Shards in forked processes (``ForkedStep``, the default on Linux).

Worker processes forked from this one, each with its own copy of the layers: no interpreter lock
is shared, so even shards of 25 samples gain (LeNet-5 on 2 cores: x1.3 at batch 50, x1.6 at 256;
benchmarks/RESULTS.md).  Parameters reach the workers through a shared-memory mirror
(``memory.py``), shards through shared-memory inboxes or the pipe, messages as ``wire.py``
writes them; the workers' loop and lifecycle are ``workers.py``'s.  Every wait on a worker ends
by a deadline (``policy.WAIT_MIN_S``), after which the workers are killed and the caller runs
the step in this process.
"""
import math
import mmap
import os
import time
import warnings
import weakref

import numpy as np

from . import allowed, identity, memory, policy, server, sharding, sync, wire, workers

__all__ = ["ForkedStep"]


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
    * Either side waits for the other's message polling for ``policy.SPIN_S`` seconds before it
      blocks (waking a blocked process cost 0.1-0.2 ms a step on the 2-vCPU VM).  This
      process runs its shard with BLAS held to one thread (the workers have the other cores).
    * Gradients are added up here as in ``ShardedStep`` (each shard's already weighted by its
      size).  ``forward`` (inference) sends a "forward" message instead and gets outputs only.
      An error in a worker comes back as a message; the caller then re-runs the batch as one.
    * Workers start by ``fork`` from this process only while it runs no other thread
      (``allowed.alone``); otherwise the fork server (``server.py``) starts them from the network's
      recipe (``rebuild.py``, given as ``recipe``) and they map the shared memory from a ``memfd``.
    * ``BatchNorm`` layers (``sync.py``): during a step the workers send their partial batch
      statistics at each such layer ("sync" messages) and wait; this process, running its own
      shard with the hook installed on the network's layers, combines them with its own and sends
      the whole batch's back.  Their moving statistics reach the workers as the parameters do.
    * The workers outlive a ``fit`` call (a fork costs ~0.1 s): the next step reuses them
      while ``matches`` holds, i.e. the network's layers, loss and their public settings
      are those the workers copied (``network_key``), the workers are alive and the split
      was used less than ``policy.REUSE_S`` seconds ago.  ``rest`` (end of ``fit``) lets the
      workers drop their caches.  ``close`` (or garbage collection, or the end of the
      interpreter) tells them to stop and waits for them; a worker also stops when its
      pipe closes or after ``policy.WORKER_IDLE_S`` seconds without a message.
    """

    kind = "processes"

    def __init__(self, net, shards, xb=None, yb=None, recipe=None):
        from threadpoolctl import ThreadpoolController
        self.shards = int(shards)
        self.key = identity.network_key(net)
        self.slots = identity.param_slots(net)
        self.bslots = identity.buffer_slots(net)        # moving statistics, read in inference mode
        self.synced = sync.has_synced(net.layers)       # BatchNorm: statistics exchanged (``sync.py``)
        self.runner = sync.SplitRunner() if self.synced else None
        self.last_used = time.monotonic()
        size = 64 + sum(-(-math.prod(s) * d.itemsize // 64) * 64 + 64 for *_, s, d in self.slots)
        bsize = sum(-(-math.prod(s) * d.itemsize // 64) * 64 + 64 for *_, s, d in self.bslots)
        # each worker's inbox holds a shard of twice the size the batch ``xb`` gives (larger: the pipe)
        self.inbox_bytes = 0
        if xb is not None and yb is not None:
            shard = -(-len(xb) // self.shards)
            self.inbox_bytes = memory.layout([((2 * shard,) + a.shape[1:], a.dtype) for a in (xb, yb)], 0)[1]
        total = size * self.shards + bsize + self.inbox_bytes * (self.shards - 1)
        #: how the workers start: forked from this process ("fork", only while it runs no other thread:
        #: ``allowed.alone``) or by the clean fork server from a recipe of the network ("server")
        self.launch = "fork" if recipe is None else "server"
        self.server = server.get() if recipe is not None else None
        memfd = None
        if self.server is None:
            self.mem = mmap.mmap(-1, total)             # MAP_SHARED|ANONYMOUS: shared across fork
        else:                                           # a file the server's workers are handed
            memfd = os.memfd_create("nn_from_scratch-split", os.MFD_CLOEXEC)
            os.ftruncate(memfd, total)
            self.mem = mmap.mmap(memfd, total)
        self.params, end = memory.views(self.mem, self.slots, 0)
        self.buffers_at = end
        self.buffers, end = memory.views(self.mem, self.bslots, end)
        self.grads, self.grad_starts = [], []
        for _ in range(1, self.shards):
            self.grad_starts.append(end)
            views, end = memory.views(self.mem, self.slots, end)
            self.grads.append(views)
        self.inbox_start = start = -(-end // 64) * 64
        self.inboxes = [memoryview(self.mem)[start + w * self.inbox_bytes:start + (w + 1) * self.inbox_bytes]
                        for w in range(self.shards - 1)]
        self.conns, self.pids = [], []
        self.owner = os.getpid()                        # the process whose workers these are
        # registered first, on the lists filled below: a start failing half-way still stops the others
        self._finalizer = weakref.finalize(self, workers.shutdown, self.conns, self.pids, self.owner, self.server)
        workers.LIVE.add(self)
        try:
            if self.server is None:
                self._fork(net)
            else:
                self._serve(recipe, memfd, total)
        except BaseException:
            self._abort()
            raise
        finally:
            if memfd is not None:
                os.close(memfd)
        self.blas = ThreadpoolController().select(user_api="blas")
        self._messages = {}                             # (worker, shapes, ...) -> (inbox views, message)

    def _fork(self, net):
        """Fork the workers from this process (each inherits ``net`` and the shared memory)."""
        import multiprocessing
        for w in range(1, self.shards):
            parent_end, child_end = multiprocessing.Pipe()
            with warnings.catch_warnings():             # Python 3.12+: fork of a threaded process
                warnings.simplefilter("ignore", DeprecationWarning)
                pid = os.fork()
            if pid == 0:                                # the worker: never returns
                code = 0
                try:
                    parent_end.close()
                    # this process's ends of every worker's pipe, this split's (in workers.LIVE already)
                    # and other networks' (a worker must see EOF when its own parent end closes)
                    for c in [c for step in list(workers.LIVE) for c in step.conns]:
                        c.close()
                    workers.worker_loop(child_end, net, self.slots, self.params, self.grads[w - 1],
                                        self.inboxes[w - 1], self.bslots, self.buffers)
                except BaseException:                   # pragma: no cover - reported by the parent's EOF
                    code = 1
                finally:
                    os._exit(code)
            child_end.close()
            self.conns.append(parent_end)
            self.pids.append(pid)

    def _serve(self, recipe, memfd, total):
        """Have the fork server start the workers; each builds its layers from ``recipe`` (``rebuild.py``)
        and maps the shared memory ``memfd``; wait until every one is ready."""
        from multiprocessing.connection import Connection
        from ..settings import SETTINGS
        deadline = time.monotonic() + policy.WAIT_MIN_S
        slots = [[k, name, list(shape), dtype.str] for k, name, shape, dtype in self.slots]
        bslots = [[k, name, list(shape), dtype.str] for k, name, shape, dtype in self.bslots]
        settings = {name: getattr(policy, name) for name in ("SPIN_S", "WORKER_IDLE_S")}
        for w in range(1, self.shards):
            pid, fd = self.server.start(memfd, deadline)
            self.pids.append(pid)
            conn = Connection(fd)
            self.conns.append(conn)
            wire.send(conn, wire.pack({"op": "build", "recipe": recipe, "slots": slots, "size": total,
                                       "buffer_slots": bslots, "buffers_at": self.buffers_at,
                                       "grads_at": self.grad_starts[w - 1], "policy": settings,
                                       "settings": dict(SETTINGS),
                                       "inbox": [self.inbox_start + (w - 1) * self.inbox_bytes, self.inbox_bytes]}),
                      deadline)
        for conn in self.conns:
            header, _ = wire.unpack(wire.recv(conn, deadline))
            if header.get("op") != "ready":
                raise RuntimeError(f"a worker could not build its copy of the network: {header.get('message')}")

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
        if self.owner != os.getpid() or shards != self.shards or time.monotonic() - self.last_used > policy.REUSE_S:
            return False
        if any(conn.poll() for conn in self.conns):     # readable between steps: the worker ended
            return False
        return identity.network_key(net) == self.key

    def rest(self):
        """Between ``fit`` calls: the workers drop their layers' caches (their memory)."""
        if self.owner != os.getpid():
            return
        for conn in self.conns:
            try:
                conn.send_bytes(wire.pack({"op": "rest"}))
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
            if memory.layout(specs, 0)[1] > self.inbox_bytes:
                return wire.pack(header, arrays)
            if len(self._messages) >= 64:
                self._messages.clear()
            inbox = [[a.dtype.str, list(a.shape)] for a in arrays]
            views = memory.region(self.inboxes[w - 1], specs, 0)[0]
            held = self._messages[key] = (views, wire.pack(dict(header, inbox=inbox)))
        views, message = held
        for view, a in zip(views, arrays):
            view[...] = a
        return message

    def _side_by_side(self, net, message, local):
        """Start every worker ``w`` on ``message(w)``, run ``local()`` (this process's shard, BLAS at
        one thread) meanwhile; ``(local's result, [each worker's reply arrays])``.

        Every wait on a worker ends by a deadline (``policy.WAIT_MIN_S``, ``policy.WAIT_FACTOR``): past it the
        workers are killed and reaped and ``WorkerTimeout`` raised (the caller runs the step in
        this process and the next split step forks new workers)."""
        if self.owner != os.getpid():
            raise RuntimeError("these workers belong to the process this one was forked from")
        self.last_used = start = time.monotonic()
        for (k, name, _, _), view in zip(self.slots, self.params):
            view[...] = net.layers[k].params[name]
        for (k, name, _, _), view in zip(self.bslots, self.buffers):
            view[...] = net.layers[k].buffers[name]
        try:
            for w, conn in enumerate(self.conns, start=1):
                wire.send(conn, message(w), start + policy.WAIT_MIN_S)
        except BaseException:
            self._abort()
            raise
        # one BLAS thread for this process's shard while the workers run; never while another thread
        # could be inside BLAS (setting its thread count under a running call can hang: ``allowed.py``)
        blas = [(lib, lib.get_num_threads()) for lib in self.blas.lib_controllers] if allowed.alone() else []
        error = None
        try:
            for lib, _ in blas:                         # one BLAS thread while the workers run
                lib.set_num_threads(1)
            if self.synced:                             # this shard combines the exchanged statistics
                with sync.installed(net.layers, sync.ParentExchange(self.conns)):
                    mine = local()
            else:
                mine = local()
        except BaseException as exc:                    # the workers' replies are read all the same
            error = exc
        finally:
            for lib, threads in blas:
                if threads is not None:
                    lib.set_num_threads(threads)
        if error is not None and self.synced:           # workers may wait on an exchange that never comes
            self._abort()
            raise error
        limit = max(policy.WAIT_MIN_S, policy.WAIT_FACTOR * (time.monotonic() - start))
        deadline = time.monotonic() + limit
        replies = []
        try:
            for conn in self.conns:                     # every worker answered, whatever happened
                try:
                    replies.append(wire.unpack(wire.recv(conn, deadline)))
                except (EOFError, OSError) as exc:
                    replies.append(({"op": "error", "message": f"the worker process ended ({exc!r})"}, []))
        except BaseException as exc:                    # wire.WorkerTimeout, KeyboardInterrupt
            self._abort()
            if isinstance(exc, wire.WorkerTimeout):
                raise wire.WorkerTimeout(f"{exc} (waited {time.monotonic() - start:.1f} s, limit {limit:.1f} s "
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
        workers.kill(self.pids, self.server)
        self._finalizer.detach()                        # reaped already
        for conn in self.conns:
            try:
                conn.close()
            except OSError:
                pass
        self.shards = -1                                # matches() is False from now on

    def run(self, net, xb, yb):
        """``(loss, output)`` of the batch; the layers' ``grads`` hold the batch's gradients."""
        bounds, weights = sharding.bounds(xb.shape[0], self.shards)
        err, modes, states = np.geterr(), identity.modes(net), identity.random_states(net)
        parts = [(xb[bounds[w]:bounds[w + 1]], yb[bounds[w]:bounds[w + 1]]) for w in range(self.shards)]
        mine, replies = self._side_by_side(
            net, lambda w: self._shard_message(w, {"op": "step", "err": err, "weight": weights[w], "modes": modes,
                                              "random": states, "offset": bounds[w]}, parts[w]),
            lambda: sharding.forward_backward(self.runner or net.runner, net.layers, net.loss_fn, parts[0][0],
                                              parts[0][1], weights[0]))
        results = [mine] + [(arrays[0], arrays[1]) for arrays in replies]
        for i, (k, name, _, _) in enumerate(self.slots):
            layer = net.layers[k]
            layer.grads[name] = sharding.summed([layer.grads[name]] + [g[i] for g in self.grads])
        loss = sum(np.asarray(r[0]) * wt for r, wt in zip(results, weights))
        return loss, np.concatenate([r[1] for r in results], axis=0)

    def forward(self, net, xb):
        """The output of the batch (``predict``, ``evaluate``): the shards' forward passes side by side."""
        bounds, _ = sharding.bounds(xb.shape[0], self.shards)
        err, modes = np.geterr(), identity.modes(net)
        mine, replies = self._side_by_side(
            net, lambda w: self._shard_message(w, {"op": "forward", "err": err, "modes": modes},
                                               [xb[bounds[w]:bounds[w + 1]]]),
            lambda: sharding.forward(self.runner or net.runner, net.layers, xb[:bounds[1]]))
        return np.concatenate([mine] + [arrays[0] for arrays in replies], axis=0)
