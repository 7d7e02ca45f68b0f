"""``python -m nn_from_scratch grade``: grade a class of student layers, one layer, or a saved model.

A class, each submission in a sandbox against a trusted reference (docs/grading.md)::

    python -m nn_from_scratch grade --submissions DIR --layer FILE:CLASS --reference SPEC --out OUT
        [--config grading.toml] [--timeout S] [--memory-mb M] [--jobs N] [--gradescope] [--single]

Each subfolder of ``DIR`` (or each ``.py`` file directly in it) is one student; ``FILE`` is the
file in each folder, ``CLASS`` the layer class in it.  ``SPEC`` is the reference: a built-in layer
expression (``"LeakyReLU(alpha=0.1)"``) or ``solution.py:CLASS``.  The checks (``output``, ``input
gradient``, ``parameter gradients``, ``gradient check``, ``sgd steps``, ``keras``) compare what the
student's layer computes, in its own process, with the reference computed here; points, cases
(some hidden) and tolerances come from ``--config``.  Outputs: ``OUT/grades.csv``,
``OUT/<student>.json``, with ``--gradescope`` Gradescope's ``results.json`` per student;
``--single`` grades ``DIR`` itself as one submission (Gradescope's ``run_autograder``).

One layer, in this process (trusted code: the instructor's own layers; see docs/grading.md)::

    python -m nn_from_scratch grade --layer student.py:LeakyReLU --input-shape 6 --input-shape 3,5,5
    python -m nn_from_scratch grade --layer mylab.layers:Affine --args '[6, 6]' --json grade.json
    python -m nn_from_scratch grade --model student_cnn.npz [--import mylab.layers] [--steps 20]

runs ``gradcheck.check_layer`` (float64 central differences), ``crosscheck.compare`` against the
layer's Keras counterpart and, for layers with weights, ``compare_training`` (``grading.inprocess``).

Exit status, in every mode: 0 when every check (of every submission) passed; 1 when a check failed
(a wrong number, the student's code raised, timed out, crashed, exited or ran out of memory);
2 when grading could not start (a bad argument, a module, class, reference or config that cannot
be loaded, no submissions, an output folder that cannot be written, TensorFlow missing without
``--skip-keras``).
"""
import argparse
import json
import os
import sys
import time
import traceback

from ..cli_errors import ArgumentParser, command, run as _run_cli
from .grading.inprocess import KERAS_HINT, grade_layer, grade_model
from .loading import GradeError, import_module, load_class
from .grading.report import GradeCheck, GradeReport

__all__ = ["GradeCheck", "GradeReport", "GradeError", "grade_layer", "grade_model", "load_class", "import_module",
           "main", "KERAS_HINT"]


def _short(exc):
    return f"{type(exc).__name__}: {exc}"


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
    p = ArgumentParser(prog="python -m nn_from_scratch grade",
                                description="Grade a class of student layers (--submissions, each in a sandbox, "
                                            "against --reference), one layer or a saved model; exit 0 = all "
                                            "passed, 1 = a check failed, 2 = grading could not start.")
    what = p.add_mutually_exclusive_group(required=True)
    what.add_argument("--layer", metavar="MODULE:CLASS",
                      help="a layer class: dotted module or path/to/file.py; with --submissions, FILE:CLASS inside "
                           "each submission")
    what.add_argument("--model", metavar="FILE.npz", help="a model saved with NeuralNetwork.save")
    p.add_argument("--submissions", metavar="DIR", help="grade every submission in DIR (one subfolder or .py "
                                                        "file per student) in a sandbox")
    p.add_argument("--reference", metavar="SPEC", help="the trusted reference: 'LeakyReLU(alpha=0.1)' or "
                                                       "solution.py:CLASS (with --submissions)")
    p.add_argument("--out", metavar="OUT", help="output folder of --submissions (grades.csv, <student>.json)")
    p.add_argument("--config", metavar="FILE.toml", help="grading config: seed, points, tolerances, cases "
                                                         "(hidden ones too); see docs/grading.md")
    p.add_argument("--timeout", type=float, default=None, help="wall-clock seconds per submission (default 60)")
    p.add_argument("--memory-mb", type=int, default=None, help="address-space limit per submission (default 1024)")
    p.add_argument("--jobs", type=int, default=1, help="submissions graded at once (default 1)")
    p.add_argument("--gradescope", action="store_true", help="also write Gradescope results.json files")
    p.add_argument("--single", action="store_true", help="DIR itself is one submission (Gradescope)")
    p.add_argument("--no-bwrap", action="store_true", help="do not use bubblewrap (weaker isolation, warned)")
    p.add_argument("--args", type=_json_arg(list), default=[], help="constructor arguments, a JSON list")
    p.add_argument("--kwargs", type=_json_arg(dict), default={}, help="constructor keyword arguments, a JSON object")
    p.add_argument("--input-shape", type=_shape, action="append", metavar="SHAPE",
                   help="per-sample input shape of one case (repeat for more cases), e.g. 6 or 3,8,8")
    p.add_argument("--import", dest="imports", action="append", default=[], metavar="MODULE",
                   help="import this module first (it defines the custom layers of a --model)")
    p.add_argument("--batch", type=int, default=None, help="batch size (default 4 for a layer, 8 for a model)")
    p.add_argument("--seed", type=int, default=None,
                   help="seed of the data (in-process default 0; with --submissions default: the config's, else "
                        "a fresh secret one)")
    p.add_argument("--coords", type=int, default=None,
                   help="coordinates checked per array (default: all for a layer, 20 for a model and per "
                        "array of a submission)")
    p.add_argument("--gradcheck-tol", type=float, default=None,
                   help="largest relative error of the gradient check (default 1e-6 layer, 1e-4 model)")
    p.add_argument("--steps", type=int, default=None,
                   help="training steps compared with Keras (default 10 for a layer, 20 for a model; 0: none); "
                        "SGD steps of a submission (default 3)")
    p.add_argument("--skip-keras", action="store_true", help="no Keras comparison (no TensorFlow needed)")
    p.add_argument("--json", metavar="PATH", help="also write every check as JSON")
    return p


