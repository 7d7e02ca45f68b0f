"""One network used from several threads: inference serialized, concurrent training refused.

A layer keeps what its ``backward`` needs in its own caches (``_cache``), written by every
``forward``; two threads running the same layers at once would read each other's caches
(two threads calling ``predict`` on one network got 36-54 of 60 predictions wrong).
So each network has a guard:

* ``predict``, ``evaluate``, ``layer_outputs``, ``input_gradient``, ``gradients`` take the
  network's lock: calls from several threads run one after the other, each with the right
  answer.  (The lock costs well under a microsecond a call; the alternative, inference that
  writes no cache, would change every layer's ``forward``.  For inference that runs side by
  side, give each thread its own network: ``NeuralNetwork.load`` of one saved file.)
* ``fit`` and ``train_step`` (training) are refused with ``ConcurrentUseError`` while another
  thread trains the same network, and so are the inference methods while another thread
  trains it (they would see its layers half-way through a step).  The thread that trains may
  call anything on the network (callbacks do).

The guard also records, for ``parallel.split_allowed``, that this thread is inside a network's
method: batches are split over worker processes only while no other thread is.
"""
import functools
import threading

from ..engine import parallel

__all__ = ["ConcurrentUseError", "guarded"]


class ConcurrentUseError(RuntimeError):
    """A network is being trained by another thread."""


class _Guard:
    __slots__ = ("lock", "state", "trainer", "trainer_name")

    def __init__(self):
        self.lock = threading.RLock()        # held during every guarded call
        self.state = threading.Lock()        # guards ``trainer``
        self.trainer = None                  # ident of the thread training the network
        self.trainer_name = None

    def __deepcopy__(self, memo):           # a copy of a network is another network
        return _Guard()


_CREATE = threading.Lock()


def _guard_of(net):
    guard = net.__dict__.get("_guard")
    if guard is None:
        with _CREATE:
            guard = net.__dict__.setdefault("_guard", _Guard())
    return guard


def _refuse(net, guard, what):
    raise ConcurrentUseError(
        f"{net.name}: {what} was called from thread {threading.current_thread().name!r} while thread "
        f"{guard.trainer_name!r} is training this network; one network trains in one thread at a time "
        "(wait for its fit to return, or build a second network)")


def guarded(training):
    """Decorator for a ``NeuralNetwork`` method: ``training=True`` for ``fit``/``train_step``."""
    def decorate(method):
        what = method.__name__

        @functools.wraps(method)
        def call(net, *args, **kwargs):
            guard = _guard_of(net)
            me = threading.get_ident()
            if training:
                with guard.state:
                    if guard.trainer is not None and guard.trainer != me:
                        _refuse(net, guard, what)
                    outer = guard.trainer is None
                    if outer:
                        guard.trainer, guard.trainer_name = me, threading.current_thread().name
                try:
                    with guard.lock, parallel.activity():
                        return method(net, *args, **kwargs)
                finally:
                    if outer:
                        with guard.state:
                            guard.trainer = guard.trainer_name = None
            trainer = guard.trainer
            if trainer is not None and trainer != me:
                _refuse(net, guard, what)
            with guard.lock, parallel.activity():
                return method(net, *args, **kwargs)
        return call
    return decorate
