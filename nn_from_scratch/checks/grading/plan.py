"""What is graded and how: the reference, the grading config, and the numbers the reference gives.

``--reference SPEC`` is trusted code run in the grader's process: a built-in layer expression
(``"LeakyReLU(alpha=0.1)"``, ``"Convolution(in_channels=3, kernel_size=3, output_layers=4, ndim=2)"``;
literal arguments only, parsed, never evaluated) or an instructor's ``solution.py:CLASS``.  The students' layers are
built with the same arguments (the expression's, or ``--args``/``--kwargs``).

The grading config (TOML, docs/grading.md "Config file") sets the secret seed, limits, points,
tolerances and the cases, some of them hidden.  The inputs, upstream gradients, starting weights
and training batches of every case are drawn in the grader from the secret seed and are the same
for every student; the reference's answers to them (and Keras's, through the reference's Keras
twin) are computed once, before any submission runs.
"""
import ast
import copy
import os
import secrets

import numpy as np

from ..loading import GradeError, load_class

__all__ = ["CHECKS", "DEFAULT_POINTS", "DEFAULT_TOLERANCES", "Reference", "parse_reference", "load_config",
           "Case", "build_cases"]

#: the named checks, in the order they run (config keys: spaces -> underscores)
CHECKS = ("output", "input gradient", "parameter gradients", "gradient check", "sgd steps", "keras")
DEFAULT_POINTS = {"output": 2.0, "input gradient": 2.0, "parameter gradients": 2.0, "gradient check": 2.0,
                  "sgd steps": 1.0, "keras": 1.0}
#: relative errors (scale-aware, as the cross-check's) in float64; the gradient check's is its own measure
DEFAULT_TOLERANCES = {"output": 1e-7, "input gradient": 1e-7, "parameter gradients": 1e-7,
                      "gradient check": 1e-6, "sgd steps": 1e-7, "keras": 1e-6}
_SETTINGS = {"seed": int, "timeout": float, "memory_mb": int, "batch": int, "coords": int, "sgd_steps": int,
             "sgd_lr": float, "output_cap": int}


class Reference:
    """The trusted layer: ``cls``, ``args``, ``kwargs``; ``build()`` a float64 instance; ``spec`` as given."""

    def __init__(self, spec, cls, args, kwargs):
        self.spec, self.cls, self.args, self.kwargs = spec, cls, list(args), dict(kwargs)
        self.path = None

    def build(self):
        layer = self.cls(*self.args, **self.kwargs)
        if getattr(layer, "params", None) and hasattr(layer, "astype"):
            layer.astype(np.float64)
        return layer


def parse_reference(spec, args=None, kwargs=None):
    """A ``Reference`` from ``--reference SPEC`` (``--args``/``--kwargs`` override an expression's)."""
    from ...layers.base import Node
    text = spec.strip()
    if "(" not in text and ":" in text:
        cls = load_class(text)
        ref = Reference(spec, cls, args or [], kwargs or {})
        ref.path = os.path.abspath(text.rpartition(":")[0]) if text.rpartition(":")[0].endswith(".py") else None
    else:
        try:
            node = ast.parse(text if "(" in text else text + "()", mode="eval").body
        except SyntaxError as exc:
            raise GradeError(f"--reference must be a layer expression such as 'LeakyReLU(alpha=0.1)' or "
                             f"solution.py:CLASS, received {spec!r} ({exc.msg})") from None
        if not (isinstance(node, ast.Call) and isinstance(node.func, ast.Name)):
            raise GradeError(f"--reference: expected NAME(literal arguments), received {spec!r}")
        from ... import layers as builtin
        cls = getattr(builtin, node.func.id, None)
        if not (isinstance(cls, type) and issubclass(cls, Node)):
            raise GradeError(f"--reference: {node.func.id!r} is not a built-in layer of nn_from_scratch.layers")
        try:
            e_args = [ast.literal_eval(a) for a in node.args]
            e_kwargs = {k.arg: ast.literal_eval(k.value) for k in node.keywords}
        except ValueError:
            raise GradeError(f"--reference: arguments must be literals (numbers, strings, tuples, lists), "
                             f"received {spec!r}") from None
        ref = Reference(spec, cls, args if args else e_args, kwargs if kwargs else e_kwargs)
    from ...layers.losses import Loss
    if not (isinstance(ref.cls, type) and issubclass(ref.cls, Node)) or issubclass(ref.cls, Loss):
        raise GradeError(f"--reference {spec!r} is not a layer class (a subclass of nn_from_scratch Node; losses "
                         f"are graded one at a time with grade --layer)")
    try:
        ref.build()
    except Exception as exc:  # noqa: BLE001 - say it and stop: nothing can be graded against it
        raise GradeError(f"the reference {spec!r} cannot be built with args {ref.args} kwargs {ref.kwargs}: "
                         f"{type(exc).__name__}: {exc}") from None
    return ref


