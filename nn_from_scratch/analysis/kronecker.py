"""Kronecker factors of the curvature (K-FAC, EKFAC): they live in ``training/kronecker.py``, since
the K-FAC optimizer uses them as much as the curvature tools do; re-exported here."""
from ..training.kronecker import *  # noqa: F401,F403
from ..training.kronecker import __all__  # noqa: F401
