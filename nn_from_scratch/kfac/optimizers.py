"""K-FAC and EKFAC: natural-gradient optimizers with Kronecker-factored curvature
(docs/analysis/curvature.md).

For every ``Linear``/``Convolution`` layer the gradient ``V = [dL/dW.reshape(F, -1) | dL/db]``
(``analysis/curvature.py`` gives the convention; ``Linear``'s bias row 0 maps to the last column)
is preconditioned by the damped curvature block, then clipped and applied with momentum::

    every cov_every steps:   A <- decay A + (1 - decay) A_batch,  G likewise  (the first: A = A_batch)
    every inv_every steps:   A = Q_A diag(lam_A) Q_A^T, G = Q_G diag(lam_G) Q_G^T  (float64, clamped >= 0)
    K-FAC:    V' = Q_G [(Q_G^T V Q_A) / (lam_G lam_A^T + damping)] Q_A^T   = (G (x) A + damping I)^-1 V
    EKFAC:    V' = Q_G [(Q_G^T V Q_A) / (s + damping)] Q_A^T
    KL clip:  nu = min(1, sqrt(kl_clip / (lr^2 sum_layers |<V', V>|)))      (kl_clip=None: nu = 1)
    (lr: a number or a schedule, ``nn_from_scratch.schedules``, read at each step; K-FAC's own
    kl_clip replaces the gradient clipping arguments of the other optimizers)
    w <- w - lr * weight_decay * w                        (decoupled, as GradientDescent)
    v <- momentum v - lr nu V';  w <- w + v               (Keras SGD momentum on V')

``A_batch``/``G_batch`` are the batch's factors in the convention (``A = (1/N) sum_nt a a^T``,
``G = (1/(N T)) sum_nt g g^T`` with per-example output gradients), of the Fisher type
``fisher`` (``"empirical"``: the batch's labels, free: the training backward pass itself;
``"mc"``: one more backward pass per sample with labels drawn from the model; ``"type2"``,
``"gauss_newton"``: one per output, small nets only).

EKFAC (``scale_every``; ``None``, the default: the statistics steps themselves): the scalings
``s`` start as ``lam_G lam_A^T`` at every new eigenbasis (so that until they are re-estimated EKFAC is K-FAC
exactly) and are re-estimated every ``scale_every`` steps from the batch in the current basis,
``s_batch = (1/N) sum_n (Q_G^T G_n Q_A)^2`` (the first estimate after a new basis replaces
``lam_G lam_A^T``, later ones are averaged with ``decay``: a running average).  ``s_batch`` is
computed by ``factors.scalings_sum`` in its cheapest exact form: for a Linear layer the Gramian
form ``(g~ * g~)^T (a~ * a~)`` of the projected rows, two matrix products for the batch and no
per-example gradient; for a convolution, the per-example gradients a chunk at a time when that
is cheaper (many positions).  The bases are cast to the network's dtype once per eigenbasis and the
preconditioner's reciprocal denominators once per scalings (cached between steps).

Defaults (``KFAC()``, ``EKFAC()``): ``lr=0.01``, ``damping=0.1``, statistics every 10 steps,
eigenbases every 100 (``benchmarks/kfac_defaults.py``, ``benchmarks/RESULTS.md``).  A loss that
diverges on the statistics steps (``_LossWatch``) gets one ``TrainingWarning`` that names the
damping.

Every other trainable layer (pooling and activations have no parameters; a student's own
neuron, later normalisation layers) gets the plain momentum step ``v <- m v - lr g; w <- w + v``
(with the same decoupled weight decay): there is no Kronecker block for it.

How the trainer feeds it: the optimizer's ``needs_layer_statistics`` is True on the steps
where it must see the batch (every ``cov_every``-th, and for EKFAC every ``scale_every``-th);
on those steps ``NeuralNetwork`` hands the batch to ``optimizer.forward_backward(net, x, y)``,
which runs the forward/backward pass in this process, layer by layer (no fused blocks, no worker
split), keeps each layer's input (the patches come from ``layers/geometry.patch_view`` of it) and
per-example output gradient, and leaves the training gradient in the layers as usual.  On the
other steps, and for every other optimizer, the trainer runs its ordinary (fused, split) step:
nothing is slower.  A saved model keeps the momenta and the step count (``get_state``); the
factors are not saved: after loading, the first step records them again.  A manual loop calls
``optimizer.forward_backward(net, x, y)`` itself instead of ``net.forward``/``backward`` when
``optimizer.needs_layer_statistics`` is True.
"""
import math
import warnings

