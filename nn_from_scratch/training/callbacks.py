"""Callbacks: code that ``NeuralNetwork.fit(..., callbacks=[...])`` runs during training.

The protocol (Keras's, with its 0-based epoch numbers)::

    class Callback:
        network                                   # the NeuralNetwork being fitted (also .model)
        params                                    # {"epochs", "steps", "batch_size", "metrics"}
        def set_network(self, network): ...
        def on_train_begin(self, logs=None): ...
        def on_epoch_begin(self, epoch, logs=None): ...
        def on_batch_end(self, batch, logs=None): ...     # logs = {"loss": the batch's mean loss}
        def on_epoch_end(self, epoch, logs=None): ...     # logs = {"loss", metrics, "val_loss", "val_<metric>"}
        def on_train_end(self, logs=None): ...

A callback stops training with ``self.network.stop_training = True`` (looked at after each
batch and each epoch; stopping after a batch still ends that epoch with its logs, as Keras
does).  ``params["metrics"]`` names every key ``on_epoch_end``'s logs will have, so a callback
can check a monitor name before the first epoch.  An exception raised in a hook reaches the
caller of ``fit`` as a ``CallbackError`` naming the callback's class and the hook (the
original exception is its ``__cause__``).

``fit`` only calls ``on_batch_end`` of callbacks that define it: without such a callback a
batch costs nothing more (on a GPU, asking for per-batch logs reads each batch's loss to the
host, one synchronisation per batch).

Callbacks that run the network (``predict``, ``layer_outputs``) get it in inference mode from
those methods, which restore the training mode afterwards.

Built in (each with Keras's semantics, checked against Keras in ``tests/test_callbacks.py``):
``EarlyStopping``, ``ModelCheckpoint``, ``CSVLogger``, ``LearningRateScheduler``,
``ReduceLROnPlateau``, ``TerminateOnNaN`` (on by default: ``fit(stop_on_nonfinite=True)``
adds one when the list has none).
"""
import csv
import math
import os

import numpy as np

from .. import validation

__all__ = ["Callback", "CallbackError", "CallbackList", "EarlyStopping", "ModelCheckpoint", "CSVLogger",
           "LearningRateScheduler", "ReduceLROnPlateau", "TerminateOnNaN", "LambdaCallback"]


class CallbackError(RuntimeError):
    """A callback raised during ``fit``; the message names the callback class and the hook."""

    def __init__(self, callback, hook, exc):
        self.callback, self.hook = callback, hook
        name = type(callback).__name__
        super().__init__(f"callback {name}.{hook} raised {type(exc).__name__}: {exc}")


class Callback:
    """Base class: every hook does nothing.  Override the ones you need (see the module docstring)."""

    network = None
    params = None

    @property
    def model(self):
        """The network being fitted (Keras's name for ``network``)."""
        return self.network

    def set_network(self, network):
        self.network = network

    def set_params(self, params):
        self.params = dict(params)

    def on_train_begin(self, logs=None):
        pass

    def on_epoch_begin(self, epoch, logs=None):
        pass

    def on_batch_end(self, batch, logs=None):
        pass

    def on_epoch_end(self, epoch, logs=None):
        pass

    def on_train_end(self, logs=None):
        pass


class LambdaCallback(Callback):
    """A callback from plain functions: ``LambdaCallback(on_epoch_end=lambda epoch, logs: ...)``."""

    _HOOKS = ("on_train_begin", "on_epoch_begin", "on_batch_end", "on_epoch_end", "on_train_end")

    def __init__(self, **hooks):
        unknown = sorted(set(hooks) - set(self._HOOKS))
        if unknown:
            raise TypeError(f"LambdaCallback: unknown hook(s) {unknown}; the hooks are {list(self._HOOKS)}")
        for name, fn in hooks.items():
            if not callable(fn):
                raise TypeError(f"LambdaCallback: {name} must be callable, received {type(fn).__name__}")
            setattr(self, name, fn)


def _overrides(cb, hook):
    """True when ``cb`` has its own ``hook`` (not the base class's do-nothing one)."""
    own = getattr(type(cb), hook, None)
    return hook in vars(cb) or (own is not None and own is not getattr(Callback, hook))