def _check_writable(path, what):
    folder = os.path.dirname(os.path.abspath(path)) if what == "file" else os.path.abspath(path)
    probe = folder
    while not os.path.exists(probe):
        probe = os.path.dirname(probe)
    if what == "file" and not os.path.isdir(folder):
        raise GradeError(f"--json {path}: the folder {folder} does not exist")
    if not os.access(probe, os.W_OK) or not os.path.isdir(probe):
        raise GradeError(f"cannot write into {folder}")


def _batch(args):
    from .grading.batch import discover, grade_class, snapshot, write_outputs
    from .grading.plan import build_cases, load_config, parse_reference
    from .grading.sandbox import WEAK_ISOLATION_WARNING, Sandbox

    if not args.reference:
        raise GradeError("--submissions needs --reference (a layer expression or solution.py:CLASS)")
    if not args.out:
        raise GradeError("--submissions needs --out (the output folder)")
    if ":" not in args.layer:
        raise GradeError(f"--layer must be FILE:CLASS (the file inside each submission), received {args.layer!r}")
    file, _, cls = args.layer.rpartition(":")
    if not file.endswith(".py") or os.path.isabs(file) or ".." in file.split("/"):
        raise GradeError(f"--layer FILE must be a relative .py path inside each submission, received {file!r}")
    for name, v, lo in (("--jobs", args.jobs, 1), ("--timeout", args.timeout, 0), ("--memory-mb", args.memory_mb, 64)):
        if v is not None and not v >= lo or (name == "--timeout" and v is not None and v <= 0):
            raise GradeError(f"{name} must be >= {lo}{' and > 0' if name == '--timeout' else ''}, received {v}")
    _check_writable(args.out, "folder")
    subs_dir, out_dir = os.path.realpath(args.submissions), os.path.realpath(args.out)
    if out_dir == subs_dir or out_dir.startswith(subs_dir + os.sep) or subs_dir.startswith(out_dir + os.sep):
        raise GradeError(f"--out {args.out} must lie outside --submissions {args.submissions} (and not contain it)")
    cfg = load_config(args.config)
    st = cfg["settings"]
    ref = parse_reference(args.reference, args.args or None, args.kwargs or None)
    students = discover(args.submissions, file, single=args.single)
    snaps = [(name, snapshot(path, file)) for name, path in students]          # before anything runs
    seed = args.seed if args.seed is not None else st.get("seed")
    keras = not args.skip_keras
    if keras:
        try:
            from . import crosscheck  # noqa: F401 - TensorFlow, imported once, here
        except ImportError as exc:
            raise GradeError(f"{exc}\n{KERAS_HINT}") from None
    cases, seed, note = build_cases(ref, cfg, args.input_shape, args.batch or st.get("batch", 4), seed,
                                    args.coords if args.coords is not None else st.get("coords", 20),
                                    args.steps if args.steps is not None else st.get("sgd_steps", 3),
                                    st.get("sgd_lr", 0.1), keras)
    if note:
        print(f"note: {note}", file=sys.stderr)
    timeout = args.timeout or st.get("timeout", 60.0)
    memory = args.memory_mb or st.get("memory_mb", 1024)
    hide = [args.submissions, args.out, args.config, ref.path] + [p for _, p in students]
    sandbox = Sandbox(timeout=timeout, memory_mb=memory, output_cap=st.get("output_cap", 64 * 1024), hide=hide,
                      isolation="rlimits" if args.no_bwrap else None)
    if sandbox.isolation != "bwrap":
        print(WEAK_ISOLATION_WARNING, file=sys.stderr)
    spec = {"file": file, "cls": cls, "args": ref.args, "kwargs": ref.kwargs}
    t0 = time.monotonic()

    def progress(r):
        print(f"{r.student}: {r.score:g}/{r.max_score:g} ({r.status}, {r.seconds:.1f} s)", flush=True)

    try:
        results = grade_class(snaps, sandbox, spec, cases, cfg["points"], cfg["tolerances"], jobs=args.jobs,
                              progress=progress)
    finally:
        sandbox.cleanup()
    info = {"reference": args.reference, "layer": args.layer, "submissions": os.path.abspath(args.submissions),
            "isolation": sandbox.isolation, "timeout": timeout, "memory_mb": memory, "seed": seed,
            "cases": [{"label": c.label, "hidden": c.hidden, "shape": list(c.x.shape[1:])} for c in cases],
            "keras": note or "against the reference's Keras twin", "points": cfg["points"],
            "tolerances": cfg["tolerances"], "seconds": round(time.monotonic() - t0, 2), "n": len(results)}
    write_outputs(args.out, results, info, gradescope=args.gradescope, single=args.single)
    n_full = sum(r.passed for r in results)
    print(f"{n_full} of {len(results)} submissions passed every check; outputs in {os.path.abspath(args.out)} "
          f"(isolation: {sandbox.isolation})")
    if args.single and results:
        print("\n".join(_student_table(results[0])))
    return 0 if all(r.passed for r in results) else 1


