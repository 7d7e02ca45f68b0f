"""``compare_training``: train ours and its Keras twin side by side and watch them stay together.

Both start from identical weights (the Keras twin is built from a copy of our
layers), see identical batches in the same order (one permutation from
``seed``, re-drawn when the data run out; no framework-side shuffling), and use
the same optimizer settings (``keras_optimizer``: GradientDescent -> SGD with
momentum/Nesterov, Adam -> Adam, RMSProp -> RMSprop, weight decay included).
Keras's step is a custom train step (traced once with ``tf.function``, as
``model.fit`` does; ``graph=False`` runs it eagerly)::

    with tf.GradientTape() as tape:
        loss = keras_loss(y, model(x, training=True)) + sum(model.losses)   # the weight penalties, if any
    optimizer.apply_gradients(zip(tape.gradient(loss, vars), vars))

With ``lockstep=True`` our weights are copied into the Keras model before every
step, so each update is judged from identical weights (kinks cannot cascade; see
below).  After every step each weight is compared (relative to its own scale, see
``tolerances``) and the loss on the step's batch is recorded for both.
Kinks: when a ReLU input (or a max-pool pair) is within float32 rounding of
its kink, the two free-running models can take different sides of it and jump
apart by ~1e-5..1e-4 in one step; further flips may then cascade.  A formula bug
shows from the first step instead.  ``TrainingReport.sudden_jump`` points at
such a step.

The user's network and optimizer are not modified: everything runs on copies,
and the copied optimizer starts from a fresh state (as the Keras one does).
"""
import copy

import numpy as np
import tensorflow as tf

from ...layers import regularizers
from ...backend import to_device, to_numpy
from ...layers.losses import SoftMaxLoss
from ...training.optimizers import GradientDescent
from ...training.optimizers import get as get_optimizer
from .compare import _adapt_input, _dtype, _keras_targets, _param_like
from .convert import build_twin, copy_layers, keras_loss, keras_optimizer, unpack
from .layout import to_keras_layout
from .report import StepRecord, TrainingReport
from .scales import UpdateTracker
from .tolerances import TINY, Check, resolve_tolerances

__all__ = ["compare_training"]


