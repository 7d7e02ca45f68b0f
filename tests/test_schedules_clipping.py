"""AdaGrad, AdamW, gradient clipping and learning-rate schedules against Keras's same-named ones.

The harness of test_optimizers.py: identical variables, identical gradient sequences (entries
from 1e-4 to 10, so clipping acts), our optimizer and Keras's compared after every step; float32
to rtol 1e-6 and float64 (dyadic hyperparameters) to 1e-12.  Schedules: their values against
Keras's schedules, boundaries included.  Whole training runs: tests/test_crosscheck_training.py.
"""
import math

import numpy as np
import pytest

import nn_from_scratch as nf
import nn_from_scratch.optimizers  # noqa: F401  (the lab path, used as nf.optimizers below)
from nn_from_scratch.training import schedules as sch
from test_optimizers import ParamHolder, _assert_close, _problem, _run_keras, _run_ours


@pytest.fixture(scope="module")
def keras():
    pytest.importorskip("tensorflow")
    import keras as k
    return k


CASES = [
    (lambda: nf.AdaGrad(), "Adagrad", dict()),
    (lambda: nf.AdaGrad(lr=0.05, initial_accumulator_value=0.5, epsilon=1e-4, weight_decay=0.1), "Adagrad",
     dict(learning_rate=0.05, initial_accumulator_value=0.5, epsilon=1e-4, weight_decay=0.1)),
    (lambda: nf.AdamW(), "AdamW", dict()),
    (lambda: nf.AdamW(lr=0.01, weight_decay=0.1, amsgrad=True), "AdamW",
     dict(learning_rate=0.01, weight_decay=0.1, amsgrad=True)),
    (lambda: nf.GradientDescent(lr=0.05, clipnorm=1.0), "SGD", dict(learning_rate=0.05, clipnorm=1.0)),
    (lambda: nf.GradientDescent(lr=0.05, momentum=0.9, clipvalue=0.5), "SGD",
     dict(learning_rate=0.05, momentum=0.9, clipvalue=0.5)),
    (lambda: nf.GradientDescent(lr=0.05, momentum=0.9, global_clipnorm=2.0), "SGD",
     dict(learning_rate=0.05, momentum=0.9, global_clipnorm=2.0)),
    (lambda: nf.Adam(lr=0.01, clipnorm=0.5), "Adam", dict(learning_rate=0.01, clipnorm=0.5)),
    (lambda: nf.RMSProp(lr=0.01, global_clipnorm=1.0), "RMSprop", dict(learning_rate=0.01, global_clipnorm=1.0)),
    (lambda: nf.AdaGrad(lr=0.05, clipvalue=0.1), "Adagrad", dict(learning_rate=0.05, clipvalue=0.1)),
    (lambda: nf.AdamW(lr=0.01, global_clipnorm=0.3), "AdamW", dict(learning_rate=0.01, global_clipnorm=0.3)),
]
IDS = ["adagrad", "adagrad_custom_wd", "adamw", "adamw_amsgrad", "sgd_clipnorm", "momentum_clipvalue",
       "momentum_global_clipnorm", "adam_clipnorm", "rmsprop_global_clipnorm", "adagrad_clipvalue",
       "adamw_global_clipnorm"]


@pytest.mark.parametrize("make,kname,kkw", CASES, ids=IDS)
def test_matches_keras_float32(keras, make, kname, kkw):
    init, grads = _problem()
    ours = _run_ours(make(), init, grads)
    theirs = _run_keras(keras, getattr(keras.optimizers, kname)(**kkw), init, grads)
    assert np.abs(ours[-1]["W"] - init["W"]).max() > 1e-3
    _assert_close(ours, theirs, kname)


