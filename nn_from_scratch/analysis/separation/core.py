"""The computations of the separation analysis: ``henze_penrose`` (one pair),
``class_separation`` (every class pair at every layer of a network) and the Fisher tests
between layers and between stages (``compare_layers``, ``compare_stages``).

This module imports neither the plots (``plots.py``) nor the training callback
(``history.py``); they import it.  The package docstring (``separation/__init__.py``) gives
the statistic; ``_mst.py`` how ``R`` is computed.
"""
import contextlib
import itertools

import numpy as np

from ...backend import to_numpy
from ...validation import as_array
from ..fisher import EXACT_LIMIT, FisherResult, fisher_test
from . import _mixed, _mst
from .result import INPUT, HPResult, Rows, SeparationError, SeparationResult, _PER_PAIR

__all__ = ["henze_penrose", "class_separation", "compare_layers", "compare_stages", "fisher_test", "FisherResult",
           "EXACT_LIMIT", "MEMORY_BUDGET", "MAX_DISTANCE_BYTES", "distance_bytes"]

#: bytes of layer outputs one pass through the network may collect; more layers than fit
#: are analysed in several passes (each runs the whole network).  Peak memory is about
#: max(MEMORY_BUDGET, one layer's outputs) + one more copy of the widest layer (numpy.unique
#: sorts its rows) + the distance blocks (sum of n_c^2 + n_a n_b float64, 90 MB at 1,000 per class)
MEMORY_BUDGET = 2 ** 30

#: the most memory the distance blocks of one layer may need (``distance_bytes``); a larger
#: request is refused before anything is allocated, naming the size and the way out (fewer
#: samples per class).  Raise it (``core.MAX_DISTANCE_BYTES = ...``) on a machine with the memory.
MAX_DISTANCE_BYTES = 8 * 2 ** 30


def distance_bytes(sizes):
    """Upper bound of the float64 memory the distance blocks of one layer take for classes of
    ``sizes`` points: every class's own block (kept for all its pairs) plus, for the largest
    pair, its cross block and the joint matrix Prim's tree is built on (``_pair``)::

        8 * (sum_c n_c^2 + max_(a, b) (n_a n_b + (n_a + n_b)^2))

    Exact duplicates are merged first, so the real need can only be smaller.
    """
    sizes = sorted((int(k) for k in sizes), reverse=True)
    own = sum(k * k for k in sizes)
    a, b = (sizes + [0, 0])[:2]
    return 8 * (own + a * b + (a + b) ** 2)


def _check_distance_memory(sizes, where, hint):
    need = distance_bytes(sizes)
    if need > MAX_DISTANCE_BYTES:
        raise SeparationError(
            f"{where}: the distance blocks of {len(sizes)} classes of up to {max(sizes)} points would need "
            f"{need / 2 ** 30:.3g} GiB ({need} bytes; at most MAX_DISTANCE_BYTES = "
            f"{MAX_DISTANCE_BYTES / 2 ** 30:.3g} GiB); {hint}")


def _check_metric(metric, where):
    """A string naming ``GRAM_METRICS`` or a metric ``scipy.spatial.distance.cdist`` knows."""
    if not isinstance(metric, str):
        raise SeparationError(f"{where}: metric must be a string, received {metric!r}")
    if metric in _mst.GRAM_METRICS:
        return
    from scipy.spatial.distance import cdist  # noqa: PLC0415
    try:
        cdist(np.eye(2), np.eye(2)[::-1], metric=metric)
    except ValueError as exc:
        if "nknown" in str(exc):
            raise SeparationError(f"{where}: metric must be 'euclidean', 'sqeuclidean', 'cosine' or another "
                                  f"scipy.spatial.distance.cdist metric, received {metric!r}") from None


def _flat(X, name):
    a = np.asarray(to_numpy(as_array("henze_penrose", name, X)))
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