import numpy as np

from ..engine import kernels
from . import statistics as ls
from .factors import (EKFACFactors, KroneckerFactors, check_damping, one_blas_thread, scalings_sum,
                      symmetric_eigh)
from ..backend import get_array_module, read_scalars
from ..by_layer import StateByLayer
from ..training.optimizer_base import Optimizer
from ..training.trainer import TrainingWarning

__all__ = ["KFAC", "EKFAC"]


#: ``KFAC()``'s damping (benchmarks/kfac_defaults.py: 0.1 trained the seed CNN and LeNet-5 to Adam's test
#: accuracy or better; 1e-3 diverged on LeNet-5)
_DEFAULT_DAMPING = 0.1


class _LossWatch:
    """The losses of the statistics steps, smoothed: ``add`` says how they diverged (a string) or None.

    Diverged: a loss that is NaN/Inf, or a smoothed loss (exponential average over ``WINDOW`` readings)
    above ``FACTOR`` times its lowest value so far *and* above it by ``MARGIN`` times the starting
    level (the first reading): the rise is large both relative to the best loss reached and on the
    scale of the problem, so that the noise of a low loss (0.2 -> 0.4) is no divergence.
    """

    FACTOR, MARGIN, WINDOW = 2.0, 0.25, 3

    def __init__(self):
        self.start = self.ema = self.lowest = None
        self.warned = False

    def add(self, loss):
        if not math.isfinite(loss):
            return f"a batch's loss is {loss}"
        if self.start is None:
            self.start = self.ema = self.lowest = loss
            return None
        self.ema += (loss - self.ema) / self.WINDOW
        self.lowest = min(self.lowest, self.ema)
        if self.ema > self.FACTOR * self.lowest and self.ema - self.lowest > self.MARGIN * abs(self.start):
            return f"smoothed, it rose from {self.lowest:.4g} to {self.ema:.4g}"
        return None


def _check_int(owner, name, value):
    if not (isinstance(value, (int, np.integer)) and not isinstance(value, bool) and value >= 1):
        raise ValueError(f"{owner}: {name} must be an int >= 1, received {value!r}")
    return int(value)


