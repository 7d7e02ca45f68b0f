"""The forked workers' side and their lifecycle: the worker loop, and reaping, killing and
disowning workers.

A worker stops when told ("quit"), when its pipe closes, or after ``policy.WORKER_IDLE_S``
seconds without a message.  ``shutdown`` tells a split's workers to stop and reaps them (killing
any that outstays ``policy.QUIT_GRACE_S``); ``reap`` collects those that ended by themselves.  A
process forked from this one (a user's ``multiprocessing``) disowns the workers it inherits
(``after_fork_in_child``): only the process that forked them talks to them, stops or reaps them.
"""
import os
import signal
import time
import weakref

import numpy as np

from ..runner import Runner
from . import allowed, identity, memory, policy, sharding, sync, wire

__all__ = ["worker_loop", "LIVE", "shutdown", "kill", "reap", "ended", "after_fork_in_child"]


def worker_loop(conn, net, slots, params, grads, inbox, bslots=(), buffers=()):
    """The loop of a forked worker: shards in (its shared ``inbox``, or the pipe when a shard
    does not fit), gradients (shared memory) and outputs (pipe) out.

    Messages: "step" (a shard's forward and backward), "forward" (a shard's output only: ``predict``
    and ``evaluate``), "rest" (between ``fit`` calls: drop the caches), "quit".
    Without a message for ``policy.WORKER_IDLE_S`` seconds the worker ends by itself.  Layers that
    couple the samples (``BatchNorm``) exchange their partial statistics with this process in the
    middle of a step ("sync" messages, ``sync.py``); their moving statistics are the parent's
    (``buffers``, shared memory), which only the parent updates.
    """
    signal.signal(signal.SIGINT, signal.SIG_IGN)       # Ctrl-C is the parent's to handle
    runner = Runner()                                   # this worker's own scratch buffers
    for (k, name, _, _), view in zip(slots, params):    # this process's layers read the parent's
        net.layers[k]._params[name] = view              # parameters from the shared mirror
    for (k, name, _, _), view in zip(bslots, buffers):
        net.layers[k]._buffers[name] = view
    if sync.install(net.layers, sync.WorkerExchange(conn), owner=False):
        runner = sync.SplitRunner()
    from threadpoolctl import threadpool_limits
    with threadpool_limits(limits=1, user_api="blas"):
        while True:
            try:
                if not wire.wait(conn, policy.WORKER_IDLE_S):
                    break
                header, arrays = wire.unpack(conn.recv_bytes())
                if "inbox" in header:                   # the shard is in shared memory
                    arrays = memory.region(inbox, [(shape, dtype) for dtype, shape in header["inbox"]], 0)[0]
            except (EOFError, OSError):
                break
            if header["op"] == "rest":
                for node in list(net.layers) + [net.loss_fn]:
                    node.clear_cache()
                continue
            if header["op"] not in ("step", "forward"):
                break
            identity.set_modes(net.layers, header["modes"])
            identity.set_random_states(net.layers, header.get("random", ()), header.get("offset", 0))
            try:
                with np.errstate(**header["err"]):
                    if header["op"] == "forward":
                        reply = wire.pack({"op": "ok"}, [sharding.forward(runner, net.layers, arrays[0])])
                    else:
                        loss, out = sharding.forward_backward(runner, net.layers, net.loss_fn, arrays[0], arrays[1],
                                                      header["weight"])
                        for (k, name, _, _), g in zip(slots, grads):
                            g[...] = net.layers[k].grads[name]
                        reply = wire.pack({"op": "ok"}, [np.asarray(loss), out])
            except BaseException as exc:                # the parent re-runs the batch as one
                reply = wire.pack({"op": "error", "message": f"{type(exc).__name__}: {exc}"})
            conn.send_bytes(reply)


#: the ForkedSteps alive in this process (a new worker closes its inherited copies of their pipes)
LIVE = weakref.WeakSet()


def ended(pid):
    """Reap worker ``pid`` if it has exited; True when it is gone (or not this process's child)."""
    try:
        done, _ = os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:
        return True
    return done == pid


def kill(pids, server=None):
    """Kill workers ``pids`` (a stopped one too) and reap them (``server``: the fork server whose
    workers they are does it)."""
    if server is not None:
        server.finish(list(pids), 0.0)
        return
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


def shutdown(conns, pids, owner, server=None):
    """Tell the workers to stop and reap them, killing any that has not ended within
    ``policy.QUIT_GRACE_S`` (also run when the step is garbage-collected, and at exit).  Only in the
    process that forked them: a process forked from it (a user's ``multiprocessing``) must not
    stop its parent's workers.  ``server``: the fork server that started them, which waits, kills
    and reaps in their stead (they are its children)."""
    if os.getpid() != owner:
        return
    for conn in conns:
        try:
            conn.send_bytes(wire.pack({"op": "quit"}))
        except (OSError, ValueError):
            pass
        try:
            conn.close()
        except OSError:
            pass
    if server is not None:
        server.finish(list(pids), policy.QUIT_GRACE_S)
        return
    end = time.monotonic() + policy.QUIT_GRACE_S
    left = [pid for pid in pids if not ended(pid)]
    while left and time.monotonic() < end:
        time.sleep(0.002)
        left = [pid for pid in left if not ended(pid)]
    kill(left)


def reap():
    """Reap the workers of live splits that ended by themselves (``policy.WORKER_IDLE_S``): no zombies
    are left for longer than until the next split step is made."""
    me = os.getpid()
    for step in list(LIVE):
        if step.owner == me and step._finalizer.alive and step.server is None:   # a reaped pid leaves
            step.pids[:] = [pid for pid in step.pids if not ended(pid)]


def after_fork_in_child():
    """In any process forked from this one: the splits inherited belong to the parent.  Their
    pipe ends are closed here (the parent's workers keep talking to the parent only) and they
    are never used, closed or reaped here; the child forks workers of its own when it trains.
    The lock guarding forks is made anew (a fork may have happened while it was held), and only
    this thread's record of network methods it is inside survives (the others did not come)."""
    allowed.reset_after_fork()
    for step in list(LIVE):
        step._disown()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=after_fork_in_child)
