"""The import path of the course labs: ``from nn_from_scratch.neurons import Linear, Convolution``.

The layers live in ``layers/dense.py`` and ``layers/conv.py``; this module re-exports them.
"""
from .layers.conv import Conv1D, Conv2D, Conv3D, Convolution
from .layers.dense import Dense, Linear

__all__ = ["Linear", "Convolution", "Dense", "Conv1D", "Conv2D", "Conv3D"]
