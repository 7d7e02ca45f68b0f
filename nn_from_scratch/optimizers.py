"""The import path of the course labs: ``from nn_from_scratch.optimizers import GradientDescent``.

The optimizers live in ``training/optimizers.py``; this module re-exports them (and ``get``), and
``KFAC``/``EKFAC`` from ``nn_from_scratch.kfac``.
"""
from .training.optimizers import *  # noqa: F401,F403 - the lab's names
from .training.optimizers import __all__ as _TRAINING_ALL, get  # noqa: F401
from .kfac import EKFAC, KFAC  # noqa: F401 - K-FAC lives in its own package (nn_from_scratch.kfac)

__all__ = list(_TRAINING_ALL) + ["KFAC", "EKFAC"]
