"""The checks that stop or warn about a training run going wrong, apart from the loop that trains.

``LossWatchdog`` watches the losses ``fit`` sees and warns (``TrainingWarning``, once each) when

* the loss is **rising**: the smoothed loss exceeds its starting level by ``RISE_FACTOR`` and by
  ``RISE_MARGIN`` for ``RISE_WINDOW`` batches in a row (on NumPy, where each batch's loss is read at
  once), or the epoch's running mean for ``RISE_READS`` progress reads in a row (on CuPy, about
  ``REFRESH_INTERVAL`` apart: the mean is smooth already), or an epoch's loss exceeds the lowest
  earlier epoch's by as much in two epochs in a row, or in the last epoch of the fit (a single
  epoch's spike that the next epoch takes back is an oscillation, not a rise);
* the loss is **diverging**: it rose by orders of magnitude above the lowest seen in this fit
  (``DIVERGE_FACTOR`` and ``DIVERGE_MARGIN``), which the starting level can hide when the loss
  explodes within the first batches (``lr=10`` drives a LeNet-5 loss to 4.7e12 in a few batches);
* the network is **not learning**: from the second epoch on, softmax cross-entropy is above
  ``CHANCE_FRACTION`` of ``ln K`` (the loss of predicting every class with probability 1/K), the
  training accuracy is not well above chance (``well_above_chance``) and the fit is not still
  improving (``improving``: the loss fell by ``FALL_FRACTION`` over the last epoch, the accuracy did
  not fall, and the loss is below ``ln K`` or the accuracy rose beyond its noise).  The rule and
  its table of cases are in ``docs/training.md``, "Training warnings"; ``chance_verdict`` and
  ``rising_epochs`` judge recorded histories.

It also finds the first **non-finite** gradient or parameter of a step (``nonfinite_grad``,
``nonfinite_param``) and words the message with which training stops (``stop_message``).
"""
import math

import numpy as np

__all__ = ["LossWatchdog", "chance_verdict", "rising_epochs", "well_above_chance", "improving"]


class LossWatchdog:
    """The loss checks of one ``fit`` (see the module docstring); ``warn(msg, pbar)`` issues a warning."""

    #: warn when the smoothed loss exceeds its starting level by this factor and by RISE_MARGIN
    #: (the margin keeps the noise of a small, converged loss, 0.02 -> 0.04, from counting)
    RISE_FACTOR, RISE_MARGIN = 2.0, 0.1
    #: batches averaged for the starting level; the smoothed loss is an exponential average
    #: over about as many batches
    RISE_WINDOW = 20
    #: progress reads in a row with the running mean risen (deferred reads, CuPy)
    RISE_READS = 3
    #: warn when a loss exceeds the lowest seen in this fit by this factor and by DIVERGE_MARGIN
    DIVERGE_FACTOR, DIVERGE_MARGIN = 100.0, 10.0
    #: the chance-level warning: an epoch's loss (epoch >= 2) above this fraction of ln(K) ...
    CHANCE_FRACTION = 0.97
    #: ... unless the training accuracy is well above chance (``well_above_chance``: this share of
    #: the way from the chance accuracy to 1, and at least ACCURACY_SIGMAS standard errors) ...
    ABOVE_CHANCE, ACCURACY_SIGMAS = 0.1, 4.0
    #: ... or the fit is improving: the loss fell by this fraction over the last epoch, the accuracy
    #: did not fall, and the loss is below ln(K) or the accuracy rose by ACCURACY_SIGMAS standard
    #: errors (``improving``)
    FALL_FRACTION = 0.01

    def __init__(self, net, warn):
        self.net, self.warn = net, warn
        self.first_loss = None       # the starting level
        self.ema = None              # the smoothed batch loss (per-batch schedule)
        self.start_losses = []       # the first RISE_WINDOW batch losses (per-batch schedule)
        self.lowest = None
        self.risen_reads = 0         # progress reads in a row with the smoothed loss risen
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
        self._rise(self.ema, pbar, self.RISE_WINDOW)

    def running_loss(self, cur, pbar):
        """The epoch's running mean loss at a progress read (deferred reads, CuPy)."""
        self._diverging(cur, pbar)
        self._rise(cur, pbar, self.RISE_READS)

    def epoch_loss(self, losses, last=False):
        """The epoch losses of this fit so far (``rising_epochs``); ``last``: the fit's last epoch."""
        rise = rising_epochs(losses, last, self.RISE_FACTOR, self.RISE_MARGIN)
        if rise is not None:
            self._warn_rise(*rise, pbar=None)

    def _diverging(self, loss, pbar):
        low = self.lowest = loss if self.lowest is None else min(self.lowest, loss)
        if self.warned_diverge or not (loss > low * self.DIVERGE_FACTOR and loss > low + self.DIVERGE_MARGIN):
            return
        self.warned_diverge = True
        self.warn(f"the training loss is diverging: it rose by orders of magnitude, from {low:.4g} to {loss:.4g}; "
                  f"the learning rate ({self.net.optimizer.lr}) is too high (or the inputs are far from unit scale)",
                  pbar)

    def _rise(self, cur, pbar, needed):
        if self.first_loss is None:
            self.first_loss = cur
            return
        self.risen_reads = self.risen_reads + 1 if self.risen(self.first_loss, cur) else 0
        if not self.warned_rise and self.risen_reads >= needed:
            self._warn_rise(self.first_loss, cur, pbar)

    def _warn_rise(self, before, after, pbar):
        if self.warned_rise:
            return
        self.warned_rise = True
        self.warn(f"the training loss is rising ({before:.4g} -> {after:.4g}); the learning rate "
                  f"({self.net.optimizer.lr}) may be too high", pbar)

    # -- chance level ---------------------------------------------------------------------------
    def chance(self, losses, accuracies, epoch, n_samples, shares=None):
        """Warn once when the network is not learning (``chance_verdict`` on this fit's epochs so far).

        ``shares``: a function giving the class shares of the training labels (the best constant
        guess is the largest), called only when the loss is at chance level.
        (The seed lab's lr=0.5: the loss dips, spikes, then sits at ln 10 = 2.303.)
        """
        shape = self.net.output_shape
        k = shape[0] if shape and len(shape) == 1 and shape[0] is not None else None
        if self.warned_chance or k is None or k < 2 or not losses[-1] >= self.CHANCE_FRACTION * math.log(k):
            return
        guess = max(shares()) if shares is not None else 1.0 / k
        verdict = chance_verdict(losses, accuracies, k, guess, n_samples, self)
        if verdict is None:
            return
        self.warned_chance = True
        loss, acc = losses[-1], accuracies[-1]
        self.warn(f"after {epoch} epochs the training loss ({loss:.4g}) is no lower than chance level (ln {k} = "
                  f"{math.log(k):.4g}, the loss of predicting every class with probability 1/{k}) and the training "
                  f"accuracy ({100 * acc:.1f} %) is not well above the best constant guess ({100 * guess:.1f} %), "
                  f"{verdict}: the network is not learning. If the loss was lower at first, the learning rate "
                  f"({self.net.optimizer.lr}) is too high; otherwise check that the labels belong to the images, "
                  "or raise the learning rate", None)

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