class CallbackList:
    """The callbacks of one ``fit``; every hook call is wrapped so an error names its callback."""

    def __init__(self, callbacks, network, params):
        callbacks = list(callbacks or [])
        for i, cb in enumerate(callbacks):
            if not isinstance(cb, Callback):
                raise TypeError(f"fit: callbacks[{i}] is {type(cb).__name__}, not a Callback "
                                "(subclass nn_from_scratch.callbacks.Callback)")
        self.callbacks = callbacks
        for cb in callbacks:
            cb.set_network(network)
            cb.set_params(params)
        self.batch_callbacks = [cb for cb in callbacks if _overrides(cb, "on_batch_end")]
        self.network = network
        #: the first callback that set ``network.stop_training``
        self.stopped_by = None

    def __bool__(self):
        return bool(self.callbacks)

    def __iter__(self):
        return iter(self.callbacks)

    def _call(self, cb, hook, *args):
        try:
            getattr(cb, hook)(*args)
        except CallbackError:
            raise
        except Exception as exc:
            raise CallbackError(cb, hook, exc) from exc
        if self.stopped_by is None and getattr(self.network, "stop_training", False):
            self.stopped_by = cb

    def call(self, hook, *args):
        for cb in self.callbacks:
            self._call(cb, hook, *args)

    def batch_end(self, batch, logs):
        for cb in self.batch_callbacks:
            self._call(cb, "on_batch_end", batch, logs)


# ------------------------------------------------------------------ monitoring
_MAX_WORDS = ("accuracy", "acc", "top_k", "auc", "precision", "recall", "f1")
_MIN_WORDS = ("loss", "error", "mae", "mse", "rmse", "crossentropy")


def _direction(owner, monitor, mode, strict=True):
    """``"min"`` or ``"max"`` for a monitored quantity (``mode="auto"``: from its name;
    ``"auto"`` again when the name does not tell and ``strict`` is False)."""
    if mode not in ("auto", "min", "max"):
        raise ValueError(f"{owner}: mode must be 'auto', 'min' or 'max', received {mode!r}")
    if mode != "auto":
        return mode
    name = monitor[4:] if monitor.startswith("val_") else monitor
    if any(w in name for w in _MAX_WORDS):
        return "max"
    if any(w in name for w in _MIN_WORDS):
        return "min"
    if not strict:
        return "auto"
    raise ValueError(f"{owner}: cannot tell whether {monitor!r} should be minimised or maximised; "
                     "pass mode='min' or mode='max'")


def _check_number(owner, name, value, lo=0.0, lo_open=False, integer=False):
    ok = isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, bool)
    if ok and integer:
        ok = float(value) == int(value)
    if ok:
        v = float(value)
        ok = math.isfinite(v) and (v > lo if lo_open else v >= lo)
    if not ok:
        kind = "an integer" if integer else "a number"
        bound = f"> {lo:g}" if lo_open else f">= {lo:g}"
        raise ValueError(f"{owner}: {name} must be {kind} {bound}, received {value!r}")
    return int(value) if integer else float(value)


def _check_path(owner, name, value):
    if not isinstance(value, (str, os.PathLike)):
        raise TypeError(f"{owner}: {name} must be a file path (str or pathlib.Path), received "
                        f"{type(value).__name__} {value!r}")
    return os.fspath(value)


def _check_finite(owner, name, value):
    v = validation.real(owner, name, value)
    if not math.isfinite(v):
        raise ValueError(f"{owner}: {name} must be a finite number, received {value!r}")
    return v


class _Monitor(Callback):
    """Shared by the callbacks that watch one logged quantity (``monitor``)."""

    def __init__(self, monitor, mode, min_delta):
        if not isinstance(monitor, str) or not monitor:
            raise ValueError(f"{type(self).__name__}: monitor must be the name of a logged quantity "
                             f"(e.g. 'val_loss'), received {monitor!r}")
        self.monitor = monitor
        # a name that does not tell its direction is judged at fit time, after checking it is logged
        self.mode = _direction(type(self).__name__, monitor, mode, strict=False)
        self.min_delta = _check_number(type(self).__name__, "min_delta", min_delta)

    def _is_improvement(self, current, reference):
        """Keras: ``current - min_delta < best`` (min) or ``current + min_delta > best`` (max)."""
        if reference is None:
            return True
        if self.mode == "auto":
            self.mode = _direction(type(self).__name__, self.monitor, self.mode)
        if self.mode == "min":
            return current + self.min_delta < reference
        return current - self.min_delta > reference

    def _check_known(self, keys, when):
        if self.monitor not in keys:
            raise ValueError(
                f"{type(self).__name__}: monitor={self.monitor!r} is not logged {when}; the known names "
                f"are {sorted(keys)}" + (" (val_* names need validation_data or validation_split)"
                                         if self.monitor.startswith("val_") else ""))

    def on_train_begin(self, logs=None):
        keys = (self.params or {}).get("metrics")
        if keys is not None:
            self._check_known(list(keys) + self._extra_keys(), "by this fit")
        self.mode = _direction(type(self).__name__, self.monitor, self.mode)

    def _extra_keys(self):
        return []

    def _current(self, logs):
        logs = logs or {}
        if self.monitor not in logs:
            self._check_known(list(logs), "in this epoch's logs")
        return float(logs[self.monitor])


