"""Metrics reported by ``fit`` (history, progress bar, callbacks' logs) and ``evaluate``.

A metric is a per-sample figure averaged over the samples (Keras's semantics: the epoch's
value is the mean over every sample seen, whatever the batch sizes)::

    accuracy          argmax(output) == label                              (classifiers)
    top_k_accuracy    the label is among the k highest outputs (k = 5)      (classifiers)
                      ties count as in (Keras/TF ``in_top_k``): #(outputs > output[label]) < k
    binary_accuracy   mean over a sample's entries of (p > 0.5) == target    (BinaryCrossEntropy; on logits
                      p > 0.5 is z > 0); "accuracy" means it for such a network, as in Keras
    mae               mean |output - target| over the entries of a sample   (regression)
    mse               mean (output - target)^2 over the entries of a sample (regression)

Names: ``"accuracy"``/``"acc"``, ``"top_k"``/``"top_k_accuracy"``/``"top_k_categorical_accuracy"``
(k = 5), ``"top_3_accuracy"`` etc., ``"mae"``/``"mean_absolute_error"``, ``"mse"``/
``"mean_squared_error"``; or an object: ``TopKAccuracy(k=3)``.  ``batch_sum(output, target)``
returns the sum over the batch's samples as a 0-d array on the output's device (no read).
Classifier targets are class indices ``(N,)`` or one-hot rows ``(N, K)``.

Metrics are unweighted (Keras's ``metrics``; sample/class weights weigh the loss only).
Also here: ``confusion_matrix`` and ``plot_confusion_matrix``.
"""
import re

import numpy as np

from ..backend import get_array_module, to_numpy

__all__ = ["Metric", "Accuracy", "BinaryAccuracy", "TopKAccuracy", "MeanAbsoluteError", "MeanSquaredError", "get",
           "known_names", "confusion_matrix", "plot_confusion_matrix"]


def _labels(target):
    return target.argmax(axis=1) if target.ndim == 2 else target


class Metric:
    """Base class: ``name``, ``mode`` ("max" or "min"), ``classification`` (needs class labels)
    and ``batch_sum(output, target)``."""

    name = "metric"
    mode = "max"
    classification = True

    def batch_sum(self, output, target):
        raise NotImplementedError

    def get_config(self):
        return {}

    def __repr__(self):
        return f"{type(self).__name__}(name={self.name!r})"


class Accuracy(Metric):
    """Fraction of samples whose highest output is the label's (the first maximum of a row)."""

    name = "accuracy"

    def batch_sum(self, output, target):
        return (output.argmax(axis=1) == _labels(target)).sum()


class BinaryAccuracy(Metric):
    """Keras's ``binary_accuracy``: per sample the fraction of entries with ``(p > threshold) == t``
    (``p`` the probability; on logits ``sigmoid(z) > threshold`` is ``z > log(threshold / (1 - threshold))``),
    averaged over samples.  Targets are 0/1 labels of the output's shape (``(N,)`` for ``(N, 1)``)."""

    classification = "binary"

    def __init__(self, threshold=0.5, from_logits=True, name="binary_accuracy"):
        if isinstance(threshold, bool) or not isinstance(threshold, (int, float)) or not 0 < threshold < 1:
            raise ValueError(f"BinaryAccuracy: threshold must be in (0, 1), received {threshold!r}")
        self.threshold, self.from_logits, self.name = float(threshold), bool(from_logits), name

    def batch_sum(self, output, target):
        t = target.reshape(output.shape) if target.ndim == 1 and output.ndim == 2 else target
        cut = np.log(self.threshold / (1 - self.threshold)) if self.from_logits else self.threshold
        hit = ((output > output.dtype.type(cut)) == (t > 0.5))
        return hit.reshape(hit.shape[0], -1).mean(axis=1).sum()

    def get_config(self):
        return {"threshold": self.threshold, "from_logits": self.from_logits}


class TopKAccuracy(Metric):
    """Fraction of samples whose label is among the ``k`` highest outputs; a tie at the
    boundary counts as in (as ``keras.metrics.SparseTopKCategoricalAccuracy``)."""

    def __init__(self, k=5):
        if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1:
            raise ValueError(f"TopKAccuracy: k must be an integer >= 1, received {k!r}")
        self.k = int(k)
        self.name = "top_k_accuracy" if self.k == 5 else f"top_{self.k}_accuracy"

    def batch_sum(self, output, target):
        xp = get_array_module(output)
        lab = _labels(target)
        own = output[xp.arange(output.shape[0]), lab]
        higher = (output > own[:, None]).sum(axis=1)
        return (higher < self.k).sum()

    def get_config(self):
        return {"k": self.k}


