"""Pictures of class separation (matplotlib; every function returns a ``matplotlib.figure.Figure``).

* ``plot_histograms(results)``: the pairwise H values per layer, one column per stage (the
  seed's ``plot_results``; ``by_layer=True``: one figure per layer);
* ``plot_separation_curve(results)``: mean (or median) H through the layers, one line per
  stage, with the interquartile band;
* ``plot_heatmap(result, layer)``: the classes x classes matrix of H at one layer;
* ``plot_pca(net, X, y, layer)``: 2-D PCA scatter of one layer's outputs, coloured by class;
* ``plot_history(history)``: mean H per layer over the epochs of a ``SeparationHistory``.

``results`` may be one ``SeparationResult``, a list of them (labelled by their ``name``) or
a dict ``{stage label: result}``.  The H axis is not clipped at 0: below-chance values show.
Figures come from ``plotting.new_figure``: made by pyplot (so they display in a Jupyter kernel
when they are a cell's value) and detached from pyplot's registry, so scripts and loops leak
none and need no closing.  With ``ax=`` a function draws into that axes and returns its
figure (whoever made it owns it).
"""
import numpy as np

from ...backend import to_numpy
from ...plotting import new_figure
from .result import INPUT, SeparationError, SeparationResult

__all__ = ["plot_histograms", "plot_separation_curve", "plot_heatmap", "plot_pca", "plot_history", "save_figure"]


def _cmap(name):
    import matplotlib  # noqa: PLC0415 - matplotlib loads only when plotting
    return matplotlib.colormaps[name]


def save_figure(fig, path, dpi=100):
    from ...plotting import save_figure as save  # noqa: PLC0415 - the package's atomic writer
    return save(fig, path, dpi=dpi)


def _stages(results):
    if isinstance(results, SeparationResult):
        items = [(results.name or "result", results)]
    elif isinstance(results, dict):
        items = [(str(k), v) for k, v in results.items()]
    else:
        items = [(r.name or f"stage {i}", r) for i, r in enumerate(results)]
    if not items:
        raise ValueError("no results to plot")
    for label, r in items:
        if not isinstance(r, SeparationResult):
            raise TypeError(f"stage {label!r} is a {type(r).__name__}, not a SeparationResult")
    return items


def _layers(items, layers):
    if layers is None:
        layers = [x for x in items[0][1].layers if all(x in r.layers for _, r in items)]
    for label, r in items:
        missing = [x for x in layers if x not in r.layers]
        if missing:
            raise KeyError(f"stage {label!r} has no layer(s) {missing}; its layers: {r.layers}")
    return list(layers)


def plot_histograms(results, layers=None, bins=20, by_layer=False, title=None):
    """Histograms of the pairwise H per layer (rows) and stage (columns).

    ``by_layer=True`` returns a list of figures, one per layer.  The bins span the
    smallest value (or 0) to 1 for every panel, so panels compare.
    """
    items = _stages(results)
    layers = _layers(items, layers)
    lo = min(0.0, min(float(r.values(x).min()) for _, r in items for x in layers))
    edges = np.linspace(lo, 1.0, int(bins) + 1)

    def draw(ax, label, r, layer):
        h = r.values(layer)
        ax.hist(h, bins=edges, color="tab:blue", alpha=0.8)
        ax.axvline(float(np.mean(h)), color="tab:red", lw=1)
        ax.set_title(f"{layer} - {label}  (mean {np.mean(h):.3f})", fontsize=8)
        ax.tick_params(labelsize=7)

    if by_layer:
        figs = []
        for layer in layers:
            fig = new_figure(figsize=(3.2 * len(items), 2.4))
            axes = fig.subplots(1, len(items), squeeze=False)
            for ax, (label, r) in zip(axes[0], items):
                draw(ax, label, r, layer)
                ax.set_xlabel("H")
            figs.append(fig)
        return figs
    fig = new_figure(figsize=(3.2 * len(items), 1.6 * len(layers) + 0.6))
    axes = fig.subplots(len(layers), len(items), squeeze=False, sharex=True)
    for i, layer in enumerate(layers):
        for j, (label, r) in enumerate(items):
            draw(axes[i, j], label, r, layer)
    for ax in axes[-1]:
        ax.set_xlabel("Henze-Penrose H of a class pair")
    fig.suptitle(title or "Pairwise class separation per layer (red: mean)")
    return fig


def plot_separation_curve(results, statistic="mean", layers=None, band=True, title=None, ax=None):
    """Mean (or ``statistic="median"``) H through the layers, one line per stage.

    ``band``: shade the interquartile range of the pairs.  Returns the figure.
    """
    if statistic not in ("mean", "median"):
        raise ValueError(f"statistic must be 'mean' or 'median', received {statistic!r}")
    items = _stages(results)
    layers = _layers(items, layers)
    if ax is None:
        fig = new_figure(figsize=(max(5.0, 0.6 * len(layers) + 2), 3.6))
        ax = fig.subplots()
    else:
        fig = ax.figure
    x = np.arange(len(layers))
    f = np.mean if statistic == "mean" else np.median
    for label, r in items:
        H = np.array([r.values(layer) for layer in layers])
        line, = ax.plot(x, f(H, axis=1), "-o", ms=4, label=label)
        if band:
            q1, q3 = np.percentile(H, [25, 75], axis=1)
            ax.fill_between(x, q1, q3, color=line.get_color(), alpha=0.15)
    ax.axhline(0.0, color="gray", lw=0.8, ls=":")
    ax.set_xticks(x, layers, rotation=45, ha="right")
    ax.set_ylabel(f"{statistic} H over class pairs")
    ax.set_title(title or f"Class separation through the layers ({statistic}, band: quartiles)")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8)
    return fig


