"""The trainer behind ``NeuralNetwork.fit``: epochs, batches, validation, callbacks and progress.

Per batch: the network's step (``NeuralNetwork._forward_backward``: through the engine or the
layers' own code, ``network.py``), the checks of ``watchdog.py`` (non-finite loss, gradients or
parameters stop the run; a rising, diverging or chance-level loss is warned about), then
``optimizer.step``; the epoch's figures are summed by ``epoch_sums.py``.  ``History`` holds the
per-epoch figures (``history.py``).

Host <-> device traffic on CuPy: the data set goes to the device once when it fits in a quarter
of the free device memory (otherwise each batch goes in as it is used; the shuffling order,
drawn on the host so that both backends see the same batches, goes in once per epoch); the only
device -> host reads are ``backend.read_to_host`` calls: the running loss/accuracy at most every
``REFRESH_INTERVAL`` seconds (for the progress bar and the checks), the epoch's last one bringing
all its batch losses, and one read per validation pass.
"""
import math
import time
import warnings

import numpy as np

from ..backend import get_array_module, read_scalars, read_to_host, to_device
from ..layers.losses import SoftMaxLoss
from . import metrics as metrics_mod
from .callbacks import CallbackList, TerminateOnNaN
from .epoch_sums import EpochSums
from .history import History, TrainingWarning
from .watchdog import LossWatchdog

__all__ = ["History", "TrainingWarning"]


