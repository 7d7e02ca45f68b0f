"""Parameter-free layers (``Node`` subclasses): activations, reshapes, pooling, losses.

This module is the import path the course labs use
(``from nn_from_scratch.nodes import ReLU, SoftMaxLoss, Vectorization``);
each class lives in the module of its kind.
"""
from .layers.reshape import Flatten, Reshape, Vectorization
from .layers.activations import ReLU, Sigmoid, Softmax, Tanh
from .layers.losses import Loss, MSELoss, SoftMaxLoss
from .layers.dropout import Dropout
from .layers.global_pooling import (GlobalAveragePooling, GlobalAveragePooling1D, GlobalAveragePooling2D,
                                    GlobalAveragePooling3D)
from .layers.losses import MAE, BinaryCrossEntropy, Huber
from .layers.activations import ELU, GELU, LeakyReLU, Softplus
from .layers.pooling import AvgPool, AvgPool1D, AvgPool2D, AvgPool3D, MaxPool, MaxPool1D, MaxPool2D, MaxPool3D

__all__ = [
    "ReLU", "Sigmoid", "Tanh", "Softmax", "Vectorization", "Flatten", "Reshape",
    "Loss", "SoftMaxLoss", "MSELoss",
    "MaxPool", "AvgPool", "MaxPool1D", "MaxPool2D", "MaxPool3D", "AvgPool1D", "AvgPool2D", "AvgPool3D",
    "Dropout", "LeakyReLU", "ELU", "GELU", "Softplus", "GlobalAveragePooling", "GlobalAveragePooling1D",
    "GlobalAveragePooling2D", "GlobalAveragePooling3D", "BinaryCrossEntropy", "Huber", "MAE",
]
