"""Class separation at every layer: the Henze-Penrose statistic and Fisher permutation tests.

For points ``X_a`` (m rows) and ``X_b`` (n rows), rows flattened, ``N = m + n``: build the
Euclidean minimum spanning tree over all N points and count ``R``, the tree edges that join
a point of ``a`` to a point of ``b``.  The Henze-Penrose estimate is::

    H = 1 - R (m + n) / (2 m n)

Under the null (both from one distribution) ``E[R] = 2mn/N``, so ``E[H] = 0`` for any m, n;
H can be negative (less separated than chance) and tends to 1 as the classes separate (its
largest value is ``1 - N/(2mn)``, at R = 1).  The seed's library used ``1 - 2 min(N/2, R)/N``,
which agrees only when m = n.  With it come the Friedman-Rafsky z-score from the exact
permutation mean and variance of R given the tree, and its one-sided p-value
``Phi(z)`` (normal approximation; small R = separated).

Public names::

    henze_penrose(Xa, Xb, metric="euclidean")            -> HPResult (H, R, m, n, z, p_value, ...)
    class_separation(net, X, y, n_per_class=1000, layers=None, classes=None, seed=0,
                     metric="euclidean", batch_size=None)  -> SeparationResult
    fisher_test(a, b, paired=False, n_permutations=10000, alternative="two-sided", seed=0)
    compare_layers(result), compare_stages(before, after)  -> Table
    SeparationHistory(X, y, every=1, layers=None, ...)     a fit callback
    plot_histograms, plot_separation_curve, plot_heatmap, plot_pca, plot_history

How ``R`` is computed -- distances (float64 Gram products, error bound), exact duplicates
(merged; ``R`` is the expectation over the ties they create, with ``R_min``/``R_max``),
the dense Prim tree and the permutation moments -- is written out in ``_mst.py``.

``class_separation`` draws a seeded random sample of each class (``n_per_class=None``: every
sample), runs it once through the network in inference mode collecting the input and every
layer's output, and for each layer computes the distances within each class once and
between two classes once per pair, in feature chunks (memory does not grow with a layer's
width).  A pure reshape (``Vectorization``/``Flatten``, ``Reshape``) has the distances of
the layer before it, so its values are copied rather than computed again.

On the CuPy backend the forward pass runs on the device (``layer_outputs``) and the outputs
come to the host; distances and trees are computed with NumPy (not run on a GPU here).
"""
import contextlib
import itertools
import json
import os

import numpy as np

from ..backend import to_numpy
from . import _mst
from ._table import Table
from .fisher import EXACT_LIMIT, FisherResult, fisher_test

__all__ = ["henze_penrose", "HPResult", "class_separation", "SeparationResult", "SeparationError",
           "fisher_test", "FisherResult", "compare_layers", "compare_stages", "SeparationHistory",
           "Table", "plot_histograms", "plot_separation_curve", "plot_heatmap", "plot_pca", "plot_history",
           "EXACT_LIMIT", "MEMORY_BUDGET", "INPUT"]

#: the name under which the network's input is analysed
INPUT = "input"
#: bytes of layer outputs one pass through the network may collect; more layers than fit
#: are analysed in several passes (each runs the whole network).  Peak memory is about
#: max(MEMORY_BUDGET, one layer's outputs) + one more copy of the widest layer (numpy.unique
#: sorts its rows) + the distance blocks (sum of n_c^2 + n_a n_b float64, 90 MB at 1,000 per class)
MEMORY_BUDGET = 2 ** 30
JSON_FORMAT = "nn_from_scratch-separation/1"


class SeparationError(ValueError):
    """Data or arguments that the separation analysis cannot use."""


