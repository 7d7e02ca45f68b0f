"""``PermutationTestResult``: what ``permutation_test`` returns (docs/analysis/permutation.md, "result").

Three scopes, each saying plainly which question it answers:

* ``"global"`` (``null="labels"``, association): the labels permuted; exact for
  ``H0: y independent of all of X``; its per-feature p-values do NOT localise;
* ``"nonlinearity"`` (``null="labels"``, ``statistic="nonlinearity"``): per feature,
  ``H0_j: the network's output is linear in x_j``;
* ``"conditional"`` (``null="conditional"``): per group ``G`` of inputs,
  ``H0_G: y independent of X_G given the other inputs``: which inputs matter.
"""
import json
import numbers
import os

import numpy as np

from ...training.serialization import write_npz_atomic
from .pvalues import METHODS, benjamini_hochberg, holm, max_t, permutation_p_values, sequential_p_values

__all__ = ["PermutationTestResult", "STATISTICS", "SCOPES", "STATEMENTS"]

STATISTICS = ("association", "nonlinearity")
SCOPES = ("global", "nonlinearity", "conditional")
_FORMAT = "nn_from_scratch-permutation-test/1"

#: the plain statement of each scope (summary, CLI, plots)
STATEMENTS = {
    "global": ("GLOBAL test (labels permuted): exact for H0 'y is independent of ALL of X'. Its per-input "
               "p-values do not localise - they do not say which inputs matter (every input of a network "
               "that learnt anything beats networks trained on shuffled labels). For which inputs matter, "
               "use null='conditional'."),
    "nonlinearity": ("Per-feature NONLINEARITY test (residuals of a model linear in x_j permuted): H0_j 'the "
                     "network's output is linear in x_j', feature by feature."),
    "conditional": ("CONDITIONAL test per group of inputs (the group redrawn given all other inputs, networks "
                    "refitted): H0_G 'y is independent of X_G given the other inputs'. A small p says that the "
                    "group carries information about y that the other inputs do not: it localises. Exact with "
                    "the true conditional law; with an estimated sampler, calibrated by simulation."),
}


