"""The trainer behind ``NeuralNetwork.fit``: epochs, batches, validation, callbacks, progress and
the checks that stop a run going wrong (non-finite losses and gradients, a rising loss, a loss no
lower than chance).  ``History`` holds its per-epoch figures.

One step per batch (``NeuralNetwork._forward_backward``: through the engine or the layers' own
code, ``network.py``), then ``optimizer.step``.  Host <-> device traffic on CuPy: see
``network.py``'s module docstring.
"""
import math
import time
import warnings

import numpy as np

from ..backend import get_array_module, read_scalars, read_to_host, to_device
from ..engine import kernels
from ..layers.losses import SoftMaxLoss
from . import metrics as metrics_mod
from .callbacks import CallbackList, TerminateOnNaN

__all__ = ["History", "TrainingWarning"]


class TrainingWarning(RuntimeWarning):
    """Training is going wrong: the loss is rising or became NaN/Inf."""


class History:
    """Per-epoch figures of ``fit``: ``history.history["loss"]`` etc. (as in Keras).

    ``batch_loss`` holds every batch's loss; ``stopped`` says why training
    ended early (``None`` when it ran all epochs).
    """

    def __init__(self):
        self.history = {}
        self.epoch = []
        self.batch_loss = []
        self.stopped = None

    def _log(self, epoch, **values):
        self.epoch.append(epoch)
        for k, v in values.items():
            self.history.setdefault(k, []).append(v)

    def __getitem__(self, key):
        return self.history[key]

    def __repr__(self):
        last = {k: v[-1] for k, v in self.history.items() if v}
        return f"History(epochs={len(self.epoch)}, last={last}, stopped={self.stopped!r})"