# ------------------------------------------------------------------------------ one pair
class HPResult:
    """The Henze-Penrose statistic of one pair of samples.

    ``H``, ``R`` (cross edges; the expectation over ties when points coincide), ``m``, ``n``,
    ``z`` (Friedman-Rafsky), ``p_value`` (one-sided, ``Phi(z)``), ``R_min``/``R_max`` (the
    range over ties; equal to ``R`` when no two points coincide), ``E_R``/``var_R`` (the
    permutation moments), ``H_range`` (H at R_max and R_min).
    """

    __slots__ = ("H", "R", "m", "n", "z", "p_value", "R_min", "R_max", "E_R", "var_R", "C")

    def __init__(self, H, R, m, n, z, p_value, R_min, R_max, E_R, var_R, C):
        self.H, self.R, self.m, self.n, self.z, self.p_value = H, R, m, n, z, p_value
        self.R_min, self.R_max, self.E_R, self.var_R, self.C = R_min, R_max, E_R, var_R, C

    @property
    def H_range(self):
        N = self.m + self.n
        f = N / (2.0 * self.m * self.n)
        return 1.0 - self.R_max * f, 1.0 - self.R_min * f

    def as_dict(self):
        return {k: getattr(self, k) for k in self.__slots__}

    def __repr__(self):
        ties = f", R in [{self.R_min:g}, {self.R_max:g}] over ties" if self.R_min != self.R_max else ""
        return (f"HPResult(H={self.H:.6g}, R={self.R:g}, m={self.m}, n={self.n}, z={self.z:.4g}, "
                f"p_value={self.p_value:.4g}{ties})")


def _flat(X, name):
    a = np.asarray(to_numpy(X))
    if a.dtype.kind not in "fiub":
        raise SeparationError(f"henze_penrose: {name} must hold numbers, received dtype {a.dtype}")
    if a.ndim == 0:
        raise SeparationError(f"henze_penrose: {name} must be an array of points (rows), received a scalar")
    if a.ndim == 1:
        a = a[:, None]           # a list of 1-D points
    if a.shape[0] < 1:
        raise SeparationError(f"henze_penrose: {name} has no points")
    a = a.reshape(a.shape[0], -1)
    if a.dtype.kind == "f" and not np.isfinite(a).all():
        raise SeparationError(f"henze_penrose: {name} contains {int((~np.isfinite(a)).sum())} NaN/Inf value(s)")
    return a


def _groups(inverse):
    ids, counts = np.unique(inverse, return_counts=True)
    return ids, counts


def _pair(pts, ga, gb, Daa, Dbb):
    """Statistics of one pair from its classes' distinct points ``(ids, counts)`` and blocks."""
    ua, ca = ga
    ub, cb = gb
    b_only = ~np.isin(ub, ua, assume_unique=True)
    ub2 = ub[b_only]
    Dab = pts.sqdist(ua, ub2)
    Dbb2 = Dbb[np.ix_(b_only, b_only)]
    W = np.block([[Daa, Dab], [Dab.T, Dbb2]])
    ka = np.concatenate([ca, np.zeros(len(ub2))])
    kb_a = np.zeros(len(ua))
    kb_a[np.searchsorted(ua, ub[~b_only])] = cb[~b_only]
    kb = np.concatenate([kb_a, cb[b_only]])
    return _mst.pair_statistics(W, ka, kb)


def henze_penrose(Xa, Xb, metric="euclidean"):
    """Henze-Penrose separation of two samples; returns an ``HPResult``.

    ``Xa: (m, ...)``, ``Xb: (n, ...)``: one point per row, flattened (1-D arrays are points
    on a line).  ``metric``: ``"euclidean"`` (default; ``"sqeuclidean"`` gives the same tree),
    ``"cosine"``, or any other ``scipy.spatial.distance.cdist`` metric (slower).
    """
    A, B = _flat(Xa, "Xa"), _flat(Xb, "Xb")
    if A.shape[1] != B.shape[1]:
        raise SeparationError(f"henze_penrose: Xa and Xb must have points of the same size, received "
                              f"{A.shape[1]} and {B.shape[1]} values per point")
    if not isinstance(metric, str):
        raise SeparationError(f"henze_penrose: metric must be a string, received {metric!r}")
    m = len(A)
    dtype = np.result_type(A.dtype, B.dtype, np.float32)
    pts = _mst.Points(np.concatenate([A.astype(dtype), B.astype(dtype)]), metric, where="henze_penrose",
                      owned=True)
    ga, gb = _groups(pts.inverse[:m]), _groups(pts.inverse[m:])
    with _mst.blas_threads(max(len(ga[0]), len(gb[0])), pts.d):
        return HPResult(**_pair(pts, ga, gb, pts.sqdist(ga[0]), pts.sqdist(gb[0])))


