"""Where a step may split its batch, and whether its workers may be forked from this process.

``activity`` (a context manager around every public method of a network) records which threads
are inside one; ``split_allowed`` says whether the calling thread may split now; ``alone`` whether
this process runs no other thread, so that it may fork workers and set BLAS's thread count.
"""
import threading

__all__ = ["activity", "split_allowed", "alone", "reset_after_fork"]

# Forking a process while another thread is inside a multi-threaded OpenBLAS call can hang
# for ever: OpenBLAS's pre-fork handler joins its thread pool, which is busy with that call
# (``fit`` in a thread while the main thread ran ``np.linalg.svd`` hung 8 runs in 21).
# Changing BLAS's process-wide thread count under another thread's call is no better.  So the
# split step (forking, keeping workers, holding BLAS to one thread) runs only where nothing
# else can be in BLAS: in the main thread, while every other Python thread is a daemon (the
# helper threads of Jupyter, tqdm, ...) or one of the split's own, and no other thread is
# inside a network's method (``activity``).  Anywhere else a step runs whole in the calling
# thread: the same numbers as ``workers=1``, just not split.  A daemon thread may still be
# inside BLAS (``np.linalg.svd`` in a loop; Jupyter's kernel always has daemon threads), so
# workers are forked from this process, and BLAS's thread count changed, only while this
# process runs no other thread at all (``alone``); otherwise they come from a fork server
# started from a clean state (``server.py``), which no held lock can reach.
ACTIVE = {}                        # thread ident -> depth of network methods it is inside
ACTIVE_LOCK = threading.Lock()     # held while checking and forking: a thread entering waits


class activity:
    """Context manager around a network's public methods: records that this thread is inside
    one (``split_allowed`` refuses to split while another thread is); waits while a fork runs."""

    __slots__ = ("ident",)

    def __enter__(self):
        self.ident = threading.get_ident()
        with ACTIVE_LOCK:
            ACTIVE[self.ident] = ACTIVE.get(self.ident, 0) + 1
        return self

    def __exit__(self, *exc):
        with ACTIVE_LOCK:
            depth = ACTIVE.get(self.ident, 1) - 1
            if depth:
                ACTIVE[self.ident] = depth
            else:
                ACTIVE.pop(self.ident, None)
        return False


def others_quiet():
    """No other thread inside a network method, and every other live thread a daemon or a
    split's own (``_ACTIVE_LOCK`` held by the caller, or a snapshot is good enough)."""
    me = threading.get_ident()
    if any(ident != me for ident in ACTIVE):
        return False
    for t in threading.enumerate():
        if t.ident == me or t.daemon or t.name.startswith("nn_shard"):
            continue
        return False
    return True


def alone():
    """Does this process run no Python thread but the calling one and the split's own idle pool
    (``nn_shard`` threads)?  Then nothing else can hold a lock at a fork, nor be inside BLAS."""
    me = threading.get_ident()
    return all(t.ident == me or t.name.startswith("nn_shard") for t in threading.enumerate())


def split_allowed():
    """May a step split its batch here and now (see the comment above ``activity``)?  True in
    the main thread while no other non-daemon thread is alive and no other thread is inside a
    network's method."""
    return threading.current_thread() is threading.main_thread() and others_quiet()


def reset_after_fork():
    """In a forked child: the lock guarding forks is made anew (a fork may have happened while it
    was held), and only this thread's record of network methods it is inside survives (the others
    did not come)."""
    global ACTIVE_LOCK
    ACTIVE_LOCK = threading.Lock()
    me = threading.get_ident()
    for ident in [i for i in ACTIVE if i != me]:
        del ACTIVE[ident]
