"""What the network's public methods make of the data they are given: pure functions.

``prepare_xy`` checks ``(X, y)`` and brings them to flat ``(N, *S)`` samples and labels: the seed
lab's pre-batched layout ``(n_batches, batch, *S)`` is flattened (its batch size returned), a
missing channel axis is added when the first layer takes one channel, labels are checked for the
loss (integer classes in range or one-hot rows for ``SoftMaxLoss``; targets of the output's shape
otherwise), and NaN/Inf is refused.  ``sample_weights`` turns ``sample_weight``/``class_weight``
into one weight per sample.  Every refusal is a ``DataError`` (or ``TypeError``/``ValueError`` for
an argument of the wrong kind) naming the method, the expected and the received value.

Nothing here changes the network: each function takes what it reads (the input shape, the first
layer, the output shape, the loss) as arguments.
"""
import math

import numpy as np

from ..backend import get_array_module, read_scalars, to_numpy
from ..layers.base import Node, ShapeError, format_shape
from ..layers.losses import SoftMaxLoss, labels_to_indices
from ..validation import DataError, as_array

__all__ = ["layer_shapes", "shape_matches", "is_batched", "adapt", "check_finite", "prepare_xy", "check_labels",
           "sample_weights"]


def shape_matches(got, expected):
    """Does per-sample shape ``got`` fit ``expected`` (``None`` entries match any size)?"""
    return len(got) == len(expected) and all(e is None or e == g for g, e in zip(got, expected))


def is_batched(X, input_shape, first_layer):
    """True for the seed's pre-batched layout ``(n_batches, batch, *sample)``."""
    expected = input_shape
    if expected is None:
        nd = getattr(first_layer, "ndim", None)
        return nd is not None and X.ndim == nd + 3
    if shape_matches(tuple(X.shape[1:]), expected):
        return False
    if shape_matches(tuple(X.shape[2:]), expected):
        return True
    if expected[0] == 1 and len(expected) > 1:
        if shape_matches(tuple(X.shape[1:]), expected[1:]):
            return False
        if shape_matches(tuple(X.shape[2:]), expected[1:]):
            return True
    return False


def adapt(X, batched, input_shape, first_layer, where):
    """``X`` with the sample shape the first layer takes (adds a missing channel axis)."""
    lead = 2 if batched else 1
    expected = input_shape
    if expected is None:
        return X
    got = tuple(X.shape[lead:])
    if shape_matches(got, expected):
        return X
    if len(expected) == len(got) + 1 and expected[0] == 1 and shape_matches(got, expected[1:]):
        return X.reshape(X.shape[:lead] + (1,) + got)
    what = "batches of samples" if batched else "samples"
    raise DataError(
        f"{where}: the first layer ({first_layer._describe()}) takes {what} of shape "
        f"{format_shape(expected)}, received data of shape {format_shape(tuple(X.shape))}"
    )


def check_finite(X, where):
    """``DataError`` when float data hold NaN/Inf (one reduction, one read)."""
    xp = get_array_module(X)
    if X.dtype.kind in "fc":
        (bad,) = read_scalars((~xp.isfinite(X)).sum(), why="check")
        if bad:
            raise DataError(f"{where}: the input contains {int(bad)} NaN/Inf value(s); clean the data first")