# ------------------------------------------------------------------------- the results
_COLUMNS = ("layer", "class_a", "class_b", "H", "R", "z", "p_value", "m", "n", "R_min", "R_max")
_PER_PAIR = ("H", "R", "z", "p_value", "R_min", "R_max")


class SeparationResult:
    """Henze-Penrose values of every class pair at every analysed layer.

    ``layers`` (names, network order, ``"input"`` first), ``classes``, ``pairs`` (``(a, b)``
    with a < b in ``itertools.combinations`` order), and arrays ``H``, ``R``, ``z``,
    ``p_value``, ``R_min``, ``R_max`` of shape ``(n_layers, n_pairs)``; ``m``, ``n`` per
    pair; ``info`` (how it was computed); ``name`` (a stage label for plots).

    ``table`` (tidy: layer, class_a, class_b, H, R, z, p_value, m, n, R_min, R_max),
    ``value(layer, a, b)``, ``values(layer)``, ``matrix(layer)``, ``summary()``,
    ``to_json(path)`` / ``SeparationResult.from_json(path)``, ``to_pandas()``.
    """

    def __init__(self, layers, classes, arrays, m, n, info=None, name=None):
        self.layers = [str(x) for x in layers]
        self.classes = [int(c) for c in classes]
        self.pairs = list(itertools.combinations(self.classes, 2))
        shape = (len(self.layers), len(self.pairs))
        for key in _PER_PAIR:
            a = np.asarray(arrays[key], dtype=np.float64).reshape(shape)
            setattr(self, key, a)
        self.m = np.asarray(m, dtype=np.int64).reshape(len(self.pairs))
        self.n = np.asarray(n, dtype=np.int64).reshape(len(self.pairs))
        self.info = dict(info or {})
        self.name = name

    # ---- lookups
    def _layer(self, layer):
        if layer not in self.layers:
            raise KeyError(f"no layer {layer!r} in this result; layers: {self.layers}")
        return self.layers.index(layer)

    def _pair_index(self, a, b):
        a, b = int(a), int(b)
        if a == b:
            raise KeyError(f"a class pair needs two different classes, received {a} and {b}")
        key = (min(a, b), max(a, b))
        if key not in self.pairs:
            raise KeyError(f"no class pair {key} in this result; classes: {self.classes}")
        return self.pairs.index(key)

    def value(self, layer, a, b):
        """H of classes ``a`` and ``b`` (either order) at ``layer``."""
        return float(self.H[self._layer(layer), self._pair_index(a, b)])

    def values(self, layer, statistic="H"):
        """The per-pair values (``pairs`` order) of ``statistic`` at ``layer``."""
        if statistic not in _PER_PAIR:
            raise KeyError(f"statistic must be one of {_PER_PAIR}, received {statistic!r}")
        return getattr(self, statistic)[self._layer(layer)].copy()

    def matrix(self, layer, statistic="H"):
        """``(K, K)`` symmetric matrix of ``statistic`` at ``layer`` (classes order), NaN diagonal."""
        vals = self.values(layer, statistic)
        K = len(self.classes)
        M = np.full((K, K), np.nan)
        pos = {c: i for i, c in enumerate(self.classes)}
        for (a, b), v in zip(self.pairs, vals):
            M[pos[a], pos[b]] = M[pos[b], pos[a]] = v
        return M

    @property
    def table(self):
        rows = []
        for i, layer in enumerate(self.layers):
            for j, (a, b) in enumerate(self.pairs):
                rows.append((layer, a, b, float(self.H[i, j]), float(self.R[i, j]), float(self.z[i, j]),
                             float(self.p_value[i, j]), int(self.m[j]), int(self.n[j]),
                             float(self.R_min[i, j]), float(self.R_max[i, j])))
        return Table(_COLUMNS, rows)

    def summary(self):
        """Per layer: mean, median, min, max of H over the pairs."""
        rows = [(layer, float(h.mean()), float(np.median(h)), float(h.min()), float(h.max()))
                for layer, h in zip(self.layers, self.H)]
        return Table(("layer", "mean", "median", "min", "max"), rows)

    def to_pandas(self):
        return self.table.to_pandas()

    def __repr__(self):
        label = f" {self.name!r}" if self.name else ""
        return (f"SeparationResult{label}: {len(self.layers)} layers x {len(self.pairs)} class pairs "
                f"(classes {self.classes})\n{self.summary().to_text()}")

    # ---- files
    def _as_json(self):
        def clean(a):
            return [[None if not np.isfinite(v) else float(v) for v in row] for row in a]
        return {"format": JSON_FORMAT, "name": self.name, "layers": self.layers, "classes": self.classes,
                "pairs": [list(p) for p in self.pairs], "m": self.m.tolist(), "n": self.n.tolist(),
                **{k: clean(getattr(self, k)) for k in _PER_PAIR}, "info": self.info}

    def to_json(self, path):
        """Write the result to ``path`` (JSON, atomically); returns ``path``."""
        from ..atomic import write_json_atomic  # noqa: PLC0415 - the package's atomic JSON writer
        write_json_atomic(os.fspath(path), self._as_json())
        return path

    @classmethod
    def from_json(cls, path):
        """Read a result written by ``to_json``; a file that is not one raises ``SeparationError``."""
        path = os.fspath(path)
        try:
            with open(path) as f:
                data = json.load(f)
        except (OSError, ValueError) as exc:
            raise SeparationError(f"{path!r} is not a readable separation result: {exc}") from None
        if not isinstance(data, dict) or data.get("format") != JSON_FORMAT:
            raise SeparationError(f"{path!r} is not a separation result (format "
                                  f"{data.get('format') if isinstance(data, dict) else None!r}, "
                                  f"expected {JSON_FORMAT!r})")
        try:
            arrays = {k: np.array([[np.nan if v is None else v for v in row] for row in data[k]], dtype=np.float64)
                      for k in _PER_PAIR}
            res = cls(data["layers"], data["classes"], arrays, data["m"], data["n"], data.get("info"),
                      data.get("name"))
        except (KeyError, TypeError, ValueError) as exc:
            raise SeparationError(f"{path!r}: the separation result is damaged ({type(exc).__name__}: {exc})") \
                from None
        if [list(p) for p in res.pairs] != data.get("pairs"):
            raise SeparationError(f"{path!r}: the class pairs do not match the classes")
        return res


