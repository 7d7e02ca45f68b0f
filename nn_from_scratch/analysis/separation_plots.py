"""The old path of ``nn_from_scratch.analysis.separation.plots``: importing it gives that very module.

The separation analysis is the package ``analysis/separation/``; this name keeps code that
imported the flat module working (the same module object, not a copy).
"""
import sys

from .separation import plots as _module

sys.modules[__name__] = _module