class MeanAbsoluteError(Metric):
    """``mean |y - t|`` over each sample's entries, averaged over samples."""

    name, mode, classification = "mae", "min", False

    def batch_sum(self, output, target):
        d = abs(output - target.astype(output.dtype, copy=False))
        return d.reshape(d.shape[0], -1).mean(axis=1).sum()


class MeanSquaredError(Metric):
    """``mean (y - t)^2`` over each sample's entries, averaged over samples."""

    name, mode, classification = "mse", "min", False

    def batch_sum(self, output, target):
        d = output - target.astype(output.dtype, copy=False)
        return (d * d).reshape(d.shape[0], -1).mean(axis=1).sum()


_ALIASES = {"accuracy": Accuracy, "acc": Accuracy,
            "top_k": TopKAccuracy, "top_k_accuracy": TopKAccuracy, "top_k_categorical_accuracy": TopKAccuracy,
            "sparse_top_k_categorical_accuracy": TopKAccuracy,
            "mae": MeanAbsoluteError, "mean_absolute_error": MeanAbsoluteError,
            "mse": MeanSquaredError, "mean_squared_error": MeanSquaredError}


def known_names():
    """The metric names ``get`` understands (``top_<k>_accuracy`` for any k as well)."""
    return sorted(_ALIASES) + ["top_<k>_accuracy"]


def _kind(loss):
    """``True`` (class labels: SoftMaxLoss), ``"binary"`` (0/1 targets: BinaryCrossEntropy) or ``False``."""
    if isinstance(loss, bool) or loss == "binary":
        return loss
    from ..layers.losses import SoftMaxLoss  # noqa: PLC0415
    if isinstance(loss, SoftMaxLoss):
        return True
    return "binary" if type(loss).__name__ == "BinaryCrossEntropy" else False


def get(spec, classify=True, where="metrics", loss=None):
    """A ``Metric`` from a name or an instance; ``classify`` says whether the network's loss
    takes class labels (``"binary"``: 0/1 targets of BinaryCrossEntropy); a classifier metric on a
    regression network, or the reverse, is refused."""
    if isinstance(spec, Metric):
        metric = spec
    elif isinstance(spec, str):
        name = spec.lower()
        m = re.fullmatch(r"top_(\d+)(?:_categorical)?_accuracy", name)
        if classify == "binary" and name in ("accuracy", "acc", "binary_accuracy"):
            metric = BinaryAccuracy(from_logits=getattr(loss, "from_logits", True),
                                    name="binary_accuracy" if name == "binary_accuracy" else "accuracy")
        elif name == "binary_accuracy":
            metric = BinaryAccuracy()
        elif m:
            metric = TopKAccuracy(int(m.group(1)))
        elif name in _ALIASES:
            metric = _ALIASES[name]()
        else:
            raise ValueError(f"{where}: unknown metric {spec!r}; the known names are {known_names()} "
                             "(or pass a nn_from_scratch.metrics.Metric)")
    else:
        raise TypeError(f"{where}: a metric is a name or a nn_from_scratch.metrics.Metric, received "
                        f"{type(spec).__name__}")
    if metric.classification == "binary" or classify == "binary":
        if metric.classification != classify:
            raise ValueError(f"{where}: {metric.name!r} " + (
                "needs 0/1 targets and a BinaryCrossEntropy loss" if metric.classification == "binary" else
                "does not apply to a BinaryCrossEntropy network (use 'accuracy', 'mae' or 'mse')"))
        return metric
    if metric.classification and not classify:
        raise ValueError(f"{where}: {metric.name!r} needs class labels, but this network's loss is not a "
                         "classification loss (use 'mae' or 'mse')")
    if not metric.classification and classify:
        raise ValueError(f"{where}: {metric.name!r} compares outputs with regression targets, but this "
                         "network's loss takes class labels (use 'accuracy' or 'top_k')")
    return metric


def resolve(specs, loss, where="metrics"):
    """The metrics of a run: ``accuracy`` first for a classifier (always reported; binary accuracy
    for a BinaryCrossEntropy network), then the others in the order given, each name once.
    ``loss``: the network's loss (or ``True``/``False``/``"binary"``)."""
    classify = _kind(loss)
    if specs is None:
        specs = []
    elif isinstance(specs, (str, Metric)):
        specs = [specs]
    out = [Accuracy()] if classify is True else []
    if classify == "binary":
        out = [get("accuracy", classify, where, loss)]
    for spec in specs:
        m = get(spec, classify, where, loss)
        if m.name in [o.name for o in out]:
            continue
        out.append(m)
    return out