@pytest.mark.parametrize("make,kname,kkw", [
    (lambda: nf.AdaGrad(lr=2 ** -6, initial_accumulator_value=0.25, epsilon=2 ** -20), "Adagrad",
     dict(learning_rate=2 ** -6, initial_accumulator_value=0.25, epsilon=2 ** -20)),
    (lambda: nf.AdamW(lr=2 ** -7, weight_decay=0.125, beta_1=0.75, beta_2=0.96875, epsilon=2 ** -14), "AdamW",
     dict(learning_rate=2 ** -7, weight_decay=0.125, beta_1=0.75, beta_2=0.96875, epsilon=2 ** -14)),
    (lambda: nf.GradientDescent(lr=0.0625, momentum=0.875, clipnorm=0.5), "SGD",
     dict(learning_rate=0.0625, momentum=0.875, clipnorm=0.5)),
    (lambda: nf.GradientDescent(lr=0.0625, global_clipnorm=0.5), "SGD", dict(learning_rate=0.0625, global_clipnorm=0.5)),
], ids=["adagrad", "adamw", "momentum_clipnorm", "sgd_global_clipnorm"])
def test_matches_keras_float64(keras, make, kname, kkw):
    init, grads = _problem(seed=1, dtype=np.float64)
    ours = _run_ours(make(), init, grads)
    theirs = _run_keras(keras, getattr(keras.optimizers, kname)(**kkw), init, grads)
    _assert_close(ours, theirs, kname, rtol=1e-12, atol=1e-14)


def test_defaults_match_keras(keras):
    for ours, theirs in ((nf.AdaGrad(), keras.optimizers.Adagrad()), (nf.AdamW(), keras.optimizers.AdamW())):
        cfg = theirs.get_config()
        assert ours.lr == pytest.approx(cfg["learning_rate"])
        for key in ("initial_accumulator_value", "epsilon", "beta_1", "beta_2", "weight_decay", "amsgrad"):
            if key in cfg:
                assert getattr(ours, key) == pytest.approx(cfg[key] or 0.0), key     # None: no decay


def test_clipping_leaves_the_layers_gradients_alone():
    g = np.full((4, 3), 5.0)
    holder = ParamHolder(W=np.zeros((4, 3)))
    holder.grads = {"W": g.copy()}
    nf.GradientDescent(lr=1.0, clipnorm=1.0).step([holder])
    np.testing.assert_array_equal(holder.grads["W"], g)
    assert np.linalg.norm(holder.params["W"]) == pytest.approx(1.0)


def test_linear_kernel_and_bias_are_clipped_as_two_tensors():
    lin = nf.Linear(3, 2, dtype=np.float64)
    lin._grads["W"] = np.array([[3.0, 4.0], [0.0, 0.0], [6.0, 8.0], [0.0, 0.0]])   # bias row norm 5, kernel 10
    W0 = lin.W.copy()
    nf.GradientDescent(lr=1.0, clipnorm=1.0).step([lin])
    step = W0 - lin.W
    assert np.linalg.norm(step[0]) == pytest.approx(1.0) and np.linalg.norm(step[1:]) == pytest.approx(1.0)


# ------------------------------------------------------------------ schedules
def _keras_values(schedule, steps):
    return np.array([float(schedule(s)) for s in steps])


def test_schedules_match_keras(keras):
    ks = keras.optimizers.schedules
    steps = list(range(0, 130)) + [1000, 10 ** 5]
    pairs = [
        (sch.ExponentialDecay(0.1, 7, 0.8), ks.ExponentialDecay(0.1, 7, 0.8)),
        (sch.ExponentialDecay(0.1, 7, 0.8, staircase=True), ks.ExponentialDecay(0.1, 7, 0.8, staircase=True)),
        (sch.StepDecay(0.1, 10, 0.5), ks.ExponentialDecay(0.1, 10, 0.5, staircase=True)),
        (sch.PiecewiseConstantDecay([10, 20, 50], [1.0, 0.5, 0.1, 0.01]),
         ks.PiecewiseConstantDecay([10, 20, 50], [1.0, 0.5, 0.1, 0.01])),
        (sch.CosineDecay(0.1, 100), ks.CosineDecay(0.1, 100)),
        (sch.CosineDecay(0.1, 100, alpha=0.2), ks.CosineDecay(0.1, 100, alpha=0.2)),
        (sch.CosineDecay(0.0, 80, warmup_target=0.5, warmup_steps=20),
         ks.CosineDecay(0.0, 80, warmup_target=0.5, warmup_steps=20)),
        (sch.CosineDecay(0.01, 60, alpha=0.1, warmup_target=0.2, warmup_steps=15),
         ks.CosineDecay(0.01, 60, alpha=0.1, warmup_target=0.2, warmup_steps=15)),
    ]
    for ours, theirs in pairs:
        got = np.array([ours(s) for s in steps])
        # Keras evaluates in float32
        np.testing.assert_allclose(got, _keras_values(theirs, steps), rtol=2e-6, atol=1e-8, err_msg=repr(ours))


