"""Grading one submission in its sandbox: the child computes, the grader compares and decides.

Every check compares the child's numbers with the reference's (``plan``), computed in the grader:
``output`` and ``input gradient`` (dL/dx for the case's random upstream gradient), ``parameter
gradients``, ``gradient check`` (the child's analytic gradients against float64 central differences
of the child's own forward, ``gradcheck``'s rule: rounding noise not counted, kinks skipped),
``sgd steps`` (the weights after a few SGD steps on a mean squared error) and ``keras`` (against
the reference's Keras twin).  A check that could not run (the process timed out, crashed, exited,
ran out of memory, or the code raised) scores 0 and says why.
"""
import time
from dataclasses import dataclass, field

import numpy as np

from ..gradcheck import NOISE_ULPS
from .protocol import ProtocolError
from .report import GradeCheck

__all__ = ["StudentResult", "grade_submission", "STATUSES"]

#: the status of a submission: graded (every check ran), or why some could not
STATUSES = ("graded", "error", "exited", "timeout", "memory", "crashed")


@dataclass
class StudentResult:
    student: str
    status: str = "graded"
    checks: list = field(default_factory=list)
    seconds: float = 0.0
    output: str = ""
    message: str = ""

    @property
    def score(self):
        return float(sum(c.points or 0.0 for c in self.checks))

    @property
    def max_score(self):
        return float(sum(c.max_points or 0.0 for c in self.checks))

    @property
    def passed(self):
        return self.status == "graded" and bool(self.checks) and all(c.passed for c in self.checks)


class _Stop(Exception):
    """The process can no longer answer: status and message."""

    def __init__(self, status, message):
        super().__init__(message)
        self.status, self.message = status, message


def relative_error(a, b):
    """``max|a - b| / max|b|`` (the cross-check's scale-aware measure; inf for NaN/Inf or an all-zero miss)."""
    if not (np.isfinite(a).all() and np.isfinite(b).all()):
        return float("inf")
    if a.size == 0:
        return 0.0
    return float(np.abs(a - b).max()) / max(float(np.abs(b).max()), 1e-300)


def _check(case, name, ok, points, error=None, message="", quantity=""):
    return GradeCheck(case.label, name, bool(ok), quantity=quantity if not ok else "", error=error, message=message,
                      points=points[name] if ok else 0.0, max_points=points[name],
                      hidden=case.hidden or name in case.hidden_checks)


def _compare(case, name, pairs, tol, points):
    """One check over ``(quantity, ours, reference)`` pairs: the worst scale-aware relative error."""
    worst, where = 0.0, ""
    for quantity, ours, ref in pairs:
        if ours is None:
            return _check(case, name, False, points, None, f"no {quantity} returned", quantity)
        ours = np.asarray(ours, dtype=np.float64)
        if ours.shape != ref.shape:
            return _check(case, name, False, points, None, f"{quantity} has shape {ours.shape}, expected {ref.shape}",
                          quantity)
        err = relative_error(ours, ref)
        if not err <= worst:
            worst, where = err, quantity
    ok = worst <= tol
    msg = (f"max relative error {worst:.2e} (tolerance {tol:.0e})" if ok else
           f"{where}: max relative error {worst:.2e} > tolerance {tol:.0e} (max|yours - reference| / max|reference|)")
    return _check(case, name, ok, points, worst, msg, where)


def _ask(child, header, arrays):
    try:
        h, a = child.request(header, arrays)
    except TimeoutError:
        raise _Stop("timeout", f"no answer within the time limit ({header['op']})") from None
    except ProtocolError as exc:
        raise _Stop("exited", f"the process stopped while answering {header['op']}: {exc}") from None
    if not h.get("ok"):
        err = str(h.get("error", "failed"))
        raise RuntimeError(err)
    return h, a


