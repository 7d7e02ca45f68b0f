"""The results of the separation analysis: ``HPResult`` (one pair), ``SeparationResult``
(every class pair at every layer) and ``Rows`` (the tables they give).

p-values
--------
``p_value = Phi(z)`` (one-sided, lower tail: small R means separated) underflows to 0.0 in
float64 below ``z ~ -38.5``, which well separated classes reach easily (two far apart
clusters of 2,000 points each: ``z = -63``).  So every result also carries
``log_p = log Phi(z)``, computed with ``scipy.special.log_ndtr`` (accurate far into the
tail, e.g. ``log_p = -1254.83`` at ``z = -50``), and ``log10_p = log_p / ln 10``: compare and rank pairs by these, not by
``p_value``.
"""
import itertools
import json
import math
import os

import numpy as np

from .._table import Table

__all__ = ["HPResult", "SeparationResult", "SeparationError", "Rows", "INPUT", "JSON_FORMAT", "MAX_JSON_BYTES"]

#: the name under which the network's input is analysed
INPUT = "input"
JSON_FORMAT = "nn_from_scratch-separation/1"
_LN10 = math.log(10.0)


class SeparationError(ValueError):
    """Data or arguments that the separation analysis cannot use."""


class Rows(Table):
    """A table: a sequence of rows, each a dict ``{column: value}``.

    ``t[i]`` is row ``i`` (a dict), ``t[i:j]`` (any slice) a ``Rows`` of those rows,
    ``t["H"]`` a column (NumPy array); ``len(t)``, iteration over the rows (dicts),
    ``t.records()`` (a list of dicts), ``t.to_pandas()``, ``str(t)`` (aligned text).
    """

    def __getitem__(self, key):
        if isinstance(key, slice):
            return Rows(self.columns, self.rows[key])
        if isinstance(key, (int, np.integer)):
            return dict(zip(self.columns, self.rows[key]))
        return super().__getitem__(key)

    def __eq__(self, other):
        return isinstance(other, Table) and self.columns == other.columns and self.rows == other.rows

    __hash__ = None


def _pandas():
    try:
        import pandas  # noqa: PLC0415 - optional
    except ImportError:
        return None
    return pandas


# ------------------------------------------------------------------------------ one pair
class HPResult:
    """The Henze-Penrose statistic of one pair of samples.

    ``H``, ``R`` (cross edges; the expectation over ties when points coincide), ``m``, ``n``,
    ``z`` (Friedman-Rafsky), ``p_value`` (one-sided, ``Phi(z)``; 0.0 when it underflows),
    ``log_p`` (``log Phi(z)``, finite far into the tail) and ``log10_p``, ``R_min``/``R_max``
    (the range over ties; equal to ``R`` when no two points coincide), ``E_R``/``var_R`` (the
    permutation moments), ``H_range`` (H at R_max and R_min).
    """

    __slots__ = ("H", "R", "m", "n", "z", "p_value", "log_p", "R_min", "R_max", "E_R", "var_R", "C")

    def __init__(self, H, R, m, n, z, p_value, R_min, R_max, E_R, var_R, C, log_p=None):
        self.H, self.R, self.m, self.n, self.z, self.p_value = H, R, m, n, z, p_value
        self.R_min, self.R_max, self.E_R, self.var_R, self.C = R_min, R_max, E_R, var_R, C
        self.log_p = _log_p(z) if log_p is None else log_p

    @property
    def log10_p(self):
        """``log10 Phi(z)`` (``log_p / ln 10``)."""
        return self.log_p / _LN10

    @property
    def H_range(self):
        N = self.m + self.n
        f = N / (2.0 * self.m * self.n)
        return 1.0 - self.R_max * f, 1.0 - self.R_min * f

    def as_dict(self):
        d = {k: getattr(self, k) for k in self.__slots__}
        d["log10_p"] = self.log10_p
        return d

    def __repr__(self):
        ties = f", R in [{self.R_min:g}, {self.R_max:g}] over ties" if self.R_min != self.R_max else ""
        return (f"HPResult(H={self.H:.6g}, R={self.R:g}, m={self.m}, n={self.n}, z={self.z:.4g}, "
                f"p_value={self.p_value:.4g}, log10_p={self.log10_p:.4g}{ties})")