def _student_table(r):
    report = GradeReport(r.student, r.checks)
    lines = report.table(title=f"{r.student}: {r.score:g}/{r.max_score:g} ({r.status})", show_hidden=False)
    if r.message:
        lines.append(r.message)
    return lines


@command("python -m nn_from_scratch grade")
def main(argv=None):
    """Run the grading; returns the exit status (0 passed, 1 failed, 2 could not grade)."""
    try:
        args = _parser().parse_args(argv)
    except SystemExit as exc:          # argparse: --help (0) or a usage error (2)
        return 0 if exc.code in (0, None) else 2
    if args.batch is not None and args.batch < 1:
        print(f"error: --batch must be >= 1, received {args.batch}", file=sys.stderr)
        return 2
    try:
        if args.submissions:
            if args.model:
                raise GradeError("--submissions grades layers (--layer FILE:CLASS), not --model")
            return _batch(args)
        if args.reference or args.out or args.gradescope or args.single:
            raise GradeError("--reference, --out, --gradescope and --single go with --submissions DIR")
        if args.json:
            _check_writable(args.json, "file")
        for name in args.imports:
            import_module(name)
        seed = 0 if args.seed is None else args.seed
        if args.layer:
            print("note: grade --layer runs the layer in this process and compares it with its own Keras "
                  "counterpart; for students' code use --submissions (each in a sandbox, against a trusted "
                  "--reference; docs/grading.md)", file=sys.stderr)
            report = grade_layer(load_class(args.layer), args=args.args, kwargs=args.kwargs,
                                 input_shapes=args.input_shape, batch=args.batch or 4, seed=seed,
                                 n_coords=args.coords, gradcheck_tol=args.gradcheck_tol or 1e-6,
                                 keras=not args.skip_keras, steps=10 if args.steps is None else args.steps)
        else:
            if not os.path.isfile(args.model):
                raise GradeError(f"no model file {os.path.abspath(args.model)}")
            report = grade_model(args.model, batch=args.batch or 8, seed=seed,
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
        try:
            write_json_atomic(args.json, report.to_json())
        except OSError as exc:
            print(f"error: cannot write {args.json}: {exc}", file=sys.stderr)
            return 2
        print(f"JSON: {os.path.abspath(args.json)}")
    return 0 if report.passed else 1


if __name__ == "__main__":
    sys.exit(_run_cli(main))
