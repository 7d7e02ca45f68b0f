"""Array backend: NumPy on the CPU, CuPy on an NVIDIA GPU.

This is the only module that decides which array library is used. Every other
module gets its array module from the data it is handed::

    xp = get_array_module(x)      # numpy or cupy, whichever owns ``x``
    y = xp.maximum(x, 0)

so one code path serves both libraries. The *default* backend (``use``, or the
environment variable ``NN_FROM_SCRATCH_BACKEND``) only decides where *new*
arrays are created: parameters at construction time and data batches at the
edges (``to_device``).

Host <-> device traffic goes through three functions only, and each counts
what it does (``transfer_counts``):

* ``to_device(a)``    host -> device (a data batch, a parameter at construction);
* ``to_numpy(a)``     device -> host of a whole array (predictions, saving);
* ``read_to_host(*values, why=...)`` / ``read_scalars``: the figures the
  trainer shows or checks (loss, accuracy, label range), all values of one
  call in ONE device -> host copy.

Everything else stays on the array's own device: no ``float()``, ``int()``,
``bool()``, ``.item()`` or ``print`` of a device array anywhere in the
package.  ``no_implicit_reads()`` turns that rule into an error on CuPy (any
device synchronisation outside ``read_to_host``/``to_numpy`` raises
``cupyx.DeviceSynchronized``); the GPU tests train under it.
"""
import collections
import contextlib
import os
import sys
import warnings

import numpy

__all__ = [
    "BackendError", "use", "current", "xp", "get_array_module", "to_numpy",
    "to_device", "cupy_available", "cupy_unavailable_reason", "is_device_array", "ENV_VAR",
    "read_to_host", "read_scalars", "transfer_counts", "reset_transfer_counts", "no_implicit_reads",
    "sync_detection_available",
]

ENV_VAR = "NN_FROM_SCRATCH_BACKEND"
_NAMES = ("numpy", "cupy")
_state = {"name": None, "strict": 0}


class BackendError(RuntimeError):
    """The requested backend cannot be used on this machine."""


def _import_cupy():
    """Import CuPy and check that a GPU is usable; raise BackendError if not."""
    try:
        import cupy  # noqa: PLC0415  (optional dependency, imported lazily)
    except ImportError as exc:
        raise BackendError(
            "backend 'cupy' was requested but CuPy is not installed; install the GPU "
            "extra, e.g. `pip install -e \".[gpu]\"` (cupy-cuda12x), or use backend 'numpy'"
        ) from exc
    try:
        n = cupy.cuda.runtime.getDeviceCount()
    except Exception as exc:  # CUDARuntimeError, missing driver, ...
        raise BackendError(
            f"backend 'cupy' was requested but no CUDA GPU is usable: {exc}"
        ) from exc
    if n < 1:
        raise BackendError("backend 'cupy' was requested but no CUDA GPU was found")
    return cupy


def cupy_unavailable_reason():
    """``None`` when CuPy and a CUDA GPU are usable, else why not (the BackendError text)."""
    try:
        _import_cupy()
    except BackendError as exc:
        return str(exc)
    return None


def cupy_available():
    """True when CuPy imports and at least one CUDA GPU answers."""
    return cupy_unavailable_reason() is None


def use(name):
    """Select the default backend for new arrays: ``'numpy'`` or ``'cupy'``.

    Raises BackendError (naming the problem) when CuPy or a GPU is missing.
    Returns the array module.
    """
    if name not in _NAMES:
        raise BackendError(f"unknown backend {name!r}; expected one of {_NAMES}")
    if name == "cupy":
        _import_cupy()
    _state["name"] = name
    return xp()


def current():
    """Name of the default backend (reads the environment variable once)."""
    if _state["name"] is None:
        use(os.environ.get(ENV_VAR, "numpy").strip().lower() or "numpy")
    return _state["name"]


def xp():
    """The default array module (numpy or cupy) used to create new arrays."""
    if current() == "cupy":
        import cupy  # noqa: PLC0415
        return cupy
    return numpy


def is_device_array(a):
    """True for a CuPy array, without importing CuPy when it is not loaded (NumPy arrays are
    recognised first, by type: this runs for nearly every array operation)."""
    return type(a) is not numpy.ndarray and type(a).__module__.startswith("cupy")


def get_array_module(*arrays):
    """numpy or cupy: the module that owns the given arrays (numpy for scalars)."""
    for a in arrays:
        if is_device_array(a):
            import cupy  # noqa: PLC0415
            return cupy
    return numpy


# ------------------------------------------------------------------ transfers
_counts = {"host_to_device": 0, "device_to_host": 0, "reads": collections.Counter()}