# ------------------------------------------------------------------------- the network
def _class_labels(y, n):
    a = np.asarray(to_numpy(y))
    if a.ndim == 2 and a.shape[1] > 1:
        raise SeparationError(f"class_separation: y must be class indices of shape ({n},), received shape "
                              f"{a.shape} (one-hot rows? pass y.argmax(axis=1))")
    a = a.reshape(-1) if a.ndim == 2 else a
    if a.ndim != 1 or len(a) != n:
        raise SeparationError(f"class_separation: y must be class indices of shape ({n},) (one per sample of "
                              f"X), received shape {a.shape}")
    if a.dtype.kind == "b" or a.dtype.kind not in "iuf":
        raise SeparationError(f"class_separation: y must be integer class indices, received dtype {a.dtype}")
    if a.dtype.kind == "f":
        bad = ~np.isfinite(a) | (a != np.round(a))
        if bad.any():
            raise SeparationError(f"class_separation: y must be integer class indices, received "
                                  f"{int(bad.sum())} non-integer value(s), e.g. {a[bad][0]!r}")
    a = a.astype(np.int64)
    if (a < 0).any():
        raise SeparationError(f"class_separation: y must be class indices >= 0, received {int(a.min())}")
    return a


def _layer_names(net):
    names = [INPUT] + [layer.name for layer in net.layers]
    if INPUT in names[1:]:
        raise SeparationError(f"class_separation: a layer is named {INPUT!r}, the name of the network input here; "
                              "rename the layer")
    return names


