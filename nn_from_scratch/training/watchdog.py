"""The checks that stop or warn about a training run going wrong, apart from the loop that trains.

``LossWatchdog`` watches the losses ``fit`` sees and warns (``TrainingWarning``, once each) when

* the loss is **rising**: the smoothed loss exceeds its starting level by ``RISE_FACTOR`` and by
  ``RISE_MARGIN`` (per batch on NumPy, where each batch's loss is read at once; per progress read
  on CuPy), or an epoch's loss exceeds the one before by as much;
* the loss is **diverging**: it rose by orders of magnitude above the lowest seen in this fit
  (``DIVERGE_FACTOR`` and ``DIVERGE_MARGIN``), which the starting level can hide when the loss
  explodes within the first batches (``lr=10`` drives a LeNet-5 loss to 4.7e12 in a few batches);
* the loss sits at **chance level**: softmax cross-entropy above ``CHANCE_FRACTION`` of ``ln K``
  from the second epoch on (the network predicts every class with probability 1/K).

It also finds the first **non-finite** gradient or parameter of a step (``nonfinite_grad``,
``nonfinite_param``) and words the message with which training stops (``stop_message``).
"""
import math

import numpy as np

__all__ = ["LossWatchdog"]


class LossWatchdog:
    """The loss checks of one ``fit`` (see the module docstring); ``warn(msg, pbar)`` issues a warning."""

    #: warn when the smoothed loss exceeds its starting level by this factor and by RISE_MARGIN
    #: (the margin keeps the noise of a small, converged loss, 0.02 -> 0.04, from counting)
    RISE_FACTOR, RISE_MARGIN = 2.0, 0.1
    #: batches averaged for the starting level; the smoothed loss is an exponential average
    #: over about as many batches
    RISE_WINDOW = 20
    #: warn when a loss exceeds the lowest seen in this fit by this factor and by DIVERGE_MARGIN
    DIVERGE_FACTOR, DIVERGE_MARGIN = 100.0, 10.0
    #: warn when an epoch's loss (epoch >= 2) is above this fraction of ln(K)
    CHANCE_FRACTION = 0.97

    def __init__(self, net, warn):
        self.net, self.warn = net, warn
        self.first_loss = None       # the starting level
        self.ema = None              # the smoothed batch loss (per-batch schedule)
        self.start_losses = []       # the first RISE_WINDOW batch losses (per-batch schedule)
        self.lowest = None
        self.warned_rise = self.warned_diverge = self.warned_chance = False

    # -- rising and diverging -------------------------------------------------------------------
    def risen(self, before, after):
        return after > before * self.RISE_FACTOR and after > before + self.RISE_MARGIN

    def batch_loss(self, loss, pbar):
        """A batch's loss (read at once, NumPy): the start level is the mean of the first
        RISE_WINDOW batches, compared with an exponential average over about as many; and the
        diverging check."""
        self._diverging(loss, pbar)
        if len(self.start_losses) < self.RISE_WINDOW:
            self.start_losses.append(loss)
            self.ema = sum(self.start_losses) / len(self.start_losses)
            if len(self.start_losses) == self.RISE_WINDOW:
                self.first_loss = self.ema
            return
        self.ema += (loss - self.ema) / self.RISE_WINDOW
        self._rise(self.ema, pbar)

    def running_loss(self, cur, pbar):
        """The epoch's running mean loss at a progress read (deferred reads, CuPy)."""
        self._diverging(cur, pbar)
        self._rise(cur, pbar)

    def epoch_loss(self, before, after):
        """An epoch's loss against the one before."""
        if self.risen(before, after):
            self._warn_rise(before, after, pbar=None)

    def _diverging(self, loss, pbar):
        low = self.lowest = loss if self.lowest is None else min(self.lowest, loss)
        if self.warned_diverge or not (loss > low * self.DIVERGE_FACTOR and loss > low + self.DIVERGE_MARGIN):
            return
        self.warned_diverge = True
        self.warn(f"the training loss is diverging: it rose by orders of magnitude, from {low:.4g} to {loss:.4g}; "
                  f"the learning rate ({self.net.optimizer.lr}) is too high (or the inputs are far from unit scale)",
                  pbar)

    def _rise(self, cur, pbar):
        if self.first_loss is None:
            self.first_loss = cur
            return
        if not self.warned_rise and self.risen(self.first_loss, cur):
            self._warn_rise(self.first_loss, cur, pbar)

    def _warn_rise(self, before, after, pbar):
        if self.warned_rise:
            return
        self.warned_rise = True
        self.warn(f"the training loss is rising ({before:.4g} -> {after:.4g}); the learning rate "
                  f"({self.net.optimizer.lr}) may be too high", pbar)

    # -- chance level ---------------------------------------------------------------------------
    def chance(self, loss, epoch):
        """Warn once when softmax cross-entropy is no lower than ln(K): no better than uniform guessing.

        (The seed lab's lr=0.5: the loss dips, spikes, then sits at ln 10 = 2.303.)
        """
        shape = self.net.output_shape
        k = shape[0] if shape and len(shape) == 1 and shape[0] is not None else None
        if self.warned_chance or k is None or k < 2 or not loss >= self.CHANCE_FRACTION * math.log(k):
            return
        self.warned_chance = True
        self.warn(f"after {epoch} epochs the training loss ({loss:.4g}) is no lower than chance level (ln {k} = "
                  f"{math.log(k):.4g}, the loss of predicting every class with probability 1/{k}): the network "
                  f"is not learning. If the loss was lower at first, the learning rate ({self.net.optimizer.lr}) "
                  "is too high; otherwise check that the labels belong to the images, or raise the learning rate",
                  None)

    # -- non-finite values ----------------------------------------------------------------------
    def nonfinite_grad(self):
        """``"the gradient of <param> in <layer>"`` for the first gradient holding NaN/Inf, else None.
        One float64 sum per gradient (NaN and Inf survive a sum; float32 values, finite however
        large, cannot overflow it): no temporary arrays, ~1 pass over the gradients."""
        for layer in self.net.layers:
            if getattr(layer, "trainable", False):
                for name, g in layer.grads.items():
                    if not math.isfinite(float(g.sum(dtype=np.float64))):
                        return f"the gradient of {name} in {layer._describe()}"
        return None

    def nonfinite_param(self):
        """The same check of the parameters after an update (``lr * gradient`` beyond the float range)."""
        for layer in self.net.layers:
            if getattr(layer, "trainable", False):
                for name, p in layer.params.items():
                    if not math.isfinite(float(p.sum(dtype=np.float64))):
                        return f"parameter {name} of {layer._describe()}"
        return None

    def stop_message(self, epoch, batch, value, deferred, what=None, applied=False):
        """Why training stopped at ``epoch``, ``batch`` (0-based), and what the weights now are."""
        if applied:
            kept = ("the update itself overflowed (learning rate times gradient beyond the float range), so "
                    "the weights now hold NaN/Inf")
        elif not deferred:
            kept = "the weights are those before the failing step (the last finite ones)"
        else:
            kept = "the weights may already hold NaN/Inf (on the GPU the loss is read only at progress updates)"
        became = (f"{what} became NaN/Inf (the loss was {value})" if what is not None and not applied else
                  f"{what} became NaN/Inf" if what is not None else f"the loss became {value}")
        return (f"training stopped: {became} at epoch {epoch}, batch {batch + 1}. "
                f"The learning rate ({self.net.optimizer.lr}) is probably too high for this network; {kept}")
