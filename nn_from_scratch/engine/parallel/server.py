"""Workers started from a clean state: a small fork server in a fresh interpreter.

Forking a process copies its memory, locks included, but only the forking thread.  When another
thread holds a lock at that moment (OpenBLAS's, inside ``np.linalg.svd`` in a daemon thread of the
user's, Jupyter's helper threads), the child's copy is locked for ever and the worker hangs at its
first BLAS call.  So workers are forked directly from this process only while it runs no thread
but the calling one and the split's own (``allowed.alone``); otherwise they come from this server:

* **Start** (once per process, the first time it is needed): ``subprocess`` runs a fresh Python
  (an exec: nothing of this process's memory or locks comes along) with BLAS at one thread, in a
  session of its own (a Ctrl-C in the terminal or notebook is the parent's).  It imports this
  package and waits on a ``SOCK_SEQPACKET`` socket.  It has a single thread, so it may fork.
* **Protocol** (``wire.pack`` messages, no pickle; file descriptors ride along as ``SCM_RIGHTS``):

  - ``fork`` + [shared-memory fd]: the server forks a worker holding that memory and one end of a
    new socket pair; reply ``forked`` {pid} + [the other end];
  - ``finish`` {pids, grace}: the server waits up to ``grace`` seconds for those workers to end
    (they were told to quit), kills the rest with SIGKILL and reaps them all; reply ``done``.

* **The worker** (``serve_worker``) reads one ``build`` message from this process: the network's
  recipe (``rebuild.py``), the shared-memory layout, the engine's settings; it builds its layers,
  answers ``ready`` and runs ``workers.worker_loop`` as a forked worker does.
* **Lifetime**: the server reaps workers that end by themselves; when this process ends (its end
  of the socket closes, even by ``kill -9``) the server kills its workers and exits.  A process
  forked from this one (a user's ``multiprocessing``) never uses its parent's server
  (``after_fork_in_child``): it starts its own when it needs one.

Only workers' pids in this server's care are ever signalled (the server checks), so a pid
reused by another process is never killed.
"""
import atexit
import json
import mmap
import os
import select
import signal
import socket
import subprocess
import sys
import threading
import time
import types

import numpy as np

from . import memory, policy, wire

__all__ = ["Server", "get", "serve_worker", "main", "START_S"]

#: the longest the start of the server (a fresh interpreter importing the package) may take
START_S = 60.0
#: the largest control message (a fork request, a pid list)
MAX_MESSAGE = 1 << 16

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
BOOT = ("import sys; sys.path.insert(0, sys.argv[1]); "
        "from nn_from_scratch.engine.parallel import server; server.main(int(sys.argv[2]))")


def _request(sock, header, fds=(), deadline=None):
    """Send ``header`` (+ ``fds``) and return the reply ``(header, fds)``, by ``deadline``."""
    sock.settimeout(None if deadline is None else max(deadline - time.monotonic(), 0.001))
    try:
        socket.send_fds(sock, [wire.pack(header)], list(fds))
        data, got, _, _ = socket.recv_fds(sock, MAX_MESSAGE, 4)
    except socket.timeout:
        raise wire.WorkerTimeout(f"the split's worker server did not answer {header['op']!r} in time") from None
    if not data:
        raise EOFError("the split's worker server ended")
    return wire.unpack(data)[0], got


class Server:
    """This process's end of a running fork server (see the module docstring)."""

    def __init__(self):
        mine, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        env = dict(os.environ, OPENBLAS_NUM_THREADS="1", OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
        try:
            self.proc = subprocess.Popen([sys.executable, "-c", BOOT, ROOT, str(theirs.fileno())],
                                         pass_fds=[theirs.fileno()], stdin=subprocess.DEVNULL,
                                         start_new_session=True, env=env)
        finally:
            theirs.close()
        self.sock, self.owner, self.lock = mine, os.getpid(), threading.Lock()
        try:
            header, _ = self._receive(time.monotonic() + START_S)
            if header.get("op") != "ready":
                raise RuntimeError(f"the split's worker server answered {header!r}")
        except BaseException:
            self.close()
            raise

    def _receive(self, deadline):
        self.sock.settimeout(max(deadline - time.monotonic(), 0.001))
        try:
            data = self.sock.recv(MAX_MESSAGE)
        except socket.timeout:
            raise wire.WorkerTimeout("the split's worker server did not start in time") from None
        if not data:
            raise EOFError(f"the split's worker server ended at its start (exit status {self.proc.poll()})")
        return wire.unpack(data)

    def alive(self):
        return self.owner == os.getpid() and self.proc.poll() is None

    def start(self, memfd, deadline):
        """Fork a worker holding the shared memory ``memfd``: ``(pid, socket fd to it)``."""
        with self.lock:
            header, fds = _request(self.sock, {"op": "fork"}, [memfd], deadline)
        if header.get("op") != "forked" or len(fds) != 1:
            for fd in fds:
                os.close(fd)
            raise RuntimeError(f"the split's worker server could not start a worker: {header!r}")
        return header["pid"], fds[0]

    def finish(self, pids, grace):
        """Let workers ``pids`` end within ``grace`` seconds, then kill and reap the rest (server side)."""
        if not pids or not self.alive():
            return
        with self.lock:
            try:
                _request(self.sock, {"op": "finish", "pids": [int(p) for p in pids], "grace": float(grace)},
                         deadline=time.monotonic() + grace + policy.QUIT_GRACE_S + 5.0)
            except (OSError, EOFError, wire.WorkerTimeout):
                pass                # a server gone takes its workers with it

    def close(self):
        """End the server (it kills its workers) and reap it."""
        try:
            self.sock.close()
        except OSError:
            pass
        if self.owner == os.getpid():
            try:
                self.proc.wait(timeout=policy.QUIT_GRACE_S + 1.0)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


SERVER = None
SERVER_LOCK = threading.Lock()
#: why the server could not be started in this process (then it is not tried again: ``usable``)
FAILED = None


def usable():
    """Has starting the server not failed in this process (``FAILED``)?"""
    return FAILED is None or FAILED[0] != os.getpid()


def get():
    """This process's fork server, started when first asked for (or again after it ended)."""
    global SERVER, FAILED
    with SERVER_LOCK:
        if SERVER is None or not SERVER.alive():
            if SERVER is not None and SERVER.owner == os.getpid():
                SERVER.close()
            SERVER = None
            try:
                SERVER = Server()
            except BaseException as exc:
                FAILED = (os.getpid(), repr(exc))
                raise
        return SERVER


def close_at_exit():
    """At exit: end this process's server (it would end at its socket's EOF anyway) and reap it."""
    if SERVER is not None and SERVER.owner == os.getpid():
        SERVER.close()


atexit.register(close_at_exit)


def after_fork_in_child():
    """In a process forked from this one: the parent's server is not ours (its socket closed here,
    nothing said to it)."""
    global SERVER, SERVER_LOCK
    SERVER_LOCK = threading.Lock()
    if SERVER is not None:
        try:
            SERVER.sock.close()
        except OSError:
            pass
        SERVER = None


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=after_fork_in_child)


