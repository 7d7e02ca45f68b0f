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

The config records ``format_version`` (``FORMAT_VERSION``): 2 adds the optimizer state,
trainable flags, metrics, regularizers and schedules; files without it are version 1 and still
load (their optimizer starts afresh).  A file of a newer version is refused by name.

Writes are atomic (``atomic.write_npz_atomic``: a temporary file in the target's directory,
flushed to disk, renamed over the target; leftovers of killed saves removed; permissions kept;
symbolic links written through).

Reading validates before it allocates (a 4 KB file declaring ``Linear(20000, 20000)`` must not
cost 7.7 GB before any check).  ``read_model_file`` reads only the zip directory and each
array's ``.npy`` header (``numpy.lib.format``; nothing is decompressed) and checks, raising
``ModelFileError`` naming the file:

* every member is an ``.npy`` array whose declared shape and dtype give exactly the member's
  size, lies inside the file and is stored (or deflated by at most ``MAX_COMPRESSION_RATIO``);
* no object arrays; ``__format__`` and ``__config__`` are text of at most ``MAX_CONFIG_BYTES``;
* the architecture record is a JSON object with a list of layers, each a known class;
* every parameter array ``layer{i}/{name}`` is float16, float32 or float64, and for a layer
  class that can say which parameters a configuration has (``param_shapes(config)``, a class
  method: ``Linear`` and ``Convolution`` here) the file holds exactly those, of those shapes;
* any other array is real numbers (float, integer or bool);
* (format_version 2) each optimizer state array ``optimizer/{n}`` is listed in the record and
  declares exactly the shape and dtype of the parameter it belongs to.

