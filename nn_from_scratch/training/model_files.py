"""A network to a model file and back: ``NeuralNetwork.save`` and ``NeuralNetwork.load``.

The file format (what a model file holds and how it is checked before anything is allocated)
is ``serialization.py``'s; this module maps a network onto it: the architecture record
(``net.get_config()``, the optimizer's class and settings), every parameter and buffer as
``layer{i}/{name}``, the optimizer's state (moments, step count) as ``optimizer/{n}``, the
layers' modes, trainable flags and random states.  ``load_into`` refuses a file of another
architecture by name (``ModelFileError``); ``load_new`` builds the network the file describes,
finding its optimizer class by name (``optimizer_base.optimizer_class``).
"""
import functools
import json
import warnings

import numpy as np

from ..backend import get_array_module, read_scalars, to_device
from ..atomic import write_npz_atomic
from ..layers.base import Neuron
from . import schedules
from .history import TrainingWarning
from .optimizer_base import optimizer_class
from .serialization import FORMAT, FORMAT_VERSION, ModelFileError, build_layer, read_model_file

__all__ = ["hybridmethod", "save", "load_into", "load_new", "optimizer_config", "param_arrays"]


class hybridmethod:
    """Instance method on instances, class method on the class (for ``load``)."""

    def __init__(self, finstance, fclass):
        # fclass may be a classmethod object (not callable itself): keep its function
        self.finstance, self.fclass = finstance, getattr(fclass, "__func__", fclass)
        functools.update_wrapper(self, finstance)

    def __get__(self, obj, cls):
        if obj is None:
            return functools.partial(self.fclass, cls)
        return functools.partial(self.finstance, obj)


def optimizer_config(net):
    """The optimizer's class and settings as JSON-able values (a schedule by its class and config)."""
    cfg = dict(net.optimizer.get_config())
    lr = cfg.get("lr")
    if lr is not None and not isinstance(lr, (int, float)):
        if type(lr).__name__ in schedules._BY_NAME and type(lr) is schedules._BY_NAME[type(lr).__name__]:
            cfg["lr"] = {"schedule": type(lr).__name__, "config": lr.get_config()}
        else:
            now = net.optimizer.learning_rate
            warnings.warn(f"save: the learning-rate schedule {lr!r} is not one of nn_from_scratch.schedules "
                          f"and cannot be recorded; the file holds its current rate {now}", RuntimeWarning,
                          stacklevel=4)
            cfg["lr"] = now
    return {"class": type(net.optimizer).__name__, "config": cfg}


def param_arrays(net):
    """``layer{i}/{name}`` -> array: every parameter and every buffer (non-trainable state such as
    BatchNorm's moving statistics), saved, validated and loaded alike."""
    return {f"layer{i}/{k}": v for i, layer in enumerate(net.layers)
            for k, v in list(layer.params.items()) + list(layer.buffers.items())}


def warn_nonfinite(net, arrays, doing):
    """A ``TrainingWarning`` when parameter arrays ``{name: array}`` hold NaN/Inf."""
    bad = [k for k, v in arrays.items() if k.startswith("layer") and getattr(v, "dtype", None) is not None
           and v.dtype.kind == "f" and not bool(read_scalars(get_array_module(v).isfinite(v).all(), why="check")[0])]
    if bad:
        warnings.warn(f"{net.name}: {doing}: parameters {bad} hold NaN/Inf; the network's outputs will be NaN",
                      TrainingWarning, stacklevel=4)


def save(net, path):
    """Write ``net`` to ``path`` (see ``NeuralNetwork.save``)."""
    config = net.get_config()
    config["format_version"] = FORMAT_VERSION
    iterations, state = net.optimizer.get_state(net.layers)
    keys = sorted(state, key=lambda k: (k[0], str(k[1]), str(k[2])))
    config["optimizer_state"] = {"iterations": int(iterations),
                                 "arrays": [[int(i), str(name), str(slot)] for i, name, slot in keys]}
    arrays = {"__format__": np.array(FORMAT), "__config__": np.array(json.dumps(config))}
    arrays.update(param_arrays(net))
    warn_nonfinite(net, arrays, f"saving {path!r}")
    arrays.update((f"optimizer/{n}", state[k]) for n, k in enumerate(keys))
    write_npz_atomic(path, arrays)
    return path


def _restore_optimizer_state(net, config, opt_arrays, path):
    """The optimizer's state from the file when the file's optimizer is this one's (same class and
    settings); otherwise it starts afresh.  Files of version 1 have none."""
    rec = config.get("optimizer_state")
    if rec is None:
        return
    if config.get("optimizer") != json.loads(json.dumps(optimizer_config(net))):
        return
    try:
        entries = rec["arrays"]
        if len(entries) != len(opt_arrays) or not isinstance(rec["iterations"], int) or rec["iterations"] < 0:
            raise ValueError("its record and its arrays disagree")
        state = {}
        for n, (i, name, slot) in enumerate(entries):
            arr = opt_arrays[f"optimizer/{n}"]
            if arr.dtype.kind != "f" or not np.all(np.isfinite(arr)):
                raise ValueError(f"state {slot!r} of layer {i} parameter {name!r} is not finite floats")
            state[(int(i), name, slot)] = arr
        net.optimizer.set_state(net.layers, rec["iterations"], state)
    except (KeyError, TypeError, ValueError) as exc:
        net.optimizer.reset()
        raise ModelFileError(f"{path!r}: the optimizer's saved state is damaged ({exc})") from None