class KFAC(Optimizer):
    """K-FAC / KFC natural-gradient descent (see the module docstring for the update)."""

    #: the optimizer's names in ``optimizers.get`` / ``NeuralNetwork(optimizer=...)`` (lowercase)
    names = ("kfac",)

    #: EKFAC's re-estimation forms per-example gradients ``(n, F, Dp)`` this many examples at a time
    chunk_examples = 32

    def __init__(self, lr=0.01, damping=0.1, decay=0.95, cov_every=10, inv_every=100, fisher="empirical",
                 kl_clip=1e-3, momentum=0.9, weight_decay=0, mc_samples=1, seed=0):
        super().__init__(lr)
        owner = type(self).__name__
        self.damping = check_damping(damping, owner)
        if not (isinstance(decay, (int, float, np.floating)) and 0 <= decay < 1):
            raise ValueError(f"{owner}: decay must be in [0, 1), received {decay!r}")
        self.decay = float(decay)
        self.cov_every = _check_int(owner, "cov_every", cov_every)
        self.inv_every = _check_int(owner, "inv_every", inv_every)
        if fisher not in ls.FISHER_TYPES:
            raise ValueError(f"{owner}: fisher must be one of {ls.FISHER_TYPES}, received {fisher!r}")
        self.fisher = fisher
        if kl_clip is not None and not (isinstance(kl_clip, (int, float, np.floating)) and math.isfinite(kl_clip)
                                        and kl_clip > 0):
            raise ValueError(f"{owner}: kl_clip must be a finite number > 0 or None (no clipping), received {kl_clip!r}")
        self.kl_clip = None if kl_clip is None else float(kl_clip)
        if not (isinstance(momentum, (int, float, np.floating)) and 0 <= momentum < 1):
            raise ValueError(f"{owner}: momentum must be in [0, 1), received {momentum!r}")
        self.momentum = float(momentum)
        if not (isinstance(weight_decay, (int, float, np.floating)) and 0 <= weight_decay < math.inf):
            raise ValueError(f"{owner}: weight_decay must be a finite number >= 0, received {weight_decay!r}")
        self.weight_decay = float(weight_decay)
        self.mc_samples = _check_int(owner, "mc_samples", mc_samples)
        self.seed = seed
        self._rng = np.random.default_rng(seed)
        self._warned = set()
        self._curv = StateByLayer()     # per layer: factors, eigenbasis, scalings (not saved with a model)
        self._fresh = True               # no statistics yet: the next step records them, whatever its index
        self._watch = _LossWatch()

    # ------------------------------------------------------------------ the trainer's hook
    @property
    def needs_layer_statistics(self):
        """Must the trainer hand this step's batch to ``forward_backward``?"""
        return self._fresh or self.iterations % self.cov_every == 0

    def forward_backward(self, net, xb, yb, sample_weight=None):
        """The batch's forward/backward pass (training gradient in the layers), keeping the curvature
        statistics; returns ``(loss, output)`` as ``NeuralNetwork._forward_backward`` does
        (``sample_weight``: the batch's weights, passed to the loss)."""
        owner = type(self).__name__
        ls.check_fisher(self.fisher, net.loss_fn, owner, self.mc_samples)
        layers = [layer for layer in net.layers if ls.is_supported(layer) and getattr(layer, "trainable", True)]
        rec = ls.record(net, xb, yb, self.fisher, layers, self.mc_samples, self._rng, keep_grads=True,
                        sample_weight=sample_weight)
        n = rec.output.shape[0]
        self._fresh = False
        with one_blas_thread(get_array_module(rec.output)):
            self._statistics(layers, rec, n)
        self._check_loss(rec.loss)
        return rec.loss, rec.output

    def _check_loss(self, loss):
        """Warn once (``TrainingWarning``) when the loss seen on the statistics steps diverges
        (``_LossWatch``): too little damping is K-FAC's usual cause, and the message says so."""
        (value,) = read_scalars(loss, why="check")
        verdict = self._watch.add(value)
        if verdict is None or self._watch.warned:
            return
        self._watch.warned = True
        name = type(self).__name__
        warnings.warn(f"{name}: the training loss is diverging under {name} ({verdict}; the loss is read every "
                      f"{self.cov_every} steps): the damping ({self.damping:g}) is too small for this network's "
                      f"curvature. Raise damping (the default is {_DEFAULT_DAMPING:g}; more damping is a shorter, "
                      f"safer step) or lower the learning rate ({self.lr})", TrainingWarning, stacklevel=2)

    def _statistics(self, layers, rec, n):
        update_cov = self.iterations % self.cov_every == 0
        for layer in layers:
            st = self._curv.of(layer)
            x = rec.inputs[id(layer)]
            gs = rec.output_gradients(layer)
            if update_cov or "A" not in st:
                t = gs[0].shape[1]
                A = ls.input_factor_sum(layer, x) / n
                G = sum((g.reshape(-1, g.shape[2]).T @ g.reshape(-1, g.shape[2])) for g in gs).astype(np.float64)
                G /= n * t
                if "A" not in st:
                    st["A"], st["G"] = A, G
                else:
                    st["A"] = self.decay * st["A"] + (1 - self.decay) * A
                    st["G"] = self.decay * st["G"] + (1 - self.decay) * G
            self._keep_batch(st, layer, x, gs)

    def _keep_batch(self, st, layer, x, gs):
        """K-FAC needs nothing more of the batch (EKFAC keeps its patch rows for its scalings)."""

    # ------------------------------------------------------------------ the update
    def curvature(self, layer):
        """The layer's current curvature: ``KroneckerFactors`` (its eigenbasis the one in use), or
        None before the first statistics."""
        st = self._curv.of(layer)
        if "A" not in st:
            return None
        kf = KroneckerFactors(st["A"], st["G"], layer=layer.name)
        if "eigen" in st:
            kf._eigen = st["eigen"]
        return kf

    def _new_basis(self, st, layer):
        st["pre"] = None
        st["eigen"] = (*symmetric_eigh(st["G"], f"the G factor of layer '{layer.name}'"),
                       *symmetric_eigh(st["A"], f"the A factor of layer '{layer.name}'"))

    def _denominator(self, st):
        lam_G, _, lam_A, _ = st["eigen"]
        return get_array_module(lam_G).outer(lam_G, lam_A) + self.damping

    def _precondition(self, st, V):
        """``Q_G [(Q_G^T V Q_A) / denominator] Q_A^T`` in ``V``'s dtype (the bases and the reciprocal
        denominator are cast once per basis/scalings: float32 networks precondition in float32)."""
        pre = st.get("pre")
        if pre is None or pre[0].dtype != V.dtype:
            _, Q_G, _, Q_A = st["eigen"]
            st["pre"] = pre = (Q_G.astype(V.dtype), Q_A.astype(V.dtype), (1.0 / self._denominator(st)).astype(V.dtype))
        Q_G, Q_A, inv = pre
        return Q_G @ ((Q_G.T @ V @ Q_A) * inv) @ Q_A.T

    def step(self, layers):
        """One update of every trainable layer (see the module docstring)."""
        like = next((p for layer in layers for p in getattr(layer, "params", {}).values()), None)
        with one_blas_thread(get_array_module(like) if like is not None else np):
            self._step(layers)

    def _step(self, layers):
        t = self.iterations                  # this step's index (0-based)
        self.current_lr = lr = self._rate(t)  # a number, or the schedule's value at this step
        self.iterations += 1
        pre, plain = [], []
        for layer in layers:
            if not getattr(layer, "trainable", False):
                continue
            for name in layer.params:
                if layer.grads.get(name) is None:
                    raise RuntimeError(f"{layer._describe()}: no gradient for parameter {name!r}; call backward() "
                                       "before step()")
            st = self._curv.of(layer)
            if ls.is_supported(layer) and "A" in st:
                if "eigen" not in st or t % self.inv_every == 0:
                    self._new_basis(st, layer)
                    self._basis_changed(st)
                else:
                    self._refresh_scalings(st, layer, t)
                st.pop("batch", None)
                V = ls.to_matrix(layer, layer.grads)
                pre.append((layer, V, self._precondition(st, V)))
            else:
                if ls.is_supported(layer) and layer.name not in self._warned:
                    self._warned.add(layer.name)
                    warnings.warn(f"{type(self).__name__}: no curvature statistics for {layer._describe()} yet: it "
                                  "gets a plain momentum step. NeuralNetwork.fit/train_step record them; a manual loop "
                                  "must call optimizer.forward_backward(net, x, y) when "
                                  "optimizer.needs_layer_statistics is True", RuntimeWarning, stacklevel=2)
                plain.append(layer)
        nu = 1.0
        if pre and self.kl_clip is not None:
            xp = get_array_module(pre[0][1])
            total = sum(xp.abs((Vp * V).sum(dtype=np.float64)) for _, V, Vp in pre) * (lr ** 2)
            with np.errstate(divide="ignore"):
                nu = xp.minimum(1.0, xp.sqrt(self.kl_clip / total))
        for layer, _, Vp in pre:
            parts = ls.from_matrix(layer, Vp * nu)
            for name, param in layer.params.items():
                self._apply(layer, name, param, parts[name].astype(param.dtype, copy=False))
        for layer in plain:
            for name, param in layer.params.items():
                self._apply(layer, name, param, layer.grads[name])

    def _apply(self, layer, name, param, direction):
        lr = self.current_lr
        if self.weight_decay:
            param -= param * (lr * self.weight_decay)
        v = self.state((layer, name), param, "velocity") if self.momentum else None
        kernels.sgd_update(param, direction, v, lr, self.momentum, False)

    def _update(self, param, grad, key):     # the interface's per-parameter rule: the plain momentum step
        layer, name = key
        self._apply(layer, name, param, grad)

    def _basis_changed(self, st):
        """K-FAC: nothing (EKFAC resets its scalings)."""

    def _refresh_scalings(self, st, layer, t):
        """K-FAC: nothing (EKFAC re-estimates its scalings)."""

    def reset(self):
        """Forget momenta, the step count and the curvature statistics."""
        super().reset()
        self._rng = np.random.default_rng(self.seed)
        self._warned = set()
        self._curv = StateByLayer()
        self._fresh = True
        self._watch = _LossWatch()

    def get_config(self):
        return {"lr": self.lr, "damping": self.damping, "decay": self.decay, "cov_every": self.cov_every,
                "inv_every": self.inv_every, "fisher": self.fisher, "kl_clip": self.kl_clip,
                "momentum": self.momentum, "weight_decay": self.weight_decay, "mc_samples": self.mc_samples,
                "seed": self.seed}