def _fd_check(child, case, analytic, eps, kink_tol, tol, points, name="gradient check"):
    """Finite differences of the child's own forward against its own analytic gradients (``gradcheck``)."""
    perturb = [["x", 0, 0.0], ["x", 0, 0.0]]
    order = []
    for arr, idx in case.coords.items():
        for i in idx:
            order.append((arr, int(i)))
            perturb += [[arr, int(i), d] for d in (eps, -eps, eps / 2, -eps / 2)]
    _, a = _ask(child, {"op": "forwards", "perturb": perturb},
                {"x": case.x, **{f"p:{k}": v for k, v in case.params.items()}})
    ys = a.get("ys")
    if ys is None or ys.shape != (len(perturb),) + case.ref["y"].shape:
        return _check(case, name, False, points, None, "the forwards returned arrays of the wrong shape")
    base, again = ys[0], ys[1]
    if not np.array_equal(base, again):
        return _check(case, name, False, points, None, "two forwards of the same input differ: the layer is not "
                                                       "deterministic, finite differences cannot check it")
    r = case.upstream
    worst, where, checked, skipped = 0.0, "", 0, 0
    macheps = np.finfo(np.float64).eps
    for j, (arr, i) in enumerate(order):
        yp, ym, yp2, ym2 = ys[2 + 4 * j: 6 + 4 * j]
        ana = analytic.get(arr)
        if ana is None:
            return _check(case, name, False, points, None, f"no gradient for {arr}")
        ana = float(np.asarray(ana).reshape(-1)[i])
        num = float(((yp - ym) * r).sum()) / (2 * eps)
        noise = NOISE_ULPS * macheps * float(((np.abs(yp) + np.abs(ym)) * np.abs(r) * (yp != ym)).sum()) / (2 * eps)
        second = float((((yp - base) - (base - ym)) * r).sum()) / eps
        if abs(second) > 4 * noise and abs(second) > kink_tol * max(abs(num), abs(ana)):
            num2 = float(((yp2 - ym2) * r).sum()) / eps
            second2 = float((((yp2 - base) - (base - ym2)) * r).sum()) / (eps / 2)
            if abs(second2) > 0.75 * abs(second) or \
                    abs(num2 - num) > kink_tol * max(abs(num), abs(ana)) + 4 * noise:
                skipped += 1
                continue
        checked += 1
        rel = max(abs(ana - num) - noise, 0.0) / max(abs(ana) + abs(num), 1e-12)
        if rel > worst:
            worst, where = rel, f"{'dL/dx' if arr == 'x' else 'dL/d' + arr}"
    if checked == 0:
        return _check(case, name, False, points, None, f"nothing checked: all {skipped} coordinates at kinks")
    ok = worst <= tol
    msg = (f"{checked} coordinates checked ({skipped} at kinks): max relative error {worst:.2e}"
           + ("" if ok else f" > {tol:.0e} at {where}: your backward disagrees with your forward"))
    return _check(case, name, ok, points, worst, msg, where)


def _names(case, has_keras):
    return ["output", "input gradient"] + (["parameter gradients"] if case.params else []) + ["gradient check"] \
        + (["sgd steps"] if case.sgd is not None else []) + (["keras"] if has_keras else [])


def _guarded(case, name, points, run):
    """``run()`` -> GradeCheck; the student's code raising, or an answer that is not numbers, fails the check.
    A process that can no longer answer (``_Stop``) ends the submission."""
    try:
        return run()
    except _Stop:
        raise
    except RuntimeError as exc:          # the child reported that the student's code raised
        return _check(case, name, False, points, None, f"raised {exc}")
    except Exception as exc:  # noqa: BLE001 - whatever the child sent, it is not a valid answer
        return _check(case, name, False, points, None, f"the answer could not be read: {type(exc).__name__}: {exc}")


def _keras_pairs(case, a):
    k = case.keras
    pairs = [("output", a.get("y"), k["y"]), ("dL/dx", a.get("dx"), k["dx"])]
    grads = {name: a.get(f"g:{name}") for name in case.params}
    for label, (pm, ref) in k["params"].items():
        try:
            mine = pm.ours(grads) if all(v is not None for v in grads.values()) else None
        except (KeyError, IndexError, TypeError):
            mine = None
        pairs.append((f"dL/d{label}", mine, ref))
    return pairs