class _Trainer:
    """The loop behind ``NeuralNetwork.fit``, configured whole by its constructor.

    ``net``: the network; ``X``, ``y``: prepared training data (``inputs.prepare_xy``);
    ``batch_size``, ``shuffle``, ``seed``, ``verbose`` as ``fit``'s; ``sample_weight``: ``(N,)``
    host weights or None; ``metrics``: the metrics ``fit`` reports (accuracy among them for a
    classifier); ``callbacks``: a ``CallbackList``; ``stop_on_nonfinite``: stop at a NaN/Inf loss,
    gradient or parameter (``fit`` passes True when a ``TerminateOnNaN`` is among the callbacks).
    """

    #: seconds between progress reads (loss/accuracy to the host for the bar and the checks)
    REFRESH_INTERVAL = 0.1
    #: None: read each batch's loss at once on NumPy (free there; stops before a NaN step) and
    #: only at progress refreshes on CuPy.  True/False force one schedule (tests use it).
    DEFER_READS = None
    _clock = staticmethod(time.monotonic)

    def __init__(self, net, X, y, batch_size, shuffle=False, seed=None, verbose=0, sample_weight=None,
                 metrics=None, callbacks=None, stop_on_nonfinite=True):
        self.net, self.batch_size, self.shuffle = net, batch_size, shuffle
        self.verbose, self.stop_on_nonfinite = verbose, stop_on_nonfinite
        self.rng = np.random.default_rng(seed)
        like = self.like = net.parameter_like()
        self.xp = get_array_module(like)
        self.on_device = self.xp is not np
        dtype = net.dtype
        if self.on_device and self._fits_on_device(X):
            X = to_device(X, like=like, dtype=dtype)   # the data set goes in once
            y = to_device(y, like=like)
        elif not self.on_device and X.dtype != dtype:
            X = X.astype(dtype)
        self.X, self.y = X, y
        self.classify = isinstance(net.loss_fn, SoftMaxLoss)
        self.defer = self.on_device if self.DEFER_READS is None else bool(self.DEFER_READS)
        self.sw = sample_weight
        self.val_metrics = metrics_mod.resolve(None, net.loss_fn) if metrics is None else list(metrics)
        self.metrics = [m for m in self.val_metrics if not isinstance(m, metrics_mod.Accuracy)]
        self.callbacks = callbacks if callbacks is not None else CallbackList([], net, {})
        self.watchdog = LossWatchdog(net, self._warn)

    def _zeros(self, n):
        """Zeros ``(n,)`` on the parameters' device (and of their array type) for the batch losses."""
        if self.like is None:
            return self.xp.zeros(n, dtype=self.net.dtype)
        return self.xp.zeros_like(self.like, shape=(n,))

    def _fits_on_device(self, X):
        try:
            free, _ = self.xp.cuda.runtime.memGetInfo()
        except Exception:  # pragma: no cover - depends on the device
            return False
        return X.size * self.net.dtype.itemsize < free / 4

    def _warn(self, msg, pbar=None):
        warnings.warn(msg, TrainingWarning, stacklevel=5)
        if self.verbose and pbar is not None:
            pbar.write("WARNING: " + msg)

    def run(self, epochs, val, val_batch=256):
        """Train ``epochs`` epochs, validating on ``val = (X, y[, sample_weight])`` after each;
        returns the ``History``."""
        # validation data that fit on the device go in once, not once per validation pass
        if val is not None and self.on_device and self._fits_on_device(val[0]):
            val = (to_device(val[0], like=self.like, dtype=self.net.dtype), to_device(val[1], like=self.like)) + \
                tuple(val[2:])
        if val is not None and len(val) == 2:
            val = (val[0], val[1], None)
        net = self.net
        net.stop_training = False
        try:
            # overflow to Inf/NaN is caught and reported by the loss checks (training stops with a
            # TrainingWarning), so NumPy's own overflow warnings would only repeat it
            with np.errstate(over="ignore", invalid="ignore"):
                hist = self._run(epochs, val, val_batch)
        finally:
            for layer in net.layers:
                layer.clear_cache()
            net.batch_split.rest()              # the workers stay for the next fit, without caches
        self.callbacks.call("on_train_end", {})
        return hist

    def _run(self, epochs, val, val_batch):
        net = self.net
        hist = net.history = History()
        cbl = self.callbacks
        cbl.call("on_train_begin", {})
        for epoch in range(1, epochs + 1):
            cbl.call("on_epoch_begin", epoch - 1, {})
            logs, stopped = self._epoch(epoch, epochs, hist)
            if stopped is not None:
                hist.stopped = stopped
                break
            if val is not None:
                vres = net._evaluate_all(val[0], val[1], val_batch, self.val_metrics, val[2])
                logs.update((f"val_{k}", v) for k, v in vres.items())
            hist._log(epoch, **logs)
            if self.verbose:
                print(f"Epoch {epoch}/{epochs}, " + ", ".join(f"{k}: {v:.4f}" for k, v in logs.items()),
                      flush=True)
            if len(hist.history["loss"]) > 1:
                self.watchdog.epoch_loss(hist.history["loss"], last=epoch == epochs)
            if self.classify and epoch >= 2:
                self.watchdog.chance(hist.history["loss"], hist.history["accuracy"], epoch, self.X.shape[0],
                                     self._label_shares)
            if cbl:
                logged = set(logs)
                cbl.call("on_epoch_end", epoch - 1, logs)
                for k in logs:                  # what callbacks added (learning_rate) goes in the history
                    if k not in logged:
                        hist.history.setdefault(k, [None] * (len(hist.epoch) - 1)).append(logs[k])
            if net.stop_training:
                who = cbl.stopped_by
                hist.stopped = (f"stopped by {type(who).__name__ if who is not None else 'stop_training'} "
                                f"after epoch {epoch}")
                break
        return hist

    def _epoch(self, epoch, epochs, hist):
        """One pass over the data: ``(logs, None)``, or ``(None, why)`` when a check stopped training."""
        net, cbl, watch = self.net, self.callbacks, self.watchdog
        n = self.X.shape[0]
        n_batches = math.ceil(n / self.batch_size)
        order = self.rng.permutation(n) if self.shuffle else None
        if order is not None and self.on_device and get_array_module(self.X) is not np:
            order = to_device(order, like=self.X)
        pbar = self._progress(epoch, epochs, n_batches)
        sums = EpochSums(self._zeros, self.xp, n_batches, self.defer, self.classify, self.y.ndim == 1, self.metrics)
        last_refresh = self._clock()
        try:
            for b in range(n_batches):
                a, z = b * self.batch_size, min((b + 1) * self.batch_size, n)
                sel = order[a:z] if order is not None else slice(a, z)
                xb = net._to_batch(self.X[sel])
                yb = to_device(self.y[sel], like=xb)
                wb = None if self.sw is None else to_device(self.sw[sel], like=xb, dtype=xb.dtype)
                # the update waits for the checks below
                loss, out = net._forward_backward(xb, yb, recheck=b == 0, sample_weight=wb)
                if self.defer:
                    sums.keep_loss(b, loss, out, yb)
                else:
                    lv = float(loss)                     # host memory: no transfer
                    if self.stop_on_nonfinite:           # neither a non-finite loss nor gradient is applied
                        bad = None if not math.isfinite(lv) else watch.nonfinite_grad()
                        if not math.isfinite(lv) or bad is not None:
                            return None, self._stop(epoch, b, lv, pbar, what=bad)
                    hist.batch_loss.append(lv)
                    watch.batch_loss(lv, pbar)           # smoothed: a spike shows though the mean hides it
                net.optimizer.step(net.layers)
                if not self.defer and self.stop_on_nonfinite:
                    bad = watch.nonfinite_param()
                    if bad is not None:                 # the update itself overflowed
                        return None, self._stop(epoch, b, lv, pbar, what=bad, applied=True)
                sums.add(loss, out, yb)
                if pbar is not None:
                    pbar.update(1)
                if cbl.batch_callbacks:
                    bl = lv if not self.defer else float(read_scalars(loss, why="callback")[0])
                    cbl.batch_end(b, {"loss": bl})
                stop_now = net.stop_training
                last = b == n_batches - 1 or stop_now
                now = self._clock()
                if now - last_refresh >= self.REFRESH_INTERVAL or last:
                    last_refresh = now
                    cur, acc, mvals, batch_losses = sums.read(b, last)
                    if not math.isfinite(cur) and self.stop_on_nonfinite:
                        return None, self._stop_deferred(epoch, b, cur, pbar, sums, batch_losses, hist)
                    if batch_losses is not None:
                        hist.batch_loss.extend(batch_losses.tolist())
                    if self.defer:
                        watch.running_loss(cur, pbar)
                    if pbar is not None:
                        post = {"loss": f"{cur:.4f}"}
                        if self.classify:
                            post["acc"] = f"{acc:.4f}"
                        post.update((metric.name, f"{v:.4f}") for metric, v in zip(self.metrics, mvals))
                        pbar.set_postfix(post, refresh=False)
                if stop_now:
                    break
        finally:
            if pbar is not None:
                pbar.close()
        logs = {"loss": cur}
        if self.classify:
            logs["accuracy"] = acc
        logs.update((metric.name, v) for metric, v in zip(self.metrics, mvals))
        return logs, None

    def _stop_deferred(self, epoch, b, cur, pbar, sums, batch_losses, hist):
        """A non-finite running loss at a progress read: on the deferred schedule, find the batch
        that failed among those since the last read."""
        if not self.defer:
            return self._stop(epoch, b, cur, pbar)
        if batch_losses is None:
            batch_losses = sums.batch_losses(b)
        bad = [i for i, v in enumerate(batch_losses.tolist()) if not math.isfinite(v)]
        first = bad[0] if bad else b
        hist.batch_loss.extend(batch_losses[:first].tolist())
        return self._stop(epoch, first, float(batch_losses[first]) if bad else cur, pbar)

    def _label_shares(self):
        """The share of each class among the training labels (one reduction, one read; the chance check)."""
        y = self.y
        xp = get_array_module(y)
        counts = (xp.bincount(y.astype(xp.int64).ravel()) if y.ndim == 1 else y.sum(axis=0, dtype=xp.float64))
        (counts,) = read_to_host(counts, why="check")
        counts = np.atleast_1d(counts)
        return (counts / max(float(counts.sum()), 1.0)).tolist()

    def _progress(self, epoch, epochs, n_batches):
        if not self.verbose:
            return None
        # the text bar everywhere: tqdm.auto would want ipywidgets in a notebook (and warn
        # "IProgress not found" without them); a widget does not show in a stored notebook
        from tqdm import tqdm  # noqa: PLC0415 - optional at import time
        return tqdm(total=n_batches, desc=f"Epoch {epoch}/{epochs}", unit="batch", leave=True)

    def _stop(self, epoch, batch, value, pbar, what=None, applied=False):
        """Warn why training stops; ``TerminateOnNaN`` records where.  Returns the message."""
        msg = self.watchdog.stop_message(epoch, batch, value, self.defer, what=what, applied=applied)
        self._warn(msg, pbar)
        for cb in self.callbacks:
            if isinstance(cb, TerminateOnNaN):
                cb._record(epoch - 1, batch, value)
        return msg