Only then are layers built (``NeuralNetwork.load``) and arrays read.
"""
import json
import os
import zipfile

import numpy as np

from ..atomic import _host, check_path as _check_path, write_npz_atomic  # noqa: F401 - re-exported
from ..layers.registry import _REGISTRY, UnknownLayerError, layer_config, register_layer  # noqa: F401 - re-exported
from ..layers.registry import build_layer as _build_layer

__all__ = ["ModelFileError", "FORMAT", "FORMAT_VERSION", "write_npz_atomic", "read_model_file", "layer_config",
           "build_layer", "register_layer", "inspect_npz", "MAX_COMPRESSION_RATIO", "MAX_CONFIG_BYTES",
           "WEIGHT_DTYPES"]

FORMAT = "nn_from_scratch-model/1"
#: the layout version inside that format (recorded as ``config["format_version"]``; absent = 1)
FORMAT_VERSION = 2
#: a deflated member may not declare more than this many times its compressed size (trained
#: weights deflate by ~1.1x; a zip bomb by ~1000x); stored members must match exactly
MAX_COMPRESSION_RATIO = 20
#: the largest architecture record (and format tag) read
MAX_CONFIG_BYTES = 16 << 20
#: the dtypes a layer's parameters may have in a model file
WEIGHT_DTYPES = (np.dtype(np.float16), np.dtype(np.float32), np.dtype(np.float64))
_MAX_MEMBERS = 100_000

class ModelFileError(ValueError):
    """A model file is missing, truncated, corrupt, or for another architecture."""


def build_layer(entry):
    """Rebuild a layer from its ``layer_config`` record; an unknown class is a ``ModelFileError``."""
    try:
        return _build_layer(entry)
    except UnknownLayerError as exc:
        raise ModelFileError(str(exc)) from None


def _bad(path, what):
    return ModelFileError(f"{path!r} is not a readable model file (truncated or corrupt?): {what}")


def inspect_npz(path, kind="model file"):
    """``{name: (shape, dtype)}`` of every array of the ``.npz`` file ``path``, from the zip
    directory and the ``.npy`` headers only (nothing decompressed, nothing allocated), after
    checking that each declared array is exactly what its member holds (see the module
    docstring); ``ModelFileError`` otherwise, its message calling the file a ``kind``.
    Every ``.npz`` reader of the package (models, analysis results) checks its files with it."""
    try:
        return _inspect_npz(path)
    except ModelFileError as exc:
        if kind == "model file":
            raise
        msg = str(exc).replace("is not a readable model file", f"is not a readable {kind}", 1)
        raise ModelFileError(msg.replace("model files hold numbers only", f"a {kind} holds none")) from None


def _inspect_npz(path):
    from numpy.lib import format as npy
    size = os.path.getsize(path)
    try:
        zf = zipfile.ZipFile(path)
    except (zipfile.BadZipFile, OSError, EOFError, ValueError) as exc:
        raise _bad(path, f"not a zip/.npz archive (truncated or corrupt?): {type(exc).__name__}: {exc}") from None
    specs = {}
    with zf:
        infos = zf.infolist()
        if len(infos) > _MAX_MEMBERS:
            raise _bad(path, f"{len(infos)} members (at most {_MAX_MEMBERS})")
        for info in infos:
            name = info.filename
            if not name.endswith(".npy"):
                raise _bad(path, f"member {name!r} is not an .npy array")
            key = name[:-4]
            if key in specs:
                raise _bad(path, f"member {name!r} appears twice")
            if info.header_offset + info.compress_size > size:
                raise _bad(path, f"member {name!r} claims {info.compress_size} bytes beyond the file's "
                                 f"{size} (truncated?)")
            if info.compress_type == zipfile.ZIP_STORED:
                if info.compress_size != info.file_size:
                    raise _bad(path, f"stored member {name!r} has sizes {info.compress_size} and {info.file_size}")
            elif info.compress_type == zipfile.ZIP_DEFLATED:
                if info.file_size > MAX_COMPRESSION_RATIO * info.compress_size + 4096:
                    raise _bad(path, f"member {name!r} would inflate {info.compress_size} bytes to "
                                     f"{info.file_size} (more than serialization.MAX_COMPRESSION_RATIO = "
                                     f"{MAX_COMPRESSION_RATIO} times; a zip bomb?)")
            else:
                raise _bad(path, f"member {name!r} uses zip compression method {info.compress_type}")
            try:
                with zf.open(info) as f:
                    version = npy.read_magic(f)
                    if version == (1, 0):
                        shape, fortran, dtype = npy.read_array_header_1_0(f)
                    elif version in ((2, 0), (3, 0)):
                        shape, fortran, dtype = npy.read_array_header_2_0(f)
                    else:
                        raise ValueError(f".npy format version {version}")
                    header_end = f.tell()
            except (ValueError, OSError, EOFError, zipfile.BadZipFile, SyntaxError, TypeError) as exc:
                raise _bad(path, f"member {name!r} has no valid .npy header ({type(exc).__name__}: {exc})") from None
            if dtype.hasobject:
                raise _bad(path, f"array {key!r} holds Python objects ({dtype}); model files hold numbers only")
            if any(int(d) < 0 for d in shape):
                raise _bad(path, f"array {key!r} declares shape {shape}")
            nbytes = int(np.prod(shape, dtype=object)) * dtype.itemsize
            if header_end + nbytes != info.file_size:
                raise _bad(path, f"array {key!r} declares {dtype}{tuple(shape)} ({nbytes} bytes) but its member "
                                 f"holds {info.file_size - header_end} bytes of data")
            specs[key] = (tuple(int(d) for d in shape), dtype)
    return specs


def _check_text(path, specs, key):
    shape, dtype = specs[key]
    if dtype.kind not in "US" or shape != () or dtype.itemsize > MAX_CONFIG_BYTES:
        raise _bad(path, f"{key} must be one text value of at most {MAX_CONFIG_BYTES} bytes, "
                         f"declared {dtype}{shape}")


def _check_schema(path, config, specs):
    """The architecture record against the arrays the file declares (before anything is built)."""
    if not isinstance(config, dict) or not isinstance(config.get("layers"), list):
        raise ModelFileError(f"{path!r}: the architecture record is damaged (no list of layers)")
    for i, entry in enumerate(config["layers"]):
        if not isinstance(entry, dict) or not isinstance(entry.get("config"), dict):
            raise ModelFileError(f"{path!r}: the architecture record is damaged (layer {i} is {entry!r:.80})")
        cls = _REGISTRY.get(entry.get("class"))
        if cls is None:
            raise ModelFileError(f"{path!r} names an unknown layer class {entry.get('class')!r} (layer {i})")
        declared = {k.split("/", 1)[1]: v for k, v in specs.items() if k.startswith(f"layer{i}/")}
        for name, (shape, dtype) in declared.items():
            if dtype not in WEIGHT_DTYPES:
                raise ModelFileError(f"{path!r}: parameter layer{i}/{name} ({entry['class']}) has dtype {dtype}; "
                                     "model files hold float16, float32 or float64 weights only")
        if "param_shapes" not in vars(cls):     # a subclass may add parameters: its own say only
            continue
        shapes_of = cls.param_shapes
        try:
            expected = shapes_of(entry["config"])
        except (KeyError, TypeError, ValueError, IndexError) as exc:
            raise ModelFileError(f"{path!r}: the architecture record of layer {i} ({entry['class']}) is damaged "
                                 f"({type(exc).__name__}: {exc})") from None
        got = {name: shape for name, (shape, _) in declared.items()}
        if got != expected:
            raise ModelFileError(f"{path!r}: layer {i} ({entry['class']}) is described with parameters "
                                 f"{expected} but the file holds {got}")
    _check_optimizer_state(path, config, specs)
    known = {f"layer{i}/" for i in range(len(config["layers"]))}
    for key, (shape, dtype) in specs.items():
        if key in ("__format__", "__config__") or key.startswith("optimizer/"):
            continue
        if key.startswith("layer") and "/" in key:
            if key.split("/", 1)[0] + "/" not in known:
                raise ModelFileError(f"{path!r}: array {key!r} belongs to no layer of the architecture record")
            continue
        if dtype.kind not in "fiub":
            raise ModelFileError(f"{path!r}: array {key!r} has dtype {dtype}; model files hold real numbers only")


def _check_optimizer_state(path, config, specs):
    """The optimizer's state arrays (format_version 2) from their headers: each
    ``optimizer/{n}`` is listed in ``config["optimizer_state"]["arrays"]`` as ``[layer index,
    parameter, slot]`` and declares exactly that parameter's shape and dtype."""
    held = sorted(k for k in specs if k.startswith("optimizer/"))
    rec = config.get("optimizer_state")
    if rec is None:
        if held:
            raise ModelFileError(f"{path!r}: arrays {held[:3]} hold optimizer state but the record lists none")
        return
    entries = rec.get("arrays") if isinstance(rec, dict) else None
    if not isinstance(entries, list) or not isinstance(rec.get("iterations"), int) or rec["iterations"] < 0:
        raise ModelFileError(f"{path!r}: the optimizer's saved state is damaged (record {rec!r:.120})")
    if held != sorted(f"optimizer/{n}" for n in range(len(entries))):
        raise ModelFileError(f"{path!r}: the optimizer's saved state is damaged (its record and its arrays "
                             f"disagree: {len(entries)} listed, {len(held)} held)")
    for n, entry in enumerate(entries):
        ok = isinstance(entry, list) and len(entry) == 3 and isinstance(entry[0], int) \
            and all(isinstance(e, str) for e in entry[1:])
        param = f"layer{entry[0]}/{entry[1]}" if ok else None
        if not ok or param not in specs:
            raise ModelFileError(f"{path!r}: the optimizer's saved state is damaged (entry {n} is {entry!r:.80}, "
                                 "which names no parameter of the file)")
        if specs[f"optimizer/{n}"] != specs[param]:
            (s1, d1), (s2, d2) = specs[f"optimizer/{n}"], specs[param]
            raise ModelFileError(f"{path!r}: the optimizer's saved state is damaged (state {entry[2]!r} for "
                                 f"{param} is declared {d1}{s1} but the parameter is {d2}{s2})")


