"""The import paths people already use keep working, as the same objects (issue 23, item 4).

* the course lab's (seed 001): ``nn_from_scratch.optimizers``, ``.examples.simple_nn``, ``.nodes``,
  ``.neurons``, ``.interfaces``: real modules that re-export the classes from their homes under
  ``layers/`` and ``training/`` (the lab itself runs through them in test_seed_lab.py and test_network.py);
* the flat module paths of earlier versions (``nn_from_scratch.network``, ``...fusion``, ...):
  ``_legacy.OLD_PATHS``, each the very module object now at its new path;
* every ``nn_from_scratch`` import the README shows, and the ones it showed before the restructuring.
"""
import glob
import importlib
import os
import re
import subprocess
import sys

import pytest

from nn_from_scratch import _legacy

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

#: the lab's imports, as the seed writes them (../shared/seeds/001_*.txt, its first cell)
SEED_IMPORTS = [
    "from nn_from_scratch.optimizers import GradientDescent",
    "from nn_from_scratch.examples.simple_nn import NeuralNetwork",
    "from nn_from_scratch.nodes import ReLU, SoftMaxLoss, Vectorization",
    "from nn_from_scratch.neurons import Linear, Convolution",
    "from nn_from_scratch.interfaces import Neuron",
]

#: each name the lab imports -> the module it lives in now
HOMES = {
    "GradientDescent": "nn_from_scratch.training.optimizers",
    "NeuralNetwork": "nn_from_scratch.training.network",
    "ReLU": "nn_from_scratch.layers.activations",
    "SoftMaxLoss": "nn_from_scratch.layers.losses",
    "Vectorization": "nn_from_scratch.layers.reshape",
    "Linear": "nn_from_scratch.layers.dense",
    "Convolution": "nn_from_scratch.layers.conv",
    "Neuron": "nn_from_scratch.layers.base",
}

#: the lab shims: thin modules that only re-export
SHIMS = ["nn_from_scratch.interfaces", "nn_from_scratch.nodes", "nn_from_scratch.neurons",
         "nn_from_scratch.optimizers", "nn_from_scratch.examples.simple_nn"]

#: every nn_from_scratch import line of README.md before issue 23 (they named the flat modules)
README_BEFORE_23 = [
    "from nn_from_scratch import datasets",
    "from nn_from_scratch.optimizers import GradientDescent",
    "from nn_from_scratch.examples.simple_nn import NeuralNetwork",
    "from nn_from_scratch.nodes import ReLU, SoftMaxLoss, Vectorization",
    "from nn_from_scratch.neurons import Linear, Convolution",
    "from nn_from_scratch import DataError",
    "import nn_from_scratch as nf",
    "from nn_from_scratch import backend",
    "from nn_from_scratch.gradcheck import check_layer, check_network",
    "from nn_from_scratch.neurons import Convolution",
    "from nn_from_scratch.interfaces import Node, Neuron",
    "from nn_from_scratch.crosscheck import compare",
    "from nn_from_scratch.crosscheck import compare, compare_training",
    "from nn_from_scratch import EKFAC, KFAC, Flatten",
    "from nn_from_scratch.analysis import curvature",
    "from nn_from_scratch import Adam, Linear, MSELoss, NeuralNetwork, Tanh",
    "from nn_from_scratch.analysis import permutation",
    "from nn_from_scratch.analysis import separation",
]


def _needs_keras(line):
    """The cross-check imports TensorFlow/Keras when it is imported; skip where they are missing."""
    if "crosscheck" in line:
        pytest.importorskip("tensorflow")
        pytest.importorskip("keras")


def _params(values, key=lambda v: v):
    """``values`` as pytest parameters, those that import the cross-check marked ``keras``."""
    return [pytest.param(*v if isinstance(v, tuple) else (v,), marks=[pytest.mark.keras] if "crosscheck" in key(v)
                         else []) for v in values]


# ----------------------------------------------------------------------------- the lab
def test_seed_imports_are_the_seeds():
    """The list above is the seed's first cell (where the seed documents are next to the checkout)."""
    seeds = glob.glob(os.path.join(ROOT, "..", "shared", "seeds", "001_*.txt"))
    if not seeds:
        pytest.skip("the seed documents are not here (../shared/seeds)")
    with open(seeds[0], encoding="utf-8") as f:
        lines = [line.rstrip() for line in f.readlines()[:12]]
    assert [line for line in lines if line.startswith("from nn_from_scratch")] == SEED_IMPORTS


def test_seed_imports_are_the_objects_at_their_new_homes():
    namespace = {}
    for line in SEED_IMPORTS:
        exec(line, namespace)
    for name, home in HOMES.items():
        assert namespace[name] is getattr(importlib.import_module(home), name), (name, home)