# ---------------------------------------------------------------------------------- server side
def serve_worker(conn_fd, memfd):
    """A worker forked by the server: build the layers from the ``build`` message, then serve steps."""
    from multiprocessing.connection import Connection

    from ..settings import SETTINGS
    from . import rebuild, workers
    conn = Connection(conn_fd)
    if not wire.wait(conn, START_S):
        return
    header, _ = wire.unpack(conn.recv_bytes())
    if header.get("op") != "build":
        return
    try:
        layers, loss = rebuild.build(header["recipe"])
        for name, value in header["policy"].items():
            setattr(policy, name, value)
        SETTINGS.update(header["settings"])
        mem = mmap.mmap(memfd, header["size"])
        slots = [(k, name, tuple(shape), np.dtype(dtype)) for k, name, shape, dtype in header["slots"]]
        params, _ = memory.views(mem, slots, 0)
        grads, _ = memory.views(mem, slots, header["grads_at"])
        bslots = [(k, name, tuple(shape), np.dtype(dtype)) for k, name, shape, dtype in header["buffer_slots"]]
        buffers, _ = memory.views(mem, bslots, header["buffers_at"])
        start, size = header["inbox"]
        inbox = memoryview(mem)[start:start + size]
    except BaseException as exc:                        # reported: the caller runs its steps whole
        conn.send_bytes(wire.pack({"op": "error", "message": f"{type(exc).__name__}: {exc}"}))
        return
    finally:
        os.close(memfd)
    conn.send_bytes(wire.pack({"op": "ready"}))
    workers.worker_loop(conn, types.SimpleNamespace(layers=layers, loss_fn=loss), slots, params, grads, inbox,
                        bslots, buffers)


def _finish(children, pids, grace):
    end = time.monotonic() + grace
    left = [p for p in pids if p in children]
    while left and time.monotonic() < end:
        left = [p for p in left if not _reaped(children, p)]
        if left:
            time.sleep(0.002)
    for pid in left:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        try:
            os.waitpid(pid, 0)
        except ChildProcessError:
            pass
        children.discard(pid)


def _reaped(children, pid):
    try:
        done, _ = os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:
        done = pid
    if done == pid:
        children.discard(pid)
        return True
    return False


def main(fd):
    """The server's loop (in the fresh interpreter ``Server`` starts)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    from . import workers  # noqa: F401 - imported before any fork: the workers need not import it
    sock = socket.socket(fileno=fd)
    children = set()
    sock.send(wire.pack({"op": "ready", "pid": os.getpid()}))
    try:
        while True:
            for pid in list(children):                  # workers that ended by themselves (idle)
                _reaped(children, pid)
            if not select.select([sock], [], [], 1.0)[0]:
                continue
            data, fds, _, _ = socket.recv_fds(sock, MAX_MESSAGE, 4)
            if not data:
                break                                   # this server's owner ended
            header = wire.unpack(data)[0]
            if header["op"] == "fork" and len(fds) == 1:
                ours, theirs = socket.socketpair()
                pid = os.fork()
                if pid == 0:                            # the worker: never returns
                    code = 0
                    try:
                        sock.close()
                        ours.close()
                        serve_worker(theirs.detach(), fds[0])
                    except BaseException:               # pragma: no cover - the parent sees EOF
                        code = 1
                    finally:
                        os._exit(code)
                theirs.close()
                os.close(fds[0])
                children.add(pid)
                socket.send_fds(sock, [wire.pack({"op": "forked", "pid": pid})], [ours.fileno()])
                ours.close()
            elif header["op"] == "finish":
                for f in fds:
                    os.close(f)
                _finish(children, set(header["pids"]), header["grace"])
                sock.send(wire.pack({"op": "done"}))
            else:
                for f in fds:
                    os.close(f)
                sock.send(wire.pack({"op": "error", "message": f"unknown request {json.dumps(header)[:200]}"}))
    finally:
        _finish(children, set(children), 0.0)