class _Trainer:
    """The loop behind ``NeuralNetwork.fit`` (kept apart so fit reads simply)."""

    #: warn when the smoothed loss exceeds its starting level by this factor and by RISE_MARGIN
    #: (the margin keeps the noise of a small, converged loss, 0.02 -> 0.04, from counting)
    RISE_FACTOR, RISE_MARGIN = 2.0, 0.1
    #: batches averaged for the starting level; the smoothed loss is an exponential average
    #: over about as many batches
    RISE_WINDOW = 20
    #: seconds between progress reads (loss/accuracy to the host for the bar and the checks)
    REFRESH_INTERVAL = 0.1
    #: None: read each batch's loss at once on NumPy (free there; stops before a NaN step) and
    #: only at progress refreshes on CuPy.  True/False force one schedule (tests use it).
    DEFER_READS = None
    _clock = staticmethod(time.monotonic)
    CHANCE_FRACTION = 0.97  # warn when an epoch's loss (epoch >= 2) is above 97% of ln(K)

    def __init__(self, net, X, y, batch_size, shuffle, seed, verbose, stop_on_nonfinite):
        self.net, self.batch_size, self.shuffle = net, batch_size, shuffle
        self.verbose, self.stop_on_nonfinite = verbose, stop_on_nonfinite
        self.rng = np.random.default_rng(seed)
        like = net._param_like()
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
        self.first_loss = None
        self.warned_rise = False
        self.defer = self.on_device if self.DEFER_READS is None else bool(self.DEFER_READS)
        self.like = like
        self.warned_chance = False
        self.ema = None
        self.start_losses = []       # the first RISE_WINDOW batch losses (CPU schedule)
        self.callbacks = CallbackList([], net, {})
        self.sw = None                   # sample weights (N,) on the host, or None
        self.metrics = []                # metrics besides the loss and accuracy
        self.val_metrics = metrics_mod.resolve(None, net.loss_fn)

    def _loss_buffer(self, n):
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
        warnings.warn(msg, TrainingWarning, stacklevel=4)
        if self.verbose and pbar is not None:
            pbar.write("WARNING: " + msg)

    def run(self, epochs, val, val_batch=256):
        # validation data that fit on the device go in once, not once per validation pass
        if val is not None and self.on_device and self._fits_on_device(val[0]):
            val = (to_device(val[0], like=self.like, dtype=self.net.dtype), to_device(val[1], like=self.like)) + \
                tuple(val[2:])
        if val is not None and len(val) == 2:
            val = (val[0], val[1], None)
        # overflow to Inf/NaN is caught and reported by the loss checks below (training stops
        # with a TrainingWarning), so NumPy's own overflow warnings would only repeat it
        net = self.net
        net.stop_training = False
        try:
            with np.errstate(over="ignore", invalid="ignore"):
                hist = self._run(epochs, val, val_batch)
        finally:
            for layer in net.layers:
                layer.clear_cache()
            if net._sharded is not None:        # the workers stay for the next fit, without caches
                net._sharded.rest()
        self.callbacks.call("on_train_end", {})
        return hist

    def _run(self, epochs, val, val_batch):
        net = self.net
        hist = History()
        net.history = hist
        n = self.X.shape[0]
        n_batches = math.ceil(n / self.batch_size)
        cbl = self.callbacks
        cbl.call("on_train_begin", {})
        for epoch in range(1, epochs + 1):
            cbl.call("on_epoch_begin", epoch - 1, {})
            order = self.rng.permutation(n) if self.shuffle else None
            if order is not None and self.on_device and get_array_module(self.X) is not np:
                order = to_device(order, like=self.X)
            pbar = self._progress(epoch, epochs, n_batches)
            sum_loss, sum_correct, seen = 0.0, 0, 0
            msums = [0] * len(self.metrics)     # the other metrics' running sums (on the device)
            # deferred reads: every batch's loss stays on the device until the epoch's last read
            losses = self._loss_buffer(n_batches) if self.defer else None
            # ... and with integer labels one kernel keeps the batch loss and the running sums there
            fused_sums = self.defer and self.classify and self.y.ndim == 1
            if fused_sums:
                sum_loss = self._loss_buffer(1).reshape(())     # 0-d arrays, updated in place
                sum_correct = self.xp.zeros((), dtype=np.int64)
            last_refresh = self._clock()
            stopped = None
            for b in range(n_batches):
                a, z = b * self.batch_size, min((b + 1) * self.batch_size, n)
                sel = order[a:z] if order is not None else slice(a, z)
                xb = net._to_batch(self.X[sel])
                yb = to_device(self.y[sel], like=xb)
                wb = None if self.sw is None else to_device(self.sw[sel], like=xb, dtype=xb.dtype)
                # the update waits for the checks below
                loss, out = net._forward_backward(xb, yb, recheck=b == 0, sample_weight=wb)
                m = z - a
                if fused_sums:                          # device -> device, no read
                    kernels.accumulate_batch(sum_loss, sum_correct, losses, b, loss, out, yb)
                elif self.defer:
                    losses[b:b + 1] = loss              # device -> device, no read
                else:
                    lv = float(loss)                     # host memory: no transfer
                    if not math.isfinite(lv) and self.stop_on_nonfinite:
                        stopped = self._nonfinite(epoch, b, lv, pbar)
                        break
                    if self.stop_on_nonfinite:           # nor a step of non-finite gradients
                        bad = self._nonfinite_grad()
                        if bad is not None:
                            stopped = self._nonfinite(epoch, b, lv, pbar, what=bad)
                            break
                    hist.batch_loss.append(lv)
                    # smoothed batch loss: a spike shows even when the epoch mean hides it
                    self._check_batch_loss(lv, pbar)
                net.optimizer.step(net.layers)
                if not self.defer and self.stop_on_nonfinite:
                    bad = self._nonfinite_param()
                    if bad is not None:                 # the update itself overflowed
                        stopped = self._nonfinite(epoch, b, lv, pbar, what=bad, applied=True)
                        break
                seen += m
                if not fused_sums:
                    sum_loss = sum_loss + loss * m
                if self.classify and not fused_sums:
                    labels = yb.argmax(axis=1) if yb.ndim == 2 else yb
                    sum_correct = sum_correct + (out.argmax(axis=1) == labels).sum()
                for i, metric in enumerate(self.metrics):
                    msums[i] = msums[i] + metric.batch_sum(out, yb)
                now = self._clock()
                if pbar is not None:
                    pbar.update(1)
                if cbl.batch_callbacks:
                    bl = lv if not self.defer else float(read_scalars(loss, why="callback")[0])
                    cbl.batch_end(b, {"loss": bl})
                stop_now = net.stop_training
                last = b == n_batches - 1 or stop_now
                if now - last_refresh >= self.REFRESH_INTERVAL or last:
                    last_refresh = now
                    # the one device->host read of a refresh; the epoch's last one also
                    # brings every batch loss of the epoch
                    tail = (losses[:b + 1],) if self.defer and last else ()
                    tot_loss, tot_correct, *batch = read_to_host(sum_loss, sum_correct, *msums, *tail,
                                                                 why="progress")
                    mvals, batch = [v / seen for v in batch[:len(msums)]], batch[len(msums):]
                    cur = tot_loss / seen
                    if not math.isfinite(cur) and self.stop_on_nonfinite:
                        if self.defer:   # find the batch that failed among those since the last read
                            if not batch:
                                batch = read_to_host(losses[:b + 1], why="progress")
                            bad = [i for i, v in enumerate(batch[0].tolist()) if not math.isfinite(v)]
                            first = bad[0] if bad else b
                            hist.batch_loss.extend(batch[0][:first].tolist())
                            stopped = self._nonfinite(epoch, first, float(batch[0][first]) if bad else cur, pbar)
                        else:
                            stopped = self._nonfinite(epoch, b, cur, pbar)
                        break
                    if batch:
                        hist.batch_loss.extend(batch[0].tolist())
                    if self.defer:
                        self._check_rise(cur, pbar)
                    if pbar is not None:
                        post = {"loss": f"{cur:.4f}"}
                        if self.classify:
                            post["acc"] = f"{tot_correct / seen:.4f}"
                        post.update((metric.name, f"{v:.4f}") for metric, v in zip(self.metrics, mvals))
                        pbar.set_postfix(post, refresh=False)
                if stop_now:
                    break
            if pbar is not None:
                pbar.close()
            if stopped is not None:
                hist.stopped = stopped
                break
            logs = {"loss": cur}
            if self.classify:
                logs["accuracy"] = tot_correct / seen
            logs.update((metric.name, v) for metric, v in zip(self.metrics, mvals))
            if val is not None:
                vres = net._evaluate_all(val[0], val[1], val_batch, self.val_metrics, val[2])
                logs.update((f"val_{k}", v) for k, v in vres.items())
            hist._log(epoch, **logs)
            if self.verbose:
                print(f"Epoch {epoch}/{epochs}, " + ", ".join(f"{k}: {v:.4f}" for k, v in logs.items()),
                      flush=True)
            if len(hist.history["loss"]) > 1 and self._risen(hist.history["loss"][-2], logs["loss"]):
                self._warn_rise(hist.history["loss"][-2], logs["loss"], pbar=None)
            if self.classify and epoch >= 2:
                self._check_chance(logs["loss"], epoch)
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

    def _progress(self, epoch, epochs, n_batches):
        if not self.verbose:
            return None
        # the text bar everywhere: tqdm.auto would want ipywidgets in a notebook (and warn
        # "IProgress not found" without them); a widget does not show in a stored notebook
        from tqdm import tqdm  # noqa: PLC0415 - optional at import time
        return tqdm(total=n_batches, desc=f"Epoch {epoch}/{epochs}", unit="batch", leave=True)

    def _nonfinite_grad(self):
        """``"the gradient of <param> of <layer>"`` for the first gradient holding NaN/Inf, else None.
        One float64 sum per gradient (NaN and Inf survive a sum; float32 values, finite however
        large, cannot overflow it): no temporary arrays, ~1 pass over the gradients."""
        for layer in self.net.layers:
            if getattr(layer, "trainable", False):
                for name, g in layer.grads.items():
                    if not math.isfinite(float(g.sum(dtype=np.float64))):
                        return f"the gradient of {name} in {layer._describe()}"
        return None

    def _nonfinite_param(self):
        """The same check of the parameters after an update (``lr * gradient`` beyond the float range)."""
        for layer in self.net.layers:
            if getattr(layer, "trainable", False):
                for name, p in layer.params.items():
                    if not math.isfinite(float(p.sum(dtype=np.float64))):
                        return f"parameter {name} of {layer._describe()}"
        return None

    def _nonfinite(self, epoch, batch, value, pbar, what=None, applied=False):
        if applied:
            kept = ("the update itself overflowed (learning rate times gradient beyond the float range), so "
                    "the weights now hold NaN/Inf")
        elif not self.defer:
            kept = "the weights are those before the failing step (the last finite ones)"
        else:
            kept = "the weights may already hold NaN/Inf (on the GPU the loss is read only at progress updates)"
        became = (f"{what} became NaN/Inf (the loss was {value})" if what is not None and not applied else
                  f"{what} became NaN/Inf" if what is not None else f"the loss became {value}")
        msg = (f"training stopped: {became} at epoch {epoch}, batch {batch + 1}. "
               f"The learning rate ({self.net.optimizer.lr}) is probably too high for this network; {kept}")
        self._warn(msg, pbar)
        for cb in self.callbacks:
            if isinstance(cb, TerminateOnNaN):
                cb._record(epoch - 1, batch, value)
        return msg

    def _risen(self, before, after):
        return after > before * self.RISE_FACTOR and after > before + self.RISE_MARGIN

    def _check_batch_loss(self, loss, pbar):
        """Per-batch losses (CPU): the start level is the mean of the first RISE_WINDOW batches,
        compared with an exponential average over about as many.  Also: a loss risen by orders of
        magnitude above the lowest so far (``_check_diverging``), which the start level can hide
        when the loss explodes within the first batches (issue 22: lr=10 drove it to 4.7e12 unwarned)."""
        self._check_diverging(loss, pbar)
        if len(self.start_losses) < self.RISE_WINDOW:
            self.start_losses.append(loss)
            self.ema = sum(self.start_losses) / len(self.start_losses)
            if len(self.start_losses) == self.RISE_WINDOW:
                self.first_loss = self.ema
            return
        self.ema += (loss - self.ema) / self.RISE_WINDOW
        self._check_rise(self.ema, pbar)

    #: warn when a loss exceeds the lowest seen in this fit by this factor and by DIVERGE_MARGIN
    DIVERGE_FACTOR, DIVERGE_MARGIN = 100.0, 10.0

    def _check_diverging(self, loss, pbar):
        low = self.lowest = loss if getattr(self, "lowest", None) is None else min(self.lowest, loss)
        if getattr(self, "warned_diverge", False) or not (loss > low * self.DIVERGE_FACTOR
                                                          and loss > low + self.DIVERGE_MARGIN):
            return
        self.warned_diverge = True
        self._warn(f"the training loss is diverging: it rose by orders of magnitude, from {low:.4g} to {loss:.4g}; "
                   f"the learning rate ({self.net.optimizer.lr}) is too high (or the inputs are far from unit scale)",
                   pbar)

    def _check_rise(self, cur, pbar):
        if self.defer:
            self._check_diverging(cur, pbar)
        if self.first_loss is None:
            self.first_loss = cur
            return
        if not self.warned_rise and self._risen(self.first_loss, cur):
            self._warn_rise(self.first_loss, cur, pbar)

    def _check_chance(self, loss, epoch):
        """Warn once when softmax cross-entropy is no lower than ln(K): no better than uniform guessing.

        (The seed lab's lr=0.5: the loss dips, spikes, then sits at ln 10 = 2.303.)
        """
        shape = self.net.output_shape
        k = shape[0] if shape and len(shape) == 1 and shape[0] is not None else None
        if self.warned_chance or k is None or k < 2 or not loss >= self.CHANCE_FRACTION * math.log(k):
            return
        self.warned_chance = True
        self._warn(f"after {epoch} epochs the training loss ({loss:.4g}) is no lower than chance level (ln {k} = "
                   f"{math.log(k):.4g}, the loss of predicting every class with probability 1/{k}): the network "
                   f"is not learning. If the loss was lower at first, the learning rate ({self.net.optimizer.lr}) "
                   "is too high; otherwise check that the labels belong to the images, or raise the learning rate")

    def _warn_rise(self, before, after, pbar):
        if self.warned_rise:
            return
        self.warned_rise = True
        self._warn(f"the training loss is rising ({before:.4g} -> {after:.4g}); the learning rate "
                   f"({self.net.optimizer.lr}) may be too high", pbar)
