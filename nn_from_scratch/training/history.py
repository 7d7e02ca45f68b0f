"""What ``fit`` leaves behind: ``History`` (its per-epoch figures) and ``TrainingWarning``."""

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
