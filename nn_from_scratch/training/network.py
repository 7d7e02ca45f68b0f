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
(``engine/parallel/``); the numbers are the layers' own to float rounding
(tests/test_engine_switch.py).  ``docs/ARCHITECTURE.md`` draws the whole flow.

Data may be given as whole arrays ``fit(X, y, epochs=, batch_size=)`` (integer or
one-hot labels) or, as in the seed lab, already cut into batches
``fit(X_batches, Y_batches, n_epochs=)`` with ``X_batches: (n_batches, batch, *S)``.

The jobs around it have modules of their own (``docs/ARCHITECTURE.md``): the data checks and
their normalisation (``inputs.py``), ``fit``'s argument checks and the trainer's assembly
(``fit_setup.py``), the loop (``trainer.py``, with ``epoch_sums.py`` and ``watchdog.py``), inference
in batches for ``predict``/``evaluate`` (``inference.py``), model files (``model_files.py`` over
``serialization.py``'s format), the summary (``summary.py``) and the worker split
(``engine/parallel``, held as ``batch_split``).  Host <-> device traffic during ``fit``: see
``trainer.py``.
"""
import contextlib

import numpy as np

from .. import validation
from ..backend import get_array_module, to_device, to_numpy
from ..engine import parallel
from ..engine.runner import Runner
from ..layers import regularizers
from ..layers.base import Neuron, Node, ShapeError, format_shape
from ..layers.losses import Loss, SoftMaxLoss
from ..validation import DataError
from . import fit_setup, inference, inputs, model_files
from . import metrics as metrics_mod
from .concurrency import guarded
from .history import History, TrainingWarning
from .optimizers import GradientDescent
from .optimizers import get as get_optimizer
from .serialization import layer_config
from .summary import summary_text

__all__ = ["NeuralNetwork", "History", "TrainingWarning", "DataError"]


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
    off; see ``nn_from_scratch/engine/parallel/``).  Results agree with the one-worker
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
        #: the split of training (and inference) batches over worker processes or threads
        self.batch_split = parallel.BatchSplit()
        #: the engine's runner of this network's layers (fast paths; ``engine/runner.py``)
        self.runner = Runner()
        self.engine = engine
        self.history = History()
        self._training = True
        #: set by a callback (``self.network.stop_training = True``) to end ``fit`` after this batch
        self.stop_training = False
        self._shapes = None
        self.build(input_shape if input_shape is not None else layers[0].input_shape)
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
            self.batch_split.close()
        self.runner.clear()
        self._engine = on

    @property
    def _runner(self):
        """The runner under its earlier name (``runner``)."""
        return self.runner

    @_runner.setter
    def _runner(self, runner):
        self.runner = runner

    @property
    def _sharded(self):
        """The split in use (``batch_split.current``): a ``ForkedStep``, a ``ShardedStep`` or None."""
        return self.batch_split.current

    def _resolve_metrics(self, specs, where):
        return metrics_mod.resolve(specs, self.loss_fn, where)

    def _sample_weights(self, sample_weight, class_weight, y, n, where):
        """``(n,)`` host weights from ``sample_weight`` or ``class_weight``, or None (``inputs.sample_weights``)."""
        return inputs.sample_weights(sample_weight, class_weight, y, n, where, self.output_shape, self.loss_fn)

    # ------------------------------------------------------------------ shapes
    def build(self, input_shape):
        """Infer every layer's shapes from the per-sample ``input_shape`` (e.g. ``(1, 28, 28)``), and
        complete the layers whose input size was not given (``Linear(10)``, ``BatchNorm()``,
        ``Convolution(kernel_size=3, output_layers=4)``: ``docs/layers.md``, "Shapes inferred") from
        the output of the layer before, in order.  The constructor does this; ``fit``/``predict``/
        ``evaluate`` do it from their data's shape when the input shape was unknown.  Returns self."""
        if input_shape is not None:
            if validation.is_int(input_shape):
                input_shape = (input_shape,)
            try:
                input_shape = tuple(input_shape)
                bad = not input_shape or any(s is not None and not (validation.is_int(s) and s >= 1)
                                             for s in input_shape)
            except TypeError:
                bad = True
            if bad:
                raise ShapeError(f"NeuralNetwork: input_shape must be the shape of one sample, without the batch "
                                 f"(e.g. (1, 28, 28) or (784,)), positive ints or None, received {input_shape!r}")
            input_shape = tuple(None if s is None else int(s) for s in input_shape)
        self.input_shape = input_shape

        def build_layer(i, layer, shape):
            if shape is not None and len(shape) and shape[0] is not None:
                layer.build(shape)              # a ShapeError here is a real misfit (e.g. Linear after a Conv)

        self._shapes = inputs.layer_shapes(self.layers, self.input_shape, build=build_layer)
        if self.input_shape is None and self.layers[0].input_shape is not None:
            self.input_shape = self.layers[0].input_shape
        self.runner.clear()
        return self

    @property
    def built(self):
        """True when every layer knows its sizes (has its parameters): see ``build``."""
        return all(layer.built for layer in self.layers)

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
    def _prepare_xy(self, X, y, where):
        """``(X, y, batch)``: the data checked and normalised for this network (``inputs.prepare_xy``).
        Layers still without their sizes (the input shape was not known in full) are built from the
        data's sample shape first, and the data checked again against the built network."""
        out = inputs.prepare_xy(X, y, where, self.input_shape, self.layers[0], self.output_shape, self.loss_fn)
        if self.built:
            return out
        self.build(tuple(out[0].shape[1:]))
        return inputs.prepare_xy(X, y, where, self.input_shape, self.layers[0], self.output_shape, self.loss_fn)

    def _check_labels(self, y, n, where):
        return inputs.check_labels(y, n, where, self.output_shape, self.loss_fn)

    # ------------------------------------------------------- forward/backward
    def forward(self, x, return_all=False):
        """Output of the last layer for a batch (or all layer outputs, in order).

        With the engine on, through the engine's runner (``engine/runner.py``: e.g. a ``ReLU``
        directly followed by a ``MaxPool`` runs as pooling then ReLU, on the pooled output, the
        same numbers and gradients with less work); ``return_all`` then runs no layers together,
        so that every output exists.  With ``engine=False``, each layer's own ``forward`` in order.
        """
        if self._engine:
            return self.runner.forward(self.layers, x, return_all=return_all)
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
            return self.runner.backward(self.layers, upstream, need_input_grad)
        g = upstream
        for i in range(len(self.layers) - 1, -1, -1):
            g = self.layers[i].backward(g, need_input_grad=i > 0 or need_input_grad)
        return g

    def _to_batch(self, X):
        return to_device(X, like=self.parameter_like(), dtype=self.dtype)

    def parameter_like(self):
        """An array of the first neuron's parameters (its backend and dtype are the network's), or None."""
        ts = self.trainable_layers
        return next(iter(ts[0].params.values())) if ts else None

    _param_like = parameter_like

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
        (or threads) by ``batch_split`` when it may be, else the plain loop (``_whole_step``).

        ``recheck=False``: nothing that could change a layer ran since the last split step
        (``fit`` within an epoch), so the split's ``matches`` check is skipped.
        ``sample_weight``: the batch's weights ``(B,)``; such a batch runs in this process.

        An optimizer whose ``needs_layer_statistics`` is True at this step (K-FAC: every
        ``cov_every``-th) runs the pass itself, in this process, layer by layer, to see each
        layer's input and per-example output gradient (``optimizer.forward_backward``); other
        optimizers never take this branch."""
        if getattr(self.optimizer, "needs_layer_statistics", False):
            return self.optimizer.forward_backward(self, xb, yb, sample_weight=sample_weight)
        if sample_weight is not None:
            return self._whole_step(xb, yb, sample_weight)
        return self.batch_split.step(self, xb, yb, self._whole_step, recheck=recheck)

    def _whole_step(self, xb, yb, sample_weight=None):
        """``(loss, output)`` of the batch in this process: forward, loss, backward."""
        out = self.forward(xb)
        loss, g = self._loss_and_gradient(out, yb, sample_weight)
        self.backward(g, need_input_grad=False)
        return loss, out

    def _loss_and_gradient(self, out, yb, sample_weight=None):
        """``(loss, dL/dout)`` of a batch's output: the loss's own ``forward`` and ``backward``,
        or the engine's fused kernel where it has one (``Runner.loss``)."""
        compute = lambda o, t: inference.loss_value(self.loss_fn, o, t, sample_weight)  # noqa: E731
        if self._engine and sample_weight is None:
            return self.runner.loss(self.loss_fn, out, yb, compute)
        loss = compute(out, yb)
        return loss, self.loss_fn.backward()

    def _drop_shards(self):
        """Let the shard workers (processes or threads) and their copies of the layers go."""
        self.batch_split.close()

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
        trainer, epochs, val, val_batch = fit_setup.prepare(
            self, X, y, epochs=epochs, batch_size=batch_size, shuffle=shuffle, validation_data=validation_data,
            seed=seed, verbose=verbose, n_epochs=n_epochs, stop_on_nonfinite=stop_on_nonfinite,
            validation_batch_size=validation_batch_size, callbacks=callbacks, validation_split=validation_split,
            metrics=metrics, class_weight=class_weight, sample_weight=sample_weight)
        with self._mode(True):       # fit trains (validation infers), then the previous modes come back
            return trainer.run(epochs, val, val_batch)

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
        outs = [out for _, _, out in inference.outputs(self, X, bs)]
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
        res = inference.evaluate(self, X, y, int(batch_size or given_batch or max(self.batch_size, 256)), run_metrics, sw)
        if return_dict:
            return res
        values = tuple(res.values())
        return values if len(values) > 1 else (values[0], None)

    def _evaluate_all(self, X, y, bs, run_metrics, sw):
        """``{"loss": ..., metric name: ...}`` over prepared data (``inference.evaluate``)."""
        return inference.evaluate(self, X, y, bs, run_metrics, sw)

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
        """A table of layers, output shapes and parameter counts (also returned; ``summary.py``)."""
        text = summary_text(self)
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
        like = self.parameter_like()
        xp = get_array_module(like) if like is not None else np
        dtype = like.dtype if like is not None else np.float32
        return self.runner.plan(self.layers, xp.broadcast_to(xp.zeros((), dtype=dtype), (1,) + tuple(shape)))

    # ------------------------------------------------------------ save / load
    def get_config(self):
        return {
            "name": self.name,
            "batch_size": self.batch_size,
            "input_shape": None if self.input_shape is None else list(self.input_shape),
            "layers": [layer_config(layer) for layer in self.layers],
            "loss": layer_config(self.loss_fn),
            "optimizer": model_files.optimizer_config(self),
            "metrics": [m if isinstance(m, str) else m.name for m in self.metrics],
            "trainable": [bool(getattr(layer, "trainable", False)) for layer in self.layers],
            "training": bool(self._training),
            "layer_training": [bool(layer.training) for layer in self.layers],
            # where each random layer's (Dropout's) sequence stands, so that training continues with fresh draws
            "layer_random_state": [layer.random_state() if hasattr(layer, "random_state") else None
                                   for layer in self.layers],
        }

    def _param_arrays(self):
        """``layer{i}/{name}`` -> every parameter and buffer, as model files hold them."""
        return model_files.param_arrays(self)

    @guarded(training=False)
    def save(self, path):
        """Write architecture, weights and the optimizer's state to ``path`` (.npz), atomically
        (``serialization.py``: temporary files, permissions kept, symbolic links written through).
        Weights holding NaN/Inf are saved as they are, with a ``TrainingWarning`` naming them (a
        diverged model may be worth keeping to look at; loading it warns again).

        ``NeuralNetwork.load(path)`` then ``fit`` continues exactly (bitwise) as the same ``fit``
        calls without the save would have (the optimizer's moments and step count, hence a
        schedule's position, are in the file; see ``serialization``)."""
        return model_files.save(self, path)

    @guarded(training=True)
    def _load_into(self, path):
        return model_files.load_into(self, path)

    @classmethod
    def _load_new(cls, path):
        return model_files.load_new(cls, path)

    load = model_files.hybridmethod(_load_into, _load_new.__func__)
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
        if not self.built:
            return f"NeuralNetwork({len(self.layers)} layers, not built yet, loss={type(self.loss_fn).__name__})"
        return f"NeuralNetwork({len(self.layers)} layers, {self.count_params():,} params, loss={type(self.loss_fn).__name__})"