# -- the rules on recorded histories (also what the tests' table of cases runs) --------------------
def well_above_chance(accuracy, chance, n, rules=LossWatchdog):
    """True when ``accuracy`` (over ``n`` samples) is well above ``chance`` (the best constant guess's
    accuracy): by ``ABOVE_CHANCE`` of the way from ``chance`` to 1, and by ``ACCURACY_SIGMAS`` standard
    errors ``sqrt(chance (1 - chance) / n)`` of an accuracy measured at chance."""
    se = math.sqrt(chance * (1 - chance) / max(int(n), 1))
    return accuracy >= chance + max(rules.ABOVE_CHANCE * (1 - chance), rules.ACCURACY_SIGMAS * se)


def improving(losses, accuracies, chance, n, k=None, rules=LossWatchdog):
    """True when the last epoch still improved: the loss fell by ``FALL_FRACTION`` of its value, the
    accuracy did not fall, and either the loss is below ``ln k`` (better than the uniform guess, and
    still falling: learning slowly) or the accuracy rose by ``ACCURACY_SIGMAS`` standard errors.  A loss
    falling back towards the level of a constant guess after a spike, the accuracy falling with it
    or staying at chance, is no improvement."""
    if len(losses) < 2 or len(accuracies) < 2:
        return False
    se = math.sqrt(chance * (1 - chance) / max(int(n), 1))
    if not (losses[-1] <= (1 - rules.FALL_FRACTION) * losses[-2] and accuracies[-1] >= accuracies[-2]):
        return False
    return (k is not None and losses[-1] < math.log(k)) or accuracies[-1] - accuracies[-2] >= rules.ACCURACY_SIGMAS * se


def chance_verdict(losses, accuracies, k, chance, n, rules=LossWatchdog):
    """Why the epochs so far (``losses``, training ``accuracies``; ``k`` classes, ``chance`` the best
    constant guess's accuracy, ``n`` training samples) show a network that is not learning, or None.

    Not learning: from the second epoch, the loss is at least ``CHANCE_FRACTION * ln k``, the
    accuracy is not ``well_above_chance`` and the last epoch is not ``improving``."""
    if len(losses) < 2 or k < 2:
        return None
    loss = losses[-1]
    if not (math.isfinite(loss) and loss >= rules.CHANCE_FRACTION * math.log(k)):
        return None
    if well_above_chance(accuracies[-1], chance, n, rules) or improving(losses, accuracies, chance, n, k, rules):
        return None
    trend = f"loss {losses[-2]:.4g} -> {loss:.4g}, accuracy {100 * accuracies[-2]:.1f} % -> {100 * accuracies[-1]:.1f} %"
    if loss <= (1 - rules.FALL_FRACTION) * losses[-2]:
        return (f"and in the last epoch the loss fell but the accuracy {'fell' if accuracies[-1] < accuracies[-2] else 'did not rise beyond its noise'} "
                f"({trend})")
    return f"and the loss stopped falling in the last epoch ({trend})"


def rising_epochs(losses, last=False, factor=LossWatchdog.RISE_FACTOR, margin=LossWatchdog.RISE_MARGIN):
    """``(lowest earlier epoch loss, latest)`` when the epoch losses have risen, else None: the latest
    exceeds the lowest earlier one by ``factor`` and by ``margin``, and so did the epoch before it
    (the rise lasts), or this is the fit's ``last`` epoch (no later epoch can take it back)."""
    def risen_at(i):
        if i < 1:
            return False
        low = min(losses[:i])
        return losses[i] > low * factor and losses[i] > low + margin

    i = len(losses) - 1
    if not risen_at(i) or not (last or risen_at(i - 1)):
        return None
    return min(losses[:i]), losses[i]