def _inference(net):
    mode = getattr(net, "inference", None)
    return mode() if callable(mode) else contextlib.nullcontext()


def _is_reshape(layer):
    from ..layers.reshape import Reshape, Vectorization  # noqa: PLC0415
    return isinstance(layer, (Vectorization, Reshape))


def _sample(labels, classes, n_per_class, rng):
    idx = []
    for c in classes:
        where = np.flatnonzero(labels == c)
        if n_per_class is None or n_per_class == len(where):
            pick = where
        else:
            pick = np.sort(rng.choice(where, size=n_per_class, replace=False))
        idx.append(pick)
    return idx


def _collect(net, X, names, batch_size):
    """``{name: (N, d) outputs}`` of the analysed layers, in passes that fit ``MEMORY_BUDGET``.

    Yields one dict per pass."""
    bs = int(batch_size or max(getattr(net, "batch_size", 32), 256))
    wanted = [n for n in names if n != INPUT]
    if not wanted:
        return
    with _inference(net):
        first = net.layer_outputs(X[:1])
    width = {n: int(np.prod(first[n].shape[1:])) * first[n].dtype.itemsize for n in wanted}
    groups, cur, used = [], [], 0
    for n in wanted:
        if cur and used + width[n] * len(X) > MEMORY_BUDGET:
            groups.append(cur)
            cur, used = [], 0
        cur.append(n)
        used += width[n] * len(X)
    groups.append(cur)
    for group in groups:
        out = {n: np.empty((len(X),) + tuple(first[n].shape[1:]), dtype=first[n].dtype) for n in group}
        with _inference(net):
            for a in range(0, len(X), bs):
                got = net.layer_outputs(X[a:a + bs])
                for n in group:
                    out[n][a:a + bs] = got[n]
        yield out


def _layer_stats(Z, slices, metric, where, owned=False):
    """Per-pair statistics of one layer: ``{key: (P,) array}``."""
    Z = Z.reshape(len(Z), -1)
    if Z.dtype.kind == "f":
        bad = ~np.isfinite(Z).all(axis=1)
        if bad.any():
            raise SeparationError(f"class_separation: the output of layer {where!r} contains NaN/Inf for "
                                  f"{int(bad.sum())} sample(s) (e.g. sample {int(np.flatnonzero(bad)[0])} "
                                  "of the analysed ones); the network is broken at this layer")
    pts = _mst.Points(Z, metric, where=f"layer {where!r}", owned=owned)
    groups = [_groups(pts.inverse[s]) for s in slices]
    with _mst.blas_threads(max(len(g[0]) for g in groups), pts.d):
        blocks = [pts.sqdist(g[0]) for g in groups]
        out = {k: [] for k in _PER_PAIR}
        for i, j in itertools.combinations(range(len(slices)), 2):
            st = _pair(pts, groups[i], groups[j], blocks[i], blocks[j])
            for k in _PER_PAIR:
                out[k].append(st[k])
    return out


