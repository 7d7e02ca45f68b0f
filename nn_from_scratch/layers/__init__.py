"""Every layer, one family per file, each ``forward``/``backward`` the formula of its docstring.

Nothing here imports the packages above it: the trainer, the analysis tools (``docs/ARCHITECTURE.md``).
A new layer's name goes in ``__all__`` below: the top-level package exports every name listed here.
"""
from .base import LayerDefinitionError, Neuron, Node, NotBuiltError, NotReadyError, ShapeError
from .dense import Dense, Linear
from .conv import Conv1D, Conv2D, Conv3D, Convolution
from .pooling import AvgPool, AvgPool1D, AvgPool2D, AvgPool3D, MaxPool, MaxPool1D, MaxPool2D, MaxPool3D
from .global_pooling import (GlobalAveragePooling, GlobalAveragePooling1D, GlobalAveragePooling2D,
                             GlobalAveragePooling3D)
from .activations import ELU, GELU, LeakyReLU, ReLU, Sigmoid, Softmax, Softplus, Tanh
from .reshape import Flatten, Reshape, Vectorization
from .losses import MAE, BinaryCrossEntropy, Huber, HuberLoss, Loss, MAELoss, MSELoss, SoftMaxLoss
from .dropout import Dropout
from .normalization import BatchNorm, BatchNormalization

__all__ = [
    "Node", "Neuron", "ShapeError", "NotReadyError", "NotBuiltError", "LayerDefinitionError",
    "Linear", "Dense", "Convolution", "Conv1D", "Conv2D", "Conv3D",
    "MaxPool", "AvgPool", "MaxPool1D", "MaxPool2D", "MaxPool3D", "AvgPool1D", "AvgPool2D", "AvgPool3D",
    "GlobalAveragePooling", "GlobalAveragePooling1D", "GlobalAveragePooling2D", "GlobalAveragePooling3D",
    "ReLU", "Sigmoid", "Tanh", "Softmax", "LeakyReLU", "ELU", "GELU", "Softplus",
    "Vectorization", "Flatten", "Reshape", "Loss", "SoftMaxLoss", "MSELoss", "BinaryCrossEntropy", "Huber", "MAE",
    "HuberLoss", "MAELoss", "Dropout", "BatchNorm", "BatchNormalization",
]
