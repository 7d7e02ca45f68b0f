"""Grading in the grader's own process: ``grade_layer`` and ``grade_model`` (docs/grading.md, "Two modes").

For the instructor's own layers and for trusted code: the student's code runs in this process, and the
Keras comparison uses the layer's own Keras counterpart.  Untrusted submissions are graded with
``grade --submissions`` (``batch``): each in a sandbox, against a trusted reference.
"""
import copy
import os

import numpy as np

from ..loading import GradeError, load_class
from .report import GradeCheck, GradeReport

__all__ = ["grade_layer", "grade_model", "KERAS_HINT"]

KERAS_HINT = ("the Keras comparison needs TensorFlow: from a checkout, `pip install -e \".[keras]\"` "
              "(or `python3 dev.py test`, which installs it); or pass --skip-keras")


def _crosscheck(skip):
    if skip:
        return None
    try:
        from .. import crosscheck  # noqa: PLC0415
    except ImportError as exc:
        raise GradeError(f"{exc}\n{KERAS_HINT}") from exc
    return crosscheck


def _short(exc):
    return f"{type(exc).__name__}: {exc}"


def _raised(case, check, exc, layer=""):
    return GradeCheck(case, check, False, layer=layer, message=f"raised {_short(exc)}")


# ----------------------------------------------------------------------------- results -> checks
def _gradient_check(case, res, tol, layer_name, array_prefix=""):
    """A GradeCheck from a GradCheckResult; ``array_prefix`` names the layer for single-layer checks."""
    if res.problem is not None or res.checked == 0:
        return GradeCheck(case, "gradient", False, layer=layer_name, message=str(res))
    name = res.worst[0] if res.worst else "x"
    if "." in name:                                  # a network's "layer.W"
        layer_name, _, pname = name.rpartition(".")
        quantity = f"dL/d{pname}"
    else:
        quantity = "dL/dx" if name in ("x", "prediction") else f"dL/d{name}"
    ok = res.passed(tol)
    msg = f"{res}" + ("" if ok else f" > tolerance {tol:g}: the backward pass disagrees with the forward")
    return GradeCheck(case, "gradient", ok, layer=layer_name, quantity=quantity if not ok else "",
                      error=float(res.max_rel_error), message=msg)


def _keras_check(case, report, check="keras"):
    f = report.first_failure
    if f is None:
        worst = max((c.max_rel for r in report.rows for c in r.checks.values()), default=0.0)
        return GradeCheck(case, check, True, error=float(worst), message="every output and gradient within "
                          "tolerance")
    return GradeCheck(case, check, False, layer=f"{f.name} ({f.kind})", quantity=f.quantity,
                      error=float(f.check.max_rel), message=str(f))


def _training_check(case, report):
    if report.passed:
        return GradeCheck(case, "keras training", True, error=float(max((c.max_rel for c in report.weights),
                                                                         default=0.0)),
                          message=f"{len(report.steps)} steps: weights within tolerance of Keras's")
    bad = [c for c in report.weights if not c.passed]
    first = bad[0] if bad else None
    layer, _, pname = (first.quantity.rpartition(".") if first else ("", "", ""))
    text = str(report).splitlines()
    return GradeCheck(case, "keras training", False, layer=layer, quantity=f"weights {pname}".strip(),
                      error=float(first.max_rel) if first else None,
                      message=(first.describe() if first else text[-1]))


# ----------------------------------------------------------------------------- layers
def grade_layer(cls, args=(), kwargs=None, input_shapes=None, batch=4, seed=0, n_coords=None,
                gradcheck_tol=1e-6, keras=True, steps=10):
    """Grade the layer class ``cls`` (or a "module:Class" string); returns a ``GradeReport``."""
    from ..gradcheck import check_layer, check_loss  # noqa: PLC0415
    from ...layers.base import Neuron, Node  # noqa: PLC0415
    from ...layers.losses import Loss, MSELoss  # noqa: PLC0415

    if isinstance(cls, str):
        cls = load_class(cls)
    if not (isinstance(cls, type) and issubclass(cls, Node)):
        raise GradeError(f"{cls!r} is not a layer class (a subclass of nn_from_scratch.interfaces.Node)")
    cc = _crosscheck(not keras)
    kwargs = dict(kwargs or {})
    target = f"layer {cls.__module__}.{cls.__qualname__}"
    checks = []
    shapes = list(input_shapes) if input_shapes else [None]
    # the data come from their own stream: drawn from default_rng(seed) itself, x would equal the
    # random upstream gradient the checks draw, and x.T @ dy would be symmetric (hiding a transposed dW)
    rng = np.random.default_rng([seed, 21])
    for k, shape in enumerate(shapes):
        case = f"{k + 1}" + ("" if shape is None else f" {tuple(shape)}")
        try:
            layer = cls(*args, **kwargs)
        except Exception as exc:  # noqa: BLE001 - the student's constructor
            checks.append(_raised(case, "construct", exc, cls.__name__))
            continue
        if shape is None:
            shape = layer.input_shape
            if shape is None or None in shape:
                raise GradeError(f"{cls.__name__}{tuple(args)} does not know its input shape: give one or more "
                                 f"--input-shape (per sample, e.g. 6 or 3,8,8)")
            case = f"{k + 1} {tuple(shape)}"
        shape = tuple(int(s) for s in shape)
        lname = f"{getattr(layer, 'name', cls.__name__)} ({cls.__name__})"
        x = rng.standard_normal((batch,) + shape)
        if issubclass(cls, Loss):
            checks.extend(_grade_loss(case, layer, x, rng, cc, gradcheck_tol, check_loss, lname))
            continue
        # 1. the gradient check, on a float64 copy
        try:
            layer64 = copy.deepcopy(layer)
            if isinstance(layer64, Neuron):
                layer64.astype(np.float64)
            res = check_layer(layer64, x, n_coords=n_coords, seed=seed)
            checks.append(_gradient_check(case, res, gradcheck_tol, lname))
        except Exception as exc:  # noqa: BLE001
            checks.append(_raised(case, "gradient", exc, lname))
        if cc is None:
            continue
        # 2. the Keras comparison
        try:
            report = cc.compare(layer, x.astype(np.float32), seed=seed, input_shape=shape)
            checks.append(_keras_check(case, report))
        except Exception as exc:  # noqa: BLE001
            checks.append(_raised(case, "keras", exc, lname))
        # 3. training side by side, for a layer with parameters
        if steps and getattr(layer, "trainable", False) and layer.params:
            try:
                from ...layers.reshape import Vectorization  # noqa: PLC0415
                out_shape = tuple(layer.compute_output_shape(shape))
                n = 4 * batch
                X = rng.standard_normal((n,) + shape).astype(np.float32)
                Y = rng.standard_normal((n, int(np.prod(out_shape)))).astype(np.float32)
                tr = cc.compare_training([layer, Vectorization(), MSELoss()], X, Y, steps=steps, optimizer="sgd",
                                         batch_size=batch, seed=seed, input_shape=shape)
                checks.append(_training_check(case, tr))
            except Exception as exc:  # noqa: BLE001
                checks.append(_raised(case, "keras training", exc, lname))
    return GradeReport(target, checks)