def read_model_file(path):
    """(config dict, {name: numpy array}) from a model file, or ModelFileError naming it.

    Everything the file declares is validated first (module docstring); the arrays are read last."""
    _check_path("load", path)
    path = os.fsdecode(os.fspath(path))
    if not os.path.exists(path):
        raise ModelFileError(f"no model file at {os.path.abspath(path)!r}")
    if os.path.isdir(path):
        raise ModelFileError(f"{path!r} is a directory, not a model file")
    try:
        specs = inspect_npz(path)
    except OSError as exc:
        raise ModelFileError(f"{path!r} cannot be read: {exc}") from None
    for key in ("__format__", "__config__"):
        if key in specs:
            _check_text(path, specs, key)
    try:
        with np.load(path, allow_pickle=False) as data:
            fmt = data["__format__"] if "__format__" in specs else None
            if fmt is None or str(fmt) != FORMAT:
                raise ModelFileError(
                    f"{path!r} is not an nn_from_scratch model file (format {None if fmt is None else str(fmt)!r}, "
                    f"expected {FORMAT!r})")
            try:
                config = json.loads(str(data["__config__"]))
            except (KeyError, ValueError) as exc:
                raise ModelFileError(f"{path!r}: the architecture record is missing or damaged ({exc})") from None
            _check_schema(path, config, specs)
            arrays = {k: data[k] for k in specs if k not in ("__format__", "__config__")}
    except ModelFileError:
        raise
    except (zipfile.BadZipFile, EOFError, OSError, ValueError, KeyError) as exc:
        raise ModelFileError(
            f"{path!r} is not a readable model file (truncated or corrupt?): {type(exc).__name__}: {exc}"
        ) from None
    return config, arrays
