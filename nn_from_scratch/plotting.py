"""Pictures for the main job and the notebooks (matplotlib, headless).

* ``plot_history(history, path)`` - loss and accuracy per epoch, train and held-out.
* ``show_images(images, labels=None, predictions=None)`` - a grid of digits, feature
  maps or saliency maps.
* ``plot_filters(weights)`` - the kernels of a ``Convolution`` layer, one row per filter.

Figures are made by ``pyplot`` (so they get the canvas of the backend in use:
in a Jupyter kernel, the inline backend, which also registers the notebook's
PNG display of figures) and then detached from pyplot's registry of open
figures (``plt.close(fig)``; the figure itself stays fully usable).  So:

* in a notebook (Jupyter, VS Code, a web view of the saved ``.ipynb``) the
  figure shows, once, when it is the cell's value: end the cell with the call,
  or with ``fig``, or call ``IPython.display.display(fig)``;
* in scripts and tests nothing accumulates in pyplot (no "more than 20 figures"
  warning, no memory kept alive); save with ``path=`` or ``fig.savefig``.
  A figure that is not the cell's value (``fig = plot_history(h)``) is not
  shown by ``plt.show()``; show it with ``display(fig)``.

Without a display (a server, CI) matplotlib falls back to the Agg backend by
itself.  Arrays may be NumPy or CuPy (they are copied to the host); history
values may be Python floats or 0-d arrays of either library.
"""
import os

import numpy as np

from .atomic import atomic_open
from .backend import to_numpy

__all__ = ["plot_history", "show_images", "plot_filters", "save_figure", "new_figure"]


def new_figure(figsize=None, layout="constrained", **kwargs):
    """A new figure made by ``pyplot`` and detached from its registry (see the module docstring).

    It displays in a Jupyter kernel when it is a cell's value, and leaves
    nothing open in pyplot (scripts and tests leak no figures).  Extra keyword
    arguments go to ``plt.figure``.  Use it for every figure a function returns.
    """
    import matplotlib.pyplot as plt  # noqa: PLC0415 - matplotlib loads only when plotting
    fig = plt.figure(figsize=figsize, layout=layout, **kwargs)
    plt.close(fig)
    return fig


_figure = new_figure


def save_figure(fig, path, dpi=100):
    """Write ``fig`` to ``path`` atomically (temporary file in the same folder, then rename).

    The format follows the extension (``.png``, ``.svg``, ``.pdf``).  A crash
    mid-write never leaves a half-written file at ``path``.  Returns ``path``.
    """
    path = os.fspath(path)
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    ext = os.path.splitext(path)[1].lstrip(".").lower() or "png"
    with atomic_open(path, "wb") as f:
        fig.savefig(f, format=ext, dpi=dpi)
    return path


def _series(history):
    """``{name: [float, ...]}`` from a ``History``, a Keras-style history or a dict of lists."""
    data = getattr(history, "history", history)
    if not isinstance(data, dict):
        raise TypeError(f"plot_history expects a History or a dict of per-epoch lists, received "
                        f"{type(history).__name__}")
    return {k: [float(to_numpy(v)) for v in vals] for k, vals in data.items()}


def plot_history(history, path=None, title=None, return_path=False):
    """Loss (left) and accuracy (right) per epoch: training solid, held-out dashed.

    ``history``: ``NeuralNetwork.fit``'s ``History`` (or a dict with ``loss``,
    optionally ``accuracy``, ``val_loss``, ``val_accuracy``, one value per
    epoch).  When ``path`` is given the figure is written there atomically.
    Returns the ``Figure`` (or ``path`` when ``return_path=True``).
    """
    h = _series(history)
    if not h.get("loss"):
        raise ValueError(f"plot_history: the history has no 'loss' values (keys: {sorted(h)})")
    has_acc = bool(h.get("accuracy") or h.get("val_accuracy"))
    fig = _figure((10, 4) if has_acc else (5.5, 4))
    axes = fig.subplots(1, 2 if has_acc else 1, squeeze=False)[0]
    panels = [("loss", "loss", axes[0])]
    if has_acc:
        panels.append(("accuracy", "accuracy", axes[1]))
    for key, label, ax in panels:
        for prefix, style, name in (("", "-o", "train"), ("val_", "--s", "held-out")):
            vals = h.get(prefix + key)
            if vals:
                ax.plot(np.arange(1, len(vals) + 1), vals, style, label=name, markersize=4)
        ax.set_xlabel("epoch")
        ax.set_ylabel(label)
        ax.grid(True, alpha=0.3)
        ax.legend()
    if has_acc and h.get("val_accuracy"):
        final = h["val_accuracy"][-1]
        axes[1].set_title(f"final held-out accuracy {100 * final:.2f}%")
    if title:
        fig.suptitle(title)
    if path is not None:
        save_figure(fig, path)
        if return_path:
            return os.fspath(path)
    return fig