def transfer_counts():
    """What crossed between host and device since the last reset.

    ``{"host_to_device": copies made by to_device, "device_to_host": copies made
    by to_numpy and read_to_host, "reads": Counter(why -> read_to_host calls)}``.
    ``reads`` counts calls on every backend (on NumPy they copy nothing), so the
    trainer's reading schedule can be tested without a GPU.
    """
    return {"host_to_device": _counts["host_to_device"], "device_to_host": _counts["device_to_host"],
            "reads": collections.Counter(_counts["reads"])}


def reset_transfer_counts():
    """Set every transfer counter to zero."""
    _counts["host_to_device"] = 0
    _counts["device_to_host"] = 0
    _counts["reads"] = collections.Counter()


def sync_detection_available():
    """True when this CuPy can raise on implicit synchronisation (``cupyx.allow_synchronize``)."""
    try:
        import cupyx  # noqa: PLC0415
    except ImportError:
        return False
    return hasattr(cupyx, "allow_synchronize") and hasattr(cupyx, "DeviceSynchronized")


def _allow_sync(flag):
    """``cupyx.allow_synchronize(flag)`` without its deprecation warning."""
    import cupyx  # noqa: PLC0415
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ctx = cupyx.allow_synchronize(flag)
        ctx.__enter__()
    return ctx


@contextlib.contextmanager
def no_implicit_reads():
    """Inside: any device synchronisation except through ``to_numpy``/``read_to_host`` is an error.

    On CuPy this is ``cupyx.allow_synchronize(False)``: ``float(a)``, ``int(a)``,
    ``bool(a)``, ``a.item()``, ``a.get()`` on a device array raise
    ``cupyx.DeviceSynchronized``.  (CuPy deprecated the detector in v10 and warns
    that it can miss synchronisations done outside CuPy; it catches every
    device -> host copy made through ``ndarray.get``, which is what all of the
    above use.)  BackendError when CuPy is loaded but has no detector.  On NumPy
    it only marks the region (nothing can be detected there).
    """
    ctx = None
    if "cupy" in sys.modules:
        if not sync_detection_available():
            raise BackendError("this CuPy has no cupyx.allow_synchronize: implicit reads cannot be detected")
        ctx = _allow_sync(False)
    _state["strict"] += 1
    try:
        yield
    finally:
        _state["strict"] -= 1
        if ctx is not None:
            ctx.__exit__(None, None, None)


def _get(a):
    """``a.get()`` for a device array, allowed even inside ``no_implicit_reads``; counted."""
    _counts["device_to_host"] += 1
    if _state["strict"] and sync_detection_available():
        ctx = _allow_sync(True)
        try:
            return a.get()
        finally:
            ctx.__exit__(None, None, None)
    return a.get()


def to_numpy(a):
    """A NumPy array (device -> host copy for CuPy arrays; no copy for NumPy)."""
    if is_device_array(a):
        return _get(a)
    return numpy.asarray(a)


def to_device(a, like=None, dtype=None):
    """Put ``a`` on the backend of ``like`` (an array) or on the default backend.

    This is the host -> device edge: data batches go through here once.
    """
    target = get_array_module(like) if like is not None else xp()
    if target is numpy:
        out = to_numpy(a)
    else:
        if not is_device_array(a):
            _counts["host_to_device"] += 1
        out = target.asarray(a)
    if dtype is not None and out.dtype != dtype:
        out = out.astype(dtype)
    return out


def read_to_host(*values, why="read"):
    """Bring figures to the host in ONE device -> host copy; returns a tuple.

    Each value (a 0-d or n-d array on either backend, or a Python number)
    comes back as a Python float (0-d and numbers) or a float64 NumPy array
    (n-d); integers up to 2**53 are exact.  ``why`` names the purpose in
    ``transfer_counts()["reads"]`` (the trainer uses "progress", "validation"
    and "check").  This is the only place the package reads device values.
    """
    _counts["reads"][why] += 1
    out = list(values)
    dev = [i for i, v in enumerate(values) if is_device_array(v)]
    if dev:
        import cupy  # noqa: PLC0415 - only reached with CuPy arrays
        parts = [values[i].reshape(-1).astype(cupy.float64, copy=False) for i in dev]
        flat = _get(parts[0] if len(parts) == 1 else cupy.concatenate(parts))
        start = 0
        for i, p in zip(dev, parts):
            out[i] = flat[start:start + p.size].reshape(values[i].shape)
            start += p.size
    for i, v in enumerate(out):
        a = numpy.asarray(v, dtype=numpy.float64)   # host data: no copy of note, no __float__ call
        out[i] = float(a.reshape(())) if a.ndim == 0 else a
    return tuple(out)


def read_scalars(*values, why="read"):
    """``read_to_host`` for single numbers: a tuple of Python floats."""
    res = read_to_host(*values, why=why)
    bad = [i for i, r in enumerate(res) if not isinstance(r, float)]
    if bad:
        raise ValueError(f"read_scalars: value(s) {bad} are arrays of more than one entry; use read_to_host")
    return res
