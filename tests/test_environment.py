"""The development environment means the same thing twice: pinned packages, derandomized Hypothesis.

``requirements/lock.txt`` pins every package of the dev/test environment; ``dev.py``
installs with it as pip constraints for every job; ``setup.cfg`` keeps version
ranges for users.  Every Hypothesis test draws the same examples on every run.
"""
import ast
import glob
import importlib
import importlib.metadata
import os
import re
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TESTS = os.path.join(ROOT, "tests")
LOCK = os.path.join(ROOT, "requirements", "lock.txt")
PIN = re.compile(r"^([A-Za-z0-9_.\-]+)==([^\s;]+)$")


def _lock():
    with open(LOCK, encoding="utf-8") as f:
        lines = [ln.strip() for ln in f if ln.strip() and not ln.startswith("#")]
    return lines


def _norm(name):
    return re.sub(r"[-_.]+", "-", name).lower()


def test_lock_pins_every_line_exactly():
    lines = _lock()
    assert len(lines) > 50, "the lock should hold the whole dev/test environment"
    bad = [ln for ln in lines if not PIN.match(ln)]
    assert not bad, f"lines that are not exact pins (name==version): {bad}"
    names = [_norm(PIN.match(ln).group(1)) for ln in lines]
    assert len(names) == len(set(names)), "a package is pinned twice"
    assert "nn-from-scratch-edu" not in names, "the project itself is not pinned"


def _marker_applies(marker):
    from packaging.markers import Marker  # noqa: PLC0415  (pip's and setuptools' dependency)
    return Marker(marker.strip()).evaluate()


def test_lock_covers_the_dev_extra():
    """Every requirement of the dev extra (and the package's own) is pinned."""
    import configparser
    cfg = configparser.ConfigParser()
    cfg.read(os.path.join(ROOT, "setup.cfg"))
    lines = (cfg["options"]["install_requires"] + "\n" + cfg["options.extras_require"]["dev"]).splitlines()
    wanted = set()
    for line in (ln.strip() for ln in lines):
        if not line:
            continue
        requirement, _, marker = line.partition(";")
        if marker and not _marker_applies(marker):
            continue                      # e.g. tomli on Python < 3.11: not part of this environment
        wanted.add(_norm(re.split(r"[<>=!~\[ ]", requirement.strip())[0]))
    pinned = {_norm(PIN.match(ln).group(1)) for ln in _lock()}
    assert wanted - pinned == set(), f"in setup.cfg but not in the lock: {sorted(wanted - pinned)}"


def test_setup_cfg_keeps_ranges_for_users():
    import configparser
    cfg = configparser.ConfigParser()
    cfg.read(os.path.join(ROOT, "setup.cfg"))
    for req in cfg["options"]["install_requires"].split():
        assert "==" not in req, f"install_requires must stay a range for users, found {req}"


@pytest.mark.skipif(os.environ.get("CI") != "true", reason="the environment dev.py builds is checked in CI")
def test_installed_versions_are_the_locked_ones():
    """In CI (dev.py's environment) what is installed is what the lock says."""
    wrong = []
    for ln in _lock():
        name, version = PIN.match(ln).groups()
        try:
            have = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            continue  # a package of another job (PyTorch for the benchmarks)
        if have != version:
            wrong.append(f"{name}: locked {version}, installed {have}")
    assert not wrong, wrong


def test_dev_py_installs_every_job_with_the_lock(monkeypatch, tmp_path):
    """Every job's install goes through ``pip install -c requirements/lock.txt`` (pip itself faked)."""
    sys.path.insert(0, ROOT)
    try:
        dev = importlib.import_module("dev")
    finally:
        sys.path.remove(ROOT)
    calls = []
    monkeypatch.setattr(dev, "_pip", lambda python, args: calls.append(args))
    for job, (extras, reqs, _) in dev.JOBS.items():
        venv = tmp_path / job  # a fresh environment per job
        venv.mkdir()
        (venv / "python").write_text("")
        monkeypatch.setattr(dev, "VENV", str(venv))
        monkeypatch.setattr(dev, "PY", str(venv / "python"))
        calls.clear()
        dev.ensure_env(extras, reqs)
        assert calls and calls[0][:2] == ["-c", dev.LOCK], f"job {job} installs without the lock: {calls}"
        calls.clear()
        dev.ensure_env(extras, reqs)
        assert not calls, f"job {job} reinstalls although nothing changed"


def _hypothesis_tests():
    for path in sorted(glob.glob(os.path.join(TESTS, "test_*.py"))):
        with open(path, encoding="utf-8") as f:
            if "from hypothesis import" not in f.read() or path == __file__:
                continue
        name = os.path.splitext(os.path.basename(path))[0]
        yield name


@pytest.mark.parametrize("module", list(_hypothesis_tests()))
def test_every_hypothesis_test_is_derandomized_without_database(module):
    mod = importlib.import_module(module)
    found = 0
    for name in dir(mod):
        fn = getattr(mod, name)
        inner = getattr(getattr(fn, "hypothesis", None), "inner_test", None)
        if inner is None:
            continue
        found += 1
        s = getattr(fn, "_hypothesis_internal_use_settings", None)
        assert s is not None and s.derandomize, f"{module}.{name} is not derandomized"
        assert s.database is None, f"{module}.{name} keeps an example database"
    assert found, f"{module} imports hypothesis but no @given test was found"
