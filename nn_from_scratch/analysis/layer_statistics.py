"""Per-layer inputs and per-example output gradients (K-FAC's statistics): they live in
``training/layer_statistics.py``, since the K-FAC optimizer uses them; re-exported here."""
from ..training.layer_statistics import *  # noqa: F401,F403
from ..training.layer_statistics import __all__  # noqa: F401