def test_piecewise_boundaries_belong_to_the_left_piece():
    s = sch.PiecewiseConstantDecay([10, 20], [1.0, 0.5, 0.1])
    assert [s(9), s(10), s(11), s(20), s(21)] == [1.0, 1.0, 0.5, 0.5, 0.1]


def test_optimizer_with_a_schedule_matches_keras(keras):
    ks = keras.optimizers.schedules
    init, grads = _problem()
    for ours, theirs in (
            (nf.Adam(lr=sch.ExponentialDecay(0.01, 2, 0.5)), keras.optimizers.Adam(ks.ExponentialDecay(0.01, 2, 0.5))),
            (nf.GradientDescent(lr=sch.CosineDecay(0.0, 4, warmup_target=0.1, warmup_steps=2), momentum=0.9,
                                weight_decay=0.1),
             keras.optimizers.SGD(ks.CosineDecay(0.0, 4, warmup_target=0.1, warmup_steps=2), momentum=0.9,
                                  weight_decay=0.1))):
        _assert_close(_run_ours(ours, init, grads), _run_keras(keras, theirs, init, grads), type(ours).__name__)
        assert ours.iterations == len(grads)


def test_current_rate_and_learning_rate_property():
    opt = nf.GradientDescent(lr=sch.StepDecay(1.0, 2, 0.5))
    holder = ParamHolder(W=np.zeros(3))
    seen = []
    for _ in range(5):
        holder.grads = {"W": np.ones(3)}
        seen.append(opt.learning_rate)
        opt.step([holder])
        assert opt.current_lr == seen[-1]
    assert seen == [1.0, 1.0, 0.5, 0.5, 0.25]
    np.testing.assert_allclose(holder.params["W"], -np.sum(seen))


# ------------------------------------------------------------------ bad input
@pytest.mark.parametrize("bad", [float("nan"), -0.5, float("inf")])
def test_a_schedule_returning_a_bad_rate_names_itself_and_the_step(bad):
    def sched(step):
        return 0.1 if step < 2 else bad
    opt = nf.Adam(lr=sched)
    holder = ParamHolder(W=np.zeros(3))
    for _ in range(2):
        holder.grads = {"W": np.ones(3)}
        opt.step([holder])
    holder.grads = {"W": np.ones(3)}
    W = holder.params["W"].copy()
    with pytest.raises(ValueError, match=r"schedule .*sched.* returned (nan|-0.5|inf) at step 2; a learning rate "
                                         r"must be a finite number >= 0"):
        opt.step([holder])
    np.testing.assert_array_equal(holder.params["W"], W)       # nothing was updated
    assert opt.iterations == 2


