#!/usr/bin/env python3
"""One entry point that sets everything up by itself, then runs a job.

    python3 dev.py train     # the main job: train the seed lab's CNN on MNIST
    python3 dev.py test      # the test suite (installs the Keras cross-check extra)
    python3 dev.py bench     # the CPU benchmarks (also installs PyTorch CPU)
    python3 dev.py notebooks # execute notebooks/*.ipynb in a kernel and store their outputs
    python3 dev.py shell     # print how to activate the environment

Needs only Python >= 3.10 with venv.  The first run creates ``.venv`` next to
this file and installs the package into it (editable) with the extras the job
needs; later runs reinstall only when ``setup.cfg`` or ``pyproject.toml`` change.
Arguments after the job name are passed on (``python3 dev.py test -k conv``).
"""
import hashlib
import os
import subprocess
import sys
import venv

ROOT = os.path.dirname(os.path.abspath(__file__))
VENV = os.environ.get("NN_FROM_SCRATCH_VENV", os.path.join(ROOT, ".venv"))
BIN = os.path.join(VENV, "Scripts" if os.name == "nt" else "bin")
PY = os.path.join(BIN, "python.exe" if os.name == "nt" else "python")

JOBS = {
    # job: (extras to install, extra pip requirements, command after the venv python)
    "train": ("", [], ["-m", "nn_from_scratch", "train"]),
    "test": ("dev", [], ["-m", "pytest"]),
    "bench": ("dev", ["torch==2.13.0"], ["benchmarks/bench_cpu.py"]),
    "notebooks": ("dev", [], ["notebooks/execute.py"]),
    "shell": ("dev", [], None),
}


def _fingerprint(extras, reqs):
    h = hashlib.sha256()
    for name in ("setup.cfg", "pyproject.toml"):
        with open(os.path.join(ROOT, name), "rb") as f:
            h.update(f.read())
    h.update(repr((extras, reqs)).encode())
    return h.hexdigest()


def ensure_env(extras, reqs):
    if not os.path.exists(PY):
        print(f"[dev.py] creating virtual environment in {VENV}", flush=True)
        venv.EnvBuilder(with_pip=True).create(VENV)
    stamp = os.path.join(VENV, f".installed-{extras or 'base'}{'-' + '-'.join(reqs) if reqs else ''}")
    want = _fingerprint(extras, reqs)
    if os.path.exists(stamp) and open(stamp).read() == want:
        return
    target = f"{ROOT}[{extras}]" if extras else ROOT
    print(f"[dev.py] installing nn-from-scratch-edu{'[' + extras + ']' if extras else ''} "
          f"{' '.join(reqs)} into {VENV} (first run only)", flush=True)
    subprocess.check_call([PY, "-m", "pip", "install", "--disable-pip-version-check", "-q", "-e", target] + reqs)
    with open(stamp, "w") as f:
        f.write(want)


def main(argv):
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
    return subprocess.call([PY] + cmd + rest)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