def _check_architecture(net, config, arrays, path):
    """``ModelFileError`` unless the file holds ``net``'s architecture: layer classes, parameter
    names and shapes, and every layer's settings (stride, padding, use_bias, ...)."""
    mine = param_arrays(net)
    theirs = [c["class"] for c in config.get("layers", [])]
    ours = [type(layer).__name__ for layer in net.layers]
    if theirs != ours:
        raise ModelFileError(f"{path!r} holds a model of another architecture: its layers are {theirs}, "
                             f"this network's are {ours}")
    if set(arrays) != set(mine):
        raise ModelFileError(f"{path!r} holds parameters {sorted(arrays)}, this network has {sorted(mine)}")
    for key, cur in mine.items():
        if tuple(arrays[key].shape) != tuple(cur.shape):
            raise ModelFileError(f"{path!r}: parameter {key} has shape {tuple(arrays[key].shape)} in the file "
                                 f"but {tuple(cur.shape)} in this network (another architecture)")
    for i, (entry, layer) in enumerate(zip(config["layers"], net.layers)):
        skip = ("name", "dtype", "shape", "input_shape")
        theirs_cfg = {k: v for k, v in entry.get("config", {}).items() if k not in skip}
        ours_cfg = {k: v for k, v in json.loads(json.dumps(layer.get_config())).items() if k not in skip}
        if theirs_cfg != ours_cfg:
            keys = sorted(k for k in set(theirs_cfg) | set(ours_cfg) if theirs_cfg.get(k) != ours_cfg.get(k))
            raise ModelFileError(
                f"{path!r} holds a model of another architecture: layer {i} ({layer._describe()}) has "
                + ", ".join(f"{k}={theirs_cfg.get(k)!r}" for k in keys) + " in the file but "
                + ", ".join(f"{k}={ours_cfg.get(k)!r}" for k in keys) + " in this network")


def load_into(net, path):
    """Load the weights (and the optimizer's state, modes, flags) of ``path`` into ``net``."""
    config, arrays = read_model_file(path)
    version = config.get("format_version", 1)
    if not isinstance(version, int) or version > FORMAT_VERSION:
        raise ModelFileError(f"{path!r} is a model file of format_version {version!r}; this version of "
                             f"nn_from_scratch reads versions 1 to {FORMAT_VERSION}")
    opt_arrays = {k: arrays.pop(k) for k in list(arrays) if k.startswith("optimizer/")}
    _check_architecture(net, config, arrays, path)
    warn_nonfinite(net, arrays, f"loading {path!r}")
    for i, layer in enumerate(net.layers):
        for k in list(layer.params):
            a = arrays[f"layer{i}/{k}"]
            layer.dtype = np.dtype(a.dtype)
            layer.params[k] = to_device(a, like=layer.params[k])
        for k in list(layer.buffers):
            layer.buffers[k] = to_device(arrays[f"layer{i}/{k}"], like=layer.buffers[k])
    _restore_modes(net, config, path)
    frozen = config.get("trainable")
    if frozen is not None:          # files written before trainable flags were saved: layers stay as they are
        if not isinstance(frozen, list) or len(frozen) != len(net.layers) or \
                not all(isinstance(f, bool) for f in frozen):
            raise ModelFileError(f"{path!r}: the saved trainable flags are damaged: expected "
                                 f"{len(net.layers)} booleans, received {frozen!r}")
        for layer, flag in zip(net.layers, frozen):
            if isinstance(layer, Neuron):
                layer.trainable = flag
    net.optimizer.reset()
    _restore_optimizer_state(net, config, opt_arrays, path)
    return net


def _restore_modes(net, config, path):
    """The training/inference modes saved in ``config`` (files written before modes were saved have
    none: the modes stay as they are), and the random layers' states."""
    modes = config.get("layer_training")
    if modes is None:
        return
    if not isinstance(modes, list) or len(modes) != len(net.layers) or \
            not all(isinstance(m, bool) for m in modes) or not isinstance(config.get("training", True), bool):
        raise ModelFileError(f"{path!r}: the saved training modes are damaged: expected {len(net.layers)} "
                             f"booleans, received {modes!r}")
    for layer, mode in zip(net.layers, modes):
        layer.training = mode
    net._training = config.get("training", all(modes))
    states = config.get("layer_random_state")
    if states is None:
        return
    if not isinstance(states, list) or len(states) != len(net.layers):
        raise ModelFileError(f"{path!r}: the saved random states are damaged: expected {len(net.layers)} "
                             f"entries, received {states!r}")
    for i, (layer, state) in enumerate(zip(net.layers, states)):
        if state is None or not hasattr(layer, "set_random_state"):
            continue
        try:
            layer.set_random_state(state)
        except (TypeError, ValueError) as exc:
            raise ModelFileError(f"{path!r}: layer {i}: {exc}") from None


def load_new(cls, path):
    """A new network of class ``cls`` built from the architecture record of ``path``, then loaded."""
    config, _ = read_model_file(path)
    try:
        layers = [build_layer(entry) for entry in config["layers"]]
        loss = build_layer(config["loss"])
        ocfg = dict(config["optimizer"]["config"])
        if isinstance(ocfg.get("lr"), dict):
            try:
                ocfg["lr"] = schedules.get({"class": ocfg["lr"]["schedule"], "config": ocfg["lr"]["config"]})
            except ValueError as exc:
                raise ModelFileError(f"{path!r}: {exc}") from None
        opt = optimizer_class(config["optimizer"]["class"])(**ocfg)
        net = cls(layers, loss_fn=loss, optimizer=opt, batch_size=config.get("batch_size", 32),
                  input_shape=config.get("input_shape"), name=config.get("name", "network"),
                  metrics=config.get("metrics"))
    except ModelFileError:
        raise
    except (KeyError, TypeError, ValueError, AttributeError) as exc:   # ValueError: ShapeError too
        raise ModelFileError(f"{path!r}: the architecture record is damaged ({type(exc).__name__}: {exc})") from None
    return net._load_into(path)