def _grade_loss(case, loss, z, rng, cc, tol, check_loss, lname):
    from ...layers.reshape import Vectorization  # noqa: PLC0415
    from ...layers.losses import MSELoss  # noqa: PLC0415

    out = []
    if z.ndim != 2:
        raise GradeError(f"a loss is graded on predictions (N, K): give --input-shape K, received {z.shape[1:]}")
    if isinstance(loss, MSELoss):
        target = rng.standard_normal(z.shape)
    else:
        target = rng.integers(0, z.shape[1], z.shape[0])
    try:
        res = check_loss(copy.deepcopy(loss), z, target)
        out.append(_gradient_check(case, res, tol, lname))
    except Exception as exc:  # noqa: BLE001
        out.append(_raised(case, "gradient", exc, lname))
    if cc is not None:
        try:
            report = cc.compare([Vectorization((None, z.shape[1])), loss], z.astype(np.float32), target)
            out.append(_keras_check(case, report))
        except Exception as exc:  # noqa: BLE001
            out.append(_raised(case, "keras", exc, lname))
    return out


# ----------------------------------------------------------------------------- models
def _model_data(net, n, rng):
    from ...layers.losses import MSELoss  # noqa: PLC0415

    shape = net.input_shape
    if shape is None or None in shape:
        raise GradeError("the saved model does not record its input shape; it cannot be graded")
    x = rng.uniform(0.0, 1.0, (n,) + tuple(shape))
    out = net.output_shape
    if isinstance(net.loss_fn, MSELoss):
        y = rng.standard_normal((n,) + tuple(out))
    else:
        y = rng.integers(0, int(np.prod(out)), n)
    return x, y


def grade_model(model, batch=8, seed=0, n_coords=20, gradcheck_tol=1e-4, keras=True, steps=20):
    """Grade a saved model (path) or a ``NeuralNetwork``; returns a ``GradeReport``."""
    from ..gradcheck import check_network  # noqa: PLC0415
    from ...training.network import NeuralNetwork  # noqa: PLC0415

    cc = _crosscheck(not keras)
    if isinstance(model, (str, os.PathLike)):
        target = f"model {os.fspath(model)}"
        try:
            net = NeuralNetwork.load(model)
        except Exception as exc:  # noqa: BLE001
            return GradeReport(target, [_raised("load", "load", exc)])
    else:
        net, target = model, f"model {getattr(model, 'name', 'network')}"
    rng = np.random.default_rng([seed, 21])      # not the checks' own stream (see grade_layer)
    checks = []
    for case_batch in (1, batch):
        case = f"batch {case_batch}"
        x, y = _model_data(net, case_batch, rng)
        try:
            net64 = copy.deepcopy(net).astype(np.float64)
            res = check_network(net64, x, y, n_coords=n_coords, eps=1e-6, floor=1e-6, seed=seed)
            checks.append(_gradient_check(case, res, gradcheck_tol, "network"))
        except Exception as exc:  # noqa: BLE001
            checks.append(_raised(case, "gradient", exc))
        if cc is None:
            continue
        try:
            checks.append(_keras_check(case, cc.compare(net, x.astype(np.float32), y, seed=seed)))
        except Exception as exc:  # noqa: BLE001
            checks.append(_raised(case, "keras", exc))
    if cc is not None and steps:
        X, Y = _model_data(net, 8 * batch, rng)
        try:
            tr = cc.compare_training(net, X.astype(np.float32), Y, steps=steps, batch_size=batch, seed=seed)
            checks.append(_training_check(f"{steps} steps", tr))
        except Exception as exc:  # noqa: BLE001
            checks.append(_raised(f"{steps} steps", "keras training", exc))
    return GradeReport(target, checks)