@pytest.mark.parametrize("shim", SHIMS)
def test_every_name_a_shim_exports_resolves(shim):
    module = importlib.import_module(shim)
    assert module.__all__, shim
    missing = [name for name in module.__all__ if not hasattr(module, name)]
    assert not missing, f"{shim}.__all__ names what it does not have: {missing}"
    namespace = {}
    exec(f"from {shim} import *", namespace)
    assert set(module.__all__) <= set(namespace)
    # thin: the classes and functions are defined at their homes, not in the shim
    defined_here = [name for name in module.__all__
                    if getattr(getattr(module, name), "__module__", None) == shim]
    assert not defined_here, f"{shim} defines {defined_here} itself instead of re-exporting them"


# ----------------------------------------------------------------------------- the old flat paths
@pytest.mark.parametrize("old,new", _params(sorted(_legacy.OLD_PATHS.items()), key=lambda v: v[0]))
def test_an_old_flat_path_is_the_module_at_its_new_home(old, new):
    _needs_keras(old)
    old_module = importlib.import_module(f"nn_from_scratch.{old}")
    assert old_module is importlib.import_module(f"nn_from_scratch.{new}")


@pytest.mark.keras
def test_a_module_inside_an_old_package_path():
    """``nn_from_scratch.crosscheck.tolerances`` is ``nn_from_scratch.checks.crosscheck.tolerances``
    (the cross-check's ``__init__`` imports TensorFlow/Keras, so importing any of its modules does)."""
    _needs_keras("crosscheck")
    assert (importlib.import_module("nn_from_scratch.crosscheck.tolerances")
            is importlib.import_module("nn_from_scratch.checks.crosscheck.tolerances"))


def test_old_paths_in_a_fresh_interpreter():
    """``from nn_from_scratch import fusion``, ``nn_from_scratch.serialization`` (attribute access, nothing
    imported before), ``import nn_from_scratch.network``: in a new process, where no earlier test has
    imported the modules already."""
    code = "\n".join([
        "import sys, importlib",
        "import nn_from_scratch",
        "assert nn_from_scratch.serialization is importlib.import_module('nn_from_scratch.training.serialization')",
        "from nn_from_scratch import fusion",
        "assert fusion is importlib.import_module('nn_from_scratch.engine.fusion')",
        "import nn_from_scratch.network",
        "assert sys.modules['nn_from_scratch.network'] is sys.modules['nn_from_scratch.training.network']",
        "from nn_from_scratch.network import NeuralNetwork",
        "assert NeuralNetwork is nn_from_scratch.NeuralNetwork",
        "try:",
        "    nn_from_scratch.no_such_module",
        "except AttributeError:",
        "    pass",
        "else:",
        "    raise AssertionError('an unknown attribute did not raise AttributeError')",
        "print('ok')",
    ])
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([ROOT, os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep))
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, env=env,
                          timeout=120)
    assert done.returncode == 0 and done.stdout.strip() == "ok", done.stderr


# ----------------------------------------------------------------------------- the README
_FENCE = re.compile(r"^```(\w*)[^\n]*\n(.*?)^```", re.S | re.M)
_IMPORT = re.compile(r"^\s*(from\s+nn_from_scratch[\w.]*\s+import\s+.+"
                     r"|import\s+nn_from_scratch[\w.]*(\s+as\s+\w+)?)\s*$")


def readme_import_lines():
    """Every ``nn_from_scratch`` import line of the code blocks of README.md and the documentation
    pages (``docs/**/*.md``), parenthesised ones joined."""
    import glob
    text = ""
    for path in [os.path.join(ROOT, "README.md")] + sorted(glob.glob(os.path.join(ROOT, "docs", "**", "*.md"),
                                                                      recursive=True)):
        with open(path, encoding="utf-8") as f:
            text += f.read() + "\n"
    found = []
    for m in _FENCE.finditer(text):
        lines = m.group(2).splitlines()
        i = 0
        while i < len(lines):
            line = lines[i].split("#")[0].rstrip()
            if _IMPORT.match(line):
                while line.count("(") > line.count(")") and i + 1 < len(lines):
                    i += 1
                    line += " " + lines[i].split("#")[0].strip()
                found.append(line.strip())
            i += 1
    return list(dict.fromkeys(found))


def test_the_readme_has_import_lines():
    lines = readme_import_lines()
    assert len(lines) >= 10 and all(line in lines for line in SEED_IMPORTS[:4]), lines


@pytest.mark.parametrize("line", _params(sorted(set(readme_import_lines()) | set(README_BEFORE_23))))
def test_a_readme_import_runs(line):
    _needs_keras(line)
    exec(line, {})


def test_an_old_path_leaves_the_modules_own_spec_so_its_relative_imports_resolve():
    """Importing ``nn_from_scratch.metrics`` must not give ``training.metrics`` the alias's ``__spec__``:
    its lazy relative imports would then warn (``__package__ != __spec__.parent``) or resolve wrongly."""
    code = ("import importlib, warnings\n"
            "warnings.simplefilter('error', ImportWarning)\n"
            "import nn_from_scratch\n"
            "m = importlib.import_module('nn_from_scratch.metrics')\n"
            "assert m.__spec__.name == 'nn_from_scratch.training.metrics', m.__spec__.name\n"
            "m._kind(nn_from_scratch.SoftMaxLoss())\n")
    import subprocess
    import sys
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
