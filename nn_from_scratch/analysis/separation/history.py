"""``SeparationHistory``: class separation recorded at chosen epochs of ``fit`` (a callback).

    hist = SeparationHistory(X_val, y_val, every=2, layers=["conv1", "fc1"])
    net.fit(X, y, epochs=10, callbacks=[hist])
    hist.results[0]          # before training (recorded at on_train_begin)
    hist.results[4]          # after 4 epochs
    hist.plot()              # mean H per layer over the epochs

No weights are saved: the callback analyses the network as it is at the end of each
chosen epoch (in inference mode), always on the same seeded sample.
"""
import numpy as np

from ...validation import as_array
from ...training.callbacks import Callback

__all__ = ["SeparationHistory"]


class SeparationHistory(Callback):
    """Record ``class_separation`` before training and after every ``every``-th epoch.

    ``X``, ``y``: the data to analyse (e.g. a validation set); the other arguments go to
    ``class_separation`` (``n_per_class`` defaults to 200 here: it runs during training).
    ``results``: ``{epochs done: SeparationResult}`` (0 = before training);
    ``epochs``: the sorted keys.  ``before_training=False`` skips epoch 0.
    """

    def __init__(self, X, y, every=1, layers=None, n_per_class=200, classes=None, seed=0, metric="euclidean",
                 batch_size=None, before_training=True):
        super().__init__()
        if isinstance(every, bool) or not isinstance(every, int) or every < 1:
            raise ValueError(f"SeparationHistory: every must be an int >= 1, received {every!r}")
        if not isinstance(before_training, (bool, np.bool_)):
            raise TypeError(f"SeparationHistory: before_training must be True or False, received "
                            f"{type(before_training).__name__} {before_training!r}")
        if n_per_class is not None and (isinstance(n_per_class, bool) or not isinstance(n_per_class, (int, np.integer))
                                        or n_per_class < 2):
            raise ValueError(f"SeparationHistory: n_per_class must be an int >= 2 or None (every sample), received "
                             f"{n_per_class!r}")
        X, y = as_array("SeparationHistory", "X", X), as_array("SeparationHistory", "y", y)
        if X.ndim < 2 or y.ndim < 1 or len(X) != len(y):
            raise ValueError(f"SeparationHistory: X (samples along the first axis) and y (one class index per "
                             f"sample) must have the same length, received X of shape {tuple(X.shape)} and y of "
                             f"shape {tuple(y.shape)}")
        self.X, self.y, self.every = X, y, every
        self.kwargs = dict(n_per_class=n_per_class, layers=layers, classes=classes, seed=seed, metric=metric,
                           batch_size=batch_size)
        self.before_training = before_training
        self.results = {}
        self._done = 0

    def set_network(self, network):
        self.network = network

    def record(self, epoch, network=None):
        """Analyse ``network`` (default: the one being fitted) now and store it under ``epoch``."""
        from .core import class_separation  # noqa: PLC0415
        net = network if network is not None else self.network
        if net is None:
            raise RuntimeError("SeparationHistory: no network; pass it to fit(callbacks=[...]) or to record()")
        res = class_separation(net, self.X, self.y, **self.kwargs)
        res.name = f"epoch {epoch}"
        res.info["epoch"] = epoch
        self.results[epoch] = res
        return res

    @property
    def epochs(self):
        return sorted(self.results)

    def on_train_begin(self, logs=None):
        self._done = max(self.results, default=0)      # a second fit continues the count
        if self.before_training and self._done not in self.results:
            self.record(self._done)

    def on_epoch_end(self, epoch, logs=None):
        done = self._done + epoch + 1
        if (epoch + 1) % self.every == 0:
            self.record(done)

    def table(self, statistic="mean"):
        """``(epoch, layer, value)`` rows: the mean (or median) H over the pairs."""
        from .result import Rows  # noqa: PLC0415
        import numpy as np  # noqa: PLC0415
        f = {"mean": np.mean, "median": np.median}[statistic]
        rows = [(e, layer, float(f(h))) for e in self.epochs for layer, h in
                zip(self.results[e].layers, self.results[e].H)]
        return Rows(("epoch", "layer", statistic), rows)

    def plot(self, statistic="mean", layers=None, title=None):
        """Separation per layer over the epochs (a figure)."""
        from .plots import plot_history  # noqa: PLC0415
        return plot_history(self, statistic=statistic, layers=layers, title=title)