class EarlyStopping(_Monitor):
    """Stop training when ``monitor`` has stopped improving (Keras ``EarlyStopping``).

    After each epoch: an *improvement* is ``current < best - min_delta`` (``mode="min"``;
    ``> best + min_delta`` for ``"max"``; ``"auto"`` picks from the name: losses down,
    accuracies up).  ``wait`` counts epochs since the last improvement; when it reaches
    ``patience`` (and the epoch is not the first) training stops.  ``baseline``: an
    improvement resets ``wait`` only when it also beats the baseline.
    ``restore_best_weights``: at the end of training (stopped early or not, as Keras 3)
    the weights of the end of the best epoch are put back (``best_epoch``, 0-based).
    ``start_from_epoch``: epochs before this one are not watched.

    After ``fit``: ``stopped_epoch`` (0-based; 0 when it did not stop), ``best``, ``best_epoch``.
    """

    def __init__(self, monitor="val_loss", min_delta=0, patience=0, verbose=0, mode="auto", baseline=None,
                 restore_best_weights=False, start_from_epoch=0):
        super().__init__(monitor, mode, min_delta)
        self.patience = _check_number("EarlyStopping", "patience", patience, integer=True)
        self.start_from_epoch = _check_number("EarlyStopping", "start_from_epoch", start_from_epoch, integer=True)
        if baseline is not None:
            baseline = _check_finite("EarlyStopping", "baseline", baseline)
        self.baseline = baseline
        self.verbose = verbose
        self.restore_best_weights = validation.flag("EarlyStopping", "restore_best_weights", restore_best_weights)
        self._reset()

    def _reset(self):
        self.wait, self.stopped_epoch, self.best, self.best_weights, self.best_epoch = 0, 0, None, None, 0

    def on_train_begin(self, logs=None):
        super().on_train_begin(logs)
        self._reset()

    def on_epoch_end(self, epoch, logs=None):
        current = self._current(logs)
        if epoch < self.start_from_epoch:
            return
        if self.restore_best_weights and self.best_weights is None:
            self.best_weights, self.best_epoch = self.network.get_weights(to_host=False), epoch
        self.wait += 1
        if self._is_improvement(current, self.best):
            self.best, self.best_epoch = current, epoch
            if self.restore_best_weights:
                self.best_weights = self.network.get_weights(to_host=False)
            if self.baseline is None or self._is_improvement(current, self.baseline):
                self.wait = 0
            return
        if self.wait >= self.patience and epoch > 0:
            self.stopped_epoch = epoch
            self.network.stop_training = True

    def on_train_end(self, logs=None):
        if self.stopped_epoch > 0 and self.verbose:
            print(f"Epoch {self.stopped_epoch + 1}: early stopping")
        if self.restore_best_weights and self.best_weights is not None:
            if self.verbose:
                print(f"Restoring model weights from the end of the best epoch: {self.best_epoch + 1}.")
            self.network.set_weights(self.best_weights)
            self.best_weights = None


