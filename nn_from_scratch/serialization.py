"""Saving and loading models as ``.npz`` files, read with ``allow_pickle=False``.

A model file holds, as plain arrays:

* ``__format__``: the format name and version (``"nn_from_scratch-model/1"``);
* ``__config__``: the architecture as JSON text (layer classes and their
  constructor arguments, the loss, the optimizer's settings);
* ``layer{i}/{param}``: every parameter, in its own dtype (bitwise round trip);
* ``optimizer/{k}``: the optimizer's state arrays (moments, accumulators), listed in the
  config's ``optimizer_state`` as ``[layer index, parameter, slot]`` with the step count
  (which is also a schedule's position), so that ``load`` then ``fit`` goes on exactly as an
  uninterrupted ``fit`` would.

The config records ``format_version`` (``FORMAT_VERSION``): 2 since issue 24 (optimizer state,
trainable flags, metrics, regularizers, schedules); files without it are version 1 and still
load (their optimizer starts afresh).  A file of a newer version is refused by name.

Writes are atomic: the file is written to a temporary name in the target's
directory, flushed to disk and then renamed over the target, so a crash
mid-save never leaves a half-written file at the target path.
"""
import json
import os
import tempfile
import zipfile

import numpy as np

from .backend import to_numpy

__all__ = ["ModelFileError", "FORMAT", "FORMAT_VERSION", "write_npz_atomic", "read_model_file", "layer_config",
           "build_layer", "register_layer"]

FORMAT = "nn_from_scratch-model/1"
#: the layout version inside that format (recorded as ``config["format_version"]``; absent = 1)
FORMAT_VERSION = 2

_REGISTRY = {}


class ModelFileError(ValueError):
    """A model file is missing, truncated, corrupt, or for another architecture."""


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
        raise ModelFileError(f"the model file names an unknown layer class {entry.get('class')!r}") from None
    return cls.from_config(entry["config"])


def write_npz_atomic(path, arrays):
    """Write ``arrays`` (name -> array) to ``path`` as .npz, atomically."""
    path = os.fspath(path)
    directory = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", suffix=".npz", dir=directory)
    try:
        with os.fdopen(fd, "wb") as f:
            np.savez(f, **{k: to_numpy(v) for k, v in arrays.items()})
            f.flush()
            os.fsync(f.fileno())
        umask = os.umask(0)   # mkstemp makes the file private (0600); give it the usual mode
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def read_model_file(path):
    """(config dict, {name: numpy array}) from a model file, or ModelFileError."""
    path = os.fspath(path)
    if not os.path.exists(path):
        raise ModelFileError(f"no model file at {os.path.abspath(path)!r}")
    try:
        with np.load(path, allow_pickle=False) as data:
            arrays = {k: data[k] for k in data.files}
    except (zipfile.BadZipFile, EOFError, OSError, ValueError, KeyError) as exc:
        raise ModelFileError(
            f"{path!r} is not a readable model file (truncated or corrupt?): {type(exc).__name__}: {exc}"
        ) from None
    fmt = arrays.pop("__format__", None)
    if fmt is None or str(fmt) != FORMAT:
        raise ModelFileError(
            f"{path!r} is not an nn_from_scratch model file (format {None if fmt is None else str(fmt)!r}, "
            f"expected {FORMAT!r})"
        )
    try:
        config = json.loads(str(arrays.pop("__config__")))
    except (KeyError, ValueError) as exc:
        raise ModelFileError(f"{path!r}: the architecture record is missing or damaged ({exc})") from None
    return config, arrays
