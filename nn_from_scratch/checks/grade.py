"""``python -m nn_from_scratch grade``: grade a student's layer or saved model, for instructors and autograders.

    python -m nn_from_scratch grade --layer student.py:LeakyReLU --input-shape 6 --input-shape 3,5,5
    python -m nn_from_scratch grade --layer mylab.layers:Affine --args '[6, 6]' --json grade.json
    python -m nn_from_scratch grade --model student_cnn.npz [--import mylab.layers] [--steps 20]

``--layer MODULE:CLASS`` (``MODULE`` a dotted module name importable from the
current directory, or a path to a ``.py`` file) builds ``CLASS(*args, **kwargs)``
for every case (one per ``--input-shape``, the per-sample shape without the
batch axis; by default the shape the layer was built for) and runs on a random
batch (``--batch``, seeded):

1. **gradient**: ``gradcheck.check_layer`` on a float64 copy (every coordinate,
   or ``--coords`` random ones per array; its randomness frozen): the analytic
   gradients against float64 central differences; passes at relative error
   ``<= --gradcheck-tol`` (1e-6).  Catches a backward that disagrees with the
   forward (a transposed dW, a dropped ReLU mask, a missing 1/N).
2. **keras**: ``crosscheck.compare`` against the Keras counterpart (built-in
   layers and their subclasses, or the layer's own ``to_keras()``) with a random
   upstream gradient: output, dL/dx and every parameter gradient.  Catches what
   is self-consistent but not the layer it should be (a flipped kernel, an
   NHWC flatten).
3. **keras training** (layers with parameters, ``--steps`` > 0): ``compare_training``
   of the layer followed by a flatten and a mean squared error, ``--steps`` SGD
   steps: the weights must stay with Keras's.

A loss class (a subclass of ``Loss``) is checked with ``check_loss`` and, after a
flatten, against Keras's loss (its ``dL/dx`` is the gradient of the logits).

``--model FILE.npz`` loads a saved ``NeuralNetwork`` (``--import`` first the
modules defining its custom layers) and runs ``check_network`` on float64 random
inputs with random labels, ``compare`` with labels, and ``compare_training``
(``--steps``, default 20, with the model's optimizer) on a batch of 1 and a batch
of ``--batch``.

Output: a pass/fail table naming, for each failure, the layer and the quantity
(``dL/dW``, ``output``, ...) with the measured error; ``--json PATH`` also writes
every check as JSON (written atomically).  Exit status: 0 when every check
passed, 1 when one failed (the student's code raised, or a number is off),
2 when grading could not start (a bad argument, a module or class not found,
TensorFlow missing without ``--skip-keras``).
"""
import argparse
import copy
import importlib
import importlib.util
import json
import os
import sys
import traceback
from dataclasses import asdict, dataclass

import numpy as np

__all__ = ["GradeCheck", "GradeReport", "grade_layer", "grade_model", "load_class", "main"]

KERAS_HINT = ("the Keras comparison needs TensorFlow: from a checkout, `pip install -e \".[keras]\"` "
              "(or `python3 dev.py test`, which installs it); or pass --skip-keras")


class GradeError(Exception):
    """Grading could not start (exit status 2)."""


@dataclass
class GradeCheck:
    """One check of one case: ``passed``; where it failed (``layer``, ``quantity``), ``error`` the
    measured relative error (None when the student's code raised), ``message`` the explanation."""

    case: str
    check: str
    passed: bool
    layer: str = ""
    quantity: str = ""
    error: float = None
    message: str = ""