# ------------------------------------------------------------------ confusion matrix
def confusion_matrix(y_true, y_pred, n_classes=None, normalize=None):
    """``C[i, j]`` = number of samples of true class ``i`` predicted as ``j`` (rows: truth).

    ``y_true``, ``y_pred``: class indices ``(N,)`` (or one-hot / score rows ``(N, K)``, taken by
    argmax).  ``n_classes``: default ``max(label) + 1``.  ``normalize``: ``None`` (counts),
    ``"true"`` (each row sums to 1: recall per class), ``"pred"`` (each column sums to 1) or
    ``"all"`` (the whole matrix sums to 1), as scikit-learn's.  A row or column with no
    samples stays 0 when normalised.
    """
    t = np.asarray(to_numpy(y_true))
    p = np.asarray(to_numpy(y_pred))
    t = t.argmax(axis=1) if t.ndim == 2 else t
    p = p.argmax(axis=1) if p.ndim == 2 else p
    if t.ndim != 1 or p.ndim != 1 or t.shape != p.shape:
        raise ValueError(f"confusion_matrix: y_true and y_pred must be class indices of the same length, "
                         f"received shapes {t.shape} and {p.shape}")
    for name, a in (("y_true", t), ("y_pred", p)):
        if a.size and (a.dtype.kind not in "iub" and not np.all(a == np.rint(a))):
            raise ValueError(f"confusion_matrix: {name} must hold whole class indices")
        if a.size and a.min() < 0:
            raise ValueError(f"confusion_matrix: {name} holds a negative class {int(a.min())}")
    t, p = t.astype(np.int64), p.astype(np.int64)
    top = int(max(t.max(initial=-1), p.max(initial=-1))) + 1
    k = top if n_classes is None else int(n_classes)
    if k < top:
        raise ValueError(f"confusion_matrix: n_classes={n_classes} but the labels go up to {top - 1}")
    cm = np.bincount(t * k + p, minlength=k * k).reshape(k, k)
    if normalize is None:
        return cm
    if normalize not in ("true", "pred", "all"):
        raise ValueError(f"confusion_matrix: normalize must be None, 'true', 'pred' or 'all', received {normalize!r}")
    cm = cm.astype(np.float64)
    div = {"true": cm.sum(axis=1, keepdims=True), "pred": cm.sum(axis=0, keepdims=True), "all": cm.sum()}[normalize]
    with np.errstate(invalid="ignore", divide="ignore"):
        out = np.where(div > 0, cm / np.where(div > 0, div, 1), 0.0)
    return out


def plot_confusion_matrix(cm, class_names=None, title=None, cmap="Blues", ax=None):
    """A figure of a confusion matrix (rows: true class, columns: predicted), each cell annotated
    with its value; returns the ``Figure`` (it displays as a notebook cell's value; made by pyplot
    and detached from its registry, as ``plotting.new_figure`` does, so none is left open)."""
    import matplotlib.pyplot as plt  # noqa: PLC0415 - matplotlib loads only when plotting
    cm = np.asarray(cm)
    if cm.ndim != 2 or cm.shape[0] != cm.shape[1]:
        raise ValueError(f"plot_confusion_matrix: cm must be a square matrix, received shape {cm.shape}")
    k = cm.shape[0]
    names = [str(i) for i in range(k)] if class_names is None else [str(c) for c in class_names]
    if len(names) != k:
        raise ValueError(f"plot_confusion_matrix: {len(names)} class names for {k} classes")
    if ax is None:
        fig = plt.figure(figsize=(1.0 + 0.55 * k, 0.8 + 0.5 * k), layout="constrained")
        plt.close(fig)
        ax = fig.subplots()
    else:
        fig = ax.figure
    im = ax.imshow(cm, cmap=cmap)
    fig.colorbar(im, ax=ax, shrink=0.8)
    ax.set_xticks(range(k), names, rotation=45 if max(len(n) for n in names) > 2 else 0)
    ax.set_yticks(range(k), names)
    ax.set_xlabel("predicted class")
    ax.set_ylabel("true class")
    if title:
        ax.set_title(title)
    whole = np.issubdtype(cm.dtype, np.integer)
    mid = (cm.max() + cm.min()) / 2 if cm.size else 0
    for i in range(k):
        for j in range(k):
            txt = f"{cm[i, j]:d}" if whole else f"{cm[i, j]:.2f}"
            ax.text(j, i, txt, ha="center", va="center", fontsize=8,
                    color="white" if cm[i, j] > mid else "black")
    return fig
