"""Backend errors that need no GPU to provoke.

A stand-in "device array" (a NumPy array whose type claims to come from CuPy, as
``backend.is_device_array`` sees it) reaches a NumPy layer: the error must name
the layer, where its parameters are, what it received and the fix.  The real
CuPy versions of these checks are in ``test_gpu.py``.
"""
import sys
import types

import numpy as np
import pytest

import nn_from_scratch as nf
from nn_from_scratch import backend

FakeDeviceArray = type("ndarray", (np.ndarray,), {"__module__": "cupy._fake_for_tests"})


def fake_device(a):
    return np.asarray(a).view(FakeDeviceArray)


def test_the_stand_in_counts_as_a_device_array():
    assert backend.is_device_array(fake_device(np.zeros(2)))
    assert not backend.is_device_array(np.zeros(2))


@pytest.mark.parametrize("make,shape", [
    (lambda: nf.Linear(4, 3, name="dense_x"), (2, 4)),
    (lambda: nf.Convolution((None, 1, 5, 5), kernel_size=3, output_layers=2, name="conv_x"), (2, 1, 5, 5)),
])
def test_device_data_into_a_host_layer_names_the_problem(rng, make, shape):
    layer = make()
    with pytest.raises(TypeError) as err:
        layer.forward(fake_device(rng.standard_normal(shape)))
    msg = str(err.value)
    assert f"'{layer.name}'" in msg
    assert "parameters on the host (NumPy) but received a CuPy (GPU) array" in msg
    assert "backend.to_device(x, like=layer.W)" in msg


def test_no_implicit_reads_refuses_a_cupy_without_a_detector(monkeypatch):
    # a CuPy that is loaded but has no cupyx.allow_synchronize: say so rather than detect nothing
    monkeypatch.setitem(sys.modules, "cupy", types.ModuleType("cupy"))
    monkeypatch.setitem(sys.modules, "cupyx", types.ModuleType("cupyx"))
    assert backend.sync_detection_available() is False
    with pytest.raises(backend.BackendError, match="no cupyx.allow_synchronize"):
        with backend.no_implicit_reads():
            pass


def test_no_implicit_reads_on_numpy_is_only_a_marker():
    with backend.no_implicit_reads():
        assert backend.read_scalars(np.float64(2.0)) == (2.0,)
        assert float(np.float64(1.5)) == 1.5    # NumPy has no device: nothing to detect


def test_cupy_unavailable_reason_matches_cupy_available():
    why = backend.cupy_unavailable_reason()
    assert (why is None) == backend.cupy_available()
    if why is not None:
        assert why.startswith("backend 'cupy' was requested but")
