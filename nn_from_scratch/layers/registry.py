"""The layer classes by name, so that a saved model's configuration can be rebuilt.

Every ``Node`` subclass registers itself when it is defined (``Node.__init_subclass__``);
``build_layer`` turns a ``layer_config`` record back into a layer.
"""

__all__ = ["register_layer", "layer_config", "build_layer", "UnknownLayerError"]


class UnknownLayerError(ValueError):
    """A configuration names a layer class that is not defined (``serialization.ModelFileError`` is one)."""


_REGISTRY = {}


def register_layer(cls):
    """Make a layer class rebuildable from a saved configuration."""
    _REGISTRY[cls.__name__] = cls
    return cls


def layer_config(layer):
    """``{"class": ..., "config": {...}}`` for a layer (its ``get_config``)."""
    return {"class": type(layer).__name__, "config": layer.get_config()}


def build_layer(entry):
    """Rebuild a layer from ``layer_config`` output."""
    try:
        cls = _REGISTRY[entry["class"]]
    except KeyError:
        raise UnknownLayerError(f"the model file names an unknown layer class {entry.get('class')!r}") from None
    return cls.from_config(entry["config"])