def class_separation(net, X, y, n_per_class=1000, layers=None, classes=None, seed=0, metric="euclidean",
                     batch_size=None):
    """Henze-Penrose separation of every class pair at the input and every layer of ``net``.

    ``X: (N, ...)`` samples the network takes, ``y: (N,)`` integer class indices.
    ``n_per_class``: a seeded random sample of this many per class (``None``: every sample;
    classes may then have different sizes, which H handles).  ``layers``: names to analyse
    (``"input"`` is the input; default all, in network order).  ``classes``: which classes
    (default every label present).  ``batch_size``: for the forward pass (default
    ``max(net.batch_size, 256)``).  The network runs in inference mode.  Returns a
    ``SeparationResult``.
    """
    if not (hasattr(net, "layers") and hasattr(net, "layer_outputs")):
        raise SeparationError(f"class_separation: net must be a NeuralNetwork, received {type(net).__name__}")
    Xh = np.asarray(to_numpy(X))
    if Xh.ndim < 2 or len(Xh) == 0:
        raise SeparationError(f"class_separation: X must hold samples along its first axis, received shape "
                              f"{Xh.shape}")
    labels = _class_labels(y, len(Xh))
    present, counts = np.unique(labels, return_counts=True)
    sizes = dict(zip(present.tolist(), counts.tolist()))
    if classes is None:
        classes = present.tolist()
    else:
        try:
            classes = sorted({int(c) for c in classes})
        except (TypeError, ValueError):
            raise SeparationError(f"class_separation: classes must be class indices, received {classes!r}") from None
        missing = [c for c in classes if c not in sizes]
        if missing:
            raise SeparationError(f"class_separation: classes {missing} have no samples in y (present: "
                                  f"{present.tolist()})")
    if len(classes) < 2:
        raise SeparationError(f"class_separation: needs at least 2 classes, received {classes}")
    small = {c: sizes[c] for c in classes if sizes[c] < 2}
    if small:
        raise SeparationError(f"class_separation: every class needs at least 2 samples; "
                              + ", ".join(f"class {c} has {k}" for c, k in small.items()))
    if n_per_class is not None:
        if isinstance(n_per_class, bool) or not isinstance(n_per_class, (int, np.integer)) or n_per_class < 2:
            raise SeparationError(f"class_separation: n_per_class must be an int >= 2 or None (every sample), "
                                  f"received {n_per_class!r}")
        short = {c: sizes[c] for c in classes if sizes[c] < n_per_class}
        if short:
            raise SeparationError(
                f"class_separation: n_per_class={n_per_class} but " +
                ", ".join(f"class {c} has only {k} samples" for c, k in short.items()) +
                f"; pass n_per_class=None to use every sample (sizes: "
                + ", ".join(f"{c}: {sizes[c]}" for c in classes) + f"), or at most {min(short.values())}")
    if not isinstance(metric, str):
        raise SeparationError(f"class_separation: metric must be a string, received {metric!r}")
    names = _layer_names(net)
    if layers is None:
        chosen = names
    else:
        if isinstance(layers, str):
            layers = [layers]
        unknown = [n for n in layers if n not in names]
        if unknown:
            raise SeparationError(f"class_separation: unknown layer name(s) {unknown}; the layers are {names}")
        chosen = [n for n in names if n in set(layers)]
    rng = np.random.default_rng(seed)
    picks = _sample(labels, classes, n_per_class, rng)
    order = np.concatenate(picks)
    bounds = np.cumsum([0] + [len(p) for p in picks])
    slices = [slice(bounds[i], bounds[i + 1]) for i in range(len(picks))]
    Xs = Xh[order]
    if Xs.dtype.kind == "f" and not np.isfinite(Xs).all():
        raise SeparationError("class_separation: X (the input) contains NaN/Inf values in the analysed samples")

    by_layer = {layer.name: layer for layer in net.layers}
    previous = {names[i]: names[i - 1] for i in range(1, len(names))}
    stats = {}
    reuse = {n for n in chosen if n != INPUT and _is_reshape(by_layer[n]) and previous[n] in chosen}
    if INPUT in chosen:
        stats[INPUT] = _layer_stats(Xs, slices, metric, INPUT)
    for outs in _collect(net, Xs, [n for n in chosen if n not in reuse], batch_size):
        for name, Z in outs.items():
            stats[name] = _layer_stats(Z, slices, metric, name, owned=True)
        del outs, Z
    for name in chosen:                 # network order: a reshape after a reshape also works
        if name in reuse:
            stats[name] = stats[previous[name]]
    m = [len(picks[i]) for i, _ in itertools.combinations(range(len(picks)), 2)]
    n = [len(picks[j]) for _, j in itertools.combinations(range(len(picks)), 2)]
    arrays = {k: np.array([stats[name][k] for name in chosen]) for k in _PER_PAIR}
    info = {"n_per_class": n_per_class, "seed": seed, "metric": metric,
            "class_sizes": {str(c): len(p) for c, p in zip(classes, picks)},
            "available": {str(c): sizes[c] for c in classes},
            "reshape_layers_copied": sorted(reuse), "network": getattr(net, "name", None),
            "indices": {str(c): p.tolist() for c, p in zip(classes, picks)}}
    return SeparationResult(chosen, classes, arrays, m, n, info)