class EKFAC(KFAC):
    """Eigenvalue-corrected K-FAC (George et al. 2018): K-FAC's eigenbasis, scalings re-estimated every
    ``scale_every`` steps from real per-example gradients (see the module docstring)."""

    names = ("ekfac",)

    def __init__(self, lr=0.01, damping=0.1, decay=0.95, cov_every=10, inv_every=100, fisher="empirical",
                 kl_clip=1e-3, momentum=0.9, weight_decay=0, scale_every=None, mc_samples=1, seed=0):
        super().__init__(lr, damping, decay, cov_every, inv_every, fisher, kl_clip, momentum, weight_decay,
                         mc_samples, seed)
        #: None: the scalings are re-estimated on the statistics steps themselves (every ``cov_every``)
        self.scale_every = None if scale_every is None else _check_int("EKFAC", "scale_every", scale_every)

    @property
    def _scale_every(self):
        return self.cov_every if self.scale_every is None else self.scale_every

    @property
    def needs_layer_statistics(self):
        return self._fresh or self.iterations % self.cov_every == 0 or self.iterations % self._scale_every == 0

    def _keep_batch(self, st, layer, x, gs):
        if (self.iterations % self._scale_every == 0) and self.iterations % self.inv_every != 0:
            st["batch"] = (ls.patch_rows(layer, x), gs)

    def _basis_changed(self, st):
        st["scalings"] = None
        st["pre"] = None
        st["rows_basis"] = None

    def _refresh_scalings(self, st, layer, t):
        """``s_batch = (1/N) sum_n (Q_G^T G_n Q_A)^2`` by ``factors.scalings_sum`` (the Gramian form for a
        Linear layer, the cheapest exact form for a convolution), in the network's dtype with the bases
        cast once per eigenbasis; the first estimate in a basis replaces ``lam_G lam_A^T``, later ones
        are averaged with ``decay``."""
        batch = st.pop("batch", None)
        if batch is None:
            return
        a, gs = batch
        dt = np.result_type(a.dtype, np.float32)
        cast = st.get("rows_basis")
        if cast is None or cast[0] != dt:
            _, Q_G, _, Q_A = st["eigen"]
            st["rows_basis"] = cast = (dt, Q_G.astype(dt), Q_A.astype(dt))
        s = scalings_sum(a, gs, cast[1], cast[2], self.chunk_examples)
        s /= a.shape[0]
        old = st.get("scalings")
        st["pre"] = None
        st["scalings"] = s if old is None else self.decay * old + (1 - self.decay) * s

    def _denominator(self, st):
        s = st.get("scalings")
        if s is None:
            return super()._denominator(st)
        return s + self.damping

    def curvature(self, layer):
        """``EKFACFactors`` in use (scalings ``lam_G lam_A^T`` until re-estimated), or None."""
        kf = super().curvature(layer)
        if kf is None or "eigen" not in self._curv.of(layer):
            return kf
        return EKFACFactors(kf, self._curv.of(layer).get("scalings"))

    def get_config(self):
        cfg = super().get_config()
        cfg["scale_every"] = self.scale_every
        return cfg