class PermutationTestResult:
    """What ``permutation_test`` returns.

    ``statistic``: the observed network's statistic, shape ``input_shape`` (global and
    nonlinearity tests) or ``(G,)`` (conditional: one value per group);
    ``null_distribution``: ``(B, *statistic.shape)`` (conditional with sequential stopping:
    NaN after a group's stop); ``p_values``; ``scope``; ``groups`` (the conditional test's
    group map, of one sample's shape); ``sequential`` (``h`` or None); ``adjusted(method)``
    and ``significant(alpha, method)``; ``save``/``load`` (``.npz``, no pickle); ``plot``.
    ``example``: an input drawn beside the maps (the data's first sample by default);
    ``info``: the settings (statistic, output, seed, recipe, fingerprint, timings, fits).
    """

    def __init__(self, statistic, null_distribution, statistic_name="association", example=None, info=None, *,
                 scope=None, groups=None, sequential=None):
        self.statistic = np.asarray(statistic, dtype=np.float64)
        self.null_distribution = np.asarray(null_distribution, dtype=np.float64)
        if self.null_distribution.ndim < 1 or tuple(self.null_distribution.shape[1:]) != self.statistic.shape:
            raise ValueError(f"PermutationTestResult: null_distribution must have shape (B, "
                             f"*{self.statistic.shape}), received {tuple(self.null_distribution.shape)}")
        if statistic_name not in STATISTICS:
            raise ValueError(f"PermutationTestResult: statistic_name must be one of {STATISTICS}, received "
                             f"{statistic_name!r}")
        if scope is None:
            scope = "global" if statistic_name == "association" else "nonlinearity"
        if scope not in SCOPES:
            raise ValueError(f"PermutationTestResult: scope must be one of {SCOPES}, received {scope!r}")
        self.statistic_name = statistic_name
        self.scope = scope
        self.groups = None
        if scope == "conditional":
            g = np.asarray(groups) if groups is not None else None
            if g is None or g.dtype.kind not in "iu" or self.statistic.ndim != 1 or \
                    int(g.max()) + 1 != self.statistic.size:
                raise ValueError(f"PermutationTestResult: scope='conditional' needs groups, an integer map with ids "
                                 f"0..{self.statistic.size - 1} (statistic of shape {self.statistic.shape}), "
                                 f"received {None if g is None else (g.dtype, g.shape)}")
            self.groups = g.astype(np.int64)
        elif groups is not None or sequential is not None:
            raise ValueError("PermutationTestResult: groups and sequential belong to scope='conditional', received "
                             f"scope={scope!r}")
        self.sequential = None if sequential is None else int(sequential)
        self.example = None if example is None else np.asarray(example)
        self.info = dict(info or {})
        if self.sequential is not None:
            self.p_values = sequential_p_values(self.statistic, self.null_distribution, self.sequential)
        else:
            self.p_values = permutation_p_values(self.statistic, self.null_distribution)

    @property
    def n_permutations(self):
        return int(self.null_distribution.shape[0])

    @property
    def input_shape(self):
        """One sample's shape (for the conditional test: the group map's)."""
        return self.groups.shape if self.groups is not None else self.statistic.shape

    @property
    def n_groups(self):
        """The number of tested units: groups (conditional) or inputs."""
        return int(self.statistic.size)

    @property
    def statement(self):
        """The plain sentence of which null was tested and what its p-values mean."""
        return STATEMENTS[self.scope]

    @property
    def joint_null(self):
        """True when one set of null networks gave every feature's null (the global test): max-T applies."""
        return self.scope == "global"

    def _default_method(self):
        return "maxT" if self.joint_null else "holm"

    def adjusted(self, method="maxT"):
        """Adjusted p-values: ``"holm"``, ``"bh"`` (SciPy's ``false_discovery_control``), ``"maxT"``
        (Westfall-Young step-down from the joint null: the global test only), ``"bonferroni"`` or ``"none"``."""
        if method not in METHODS:
            raise ValueError(f"adjusted: method must be one of {METHODS}, received {method!r}")
        p = self.p_values
        if method == "none":
            return p.copy()
        if method == "bonferroni":
            return np.minimum(1.0, p * int((~np.isnan(p)).sum()))
        if method == "holm":
            return holm(p)
        if method == "bh":
            return benjamini_hochberg(p)
        if self.scope == "conditional":
            raise ValueError("adjusted: method='maxT' needs one joint null distribution of all groups; the "
                             "conditional test draws a separate null for every group (no joint null across "
                             "groups): use method 'holm' (family-wise error) or 'bh' (false discovery rate), "
                             "received 'maxT'")
        if not self.joint_null:
            raise ValueError("adjusted: method='maxT' needs a joint null of all features (the association "
                             "test); the nonlinearity test's nulls are fitted feature by feature: use "
                             "'holm' or 'bh'")
        return max_t(self.statistic, self.null_distribution)

    def significant(self, alpha=0.05, method=None):
        """Boolean array ``adjusted(method) <= alpha`` (``method`` None: ``"maxT"`` for the global
        test, ``"holm"`` otherwise); NaN (untested) entries are False."""
        if not (isinstance(alpha, numbers.Real) and 0 < alpha < 1):
            raise ValueError(f"significant: alpha must be in (0, 1), received {alpha!r}")
        adj = self.adjusted(method or self._default_method())
        return np.nan_to_num(adj, nan=2.0) <= alpha

    def map(self, values):
        """Per-group ``values (G,)`` spread over the group map (one sample's shape); others: as given."""
        values = np.asarray(values)
        return values[self.groups] if self.groups is not None else values

    def summary(self, alpha=0.05, method=None):
        """A JSON-able dictionary of the settings and the headline numbers (with the scope's statement)."""
        method = method or self._default_method()
        sig = self.significant(alpha, method)
        p = self.p_values
        out = {
            "scope": self.scope, "statement": self.statement,
            "statistic": self.statistic_name, "n_permutations": self.n_permutations,
            "input_shape": list(self.input_shape), "alpha": alpha, "method": method,
            "n_features": int(np.prod(self.input_shape)), "n_tested": int((~np.isnan(p)).sum()),
            "n_significant": int(sig.sum()), "n_raw_p_below_alpha": int((np.nan_to_num(p, nan=2.0) <= alpha).sum()),
            "min_p": float(np.nanmin(p)) if np.isfinite(p).any() else None,
            "smallest_attainable_p": 1.0 / (self.n_permutations + 1),
        }
        if self.scope == "conditional":
            out.update({"n_groups": self.n_groups, "sequential": self.sequential,
                        "fits_per_group": self.fits_per_group().tolist(), "p_values": p.tolist()})
        out["info"] = self.info
        return out

    def fits_per_group(self):
        """Null replicates each group's p-value uses (conditional test; B without sequential stopping)."""
        return (~np.isnan(self.null_distribution)).sum(axis=0).reshape(-1)

    # ------------------------------------------------------------- files
    def save(self, path):
        """Write the result to ``path`` (``.npz``), atomically; ``PermutationTestResult.load`` reads it."""
        arrays = {"__format__": np.array(_FORMAT), "statistic": self.statistic,
                  "null_distribution": self.null_distribution, "p_values": self.p_values,
                  "statistic_name": np.array(self.statistic_name), "scope": np.array(self.scope),
                  "info": np.array(json.dumps(self.info, default=_json_default))}
        if self.example is not None:
            arrays["example"] = self.example
        if self.groups is not None:
            arrays["groups"] = self.groups
        if self.sequential is not None:
            arrays["sequential"] = np.array(self.sequential)
        write_npz_atomic(path, arrays)
        return path

    @classmethod
    def load(cls, path):
        """Read a file written by ``save`` (``allow_pickle=False``); a damaged file raises ``ValueError``.

        Before anything is decompressed the archive is checked as model files are
        (``training.serialization.inspect_npz``: members, declared sizes, compression ratio), then
        every member against what ``save`` writes (``_check_members``: known names, text fields,
        float arrays of matching shapes); after reading, the info is a JSON object and the p-values
        follow from the statistic and the null distribution."""
        from ...training.serialization import ModelFileError, inspect_npz  # noqa: PLC0415
        if not isinstance(path, (str, os.PathLike)):
            raise TypeError(f"PermutationTestResult.load: path must be a str or pathlib.Path, received "
                            f"{type(path).__name__} {path!r}")
        path = os.fspath(path)
        if not os.path.exists(path):
            raise FileNotFoundError(f"PermutationTestResult.load: no file at {os.path.abspath(path)!r}")
        if os.path.isdir(path):
            raise ValueError(f"PermutationTestResult.load: {path!r} is a directory, not a result file")
        try:
            specs = inspect_npz(path, kind=".npz file")
            _check_members(path, specs)
            with np.load(path, allow_pickle=False) as f:
                arrays = {k: f[k] for k in specs}
        except ModelFileError as exc:
            raise ValueError(f"PermutationTestResult.load: {exc}") from None
        except Exception as exc:            # zipfile/format errors: one clear message
            raise ValueError(f"PermutationTestResult.load: {path!r} is not a readable .npz file "
                             f"({type(exc).__name__}: {exc})") from None
        try:
            info = json.loads(str(arrays["info"]))
        except ValueError as exc:
            raise ValueError(f"PermutationTestResult.load: {path!r}: its info is not JSON ({exc})") from None
        if not isinstance(info, dict):
            raise ValueError(f"PermutationTestResult.load: {path!r}: its info must be a JSON object, found "
                             f"{type(info).__name__}")
        for key in ("statistic", "null_distribution"):
            if np.isinf(arrays[key]).any():
                raise ValueError(f"PermutationTestResult.load: {path!r}: {key} holds infinite values")
        seq = arrays.get("sequential")
        res = cls(arrays["statistic"], arrays["null_distribution"], str(arrays["statistic_name"]),
                  example=arrays.get("example"), info=info,
                  scope=str(arrays["scope"]) if "scope" in arrays else None, groups=arrays.get("groups"),
                  sequential=None if seq is None else int(seq))
        if "p_values" in arrays and not np.array_equal(res.p_values, arrays["p_values"], equal_nan=True):
            raise ValueError(f"PermutationTestResult.load: {path!r} is inconsistent (its p-values do not follow "
                             "from its statistic and null distribution)")
        return res

    def plot(self, alpha=0.05, method=None, example=None, feature_names=None):
        """Image inputs: the statistic map and the ``-log10 p`` map side by side with an example input;
        tabular inputs: a bar chart of ``-log10 p`` with the significance threshold.  The title names
        the scope (global / conditional).  Returns the figure."""
        from .. import permutation_plots  # noqa: PLC0415 - matplotlib only when plotting
        method = method or self._default_method()
        self.adjusted(method)                       # a refused method (maxT, conditional) fails here, clearly
        return permutation_plots.plot_result(self, alpha=alpha, method=method, example=example,
                                             feature_names=feature_names)

    def __repr__(self):
        extra = f", groups={self.n_groups}" if self.scope == "conditional" else ""
        return (f"PermutationTestResult({self.scope}, {self.statistic_name}, input_shape={self.input_shape}"
                f"{extra}, B={self.n_permutations}, min p={np.nanmin(self.p_values):.3g})")


