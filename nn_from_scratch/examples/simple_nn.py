"""The import path of the course labs: ``from nn_from_scratch.examples.simple_nn import NeuralNetwork``."""
from ..training.network import History, NeuralNetwork

__all__ = ["NeuralNetwork", "History"]
