"""Loading code to check or grade: ``module:Class`` specs, modules by dotted name or ``.py`` path.

Used in the grader's own process only for trusted code (the instructor's reference, ``--import``
modules, and the single-layer mode ``grade --layer`` without ``--submissions``, which runs the
student's code in-process: see docs/grading.md, "Two modes").
"""
import importlib
import importlib.util
import os
import sys

__all__ = ["GradeError", "load_class", "import_module"]


class GradeError(Exception):
    """Grading could not start (exit status 2)."""


def load_class(spec):
    """The class named by ``"module:Class"`` or ``"path/to/file.py:Class"``."""
    if not isinstance(spec, str) or ":" not in spec:
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
        if os.path.isdir(path):
            raise GradeError(f"{path} is a folder, not a Python file (from --layer/--import {name!r}); "
                             f"name the file: FOLDER/file.py:Class")
        if not os.path.isfile(path):
            raise GradeError(f"no file {path} (from --layer/--import {name!r})")
        mod_name = os.path.splitext(os.path.basename(path))[0]
        spec = importlib.util.spec_from_file_location(mod_name, path)
        module = importlib.util.module_from_spec(spec)
        sys.modules.setdefault(mod_name, module)
        sys.path.insert(0, os.path.dirname(path))
        try:
            spec.loader.exec_module(module)
        except SystemExit as exc:
            raise GradeError(f"importing {path} called sys.exit({exc.code!r})") from None
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
