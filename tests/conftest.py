"""Shared fixtures for the test suite.

``backend``: runs a test once on NumPy and once on CuPy.  The CuPy run needs CuPy
and a CUDA GPU; without them it is SKIPPED with the reason (never silently passed).
The fixture selects the backend (``nn_from_scratch.backend.use``), so layers built
inside the test put their parameters there, and restores the previous backend and
the fused kernels afterwards.  Tests create their data on the host with ``rng`` and
move them with ``backend.asarray``; results come back with ``backend.to_numpy``.
"""
import numpy as np
import pytest
from hypothesis import settings as _hypothesis_settings

from gpu_utils import GPU_MARKS
from nn_from_scratch import backend as _nnb
from nn_from_scratch.engine import kernels as _kernels

#: ``pytest.mark.parametrize``-ready list: numpy always, cupy when a GPU is present
BACKENDS = ["numpy", pytest.param("cupy", marks=GPU_MARKS)]

# The suite itself chooses where each test runs: NumPy is the default for every test,
# whatever NN_FROM_SCRATCH_BACKEND says (tests compared against TensorFlow feed host
# arrays to the layers they build); ``backend``/``gpu`` select CuPy where it applies.
_nnb.use("numpy")

# Every Hypothesis test is derandomized and keeps no example database, so a run draws the same
# examples on every machine and every day (tests/test_environment.py checks that no test's own
# @settings turns either back on).
_hypothesis_settings.register_profile("nn_from_scratch", derandomize=True, database=None, print_blob=True)
_hypothesis_settings.load_profile("nn_from_scratch")


class BackendUnderTest:
    """The backend a test runs on: ``name``, ``xp``, and the two edge helpers."""

    def __init__(self, name):
        self.name = name
        self.xp = _nnb.xp()
        self.is_gpu = name == "cupy"

    def asarray(self, a, dtype=None):
        """A new array on this backend with the values of ``a`` (always a copy, never ``a`` itself)."""
        return _nnb.to_device(a, like=self.xp.zeros(0), dtype=dtype).copy()

    @staticmethod
    def to_numpy(a):
        """A NumPy array of ``a`` (from either backend)."""
        return _nnb.to_numpy(a)

    def __repr__(self):
        return f"BackendUnderTest({self.name!r})"


def _selected(name):
    previous = _nnb.current()
    _nnb.use(name)
    _kernels.use_fused(True)
    try:
        yield BackendUnderTest(name)
    finally:
        _nnb.use(previous)
        _kernels.use_fused(True)


@pytest.fixture(params=BACKENDS)
def backend(request):
    """Select NumPy or CuPy for the test; restore the previous backend and fused kernels afterwards."""
    yield from _selected(request.param)


@pytest.fixture
def gpu():
    """CuPy selected for a GPU-only test (mark the test with ``gpu_utils.requires_gpu``)."""
    yield from _selected("cupy")


@pytest.fixture
def rng():
    """A freshly seeded generator, so every test draws the same numbers on every run."""
    return np.random.default_rng(20240601)


@pytest.fixture(autouse=True)
def _close_open_figures():
    """Close figures a test left open in pyplot (the package's own figures are never left
    there, see nn_from_scratch.plotting; this keeps a test that calls pyplot itself from
    leaking figures into the next ones)."""
    yield
    import sys
    plt = sys.modules.get("matplotlib.pyplot")
    if plt is not None and plt.get_fignums():
        plt.close("all")