class ModelCheckpoint(_Monitor):
    """Save the network (``network.save``: atomic, the whole model) after every epoch.

    ``path`` may hold ``str.format`` fields filled from the epoch's logs and ``epoch``
    (1-based, as Keras): ``"ckpt-{epoch:02d}-{val_loss:.3f}.npz"``.  ``save_best_only``:
    save only when ``monitor`` improves on the best so far (Keras: ``current < best``
    for ``mode="min"``, no ``min_delta``; ``initial_value_threshold`` starts ``best``).
    Missing directories are created.  ``saved``: the paths written, in order.
    """

    def __init__(self, path, monitor="val_loss", verbose=0, save_best_only=False, mode="auto",
                 initial_value_threshold=None):
        path = _check_path("ModelCheckpoint", "path", path)
        super().__init__(monitor, mode, 0)
        self.path = path
        self.verbose = verbose
        self.save_best_only = validation.flag("ModelCheckpoint", "save_best_only", save_best_only)
        self.initial_value_threshold = (None if initial_value_threshold is None else
                                        _check_finite("ModelCheckpoint", "initial_value_threshold",
                                                      initial_value_threshold))
        self.best = self.initial_value_threshold
        self.saved = []

    def on_train_begin(self, logs=None):
        if self.save_best_only:
            super().on_train_begin(logs)
        keys = (self.params or {}).get("metrics")
        if keys is not None:
            try:
                self.path.format(epoch=1, **{k: 0.0 for k in keys})
            except (KeyError, IndexError, ValueError) as exc:
                raise ValueError(f"ModelCheckpoint: path {self.path!r} has a field that the logs do not fill "
                                 f"({type(exc).__name__}: {exc}); the fields are 'epoch' and {sorted(keys)}") from None

    def _filepath(self, epoch, logs):
        return self.path.format(epoch=epoch + 1, **(logs or {}))

    def on_epoch_end(self, epoch, logs=None):
        filepath = self._filepath(epoch, logs)
        if self.save_best_only:
            current = self._current(logs)
            if not self._is_improvement(current, self.best):
                if self.verbose:
                    print(f"Epoch {epoch + 1}: {self.monitor} did not improve from {self.best:.5f}")
                return
            if self.verbose:
                was = "None" if self.best is None else f"{self.best:.5f}"
                print(f"Epoch {epoch + 1}: {self.monitor} improved from {was} to {current:.5f}, "
                      f"saving model to {filepath}")
            self.best = current
        elif self.verbose:
            print(f"Epoch {epoch + 1}: saving model to {filepath}")
        directory = os.path.dirname(filepath)
        if directory:
            os.makedirs(directory, exist_ok=True)
        self.network.save(filepath)
        self.saved.append(filepath)


class CSVLogger(Callback):
    """Append each epoch's logs to a CSV file (Keras ``CSVLogger``).

    Columns: ``epoch`` (0-based, as Keras writes it) then the log keys sorted; when the
    run has no validation, the ``val_`` columns are still written (as Keras does), as ``NA``.
    ``append=True`` continues an existing file (its header is kept).  Each row is flushed.
    """

    def __init__(self, filename, separator=",", append=False):
        self.filename = _check_path("CSVLogger", "filename", filename)
        if not isinstance(separator, str) or len(separator) != 1:
            raise ValueError(f"CSVLogger: separator must be one character, received {separator!r}")
        self.sep = separator
        self.append = validation.flag("CSVLogger", "append", append)
        self._file = self._writer = self.keys = None

    def on_train_begin(self, logs=None):
        write_header = True
        if self.append and os.path.exists(self.filename):
            with open(self.filename, encoding="utf-8") as f:
                write_header = not f.readline()
        self._close()
        self._file = open(self.filename, "a" if self.append else "w", newline="", encoding="utf-8")
        self._writer, self.keys, self._write_header = None, None, write_header

    def on_epoch_end(self, epoch, logs=None):
        logs = logs or {}
        if self.keys is None:
            self.keys = sorted(logs)
            if self.keys and not any(k.startswith("val_") for k in self.keys):
                self.keys += [f"val_{k}" for k in self.keys]
        if self._writer is None:
            self._writer = csv.writer(self._file, delimiter=self.sep)
            if self._write_header:
                self._writer.writerow(["epoch"] + self.keys)
        self._writer.writerow([epoch] + [logs.get(k, "NA") for k in self.keys])
        self._file.flush()

    def _close(self):
        if self._file is not None and not self._file.closed:
            self._file.close()
        self._file = None

    def on_train_end(self, logs=None):
        self._close()
        self._writer = None


def _set_lr(owner, optimizer, value, epoch):
    lr = float(value) if isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, bool) \
        else None
    if lr is None or not math.isfinite(lr) or lr < 0:
        raise ValueError(f"{owner}: the learning rate for epoch {epoch} must be a finite number >= 0, "
                         f"received {value!r}")
    if not isinstance(getattr(optimizer, "lr", None), (int, float)):
        raise ValueError(f"{owner}: the optimizer's learning rate is a schedule ({optimizer.lr!r}); "
                         f"{owner} sets a constant rate, so give the optimizer a number for lr")
    optimizer.lr = lr
    return lr


