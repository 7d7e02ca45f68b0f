"""Learning-rate schedules: objects an optimizer takes for ``lr`` (Keras's same-named schedules).

A schedule is called with the optimizer's step count *before* the update (0 at the first
update, as Keras's ``optimizer.iterations``) and returns the rate for that update::

    opt = Adam(lr=CosineDecay(1e-3, decay_steps=1000, warmup_target=1e-2, warmup_steps=100))

ExponentialDecay(initial_learning_rate, decay_steps, decay_rate, staircase=False)::

    lr(step) = initial * decay_rate ** (step / decay_steps)       (floor(step / decay_steps) if staircase)

StepDecay(initial_learning_rate, step_size, factor)  -- ExponentialDecay with staircase=True::

    lr(step) = initial * factor ** floor(step / step_size)

PiecewiseConstantDecay(boundaries, values)  (len(values) == len(boundaries) + 1)::

    values[0] for step <= boundaries[0];  values[i] for boundaries[i-1] < step <= boundaries[i];
    values[-1] for step > boundaries[-1]

CosineDecay(initial_learning_rate, decay_steps, alpha=0.0, warmup_target=None, warmup_steps=0)::

    without warm-up:  s = min(step, decay_steps)
                      lr = initial * ((1 - alpha) * 0.5 * (1 + cos(pi s / decay_steps)) + alpha)
    with warm-up:     step < warmup_steps: lr = initial + (warmup_target - initial) * step / warmup_steps
                      else s = min(step, warmup_steps + decay_steps) - warmup_steps and the cosine
                      above from warmup_target

Every value is checked when used: a schedule (ours or a user's ``LearningRateSchedule``
subclass, or any callable) that returns NaN, Inf or a negative rate raises a ``ValueError``
naming the schedule and the step.  Keras computes its schedules in float32, these in float64
(rates agree to ~1e-7 relative).
"""
import bisect
import math

import numpy as np

__all__ = ["LearningRateSchedule", "ExponentialDecay", "StepDecay", "PiecewiseConstantDecay", "CosineDecay",
           "get", "check_rate"]


def _num(owner, name, value, lo=None, lo_open=False, integer=False):
    ok = isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, bool)
    if ok:
        v = float(value)
        ok = math.isfinite(v) and (lo is None or (v > lo if lo_open else v >= lo))
        if integer:
            ok = ok and v == int(v)
    if not ok:
        what = "an integer" if integer else "a finite number"
        bound = "" if lo is None else (f" > {lo:g}" if lo_open else f" >= {lo:g}")
        raise ValueError(f"{owner}: {name} must be {what}{bound}, received {value!r}")
    return int(value) if integer else float(value)


class LearningRateSchedule:
    """Base class: implement ``__call__(step) -> float`` and ``get_config()``."""

    def __call__(self, step):
        raise NotImplementedError(f"{type(self).__name__} must implement __call__(step)")

    def get_config(self):
        raise NotImplementedError(f"{type(self).__name__} must implement get_config() to be saved")

    @classmethod
    def from_config(cls, config):
        return cls(**config)

    def __repr__(self):
        try:
            args = ", ".join(f"{k}={v!r}" for k, v in self.get_config().items())
        except NotImplementedError:
            args = ""
        return f"{type(self).__name__}({args})"


class ExponentialDecay(LearningRateSchedule):
    """``initial * decay_rate ** (step / decay_steps)`` (the exponent floored if ``staircase``)."""

    def __init__(self, initial_learning_rate, decay_steps, decay_rate, staircase=False):
        self.initial_learning_rate = _num("ExponentialDecay", "initial_learning_rate", initial_learning_rate, 0,
                                          lo_open=True)
        self.decay_steps = _num("ExponentialDecay", "decay_steps", decay_steps, 0, lo_open=True)
        self.decay_rate = _num("ExponentialDecay", "decay_rate", decay_rate, 0, lo_open=True)
        self.staircase = bool(staircase)

    def __call__(self, step):
        p = step / self.decay_steps
        if self.staircase:
            p = math.floor(p)
        return self.initial_learning_rate * self.decay_rate ** p

    def get_config(self):
        return {"initial_learning_rate": self.initial_learning_rate, "decay_steps": self.decay_steps,
                "decay_rate": self.decay_rate, "staircase": self.staircase}


