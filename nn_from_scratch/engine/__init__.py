"""What exists only for speed: faster convolution arrangements, layer fusion, pooling-phase
blocks, the worker-process split and the fused CuPy kernels.

The trainer runs a network through the engine; the engine recognises the layer patterns it can
speed up (exact classes) and runs every other layer's own ``forward``/``backward``.  It reaches
the layers only through their public interface (``docs/ARCHITECTURE.md``).
"""
from .runner import Runner  # noqa: E402

__all__ = ["Runner"]