def _toml():
    try:
        import tomllib
    except ModuleNotFoundError:     # Python 3.10
        try:
            import tomli as tomllib
        except ModuleNotFoundError:
            raise GradeError("reading a grading config on Python 3.10 needs the package tomli "
                             "(pip install tomli)") from None
    return tomllib


def load_config(path):
    """The grading config at ``path`` (TOML) as a dict with keys settings, points, tolerances, cases."""
    if path is None:
        return {"settings": {}, "points": dict(DEFAULT_POINTS), "tolerances": dict(DEFAULT_TOLERANCES),
                "cases": [], "hidden": set()}
    tomllib = _toml()
    try:
        with open(path, "rb") as f:
            raw = tomllib.load(f)
    except OSError as exc:
        raise GradeError(f"cannot read the grading config {path}: {exc}") from None
    except tomllib.TOMLDecodeError as exc:
        raise GradeError(f"the grading config {path} is not valid TOML: {exc}") from None
    out = {"settings": {}, "points": dict(DEFAULT_POINTS), "tolerances": dict(DEFAULT_TOLERANCES), "cases": [],
           "hidden": set()}
    for key, value in raw.items():
        if key in _SETTINGS:
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise GradeError(f"config {path}: {key} must be a number, received {value!r}")
            out["settings"][key] = _SETTINGS[key](value)
        elif key in ("points", "tolerances"):
            if not isinstance(value, dict):
                raise GradeError(f"config {path}: [{key}] must be a table")
            for name, v in value.items():
                check = name.replace("_", " ")
                if check not in CHECKS:
                    raise GradeError(f"config {path}: [{key}] names an unknown check {name!r}; the checks: "
                                     f"{[c.replace(' ', '_') for c in CHECKS]}")
                if isinstance(v, bool) or not isinstance(v, (int, float)) or v < 0 or (key == "tolerances" and
                                                                                     not v > 0):
                    raise GradeError(f"config {path}: {key}.{name} must be a number >= 0 (> 0 for a tolerance), "
                                     f"received {v!r}")
                out[key][check] = float(v)
        elif key == "hidden":
            names = [str(v).replace("_", " ") for v in value] if isinstance(value, list) else None
            if names is None or any(n not in CHECKS for n in names):
                raise GradeError(f"config {path}: hidden must be a list of check names out of "
                                 f"{[c.replace(' ', '_') for c in CHECKS]}, received {value!r}")
            out["hidden"] = set(names)
        elif key == "cases":
            if not isinstance(value, list):
                raise GradeError(f"config {path}: cases must be an array of tables ([[cases]])")
            for i, case in enumerate(value):
                unknown = set(case) - {"shape", "hidden", "batch", "name"}
                if unknown or "shape" not in case:
                    raise GradeError(f"config {path}: case {i + 1} needs shape = [...] and may have hidden, "
                                     f"batch, name; received keys {sorted(case)}")
                shape = case["shape"]
                if not (isinstance(shape, list) and shape and all(isinstance(s, int) and s >= 1 for s in shape)):
                    raise GradeError(f"config {path}: case {i + 1} shape must be a list of positive integers, "
                                     f"received {shape!r}")
                out["cases"].append({"shape": tuple(shape), "hidden": bool(case.get("hidden", False)),
                                     "batch": case.get("batch"), "name": case.get("name")})
        else:
            raise GradeError(f"config {path}: unknown key {key!r}; known: {sorted(_SETTINGS)}, hidden, [points], "
                             f"[tolerances], [[cases]]")
    return out


class Case:
    """One graded case: the data every submission gets and the reference's answers."""

    def __init__(self, label, hidden, x, upstream, params, hidden_checks=()):
        self.label, self.hidden, self.x, self.upstream, self.params = label, hidden, x, upstream, params
        self.hidden_checks = set(hidden_checks)   # checks hidden in this case (the config's ``hidden``)
        self.ref = {}           # y, dx, g:NAME
        self.sgd = None         # (xs, targets, lr, final params) for a layer with parameters
        self.keras = None       # y, dx, g:NAME of the reference's Keras twin, or None
        self.coords = {}        # array name -> flat indices checked by finite differences


def _ref_eval(layer, case):
    from ...backend import to_numpy
    for k, v in case.params.items():
        layer.params[k][...] = v
    y = np.asarray(to_numpy(layer.forward(case.x.copy())), dtype=np.float64)
    dx = np.asarray(to_numpy(layer.backward(case.upstream.copy())), dtype=np.float64)
    grads = {f"g:{k}": np.asarray(to_numpy(v), dtype=np.float64) for k, v in (layer.grads or {}).items()}
    return {"y": y, "dx": dx, **grads}


