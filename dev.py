#!/usr/bin/env python3
"""One entry point that sets everything up by itself, then runs a job.

    python3 dev.py train     # the main job: train the seed lab's CNN on MNIST
    python3 dev.py test      # the test suite (installs the Keras cross-check extra)
    python3 dev.py bench     # the CPU benchmarks (also installs PyTorch CPU)
    python3 dev.py notebooks # execute notebooks/*.ipynb in a kernel and store their outputs
    python3 dev.py docs      # build the documentation site (MkDocs) and say where it is
    python3 dev.py lock      # refresh requirements/lock.txt from a fresh environment
    python3 dev.py shell     # print how to activate the environment

Needs only Python >= 3.10 with venv.  The first run creates ``.venv`` next to
this file and installs the package into it (editable) with the extras the job
needs, every package pinned to the exact version in ``requirements/lock.txt``
(``pip install -c requirements/lock.txt``), so a fresh machine gets the
environment the suite last passed in.  Later runs reinstall only when
``setup.cfg``, ``pyproject.toml`` or the lock change.  Arguments after the job
name are passed on (``python3 dev.py test -k conv``).

``python3 dev.py lock`` builds a throw-away virtual environment, installs the
newest releases that ``setup.cfg`` allows (every extra the jobs use, and
PyTorch for the benchmarks), runs the test suite's import check in it and
writes ``pip freeze`` to ``requirements/lock.txt``.  Run it when you change a
dependency in ``setup.cfg``, or deliberately to move to newer releases; then run
``python3 dev.py test`` and commit the lock with the change.  The lock pins the
development and test environment only: ``install_requires`` stay version
ranges for users.
"""
import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
import venv

ROOT = os.path.dirname(os.path.abspath(__file__))
VENV = os.environ.get("NN_FROM_SCRATCH_VENV", os.path.join(ROOT, ".venv"))
BIN = os.path.join(VENV, "Scripts" if os.name == "nt" else "bin")
PY = os.path.join(BIN, "python.exe" if os.name == "nt" else "python")
LOCK = os.path.join(ROOT, "requirements", "lock.txt")
#: PyTorch, for the benchmarks only (never a dependency of the package).
TORCH = "torch==2.13.0"

JOBS = {
    # job: (extras to install, extra pip requirements, command after the venv python)
    "train": ("", [], ["-m", "nn_from_scratch", "train"]),
    "test": ("dev", [], ["-m", "pytest"]),
    "bench": ("dev", [TORCH], ["benchmarks/bench_cpu.py"]),
    "notebooks": ("dev", [], ["notebooks/execute.py"]),
    "docs": ("dev", [], ["-m", "mkdocs", "build", "--strict", "--site-dir", "site"]),
    "shell": ("dev", [], None),
}


def _python_of(env_dir):
    return os.path.join(env_dir, "Scripts" if os.name == "nt" else "bin",
                        "python.exe" if os.name == "nt" else "python")


def _fingerprint(extras, reqs):
    h = hashlib.sha256()
    for name in ("setup.cfg", "pyproject.toml", LOCK):
        path = os.path.join(ROOT, name)
        if os.path.exists(path):
            with open(path, "rb") as f:
                h.update(f.read())
    h.update(repr((extras, reqs)).encode())
    return h.hexdigest()


def _pip(python, args):
    subprocess.check_call([python, "-m", "pip", "install", "--disable-pip-version-check", "-q"] + args)


def ensure_env(extras, reqs):
    if not os.path.exists(PY):
        print(f"[dev.py] creating virtual environment in {VENV}", flush=True)
        venv.EnvBuilder(with_pip=True).create(VENV)
    stamp = os.path.join(VENV, f".installed-{extras or 'base'}{'-' + '-'.join(reqs) if reqs else ''}")
    want = _fingerprint(extras, reqs)
    if os.path.exists(stamp) and open(stamp).read() == want:
        return
    target = f"{ROOT}[{extras}]" if extras else ROOT
    pinned = ["-c", LOCK] if os.path.exists(LOCK) else []
    if not pinned:
        print(f"[dev.py] warning: {os.path.relpath(LOCK, ROOT)} is missing; installing the newest "
              "releases (run 'python3 dev.py lock' to pin them)", flush=True)
    print(f"[dev.py] installing nn-from-scratch-edu{'[' + extras + ']' if extras else ''} "
          f"{' '.join(reqs)} into {VENV}, pinned by {os.path.relpath(LOCK, ROOT)}", flush=True)
    _pip(PY, pinned + ["-e", target] + reqs)
    with open(stamp, "w") as f:
        f.write(want)


def lock():
    """Write ``requirements/lock.txt``: ``pip freeze`` of a fresh environment with every job's extras."""
    extras = sorted({JOBS[j][0] for j in JOBS if JOBS[j][0]})
    reqs = sorted({r for j in JOBS for r in JOBS[j][1]})
    work = tempfile.mkdtemp(prefix="nn-from-scratch-lock-")
    try:
        env_dir = os.path.join(work, "venv")
        print(f"[dev.py] creating a fresh environment in {env_dir}", flush=True)
        venv.EnvBuilder(with_pip=True).create(env_dir)
        python = _python_of(env_dir)
        _pip(python, [f"{ROOT}[{','.join(extras)}]"] + reqs)
        subprocess.check_call([python, "-c", "import nn_from_scratch, pytest, tensorflow, mkdocs"])
        frozen = subprocess.check_output([python, "-m", "pip", "freeze", "--disable-pip-version-check"],
                                         text=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    pins = sorted((line for line in frozen.splitlines()
                   if line and not line.startswith(("#", "-e ")) and "nn-from-scratch" not in line.lower()
                   and "nn_from_scratch" not in line.lower()), key=str.lower)
    header = ["# The exact versions of the development and test environment (every extra the jobs of",
              "# dev.py use, and PyTorch for the benchmarks), used as pip constraints by dev.py.",
              "# Generated by `python3 dev.py lock` (a pip freeze of a fresh virtual environment);",
              f"# Python {sys.version_info.major}.{sys.version_info.minor}. Do not edit by hand.", ""]
    os.makedirs(os.path.dirname(LOCK), exist_ok=True)
    tmp = LOCK + ".tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        f.write("\n".join(header + pins) + "\n")
    os.replace(tmp, LOCK)
    print(f"[dev.py] wrote {os.path.relpath(LOCK, ROOT)}: {len(pins)} packages pinned", flush=True)
    return 0


def main(argv):
    if argv and argv[0] == "lock":
        return lock()
    if not argv or argv[0] not in JOBS:
        print(__doc__)
        return 2
    job, rest = argv[0], argv[1:]
    extras, reqs, cmd = JOBS[job]
    ensure_env(extras, reqs)
    if cmd is None:
        print(f"source {os.path.join(BIN, 'activate')}")
        return 0
    os.chdir(ROOT)
    code = subprocess.call([PY] + cmd + rest)
    if job == "docs" and code == 0:
        print(f"[dev.py] the documentation site is in {os.path.join(ROOT, 'site')} "
              f"(open {os.path.join(ROOT, 'site', 'index.html')})")
    return code


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
