"""A network's layers rebuilt in a clean process from text and arrays only (no pickle).

A worker started from a clean state (``server.py``) does not inherit this process's objects: it
builds its own copy of the layers and the loss from a *recipe*, the JSON the model files already
use (``layers.registry.layer_config``: class name and constructor arguments) plus the plain public
settings that differ from a freshly built layer's (``trainable = False``, a changed ``rate``).
Parameters are not in the recipe: they reach the worker through the shared-memory mirror at
every step, as they reach forked workers.

A network can be rebuilt this way only when every layer and the loss is a class of this package
(a clean process imports the package, not the user's ``__main__`` or notebook) and the copy built
in this process from the recipe agrees with the original on every public attribute
(``identity.config_key``).  Otherwise ``recipe`` returns None and the split uses threads or runs
whole (``batch_split.make_step``).
"""
import json
import numbers

from ...layers.registry import _REGISTRY, build_layer, layer_config
from . import identity

__all__ = ["recipe", "build"]

SCALARS = (bool, str, type(None))


def _scalar(value):
    """A public setting the recipe may carry: a bool, str, None or finite-or-not Python number."""
    return isinstance(value, SCALARS) or (isinstance(value, numbers.Real) and type(value) in (int, float))


def _entry(node):
    """The recipe entry of one layer or loss, or None when it cannot be rebuilt elsewhere."""
    cls = type(node)
    if _REGISTRY.get(cls.__name__) is not cls or not cls.__module__.startswith("nn_from_scratch.") \
            or getattr(cls, "_user_layer", False):
        return None
    try:
        entry = layer_config(node)
        entry = json.loads(json.dumps(entry))           # as the worker will read it
        copy = build_layer(entry)
    except Exception:                                   # noqa: BLE001 - not rebuildable: no split by processes
        return None
    mine, fresh = vars(node), vars(copy)
    attrs = {}
    for name, value in mine.items():
        if name[0] == "_" or name == "training":
            continue
        if name not in fresh or identity.plain(fresh[name]) != identity.plain(value):
            if not _scalar(value):
                return None
            attrs[name] = value
    entry["attrs"] = attrs
    for name, value in attrs.items():
        setattr(copy, name, value)
    if identity.config_key(copy)[1:] != identity.config_key(node)[1:]:
        return None
    return entry


def recipe(net):
    """``{"layers": [entry, ...], "loss": entry}`` (JSON-able) from which ``build`` makes a copy of
    ``net``'s layers and loss in another process, or None when they cannot be rebuilt there."""
    entries = [_entry(node) for node in list(net.layers) + [net.loss_fn]]
    if any(e is None for e in entries):
        return None
    return {"layers": entries[:-1], "loss": entries[-1]}


def build(spec):
    """``(layers, loss)`` from a ``recipe``: fresh objects whose parameters the caller replaces."""
    def one(entry):
        node = build_layer({"class": entry["class"], "config": entry["config"]})
        for name, value in entry.get("attrs", {}).items():
            setattr(node, name, value)
        return node
    return [one(e) for e in spec["layers"]], one(spec["loss"])
