"""``Dropout``: inverted dropout (Keras's ``Dropout(rate)``), with randomness the layer owns.

Training mode, for ``x: (N, *S)`` and drop probability ``rate`` (``0 <= rate < 1``)::

    m[n, s] = [u[n, s] >= rate]        u ~ U[0, 1), independent per entry
    y       = x * m / (1 - rate)       (kept entries are scaled up: E[y] = x)
    dL/dx   = dL/dy * m / (1 - rate)

Inference mode (``layer.training = False``; ``predict``/``evaluate``): ``y = x``, ``dL/dx = dL/dy``.
``rate = 0`` is the identity in both modes.  (Keras and PyTorch scale the same way, at training
time; the caller's array is never modified.)

Where the masks come from
-------------------------
Each layer has its own ``seed`` (given, or drawn from ``initializers.set_seed``'s global
generator when omitted, so ``nf.set_seed(0)`` makes a whole script reproducible) and counts its
training forwards (``step``).  The ``u`` of training forward ``step`` come from a counter-based
generator (NumPy's ``Philox``) keyed by ``(seed, step)``, laid out sample after sample: sample
``n``'s numbers start at position ``n * D4`` (``D4``: the per-sample size rounded up to Philox's
4-number blocks), so any run of samples ``[a, b)`` can be drawn on its own, equal to rows
``a..b`` of the whole batch's draw.  A part of a batch (samples ``a..b``), wherever it is
computed, is told the step and its first sample's index (``set_random_state``) and draws
exactly its rows of the batch's mask, so

* different parts of a batch get different masks (they are different rows of one draw), and
* the run is the same however a batch is cut into parts: the masks of every sample at every
  step are the same, and the weights agree to float rounding (tests/test_dropout.py).

The masks are drawn on the host (also for CuPy data: a GPU run then uses the very masks a CPU
run uses, at the cost of one host->device copy of an ``(N, *S)`` bool mask per step).

``fixed_randomness()`` (for gradient checks and the Keras cross-check): inside it, every training
forward of a batch of the same shape reuses the first one's mask, so the forward is a
deterministic function of ``x``.  ``mask`` is the last mask used (None in inference mode).
"""
import contextlib
import math
import numbers

import numpy as np

from . import initializers
from ..backend import to_device
from .base import Node

__all__ = ["Dropout"]


class Dropout(Node):
    """Inverted dropout: ``y = x * m / (1 - rate)`` when training, ``y = x`` in inference (module docstring).

    ``Dropout(rate, shape=None, seed=None, name=None)``; ``rate``: the fraction of entries dropped,
    ``0 <= rate < 1``.  Cache: ``keep = m / (1 - rate)`` (in ``x``'s dtype), or None for the identity.
    """

    per_sample = True   # samples of a batch never meet in this layer (see Node.per_sample)

    stochastic = True   # a random forward (gradcheck and the cross-check use fixed_randomness)

    def __init__(self, rate, shape=None, seed=None, name=None):
        super().__init__(shape, name)
        if isinstance(rate, bool) or not isinstance(rate, numbers.Real) or not math.isfinite(rate) \
                or not 0 <= rate < 1:
            raise ValueError(f"{self._describe()}: rate (the fraction of entries dropped) must be a number "
                             f"with 0 <= rate < 1, received {rate!r}")
        if seed is None:
            seed = int(initializers.default_rng().integers(2 ** 63))
        if isinstance(seed, bool) or not isinstance(seed, numbers.Integral) or not 0 <= seed < 2 ** 64:
            raise ValueError(f"{self._describe()}: seed must be an integer in [0, 2**64) or None, "
                             f"received {seed!r}")
        self.rate = float(rate)
        self.seed = int(seed)
        self._step = 0           # training forwards drawn so far: the next one uses (seed, step)
        self._offset = 0         # index of this batch's first sample in the step's whole batch
        self._fixed = None       # inside fixed_randomness: {shape: mask}, else None

    def get_config(self):
        return {**super().get_config(), "rate": self.rate, "seed": self.seed}

    # -- randomness -------------------------------------------------------------------------
    @property
    def step(self):
        """How many masks this layer has drawn (the next training forward uses ``(seed, step)``)."""
        return self._step

    def random_state(self):
        """The position of the layer's mask sequence (an int; saved with the model)."""
        return self._step

    def set_random_state(self, step, sample_offset=0):
        """Continue the mask sequence at ``step``; the next batch's first sample is sample
        ``sample_offset`` of the step's batch (a part of a batch computed on its own uses it)."""
        if isinstance(step, bool) or not isinstance(step, numbers.Integral) or step < 0:
            raise ValueError(f"{self._describe()}: the random state must be an integer >= 0, received {step!r}")
        self._step, self._offset = int(step), int(sample_offset)

    def draw_mask(self, shape, step=None, sample_offset=0):
        """The bool keep-mask ``m`` (NumPy, ``shape = (N, *S)``) of ``step`` (default: the next one)
        for samples ``sample_offset .. sample_offset + N - 1`` of that step's batch."""
        step = self._step if step is None else int(step)
        n, d = int(shape[0]), math.prod(shape[1:])
        d4 = -(-d // 4) * 4                      # Philox makes numbers 4 at a time: whole blocks per sample
        bits = np.random.Philox(key=np.array([self.seed, step], dtype=np.uint64),
                                counter=np.array([sample_offset * d4 // 4, 0, 0, 0], dtype=np.uint64))
        u = np.random.Generator(bits).random((n, d4))[:, :d]
        return (u >= self.rate).reshape(tuple(shape))

    @contextlib.contextmanager
    def fixed_randomness(self):
        """Inside: training forwards of one shape reuse one mask (drawn at the first), so the
        forward is a deterministic function of ``x``; afterwards the sequence moves on by one step."""
        if self._fixed is not None:              # nested: the outer context holds the masks
            yield self
            return
        self._fixed = {}
        try:
            yield self
        finally:
            if self._fixed:
                self._step += 1
            self._fixed = None

    @property
    def mask(self):
        """The bool keep-mask of the last forward (None when it was the identity)."""
        keep = self._cache.get("keep")
        return None if keep is None else keep != 0

    # -- forward / backward -----------------------------------------------------------------
    def _forward(self, x):
        if not self.training or self.rate == 0:
            self._cache["keep"] = None
            return x
        shape = tuple(x.shape)
        if self._fixed is not None:
            m = self._fixed.get(shape)
            if m is None:
                m = self._fixed[shape] = self.draw_mask(shape, sample_offset=self._offset)
        else:
            m = self.draw_mask(shape, sample_offset=self._offset)
            self._step += 1
        keep = to_device(m, like=x).astype(x.dtype)
        keep *= x.dtype.type(1.0 / (1.0 - self.rate))
        self._cache["keep"] = keep
        return x * keep

    def _backward(self, dy):
        keep = self._cache["keep"]
        if keep is None:
            return dy
        return dy * keep.astype(dy.dtype, copy=False)

    def __repr__(self):
        return f"Dropout(rate={self.rate}, seed={self.seed}, name={self.name!r})"