class GradeReport:
    """All checks of a grading run: ``passed``, ``checks`` (``GradeCheck`` list), ``to_json()``."""

    def __init__(self, target, checks):
        self.target, self.checks = target, list(checks)

    @property
    def passed(self):
        return bool(self.checks) and all(c.passed for c in self.checks)

    @property
    def failures(self):
        return [c for c in self.checks if not c.passed]

    def to_json(self):
        return {"target": self.target, "passed": self.passed,
                "n_checks": len(self.checks), "n_failed": len(self.failures),
                "checks": [asdict(c) for c in self.checks]}

    def __str__(self):
        head = ("case", "check", "result", "layer", "quantity", "rel. error")
        rows = [(c.case, c.check, "pass" if c.passed else "FAIL", c.layer, c.quantity,
                 "-" if c.error is None else f"{c.error:.1e}") for c in self.checks]
        widths = [max(len(str(r[i])) for r in [head] + rows) for i in range(len(head))]
        line = lambda r: "  ".join(str(v).ljust(w) for v, w in zip(r, widths)).rstrip()  # noqa: E731
        out = [f"Grading {self.target}", line(head), "-" * len(line(head))] + [line(r) for r in rows]
        for c in self.failures:
            out.append(f"FAIL [{c.case}] {c.check}: {c.message}")
        out.append(f"{'PASSED' if self.passed else 'FAILED'}: {len(self.checks) - len(self.failures)} of "
                   f"{len(self.checks)} checks passed")
        return "\n".join(out)


# ----------------------------------------------------------------------------- loading
def load_class(spec):
    """The class named by ``"module:Class"`` or ``"path/to/file.py:Class"``."""
    if ":" not in spec:
        raise GradeError(f"--layer must be MODULE:CLASS (e.g. mylab.layers:LeakyReLU or student.py:LeakyReLU), "
                         f"received {spec!r}")
    module_name, _, cls_name = spec.rpartition(":")
    module = import_module(module_name)
    try:
        return getattr(module, cls_name)
    except AttributeError:
        names = sorted(n for n, v in vars(module).items() if isinstance(v, type))
        raise GradeError(f"module {module_name!r} has no class {cls_name!r}; its classes: {names}") from None


def import_module(name):
    """Import a module by dotted name (from the current directory too) or by ``.py`` path."""
    if name.endswith(".py") or os.sep in name or "/" in name:
        path = os.path.abspath(name)
        if not os.path.isfile(path):
            raise GradeError(f"no file {path} (from --layer/--import {name!r})")
        mod_name = os.path.splitext(os.path.basename(path))[0]
        spec = importlib.util.spec_from_file_location(mod_name, path)
        module = importlib.util.module_from_spec(spec)
        sys.modules.setdefault(mod_name, module)
        sys.path.insert(0, os.path.dirname(path))
        try:
            spec.loader.exec_module(module)
        except Exception as exc:
            raise GradeError(f"importing {path} failed: {type(exc).__name__}: {exc}") from exc
        finally:
            sys.path.remove(os.path.dirname(path))
        return module
    if os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())
    try:
        return importlib.import_module(name)
    except ImportError as exc:
        raise GradeError(f"cannot import module {name!r}: {exc}") from exc


def _crosscheck(skip):
    if skip:
        return None
    try:
        from . import crosscheck  # noqa: PLC0415
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
    from .gradcheck import check_layer, check_loss  # noqa: PLC0415
    from ..layers.base import Neuron, Node  # noqa: PLC0415
    from ..layers.losses import Loss, MSELoss  # noqa: PLC0415

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
                from ..layers.reshape import Vectorization  # noqa: PLC0415
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
    from ..layers.reshape import Vectorization  # noqa: PLC0415
    from ..layers.losses import MSELoss  # noqa: PLC0415

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
    from ..layers.losses import MSELoss  # noqa: PLC0415

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
    from .gradcheck import check_network  # noqa: PLC0415
    from ..training.network import NeuralNetwork  # noqa: PLC0415

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


# ----------------------------------------------------------------------------- command line
def _shape(text):
    try:
        shape = tuple(int(v) for v in text.replace("x", ",").split(",") if v.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"a shape is integers separated by commas (6 or 3,8,8), "
                                         f"received {text!r}") from None
    if not shape or min(shape) < 1:
        raise argparse.ArgumentTypeError(f"a shape needs positive sizes, received {text!r}")
    return shape


