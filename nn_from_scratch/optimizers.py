"""The import path of the course labs: ``from nn_from_scratch.optimizers import GradientDescent``.

The optimizers live in ``training/optimizers.py``; this module re-exports them (and ``get``).
"""
from .training.optimizers import *  # noqa: F401,F403 - the lab's names
from .training.optimizers import __all__, get  # noqa: F401
