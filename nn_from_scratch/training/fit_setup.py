"""What ``NeuralNetwork.fit`` does before it trains: its arguments checked, the data prepared and
split, the trainer built with every setting.

``prepare(net, X, y, **fit_arguments)`` returns ``(trainer, epochs, validation, validation batch
size)``; ``fit`` then runs ``trainer.run`` in training mode.  Every refusal names ``fit``, the
argument, the expected and the received value.
"""
import math

import numpy as np

from .. import validation
from .callbacks import Callback, CallbackList, TerminateOnNaN
from .trainer import _Trainer

__all__ = ["prepare"]


def _check_arguments(epochs, n_epochs, batch_size, validation_batch_size, shuffle, stop_on_nonfinite, verbose, seed):
    """The plain arguments of ``fit``; returns the number of epochs."""
    validation.count("fit", "epochs", epochs, allow_none=True)
    validation.count("fit", "n_epochs", n_epochs, allow_none=True)
    validation.count("fit", "batch_size", batch_size, allow_none=True)
    validation.count("fit", "validation_batch_size", validation_batch_size, allow_none=True)
    if shuffle is not None:
        validation.flag("fit", "shuffle", shuffle)
    validation.flag("fit", "stop_on_nonfinite", stop_on_nonfinite)
    if not (validation.is_int(verbose) or isinstance(verbose, (bool, np.bool_))) or verbose < 0:
        raise TypeError(f"fit: verbose must be 0, 1 or True/False, received {verbose!r}")
    if seed is not None and not isinstance(seed, np.random.Generator):
        validation.count("fit", "seed", seed, minimum=0)
    if epochs is not None and n_epochs is not None and epochs != n_epochs:
        raise ValueError(f"fit: epochs={epochs} and n_epochs={n_epochs} disagree")
    return int(epochs if epochs is not None else (n_epochs if n_epochs is not None else 1))


def _validation_part(net, X, y, sw, sample_weight, validation_data, validation_split):
    """``(X, y, sw)`` to train on and ``(X_val, y_val, sw_val)`` or None to validate on."""
    val = None
    if validation_split:
        vs = validation_split
        if isinstance(vs, bool) or not isinstance(vs, (int, float, np.floating)) or not 0 < vs < 1:
            raise ValueError(f"fit: validation_split must be a fraction in (0, 1), received {vs!r}")
        if validation_data is not None:
            raise ValueError("fit: give validation_data or validation_split, not both")
        n_all = X.shape[0]
        split_at = int(math.floor(n_all * (1.0 - vs)))
        if split_at == 0 or split_at == n_all:
            raise ValueError(f"fit: validation_split={vs} of {n_all} samples leaves "
                             f"{split_at} for training and {n_all - split_at} for validation; both need some")
        vsw = sw[split_at:] if (sw is not None and sample_weight is not None) else None
        val = (X[split_at:], y[split_at:], vsw)
        X, y = X[:split_at], y[:split_at]
        sw = sw[:split_at] if sw is not None else None
    if validation_data is not None:
        if not isinstance(validation_data, (tuple, list)) or len(validation_data) not in (2, 3):
            raise ValueError("fit: validation_data must be (X_val, y_val) or (X_val, y_val, sample_weight_val)")
        vx, vy, _ = net._prepare_xy(validation_data[0], validation_data[1], "fit (validation_data)")
        vsw = None
        if len(validation_data) == 3 and validation_data[2] is not None:
            vsw = net._sample_weights(validation_data[2], None, vy, vx.shape[0], "fit (validation_data)")
        val = (vx, vy, vsw)
    return X, y, sw, val


def prepare(net, X, y, epochs=None, batch_size=None, shuffle=None, validation_data=None, seed=None, verbose=1,
            n_epochs=None, stop_on_nonfinite=True, validation_batch_size=None, callbacks=None,
            validation_split=0.0, metrics=None, class_weight=None, sample_weight=None):
    """``(trainer, epochs, validation data or None, validation batch size)`` for ``net.fit(...)``
    with these arguments (``NeuralNetwork.fit`` documents them)."""
    epochs = _check_arguments(epochs, n_epochs, batch_size, validation_batch_size, shuffle, stop_on_nonfinite,
                              verbose, seed)
    if y is None:
        raise validation.DataError("fit: y (the labels or targets, one per sample of X) is required, received None")
    X, y, given_batch = net._prepare_xy(X, y, "fit")
    batch_size = int(batch_size or given_batch or net.batch_size)
    if shuffle is None:
        shuffle = given_batch is None       # the seed's pre-batched data: its batches as they are
    sw = net._sample_weights(sample_weight, class_weight, y, X.shape[0], "fit")
    run_metrics = net._resolve_metrics(metrics, "fit(metrics=)") if metrics is not None else net.metrics
    X, y, sw, val = _validation_part(net, X, y, sw, sample_weight, validation_data, validation_split)
    val_batch = int(validation_batch_size or max(batch_size, 256))
    cbs = [] if callbacks is None else [callbacks] if isinstance(callbacks, Callback) else list(callbacks)
    if stop_on_nonfinite and not any(isinstance(c, TerminateOnNaN) for c in cbs):
        cbs.append(TerminateOnNaN())
    last = X.shape[0] % batch_size or batch_size      # the size of each epoch's last batch
    for layer in net.layers:                           # BatchNorm: at least 2 values per channel
        check = getattr(layer, "check_training_batch", None)
        if check is not None:
            check(min(last, X.shape[0]), where=f"fit ({X.shape[0]} samples, batch_size={batch_size})")
    keys = ["loss"] + [m.name for m in run_metrics]
    keys += [f"val_{k}" for k in keys] if val is not None else []
    params = {"epochs": epochs, "steps": math.ceil(X.shape[0] / batch_size), "batch_size": batch_size,
              "samples": int(X.shape[0]), "metrics": keys}
    trainer = _Trainer(net, X, y, batch_size, shuffle=shuffle, seed=seed, verbose=verbose, sample_weight=sw,
                       metrics=run_metrics, callbacks=CallbackList(cbs, net, params),
                       stop_on_nonfinite=any(isinstance(c, TerminateOnNaN) for c in cbs))
    return trainer, epochs, val, val_batch