def _as_images(images):
    """(N, H, W) float array from (N, H, W), (N, 1, H, W) or one (H, W) image."""
    a = np.asarray(to_numpy(images), dtype=np.float64)
    if a.ndim == 2:
        a = a[None]
    if a.ndim == 4 and a.shape[1] == 1:
        a = a[:, 0]
    if a.ndim != 3:
        raise ValueError(f"show_images expects images of shape (N, H, W), (N, 1, H, W) or (H, W), "
                         f"received {a.shape}")
    return a


def show_images(images, labels=None, predictions=None, ncols=10, cmap="gray", symmetric=False,
                size=1.2, title=None, path=None):
    """A grid of images (digits, one sample's feature maps, saliency maps).

    ``labels``/``predictions``: optional per-image values written above each
    image (a wrong prediction is shown in red).  ``symmetric=True`` centres the
    colour scale on 0 (for gradients; use ``cmap="RdBu_r"``).  Returns the Figure.
    """
    a = _as_images(images)
    n = a.shape[0]
    ncols = max(1, min(int(ncols), n))
    nrows = -(-n // ncols)
    fig = _figure((size * ncols, size * nrows + (0.4 if title else 0.1)))
    axes = fig.subplots(nrows, ncols, squeeze=False)
    for i, ax in enumerate(axes.ravel()):
        ax.axis("off")
        if i >= n:
            continue
        img = a[i]
        if symmetric:
            m = float(np.abs(img).max()) or 1.0
            ax.imshow(img, cmap=cmap, vmin=-m, vmax=m)
        else:
            ax.imshow(img, cmap=cmap)
        parts, color = [], "black"
        if labels is not None:
            parts.append(str(to_numpy(labels)[i]))
        if predictions is not None:
            p = to_numpy(predictions)[i]
            parts.append(f"pred {p}")
            if labels is not None and p != to_numpy(labels)[i]:
                color = "red"
        if parts:
            ax.set_title(" / ".join(parts), fontsize=8, color=color)
    if title:
        fig.suptitle(title)
    if path is not None:
        save_figure(fig, path)
    return fig


def plot_filters(weights, title=None, path=None, size=1.0):
    """The kernels of a 2-D convolution, ``weights: (F, C, kh, kw)``: F rows, C columns.

    Each kernel has its own colour scale centred on 0 (red positive, blue
    negative).  Returns the Figure.
    """
    w = np.asarray(to_numpy(weights), dtype=np.float64)
    if w.ndim != 4:
        raise ValueError(f"plot_filters expects 2-D convolution weights (F, C, kh, kw), received shape {w.shape}")
    f, c = w.shape[:2]
    fig = _figure((size * c + 0.3, size * f + (0.4 if title else 0.1)))
    axes = fig.subplots(f, c, squeeze=False)
    for i in range(f):
        for j in range(c):
            ax = axes[i, j]
            m = float(np.abs(w[i, j]).max()) or 1.0
            ax.imshow(w[i, j], cmap="RdBu_r", vmin=-m, vmax=m)
            ax.set_xticks([])
            ax.set_yticks([])
            if j == 0:
                ax.set_ylabel(f"filter {i}", fontsize=8)
            if i == 0:
                ax.set_title(f"in {j}", fontsize=8)
    if title:
        fig.suptitle(title)
    if path is not None:
        save_figure(fig, path)
    return fig
