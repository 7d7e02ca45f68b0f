"""The old path of ``nn_from_scratch.analysis.separation.cli``: importing it gives that very module.

The separation analysis is the package ``analysis/separation/``; this name keeps code that
imported the flat module working (the same module object, not a copy).
"""
import sys

from .separation import cli as _module

if __name__ == "__main__":
    sys.exit(_module.main())
sys.modules[__name__] = _module
