"""Grading a class: every submission snapshotted, run in its sandbox, compared, written out.

``grade_class`` reads every submission into memory first (the snapshot: nothing a submission does
while it runs can change another's code), computes the reference's answers once, grades the
submissions (``jobs`` at a time) and only then writes the outputs (atomically):

* ``OUT/grades.csv``: ``student,score,max_score,status,seconds`` and one column per check (the
  points summed over its cases);
* ``OUT/<student>.json``: every check, with the status, the message and the captured output;
* with ``gradescope``: ``OUT/<student>/results.json`` in Gradescope's format (hidden cases with
  ``"visibility": "hidden"``); in single-submission mode ``OUT/results.json``;
* ``OUT/grading_run.json``: the run's settings, the isolation used and the secret seed (keep it
  private: with it the inputs can be recomputed).
"""
import csv
import io
import os
import re
import sys
from concurrent.futures import ThreadPoolExecutor

from ...atomic import write_json_atomic, write_text_atomic
from ..loading import GradeError
from .submission import grade_submission

__all__ = ["discover", "snapshot", "grade_class", "write_outputs", "MAX_SUBMISSION_BYTES"]

#: the most bytes of files read from one submission
MAX_SUBMISSION_BYTES = 20 * 1024 * 1024
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.@+-]*$")


def discover(folder, file, single=False):
    """``[(student, path)]``: every subfolder holding ``file``'s folder, or every ``.py`` directly in ``folder``.

    ``single``: ``folder`` itself is the one submission (Gradescope's ``/autograder/submission``).
    """
    folder = os.path.abspath(folder)
    if not os.path.isdir(folder):
        raise GradeError(f"--submissions {folder} is not a folder")
    if single:
        return [("submission", folder)]
    out = []
    for name in sorted(os.listdir(folder)):
        path = os.path.join(folder, name)
        if name.startswith("."):
            continue
        if os.path.isdir(path):
            out.append((name, path))
        elif name.endswith(".py") and os.path.isfile(path):
            out.append((name[:-3], path))
    if not out:
        raise GradeError(f"no submissions in {folder}: expected one subfolder per student (holding {file}) or "
                         f"one .py file per student")
    safe, used = [], set()
    for student, path in out:
        name = student if _NAME.match(student) else re.sub(r"[^A-Za-z0-9_.@+-]", "_", student).lstrip("._-") or "x"
        base, k = name, 2
        while name in used:
            name, k = f"{base}_{k}", k + 1
        used.add(name)
        if name != student:
            print(f"note: submission {student!r} is graded as {name!r} (the name of its output files)",
                  file=sys.stderr)
        safe.append((name, path))
    return safe


def snapshot(path, file):
    """The files of one submission as ``{relative path: bytes}`` (a single ``.py`` becomes ``file``)."""
    if os.path.isfile(path):
        with open(path, "rb") as f:
            return {file: f.read(MAX_SUBMISSION_BYTES + 1)[:MAX_SUBMISSION_BYTES]}
    files, total = {}, 0
    for root, dirs, names in os.walk(path, followlinks=False):
        dirs[:] = [d for d in dirs if not d.startswith(".") and d != "__pycache__"]
        for name in names:
            full = os.path.join(root, name)
            if os.path.islink(full) or not os.path.isfile(full):
                continue
            size = os.path.getsize(full)
            if total + size > MAX_SUBMISSION_BYTES:
                continue
            with open(full, "rb") as f:
                files[os.path.relpath(full, path)] = f.read()
            total += size
    return files


def grade_class(students, sandbox, spec, cases, points, tols, jobs=1, progress=None):
    """``[StudentResult]`` in the order of ``students`` (``[(name, files)]``)."""
    def one(item):
        name, files = item
        res = grade_submission(sandbox, name, files, spec, cases, points, tols)
        if progress is not None:
            progress(res)
        return res

    if jobs <= 1:
        return [one(s) for s in students]
    with ThreadPoolExecutor(max_workers=jobs) as pool:
        return list(pool.map(one, students))


def _columns(results):
    cols = []
    for r in results:
        for c in r.checks:
            if c.check not in cols:
                cols.append(c.check)
    return cols


def grades_csv(results):
    cols = _columns(results)
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["student", "score", "max_score", "status", "seconds"] + cols)
    for r in results:
        per = {c: 0.0 for c in cols}
        for c in r.checks:
            per[c.check] += c.points or 0.0
        w.writerow([r.student, f"{r.score:g}", f"{r.max_score:g}", r.status, f"{r.seconds:.2f}"]
                   + [f"{per[c]:g}" for c in cols])
    return buf.getvalue()


def student_json(r):
    from dataclasses import asdict
    return {"student": r.student, "score": r.score, "max_score": r.max_score, "status": r.status,
            "message": r.message, "seconds": round(r.seconds, 3), "passed": r.passed,
            "checks": [asdict(c) for c in r.checks], "output": r.output}


def gradescope_json(r):
    tests = []
    for c in r.checks:
        text = c.message
        if c.hidden:
            text = "hidden check"
        tests.append({"name": c.name, "score": c.points or 0.0, "max_score": c.max_points or 0.0,
                      "output": text, "visibility": "hidden" if c.hidden else "visible"})
    head = f"status: {r.status}" + (f": {r.message}" if r.message else "")
    return {"score": r.score, "output": head, "tests": tests, "visibility": "visible"}


def write_outputs(out, results, run_info, gradescope=False, single=False):
    """Write every output file (atomically) under ``out``."""
    os.makedirs(out, exist_ok=True)
    if not single:
        write_text_atomic(os.path.join(out, "grades.csv"), grades_csv(results))
    for r in results:
        write_json_atomic(os.path.join(out, f"{r.student}.json"), student_json(r))
        if gradescope:
            target = os.path.join(out, "results.json") if single else os.path.join(out, r.student, "results.json")
            os.makedirs(os.path.dirname(target), exist_ok=True)
            write_json_atomic(target, gradescope_json(r))
    write_json_atomic(os.path.join(out, "grading_run.json"), run_info)

