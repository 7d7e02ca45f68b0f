"""Helpers for the backend tests (NumPy vs CuPy) and the transfer accounting.

* ``HostReadGuard``: a NumPy array that refuses every implicit read of its values
  (``float``, ``int``, ``bool``, ``.item()``, ``.tolist()``, formatting).  A network
  whose parameters are guarded computes with guarded arrays throughout (NumPy
  subclasses propagate through ufuncs, matmul and reductions), so running ``fit``
  in the GPU's deferred-read schedule with guarded parameters proves on the CPU
  that the trainer reads values only through ``backend.read_to_host``, as a GPU
  under ``cupyx.allow_synchronize(False)`` would.
* ``FakeClock``: a controllable ``time.monotonic`` for the trainer's refresh rule.
* ``assert_f32_agree``: "equal to float32 rounding" for results of two backends.
"""
import numpy as np
import pytest

from nn_from_scratch import backend as _nnb
from nn_from_scratch.backend import to_numpy

#: None when CuPy and a CUDA GPU are usable, else why not
CUPY_UNAVAILABLE = _nnb.cupy_unavailable_reason()
CUPY_SKIP_REASON = f"CuPy with a CUDA GPU is not available: {CUPY_UNAVAILABLE}"
#: marks for tests that need the GPU (skipped with the reason when there is none)
GPU_MARKS = [pytest.mark.gpu, pytest.mark.skipif(CUPY_UNAVAILABLE is not None, reason=CUPY_SKIP_REASON)]


def requires_gpu(test):
    """Decorator: the test needs CuPy and a CUDA GPU (use it with the ``gpu`` fixture)."""
    for mark in GPU_MARKS:
        test = mark(test)
    return test


class ImplicitRead(AssertionError):
    """A guarded array was read implicitly (what would be a hidden device->host copy)."""


class HostReadGuard(np.ndarray):
    """An ndarray whose values may not be read implicitly (see the module docstring)."""

    def _refuse(self, what):
        raise ImplicitRead(f"implicit read of a guarded array via {what} (shape {self.shape}); "
                           "values must come to the host through backend.read_to_host / to_numpy")

    def __float__(self):
        self._refuse("float()")

    def __int__(self):
        self._refuse("int()")

    def __index__(self):
        self._refuse("operator.index()")

    def __bool__(self):
        self._refuse("bool()")

    def __complex__(self):
        self._refuse("complex()")

    def item(self, *args):
        self._refuse(".item()")

    def tolist(self):
        self._refuse(".tolist()")

    def __format__(self, spec):
        self._refuse(f"format(..., {spec!r})")


def guard(a):
    """``a`` (a NumPy array) viewed as a HostReadGuard (same memory)."""
    return np.asarray(a).view(HostReadGuard)


def guard_network(net):
    """Guard every parameter of ``net`` in place; returns ``net``."""
    for layer in net.trainable_layers:
        for k in list(layer.params):
            layer.params[k] = guard(layer.params[k])
    return net


class FakeClock:
    """``time.monotonic`` stand-in: every call returns the previous value plus ``step`` seconds."""

    def __init__(self, step):
        self.step = float(step)
        self.now = 1000.0
        self.calls = 0

    def __call__(self):
        self.calls += 1
        self.now += self.step
        return self.now

    @property
    def elapsed(self):
        return self.calls * self.step


def assert_f32_agree(got, ref, what="", rtol=1e-5, atol_scale=2e-6):
    """``got`` (any backend) equals ``ref`` to float32 rounding.

    Bound per entry: ``rtol * |ref| + atol_scale * max(|ref|)``.  float32 has a
    unit roundoff of 6e-8; a matrix product or sum of length L computed in another
    order differs by about ``sqrt(L) * 6e-8`` relative to the size of its terms,
    which the ``max(|ref|)`` part covers for the sizes used in the tests (L <= 1000).
    """
    got, ref = to_numpy(got).astype(np.float64), to_numpy(ref).astype(np.float64)
    assert got.shape == ref.shape, f"{what}: shape {got.shape} vs {ref.shape}"
    scale = float(np.abs(ref).max()) if ref.size else 0.0
    bound = rtol * np.abs(ref) + atol_scale * scale
    diff = np.abs(got - ref)
    bad = ~(diff <= bound)   # NaN counts as bad
    assert not bad.any(), (f"{what}: {int(bad.sum())} of {ref.size} entries differ beyond float32 rounding; "
                           f"worst {np.nanmax(np.where(bad, diff, 0)):.3e} (scale {scale:.3e})")


def assert_f64_agree(got, ref, what=""):
    """``got`` equals ``ref`` to float64 rounding (summation order may differ)."""
    assert_f32_agree(got, ref, what, rtol=1e-12, atol_scale=1e-13)