def compare_training(network, X, y, steps=100, optimizer=None, batch_size=32, seed=0, loss=None, rtol=None,
                     input_shape=None, graph=True, lockstep=False):
    """Train ours and Keras ``steps`` steps on identical batches; returns a ``TrainingReport``.

    ``network``: a ``NeuralNetwork`` or a list of layers.  ``X``: ``(N, C, *S)`` or
    ``(N, D)`` in our layout; ``y``: integer labels ``(N,)``, one-hot rows, or
    regression targets.  ``optimizer``: one of ours (or a name: "sgd", "adam",
    "rmsprop"); default: the network's optimizer, else ``GradientDescent(0.01)``.
    ``loss``: default the network's ``loss_fn``, else ``SoftMaxLoss``.
    ``rtol``: the ``training`` tolerance (default 1e-3) as a float or dict.
    ``graph``: run Keras's train step as a ``tf.function`` (as ``model.fit`` does; fast)
    or eagerly (``graph=False``).
    ``lockstep``: copy our weights into the Keras model before every step (each
    optimizer keeps its own state), so every step starts from identical weights and
    the report measures each update alone; the default runs both freely, a whole run.
    """
    from ... import validation  # noqa: PLC0415
    validation.count("compare_training", "steps", steps, minimum=0)
    validation.count("compare_training", "batch_size", batch_size)
    layers, net_loss, net_opt, shape = unpack(network, input_shape)
    layers = copy_layers(layers)
    loss = copy.deepcopy(loss if loss is not None else (net_loss if net_loss is not None else SoftMaxLoss()))
    if optimizer is not None:
        opt = get_optimizer(optimizer)
    else:
        opt = net_opt if net_opt is not None else GradientDescent(lr=0.01)
    opt = copy.deepcopy(opt)
    opt.reset()
    tol = resolve_tolerances(rtol if not isinstance(rtol, (int, float)) else {"training": rtol})["training"]
    steps = int(steps)
    if steps < 1:
        raise ValueError(f"compare_training: steps must be >= 1, received {steps}")
    dtype = _dtype(layers)
    X = _adapt_input(np.asarray(to_numpy(X)), shape).astype(dtype, copy=False)
    y = np.asarray(to_numpy(y))
    if X.shape[0] != y.shape[0]:
        raise ValueError(f"compare_training: X has {X.shape[0]} samples but y has {y.shape[0]}")
    n = X.shape[0]
    bs = min(int(batch_size), n)
    twin = build_twin(layers, tuple(X.shape[1:]), dtype=dtype.name)
    kopt = keras_optimizer(opt)
    variables = twin.model.trainable_variables
    yk_all, sparse = _keras_targets(loss, y)
    kloss = keras_loss(loss, sparse, dtype)
    like = _param_like(layers)
    weight_maps = [(g.index, g.layer, pm) for g in twin.groups for pm in g.params]
    tracker = UpdateTracker(twin.groups, opt, dtype)      # floors and allowances of the weights (scales)

    def keras_step(xk, yk):
        with tf.GradientTape() as tape:
            lk = kloss(yk, twin.model(xk, training=True))
            if twin.model.losses:               # the layers' weight penalties (kernel/bias regularizers)
                lk = lk + tf.add_n(twin.model.losses)
        kopt.apply_gradients(zip(tape.gradient(lk, variables), variables))
        return lk

    if graph and any(getattr(layer, "stochastic", False) for layer in layers):
        graph = False   # Keras's MaskedDropout reads our layer's mask at every step: a traced graph would freeze it
    if graph:   # one traced graph instead of ~200 eager ops per step (much faster; same kernels)
        keras_step = tf.function(keras_step, reduce_retracing=True)

    rng = np.random.default_rng(seed)
    order, pos = rng.permutation(n), 0
    records, worst = [], {}
    for step in range(1, steps + 1):
        if pos + bs > n:
            order, pos = rng.permutation(n), 0
        idx = order[pos:pos + bs]
        pos += bs
        xb, yb = X[idx], y[idx]
        if lockstep:
            twin.load_weights_from(layers)
        # ours
        xo = to_device(xb, like=like) if like is not None else xb
        out, ins = xo, []
        for layer in layers:
            ins.append(out)
            out = layer.forward(out)
        lo = float(to_numpy(loss.forward(out, to_device(yb, like=out))))
        g = loss.backward()
        tracker.start_step(layers, ins)
        for i in range(len(layers) - 1, -1, -1):
            tracker.before_backward(i, ins[i], g)
            g = layers[i].backward(g, need_input_grad=i > 0)
            tracker.after_backward(i)
        if regularizers.has_any(layers):        # the penalties in the loss and the gradients, as fit does
            lo += float(to_numpy(regularizers.apply(layers)))
        opt.step(layers)
        # keras
        lk = float(keras_step(tf.constant(to_keras_layout(xb), dtype=dtype.name), tf.constant(yk_all[idx])))
        # weights after the step
        step_worst, step_name = 0.0, ""
        for i, layer, pm in weight_maps:
            label = f"{layer.name}.{pm.label}"
            c = Check.of(label, to_numpy(pm.ours(layer.params)), pm.keras_value(), tol, pm.array, pm.index_map,
                         floor=tracker.floor(i, pm.label), allowance=tracker.allowance(i, pm.label))
            if label not in worst or not c.max_rel <= worst[label].max_rel:
                worst[label] = c
            if not c.max_rel <= step_worst:
                step_worst, step_name = c.max_rel, label
        loss_rel = abs(lo - lk) / max(abs(lk), TINY)
        records.append(StepRecord(step, lo, lk, loss_rel, step_worst, step_name))
    for layer in layers:
        layer.clear_cache()
    kcfg = kopt.get_config()
    kdesc = f"{type(kopt).__name__}(" + ", ".join(
        f"{k}={kcfg[k]!r}" for k in ("learning_rate", "momentum", "nesterov", "beta_1", "beta_2", "rho",
                                     "epsilon", "amsgrad", "centered", "weight_decay") if k in kcfg) + ")"
    return TrainingReport(records, list(worst.values()), tol, opt, kdesc, bs, dtype.name, lockstep=lockstep)