def _ref_sgd(layer, case, xs, targets, lr):
    from ...backend import to_numpy
    for k, v in case.params.items():
        layer.params[k][...] = v
    for x, t in zip(xs, targets):
        y = np.asarray(to_numpy(layer.forward(x.copy())), dtype=np.float64)
        dy = (2.0 / y.size) * (y.reshape(t.shape) - t)
        layer.backward(dy.reshape(y.shape))
        for name, p in layer.params.items():
            p -= lr * np.asarray(to_numpy(layer.grads[name]), dtype=np.float64)
    return {f"p:{k}": np.array(to_numpy(v), dtype=np.float64) for k, v in layer.params.items()}


def _keras_numbers(ref_layer, case, shape):
    """The reference's Keras twin (float64) on the case's data: y, dx and the parameter gradients."""
    import tensorflow as tf

    from ..crosscheck.convert import build_twin
    from ..crosscheck.layout import from_keras_layout, to_keras_layout
    layer = copy.deepcopy(ref_layer)
    for k, v in case.params.items():
        layer.params[k][...] = v
    twin = build_twin([layer], tuple(shape), dtype="float64")
    g = twin.groups[0]
    xin = tf.constant(to_keras_layout(case.x), dtype="float64")
    with tf.GradientTape() as tape:
        tape.watch(xin)
        out = g(xin)
    pms = [pm for pm in g.params if pm.keras_var is not None]
    up = tf.constant(to_keras_layout(case.upstream), dtype=out.dtype)
    grads = tape.gradient(out, [xin] + [pm.keras_var for pm in pms], output_gradients=up,
                          unconnected_gradients=tf.UnconnectedGradients.ZERO)
    res = {"y": from_keras_layout(out.numpy()), "dx": from_keras_layout(grads[0].numpy()), "params": {}}
    for pm, gr in zip(pms, grads[1:]):
        res["params"][pm.label] = (pm, pm.to_ours(gr.numpy()))
    return res


def build_cases(ref, cfg, input_shapes, batch, seed, coords, sgd_steps, sgd_lr, keras):
    """The cases (``Case`` list) with the reference's answers; ``seed`` None: a fresh secret one.

    Returns ``(cases, seed, keras_note)``; ``keras_note`` says why the Keras check is left out (or None).
    """
    from ..gradcheck import upstream_rng
    seed = secrets.randbits(63) if seed is None else int(seed)
    specs = list(cfg["cases"])
    if not specs:
        shapes = list(input_shapes or [])
        if not shapes:
            probe = ref.build()
            if probe.input_shape is None or None in probe.input_shape:
                raise GradeError(f"the reference {ref.spec} does not know its input shape: give --input-shape "
                                 f"(per sample, e.g. 6 or 3,8,8) or [[cases]] in the config")
            shapes = [tuple(probe.input_shape)]
        specs = [{"shape": tuple(s), "hidden": False, "batch": None, "name": None} for s in shapes]
    cases, note = [], None if keras else "the Keras check is off (--skip-keras)"
    for k, spec in enumerate(specs):
        shape = tuple(int(s) for s in spec["shape"])
        n = int(spec["batch"] or batch)
        data = np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(k, 1)))
        layer = ref.build()
        params = {name: np.array(v, dtype=np.float64) for name, v in (layer.params or {}).items()}
        x = data.standard_normal((n,) + shape)
        y_shape = tuple(layer.compute_output_shape(shape)) if hasattr(layer, "compute_output_shape") else shape
        upstream = upstream_rng(seed + k).standard_normal((n,) + y_shape)
        label = spec["name"] or f"{'hidden ' if spec['hidden'] else ''}case {k + 1} {shape}"
        case = Case(label, spec["hidden"], x, upstream, params, cfg.get("hidden", ()))
        case.ref = _ref_eval(layer, case)
        pick = np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(k, 2)))
        arrays = {"x": x.size, **{name: v.size for name, v in params.items()}}
        case.coords = {name: (np.arange(size) if coords is None or coords >= size
                              else np.sort(pick.choice(size, coords, replace=False))) for name, size in arrays.items()}
        if params and sgd_steps:
            xs = data.standard_normal((sgd_steps, n) + shape)
            targets = data.standard_normal((sgd_steps, n, int(np.prod(y_shape))))
            case.sgd = (xs, targets, float(sgd_lr), _ref_sgd(ref.build(), case, xs, targets, float(sgd_lr)))
        if keras and note is None:
            try:
                case.keras = _keras_numbers(layer, case, shape)
            except ImportError as exc:
                raise GradeError(f"{exc}\nthe Keras check needs TensorFlow; or pass --skip-keras") from None
            except (TypeError, ValueError, NotImplementedError) as exc:
                note = f"the reference has no Keras twin ({type(exc).__name__}: {exc}): the Keras check is left out"
                for c in cases:
                    c.keras = None
        cases.append(case)
    if note is not None:
        for c in cases:
            c.keras = None
    return cases, seed, note
