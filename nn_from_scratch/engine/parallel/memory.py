"""The shared-memory layout of a forked split: arrays laid out 64-byte aligned over one buffer
(the parameters' mirror, each worker's gradients, each worker's inbox for its shard)."""
import math

import numpy as np

__all__ = ["layout", "region", "views"]


def layout(specs, start):
    """Byte offsets of arrays ``specs`` = ``[(shape, dtype)]`` laid out from byte ``start``, each
    64-byte aligned, and the end of the last one: ``(offsets, end)``."""
    offsets, off = [], start
    for shape, dtype in specs:
        off = -(-off // 64) * 64
        offsets.append(off)
        off += math.prod(shape) * np.dtype(dtype).itemsize
    return offsets, off


def region(buf, specs, start):
    """Arrays over ``buf`` for ``specs`` = ``[(shape, dtype)]`` as ``_layout`` places them; ``(views, end)``."""
    offsets, end = layout(specs, start)
    views = [np.frombuffer(buf, dtype=np.dtype(dtype), count=math.prod(shape), offset=off).reshape(shape)
             for (shape, dtype), off in zip(specs, offsets)]
    return views, end


def views(buf, slots, start):
    """``_region`` for parameter slots ``[(layer index, name, shape, dtype)]``."""
    return region(buf, [(shape, dtype) for _, _, shape, dtype in slots], start)