def plot_heatmap(result, layer, title=None, annotate=True, ax=None):
    """The classes x classes matrix of H at ``layer`` (diagonal blank)."""
    if not isinstance(result, SeparationResult):
        raise TypeError(f"plot_heatmap: result must be a SeparationResult, received {type(result).__name__}")
    M = result.matrix(layer)
    if ax is None:
        fig = new_figure(figsize=(0.5 * len(result.classes) + 2.2, 0.5 * len(result.classes) + 1.6))
        ax = fig.subplots()
    else:
        fig = ax.figure
    vmin = min(0.0, float(np.nanmin(M)))
    im = ax.imshow(M, cmap="viridis", vmin=vmin, vmax=1.0)
    K = len(result.classes)
    ax.set_xticks(range(K), result.classes)
    ax.set_yticks(range(K), result.classes)
    if annotate and K <= 12:
        for i in range(K):
            for j in range(K):
                if i != j:
                    ax.text(j, i, f"{M[i, j]:.2f}", ha="center", va="center", fontsize=6,
                            color="white" if M[i, j] < (vmin + 1) / 2 else "black")
    fig.colorbar(im, ax=ax, shrink=0.8, label="H")
    ax.set_title(title or f"H at {layer}" + (f" ({result.name})" if result.name else ""), fontsize=9)
    return fig


def plot_pca(net, X, y, layer, n_per_class=200, seed=0, classes=None, title=None, ax=None, batch_size=None):
    """2-D PCA scatter of ``layer``'s outputs (``"input"``: the input), coloured by class.

    A seeded sample of ``n_per_class`` per class (``None``: all); the principal axes come from
    NumPy's SVD of the centred outputs.  Returns the figure.
    """
    from .core import _class_labels, _inference, _layer_names, _sample  # noqa: PLC0415
    Xh = np.asarray(to_numpy(X))
    labels = _class_labels(y, len(Xh))
    names = _layer_names(net)
    if layer not in names:
        raise SeparationError(f"plot_pca: unknown layer {layer!r}; the layers are {names}")
    present, counts = np.unique(labels, return_counts=True)
    classes = present.tolist() if classes is None else sorted(int(c) for c in classes)
    sizes = dict(zip(present.tolist(), counts.tolist()))
    k = None if n_per_class is None else min([n_per_class] + [sizes.get(c, 0) for c in classes])
    picks = _sample(labels, classes, k, np.random.default_rng(seed))
    idx = np.concatenate(picks)
    if layer == INPUT:
        Z = Xh[idx]
    else:
        bs = int(batch_size or 256)
        with _inference(net):
            Z = np.concatenate([net.layer_outputs(Xh[idx[a:a + bs]])[layer] for a in range(0, len(idx), bs)])
    Z = Z.reshape(len(Z), -1).astype(np.float64)
    Z -= Z.mean(axis=0)
    _, s, Vt = np.linalg.svd(Z, full_matrices=False)
    P = Z @ Vt[:2].T
    var = s ** 2 / max((s ** 2).sum(), 1e-300)
    if ax is None:
        fig = new_figure(figsize=(5.2, 4.4))
        ax = fig.subplots()
    else:
        fig = ax.figure
    cmap = _cmap("tab10" if len(classes) <= 10 else "tab20")
    lab = labels[idx]
    for i, c in enumerate(classes):
        sel = lab == c
        ax.scatter(P[sel, 0], P[sel, 1] if P.shape[1] > 1 else np.zeros(sel.sum()), s=6, alpha=0.6,
                   color=cmap(i % cmap.N), label=str(c))
    ax.set_xlabel(f"PC 1 ({100 * var[0]:.1f}% of variance)")
    ax.set_ylabel(f"PC 2 ({100 * var[1]:.1f}%)" if len(var) > 1 else "PC 2")
    ax.legend(markerscale=2, fontsize=7, title="class", loc="best")
    ax.set_title(title or f"PCA of {layer}", fontsize=9)
    return fig


def plot_history(history, statistic="mean", layers=None, title=None):
    """Mean (or median) H per layer over the epochs of a ``SeparationHistory``."""
    if not getattr(history, "results", None):
        raise ValueError("plot_history: the SeparationHistory has recorded nothing yet")
    f = {"mean": np.mean, "median": np.median}[statistic]
    epochs = history.epochs
    first = history.results[epochs[0]]
    layers = first.layers if layers is None else list(layers)
    fig = new_figure(figsize=(6.4, 4.0))
    ax = fig.subplots()
    cmap = _cmap("viridis")
    for i, layer in enumerate(layers):
        vals = [f(history.results[e].values(layer)) for e in epochs]
        ax.plot(epochs, vals, "-o", ms=3, color=cmap(i / max(len(layers) - 1, 1)), label=layer)
    from matplotlib.ticker import MaxNLocator  # noqa: PLC0415
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("epochs trained")
    ax.set_ylabel(f"{statistic} H over class pairs")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=7, ncol=2)
    ax.set_title(title or "Class separation per layer during training")
    return fig
