"""nn_from_scratch: a deep learning framework written from scratch in NumPy.

Every layer has a hand-written ``forward``/``backward``; the same code runs on
CuPy arrays on a GPU (``nn_from_scratch.backend``); ``nn_from_scratch.crosscheck``
proves the numbers against TensorFlow/Keras.
"""
from . import backend, callbacks, initializers, metrics
from .callbacks import (Callback, CallbackError, CSVLogger, EarlyStopping, LambdaCallback,
                        LearningRateScheduler, ModelCheckpoint, ReduceLROnPlateau, TerminateOnNaN)
from .concurrency import ConcurrentUseError
from .activations import Flatten, ReLU, Reshape, Sigmoid, Softmax, Tanh, Vectorization
from .initializers import set_seed
from .interfaces import Neuron, Node, Optimizer, ShapeError
from .losses import MSELoss, SoftMaxLoss
from .metrics import (Accuracy, BinaryAccuracy, MeanAbsoluteError, MeanSquaredError, Metric, TopKAccuracy, confusion_matrix,
                      plot_confusion_matrix)
from .network import DataError, History, NeuralNetwork, TrainingWarning
from .neurons import Conv1D, Conv2D, Conv3D, Convolution, Dense, Linear
from .optimizers import EKFAC, KFAC, SGD, AdaGrad, Adagrad, Adam, AdamW, GradientDescent, RMSProp, RMSprop
from . import regularizers, schedules
from .regularizers import L1, L1L2, L2
from .schedules import (CosineDecay, ExponentialDecay, LearningRateSchedule, PiecewiseConstantDecay,
                        StepDecay)
from .pooling import (AvgPool, AvgPool1D, AvgPool2D, AvgPool3D, MaxPool, MaxPool1D, MaxPool2D,
                      MaxPool3D)
from .serialization import ModelFileError
from .dropout import Dropout
from .normalization import BatchNorm, BatchNormalization
from .rectifiers import ELU, GELU, LeakyReLU, Softplus
from .global_pooling import (GlobalAveragePooling, GlobalAveragePooling1D, GlobalAveragePooling2D,
                             GlobalAveragePooling3D)
from .more_losses import MAE, BinaryCrossEntropy, Huber, HuberLoss, MAELoss

__version__ = "0.1.0"

__all__ = [
    "backend", "initializers", "set_seed",
    "Node", "Neuron", "Optimizer", "ShapeError", "DataError", "ModelFileError", "TrainingWarning",
    "ConcurrentUseError",
    "ReLU", "Sigmoid", "Tanh", "Softmax", "Vectorization", "Flatten", "Reshape",
    "SoftMaxLoss", "MSELoss",
    "Linear", "Dense", "Convolution", "Conv1D", "Conv2D", "Conv3D",
    "MaxPool", "AvgPool", "MaxPool1D", "MaxPool2D", "MaxPool3D", "AvgPool1D", "AvgPool2D", "AvgPool3D",
    "GradientDescent", "SGD", "Adam", "RMSProp", "RMSprop", "AdamW", "AdaGrad", "Adagrad", "KFAC", "EKFAC",
    "schedules", "LearningRateSchedule", "ExponentialDecay", "StepDecay", "PiecewiseConstantDecay", "CosineDecay",
    "NeuralNetwork", "History",
    "callbacks", "Callback", "CallbackError", "EarlyStopping", "ModelCheckpoint", "CSVLogger",
    "LearningRateScheduler", "ReduceLROnPlateau", "TerminateOnNaN", "LambdaCallback",
    "metrics", "Metric", "Accuracy", "BinaryAccuracy", "TopKAccuracy", "MeanAbsoluteError", "MeanSquaredError",
    "confusion_matrix", "plot_confusion_matrix",
    "Dropout", "BatchNorm", "BatchNormalization", "LeakyReLU", "ELU", "GELU", "Softplus",
    "GlobalAveragePooling", "GlobalAveragePooling1D", "GlobalAveragePooling2D", "GlobalAveragePooling3D",
    "BinaryCrossEntropy", "Huber", "MAE", "HuberLoss", "MAELoss",
]
