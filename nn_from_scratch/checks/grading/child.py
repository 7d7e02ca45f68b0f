"""The process a submission runs in: it computes numbers and nothing else (docs/grading.md, "Isolation").

Started by ``sandbox`` (inside bubblewrap where available) with the limits already named on its
command line; it sets them on itself before any student code runs, then answers requests read
from stdin with messages (``protocol``) written to its original stdout.  Everything the student's
code prints goes to stderr (captured, capped, shown to the instructor), never into the answers.

Requests (header ``op``; arrays by name):

* ``init`` {file, cls, args, kwargs}: import the file, build ``cls(*args, **kwargs)``, turn a layer
  with parameters to float64; answer the parameters' names and shapes.
* ``eval`` {x, [upstream], p:NAME...}: set the parameters, forward, and with an upstream gradient
  backward; answer ``y``, ``dx``, ``g:NAME``.
* ``forwards`` {x, p:NAME...} with ``perturb`` = [[array, flat index, delta], ...]: one forward per
  perturbation (the finite differences of the gradient check); answer ``ys`` stacked.
* ``sgd`` {xs, targets, p:NAME...} with ``lr``: plain SGD steps on the mean squared error of the
  flattened output; answer the final ``p:NAME``.
* ``bye``: exit.

Nothing here decides anything: the grader compares the answers with its own reference.
"""
import os
import sys
import traceback

__all__ = ["main", "LAUNCHER"]

#: the ``python -I -c`` program that starts a child: limits first, then this module
LAUNCHER = (
    "import resource, sys\n"
    "mem, cpu, fsize = (int(v) for v in sys.argv[2:5])\n"
    "for lim, v in ((resource.RLIMIT_AS, mem), (resource.RLIMIT_CPU, cpu), (resource.RLIMIT_FSIZE, fsize),\n"
    "               (resource.RLIMIT_CORE, 0)):\n"
    "    if v >= 0:\n"
    "        try:\n"
    "            resource.setrlimit(lim, (v, v))\n"
    "        except (ValueError, OSError):   # a limit this system does not support (RLIMIT_AS on macOS)\n"
    "            pass\n"
    "try:\n"
    "    import ctypes\n"
    "    ctypes.CDLL(None).prctl(1, 9)   # PR_SET_PDEATHSIG, SIGKILL: die with the grader\n"
    "except Exception:\n"
    "    pass\n"
    "sys.path.insert(0, sys.argv[1])\n"
    "from nn_from_scratch.checks.grading.child import main\n"
    "main(sys.argv[5])\n"
)


def _short(exc):
    text = f"{type(exc).__name__}: {exc}"
    return text if len(text) < 2000 else text[:2000] + " ..."


def _where(exc):
    """The last frame of the student's code in a traceback (file:line), for the message."""
    frames = traceback.extract_tb(exc.__traceback__)
    mine = [f for f in frames if "nn_from_scratch" not in f.filename]
    f = (mine or frames or [None])[-1]
    return "" if f is None else f" (at {os.path.basename(f.filename)}:{f.lineno})"


