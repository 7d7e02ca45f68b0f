"""``NeuralNetwork``: a sequence of layers, a loss and an optimizer, with a trainer.

Training loop (one step per batch)::

    logits = layers[-1](... layers[0](x))        forward, every layer caches
    loss   = loss_fn.forward(logits, y)
    g      = loss_fn.backward()                  dL/dlogits
    for layer in reversed(layers):               backward, neurons store grads
        g = layer.backward(g)
    optimizer.step(layers)                       update in place

That is what runs with ``engine=False``.  With the engine on (the default), the forward and
backward passes go through ``engine.runner.Runner``, which runs the layer patterns it has fast
paths for (exact classes: ``Convolution``, ``ReLU -> MaxPool``, ...) by those, every other layer
by its own code, and splits a batch over worker processes where every layer allows it
(``engine/parallel.py``); the numbers are the layers' own to float rounding
(tests/test_engine_switch.py).  ``docs/ARCHITECTURE.md`` draws the whole flow.

Data may be given as whole arrays ``fit(X, y, epochs=, batch_size=)`` (integer or
one-hot labels) or, as in the seed lab, already cut into batches
``fit(X_batches, Y_batches, n_epochs=)`` with ``X_batches: (n_batches, batch, *S)``.

Host <-> device traffic during ``fit`` (CuPy backend): the data set goes to the
device once when it fits in a quarter of the free device memory (otherwise each
batch goes in as it is used; the shuffling order, drawn on the host so that both
backends see the same batches, goes in once per epoch); the only device -> host
reads are ``backend.read_to_host`` calls: the running loss/accuracy at most
every ``trainer._Trainer.REFRESH_INTERVAL`` seconds (for the progress bar and the
NaN/rise checks), the epoch's last one bringing all its batch losses, one read
for a validation pass, and the input checks at the start of ``fit``.
"""
import contextlib
import functools
import inspect
import json
import math
import warnings

import numpy as np

from ..engine.runner import Runner
from .. import validation
from ..validation import DataError
from . import metrics as metrics_mod
from ..layers import regularizers
from .callbacks import CallbackList, TerminateOnNaN
from .concurrency import guarded
from ..backend import get_array_module, read_scalars, to_device, to_numpy
from ..layers.base import Neuron, Node, ShapeError, format_shape
from ..layers.losses import Loss, SoftMaxLoss, labels_to_indices
from .optimizers import GradientDescent
from .optimizers import get as get_optimizer
from .optimizer_base import optimizer_class
from ..engine.parallel import make_step, shard_count
from .trainer import History, TrainingWarning, _Trainer
from .serialization import (FORMAT, FORMAT_VERSION, ModelFileError, build_layer, layer_config,
                            read_model_file, write_npz_atomic)

__all__ = ["NeuralNetwork", "History", "TrainingWarning", "DataError"]


class _hybridmethod:
    """Instance method on instances, class method on the class (for ``load``)."""

    def __init__(self, finstance, fclass):
        # fclass may be a classmethod object (not callable itself): keep its function
        self.finstance, self.fclass = finstance, getattr(fclass, "__func__", fclass)
        functools.update_wrapper(self, finstance)

    def __get__(self, obj, cls):
        if obj is None:
            return functools.partial(self.fclass, cls)
        return functools.partial(self.finstance, obj)


def _shape_matches(got, expected):
    return len(got) == len(expected) and all(e is None or e == g for g, e in zip(got, expected))


def _loss_forward(loss_fn, out, yb, sample_weight):
    """The batch's loss; ``sample_weight`` is passed only when there are weights, so a loss
    written against the older ``forward(prediction, target, validate=True)`` still works."""
    if sample_weight is None:
        return loss_fn.forward(out, yb, validate=False)
    params = inspect.signature(loss_fn.forward).parameters
    if "sample_weight" not in params and not any(p.kind is p.VAR_KEYWORD for p in params.values()):
        raise TypeError(f"{type(loss_fn).__name__}.forward(prediction, target, validate) takes no "
                        "sample_weight: to train with sample_weight/class_weight, accept "
                        "forward(..., sample_weight=None) and pass it on to Loss.forward")
    return loss_fn.forward(out, yb, validate=False, sample_weight=sample_weight)