def test_bad_clipping_and_schedule_arguments():
    with pytest.raises(ValueError, match=r"at most one of clipnorm, clipvalue, global_clipnorm.*\['clipnorm', 'clipvalue'\]"):
        nf.SGD(clipnorm=1.0, clipvalue=1.0)
    for bad in (0, -1.0, math.inf, "1"):
        with pytest.raises(ValueError, match=r"AdamW: clipnorm must be a finite number > 0"):
            nf.AdamW(clipnorm=bad)
    with pytest.raises(ValueError, match="learning rate must be > 0"):
        nf.AdaGrad(lr=-1)
    with pytest.raises(ValueError, match="ExponentialDecay: decay_steps must be a finite number > 0, received 0"):
        sch.ExponentialDecay(0.1, 0, 0.5)
    with pytest.raises(ValueError, match="values needs one more entry than boundaries"):
        sch.PiecewiseConstantDecay([1, 2], [0.1, 0.2])
    with pytest.raises(ValueError, match="boundaries must increase"):
        sch.PiecewiseConstantDecay([5, 2], [0.1, 0.2, 0.3])
    with pytest.raises(ValueError, match="warmup_target=0.1 needs warmup_steps > 0"):
        sch.CosineDecay(0.0, 10, warmup_target=0.1)
    with pytest.raises(ValueError, match="initial_learning_rate must be a finite number >= 0, received -0.1"):
        sch.CosineDecay(-0.1, 10)


def test_names_and_aliases():
    assert nf.Adagrad is nf.AdaGrad
    assert type(nf.optimizers.get("adamw")) is nf.AdamW and type(nf.optimizers.get("adagrad")) is nf.AdaGrad
    for name in ("ExponentialDecay", "StepDecay", "PiecewiseConstantDecay", "CosineDecay", "LearningRateSchedule"):
        assert getattr(nf, name) is getattr(sch, name)


def test_schedules_clipping_and_metrics_are_saved_with_the_model(tmp_path):
    net = nf.NeuralNetwork([nf.Linear(3, 4)], metrics=["top_2_accuracy"],
                           optimizer=nf.AdamW(lr=sch.CosineDecay(0.0, 50, warmup_target=0.01, warmup_steps=5),
                                              weight_decay=0.02, clipnorm=0.5))
    back = nf.NeuralNetwork.load(net.save(str(tmp_path / "m.npz")))
    assert type(back.optimizer) is nf.AdamW and back.optimizer.clipnorm == 0.5
    assert back.optimizer.weight_decay == 0.02
    assert isinstance(back.optimizer.lr, sch.CosineDecay)
    assert back.optimizer.lr.get_config() == net.optimizer.lr.get_config()
    assert [m.name for m in back.metrics] == ["accuracy", "top_2_accuracy"]
    # a user's callable cannot be recorded: its current rate is, with a warning
    odd = nf.NeuralNetwork([nf.Linear(3, 4)], optimizer=nf.SGD(lr=lambda step: 0.5 / (step + 1)))
    with pytest.warns(RuntimeWarning, match="cannot be recorded; the file holds its current rate 0.5"):
        odd.save(str(tmp_path / "o.npz"))
    assert nf.NeuralNetwork.load(str(tmp_path / "o.npz")).optimizer.lr == 0.5


def test_learning_rate_setter_and_infinite_rate():
    opt = nf.Adam()
    opt.learning_rate = 0.05
    assert opt.lr == 0.05 and opt.learning_rate == 0.05
    opt.learning_rate = sch.StepDecay(0.1, 10)
    assert opt.learning_rate == 0.1
    for bad in (float("inf"), -1.0, 0.0):
        with pytest.raises(ValueError, match="learning rate must be (> 0|finite)"):
            opt.learning_rate = bad
    with pytest.raises(ValueError, match="learning rate must be finite, received inf"):
        nf.SGD(lr=float("inf"))


def test_reduce_lr_on_plateau_refuses_a_scheduled_optimizer():
    net = nf.NeuralNetwork([nf.Linear(3, 2)], optimizer=nf.SGD(lr=sch.StepDecay(0.1, 10)))
    cb = nf.ReduceLROnPlateau(monitor="loss", patience=0)
    cb.set_network(net)
    cb.on_train_begin({})
    cb.on_epoch_end(0, {"loss": 1.0})
    with pytest.raises(ValueError, match="the optimizer's learning rate is a schedule"):
        cb.on_epoch_end(1, {"loss": 2.0})
