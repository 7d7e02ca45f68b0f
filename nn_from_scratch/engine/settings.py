"""The engine's settings (how it chunks and arranges its work) and two helpers its units share."""
import contextlib

from ..layers.base import ShapeError, format_shape

__all__ = ["SETTINGS", "settings", "chunks", "check_gradient"]

#: How the engine computes convolutions (``settings(...)`` changes them for a ``with`` block):
#:
#: * ``algorithm``: "auto", "patches" (whole patch matrices), "rowshift" and "samplelast" (stride 1
#:   only) or "kernel" (CuPy only: the patch matrix gathered by one kernel; "auto" on CuPy).
#: * ``chunk_bytes``: bytes of patch copy per chunk of samples: a chunk's patches are built, used and
#:   dropped while they are still in the CPU cache (2 MB: LeNet-5's training step on one core at 128
#:   samples 11.1 -> 10.5 ms against 4 MB, 1 MB slower again; benchmarks/RESULTS.md, eighth session).
#: * ``gpu_chunk_bytes``: the same on a GPU, where the point is few, large kernels.
#: * ``merge_from_filters``: ``PatchProduct`` lays a chunk's patch matrices side by side, ``(C*K, m*P)``,
#:   from this many filters on (one product per chunk); with fewer, one product per sample is faster.
#: * ``dx_strategy``: ``PatchProduct`` with stride 1 computes dL/dx by "auto" (the cheaper estimate),
#:   "flipped" (convolution of dL/dy with the flipped kernel) or "col2im" (scatter-add).
#: * ``phase_chunk_bytes``: the chunk budget of a block run by pooling phase (``phase_pool.py``;
#:   LeNet-5 on one core at 128 samples: 2, 4, 8 and 16 MB within noise; eleventh session).
SETTINGS = {"algorithm": "auto", "chunk_bytes": 2 << 20, "gpu_chunk_bytes": 256 << 20, "merge_from_filters": 8,
            "dx_strategy": "auto", "phase_chunk_bytes": 8 << 20}
_CHOICES = {"algorithm": ("auto", "patches", "rowshift", "samplelast", "kernel"),
            "dx_strategy": ("auto", "flipped", "col2im")}


@contextlib.contextmanager
def settings(**values):
    """``with settings(algorithm="rowshift"):`` the engine's convolutions use these ``SETTINGS``."""
    for name, value in values.items():
        if name not in SETTINGS:
            raise KeyError(f"engine.settings: unknown setting {name!r}; the settings are {sorted(SETTINGS)}")
        if name in _CHOICES and value not in _CHOICES[name]:
            raise ValueError(f"engine.settings: {name} must be one of {_CHOICES[name]}, received {value!r}")
        if name not in _CHOICES and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
            raise ValueError(f"engine.settings: {name} must be a positive int, received {value!r}")
    old = dict(SETTINGS)
    SETTINGS.update(values)
    try:
        yield SETTINGS
    finally:
        SETTINGS.clear()
        SETTINGS.update(old)


def chunks(n, bytes_per_sample, budget):
    """(chunk size, [(start, stop), ...]): as few chunks of ``n`` samples as ``budget`` bytes allow,
    of equal sizes (50 in steps of 49 -> 2 x 25)."""
    step = max(1, min(n, int(budget // max(1, bytes_per_sample))))
    step = -(-n // -(-n // step))
    return step, [(a, min(a + step, n)) for a in range(0, n, step)]


def check_gradient(layer, g, shape):
    """Raise unless the upstream gradient ``g`` has the shape ``shape`` of the output the engine computed."""
    if tuple(g.shape) != tuple(shape):
        raise ShapeError(f"{type(layer).__name__} layer '{layer.name}': the upstream gradient must have the shape "
                         f"of the last output {format_shape(tuple(shape))}, received {format_shape(tuple(g.shape))}")