def _log_p(z):
    """``log Phi(z)`` elementwise (NaN stays NaN)."""
    from scipy.special import log_ndtr  # noqa: PLC0415
    out = log_ndtr(np.asarray(z, dtype=np.float64))
    return float(out) if np.ndim(out) == 0 else out


_COLUMNS = ("layer", "class_a", "class_b", "H", "R", "z", "p_value", "log10_p", "m", "n", "R_min", "R_max")
_PER_PAIR = ("H", "R", "z", "p_value", "log_p", "R_min", "R_max")
#: per-pair arrays that files written before ``log_p`` existed lack (computed from ``z``)
_OPTIONAL = ("log_p",)


class SeparationResult:
    """Henze-Penrose values of every class pair at every analysed layer.

    ``layers`` (names, network order, ``"input"`` first), ``classes``, ``pairs`` (``(a, b)``
    with a < b in ``itertools.combinations`` order), and arrays ``H``, ``R``, ``z``,
    ``p_value``, ``log_p`` (``log Phi(z)``: use it where ``p_value`` underflows to 0),
    ``R_min``, ``R_max`` of shape ``(n_layers, n_pairs)``, ``log10_p`` (the same, base 10);
    ``m``, ``n`` per pair; ``info`` (how it was computed); ``name`` (a stage label for plots).

    ``table``: one row per (layer, pair) with columns layer, class_a, class_b, H, R, z,
    p_value, log10_p, m, n, R_min, R_max -- a pandas ``DataFrame`` when pandas is installed,
    else ``Rows`` (``table[:3]`` the first three rows, each a dict); ``records()`` (a list of
    dicts, always), ``value(layer, a, b)``, ``values(layer)``, ``matrix(layer)``,
    ``summary()``, ``to_json(path)`` / ``SeparationResult.from_json(path)``, ``to_pandas()``.
    """

    def __init__(self, layers, classes, arrays, m, n, info=None, name=None):
        self.layers = [str(x) for x in layers]
        self.classes = [int(c) for c in classes]
        self.pairs = list(itertools.combinations(self.classes, 2))
        shape = (len(self.layers), len(self.pairs))
        for key in _PER_PAIR:
            if key == "log_p" and arrays.get(key) is None:
                a = np.asarray(_log_p(self.z), dtype=np.float64).reshape(shape)
            else:
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
        for name, c in (("a", a), ("b", b)):
            if isinstance(c, (bool, np.bool_)) or not isinstance(c, (int, np.integer)):
                raise KeyError(f"class {name} must be an integer class index, received {c!r}; classes: "
                               f"{self.classes}")
        a, b = int(a), int(b)
        if a == b:
            raise KeyError(f"a class pair needs two different classes, received {a} and {b}")
        key = (min(a, b), max(a, b))
        if key not in self.pairs:
            raise KeyError(f"no class pair {key} in this result; classes: {self.classes}")
        return self.pairs.index(key)

    @property
    def log10_p(self):
        """``log10 Phi(z)``, shape ``(n_layers, n_pairs)``."""
        return self.log_p / _LN10

    def value(self, layer, a, b):
        """H of classes ``a`` and ``b`` (either order) at ``layer``."""
        return float(self.H[self._layer(layer), self._pair_index(a, b)])

    def values(self, layer, statistic="H"):
        """The per-pair values (``pairs`` order) of ``statistic`` at ``layer``."""
        if statistic not in _PER_PAIR + ("log10_p",):
            raise KeyError(f"statistic must be one of {_PER_PAIR + ('log10_p',)}, received {statistic!r}")
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

    def rows(self):
        """The table as ``Rows`` (whether or not pandas is installed)."""
        out = []
        log10_p = self.log10_p
        for i, layer in enumerate(self.layers):
            for j, (a, b) in enumerate(self.pairs):
                out.append((layer, a, b, float(self.H[i, j]), float(self.R[i, j]), float(self.z[i, j]),
                            float(self.p_value[i, j]), float(log10_p[i, j]), int(self.m[j]), int(self.n[j]),
                            float(self.R_min[i, j]), float(self.R_max[i, j])))
        return Rows(_COLUMNS, out)

    @property
    def table(self):
        """One row per (layer, class pair): a pandas ``DataFrame`` when pandas is installed, else ``Rows``."""
        rows = self.rows()
        return rows.to_pandas() if _pandas() is not None else rows

    def records(self):
        """The table as a list of dicts, one per (layer, class pair)."""
        return self.rows().records()

    def summary(self):
        """Per layer: mean, median, min, max of H over the pairs (``Rows``)."""
        rows = [(layer, float(h.mean()), float(np.median(h)), float(h.min()), float(h.max()))
                for layer, h in zip(self.layers, self.H)]
        return Rows(("layer", "mean", "median", "min", "max"), rows)

    def to_pandas(self):
        """The table as a pandas ``DataFrame`` (needs pandas)."""
        return self.rows().to_pandas()

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
        from ...atomic import write_json_atomic  # noqa: PLC0415 - the package's atomic JSON writer
        if not isinstance(path, (str, os.PathLike)):
            raise TypeError(f"SeparationResult.to_json: path must be a str or pathlib.Path, received "
                            f"{type(path).__name__} {path!r}")
        try:
            write_json_atomic(os.fspath(path), self._as_json())
        except OSError as exc:
            raise type(exc)(exc.errno, f"SeparationResult.to_json: cannot write {os.fspath(path)!r} "
                                       f"({exc.strerror})") from None
        return path

    @classmethod
    def from_json(cls, path):
        """Read a result written by ``to_json``; a file that is not one raises ``SeparationError``.

        Checked before anything is built (``_check_json``): the file's size (at most
        ``MAX_JSON_BYTES``), the classes (distinct integers), that the pairs, arrays and sample
        counts have the sizes the classes and layers give, counts >= 1, ``0 <= p_value <= 1``,
        ``log_p <= 0``, ``0 <= R_min <= R <= R_max <= m + n - 1`` and ``H = 1 - R (m + n) / (2 m n)``.
        """
        if not isinstance(path, (str, os.PathLike)):
            raise TypeError(f"SeparationResult.from_json: path must be a str or pathlib.Path, received "
                            f"{type(path).__name__} {path!r}")
        path = os.fspath(path)
        try:
            size = os.path.getsize(path)
            if size > MAX_JSON_BYTES:
                raise SeparationError(f"{path!r}: {size} bytes is larger than a separation result may be "
                                      f"(MAX_JSON_BYTES = {MAX_JSON_BYTES})")
            with open(path) as f:
                data = json.load(f)
        except (OSError, ValueError) as exc:
            if isinstance(exc, SeparationError):
                raise
            raise SeparationError(f"{path!r} is not a readable separation result: {exc}") from None
        if not isinstance(data, dict) or data.get("format") != JSON_FORMAT:
            raise SeparationError(f"{path!r} is not a separation result (format "
                                  f"{data.get('format') if isinstance(data, dict) else None!r}, "
                                  f"expected {JSON_FORMAT!r})")
        arrays = _check_json(path, data)
        return cls(data["layers"], data["classes"], arrays, data["m"], data["n"], data.get("info"),
                   data.get("name"))