class StepDecay(ExponentialDecay):
    """``initial * factor ** floor(step / step_size)``: the rate drops by ``factor`` every ``step_size`` steps."""

    def __init__(self, initial_learning_rate, step_size, factor=0.1):
        super().__init__(initial_learning_rate, _num("StepDecay", "step_size", step_size, 0, lo_open=True),
                         _num("StepDecay", "factor", factor, 0, lo_open=True), staircase=True)
        self.step_size, self.factor = self.decay_steps, self.decay_rate

    def get_config(self):
        return {"initial_learning_rate": self.initial_learning_rate, "step_size": self.step_size,
                "factor": self.factor}


class PiecewiseConstantDecay(LearningRateSchedule):
    """``values[i]`` between ``boundaries[i-1]`` (excluded) and ``boundaries[i]`` (included), as Keras."""

    def __init__(self, boundaries, values):
        boundaries, values = list(boundaries), list(values)
        if len(values) != len(boundaries) + 1:
            raise ValueError(f"PiecewiseConstantDecay: values needs one more entry than boundaries, received "
                             f"{len(boundaries)} boundaries and {len(values)} values")
        self.boundaries = [_num("PiecewiseConstantDecay", f"boundaries[{i}]", b) for i, b in enumerate(boundaries)]
        if any(b >= c for b, c in zip(self.boundaries, self.boundaries[1:])):
            raise ValueError(f"PiecewiseConstantDecay: boundaries must increase, received {boundaries}")
        self.values = [_num("PiecewiseConstantDecay", f"values[{i}]", v, 0) for i, v in enumerate(values)]

    def __call__(self, step):
        return self.values[bisect.bisect_left(self.boundaries, step)]

    def get_config(self):
        return {"boundaries": self.boundaries, "values": self.values}


class CosineDecay(LearningRateSchedule):
    """Cosine decay from ``initial_learning_rate`` (or from ``warmup_target`` after a linear
    warm-up of ``warmup_steps``) to ``alpha`` times it over ``decay_steps``, as Keras."""

    def __init__(self, initial_learning_rate, decay_steps, alpha=0.0, warmup_target=None, warmup_steps=0):
        self.initial_learning_rate = _num("CosineDecay", "initial_learning_rate", initial_learning_rate, 0)
        self.decay_steps = _num("CosineDecay", "decay_steps", decay_steps, 0, lo_open=True)
        self.alpha = _num("CosineDecay", "alpha", alpha, 0)
        self.warmup_target = None if warmup_target is None else _num("CosineDecay", "warmup_target", warmup_target,
                                                                       0, lo_open=True)
        self.warmup_steps = _num("CosineDecay", "warmup_steps", warmup_steps, 0)
        if self.warmup_target is None and self.initial_learning_rate <= 0:
            raise ValueError("CosineDecay: initial_learning_rate must be > 0 without a warm-up, received "
                             f"{initial_learning_rate!r}")
        if self.warmup_target is not None and self.warmup_steps <= 0:
            raise ValueError(f"CosineDecay: warmup_target={warmup_target!r} needs warmup_steps > 0, received "
                             f"{warmup_steps!r}")

    def _decay(self, step, start):
        cosine = 0.5 * (1.0 + math.cos(math.pi * step / self.decay_steps))
        return start * ((1 - self.alpha) * cosine + self.alpha)

    def __call__(self, step):
        if self.warmup_target is None:
            return self._decay(min(step, self.decay_steps), self.initial_learning_rate)
        s = min(step, self.decay_steps + self.warmup_steps)
        if s < self.warmup_steps:
            return (self.warmup_target - self.initial_learning_rate) * s / self.warmup_steps + self.initial_learning_rate
        return self._decay(s - self.warmup_steps, self.warmup_target)

    def get_config(self):
        return {"initial_learning_rate": self.initial_learning_rate, "decay_steps": self.decay_steps,
                "alpha": self.alpha, "warmup_target": self.warmup_target, "warmup_steps": self.warmup_steps}


_BY_NAME = {c.__name__: c for c in (ExponentialDecay, StepDecay, PiecewiseConstantDecay, CosineDecay)}


def get(config):
    """A schedule from ``{"class": name, "config": {...}}`` (what a model file records)."""
    try:
        cls = _BY_NAME[config["class"]]
    except KeyError:
        raise ValueError(f"unknown learning-rate schedule {config.get('class')!r}; known: {sorted(_BY_NAME)}") from None
    return cls.from_config(config["config"])


def check_rate(value, schedule, step):
    """``float(value)`` when it is a usable rate (finite, >= 0), else a ValueError naming the schedule and step."""
    try:
        lr = float(value)
    except (TypeError, ValueError):
        lr = None
    if lr is None or not math.isfinite(lr) or lr < 0:
        raise ValueError(f"the learning-rate schedule {schedule!r} returned {value!r} at step {step}; a learning "
                         "rate must be a finite number >= 0")
    return lr