def prepare_xy(X, y, where, input_shape, first_layer, output_shape, loss):
    """``(X, y, batch)``: checked data as flat ``(N, *S)`` samples and labels (``y`` may be None), and
    the batch size of pre-batched data (None for flat data); see the module docstring."""
    X = as_array(where, "X", X)
    if y is not None:
        y = as_array(where, "y", y)
    if not hasattr(X, "dtype") or X.dtype.kind not in "fiub":
        kind = getattr(X, "dtype", type(X).__name__)
        raise DataError(f"{where}: X must be an array of real numbers (float, int or bool), received {kind}"
                        + (" (the imaginary part would be dropped)" if getattr(kind, "kind", "") == "c" else
                           " (an object array may hide None or NaN: convert it with np.asarray(X, float))"
                           if getattr(kind, "kind", "") == "O" else ""))
    if X.ndim < 1:
        raise DataError(f"{where}: X must hold samples along its first axis, received a 0-d array")
    if y is not None and y.ndim < 1:
        raise DataError(f"{where}: y must hold one label or target per sample, received a 0-d array")
    batched = is_batched(X, input_shape, first_layer)
    X = adapt(X, batched, input_shape, first_layer, where)
    if batched:
        if y is not None and y.shape[0] != X.shape[0]:
            raise DataError(
                f"{where}: X holds {X.shape[0]} batches but y holds {y.shape[0]} batches "
                f"(X shape {format_shape(tuple(X.shape))}, y shape {format_shape(tuple(y.shape))}); "
                "they must have the same number of batches"
            )
        if y is not None and (y.ndim < 2 or y.shape[1] != X.shape[1]):
            raise DataError(f"{where}: X has batches of {X.shape[1]} samples but y has shape "
                            f"{format_shape(tuple(y.shape))}")
        batch = X.shape[1]
        X = X.reshape((-1,) + tuple(X.shape[2:]))
        if y is not None:
            y = y.reshape((-1,) + tuple(y.shape[2:]))
    else:
        batch = None
        if y is not None and y.shape[0] != X.shape[0]:
            raise DataError(f"{where}: X has {X.shape[0]} samples but y has {y.shape[0]} labels; "
                            "they must be the same number")
    if X.shape[0] == 0:
        raise DataError(f"{where}: no samples")
    check_finite(X, where)
    if y is not None:
        y = check_labels(y, X.shape[0], where, output_shape, loss)
    return X, y, batch


def check_labels(y, n, where, output_shape, loss):
    """``y`` checked for ``loss``: class indices ``(N,)`` (from integer labels) or one-hot rows for
    ``SoftMaxLoss``, targets of the output's shape otherwise."""
    out = output_shape
    if isinstance(loss, SoftMaxLoss):
        k = out[0] if out is not None else None
        if y.ndim == 2 and (k is None or y.shape[1] == k) and y.shape[1] > 1:
            if y.dtype.kind not in "fiub":
                raise DataError(f"{where} (labels): one-hot rows must be numbers, received dtype {y.dtype}")
            check_finite(y, where + " (labels)")
            if y.size == 0:
                return y
            xp = get_array_module(y)
            lo, worst = read_scalars(y.min(), xp.abs(y.sum(axis=1, dtype=np.float64) - 1).max(), why="check")
            if lo < 0 or worst > 1e-3:
                raise DataError(f"{where} (labels): one-hot (or probability) rows must be >= 0 and sum to 1, "
                                f"received a smallest entry {float(lo):.4g} and a row sum off by up to "
                                f"{float(worst):.4g} (an all-zero row gives loss 0, a negative one a loss < 0)")
            return y
        if y.ndim == 2 and y.shape[1] == 1:
            y = y.reshape(-1)
        if y.ndim != 1:
            raise DataError(f"{where}: labels must be integers (N,) or one-hot rows (N, {k}), "
                            f"received shape {format_shape(tuple(y.shape))}")
        try:
            idx = labels_to_indices(y, k, where=f"{where} (labels)")
        except ValueError as exc:
            raise DataError(str(exc)) from None
        lo, hi = (int(v) for v in read_scalars(idx.min(), idx.max(), why="check"))
        if lo < 0 or (k is not None and hi >= k):
            raise DataError(f"{where}: labels must be in [0, {k}) for {k} outputs, received values in "
                            f"[{lo}, {hi}]")
        return idx
    if out is not None and not shape_matches(tuple(y.shape[1:]), out):
        raise DataError(f"{where}: targets must have shape {format_shape((None,) + tuple(out))}, "
                        f"received {format_shape(tuple(y.shape))}")
    check_finite(y, where + " (targets)")
    return y


