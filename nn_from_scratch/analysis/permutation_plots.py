"""Figures of a ``PermutationTestResult`` (matplotlib, through ``plotting.new_figure``: made by
pyplot, so they display in a Jupyter kernel when they are a cell's value, and detached from
pyplot's registry, so scripts leak none).

* image inputs (``input_shape`` with 2 or more axes): the example input, the statistic map
  and the ``-log10 p`` map side by side, with the pixels significant after the chosen
  adjustment outlined;
* tabular inputs (``(p,)``): a bar chart of ``-log10 p`` per feature (raw and adjusted) with
  the threshold ``-log10 alpha`` and the smallest attainable ``-log10 (1/(B+1))``.

Every figure's title names the test's scope: the global test's per-pixel p-values do not
localise, the conditional test's per-group ones do (its maps spread each group's value over
the group's pixels).
"""
import numpy as np

__all__ = ["plot_result", "image_grid"]


def image_grid(a):
    """A 2-D map from an array of an image's shape: leading axes of size 1 dropped, others by max."""
    a = np.asarray(a, dtype=np.float64)
    while a.ndim > 2 and a.shape[0] == 1:
        a = a[0]
    while a.ndim > 2:
        a = np.nanmax(a, axis=0)
    return a


def _subplots(ncols, figsize):
    from ..plotting import new_figure  # noqa: PLC0415
    fig = new_figure(figsize=figsize)
    return fig, fig.subplots(1, ncols)


def plot_result(result, alpha=0.05, method="maxT", example=None, feature_names=None):
    """The figure for ``result`` (see the module docstring); returns a ``matplotlib.figure.Figure``."""
    if len(result.input_shape) >= 2:
        return _plot_image(result, alpha, method, example)
    return _plot_tabular(result, alpha, method, feature_names)


SCOPE_TITLES = {"global": "GLOBAL test (labels permuted): y indep. of all of X;\nper-pixel p do not localise",
                "nonlinearity": "nonlinearity test per feature",
                "conditional": "CONDITIONAL test per group: y indep. of X_G given the rest"}


def _scope_line(result):
    extra = f"; {result.n_groups} groups" if result.scope == "conditional" else ""
    seq = f", sequential h = {result.sequential}" if getattr(result, "sequential", None) else ""
    return SCOPE_TITLES[result.scope] + extra + seq


def _plot_image(result, alpha, method, example):
    stat = image_grid(result.map(result.statistic))
    logp = image_grid(result.map(-np.log10(result.p_values)))
    sig = image_grid(result.map(result.significant(alpha, method)).astype(float)) > 0
    ex = result.example if example is None else np.asarray(example)
    panels = 3 if ex is not None else 2
    fig, axes = _subplots(panels, (4.2 * panels, 4.0))
    axes = list(np.atleast_1d(axes))
    if ex is not None:
        ax = axes.pop(0)
        ax.imshow(image_grid(ex), cmap="gray")
        ax.set_title("example input")
        ax.set_xticks([])
        ax.set_yticks([])
    name = {"association": "T = mean (df/dx)^2", "nonlinearity": "V = var (df/dx)"}[result.statistic_name]
    if result.scope == "conditional":
        name = "T_G = sum over the group of T"
    im = axes[0].imshow(stat, cmap="viridis")
    axes[0].set_title(f"statistic {name}")
    fig.colorbar(im, ax=axes[0], shrink=0.8)
    vmax = np.log10(result.n_permutations + 1)
    im = axes[1].imshow(logp, cmap="magma", vmin=0, vmax=vmax)
    if sig.any():
        axes[1].contour(sig.astype(float), levels=[0.5], colors="cyan", linewidths=1.0)
    n_sig = int(result.significant(alpha, method).sum())
    unit = "groups" if result.scope == "conditional" else "inputs"
    axes[1].set_title(f"-log10 p (B = {result.n_permutations}); {n_sig} {unit} significant\n"
                      f"({method}, alpha = {alpha}, outlined)", fontsize=10)
    fig.suptitle(_scope_line(result), fontsize=10)
    fig.colorbar(im, ax=axes[1], shrink=0.8)
    for ax in axes:
        ax.set_xticks([])
        ax.set_yticks([])
    return fig


def _plot_tabular(result, alpha, method, feature_names):
    p = result.p_values
    adj = result.adjusted(method)
    m = p.size
    identity = result.groups is None or np.array_equal(np.ravel(result.groups), np.arange(m))
    default = [f"x{j + 1}" for j in range(m)] if identity else [f"G{j}" for j in range(m)]
    names = list(feature_names) if feature_names is not None else default
    if len(names) != m:
        raise ValueError(f"plot: feature_names has {len(names)} names for {m} features")
    fig, ax = _subplots(1, (max(4.5, 0.6 * m + 2), 3.6))
    pos = np.arange(m)
    sig = result.significant(alpha, method)
    ax.bar(pos - 0.2, -np.log10(p), width=0.4, color="0.7", label="raw p")
    ax.bar(pos + 0.2, -np.log10(adj), width=0.4, color=np.where(sig, "tab:red", "tab:blue"),
           label=f"{method}-adjusted p (red: significant)")
    ax.axhline(-np.log10(alpha), color="k", ls="--", lw=1, label=f"alpha = {alpha}")
    ax.axhline(np.log10(result.n_permutations + 1), color="0.5", ls=":", lw=1,
               label=f"smallest attainable p = 1/{result.n_permutations + 1}")
    ax.set_xticks(pos)
    ax.set_xticklabels(names, rotation=45 if m > 8 else 0)
    ax.set_ylabel("-log10 p")
    ax.set_ylim(0, 1.6 * max(np.log10(result.n_permutations + 1), -np.log10(alpha)))
    ax.set_title(f"{_scope_line(result)}\n{result.statistic_name} statistic, B = {result.n_permutations}", fontsize=9)
    ax.legend(fontsize=8, loc="upper right")
    return fig