def _grade_case(child, case, points, tols, has_keras):
    feed = {"x": case.x, "upstream": case.upstream, **{f"p:{k}": v for k, v in case.params.items()}}
    try:
        _, a = _ask(child, {"op": "eval"}, feed)
    except RuntimeError as exc:
        return [_check(case, n, False, points, None, f"raised {exc}") for n in _names(case, has_keras)]
    out = [_guarded(case, "output", points, lambda: _compare(
        case, "output", [("output", a.get("y"), case.ref["y"])], tols["output"], points)),
        _guarded(case, "input gradient", points, lambda: _compare(
            case, "input gradient", [("dL/dx", a.get("dx"), case.ref["dx"])], tols["input gradient"], points))]
    if case.params:
        out.append(_guarded(case, "parameter gradients", points, lambda: _compare(
            case, "parameter gradients", [(f"dL/d{k}", a.get(f"g:{k}"), case.ref[f"g:{k}"]) for k in case.params],
            tols["parameter gradients"], points)))
    analytic = {"x": a.get("dx"), **{k: a.get(f"g:{k}") for k in case.params}}
    out.append(_guarded(case, "gradient check", points, lambda: _fd_check(
        child, case, analytic, 1e-5, 1e-3, tols["gradient check"], points)))
    if case.sgd is not None:
        xs, targets, lr, final = case.sgd

        def sgd():
            _, b = _ask(child, {"op": "sgd", "lr": lr},
                        {"xs": xs, "targets": targets, **{f"p:{k}": v for k, v in case.params.items()}})
            return _compare(case, "sgd steps", [(f"weights {k}", b.get(f"p:{k}"), final[f"p:{k}"])
                                                for k in case.params], tols["sgd steps"], points)
        out.append(_guarded(case, "sgd steps", points, sgd))
    if has_keras:
        out.append(_guarded(case, "keras", points, lambda: _compare(case, "keras", _keras_pairs(case, a),
                                                                    tols["keras"], points)))
    return out


def _status_of(exc_status, returncode, message):
    if exc_status == "timeout":
        return "timeout"
    if "MemoryError" in message:
        return "memory"
    if returncode is not None and returncode < 0:
        return "crashed"
    return exc_status


def grade_submission(sandbox, student, files, spec, cases, points, tols):
    """Grade one submission (``files``: relative path -> bytes) -> ``StudentResult``.

    ``spec``: {file, cls, args, kwargs} of the student's layer.
    """
    t0 = time.monotonic()
    res = StudentResult(student)
    has_keras = any(c.keras is not None for c in cases)
    child = sandbox.start(files)
    status, message, done = "graded", "", []
    try:
        try:
            h, _ = child.request({"op": "init", **spec})
        except TimeoutError:
            raise _Stop("timeout", f"no answer within the time limit of {sandbox.timeout:g} s while importing") \
                from None
        except ProtocolError as exc:
            raise _Stop("exited", f"the process ended while importing or building the layer ({exc})") from None
        if not h.get("ok"):
            raise _Stop("exited" if h.get("stage") == "exit" else "error",
                        str(h.get("error", "could not build the layer")))
        for case in cases:
            done.extend(_grade_case(child, case, points, tols, has_keras))
    except _Stop as stop:
        status, message = stop.status, stop.message
    finally:
        rc, output, _ = child.close()
    if status != "graded":
        status = _status_of(status, rc, message)
        if status == "exited" and rc is not None and rc >= 0:
            message += f" (exit status {rc})"
        elif status == "crashed":
            message += f" (killed by signal {-rc})"
        elif status == "timeout":
            message = f"time limit of {sandbox.timeout:g} s reached: " + message
        seen = {(c.case, c.check) for c in done}
        for case in cases:
            for n in _names(case, has_keras):
                if (case.label, n) not in seen:
                    done.append(_check(case, n, False, points, None, f"not run: {status}: {message}"))
    res.status, res.message, res.checks, res.output = status, message, done, output
    res.seconds = time.monotonic() - t0
    return res
