"""Array backend: NumPy on the CPU, CuPy on an NVIDIA GPU.

This is the only module that decides which array library is used. Every other
module gets its array module from the data it is handed::

    xp = get_array_module(x)      # numpy or cupy, whichever owns ``x``
    y = xp.maximum(x, 0)

so one code path serves both libraries. The *default* backend (``use``, or the
environment variable ``NN_FROM_SCRATCH_BACKEND``) only decides where *new*
arrays are created: parameters at construction time and data batches at the
edges (``to_device``). Host <-> device copies happen only in ``to_device`` and
``to_numpy``.
"""
import os

import numpy

__all__ = [
    "BackendError", "use", "current", "xp", "get_array_module", "to_numpy",
    "to_device", "cupy_available", "is_device_array", "ENV_VAR",
]

ENV_VAR = "NN_FROM_SCRATCH_BACKEND"
_NAMES = ("numpy", "cupy")
_state = {"name": None}


class BackendError(RuntimeError):
    """The requested backend cannot be used on this machine."""


def _import_cupy():
    """Import CuPy and check that a GPU is usable; raise BackendError if not."""
    try:
        import cupy  # noqa: PLC0415  (optional dependency, imported lazily)
    except ImportError as exc:
        raise BackendError(
            "backend 'cupy' was requested but CuPy is not installed; install the GPU "
            "extra, e.g. `pip install -e .[gpu]` (cupy-cuda12x), or use backend 'numpy'"
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


def cupy_available():
    """True when CuPy imports and at least one CUDA GPU answers."""
    try:
        _import_cupy()
    except BackendError:
        return False
    return True


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
    """True for a CuPy array, without importing CuPy when it is not loaded."""
    return type(a).__module__.startswith("cupy")


def get_array_module(*arrays):
    """numpy or cupy: the module that owns the given arrays (numpy for scalars)."""
    for a in arrays:
        if is_device_array(a):
            import cupy  # noqa: PLC0415
            return cupy
    return numpy


def to_numpy(a):
    """A NumPy array (device -> host copy for CuPy arrays; no copy for NumPy)."""
    if is_device_array(a):
        return a.get()
    return numpy.asarray(a)


def to_device(a, like=None, dtype=None):
    """Put ``a`` on the backend of ``like`` (an array) or on the default backend.

    This is the host -> device edge: data batches go through here once.
    """
    target = get_array_module(like) if like is not None else xp()
    if target is numpy:
        out = to_numpy(a)
    else:
        out = target.asarray(a)
    if dtype is not None and out.dtype != dtype:
        out = out.astype(dtype)
    return out