def sample_weights(sample_weight, class_weight, y, n, where, output_shape, loss):
    """``(n,)`` float64 host weights from ``sample_weight`` or ``class_weight`` (Keras: a class
    missing from the dict weighs 1; not both at once), or None."""
    if sample_weight is not None and class_weight is not None:
        raise ValueError(f"{where}: give sample_weight or class_weight, not both (as Keras)")
    if sample_weight is not None:
        w = np.asarray(to_numpy(sample_weight))
        if w.ndim == 2 and w.shape[1] == 1:
            w = w.reshape(-1)
        if w.ndim != 1 or w.shape[0] != n:
            raise DataError(f"{where}: sample_weight must have shape ({n},), one weight per sample, "
                            f"received {format_shape(tuple(w.shape))}")
        if w.dtype.kind not in "biuf":
            raise DataError(f"{where}: sample_weight must be numbers, received dtype {w.dtype}")
        w = w.astype(np.float64)
        if not np.all(np.isfinite(w)) or (w < 0).any():
            raise DataError(f"{where}: sample_weight must be finite and >= 0, received values in "
                            f"[{np.nanmin(w)}, {np.nanmax(w)}]" + (" with NaN/Inf" if not np.all(np.isfinite(w)) else ""))
        return w
    if class_weight is None:
        return None
    if not isinstance(loss, SoftMaxLoss):
        raise ValueError(f"{where}: class_weight needs class labels, but the loss is {type(loss).__name__}")
    if not isinstance(class_weight, dict):
        raise TypeError(f"{where}: class_weight must be a dict {{class index: weight}}, received "
                        f"{type(class_weight).__name__}")
    k = output_shape[0] if output_shape else None
    table = np.ones(k if k is not None else int(to_numpy(y).max()) + 1)
    for c, wc in class_weight.items():
        if isinstance(c, bool) or not isinstance(c, (int, np.integer)) or not 0 <= c < len(table):
            raise ValueError(f"{where}: class_weight keys must be class indices in [0, {len(table)}), "
                             f"received {c!r}")
        if isinstance(wc, bool) or not isinstance(wc, (int, float, np.integer, np.floating)) \
                or not (math.isfinite(wc) and wc >= 0):
            raise ValueError(f"{where}: class_weight[{c}] must be a finite number >= 0, received {wc!r}")
        table[int(c)] = float(wc)
    labels = np.asarray(to_numpy(y))
    labels = labels.argmax(axis=1) if labels.ndim == 2 else labels
    return table[labels.astype(np.int64)]


def layer_shapes(layers, input_shape, build=None):
    """Per-sample output shape of each of ``layers`` (None where unknown) for samples of
    ``input_shape``; ``ShapeError`` naming the layers when neighbours do not fit together.
    ``build(i, layer, shape)``, when given, is called first for each layer whose input size is
    inferred (``layer.built`` False) with its input's shape (None where unknown)."""
    shapes = []
    shape = input_shape
    for i, layer in enumerate(layers):
        if build is not None and not layer.built:
            build(i, layer, shape)
        if layer.input_shape is not None and shape is not None:
            if not shape_matches(shape, layer.input_shape) and not shape_matches(layer.input_shape, shape):
                prev = f"layer {i - 1} ({layers[i - 1].name}) outputs" if i else "the network input is"
                hint = ""
                if i and type(layers[i - 1]).compute_output_shape is Node.compute_output_shape:
                    hint = (f"; {type(layers[i - 1]).__name__} does not define compute_output_shape, so "
                            f"its output is assumed to have its input's shape: if it changes the shape, "
                            f"define compute_output_shape(self, input_shape) returning the per-sample output shape")
                raise ShapeError(
                    f"layer {i} ({layer._describe()}) expects samples of shape "
                    f"{format_shape(layer.input_shape)} but {prev} {format_shape(shape)}{hint}"
                )
        known = layer.input_shape if layer.input_shape is not None else shape
        if known is None:
            shape = None
        elif layer.input_shape is None:
            shape = layer.compute_output_shape(known)
        else:
            merged = tuple(a if a is not None else b for a, b in zip(layer.input_shape, shape or layer.input_shape))
            shape = layer.compute_output_shape(merged)
        shapes.append(shape)
    return shapes
