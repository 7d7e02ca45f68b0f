"""Keras layers that ``to_keras`` inserts where Keras has no layer for one of ours.

``ConstantPadding`` (-inf padding before a max pooling), ``WindowCountScale`` (average pooling that
divides by the real entries of a padded window), ``MaskedDropout`` (Keras's side of a dropout using
OUR layer's mask, for the cross-check).
"""
import math

import keras
import numpy as np
from keras import ops

from ...backend import to_numpy

__all__ = ["ConstantPadding", "WindowCountScale", "MaskedDropout", "window_counts"]


@keras.saving.register_keras_serializable(package="nn_from_scratch")
class ConstantPadding(keras.layers.Layer):
    """Pad the spatial axes of channels-last data ``(N, *S, C)`` with a constant.

    ``padding``: one ``(lo, hi)`` pair per spatial axis.  Used with ``-inf``
    before a "valid" max pooling: Keras's ZeroPadding pads with 0, which would
    change the maximum of windows holding only negative numbers.
    """

    def __init__(self, padding, value=-math.inf, **kwargs):
        super().__init__(**kwargs)
        self.padding = tuple(tuple(int(v) for v in p) for p in padding)
        self.value = float(value)

    def call(self, x):
        pads = [[0, 0]] + [list(p) for p in self.padding] + [[0, 0]]
        return ops.pad(x, pads, mode="constant", constant_values=self.value)

    def compute_output_shape(self, input_shape):
        spatial = [None if s is None else s + lo + hi for s, (lo, hi) in zip(input_shape[1:-1], self.padding)]
        return (input_shape[0], *spatial, input_shape[-1])

    def get_config(self):
        return {**super().get_config(), "padding": [list(p) for p in self.padding], "value": self.value}


@keras.saving.register_keras_serializable(package="nn_from_scratch")
class WindowCountScale(keras.layers.Layer):
    """Multiply channels-last data ``(N, *O, C)`` by a constant ``scale: (*O)``.

    After ``ZeroPadding`` + "valid" ``AveragePooling`` (which divides every
    window sum by the window volume ``K``), ``scale = K / count`` (``count`` = the
    number of real, non-padding entries of each window) turns the result into
    the mean over the real entries, which is what our ``AvgPool`` computes.
    """

    def __init__(self, scale, **kwargs):
        super().__init__(**kwargs)
        self.scale = np.asarray(scale, dtype=np.float64)

    def call(self, x):
        s = ops.convert_to_tensor(self.scale[None, ..., None], dtype=x.dtype)
        return x * s

    def compute_output_shape(self, input_shape):
        return tuple(input_shape)

    def get_config(self):
        return {**super().get_config(), "scale": self.scale.tolist()}


@keras.saving.register_keras_serializable(package="nn_from_scratch")
class MaskedDropout(keras.layers.Layer):
    """Dropout with OUR layer's mask (for the cross-check): ``y = x * m / (1 - rate)`` when training.

    ``source``: our ``Dropout``; its last mask (``source.mask``, ours runs first, inside
    ``fixed_randomness``) is moved to channels-last.  Inference (``training`` false): the identity,
    through Keras's own ``Dropout``.
    """

    def __init__(self, source, **kwargs):
        super().__init__(**kwargs)
        self.source = source
        self.keras_dropout = keras.layers.Dropout(source.rate, dtype=kwargs.get("dtype"))

    def call(self, x, training=None):
        if not training or self.source.rate == 0:
            return self.keras_dropout(x, training=False)
        mask = self.source.mask
        if mask is None:
            raise RuntimeError(f"MaskedDropout: {self.source._describe()} has no mask; run our layer first, "
                               "inside its fixed_randomness()")
        from .layout import to_keras_layout  # noqa: PLC0415
        m = ops.convert_to_tensor(to_keras_layout(to_numpy(mask)).astype(np.float64), dtype=x.dtype)
        return x * m / ops.convert_to_tensor(1.0 - self.source.rate, dtype=x.dtype)

    def compute_output_shape(self, input_shape):
        return tuple(input_shape)


def window_counts(spatial, pool, stride, pads):
    """Number of real entries in each pooling window ``(*O)`` (zero padding ``pads``)."""
    per_axis = []
    for size, k, s, (lo, hi) in zip(spatial, pool, stride, pads):
        n_out = (size + lo + hi - k) // s + 1
        start = np.arange(n_out) * s
        per_axis.append(np.minimum(start + k, lo + size) - np.maximum(start, lo))
    counts = per_axis[0].astype(np.float64)
    for c in per_axis[1:]:
        counts = np.multiply.outer(counts, c)
    return counts