def _json_arg(kind):
    def parse(text):
        try:
            value = json.loads(text)
        except json.JSONDecodeError as exc:
            raise argparse.ArgumentTypeError(f"not JSON ({exc}): {text!r}") from None
        if not isinstance(value, kind):
            raise argparse.ArgumentTypeError(f"expected a JSON {kind.__name__}, received {text!r}")
        return value
    return parse


def _parser():
    p = argparse.ArgumentParser(prog="python -m nn_from_scratch grade",
                                description="Grade a student's layer or saved model: gradient check and Keras "
                                            "comparison over a set of cases; exit 0 = all passed, 1 = a check "
                                            "failed, 2 = grading could not start.")
    what = p.add_mutually_exclusive_group(required=True)
    what.add_argument("--layer", metavar="MODULE:CLASS", help="a layer class: dotted module or path/to/file.py")
    what.add_argument("--model", metavar="FILE.npz", help="a model saved with NeuralNetwork.save")
    p.add_argument("--args", type=_json_arg(list), default=[], help="constructor arguments, a JSON list")
    p.add_argument("--kwargs", type=_json_arg(dict), default={}, help="constructor keyword arguments, a JSON object")
    p.add_argument("--input-shape", type=_shape, action="append", metavar="SHAPE",
                   help="per-sample input shape of one case (repeat for more cases), e.g. 6 or 3,8,8")
    p.add_argument("--import", dest="imports", action="append", default=[], metavar="MODULE",
                   help="import this module first (it defines the custom layers of a --model)")
    p.add_argument("--batch", type=int, default=None, help="batch size (default 4 for a layer, 8 for a model)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--coords", type=int, default=None,
                   help="coordinates checked per array (default: all for a layer, 20 for a model)")
    p.add_argument("--gradcheck-tol", type=float, default=None,
                   help="largest relative error of the gradient check (default 1e-6 layer, 1e-4 model)")
    p.add_argument("--steps", type=int, default=None,
                   help="training steps compared with Keras (default 10 for a layer, 20 for a model; 0: none)")
    p.add_argument("--skip-keras", action="store_true", help="only the gradient check (no TensorFlow needed)")
    p.add_argument("--json", metavar="PATH", help="also write every check as JSON")
    return p


def main(argv=None):
    """Run the grading; returns the exit status (0 passed, 1 failed, 2 could not grade)."""
    args = _parser().parse_args(argv)
    if args.batch is not None and args.batch < 1:
        print(f"error: --batch must be >= 1, received {args.batch}", file=sys.stderr)
        return 2
    try:
        for name in args.imports:
            import_module(name)
        if args.layer:
            report = grade_layer(load_class(args.layer), args=args.args, kwargs=args.kwargs,
                                 input_shapes=args.input_shape, batch=args.batch or 4, seed=args.seed,
                                 n_coords=args.coords, gradcheck_tol=args.gradcheck_tol or 1e-6,
                                 keras=not args.skip_keras, steps=10 if args.steps is None else args.steps)
        else:
            if not os.path.isfile(args.model):
                raise GradeError(f"no model file {os.path.abspath(args.model)}")
            report = grade_model(args.model, batch=args.batch or 8, seed=args.seed,
                                 n_coords=20 if args.coords is None else args.coords,
                                 gradcheck_tol=args.gradcheck_tol or 1e-4, keras=not args.skip_keras,
                                 steps=20 if args.steps is None else args.steps)
    except GradeError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except Exception as exc:  # noqa: BLE001 - say it, with the traceback, and do not pass
        traceback.print_exc()
        print(f"error: grading stopped: {_short(exc)}", file=sys.stderr)
        return 2
    print(report)
    if args.json:
        from ..atomic import write_json_atomic  # noqa: PLC0415
        write_json_atomic(args.json, report.to_json())
        print(f"JSON: {os.path.abspath(args.json)}")
    return 0 if report.passed else 1


if __name__ == "__main__":
    sys.exit(main())
