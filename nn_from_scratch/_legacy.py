"""The flat module paths of earlier versions, still importable: ``nn_from_scratch.network`` is
``nn_from_scratch.training.network`` (the same module object, not a copy), and so on.

Course material written before the package had sub-packages imports them; new code uses the
paths of ``docs/ARCHITECTURE.md``.  A dotted old path names a module that moved out of a package
that still exists (``nn_from_scratch.training.kfac_optim`` is ``nn_from_scratch.kfac.optimizers``).  The course labs' own paths (``interfaces``, ``nodes``,
``neurons``, ``optimizers``, ``examples.simple_nn``) are real re-exporting modules beside this.
"""
import importlib
import importlib.abc
import importlib.util
import sys

__all__ = ["OLD_PATHS", "install"]

#: old module (under ``nn_from_scratch.``) -> where it lives now
OLD_PATHS = {
    "activations": "layers.activations", "losses": "layers.losses", "more_losses": "layers.losses",
    "pooling": "layers.pooling", "global_pooling": "layers.global_pooling", "dropout": "layers.dropout",
    "normalization": "layers.normalization", "rectifiers": "layers.activations",
    "initializers": "layers.initializers", "regularizers": "layers.regularizers",
    "patches": "engine.patches", "conv_compute": "engine.conv", "fusion": "engine.fusion",
    "phase_pool": "engine.phase_pool", "kernels": "engine.kernels", "parallel": "engine.parallel",
    "network": "training.network", "kfac_optim": "kfac.optimizers", "schedules": "training.schedules",
    "callbacks": "training.callbacks", "metrics": "training.metrics", "serialization": "training.serialization",
    "concurrency": "training.concurrency", "datasets": "data.datasets", "gradcheck": "checks.gradcheck",
    "grade": "checks.grade", "crosscheck": "checks.crosscheck",
    # modules that moved into another package (a dotted old path: the longest match wins)
    "training.kfac_optim": "kfac.optimizers", "training.kronecker": "kfac.factors",
    "training.layer_statistics": "kfac.statistics", "analysis.kronecker": "kfac.factors",
    "analysis.layer_statistics": "kfac.statistics",
    # modules merged into a neighbour (one family per file): the old module path is the new module
    "layers.rectifiers": "layers.activations", "layers.more_losses": "layers.losses",
}
_PKG = __name__.rpartition(".")[0]


def _target(fullname):
    """The module now holding ``fullname`` (an old path, or a module inside an old package), else None."""
    if not fullname.startswith(_PKG + "."):
        return None
    parts = fullname[len(_PKG) + 1:].split(".")
    for n in range(len(parts), 0, -1):             # the longest old path that is a prefix
        new = OLD_PATHS.get(".".join(parts[:n]))
        if new is not None:
            rest = parts[n:]
            return f"{_PKG}.{new}" + "".join(f".{r}" for r in rest)
    return None


class _OldPaths(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """Finds an old path and hands back the module now there (``sys.modules`` then holds it under both names)."""

    def find_spec(self, fullname, path=None, target=None):
        new = _target(fullname)
        if new is None or importlib.util.find_spec(new) is None:
            return None
        return importlib.util.spec_from_loader(fullname, self)

    def create_module(self, spec):
        module = importlib.import_module(_target(spec.name))
        spec.loader_state = module.__spec__         # the import system gives the module this alias spec;
        return module                               # exec_module puts its own back

    def exec_module(self, module):
        """Nothing to run (the module was imported under its own name): put back its own ``__spec__``,
        so that its relative imports resolve from its own package."""
        alias = module.__spec__
        if alias is not None and alias.loader is self and alias.loader_state is not None:
            module.__spec__ = alias.loader_state


def install():
    """Put the finder on ``sys.meta_path`` (once)."""
    if not any(isinstance(f, _OldPaths) for f in sys.meta_path):
        # first, before the file finders: a submodule of an old package path is then the same module too
        sys.meta_path.insert(0, _OldPaths())