#: what ``save`` writes: text fields, and arrays with the dtype kinds they may have
_TEXT = ("__format__", "statistic_name", "scope", "info")
_ARRAYS = {"statistic": "f", "null_distribution": "f", "p_values": "f", "example": "fiub", "groups": "iu",
           "sequential": "iu"}


def _check_members(path, specs):
    """Raise ``ValueError`` unless the declared members are those ``save`` writes, of sane shapes."""
    from ...training.serialization import MAX_CONFIG_BYTES  # noqa: PLC0415

    def bad(what):
        return ValueError(f"PermutationTestResult.load: {path!r} is not a permutation-test result: {what}")

    unknown = sorted(set(specs) - set(_TEXT) - set(_ARRAYS))
    if unknown:
        raise bad(f"unknown member(s) {unknown[:5]} (a result holds {sorted(_TEXT + tuple(_ARRAYS))})")
    fmt = specs.get("__format__")
    if fmt is None:
        raise bad(f"no __format__ (expected {_FORMAT!r})")
    missing = [k for k in ("statistic", "null_distribution", "statistic_name", "info") if k not in specs]
    if missing:
        raise bad(f"it lacks {missing}")
    for key in _TEXT:
        if key in specs:
            shape, dtype = specs[key]
            if dtype.kind not in "US" or shape != () or dtype.itemsize > MAX_CONFIG_BYTES:
                raise bad(f"{key} must be one text value of at most {MAX_CONFIG_BYTES} bytes, declared "
                          f"{dtype}{shape}")
    for key, kinds in _ARRAYS.items():
        if key in specs and specs[key][1].kind not in kinds:
            raise bad(f"{key} must have a dtype of kind {kinds!r}, declared {specs[key][1]}")
    S = specs["statistic"][0]
    B = specs["null_distribution"][0]
    if len(B) < 1 or B[0] < 1 or tuple(B[1:]) != S:
        raise bad(f"null_distribution must have shape (B >= 1, *{S}) for a statistic of shape {S}, declared {B}")
    if "p_values" in specs and specs["p_values"][0] != S:
        raise bad(f"p_values must have the statistic's shape {S}, declared {specs['p_values'][0]}")
    if "sequential" in specs and specs["sequential"][0] != ():
        raise bad(f"sequential must be one integer, declared shape {specs['sequential'][0]}")


def _json_default(o):
    if isinstance(o, np.generic):
        return o.item()
    if isinstance(o, np.ndarray):
        return o.tolist()
    return repr(o)