class NeuralNetwork:
    """A feed-forward network: ``layers`` applied in order, then ``loss_fn``.

    Parameters (all keywords work as in the seed lab)::

        NeuralNetwork(n_input=784, n_output=10, batch_size=50, optimizer=GradientDescent(0.05),
                      layers=[...], loss_fn=SoftMaxLoss((50, 10)))

    ``n_input``/``n_output`` are checked against the layers when given;
    ``batch_size`` is the default for ``fit``/``predict``.  ``input_shape``
    (per sample, e.g. ``(1, 28, 28)``) is needed only when the first layer does
    not know its input size.

    ``engine``: True (the default) runs ``fit``, ``train_step``, ``predict``, ``evaluate``,
    ``forward`` and ``backward`` through the engine (``engine/runner.py``: fast paths for the
    layer patterns it knows, the worker split); False runs every layer's own ``forward`` and
    ``backward`` in order, nothing else, e.g. to see the effect of editing ``ReLU.backward`` in
    ``fit``.  ``net.engine = False`` switches it later.

    ``workers``: with the engine on, training steps on NumPy split a batch over this many worker
    processes on Linux, threads elsewhere (``"auto"``: the usable CPU cores; shards
    of at least ``parallel.MIN_SHARD_PROCESSES`` / ``MIN_SHARD`` samples; 1 turns it
    off; see ``nn_from_scratch/engine/parallel.py``).  Results agree with the one-worker
    step to float rounding.  The workers are kept between ``fit`` calls while the
    layers keep their settings (``stop_workers`` ends them); while they are there,
    ``predict`` and ``evaluate`` (``fit``'s validation too) split their batches'
    forward passes over them as well.  Batches are split only in the main thread while no other
    thread could be inside BLAS (``parallel.split_allowed``); from other threads the steps run
    whole, with ``workers=1``'s numbers.  One network used from several threads: inference is
    serialized, concurrent training refused (``concurrency.py``).
    """

    def __init__(self, layers, loss_fn=None, optimizer=None, n_input=None, n_output=None,
                 batch_size=32, input_shape=None, name="network", workers="auto", metrics=None, engine=True):
        layers = list(layers)
        if not layers:
            raise ValueError("NeuralNetwork needs at least one layer")
        for i, layer in enumerate(layers):
            if not isinstance(layer, Node) or isinstance(layer, Loss):
                raise TypeError(f"layers[{i}] is {type(layer).__name__}, not a layer (Node/Neuron); "
                                "pass the loss as loss_fn=")
        names = [layer.name for layer in layers]
        dup = sorted({n for n in names if names.count(n) > 1})
        if dup:
            raise ValueError(f"layer names must be unique, repeated: {dup}")
        self.layers = layers
        self.loss_fn = loss_fn if loss_fn is not None else SoftMaxLoss()
        if not isinstance(self.loss_fn, Loss):
            raise TypeError(f"loss_fn must be a Loss (e.g. SoftMaxLoss), received {type(self.loss_fn).__name__}")
        self.optimizer = get_optimizer(optimizer) if optimizer is not None else GradientDescent(lr=0.01)
        self.batch_size = validation.count("NeuralNetwork", "batch_size", batch_size)
        if not isinstance(name, str):
            raise TypeError(f"NeuralNetwork: name must be a str, received {type(name).__name__} {name!r}")
        self.name = name
        if workers != "auto" and not (isinstance(workers, (int, np.integer)) and workers >= 1):
            raise ValueError(f"NeuralNetwork: workers must be 'auto' or an int >= 1, received {workers!r}")
        self.workers = workers
        self._sharded = None
        self._runner = Runner()
        self.engine = engine
        self.history = History()
        self._training = True
        #: set by a callback (``self.network.stop_training = True``) to end ``fit`` after this batch
        self.stop_training = False
        self.input_shape = tuple(input_shape) if input_shape is not None else layers[0].input_shape
        self._shapes = self._infer_shapes()
        if n_input is not None and self.input_shape is not None and None not in self.input_shape:
            if int(np.prod(self.input_shape)) != int(n_input):
                raise ShapeError(f"n_input={n_input} but the first layer takes samples of shape "
                                 f"{self.input_shape} ({int(np.prod(self.input_shape))} values)")
        out = self._shapes[-1] if self._shapes else None
        if n_output is not None and out is not None and None not in out:
            if int(np.prod(out)) != int(n_output):
                raise ShapeError(f"n_output={n_output} but the last layer gives samples of shape {out}")
        self.n_input, self.n_output = n_input, n_output
        #: the metrics ``fit`` and ``evaluate`` report (besides the loss; ``accuracy`` always for a
        #: classifier): names or ``nn_from_scratch.metrics.Metric`` objects (see that module)
        self.metrics = self._resolve_metrics(metrics, "NeuralNetwork(metrics=)")

    @property
    def engine(self):
        """True: the passes run through the engine (fast paths, worker split); False: every
        layer's own ``forward``/``backward`` in order (see the class docstring)."""
        return self._engine

    @engine.setter
    def engine(self, on):
        on = validation.flag("NeuralNetwork", "engine", on)
        if not on:
            self._drop_shards()
        self._runner.clear()
        self._engine = on

    def _resolve_metrics(self, specs, where):
        return metrics_mod.resolve(specs, self.loss_fn, where)

    def _sample_weights(self, sample_weight, class_weight, y, n, where):
        """``(n,)`` float64 host weights from ``sample_weight`` or ``class_weight`` (Keras: a class
        missing from the dict weighs 1; not both at once), or None."""
        if sample_weight is not None and class_weight is not None:
            raise ValueError(f"{where}: give sample_weight or class_weight, not both (as Keras)")
        if sample_weight is not None:
            w = np.asarray(to_numpy(sample_weight))
            if w.ndim == 2 and w.shape[1] == 1:
                w = w.reshape(-1)
            if w.ndim != 1 or w.shape[0] != n:
                raise DataError(f"{where}: sample_weight must have shape ({n},), one weight per sample, "
                                f"received {format_shape(tuple(w.shape))}")
            if w.dtype.kind not in "biuf":
                raise DataError(f"{where}: sample_weight must be numbers, received dtype {w.dtype}")
            w = w.astype(np.float64)
            if not np.all(np.isfinite(w)) or (w < 0).any():
                raise DataError(f"{where}: sample_weight must be finite and >= 0, received values in "
                                f"[{np.nanmin(w)}, {np.nanmax(w)}]" + (" with NaN/Inf" if not np.all(np.isfinite(w)) else ""))
            return w
        if class_weight is None:
            return None
        if not isinstance(self.loss_fn, SoftMaxLoss):
            raise ValueError(f"{where}: class_weight needs class labels, but the loss is {type(self.loss_fn).__name__}")
        if not isinstance(class_weight, dict):
            raise TypeError(f"{where}: class_weight must be a dict {{class index: weight}}, received "
                            f"{type(class_weight).__name__}")
        k = self.output_shape[0] if self.output_shape else None
        table = np.ones(k if k is not None else int(to_numpy(y).max()) + 1)
        for c, wc in class_weight.items():
            if isinstance(c, bool) or not isinstance(c, (int, np.integer)) or not 0 <= c < len(table):
                raise ValueError(f"{where}: class_weight keys must be class indices in [0, {len(table)}), "
                                 f"received {c!r}")
            if isinstance(wc, bool) or not isinstance(wc, (int, float, np.integer, np.floating)) \
                    or not (math.isfinite(wc) and wc >= 0):
                raise ValueError(f"{where}: class_weight[{c}] must be a finite number >= 0, received {wc!r}")
            table[int(c)] = float(wc)
        labels = np.asarray(to_numpy(y))
        labels = labels.argmax(axis=1) if labels.ndim == 2 else labels
        return table[labels.astype(np.int64)]

    # ------------------------------------------------------------------ shapes
    def _infer_shapes(self):
        """Per-sample output shape of each layer; checks neighbours fit together."""
        shapes = []
        shape = self.input_shape
        for i, layer in enumerate(self.layers):
            if layer.input_shape is not None and shape is not None:
                if not _shape_matches(shape, layer.input_shape) and not _shape_matches(layer.input_shape, shape):
                    prev = f"layer {i - 1} ({self.layers[i - 1].name}) outputs" if i else "the network input is"
                    hint = ""
                    if i and type(self.layers[i - 1]).compute_output_shape is Node.compute_output_shape:
                        hint = (f"; {type(self.layers[i - 1]).__name__} does not define compute_output_shape, so "
                                f"its output is assumed to have its input's shape: if it changes the shape, "
                                f"define compute_output_shape(self, input_shape) returning the per-sample output shape")
                    raise ShapeError(
                        f"layer {i} ({layer._describe()}) expects samples of shape "
                        f"{format_shape(layer.input_shape)} but {prev} {format_shape(shape)}{hint}"
                    )
            known = layer.input_shape if layer.input_shape is not None else shape
            if known is None:
                shape = None
            elif layer.input_shape is None:
                shape = layer.compute_output_shape(known)
            else:
                merged = tuple(a if a is not None else b for a, b in zip(layer.input_shape, shape or layer.input_shape))
                shape = layer.compute_output_shape(merged)
            shapes.append(shape)
        return shapes

    @property
    def output_shape(self):
        return self._shapes[-1]

    @property
    def trainable_layers(self):
        return [layer for layer in self.layers if isinstance(layer, Neuron)]

    def count_params(self):
        return sum(layer.count_params() for layer in self.layers)

    def get_weights(self, to_host=True):
        """Copies of every layer's parameters and buffers (BatchNorm's moving statistics), in order (NumPy arrays unless ``to_host=False``,
        which keeps them on the parameters' device); ``set_weights`` puts them back."""
        conv = to_numpy if to_host else (lambda a: a)
        return [conv(p).copy() for layer in self.layers
                for p in list(layer.params.values()) + list(layer.buffers.values())]

    def set_weights(self, weights):
        """Replace every layer's parameters by ``weights`` (the order of ``get_weights``)."""
        weights = list(weights)
        slots = [s for layer in self.layers for s in
                 [(layer, k, False) for k in layer.params] + [(layer, k, True) for k in layer.buffers]]
        if len(weights) != len(slots):
            raise ValueError(f"set_weights: this network has {len(slots)} parameter arrays, "
                             f"received {len(weights)}")
        for (layer, k, buffer), w in zip(slots, weights):
            if buffer:
                layer.set_buffers(**{k: w})
            else:
                layer.set_params(**{k: w})
        return self

    @property
    def dtype(self):
        ts = self.trainable_layers
        return ts[0].dtype if ts else np.dtype(np.float32)

    def astype(self, dtype):
        """Convert every parameter to ``dtype`` (e.g. float64 for gradient checks)."""
        for layer in self.trainable_layers:
            layer.astype(dtype)
        self.optimizer.reset()
        return self

    # ---------------------------------------------------- training / inference mode
    @property
    def training(self):
        """The mode last set by ``train``/``eval`` (True at first; ``fit`` and ``inference`` restore it)."""
        return self._training

    def train(self, mode=True):
        """Put every layer (and the loss) in training mode (``mode=False``: inference mode); returns self.

        Training mode: ``Dropout`` drops, ``BatchNorm`` normalises with the batch's statistics and
        updates its running ones.  Inference mode: ``Dropout`` is the identity, ``BatchNorm`` uses the
        running statistics.  ``fit`` trains and ``predict``/``evaluate``/``layer_outputs``/
        ``input_gradient``/``gradients`` infer whatever the mode, each restoring the mode after; a
        loop of your own (``forward``, ``backward``, ``train_step``) runs in the mode set here, as in
        PyTorch (``model.train()``/``model.eval()``).  One layer's mode: ``layer.training = False``.
        """
        if not isinstance(mode, (bool, np.bool_)):
            raise TypeError(f"{self.name}.train: mode must be True (training) or False (inference), "
                            f"received {mode!r}")
        for layer in list(self.layers) + [self.loss_fn]:
            layer.training = bool(mode)
        self._training = bool(mode)
        return self

    def eval(self):
        """Inference mode for every layer (``train(False)``); returns self."""
        return self.train(False)

    @contextlib.contextmanager
    def _mode(self, training):
        """Run the block with every layer in ``training`` mode, then give each layer back its own mode."""
        nodes = list(self.layers) + [self.loss_fn]
        saved, net_saved = [node.training for node in nodes], self._training
        self.train(training)
        try:
            yield self
        finally:
            for node, mode in zip(nodes, saved):
                node.training = mode
            self._training = net_saved

    def inference(self):
        """Context manager: ``with net.inference(): ...`` runs the block in inference mode (``eval``)
        and then gives every layer back the mode it had (for your own forward passes; ``predict``
        and the other analysis methods do this themselves)."""
        return self._mode(False)

    # ------------------------------------------------------------ input checks
    def _adapt(self, X, batched, where):
        """Return X with the sample shape the first layer takes (adds a missing channel axis)."""
        lead = 2 if batched else 1
        expected = self.input_shape
        if expected is None:
            return X
        got = tuple(X.shape[lead:])
        if _shape_matches(got, expected):
            return X
        if len(expected) == len(got) + 1 and expected[0] == 1 and _shape_matches(got, expected[1:]):
            return X.reshape(X.shape[:lead] + (1,) + got)
        what = "batches of samples" if batched else "samples"
        raise DataError(
            f"{where}: the first layer ({self.layers[0]._describe()}) takes {what} of shape "
            f"{format_shape(expected)}, received data of shape {format_shape(tuple(X.shape))}"
        )

    def _is_batched(self, X):
        """True for the seed's pre-batched layout (n_batches, batch, *sample)."""
        expected = self.input_shape
        if expected is None:
            first = self.layers[0]
            nd = getattr(first, "ndim", None)
            return nd is not None and X.ndim == nd + 3
        if _shape_matches(tuple(X.shape[1:]), expected):
            return False
        if _shape_matches(tuple(X.shape[2:]), expected):
            return True
        if expected[0] == 1 and len(expected) > 1:
            if _shape_matches(tuple(X.shape[1:]), expected[1:]):
                return False
            if _shape_matches(tuple(X.shape[2:]), expected[1:]):
                return True
        return False

    @staticmethod
    def _check_finite(X, where):
        xp = get_array_module(X)
        if X.dtype.kind in "fc":
            (bad,) = read_scalars((~xp.isfinite(X)).sum(), why="check")
            if bad:
                raise DataError(f"{where}: the input contains {int(bad)} NaN/Inf value(s); clean the data first")

    def _prepare_xy(self, X, y, where):
        """Validate and normalise (X, y) to flat (N, *S) data and labels."""
        if not hasattr(X, "shape"):
            X = np.asarray(X)
        if y is not None and not hasattr(y, "shape"):
            y = np.asarray(y)
        if not hasattr(X, "dtype") or X.dtype.kind not in "fiub":
            kind = getattr(X, "dtype", type(X).__name__)
            raise DataError(f"{where}: X must be an array of real numbers (float, int or bool), received {kind}"
                            + (" (the imaginary part would be dropped)" if getattr(kind, "kind", "") == "c" else
                               " (an object array may hide None or NaN: convert it with np.asarray(X, float))"
                               if getattr(kind, "kind", "") == "O" else ""))
        if X.ndim < 1:
            raise DataError(f"{where}: X must hold samples along its first axis, received a 0-d array")
        if y is not None and y.ndim < 1:
            raise DataError(f"{where}: y must hold one label or target per sample, received a 0-d array")
        batched = self._is_batched(X)
        X = self._adapt(X, batched, where)
        if batched:
            if y is not None and y.shape[0] != X.shape[0]:
                raise DataError(
                    f"{where}: X holds {X.shape[0]} batches but y holds {y.shape[0]} batches "
                    f"(X shape {format_shape(tuple(X.shape))}, y shape {format_shape(tuple(y.shape))}); "
                    "they must have the same number of batches"
                )
            if y is not None and (y.ndim < 2 or y.shape[1] != X.shape[1]):
                raise DataError(f"{where}: X has batches of {X.shape[1]} samples but y has shape "
                                f"{format_shape(tuple(y.shape))}")
            batch = X.shape[1]
            X = X.reshape((-1,) + tuple(X.shape[2:]))
            if y is not None:
                y = y.reshape((-1,) + tuple(y.shape[2:]))
        else:
            batch = None
            if y is not None and y.shape[0] != X.shape[0]:
                raise DataError(f"{where}: X has {X.shape[0]} samples but y has {y.shape[0]} labels; "
                                "they must be the same number")
        if X.shape[0] == 0:
            raise DataError(f"{where}: no samples")
        self._check_finite(X, where)
        if y is not None:
            y = self._check_labels(y, X.shape[0], where)
        return X, y, batch

    def _check_labels(self, y, n, where):
        out = self.output_shape
        if isinstance(self.loss_fn, SoftMaxLoss):
            k = out[0] if out is not None else None
            if y.ndim == 2 and (k is None or y.shape[1] == k) and y.shape[1] > 1:
                if y.dtype.kind not in "fiub":
                    raise DataError(f"{where} (labels): one-hot rows must be numbers, received dtype {y.dtype}")
                self._check_finite(y, where + " (labels)")
                if y.size == 0:
                    return y
                xp = get_array_module(y)
                lo, worst = read_scalars(y.min(), xp.abs(y.sum(axis=1, dtype=np.float64) - 1).max(), why="check")
                if lo < 0 or worst > 1e-3:
                    raise DataError(f"{where} (labels): one-hot (or probability) rows must be >= 0 and sum to 1, "
                                    f"received a smallest entry {float(lo):.4g} and a row sum off by up to "
                                    f"{float(worst):.4g} (an all-zero row gives loss 0, a negative one a loss < 0)")
                return y
            if y.ndim == 2 and y.shape[1] == 1:
                y = y.reshape(-1)
            if y.ndim != 1:
                raise DataError(f"{where}: labels must be integers (N,) or one-hot rows (N, {k}), "
                                f"received shape {format_shape(tuple(y.shape))}")
            try:
                idx = labels_to_indices(y, k, where=f"{where} (labels)")
            except ValueError as exc:
                raise DataError(str(exc)) from None
            lo, hi = (int(v) for v in read_scalars(idx.min(), idx.max(), why="check"))
            if lo < 0 or (k is not None and hi >= k):
                raise DataError(f"{where}: labels must be in [0, {k}) for {k} outputs, received values in "
                                f"[{lo}, {hi}]")
            return idx
        if out is not None and not _shape_matches(tuple(y.shape[1:]), out):
            raise DataError(f"{where}: targets must have shape {format_shape((None,) + tuple(out))}, "
                            f"received {format_shape(tuple(y.shape))}")
        self._check_finite(y, where + " (targets)")
        return y

    # ------------------------------------------------------- forward/backward
    def forward(self, x, return_all=False):
        """Output of the last layer for a batch (or all layer outputs, in order).

        With the engine on, through the engine's runner (``engine/runner.py``: e.g. a ``ReLU``
        directly followed by a ``MaxPool`` runs as pooling then ReLU, on the pooled output, the
        same numbers and gradients with less work); ``return_all`` then runs no layers together,
        so that every output exists.  With ``engine=False``, each layer's own ``forward`` in order.
        """
        if self._engine:
            return self._runner.forward(self.layers, x, return_all=return_all)
        outs = []
        for layer in self.layers:
            x = layer.forward(x)
            outs.append(x)
        return outs if return_all else x

    def backward(self, upstream, need_input_grad=True):
        """Backpropagate ``dL/doutput`` through every layer; returns ``dL/dinput``.

        Every neuron's ``grads`` hold the parameter gradients afterwards.  With the engine on, as
        the runner ran the last ``forward`` (its units' backward, every other layer's own); with
        ``engine=False``, each layer's own ``backward`` in reverse order.
        """
        if self._engine:
            return self._runner.backward(self.layers, upstream, need_input_grad)
        g = upstream
        for i in range(len(self.layers) - 1, -1, -1):
            g = self.layers[i].backward(g, need_input_grad=i > 0 or need_input_grad)
        return g

    def _to_batch(self, X):
        return to_device(X, like=self._param_like(), dtype=self.dtype)

    def _param_like(self):
        ts = self.trainable_layers
        return next(iter(ts[0].params.values())) if ts else None

    @guarded(training=True)
    def train_step(self, xb, yb):
        """One forward/backward/update on a batch already on the right device; returns the loss.

        The labels are checked as ``fit`` checks them (range, one-hot rows; label -1 would train
        on the last class, 7 of 3 fail deep in the loss)."""
        if not hasattr(xb, "shape") or not hasattr(xb, "dtype"):
            raise TypeError(f"train_step: xb must be an array (NumPy or CuPy), received {type(xb).__name__}")
        if not hasattr(yb, "shape"):
            yb = np.asarray(yb)
        if xb.dtype.kind not in "fiub":
            raise DataError(f"train_step: xb must hold real numbers, received dtype {xb.dtype}")
        if yb.ndim < 1 or xb.ndim < 1 or yb.shape[0] != xb.shape[0]:
            raise DataError(f"train_step: xb has shape {format_shape(tuple(xb.shape))} but yb has shape "
                            f"{format_shape(tuple(yb.shape))}; one label or target per sample")
        if yb.shape[0]:                 # an empty batch: the loss names itself (its own check)
            yb = to_device(self._check_labels(yb, xb.shape[0], "train_step"), like=xb)
        loss, out = self._forward_backward(xb, yb)
        self.optimizer.step(self.layers)
        return loss, out

    def _forward_backward(self, xb, yb, recheck=True, sample_weight=None):
        """``(loss, output)`` of a batch, every neuron's ``grads`` set (``_forward_backward_data``),
        the layers' weight penalties (``regularizers``) added to the loss and the gradients."""
        loss, out = self._forward_backward_data(xb, yb, recheck, sample_weight)
        if regularizers.has_any(self.layers):
            loss = loss + regularizers.apply(self.layers)
        return loss, out

    def _forward_backward_data(self, xb, yb, recheck=True, sample_weight=None):
        """``(loss, output)`` of a batch, every neuron's ``grads`` set; split over worker processes
        (or threads) when ``parallel.shard_count`` says so, else the plain loop.

        ``recheck=False``: nothing that could change a layer ran since the last split step
        (``fit`` within an epoch), so the split's ``matches`` check is skipped.
        ``sample_weight``: the batch's weights ``(B,)``; such a batch runs in this process.

        An optimizer whose ``needs_layer_statistics`` is True at this step (K-FAC: every
        ``cov_every``-th) runs the pass itself, in this process, layer by layer, to see each
        layer's input and per-example output gradient (``optimizer.forward_backward``,
        ``kfac_optim.py``); other optimizers never take this branch."""
        if getattr(self.optimizer, "needs_layer_statistics", False):
            return self.optimizer.forward_backward(self, xb, yb, sample_weight=sample_weight)
        shards = shard_count(self, xb.shape[0]) if sample_weight is None else 1
        failed = None
        if shards > 1:
            randoms = [(layer, layer.random_state()) for layer in self.layers if hasattr(layer, "random_state")]
            try:
                split = self._sharded
                if split is None or split.shards != shards or (recheck and not split.matches(self, shards)):
                    self._drop_shards()
                    self._sharded = make_step(self, shards, xb, yb)     # None: may not split now
                if self._sharded is not None:
                    return self._sharded.run(self, xb, yb)
            except Exception as exc:            # once more as one batch: its error names the whole batch
                failed = exc
                for layer, state in randoms:    # the same random draws as the split would have used
                    layer.set_random_state(state)
                kind = getattr(self._sharded, "kind", "workers")
                self._drop_shards()             # a fresh split next time (a worker may have died)
        out = self.forward(xb)
        loss, g = self._loss_and_gradient(out, yb, sample_weight)
        self.backward(g, need_input_grad=False)
        if failed is not None:
            warnings.warn(f"{self.name}: the step split over {shards} {kind} failed ({failed!r}); "
                          "it ran as one batch instead", RuntimeWarning, stacklevel=3)
        return loss, out

    def _loss_and_gradient(self, out, yb, sample_weight=None):
        """``(loss, dL/dout)`` of a batch's output: the loss's own ``forward`` and ``backward``,
        or the engine's fused kernel where it has one (``Runner.loss``)."""
        compute = lambda o, t: _loss_forward(self.loss_fn, o, t, sample_weight)  # noqa: E731
        if self._engine and sample_weight is None:
            return self._runner.loss(self.loss_fn, out, yb, compute)
        loss = compute(out, yb)
        return loss, self.loss_fn.backward()

    def _drop_shards(self):
        """Let the shard workers (processes or threads) and their copies of the layers go."""
        if self._sharded is not None:
            self._sharded.close()
            self._sharded = None

    def stop_workers(self):
        """End the worker processes (or threads) that split training steps.

        They outlive ``fit`` so that the next call does not start them again; they also
        end by themselves after ``parallel.WORKER_IDLE_S`` seconds without work, when
        the network is garbage-collected, and at exit.  The next split step starts new ones.
        """
        self._drop_shards()

    # --------------------------------------------------------- analysis hooks
    @guarded(training=False)
    def layer_outputs(self, x, to_host=True):
        """``{layer name: output}`` for a batch ``x`` (NumPy arrays unless to_host=False), in inference mode."""
        x, _, _ = self._prepare_xy(x, None, "layer_outputs")
        with self.inference():
            outs = self.forward(self._to_batch(x), return_all=True)
        conv = to_numpy if to_host else (lambda a: a)
        return {layer.name: conv(o) for layer, o in zip(self.layers, outs)}

    @guarded(training=False)
    def input_gradient(self, x, y=None, output_index=None, upstream=None, to_host=True):
        """Gradient with respect to the input batch ``x`` of

        * the mean loss against labels ``y`` (when ``y`` is given), or
        * ``sum_n output[n, output_index]`` (one output unit; since samples are
          independent this is each sample's own gradient), or
        * ``<output, upstream>`` for an explicit upstream gradient.

        Returns an array shaped like ``x`` (after channel adaptation).  Runs in inference mode.
        """
        with self.inference():
            return self._input_gradient(x, y, output_index, upstream, to_host)

    def _input_gradient(self, x, y, output_index, upstream, to_host):
        chosen = [a is not None for a in (y, output_index, upstream)]
        if sum(chosen) != 1:
            raise ValueError("input_gradient: give exactly one of y=, output_index=, upstream=")
        x, y, _ = self._prepare_xy(x, y, "input_gradient")
        xb = self._to_batch(x)
        out = self.forward(xb)
        xp = get_array_module(out)
        if y is not None:
            self.loss_fn.forward(out, to_device(y, like=out), validate=False)
            g = self.loss_fn.backward()
        elif output_index is not None:
            idx = tuple(output_index) if isinstance(output_index, tuple) else (output_index,)
            if (len(idx) != out.ndim - 1 or not all(validation.is_int(i) for i in idx)
                    or not all(-n <= i < n for i, n in zip(idx, out.shape[1:]))):
                raise ValueError(f"input_gradient: output_index must index one output unit of a sample of shape "
                                 f"{format_shape(tuple(out.shape[1:]))} (an int, or a tuple of {out.ndim - 1} ints), "
                                 f"received {output_index!r}")
            g = xp.zeros_like(out)
            g[(slice(None),) + (tuple(output_index) if isinstance(output_index, tuple) else (output_index,))] = 1
        else:
            g = to_device(upstream, like=out, dtype=out.dtype)
            if tuple(g.shape) != tuple(out.shape):
                raise ShapeError(f"input_gradient: upstream must have the output's shape "
                                 f"{format_shape(tuple(out.shape))}, received {format_shape(tuple(g.shape))}")
        dx = self.backward(g)
        return to_numpy(dx) if to_host else dx

    @guarded(training=False)
    def gradients(self, x, y):
        """``{(layer name, param name): dL/dparam}`` (NumPy) for one batch, no update; in inference mode."""
        x, y, _ = self._prepare_xy(x, y, "gradients")
        xb = self._to_batch(x)
        with self.inference():
            out = self.forward(xb)
            self.loss_fn.forward(out, to_device(y, like=out), validate=False)
            self.backward(self.loss_fn.backward(), need_input_grad=False)
            regularizers.apply(self.layers)       # the weight penalties' gradients, as training sees them
        return {(layer.name, k): to_numpy(v) for layer in self.trainable_layers for k, v in layer.grads.items()}

    # ---------------------------------------------------------------- training
    @guarded(training=True)
    def fit(self, X, y, epochs=None, batch_size=None, shuffle=None, validation_data=None, seed=None,
            verbose=1, n_epochs=None, stop_on_nonfinite=True, validation_batch_size=None, callbacks=None,
            validation_split=0.0, metrics=None, class_weight=None, sample_weight=None):
        """Train; returns (and stores as ``self.history``) a ``History``.

        ``X``: ``(N, *S)`` with integer labels ``(N,)`` or one-hot ``(N, K)``; or the
        seed's pre-batched ``(n_batches, batch, *S)`` with labels per batch, in
        which case the given batches are used as they are (no shuffling unless
        ``shuffle=True``).  ``n_epochs`` is the seed's name for ``epochs``.
        ``seed`` fixes the shuffling order.  ``validation_batch_size`` is the batch
        size for evaluating ``validation_data`` after each epoch (default
        ``max(batch_size, 256)``, as in ``evaluate``).
        ``callbacks``: ``Callback`` objects (``nn_from_scratch.callbacks``) called at the start and
        end of training, of each epoch and after each batch; one may stop training with
        ``self.network.stop_training = True``.  ``stop_on_nonfinite=True`` adds a
        ``TerminateOnNaN`` when the list has none (training stops at a NaN/Inf loss).
        ``validation_split``: validate on the last fraction of the samples (taken before any
        shuffling, as Keras: ``X[floor(N * (1 - validation_split)):]``) and train on the rest.
        ``validation_data`` may be ``(X_val, y_val)`` or ``(X_val, y_val, sample_weight_val)``.
        ``metrics``: reported besides the loss (history, progress bar, callbacks' logs; default
        the network's ``metrics``; ``accuracy`` always for a classifier): names such as
        ``"top_k"``, ``"mae"`` or ``nn_from_scratch.metrics.Metric`` objects.
        ``sample_weight`` ``(N,)`` or ``class_weight`` ``{class: weight}`` (not both) weigh each
        sample's loss: ``L = 1/B sum_n w_n l_n`` over a batch of ``B`` (Keras's semantics; metrics
        stay unweighted).  Weighted batches run in this process (the split over worker
        processes is for unweighted batches).

        Every layer trains during ``fit`` (``train()``) and the validation passes infer; each layer
        gets back its previous mode when ``fit`` returns.
        """
        validation.count("fit", "epochs", epochs, allow_none=True)
        validation.count("fit", "n_epochs", n_epochs, allow_none=True)
        validation.count("fit", "batch_size", batch_size, allow_none=True)
        validation.count("fit", "validation_batch_size", validation_batch_size, allow_none=True)
        if shuffle is not None:
            validation.flag("fit", "shuffle", shuffle)
        validation.flag("fit", "stop_on_nonfinite", stop_on_nonfinite)
        if not (validation.is_int(verbose) or isinstance(verbose, (bool, np.bool_))) or verbose < 0:
            raise TypeError(f"fit: verbose must be 0, 1 or True/False, received {verbose!r}")
        if seed is not None and not isinstance(seed, np.random.Generator):
            validation.count("fit", "seed", seed, minimum=0)
        if epochs is not None and n_epochs is not None and epochs != n_epochs:
            raise ValueError(f"fit: epochs={epochs} and n_epochs={n_epochs} disagree")
        epochs = int(epochs if epochs is not None else (n_epochs if n_epochs is not None else 1))
        if epochs < 1:
            raise ValueError(f"fit: epochs must be >= 1, received {epochs}")
        X, y, given_batch = self._prepare_xy(X, y, "fit")
        batch_size = int(batch_size or given_batch or self.batch_size)
        if batch_size < 1:
            raise ValueError(f"fit: batch_size must be >= 1, received {batch_size}")
        if shuffle is None:
            shuffle = given_batch is None
        sw = self._sample_weights(sample_weight, class_weight, y, X.shape[0], "fit")
        run_metrics = self._resolve_metrics(metrics, "fit(metrics=)") if metrics is not None else self.metrics
        val = None
        if validation_split:
            vs = validation_split
            if isinstance(vs, bool) or not isinstance(vs, (int, float, np.floating)) or not 0 < vs < 1:
                raise ValueError(f"fit: validation_split must be a fraction in (0, 1), received {vs!r}")
            if validation_data is not None:
                raise ValueError("fit: give validation_data or validation_split, not both")
            n_all = X.shape[0]
            split_at = int(math.floor(n_all * (1.0 - vs)))
            if split_at == 0 or split_at == n_all:
                raise ValueError(f"fit: validation_split={vs} of {n_all} samples leaves "
                                 f"{split_at} for training and {n_all - split_at} for validation; both need some")
            vsw = sw[split_at:] if (sw is not None and sample_weight is not None) else None
            val = (X[split_at:], y[split_at:], vsw)
            X, y = X[:split_at], y[:split_at]
            sw = sw[:split_at] if sw is not None else None
        if validation_data is not None:
            if not isinstance(validation_data, (tuple, list)) or len(validation_data) not in (2, 3):
                raise ValueError("fit: validation_data must be (X_val, y_val) or (X_val, y_val, sample_weight_val)")
            vx, vy, _ = self._prepare_xy(validation_data[0], validation_data[1], "fit (validation_data)")
            vsw = None
            if len(validation_data) == 3 and validation_data[2] is not None:
                vsw = self._sample_weights(validation_data[2], None, vy, vx.shape[0], "fit (validation_data)")
            val = (vx, vy, vsw)
        if validation_batch_size is not None and int(validation_batch_size) < 1:
            raise ValueError(f"fit: validation_batch_size must be >= 1, received {validation_batch_size}")
        val_batch = int(validation_batch_size or max(batch_size, 256))
        from .callbacks import Callback  # noqa: PLC0415 - the base class, for a single callback
        cbs = [] if callbacks is None else [callbacks] if isinstance(callbacks, Callback) else list(callbacks)
        if stop_on_nonfinite and not any(isinstance(c, TerminateOnNaN) for c in cbs):
            cbs.append(TerminateOnNaN())
        last = X.shape[0] % batch_size or batch_size      # the size of each epoch's last batch
        for layer in self.layers:                          # BatchNorm: at least 2 values per channel
            check = getattr(layer, "check_training_batch", None)
            if check is not None:
                check(min(last, X.shape[0]), where=f"fit ({X.shape[0]} samples, batch_size={batch_size})")
        trainer = _Trainer(self, X, y, batch_size, shuffle, seed, verbose, stop_on_nonfinite)
        trainer.sw = sw
        trainer.metrics = [m for m in run_metrics if not isinstance(m, metrics_mod.Accuracy)]
        trainer.val_metrics = run_metrics
        keys = ["loss"] + [m.name for m in run_metrics]
        keys += [f"val_{k}" for k in keys] if val is not None else []
        params = {"epochs": epochs, "steps": math.ceil(X.shape[0] / batch_size), "batch_size": batch_size,
                  "samples": int(X.shape[0]), "metrics": keys}
        trainer.callbacks = CallbackList(cbs, self, params)
        trainer.stop_on_nonfinite = any(isinstance(c, TerminateOnNaN) for c in cbs)
        with self._mode(True):       # fit trains (validation infers), then the previous modes come back
            return trainer.run(epochs, val, val_batch)

    def _batches(self, X, batch_size):
        for start in range(0, X.shape[0], batch_size):
            yield start, min(start + batch_size, X.shape[0])

    def _outputs(self, X, bs):
        """``(a, b, output of X[a:b])`` for each batch of ``bs`` samples, then every cache dropped.

        While the workers that split training steps are there (``fit`` keeps them) and still fit
        this network, each batch's forward pass is split over them too.  Besides using the cores,
        this keeps this process's BLAS at one thread: multi-threaded BLAS here leaves its
        threads spinning for ~0.1 s afterwards, on the core a worker needs (the first steps of
        each epoch after a validation ran at half speed, benchmarks/RESULTS.md).  Workers are
        not started for inference.  Runs in inference mode (``inference``).
        """
        with self.inference():
            yield from self._outputs_inferred(X, bs)

    def _outputs_inferred(self, X, bs):
        split = self._sharded
        if split is not None and not split.matches(self, split.shards):
            split = None
        try:
            for a, b in self._batches(X, bs):
                xb = self._to_batch(X[a:b])
                out = None
                if split is not None and shard_count(self, b - a) == split.shards:
                    try:
                        out = split.forward(self, xb)
                    except Exception as exc:    # once more as one batch: its error names the whole batch
                        warnings.warn(f"{self.name}: the forward pass split over {split.shards} {split.kind} "
                                      f"failed ({exc!r}); it ran as one batch instead", RuntimeWarning,
                                      stacklevel=3)
                        self._drop_shards()
                        split = None
                if out is None:
                    out = self.forward(xb)
                yield a, b, out
        finally:
            for layer in self.layers:
                layer.clear_cache()
            if split is not None:
                split.rest()

    @guarded(training=False)
    def predict(self, X, batch_size=None, to_host=True, probabilities=False):
        """Outputs of the last layer for ``X`` (``(N, *S)``, or one batch as in the seed lab).

        Returns a NumPy array unless ``to_host=False``.  Runs in inference mode (``Dropout`` off,
        ``BatchNorm`` on its running statistics), as Keras's ``predict`` does.
        ``probabilities=True``: the probabilities the loss reads the outputs as (``softmax`` of
        the logits for ``SoftMaxLoss``), as ``predict_proba``.
        """
        validation.count("predict", "batch_size", batch_size, allow_none=True)
        validation.flag("predict", "to_host", to_host)
        validation.flag("predict", "probabilities", probabilities)
        X, _, given_batch = self._prepare_xy(X, None, "predict")
        if probabilities and not callable(getattr(self.loss_fn, "probabilities", None)):
            raise TypeError(f"predict: probabilities=True needs a loss that defines probabilities(); "
                            f"{type(self.loss_fn).__name__} does not")
        bs = int(batch_size or given_batch or max(self.batch_size, 256))
        outs = [out for _, _, out in self._outputs(X, bs)]
        xp = get_array_module(outs[0])
        out = xp.concatenate(outs, axis=0) if len(outs) > 1 else outs[0]
        if probabilities:
            out = self.loss_fn.probabilities(out)
        return to_numpy(out) if to_host else out

    def predict_proba(self, X, batch_size=None, to_host=True):
        """Class probabilities for ``X``: ``predict(X, probabilities=True)`` (rows sum to 1)."""
        return self.predict(X, batch_size=batch_size, to_host=to_host, probabilities=True)

    @guarded(training=False)
    def evaluate(self, X, y, batch_size=None, metrics=None, sample_weight=None, return_dict=False):
        """The mean loss and every metric on ``(X, y)``.

        Returns ``(loss, accuracy)`` for a classifier with the default metrics (``(loss, None)``
        for a regression network without metrics), as before; with more metrics
        ``(loss, accuracy, *others)`` in the order of ``metrics`` (Keras's order);
        ``return_dict=True``: ``{"loss": ..., "accuracy": ..., ...}`` by name.
        ``metrics``: default the network's.  ``sample_weight``: weighs the loss (not the metrics).
        In inference mode.
        """
        validation.count("evaluate", "batch_size", batch_size, allow_none=True)
        validation.flag("evaluate", "return_dict", return_dict)
        X, y, given_batch = self._prepare_xy(X, y, "evaluate")
        run_metrics = self._resolve_metrics(metrics, "evaluate(metrics=)") if metrics is not None else self.metrics
        sw = self._sample_weights(sample_weight, None, y, X.shape[0], "evaluate")
        res = self._evaluate_all(X, y, int(batch_size or given_batch or max(self.batch_size, 256)), run_metrics, sw)
        if return_dict:
            return res
        values = tuple(res.values())
        return values if len(values) > 1 else (values[0], None)

    def _evaluate_prepared(self, X, y, bs):
        """``(mean loss, accuracy or None)`` of prepared data."""
        res = self._evaluate_all(X, y, bs, self._resolve_metrics(None, "evaluate"), None)
        return res["loss"], res.get("accuracy")

    def _evaluate_all(self, X, y, bs, run_metrics, sw):
        """``{"loss": mean loss, metric name: mean value, ...}`` over prepared data, one read."""
        n = X.shape[0]
        total_loss, sums = 0.0, [0] * len(run_metrics)
        for a, b, out in self._outputs(X, bs):
            yb = to_device(y[a:b], like=out)
            wb = None if sw is None else to_device(sw[a:b], like=out, dtype=out.dtype)
            total_loss = total_loss + _loss_forward(self.loss_fn, out, yb, wb) * (b - a)
            for i, m in enumerate(run_metrics):
                sums[i] = sums[i] + m.batch_sum(out, yb)
        pen = regularizers.penalty(self.layers)    # Keras: the loss includes the weight penalties
        total_loss, pen, *sums = read_scalars(total_loss, pen, *sums, why="validation")  # one read
        res = {"loss": total_loss / n + pen}
        res.update((m.name, v / n) for m, v in zip(run_metrics, sums))
        return res

    def confusion_matrix(self, X, y, normalize=None, batch_size=None):
        """``C[i, j]``: samples of true class ``i`` the network predicts as ``j`` (``metrics.confusion_matrix``)."""
        if not isinstance(self.loss_fn, SoftMaxLoss):
            raise TypeError(f"confusion_matrix needs a classifier; the loss is {type(self.loss_fn).__name__}")
        X, y, _ = self._prepare_xy(X, y, "confusion_matrix")
        pred = self.predict(X, batch_size=batch_size).argmax(axis=1)
        k = self.output_shape[0] if self.output_shape else None
        return metrics_mod.confusion_matrix(to_numpy(y), pred, n_classes=k, normalize=normalize)

    def plot_confusion_matrix(self, X, y, class_names=None, normalize=None, title=None, batch_size=None):
        """A pyplot figure of ``confusion_matrix(X, y)`` (rows: true class), every cell annotated."""
        cm = self.confusion_matrix(X, y, normalize=normalize, batch_size=batch_size)
        return metrics_mod.plot_confusion_matrix(cm, class_names=class_names, title=title)

    # ----------------------------------------------------------------- summary
    def summary(self, print_fn=print):
        """A table of layers, output shapes and parameter counts (also returned)."""
        rows = [("Layer (type)", "Output shape", "Param #")]
        for layer, shape in zip(self.layers, self._shapes):
            shape_txt = "?" if shape is None else format_shape((None,) + tuple(shape))
            rows.append((f"{layer.name} ({type(layer).__name__})", shape_txt, f"{layer.count_params():,}"))
        w = [max(len(r[i]) for r in rows) + 2 for i in range(3)]
        line = "=" * sum(w)
        out = [f'Model: "{self.name}"', line]
        for j, r in enumerate(rows):
            out.append(r[0].ljust(w[0]) + r[1].ljust(w[1]) + r[2].rjust(w[2]))
            out.append(line if j == 0 else "-" * sum(w))
        total = self.count_params()
        trainable = sum(layer.count_params() - sum(int(np.prod(b.shape)) for b in layer.buffers.values())
                        for layer in self.trainable_layers if getattr(layer, "trainable", True))
        out.append(f"Total params: {total:,}")
        out.append(f"Trainable params: {trainable:,}")
        out.append(f"Non-trainable params: {total - trainable:,}")
        out.append(f"Loss: {type(self.loss_fn).__name__}   Optimizer: {self.optimizer!r}")
        out.append(self._engine_line())
        text = "\n".join(out)
        if print_fn is not None:
            print_fn(text)
        return text

    def engine_plan(self):
        """``[(first, stop, what)]``: the layers ``fit``/``predict`` run by one of the engine's fast paths
        instead of their own ``forward``/``backward`` (``layers[first:stop]`` together), on a batch
        of this network's input shape; empty with ``engine=False`` or an unknown input shape."""
        shape = self.input_shape
        if not self._engine or shape is None or None in shape:
            return []
        like = self._param_like()
        xp = get_array_module(like) if like is not None else np
        dtype = like.dtype if like is not None else np.float32
        return self._runner.plan(self.layers, xp.broadcast_to(xp.zeros((), dtype=dtype), (1,) + tuple(shape)))

    def _engine_line(self):
        if not self._engine:
            return "Engine: off (every layer runs its own forward/backward)"
        plan = self.engine_plan()
        if not plan:
            return "Engine: on; every layer runs its own forward/backward"
        runs = "; ".join(f"{' -> '.join(layer.name for layer in self.layers[a:b])} {what}" for a, b, what in plan)
        return f"Engine: on (engine=False runs every layer's own code): {runs}"

    # ------------------------------------------------------------ save / load
    def get_config(self):
        return {
            "name": self.name,
            "batch_size": self.batch_size,
            "input_shape": None if self.input_shape is None else list(self.input_shape),
            "layers": [layer_config(layer) for layer in self.layers],
            "loss": layer_config(self.loss_fn),
            "optimizer": self._optimizer_config(),
            "metrics": [m if isinstance(m, str) else m.name for m in self.metrics],
            "trainable": [bool(getattr(layer, "trainable", False)) for layer in self.layers],
            "training": bool(self._training),
            "layer_training": [bool(layer.training) for layer in self.layers],
            # where each random layer's (Dropout's) sequence stands, so that training continues with fresh draws
            "layer_random_state": [layer.random_state() if hasattr(layer, "random_state") else None
                                   for layer in self.layers],
        }

    def _optimizer_config(self):
        """The optimizer's class and settings as JSON-able values (a schedule by its class and config)."""
        from . import schedules  # noqa: PLC0415
        cfg = dict(self.optimizer.get_config())
        lr = cfg.get("lr")
        if lr is not None and not isinstance(lr, (int, float)):
            if type(lr).__name__ in schedules._BY_NAME and type(lr) is schedules._BY_NAME[type(lr).__name__]:
                cfg["lr"] = {"schedule": type(lr).__name__, "config": lr.get_config()}
            else:
                now = self.optimizer.learning_rate
                warnings.warn(f"save: the learning-rate schedule {lr!r} is not one of nn_from_scratch.schedules "
                              f"and cannot be recorded; the file holds its current rate {now}", RuntimeWarning,
                              stacklevel=3)
                cfg["lr"] = now
        return {"class": type(self.optimizer).__name__, "config": cfg}

    def _param_arrays(self):
        """``layer{i}/{name}`` -> array: every parameter and every buffer (non-trainable state such as
        BatchNorm's moving statistics), saved, validated and loaded alike."""
        return {f"layer{i}/{k}": v for i, layer in enumerate(self.layers)
                for k, v in list(layer.params.items()) + list(layer.buffers.items())}

    @guarded(training=False)
    def save(self, path):
        """Write architecture, weights and the optimizer's state to ``path`` (.npz), atomically
        (``serialization.py``: temporary files, permissions kept, symbolic links written through).
        Weights holding NaN/Inf are saved as they are, with a ``TrainingWarning`` naming them (a
        diverged model may be worth keeping to look at; loading it warns again).

        ``NeuralNetwork.load(path)`` then ``fit`` continues exactly (bitwise) as the same ``fit``
        calls without the save would have (the optimizer's moments and step count, hence a
        schedule's position, are in the file; see ``serialization``)."""
        config = self.get_config()
        config["format_version"] = FORMAT_VERSION
        iterations, state = self.optimizer.get_state(self.layers)
        keys = sorted(state, key=lambda k: (k[0], str(k[1]), str(k[2])))
        config["optimizer_state"] = {"iterations": int(iterations),
                                     "arrays": [[int(i), str(name), str(slot)] for i, name, slot in keys]}
        arrays = {"__format__": np.array(FORMAT), "__config__": np.array(json.dumps(config))}
        arrays.update(self._param_arrays())
        _warn_nonfinite(self, arrays, f"saving {path!r}")
        arrays.update((f"optimizer/{n}", state[k]) for n, k in enumerate(keys))
        write_npz_atomic(path, arrays)
        return path

    def _restore_optimizer_state(self, config, opt_arrays, path):
        """The optimizer's state from the file when the file's optimizer is this one's (same class and
        settings); otherwise it starts afresh.  Files of version 1 have none."""
        rec = config.get("optimizer_state")
        if rec is None:
            return
        mine = self._optimizer_config()
        if config.get("optimizer") != json.loads(json.dumps(mine)):
            return
        try:
            entries = rec["arrays"]
            if len(entries) != len(opt_arrays) or not isinstance(rec["iterations"], int) or rec["iterations"] < 0:
                raise ValueError("its record and its arrays disagree")
            state = {}
            for n, (i, name, slot) in enumerate(entries):
                arr = opt_arrays[f"optimizer/{n}"]
                if arr.dtype.kind != "f" or not np.all(np.isfinite(arr)):
                    raise ValueError(f"state {slot!r} of layer {i} parameter {name!r} is not finite floats")
                state[(int(i), name, slot)] = arr
            self.optimizer.set_state(self.layers, rec["iterations"], state)
        except (KeyError, TypeError, ValueError) as exc:
            self.optimizer.reset()
            raise ModelFileError(f"{path!r}: the optimizer's saved state is damaged ({exc})") from None

    @guarded(training=True)
    def _load_into(self, path):
        config, arrays = read_model_file(path)
        version = config.get("format_version", 1)
        if not isinstance(version, int) or version > FORMAT_VERSION:
            raise ModelFileError(f"{path!r} is a model file of format_version {version!r}; this version of "
                                 f"nn_from_scratch reads versions 1 to {FORMAT_VERSION}")
        opt_arrays = {k: arrays.pop(k) for k in list(arrays) if k.startswith("optimizer/")}
        mine = self._param_arrays()
        theirs = [c["class"] for c in config.get("layers", [])]
        ours = [type(layer).__name__ for layer in self.layers]
        if theirs != ours:
            raise ModelFileError(f"{path!r} holds a model of another architecture: its layers are {theirs}, "
                                 f"this network's are {ours}")
        if set(arrays) != set(mine):
            raise ModelFileError(f"{path!r} holds parameters {sorted(arrays)}, this network has {sorted(mine)}")
        for key, cur in mine.items():
            if tuple(arrays[key].shape) != tuple(cur.shape):
                raise ModelFileError(f"{path!r}: parameter {key} has shape {tuple(arrays[key].shape)} in the file "
                                     f"but {tuple(cur.shape)} in this network (another architecture)")
        for i, (entry, layer) in enumerate(zip(config["layers"], self.layers)):
            # same classes and parameter shapes can still differ in stride, padding, use_bias, ...
            skip = ("name", "dtype", "shape", "input_shape")
            theirs_cfg = {k: v for k, v in entry.get("config", {}).items() if k not in skip}
            ours_cfg = {k: v for k, v in json.loads(json.dumps(layer.get_config())).items() if k not in skip}
            if theirs_cfg != ours_cfg:
                keys = sorted(k for k in set(theirs_cfg) | set(ours_cfg) if theirs_cfg.get(k) != ours_cfg.get(k))
                raise ModelFileError(
                    f"{path!r} holds a model of another architecture: layer {i} ({layer._describe()}) has "
                    + ", ".join(f"{k}={theirs_cfg.get(k)!r}" for k in keys) + " in the file but "
                    + ", ".join(f"{k}={ours_cfg.get(k)!r}" for k in keys) + " in this network")
        _warn_nonfinite(self, arrays, f"loading {path!r}")
        for i, layer in enumerate(self.layers):
            for k in list(layer.params):
                a = arrays[f"layer{i}/{k}"]
                layer.dtype = np.dtype(a.dtype)
                layer.params[k] = to_device(a, like=layer.params[k])
            for k in list(layer.buffers):
                layer.buffers[k] = to_device(arrays[f"layer{i}/{k}"], like=layer.buffers[k])
        self._restore_modes(config, path)
        frozen = config.get("trainable")
        if frozen is not None:          # files written before issue 24 have none: layers stay as they are
            if not isinstance(frozen, list) or len(frozen) != len(self.layers) or \
                    not all(isinstance(f, bool) for f in frozen):
                raise ModelFileError(f"{path!r}: the saved trainable flags are damaged: expected "
                                     f"{len(self.layers)} booleans, received {frozen!r}")
            for layer, flag in zip(self.layers, frozen):
                if isinstance(layer, Neuron):
                    layer.trainable = flag
        self.optimizer.reset()
        self._restore_optimizer_state(config, opt_arrays, path)
        return self

    def _restore_modes(self, config, path):
        """The training/inference modes saved in ``config`` (files written before modes were saved have
        none: the modes stay as they are)."""
        modes = config.get("layer_training")
        if modes is None:
            return
        if not isinstance(modes, list) or len(modes) != len(self.layers) or \
                not all(isinstance(m, bool) for m in modes) or not isinstance(config.get("training", True), bool):
            raise ModelFileError(f"{path!r}: the saved training modes are damaged: expected {len(self.layers)} "
                                 f"booleans, received {modes!r}")
        for layer, mode in zip(self.layers, modes):
            layer.training = mode
        self._training = config.get("training", all(modes))
        states = config.get("layer_random_state")
        if states is None:
            return
        if not isinstance(states, list) or len(states) != len(self.layers):
            raise ModelFileError(f"{path!r}: the saved random states are damaged: expected {len(self.layers)} "
                                 f"entries, received {states!r}")
        for i, (layer, state) in enumerate(zip(self.layers, states)):
            if state is None or not hasattr(layer, "set_random_state"):
                continue
            try:
                layer.set_random_state(state)
            except (TypeError, ValueError) as exc:
                raise ModelFileError(f"{path!r}: layer {i}: {exc}") from None

    @classmethod
    def _load_new(cls, path):
        config, arrays = read_model_file(path)
        try:
            layers = [build_layer(entry) for entry in config["layers"]]
            loss = build_layer(config["loss"])
            ocfg = dict(config["optimizer"]["config"])
            if isinstance(ocfg.get("lr"), dict):
                from . import schedules  # noqa: PLC0415
                try:
                    ocfg["lr"] = schedules.get({"class": ocfg["lr"]["schedule"], "config": ocfg["lr"]["config"]})
                except ValueError as exc:
                    raise ModelFileError(f"{path!r}: {exc}") from None
            opt = optimizer_class(config["optimizer"]["class"])(**ocfg)
            net = cls(layers, loss_fn=loss, optimizer=opt, batch_size=config.get("batch_size", 32),
                      input_shape=config.get("input_shape"), name=config.get("name", "network"),
                      metrics=config.get("metrics"))
        except ModelFileError:
            raise
        except (KeyError, TypeError, ValueError, AttributeError) as exc:   # ValueError: ShapeError too
            raise ModelFileError(f"{path!r}: the architecture record is damaged ({type(exc).__name__}: {exc})") from None
        return net._load_into(path)

    load = _hybridmethod(_load_into, _load_new.__func__)
    load.__doc__ = """Load a model file.

    ``network.load(path)`` loads the weights into this network (the file must
    hold the same architecture); ``NeuralNetwork.load(path)`` builds a new
    network from the file.  A missing, truncated or corrupt file, or one for
    another architecture, raises ``ModelFileError``.  The optimizer's state (moments,
    step count) comes back when the file's optimizer is this network's (always for
    ``NeuralNetwork.load``); otherwise it starts afresh.  Files written before the
    ``format_version`` was recorded (version 1) load as before.
    """

    def __repr__(self):
        return f"NeuralNetwork({len(self.layers)} layers, {self.count_params():,} params, loss={type(self.loss_fn).__name__})"


def _warn_nonfinite(net, arrays, doing):
    """A ``TrainingWarning`` when parameter arrays ``{name: array}`` hold NaN/Inf."""
    bad = [k for k, v in arrays.items() if k.startswith("layer") and getattr(v, "dtype", None) is not None
           and v.dtype.kind == "f" and not bool(read_scalars(get_array_module(v).isfinite(v).all(), why="check")[0])]
    if bad:
        warnings.warn(f"{net.name}: {doing}: parameters {bad} hold NaN/Inf; the network's outputs will be NaN",
                      TrainingWarning, stacklevel=3)