class _Session:
    def __init__(self, workdir):
        self.workdir, self.layer = workdir, None

    def init(self, h, a):
        import importlib.util
        import numpy as np
        path = os.path.join(self.workdir, h["file"])
        if not os.path.isfile(path):
            present = sorted(os.listdir(self.workdir))[:20]
            return {"ok": False, "stage": "import", "error": f"no file {h['file']} in the submission "
                                                             f"(it has: {present})"}, None
        sys.path.insert(0, os.path.dirname(path))
        name = os.path.splitext(os.path.basename(path))[0]
        spec = importlib.util.spec_from_file_location(name, path)
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        try:
            spec.loader.exec_module(module)
        except SystemExit as exc:
            return {"ok": False, "stage": "exit", "error": f"the module called sys.exit({exc.code!r}) when "
                                                           f"imported"}, None
        except BaseException as exc:  # noqa: BLE001 - the student's module
            return {"ok": False, "stage": "import", "error": f"importing {h['file']} raised {_short(exc)}"
                                                             f"{_where(exc)}"}, None
        cls = getattr(module, h["cls"], None)
        if not isinstance(cls, type):
            found = sorted(k for k, v in vars(module).items() if isinstance(v, type))
            return {"ok": False, "stage": "import", "error": f"{h['file']} has no class {h['cls']} "
                                                             f"(its classes: {found})"}, None
        try:
            layer = cls(*h.get("args", []), **h.get("kwargs", {}))
            params = getattr(layer, "params", None) or {}
            if params and hasattr(layer, "astype"):
                layer.astype(np.float64)
                params = getattr(layer, "params", None) or {}
        except SystemExit as exc:
            return {"ok": False, "stage": "exit", "error": f"the constructor called sys.exit({exc.code!r})"}, None
        except BaseException as exc:  # noqa: BLE001
            return {"ok": False, "stage": "construct", "error": f"{h['cls']}(...) raised {_short(exc)}"
                                                                f"{_where(exc)}"}, None
        self.layer = layer
        shapes = {str(k): [int(s) for s in np.shape(v)] for k, v in params.items()}
        return {"ok": True, "params": shapes}, None

    def _set_params(self, a):
        import numpy as np
        params = getattr(self.layer, "params", None) or {}
        for key, value in a.items():
            if not key.startswith("p:"):
                continue
            name = key[2:]
            if name not in params:
                raise KeyError(f"the layer has no parameter {name!r} (it has {sorted(params)})")
            target = params[name]
            if tuple(np.shape(target)) != value.shape:
                raise ValueError(f"parameter {name!r} has shape {tuple(np.shape(target))}, the reference's "
                                 f"is {value.shape}")
            target[...] = value

    def _grads(self):
        import numpy as np
        grads = getattr(self.layer, "grads", None) or {}
        return {f"g:{k}": np.asarray(v, dtype=np.float64) for k, v in grads.items()}

    def eval(self, h, a):
        import numpy as np
        self._set_params(a)
        try:
            self.layer.training = True      # batch statistics, dropout on: as the reference runs
        except Exception:  # noqa: BLE001 - a class without a settable flag computes as it does
            pass
        y = np.asarray(self.layer.forward(a["x"].copy()), dtype=np.float64)
        out = {"y": y}
        if "upstream" in a:
            dx = self.layer.backward(a["upstream"].copy())
            out["dx"] = np.asarray(dx, dtype=np.float64)
            out.update(self._grads())
        return {"ok": True}, out

    def forwards(self, h, a):
        import numpy as np
        self._set_params(a)
        x = a["x"].copy()
        params = getattr(self.layer, "params", None) or {}
        ys = []
        for target, flat, delta in h["perturb"]:
            arr = x if target == "x" else params[target]
            idx = np.unravel_index(int(flat), np.shape(arr))
            old = arr[idx]
            arr[idx] = old + float(delta)
            try:
                ys.append(np.asarray(self.layer.forward(x), dtype=np.float64).copy())
            finally:
                arr[idx] = old
        return {"ok": True}, {"ys": np.stack(ys) if ys else np.zeros((0,))}

    def sgd(self, h, a):
        import numpy as np
        self._set_params(a)
        params = getattr(self.layer, "params", None) or {}
        lr = float(h["lr"])
        for x, t in zip(a["xs"], a["targets"]):
            y = np.asarray(self.layer.forward(x.copy()), dtype=np.float64)
            dy = (2.0 / y.size) * (y.reshape(t.shape) - t)
            self.layer.backward(dy.reshape(y.shape))
            grads = getattr(self.layer, "grads", None) or {}
            for name, p in params.items():
                p -= lr * np.asarray(grads[name], dtype=np.float64)
        return {"ok": True}, {f"p:{k}": np.asarray(v, dtype=np.float64) for k, v in params.items()}


def main(workdir):
    """Serve requests until ``bye`` or the end of stdin."""
    from .protocol import ProtocolError, read_message, write_message
    answers = os.dup(1)
    os.dup2(2, 1)                   # the student's prints (sys.stdout, os.write(1, ...)) go to stderr
    session = _Session(workdir)
    while True:
        try:
            h, a = read_message(0)
        except (ProtocolError, OSError):
            return
        op = h.get("op")
        if op == "bye":
            return
        try:
            if op != "init" and session.layer is None:
                raise RuntimeError("no layer: init first")
            header, arrays = getattr(session, op)(h, a)
        except SystemExit as exc:
            header, arrays = {"ok": False, "error": f"the layer called sys.exit({exc.code!r})"}, None
        except MemoryError as exc:
            header, arrays = {"ok": False, "error": f"MemoryError{_where(exc)}: more memory than the limit"}, None
        except BaseException as exc:  # noqa: BLE001 - the student's code
            header, arrays = {"ok": False, "error": f"{_short(exc)}{_where(exc)}"}, None
        try:
            write_message(answers, header, arrays)
        except MemoryError:
            write_message(answers, {"ok": False, "error": "MemoryError while sending the answer"})
