"""One epoch's running figures in ``fit``: the summed loss, correct predictions and metric sums.

Two schedules (``fit``'s trainer picks one):

* **immediate** (NumPy): each batch's loss is read at once (free on the host), the sums are
  host numbers or arrays;
* **deferred** (CuPy): nothing is read per batch.  Every batch's loss stays on the device in
  ``losses`` until the epoch's last read, and with integer class labels one kernel
  (``kernels.accumulate_batch``, **fused**) keeps the batch loss, the loss sum and the correct
  count there, in place.

``read`` brings the sums (and, at the epoch's end, every batch loss) to the host in one read.
"""
import numpy as np

from ..backend import read_to_host
from ..engine import kernels

__all__ = ["EpochSums"]


class EpochSums:
    """The sums of one epoch of ``n_batches`` batches (see the module docstring).

    ``zeros(n)``: zeros ``(n,)`` on the parameters' device, of their dtype.  ``classify``: the
    loss is softmax cross-entropy (accuracy counted); ``int_labels``: the labels are class
    indices (``(N,)``); ``metrics``: the other metrics (``Metric.batch_sum``)."""

    def __init__(self, zeros, xp, n_batches, deferred, classify, int_labels, metrics):
        self.deferred, self.classify, self.metrics = deferred, classify, metrics
        self.fused = deferred and classify and int_labels
        self.losses = zeros(n_batches) if deferred else None
        if self.fused:
            self.loss = zeros(1).reshape(())                 # 0-d arrays, updated in place
            self.correct = xp.zeros((), dtype=np.int64)
        else:
            self.loss, self.correct = 0.0, 0
        self.metric_sums = [0] * len(metrics)
        self.seen = 0

    def keep_loss(self, b, loss, out, yb):
        """Before the update (deferred schedule): batch ``b``'s loss stays on the device (device to
        device, no read); fused, with the loss sum and the correct count."""
        if self.fused:
            kernels.accumulate_batch(self.loss, self.correct, self.losses, b, loss, out, yb)
        elif self.deferred:
            self.losses[b:b + 1] = loss

    def add(self, loss, out, yb):
        """After the update: batch's loss, correct predictions and metrics into the sums."""
        m = out.shape[0]
        self.seen += m
        if not self.fused:
            self.loss = self.loss + loss * m
            if self.classify:
                labels = yb.argmax(axis=1) if yb.ndim == 2 else yb
                self.correct = self.correct + (out.argmax(axis=1) == labels).sum()
        for i, metric in enumerate(self.metrics):
            self.metric_sums[i] = self.metric_sums[i] + metric.batch_sum(out, yb)

    def read(self, b, last):
        """One device -> host read after batch ``b``: ``(mean loss, accuracy, [metric means],
        batch losses 0..b or None)``; the batch losses come with the epoch's ``last`` read
        (deferred schedule)."""
        tail = (self.losses[:b + 1],) if self.deferred and last else ()
        loss, correct, *rest = read_to_host(self.loss, self.correct, *self.metric_sums, *tail, why="progress")
        k = len(self.metric_sums)
        return (loss / self.seen, correct / self.seen, [v / self.seen for v in rest[:k]],
                rest[k] if tail else None)

    def batch_losses(self, b):
        """Batch losses 0..b on the host (deferred schedule; one read)."""
        return read_to_host(self.losses[:b + 1], why="progress")[0]
