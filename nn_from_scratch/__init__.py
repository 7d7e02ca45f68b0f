"""nn_from_scratch: a deep learning framework written from scratch in NumPy.

Every layer has a hand-written ``forward``/``backward``; the same code runs on
CuPy arrays on a GPU (``nn_from_scratch.backend``); ``nn_from_scratch.crosscheck``
proves the numbers against TensorFlow/Keras.

The package's layout (``docs/ARCHITECTURE.md``): ``layers/`` (every layer, one family per
file), ``engine/`` (what exists only for speed), ``training/`` (the network, trainer and
optimizers), ``data/``, ``checks/`` (gradient checks, the Keras cross-check, grading) and
``analysis/`` (permutation tests, class separation, curvature).
"""
from . import _legacy

_legacy.install()           # the flat module paths of earlier versions (nn_from_scratch.network, ...)

from . import backend  # noqa: E402
from .layers import *  # noqa: E402,F401,F403 - every layer (layers.__all__), so a new layer is exported once
from .layers import __all__ as _LAYERS  # noqa: E402
from .training import callbacks, metrics
from .layers import initializers
from .training.callbacks import (Callback, CallbackError, CSVLogger, EarlyStopping, LambdaCallback,
                                 LearningRateScheduler, ModelCheckpoint, ReduceLROnPlateau, TerminateOnNaN)
from .training.concurrency import ConcurrentUseError
from .layers.initializers import set_seed
from .training.optimizer_base import Optimizer
from .training.metrics import (Accuracy, BinaryAccuracy, MeanAbsoluteError, MeanSquaredError, Metric,
                               TopKAccuracy, confusion_matrix, plot_confusion_matrix)
from .validation import DataError
from .training.network import History, NeuralNetwork, TrainingWarning
from .kfac import EKFAC, KFAC
from .training.optimizers import SGD, AdaGrad, Adagrad, Adam, AdamW, GradientDescent, RMSProp, RMSprop
from .layers import regularizers
from .training import schedules
from .layers.regularizers import L1, L1L2, L2
from .training.schedules import (CosineDecay, ExponentialDecay, LearningRateSchedule, PiecewiseConstantDecay,
                                 StepDecay)
from .training.serialization import ModelFileError

__version__ = "0.1.0"

__all__ = [
    "backend", "initializers", "set_seed",
    "Optimizer", "DataError", "ModelFileError", "TrainingWarning", "ConcurrentUseError",
    "GradientDescent", "SGD", "Adam", "RMSProp", "RMSprop", "AdamW", "AdaGrad", "Adagrad", "KFAC", "EKFAC",
    "schedules", "LearningRateSchedule", "ExponentialDecay", "StepDecay", "PiecewiseConstantDecay", "CosineDecay",
    "NeuralNetwork", "History",
    "callbacks", "Callback", "CallbackError", "EarlyStopping", "ModelCheckpoint", "CSVLogger",
    "LearningRateScheduler", "ReduceLROnPlateau", "TerminateOnNaN", "LambdaCallback",
    "metrics", "Metric", "Accuracy", "BinaryAccuracy", "TopKAccuracy", "MeanAbsoluteError", "MeanSquaredError",
    "confusion_matrix", "plot_confusion_matrix",
] + list(_LAYERS)


def __getattr__(name):
    """``nn_from_scratch.network`` and the other flat module names of earlier versions (``_legacy``)."""
    if name in _legacy.OLD_PATHS:
        import importlib  # noqa: PLC0415
        return importlib.import_module(f"{__name__}.{name}")
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
