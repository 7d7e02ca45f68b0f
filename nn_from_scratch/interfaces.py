"""The import path of the course labs: ``from nn_from_scratch.interfaces import Neuron``.

The interfaces live in ``layers/base.py`` (``Node``, ``Neuron``) and
``training/optimizer_base.py`` (``Optimizer``); this module re-exports them.
"""
from .layers.base import (LayerDefinitionError, Neuron, Node, NotBuiltError, NotReadyError, ShapeError,
                          format_shape, sample_shape)
from .training.optimizer_base import Optimizer, check_learning_rate

__all__ = ["Node", "Neuron", "Optimizer", "ShapeError", "NotReadyError", "NotBuiltError", "LayerDefinitionError",
           "format_shape",
           "sample_shape", "check_learning_rate"]
