"""Run one layer (or a few) through the engine, as ``fit`` does, for tests that hold a fast path
to the layer's own code, to TensorFlow or to finite differences."""
import os

from nn_from_scratch.engine.runner import Runner


class ThroughEngine:
    """``layers`` (one layer or a list) whose ``forward``/``backward`` go through an engine ``Runner``;
    every other attribute is the (first) layer's, so ``gradcheck.check_layer`` takes it as the layer."""

    def __init__(self, layers, runner=None):
        self.layers = list(layers) if isinstance(layers, (list, tuple)) else [layers]
        self.runner = runner if runner is not None else Runner()

    def forward(self, x):
        return self.runner.forward(self.layers, x)

    def backward(self, g, need_input_grad=True):
        return self.runner.backward(self.layers, g, need_input_grad)

    def __call__(self, x):
        return self.forward(x)

    def units(self):
        """The units the last forward ran (None for a layer run by its own code)."""
        return [unit for _, unit in self.runner._tape[1]]

    def arrangement(self):
        """The convolution arrangement the last forward used (the first unit's)."""
        return self.units()[0].arrangement

    def __getattr__(self, name):
        return getattr(self.__dict__["layers"][0], name)


def record_processes(monkeypatch, unit_class, path):
    """Make ``unit_class.forward`` note, in the file ``path``, the id of every process that runs it
    (the split step's workers are forked: a file is what they share).  Returns a function giving
    the set of process ids seen so far.

    The workers must be forked from this process to inherit the patch, so the split is told this
    process is alone (``engine/parallel/allowed.py``: ``alone``) even where an earlier test left
    idle helper threads here; otherwise they would come from the clean fork server, unpatched."""
    from nn_from_scratch.engine.parallel import allowed
    monkeypatch.setattr(allowed, "alone", lambda: True)
    forward = unit_class.forward

    def recording(self, x):
        with open(path, "a") as f:
            f.write(f"{os.getpid()}\n")
        return forward(self, x)
    monkeypatch.setattr(unit_class, "forward", recording)
    return lambda: {int(p) for p in open(path).read().split()}