class LearningRateScheduler(Callback):
    """Set the learning rate at the start of each epoch: ``lr = schedule(epoch, lr)``
    (0-based epoch; a one-argument ``schedule(epoch)`` works too), as Keras.
    The rate is logged as ``learning_rate``."""

    def __init__(self, schedule, verbose=0):
        if not callable(schedule):
            raise TypeError(f"LearningRateScheduler: schedule must be callable, received {type(schedule).__name__}")
        self.schedule, self.verbose = schedule, verbose

    def on_epoch_begin(self, epoch, logs=None):
        opt = self.network.optimizer
        try:
            value = self.schedule(epoch, float(opt.lr) if isinstance(opt.lr, (int, float)) else opt.lr)
        except TypeError:
            value = self.schedule(epoch)
        lr = _set_lr("LearningRateScheduler", opt, value, epoch)
        if self.verbose:
            print(f"Epoch {epoch + 1}: LearningRateScheduler setting learning rate to {lr}.")

    def on_epoch_end(self, epoch, logs=None):
        if logs is not None:
            logs["learning_rate"] = float(self.network.optimizer.lr)


class ReduceLROnPlateau(_Monitor):
    """Multiply the learning rate by ``factor`` when ``monitor`` has not improved for
    ``patience`` epochs (Keras ``ReduceLROnPlateau``: ``min_delta`` 1e-4, ``cooldown``
    epochs of rest after a reduction, never below ``min_lr``).  The rate is logged as
    ``learning_rate``."""

    def __init__(self, monitor="val_loss", factor=0.1, patience=10, verbose=0, mode="auto", min_delta=1e-4,
                 cooldown=0, min_lr=0.0):
        super().__init__(monitor, mode, min_delta)
        f = _check_number("ReduceLROnPlateau", "factor", factor, lo_open=True)
        if not f < 1:
            raise ValueError(f"ReduceLROnPlateau: factor must be in (0, 1), received {factor!r}")
        self.factor = f
        self.patience = _check_number("ReduceLROnPlateau", "patience", patience, integer=True)
        self.cooldown = _check_number("ReduceLROnPlateau", "cooldown", cooldown, integer=True)
        self.min_lr = _check_number("ReduceLROnPlateau", "min_lr", min_lr)
        self.verbose = verbose
        self._reset()

    def _reset(self):
        self.best, self.cooldown_counter, self.wait = None, 0, 0

    def _extra_keys(self):
        return ["learning_rate"]

    def on_train_begin(self, logs=None):
        super().on_train_begin(logs)
        self._reset()

    def on_epoch_end(self, epoch, logs=None):
        opt = self.network.optimizer
        if logs is not None:
            logs["learning_rate"] = float(opt.lr) if isinstance(opt.lr, (int, float)) else opt.lr
        current = self._current(logs)
        if self.cooldown_counter > 0:
            self.cooldown_counter -= 1
            self.wait = 0
        if self._is_improvement(current, self.best):
            self.best, self.wait = current, 0
        elif self.cooldown_counter <= 0:
            self.wait += 1
            if self.wait >= self.patience:
                old = opt.lr
                if not isinstance(old, (int, float)):
                    _set_lr("ReduceLROnPlateau", opt, 0.0, epoch)   # raises: a schedule
                if old > np.float32(self.min_lr):
                    new = max(old * self.factor, self.min_lr)
                    _set_lr("ReduceLROnPlateau", opt, new, epoch)
                    if self.verbose:
                        print(f"Epoch {epoch + 1}: ReduceLROnPlateau reducing learning rate to {new}.")
                    self.cooldown_counter, self.wait = self.cooldown, 0


class TerminateOnNaN(Callback):
    """Stop training when a batch's loss is NaN or Inf.

    ``fit`` itself checks every batch's loss before applying its update (on the CPU; on a
    GPU at each progress read) whenever the callback list holds a ``TerminateOnNaN``, and
    ``fit(stop_on_nonfinite=True)`` (the default) adds one when it has none.  The weights
    are those before the failing step; the reason is in ``history.stopped`` and a
    ``TrainingWarning``.  After ``fit``: ``stopped_epoch``/``stopped_batch`` (0-based) and
    ``value``, or ``None`` when training did not stop here.
    """

    def __init__(self):
        self.stopped_epoch = self.stopped_batch = self.value = None

    def on_train_begin(self, logs=None):
        self.stopped_epoch = self.stopped_batch = self.value = None

    def _record(self, epoch, batch, value):
        """Called by ``fit`` when it stops on a non-finite loss (epoch and batch 0-based)."""
        self.stopped_epoch, self.stopped_batch, self.value = epoch, batch, value