# ---------------------------------------------------------------------- Fisher tests
def _compare(pairs_of_values, labels, paired, n_permutations, alternative, seed):
    """Rows of (labels..., mean of v0, mean of v1, change, statistic, p, test) for each (v0, v1)."""
    rows = []
    for lab, (v0, v1) in zip(labels, pairs_of_values):
        stat, p = fisher_test(v1, v0, paired=paired, n_permutations=n_permutations, alternative=alternative,
                              seed=seed)
        rows.append((*lab, float(v0.mean()), float(v1.mean()), stat, stat, p,
                     "paired sign-flip" if paired else "unpaired"))
    return rows


def compare_layers(result, paired=True, n_permutations=10000, alternative="two-sided", seed=0):
    """Fisher test of every layer against the next one (same class pairs).

    Rows: ``layer_from``, ``layer_to``, ``mean_from``, ``mean_to``, ``change`` (mean H at
    ``layer_to`` minus at ``layer_from``), ``statistic`` (the test's statistic, the change as
    ``fisher_test`` computes it), ``p_value`` and ``test``.  ``paired=True`` (default): the
    sign-flip test on the pairs' differences (the same class pairs at both layers);
    ``paired=False``: the unpaired Fisher test of the seed's library.
    """
    if not isinstance(result, SeparationResult):
        raise SeparationError(f"compare_layers: result must be a SeparationResult, received {type(result).__name__}")
    if len(result.layers) < 2:
        raise SeparationError(f"compare_layers: needs at least 2 layers, the result has {result.layers}")
    labels, vals = [], []
    for a, b in zip(result.layers[:-1], result.layers[1:]):
        labels.append((a, b))
        vals.append((result.values(a), result.values(b)))
    rows = _compare(vals, labels, paired, n_permutations, alternative, seed)
    return Table(("layer_from", "layer_to", "mean_from", "mean_to", "change", "statistic", "p_value", "test"), rows)


def compare_stages(before, after, paired=True, n_permutations=10000, alternative="two-sided", seed=0):
    """Fisher test, for each layer in both results, of ``after`` against ``before``.

    Rows: ``layer``, ``mean_before``, ``mean_after``, ``change``, ``statistic``, ``p_value``,
    ``test``.  The two results must have the same class pairs.
    """
    for nm, r in (("before", before), ("after", after)):
        if not isinstance(r, SeparationResult):
            raise SeparationError(f"compare_stages: {nm} must be a SeparationResult, received {type(r).__name__}")
    if before.pairs != after.pairs:
        raise SeparationError(f"compare_stages: the results have different classes ({before.classes} and "
                              f"{after.classes})")
    common = [layer for layer in before.layers if layer in after.layers]
    if not common:
        raise SeparationError(f"compare_stages: no layer in common ({before.layers} and {after.layers})")
    labels = [(layer,) for layer in common]
    vals = [(before.values(layer), after.values(layer)) for layer in common]
    rows = _compare(vals, labels, paired, n_permutations, alternative, seed)
    return Table(("layer", "mean_before", "mean_after", "change", "statistic", "p_value", "test"), rows)


# ------------------------------------------------------------------- during training
from .separation_history import SeparationHistory  # noqa: E402
from .separation_plots import plot_heatmap, plot_histograms, plot_history, plot_pca, plot_separation_curve