def _pair(pts, ga, gb, Daa, Dbb, Dab=None, exact_blocks=None, stats=None):
    """Statistics of one pair from its classes' distinct points ``(ids, counts)`` and blocks.

    ``Dab``: the block of a's against all of b's distinct points when already computed.
    ``exact_blocks``: given when the blocks are mixed precision (``_mixed``): a function
    ``(which) -> float64 block`` for the recomputation of a pair the recheck does not certify.
    """
    ua, ca = ga
    ub, cb = gb
    b_only = ~np.isin(ub, ua, assume_unique=True)
    ub2 = ub[b_only]
    Dab = pts.sqdist(ua, ub2) if Dab is None else Dab[:, b_only]
    Dbb2 = Dbb[np.ix_(b_only, b_only)]
    W = np.block([[Daa, Dab], [Dab.T, Dbb2]])
    ka = np.concatenate([ca, np.zeros(len(ub2))])
    kb_a = np.zeros(len(ua))
    kb_a[np.searchsorted(ua, ub[~b_only])] = cb[~b_only]
    kb = np.concatenate([kb_a, cb[b_only]])
    if exact_blocks is None:
        return _mst.pair_statistics(W, ka, kb)
    child, parent = _mst.prim_dense(W)
    ids = np.concatenate([ua, ub2])
    alpha, beta = _mixed.error_coefficients(pts.d)
    radius = np.sqrt(pts.norms[ids])
    if _mixed.certify(W, child, parent, radius, alpha, beta,
                      lambda u, v: _mixed.exact_sqdist(pts, ids, u, v), stats):
        return _mst.tree_summary(child, parent, ka, kb)
    del W
    return _pair(pts, ga, gb, exact_blocks(ga), exact_blocks(gb))


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
    _check_metric(metric, "henze_penrose")
    m = len(A)
    _check_distance_memory([len(A), len(B)], "henze_penrose",
                           "pass fewer points (a random subsample of each sample estimates H as well)")
    dtype = np.result_type(A.dtype, B.dtype, np.float32)
    pts = _mst.Points(np.concatenate([A.astype(dtype), B.astype(dtype)]), metric, where="henze_penrose",
                      owned=True)
    ga, gb = _groups(pts.inverse[:m]), _groups(pts.inverse[m:])
    with _mst.blas_threads(max(len(ga[0]), len(gb[0])), pts.d):
        return HPResult(**_pair(pts, ga, gb, pts.sqdist(ga[0]), pts.sqdist(gb[0])))


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


def _check_int(name, value, low):
    """``value`` is None or an int >= ``low`` (not a bool, not a float that would be rounded)."""
    if value is None:
        return
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < low:
        raise SeparationError(f"class_separation: {name} must be an int >= {low} or None (the default), "
                              f"received {value!r}")


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
    from ...layers.reshape import Reshape, Vectorization  # noqa: PLC0415
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


def _collect(net, X, names, batch_size, budget=None):
    """``{name: (N, d) outputs}`` of the analysed layers, in passes that fit ``MEMORY_BUDGET``.

    Yields one dict per pass."""
    bs = int(batch_size) if batch_size is not None else max(int(getattr(net, "batch_size", 32) or 32), 256)
    wanted = [n for n in names if n != INPUT]
    if not wanted:
        return
    with _inference(net):
        first = net.layer_outputs(X[:1])
    width = {n: int(np.prod(first[n].shape[1:])) * first[n].dtype.itemsize for n in wanted}
    groups, cur, used = [], [], 0
    for n in wanted:
        if cur and used + width[n] * len(X) > (MEMORY_BUDGET if budget is None else budget):
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


#: bytes the mixed-precision distance blocks of one layer may take at once; more class
#: pairs than fit are done in several rounds (each centres and rounds the points again)
BLOCK_BUDGET = 512 * 2 ** 20
PRECISIONS = ("auto", "float64", "float32")


def _layer_stats(Z, slices, metric, where, owned=False, precision="float64", info=None):
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
    mixed = metric in _mst.GRAM_METRICS and (precision == "float32" or
                                             (precision == "auto" and pts.d >= _mixed.MIXED_MIN_WIDTH))
    out = {k: [] for k in _PER_PAIR}
    pairs = list(itertools.combinations(range(len(slices)), 2))
    with _mst.blas_threads(max(len(g[0]) for g in groups), pts.d):
        if not mixed:
            blocks = [pts.sqdist(g[0]) for g in groups]
            for i, j in pairs:
                st = _pair(pts, groups[i], groups[j], blocks[i], blocks[j])
                for k in _PER_PAIR:
                    out[k].append(st[k])
            return out
        ids = [g[0] for g in groups]
        blocks = _mixed.gram_blocks(pts, ids, [(i, None) for i in range(len(ids))])
        exact = {}

        def exact_block(g):
            key = id(g[0])
            if key not in exact:
                exact[key] = pts.sqdist(g[0])
            return exact[key]

        stats = {}
        used = sum(b.nbytes for b in blocks)
        rounds, cur, size = [], [], used
        for i, j in pairs:
            nb = 8 * len(ids[i]) * len(ids[j])
            if cur and size + nb > BLOCK_BUDGET:
                rounds.append(cur)
                cur, size = [], used
            cur.append((i, j))
            size += nb
        rounds.append(cur)
        for todo in rounds:
            cross = _mixed.gram_blocks(pts, ids, todo)
            for (i, j), Dab in zip(todo, cross):
                st = _pair(pts, groups[i], groups[j], blocks[i], blocks[j], Dab=Dab, exact_blocks=exact_block,
                           stats=stats)
                for k in _PER_PAIR:
                    out[k].append(st[k])
            del cross
    if info is not None:
        info[where] = {"pairs": stats.get("pairs", 0), "rechecked_edges": stats.get("rechecked_edges", 0),
                       "rechecked_trees": stats.get("rechecked_trees", 0),
                       "recomputed_pairs": stats.get("recomputed_pairs", 0), "rounds": len(rounds)}
    return out