#: the largest separation-result file ``from_json`` reads (100 classes, 20 layers: about 15 MB)
MAX_JSON_BYTES = 256 * 2 ** 20


def _check_json(path, data):
    """The per-pair arrays of a parsed result file, after checking its sizes, counts and ranges."""
    def bad(what):
        return SeparationError(f"{path!r}: the separation result is damaged: {what}")

    layers, classes, pairs = data.get("layers"), data.get("classes"), data.get("pairs")
    if not isinstance(layers, list) or not layers or not all(isinstance(x, str) for x in layers):
        raise bad(f"'layers' must be a non-empty list of layer names, found {str(layers)[:80]}")
    if len(set(layers)) != len(layers):
        raise bad(f"'layers' names a layer twice: {layers}")
    if not isinstance(classes, list) or not all(isinstance(c, int) and not isinstance(c, bool) for c in classes) \
            or len(set(classes)) != len(classes) or len(classes) < 2:
        raise bad(f"'classes' must be a list of at least 2 distinct integers, found {str(classes)[:80]}")
    K, L = len(classes), len(layers)
    P = K * (K - 1) // 2
    if not isinstance(pairs, list) or len(pairs) != P:
        raise bad(f"{K} classes make {P} pairs, the file lists "
                  f"{len(pairs) if isinstance(pairs, list) else type(pairs).__name__}")
    if pairs != [list(p) for p in itertools.combinations(classes, 2)]:
        raise bad("the class pairs do not match the classes")
    counts = {}
    for key in ("m", "n"):
        v = data.get(key)
        if not isinstance(v, list) or len(v) != P or not all(isinstance(k, int) and not isinstance(k, bool)
                                                               for k in v):
            raise bad(f"'{key}' must be {P} integer sample counts (one per pair), found {str(v)[:80]}")
        if v and min(v) < 1:
            raise bad(f"'{key}' holds the sample count {min(v)}; counts are >= 1")
        counts[key] = np.array(v, dtype=np.float64)
    arrays = {}
    for key in _PER_PAIR:
        rows = data.get(key)
        if rows is None and key in _OPTIONAL:
            continue
        if not isinstance(rows, list) or len(rows) != L or \
                not all(isinstance(r, list) and len(r) == P for r in rows):
            raise bad(f"'{key}' must be {L} rows (layers) of {P} values (pairs)")
        try:
            a = np.array([[np.nan if v is None else v for v in r] for r in rows], dtype=np.float64)
        except (TypeError, ValueError):
            raise bad(f"'{key}' holds values that are not numbers") from None
        if not np.isfinite(a[~np.isnan(a)]).all():
            raise bad(f"'{key}' holds infinite values")
        arrays[key] = a
    for key in ("H", "R", "R_min", "R_max"):
        if np.isnan(arrays[key]).any():
            raise bad(f"'{key}' has missing values (every pair has one)")
    m, n = counts["m"], counts["n"]
    N = m + n
    checks = [
        ("p_value", (arrays["p_value"] >= 0) & (arrays["p_value"] <= 1), "in [0, 1]"),
        ("R_min", arrays["R_min"] >= 0, ">= 0"),
        ("R", (arrays["R"] >= arrays["R_min"] - 1e-9 * N) & (arrays["R"] <= arrays["R_max"] + 1e-9 * N),
         "in [R_min, R_max]"),
        ("R_max", arrays["R_max"] <= (N - 1) * (1 + 1e-12), "<= m + n - 1 (the tree's edges)"),
        ("H", np.abs(arrays["H"] - (1.0 - arrays["R"] * N / (2.0 * m * n))) <= 1e-9 * (1.0 + N * N / (m * n)),
         "equal to 1 - R (m + n) / (2 m n)"),
    ]
    if "log_p" in arrays:
        checks.append(("log_p", arrays["log_p"] <= 0, "<= 0"))
    for key, ok, want in checks:
        vals = arrays[key]
        wrong = ~ok & ~np.isnan(vals)
        if wrong.any():
            i, j = (int(t[0]) for t in np.nonzero(wrong))
            raise bad(f"{key} must be {want}, found {float(vals[i, j])!r} at layer {layers[i]!r}, pair "
                      f"{tuple(pairs[j])}")
    return arrays
