"""Tolerances and the error measure of the cross-check.

For our array ``a`` and Keras's ``b`` (same shape, same layout)::

    abs error  = max |a - b|
    rel error  = max |a - b| / max(max |b|, tiny)

The relative error is *scale-aware*: it measures the worst deviation against
the size of the reference tensor as a whole, not entry by entry, so entries
that are (nearly) zero by cancellation do not blow it up, while a gradient that
is wrong by a factor (a missing 1/N, a transposed matrix) gives an error of
order 1.  ``tiny`` (1e-30) only keeps an all-zero reference from dividing by 0;
then any nonzero deviation fails.  A NaN/Inf anywhere fails too.
"""
import math
from dataclasses import dataclass

import numpy as np

__all__ = ["TOLERANCES", "TINY", "relative_error", "measure", "Check", "resolve_tolerances"]

#: float32 tolerances (relative error as defined above).
TOLERANCES = {
    "forward": 1e-5,    # layer outputs and the loss value
    "gradient": 1e-4,   # dL/dx, dL/dW, dL/db
    "training": 1e-3,   # every weight (and the loss) after each of 100 training steps
}

TINY = 1e-30


def resolve_tolerances(rtol=None):
    """The tolerance dict for ``rtol``: None (defaults), a float (all kinds) or a partial dict."""
    tol = dict(TOLERANCES)
    if rtol is None:
        return tol
    if isinstance(rtol, dict):
        unknown = set(rtol) - set(tol)
        if unknown:
            raise ValueError(f"unknown tolerance kind(s) {sorted(unknown)}; expected some of {sorted(tol)}")
        for k, v in rtol.items():
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not v > 0:
                raise ValueError(f"rtol[{k!r}] must be a number > 0, received {v!r}")
        tol.update({k: float(v) for k, v in rtol.items()})
        return tol
    if isinstance(rtol, bool) or not isinstance(rtol, (int, float)):
        raise TypeError(f"rtol must be None, a number > 0 or a dict of them by kind, received "
                        f"{type(rtol).__name__} {rtol!r}")
    v = float(rtol)
    if not v > 0:
        raise ValueError(f"rtol must be > 0, received {rtol!r}")
    return {k: v for k in tol}


def relative_error(a, b):
    """``max|a - b| / max(max|b|, tiny)`` (inf when either holds NaN/Inf or shapes differ)."""
    return measure(a, b)[1]


def measure(a, b, allowance=None, floor=0.0):
    """``(max abs error, max rel error, index of the worst entry)``; index in ``a``'s layout.

    ``allowance`` (an array of ``a``'s size, or one broadcasting along axis 0, or None): a rounding allowance
    subtracted from every entry's difference before the relative error is taken; ``floor``: the
    least scale (see ``scales``).
    """
    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    if a.shape != b.shape:
        return math.inf, math.inf, None
    if a.size == 0:
        return 0.0, 0.0, None
    if not (np.isfinite(a).all() and np.isfinite(b).all()):
        bad = np.flatnonzero(~(np.isfinite(a) & np.isfinite(b)))[0]
        return math.inf, math.inf, tuple(int(i) for i in np.unravel_index(bad, a.shape))
    diff = np.abs(a - b)
    scale = max(float(np.abs(b).max()), float(floor), TINY)
    if allowance is None:
        flat = int(diff.argmax())
        worst = diff.reshape(-1)[flat]
        return float(worst), float(worst) / scale, tuple(int(i) for i in np.unravel_index(flat, a.shape))
    allow = np.asarray(allowance, dtype=np.float64)
    if allow.size == a.size:                # one allowance per entry
        allow = allow.reshape(a.shape)
    elif a.ndim:                            # one per entry of axis 0 (per channel), or one for all
        allow = np.broadcast_to(allow.reshape((-1,) + (1,) * (a.ndim - 1)), a.shape)
    excess = np.maximum(diff - allow, 0.0)
    flat = int(excess.argmax()) if excess.any() else int(diff.argmax())
    return (float(diff.reshape(-1)[flat]), float(excess.reshape(-1)[flat]) / scale,
            tuple(int(i) for i in np.unravel_index(flat, a.shape)))


@dataclass
class Check:
    """One compared quantity: ours against Keras's.

    ``quantity``: ``"output"``, ``"dL/dx"``, ``"dL/dW"`` or ``"dL/db"`` (or a weight name in
    training reports); ``where``: the worst entry written in OUR layout, e.g. ``"W[3, 0, 1, 2]"``;
    ``ours``/``keras``: the two values there.
    """

    quantity: str
    max_abs: float
    max_rel: float
    tol: float
    where: str = ""
    ours: float = math.nan
    keras: float = math.nan
    shape: tuple = ()
    allowance: float = 0.0

    @property
    def passed(self):
        return bool(self.max_rel <= self.tol)

    @classmethod
    def of(cls, quantity, ours, ref, tol, array="y", index_map=None, allowance=None, floor=0.0):
        """Measure ``ours`` against ``ref``; ``index_map`` turns the worst index into OUR array's index.

        ``allowance``/``floor``: the rounding allowance per entry of axis 0 and the least scale
        (``measure``; used for sums over the batch that cancel, see ``scales``).
        """
        ours = np.asarray(ours)
        ref = np.asarray(ref)
        if ours.shape != ref.shape:
            return cls(quantity, math.inf, math.inf, tol,
                       f"shape {tuple(ours.shape)} (ours) vs {tuple(ref.shape)} (keras)", shape=tuple(ours.shape))
        mabs, mrel, idx = measure(ours, ref, allowance, floor)
        where, o, k = "", math.nan, math.nan
        if idx is not None:
            o, k = float(ours[idx]), float(ref[idx])
            shown = index_map(idx) if index_map is not None else idx
            where = f"{array}[{', '.join(str(i) for i in shown)}]" if shown else array
        allow = 0.0 if allowance is None else float(np.max(allowance))
        return cls(quantity, mabs, mrel, tol, where, o, k, tuple(ours.shape), allow)

    def describe(self):
        status = "ok" if self.passed else "FAIL"
        txt = f"{self.quantity}: rel {self.max_rel:.2e} (abs {self.max_abs:.2e}) vs tol {self.tol:.0e} -> {status}"
        if self.allowance:
            txt += f" (rounding allowance {self.allowance:.1e} not counted)"
        if self.where:
            txt += f"; worst at {self.where}: ours {self.ours:.7g}, keras {self.keras:.7g}"
        return txt