def class_separation(net, X, y, n_per_class=1000, layers=None, classes=None, seed=0, metric="euclidean",
                     batch_size=None, precision="auto", memory_budget=None):
    """Henze-Penrose separation of every class pair at the input and every layer of ``net``.

    ``X: (N, ...)`` samples the network takes, ``y: (N,)`` integer class indices.
    ``n_per_class``: a seeded random sample of this many per class (``None``: every sample;
    classes may then have different sizes, which H handles).  ``layers``: names to analyse
    (``"input"`` is the input; default all, in network order).  ``classes``: which classes
    (default every label present).  ``batch_size``: for the forward pass (default
    ``max(net.batch_size, 256)``).  The network runs in inference mode.  ``precision``:
    ``"float64"`` computes every distance in float64 Gram products (``_mst.py``);
    ``"float32"`` uses float32 products with a float64 recheck of near-ties (``_mixed.py``),
    which gives the same result at about half the cost; ``"auto"`` (default) uses float32
    products for layers at least ``_mixed.MIXED_MIN_WIDTH`` (4,096) wide.  ``memory_budget``:
    bytes of layer outputs one forward pass may collect (default ``MEMORY_BUDGET``, 1 GiB);
    layers that do not fit are collected by further passes.  Returns a
    ``SeparationResult``; ``info["mixed_precision"]`` counts, per layer, the pairs, the
    rechecked edges and the pairs recomputed in float64.
    """
    if not (hasattr(net, "layers") and hasattr(net, "layer_outputs")):
        raise SeparationError(f"class_separation: net must be a NeuralNetwork, received {type(net).__name__}")
    Xh = np.asarray(to_numpy(as_array("class_separation", "X", X)))
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
            given = list(classes) if not isinstance(classes, (str, bytes)) else None
        except TypeError:
            given = None
        if given is None or any(isinstance(c, bool) or not isinstance(c, (int, np.integer)) for c in given):
            raise SeparationError(f"class_separation: classes must be a list of integer class indices (or None: "
                                  f"every class), received {classes!r}")
        classes = sorted({int(c) for c in given})
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
    _check_metric(metric, "class_separation")
    _check_int("batch_size", batch_size, 1)
    _check_int("memory_budget", memory_budget, 1)
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise SeparationError(f"class_separation: seed must be an int >= 0, received {seed!r}")
    if not isinstance(precision, str) or precision not in PRECISIONS:
        raise SeparationError(f"class_separation: precision must be one of {PRECISIONS}, received {precision!r}")
    names = _layer_names(net)
    if layers is None:
        chosen = names
    else:
        if isinstance(layers, str):
            layers = [layers]
        try:
            layers = list(layers)
        except TypeError:
            raise SeparationError(f"class_separation: layers must be layer names (a list of strings) or None (every "
                                  f"layer), received {layers!r}") from None
        if not layers:
            raise SeparationError(f"class_separation: layers=[] names no layer to analyse; pass None for every "
                                  f"layer, or some of {names}")
        unknown = [n for n in layers if n not in names]
        if unknown:
            raise SeparationError(f"class_separation: unknown layer name(s) {unknown}; the layers are {names}")
        chosen = [n for n in names if n in set(layers)]
    _check_distance_memory([sizes[c] if n_per_class is None else n_per_class for c in classes],
                           "class_separation", "pass a smaller n_per_class (a seeded random sample of each class, "
                           "the default 1000)")
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
    mixed_info = {}
    if INPUT in chosen:
        stats[INPUT] = _layer_stats(Xs, slices, metric, INPUT, precision=precision, info=mixed_info)
    for outs in _collect(net, Xs, [n for n in chosen if n not in reuse], batch_size, memory_budget):
        for name, Z in outs.items():
            stats[name] = _layer_stats(Z, slices, metric, name, owned=True, precision=precision, info=mixed_info)
        del outs, Z
    for name in chosen:                 # network order: a reshape after a reshape also works
        if name in reuse:
            stats[name] = stats[previous[name]]
    m = [len(picks[i]) for i, _ in itertools.combinations(range(len(picks)), 2)]
    n = [len(picks[j]) for _, j in itertools.combinations(range(len(picks)), 2)]
    arrays = {k: np.array([stats[name][k] for name in chosen]) for k in _PER_PAIR}
    info = {"n_per_class": n_per_class, "seed": seed, "metric": metric, "precision": precision,
            "mixed_precision": mixed_info,
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
    return Rows(("layer_from", "layer_to", "mean_from", "mean_to", "change", "statistic", "p_value", "test"), rows)


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
    return Rows(("layer", "mean_before", "mean_after", "change", "statistic", "p_value", "test"), rows)


