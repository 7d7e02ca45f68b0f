"""The recipe's ``fit`` arguments: a fresh copy per replicate and a stable description
(docs/analysis/permutation.md, "parallel runs, checkpoints, reproducibility").

Callbacks keep state while ``fit`` runs (``EarlyStopping``'s ``wait`` and ``best``,
``ReduceLROnPlateau``'s counters); one object shared by replicates that train at the same time
(threads) would mix their states, so every replicate trains with its own callbacks, each made
from the user's callback's configuration (never by pickling):

* a callback with ``get_config()`` (Keras's protocol): ``type(cb).from_config(config)`` where the
  class defines it, else ``type(cb)(**config)``;
* the built-in ``EarlyStopping``, ``ReduceLROnPlateau``, ``LearningRateScheduler`` and
  ``TerminateOnNaN`` (and subclasses that keep their constructor): the constructor's arguments,
  read from the attributes of the same names;
* refused with an error: ``ModelCheckpoint`` and ``CSVLogger`` (every replicate would write the
  same file), ``LambdaCallback`` and any other callback without a configuration (its state
  cannot be copied).

Metrics are stateless (``Metric.batch_sum``) and shared.  ``describe`` gives the experiment
fingerprint's view of a value: arrays by digest, callbacks by class and configuration, named
functions by module and name, anything else by ``repr()``.
"""
import hashlib
import inspect
import types

import numpy as np

from ...backend import to_numpy

__all__ = ["fresh_fit_kwargs", "check_fit_kwargs", "callback_config", "describe", "describe_kwargs", "digest_array"]


def digest_array(a):
    a = np.ascontiguousarray(to_numpy(a))
    return hashlib.sha256(f"{a.dtype}/{a.shape}".encode() + a.tobytes()).hexdigest()


def _callback_classes():
    from ...training import callbacks as cbm  # noqa: PLC0415
    by_args = (cbm.EarlyStopping, cbm.ReduceLROnPlateau, cbm.LearningRateScheduler, cbm.TerminateOnNaN)
    refused = {cbm.ModelCheckpoint: "it writes a file after every epoch: all replicates would write the same file",
               cbm.CSVLogger: "it writes a file: all replicates would write the same file",
               cbm.LambdaCallback: "its functions may keep state that cannot be copied"}
    return cbm.Callback, by_args, refused


def _where(i):
    return f"permutation_test: fit_kwargs['callbacks'][{i}]"


def callback_config(cb, i=0):
    """``(class, config dict)`` a replicate's copy of callback ``cb`` is made from (module docstring)."""
    _, by_args, refused = _callback_classes()
    cls = type(cb)
    own_config = getattr(cls, "get_config", None)
    if callable(own_config):
        config = cb.get_config()
        if not isinstance(config, dict):
            raise TypeError(f"{_where(i)}: {cls.__name__}.get_config() must return a dict, returned "
                            f"{type(config).__name__}")
        return cls, dict(config)
    for base, why in refused.items():
        if isinstance(cb, base):
            raise ValueError(f"{_where(i)}: {cls.__name__} cannot be used in a permutation test: {why} (every "
                             "replicate trains its own copy of each callback); leave it out of fit_kwargs, or "
                             "give the class get_config() (and from_config) so that each replicate gets a copy")
    base = next((b for b in by_args if isinstance(cb, b)), None)
    if base is None or cls.__init__ is not base.__init__:
        raise ValueError(f"{_where(i)}: {cls.__name__} has no configuration to copy it from: every replicate "
                         "trains with its own copy of each callback (a shared one would mix the replicates' "
                         f"state); define {cls.__name__}.get_config() returning its constructor arguments "
                         "(and from_config if the constructor does not take them as keywords)")
    names = [p.name for p in list(inspect.signature(base.__init__).parameters.values())[1:]
             if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)]
    return cls, {n: getattr(cb, n) for n in names}


def copy_callback(cb, i=0):
    cls, config = callback_config(cb, i)
    make = getattr(cls, "from_config", None)
    try:
        return make(config) if callable(make) else cls(**config)
    except Exception as exc:
        raise ValueError(f"{_where(i)}: could not make a copy of {cls.__name__} from its configuration {config!r} "
                         f"({type(exc).__name__}: {exc})") from None


def fresh_fit_kwargs(fit_kwargs):
    """``fit_kwargs`` with a new copy of every callback (one replicate's own)."""
    Callback, _, _ = _callback_classes()
    out = dict(fit_kwargs or {})
    cbs = out.get("callbacks")
    if isinstance(cbs, Callback):
        out["callbacks"] = copy_callback(cbs, 0)
    elif cbs is not None and not isinstance(cbs, (str, bytes)) and hasattr(cbs, "__iter__"):
        out["callbacks"] = [copy_callback(cb, i) if isinstance(cb, Callback) else cb for i, cb in enumerate(cbs)]
    return out


def check_fit_kwargs(fit_kwargs):
    """Refuse, before any training, the callbacks a replicate cannot get its own copy of."""
    fresh_fit_kwargs(fit_kwargs)


def _named(fn):
    qual = getattr(fn, "__qualname__", None)
    mod = getattr(fn, "__module__", None)
    return None if not qual or not mod or "<" in qual else f"{mod}.{qual}"


def describe(v):
    """A value of ``fit_kwargs`` as the fingerprint sees it (module docstring); no memory addresses for
    callbacks and named functions, ``repr()`` (as before) for everything else."""
    Callback, _, _ = _callback_classes()
    if hasattr(v, "shape") and hasattr(v, "dtype"):
        return "array:" + digest_array(v)
    if isinstance(v, Callback):
        cls, config = callback_config(v)
        args = ", ".join(f"{k}={_text(describe(c))}" for k, c in sorted(config.items()))
        return f"callback:{cls.__module__}.{cls.__qualname__}({args})"
    if isinstance(v, (list, tuple)) and any(hasattr(x, "shape") or isinstance(x, Callback) for x in v):
        return [describe(x) for x in v]
    if isinstance(v, (types.FunctionType, types.BuiltinFunctionType)) and _named(v):
        return f"callable:{_named(v)}"
    return repr(v)


def _text(d):
    return d if isinstance(d, str) else "[" + ", ".join(_text(x) for x in d) + "]"


def describe_kwargs(kw):
    return {k: describe(v) for k, v in sorted((kw or {}).items())}
