"""Channels-first (ours) <-> channels-last (Keras) layouts.

Our layers take ``x: (N, C, *S)``; Keras's convolutions on the CPU take
``(N, *S, C)``.  Tensors of rank >= 3 are converted at the edges; vectors
``(N, D)`` are the same in both.

Flatten order: our ``Vectorization`` of ``(N, C, H, W)`` orders the entries
``(c, h, w)``; Keras's ``Flatten`` of the channels-last tensor orders them
``(h, w, c)``.  ``to_keras`` therefore puts a ``Permute`` to channels-first in
front of every ``Flatten``; ``from_keras`` instead permutes the rows of the
following ``Dense`` kernel with ``keras_flatten_permutation``.
"""
import numpy as np

from ...backend import to_numpy

__all__ = ["to_keras_layout", "from_keras_layout", "keras_flatten_permutation", "to_cl_dims", "to_cf_dims",
           "keras_axis", "our_axis"]


def to_keras_layout(a):
    """``(N, C, *S) -> (N, *S, C)`` for rank >= 3 (a NumPy copy); lower ranks unchanged."""
    a = to_numpy(a)
    return np.ascontiguousarray(np.moveaxis(a, 1, -1)) if a.ndim >= 3 else a


def from_keras_layout(a):
    """``(N, *S, C) -> (N, C, *S)`` for rank >= 3; lower ranks unchanged."""
    a = np.asarray(a)
    return np.ascontiguousarray(np.moveaxis(a, -1, 1)) if a.ndim >= 3 else a


def to_cf_dims(rank):
    """``keras.layers.Permute`` dims taking per-sample ``(*S, C)`` to ``(C, *S)`` (rank = len)."""
    return (rank,) + tuple(range(1, rank))


def to_cl_dims(rank):
    """``keras.layers.Permute`` dims taking per-sample ``(C, *S)`` to ``(*S, C)``."""
    return tuple(range(2, rank + 1)) + (1,)


def keras_flatten_permutation(shape):
    """``p`` with ``keras_flat[:, j] == our_flat[:, p[j]]`` for per-sample shape ``(C, *S)``.

    Keras flattens the channels-last tensor, so its entry ``j`` is our entry
    ``p[j]``; a Keras ``Dense`` kernel ``K`` after such a ``Flatten`` becomes our
    weight rows ``W[1:][p] = K``.
    """
    shape = tuple(int(s) for s in shape)
    idx = np.arange(int(np.prod(shape))).reshape(shape)
    return np.moveaxis(idx, 0, -1).reshape(-1) if len(shape) >= 2 else idx.reshape(-1)


def keras_axis(axis, rank):
    """Our axis of a rank-``rank`` tensor (batch included) -> the Keras (channels-last) axis."""
    a = axis % rank
    if rank < 3 or a == 0:
        return a
    return rank - 1 if a == 1 else a - 1


def our_axis(axis, rank):
    """Inverse of ``keras_axis``."""
    a = axis % rank
    if rank < 3 or a == 0:
        return a
    return 1 if a == rank - 1 else a + 1
