"""KFAC / EKFAC optimizers (nn_from_scratch/kfac/optimizers.py) and their trainer hook.

References: the Gauss-Newton block of a deep linear least-squares model from central finite
differences of the network output (exact for outputs linear in a layer's parameters) solved with
``numpy.linalg``; ``curvature.kfac_factors``/``ekfac_scalings`` (held to their own references in
test_curvature.py) on the same batch; the plain momentum rule written out in the test.
"""
import math

import numpy as np
import pytest

from nn_from_scratch import (EKFAC, KFAC, Adam, Convolution, Flatten, GradientDescent, Linear, MaxPool,
                             MSELoss, NeuralNetwork, ReLU, SoftMaxLoss, Tanh)
from nn_from_scratch.training import optimizers
from nn_from_scratch.analysis import curvature as cv
from nn_from_scratch.kfac import statistics as ls
from nn_from_scratch.interfaces import Neuron
from gpu_utils import requires_gpu

F64 = np.float64


from seeding import seeded_layers  # noqa: E402,F401 - autouse: seeded weights in every test
from jacobians import fd_output_jacobian


def close(a, b, tol=1e-10):
    a, b = np.asarray(a, dtype=F64), np.asarray(b, dtype=F64)
    scale = max(1e-300, float(np.abs(b).max(initial=0.0)))
    err = float(np.abs(a - b).max(initial=0.0))
    assert err <= tol * scale, f"max |difference| {err:.3e} > {tol:.0e} x {scale:.3e}"


def test_one_undamped_step_is_the_gauss_newton_step_of_each_block(rng):
    layers = [Linear(4, 3, dtype=F64, seed=1), Linear(3, 3, dtype=F64, seed=2),
              Linear(3, 3, dtype=F64, use_bias=False, seed=3)]
    opt = KFAC(lr=1.0, damping=1e-11, cov_every=1, inv_every=1, fisher="gauss_newton", kl_clip=None, momentum=0.0)
    net = NeuralNetwork(layers, loss_fn=MSELoss(), optimizer=opt, workers=1)
    X, y = rng.standard_normal((12, 4)), rng.standard_normal((12, 3))
    before = {layer.name: ls.to_matrix(layer, {k: v.copy() for k, v in layer.params.items()}) for layer in layers}
    expected = {}
    grads = net.gradients(X, y)
    for layer in layers:
        J = fd_output_jacobian(net, layer, X)
        GN = np.einsum("ndp,ndq->pq", J, J) * (2.0 / J.shape[1]) / X.shape[0]
        g = ls.to_matrix(layer, {k[1]: v for k, v in grads.items() if k[0] == layer.name}).reshape(-1)
        assert np.linalg.cond(GN) < 1e4                     # a well-posed Newton step (seeded weights)
        expected[layer.name] = -np.linalg.solve(GN, g)
    assert opt.needs_layer_statistics
    net.train_step(X, y)
    for layer in layers:
        step = ls.to_matrix(layer, dict(layer.params)) - before[layer.name]
        close(step.reshape(-1), expected[layer.name], 1e-6)


def test_kfac_step_is_the_damped_solve_with_kl_clip_and_momentum(rng):
    """Two steps by hand: V' = (G (x) A + damping I)^-1 V, nu = min(1, sqrt(kl / (lr^2 <V', V>))), momentum."""
    lin = Linear(3, 2, dtype=F64)
    opt = KFAC(lr=0.3, damping=0.01, cov_every=1, inv_every=1, decay=0.5, kl_clip=1e-3, momentum=0.9)
    net = NeuralNetwork([lin], loss_fn=SoftMaxLoss(), optimizer=opt, workers=1)
    X, y = rng.standard_normal((6, 3)), rng.integers(0, 2, 6)
    velocity = np.zeros((2, 4))
    A_run = G_run = None
    for step in range(2):
        xb, yb = X[3 * step:3 * step + 3], y[3 * step:3 * step + 3]
        kf = cv.kfac_factors(net, xb, yb)[lin.name]
        A_run = kf.A if A_run is None else 0.5 * A_run + 0.5 * kf.A
        G_run = kf.G if G_run is None else 0.5 * G_run + 0.5 * kf.G
        V = ls.to_matrix(lin, {"W": net.gradients(xb, yb)[(lin.name, "W")]})
        Vp = np.linalg.solve(np.kron(G_run, A_run) + 0.01 * np.eye(8), V.reshape(-1)).reshape(2, 4)
        nu = min(1.0, math.sqrt(1e-3 / (0.3 ** 2 * abs((Vp * V).sum()))))
        velocity = 0.9 * velocity - 0.3 * nu * Vp
        expected = ls.to_matrix(lin, {"W": lin.W.copy()}) + velocity
        net.train_step(xb, yb)
        close(ls.to_matrix(lin, {"W": lin.W}), expected, 1e-9)
        assert nu < 1.0 or step == 0       # the clip is active in this example at least once
        if step == 1:
            assert nu < 1.0


def test_ekfac_without_reestimation_is_kfac_and_with_it_uses_the_batch_scalings(rng):
    def make(opt):
        net = NeuralNetwork([Convolution((None, 2, 5, 5), kernel_size=3, output_layers=3, padding=1, seed=1,
                                         dtype=F64), ReLU(), Flatten(), Linear(75, 3, seed=2, dtype=F64)],
                            loss_fn=SoftMaxLoss(), optimizer=opt, workers=1)
        return net
    X, y = rng.standard_normal((40, 2, 5, 5)), rng.integers(0, 3, 40)
    k = make(KFAC(lr=0.05, damping=1e-2, cov_every=2, inv_every=4))
    e = make(EKFAC(lr=0.05, damping=1e-2, cov_every=2, inv_every=4, scale_every=1000))
    for b in range(8):
        k.train_step(X[5 * b:5 * b + 5], y[5 * b:5 * b + 5])
        e.train_step(X[5 * b:5 * b + 5], y[5 * b:5 * b + 5])
    for lk, le in zip(k.trainable_layers, e.trainable_layers):
        for name in lk.params:
            close(le.params[name], lk.params[name], 1e-12)
    # with re-estimation: the scalings are those of the batch's per-example gradients in the basis in use
    opt = EKFAC(lr=0.05, damping=1e-2, cov_every=1, inv_every=100, scale_every=1, decay=0.0)
    net = make(opt)
    net.train_step(X[:5], y[:5])                         # step 0: statistics and the first basis
    bases = {layer.name: opt.curvature(layer).factors for layer in net.trainable_layers}
    for layer in net.trainable_layers:
        close(opt.curvature(layer).dense(), bases[layer.name].dense(), 1e-12)     # not re-estimated yet
    ref = cv.ekfac_scalings(net, X[5:10], y[5:10], bases)
    net.train_step(X[5:10], y[5:10])
    for layer in net.trainable_layers:
        close(opt.curvature(layer).scalings, ref[layer.name], 1e-9)
        assert np.abs(ref[layer.name] - bases[layer.name].eigenvalues()).max() > 1e-6


class Scale(Neuron):
    """y = x * s (elementwise, s: (D,)): a trainable layer K-FAC has no block for."""

    per_sample = True

    def __init__(self, d):
        super().__init__((None, d), dtype=F64)
        self._params["s"] = np.linspace(0.5, 1.5, d)

    def _forward(self, x):
        self._cache["x"] = x
        return x * self._params["s"]

    def _backward(self, dy, need_input_grad=True):
        self._grads["s"] = (dy * self._cache["x"]).sum(axis=0)
        return dy * self._params["s"] if need_input_grad else None


def test_other_trainable_layers_get_the_plain_momentum_step(rng):
    scale = Scale(3)
    opt = KFAC(lr=0.1, momentum=0.5, cov_every=1)
    net = NeuralNetwork([scale, Linear(3, 2, dtype=F64)], loss_fn=SoftMaxLoss(), optimizer=opt, workers=1)
    X, y = rng.standard_normal((4, 3)), rng.integers(0, 2, 4)
    v = np.zeros(3)
    for _ in range(2):
        s0 = scale.params["s"].copy()
        g = net.gradients(X, y)[(scale.name, "s")]
        v = 0.5 * v - 0.1 * g
        net.train_step(X, y)
        close(scale.params["s"], s0 + v, 1e-12)


@pytest.mark.parametrize("opt", [KFAC(lr=0.02, damping=1e-2), EKFAC(lr=0.02, damping=1e-2, scale_every=5),
                                 KFAC(lr=0.02, damping=1e-2, fisher="mc", cov_every=3, inv_every=9)],
                         ids=["kfac", "ekfac", "kfac-mc"])
def test_fit_trains_a_small_cnn(opt, rng):
    X = rng.standard_normal((96, 1, 6, 6)).astype(np.float32)
    y = (X[:, 0, :3].sum(axis=(1, 2)) > X[:, 0, 3:].sum(axis=(1, 2))).astype(int)
    net = NeuralNetwork([Convolution((None, 1, 6, 6), kernel_size=3, output_layers=4, padding=1, seed=0), ReLU(),
                         MaxPool((None, 4, 6, 6), 2), Flatten(), Linear(36, 2, seed=1)],
                        loss_fn=SoftMaxLoss(), optimizer=opt, workers=1)
    hist = net.fit(X, y, epochs=6, batch_size=16, verbose=0, seed=0)
    loss = hist.history["loss"]
    assert loss[-1] < 0.5 * loss[0]
    assert opt.iterations == 36
    assert all(np.isfinite(p).all() for layer in net.trainable_layers for p in layer.params.values())


def test_hook_is_asked_only_on_statistics_steps(rng, monkeypatch):
    opt = KFAC(cov_every=3)
    calls = []
    real = opt.forward_backward

    def spy(net, xb, yb, sample_weight=None):
        calls.append(opt.iterations)
        return real(net, xb, yb, sample_weight=sample_weight)
    monkeypatch.setattr(opt, "forward_backward", spy)
    net = NeuralNetwork([Linear(3, 2)], loss_fn=SoftMaxLoss(), optimizer=opt, workers=1)
    net.fit(rng.standard_normal((20, 3)), rng.integers(0, 2, 20), epochs=2, batch_size=4, verbose=0)
    assert calls == [0, 3, 6, 9]
    for other in (GradientDescent(), Adam()):
        assert not getattr(other, "needs_layer_statistics", False)


def test_saved_model_keeps_the_optimizer(tmp_path, rng):
    net = NeuralNetwork([Linear(3, 2)], loss_fn=SoftMaxLoss(), optimizer=EKFAC(lr=0.05, damping=0.01, scale_every=7))
    path = net.save(str(tmp_path / "m.npz"))
    back = NeuralNetwork.load(path)
    assert isinstance(back.optimizer, EKFAC) and back.optimizer.get_config() == net.optimizer.get_config()
    assert optimizers.get("kfac").get_config() == KFAC().get_config()


def test_bad_arguments_are_named():
    for kwargs, pat in [({"damping": 0}, "damping must be a finite number > 0"),
                        ({"damping": -1e-3}, "damping must be a finite number > 0"),
                        ({"damping": float("nan")}, "damping must be a finite number > 0"),
                        ({"decay": 1.0}, r"decay must be in \[0, 1\)"),
                        ({"cov_every": 0}, "cov_every must be an int >= 1"),
                        ({"inv_every": 2.5}, "inv_every must be an int >= 1"),
                        ({"fisher": "true"}, "fisher must be one of"),
                        ({"kl_clip": -1.0}, "kl_clip must be a finite number > 0 or None"),
                        ({"momentum": 1.0}, r"momentum must be in \[0, 1\)"),
                        ({"weight_decay": -0.1}, "weight_decay must be a finite number >= 0")]:
        with pytest.raises(ValueError, match=pat):
            KFAC(**kwargs)
    with pytest.raises(ValueError, match="EKFAC: scale_every must be an int >= 1"):
        EKFAC(scale_every=0)
    with pytest.raises(ValueError, match="learning rate must be > 0"):
        KFAC(lr=0)


def test_type2_with_a_squared_loss_is_refused_at_fit(rng):
    net = NeuralNetwork([Linear(3, 2)], loss_fn=MSELoss(), optimizer=KFAC(fisher="type2"), workers=1)
    with pytest.raises(ValueError, match="KFAC: fisher='type2'.*SoftMaxLoss.*MSELoss"):
        net.fit(rng.standard_normal((8, 3)), rng.standard_normal((8, 2)), epochs=1, verbose=0)


def test_a_manual_loop_without_the_hook_warns_and_steps_plainly(rng):
    lin = Linear(3, 2, dtype=F64)
    opt = KFAC(lr=0.1, momentum=0.0)
    net = NeuralNetwork([lin, Tanh()], loss_fn=MSELoss(), optimizer=opt, workers=1)
    X, y = rng.standard_normal((4, 3)), rng.standard_normal((4, 2))
    out = net.forward(X)
    net.loss_fn.forward(out, y)
    net.backward(net.loss_fn.backward())
    W0, g = lin.W.copy(), lin.W_grad.copy()
    with pytest.warns(RuntimeWarning, match="no curvature statistics.*forward_backward"):
        opt.step(net.layers)
    close(lin.W, W0 - 0.1 * g, 1e-12)


@requires_gpu
def test_cupy_kfac_training_equals_numpy(gpu, rng):
    from nn_from_scratch import backend as nnb

    def run():
        net = NeuralNetwork([Convolution((None, 1, 6, 6), kernel_size=3, output_layers=3, seed=0, dtype=F64), ReLU(),
                             Flatten(), Linear(48, 2, seed=1, dtype=F64)], loss_fn=SoftMaxLoss(),
                            optimizer=EKFAC(lr=0.05, damping=1e-2, cov_every=2, inv_every=4, scale_every=3), workers=1)
        X = rng_x.standard_normal((32, 1, 6, 6))
        y = (X[:, 0, :3].sum(axis=(1, 2)) > 0).astype(int)
        net.fit(X, y, epochs=2, batch_size=8, verbose=0, seed=0)
        return [nnb.to_numpy(p) for layer in net.trainable_layers for p in layer.params.values()]
    rng_x = np.random.default_rng(5)
    on_gpu = run()
    nnb.use("numpy")
    try:
        rng_x = np.random.default_rng(5)
        on_host = run()
    finally:
        nnb.use("cupy")
    for a, b in zip(on_gpu, on_host):
        close(a, b, 1e-8)


def test_learning_rate_schedule_is_read_at_each_step(rng):
    """lr as a schedule: step t uses schedule(t) (no momentum, no clip: the step is -lr_t * V')."""
    from nn_from_scratch.training.schedules import ExponentialDecay
    lin = Linear(3, 2, dtype=F64)
    opt = KFAC(lr=ExponentialDecay(0.5, 1, 0.5), damping=0.1, decay=0.0, cov_every=1, inv_every=1, kl_clip=None,
               momentum=0.0)
    net = NeuralNetwork([lin], loss_fn=SoftMaxLoss(), optimizer=opt, workers=1)
    X, y = rng.standard_normal((4, 3)), rng.integers(0, 2, 4)
    for t in range(3):
        W0 = lin.W.copy()
        kf = cv.kfac_factors(net, X, y)[lin.name]
        V = ls.to_matrix(lin, {"W": net.gradients(X, y)[(lin.name, "W")]})
        net.train_step(X, y)
        close(ls.to_matrix(lin, {"W": lin.W - W0}), -0.5 * 0.5 ** t * kf.solve(V, 0.1), 1e-9)


def test_a_trained_model_saves_and_resumes(tmp_path, rng):
    """Momenta and the step count are saved; the factors are recorded again at the first step after loading."""
    X, y = rng.standard_normal((32, 3)), rng.integers(0, 2, 32)
    net = NeuralNetwork([Linear(3, 4), Tanh(), Linear(4, 2)], loss_fn=SoftMaxLoss(),
                        optimizer=EKFAC(lr=0.05, damping=0.01, cov_every=3, inv_every=6), workers=1)
    net.fit(X, y, epochs=2, batch_size=8, verbose=0, seed=0)
    path = net.save(str(tmp_path / "trained.npz"))
    back = NeuralNetwork.load(path)
    assert back.optimizer.iterations == 8 and back.optimizer.needs_layer_statistics
    assert back.optimizer.curvature(back.layers[0]) is None
    back.fit(X, y, epochs=1, batch_size=8, verbose=0, seed=0)
    assert back.optimizer.iterations == 12 and back.optimizer.curvature(back.layers[0]) is not None


# ----------------------------------------------------------------------------- defaults and divergence
def _mlp_task(rng):
    X = rng.standard_normal((256, 20)).astype(np.float32)
    y = (X[:, :10].sum(1) > X[:, 10:].sum(1)).astype(int) + 2 * (X[:, 0] > 0)
    return X, y


def _mlp(opt):
    return NeuralNetwork([Linear(20, 64, seed=0), ReLU(), Linear(64, 64, seed=1), ReLU(), Linear(64, 4, seed=2)],
                         loss_fn=SoftMaxLoss(), optimizer=opt, workers=1)


def test_the_defaults_are_the_documented_ones():
    """damping 0.1 and lr 0.01 (benchmarks/kfac_defaults.py; docs/analysis/curvature.md); EKFAC's
    scalings on the statistics steps (``scale_every=None`` trains as ``scale_every=cov_every``)."""
    for cls in (KFAC, EKFAC):
        cfg = cls().get_config()
        assert cfg["damping"] == 0.1 and cfg["lr"] == 0.01 and cfg["cov_every"] == 10 and cfg["inv_every"] == 100
    assert EKFAC().scale_every is None


def test_ekfac_scalings_on_the_statistics_steps_by_default(rng):
    X, y = _mlp_task(rng)
    a, b = _mlp(EKFAC(cov_every=3, inv_every=30)), _mlp(EKFAC(cov_every=3, inv_every=30, scale_every=3))
    a.fit(X[:96], y[:96], epochs=1, batch_size=8, verbose=0, seed=0)
    b.fit(X[:96], y[:96], epochs=1, batch_size=8, verbose=0, seed=0)
    for la, lb in zip(a.trainable_layers, b.trainable_layers):
        np.testing.assert_array_equal(la.W, lb.W)
    c = a.optimizer.curvature(a.layers[0])            # re-estimated at steps 3, 6, 9 in the basis of step 0
    assert np.abs(c.scalings - c.factors.eigenvalues()).max() > 1e-6


@pytest.mark.parametrize("cls", [KFAC, EKFAC])
def test_too_little_damping_warns_naming_damping(cls, rng):
    from nn_from_scratch import TrainingWarning
    X, y = _mlp_task(rng)
    net = _mlp(cls(lr=0.3, damping=1e-4, cov_every=2))
    with pytest.warns(TrainingWarning, match=rf"{cls.__name__}: the training loss is diverging under {cls.__name__}"
                                             r".*the damping \(0\.0001\) is too small.*Raise damping \(the default "
                                             r"is 0\.1"):
        net.fit(X, y, epochs=4, batch_size=32, verbose=0, seed=0)


@pytest.mark.parametrize("cls", [KFAC, EKFAC])
def test_the_defaults_train_without_a_warning(cls, rng):
    import warnings
    X, y = _mlp_task(rng)
    net = _mlp(cls(cov_every=2))
    with warnings.catch_warnings():
        warnings.simplefilter("error")                  # any warning fails the test
        hist = net.fit(X, y, epochs=8, batch_size=32, verbose=0, seed=0)
    loss = hist.history["loss"]
    assert loss[-1] < 0.1 * loss[0]


def test_the_loss_watch_verdicts():
    from nn_from_scratch.kfac.optimizers import _LossWatch
    w = _LossWatch()
    noisy_descent = [2.3, 1.9, 1.2, 0.8, 0.5, 0.3, 0.45, 0.2, 0.35, 0.15, 0.3, 0.2, 0.4]
    assert [w.add(v) for v in noisy_descent] == [None] * len(noisy_descent)
    w = _LossWatch()
    verdicts = [w.add(v) for v in [2.3, 1.5, 1.1, 1.0, 1.6, 2.6, 3.5, 4.0, 4.2]]     # smoothed: lowest 1.48, then 3.37
    assert verdicts[:5] == [None] * 5 and any(verdicts[5:])
    assert "rose from" in next(v for v in verdicts if v)
    w = _LossWatch()
    assert w.add(2.3) is None and w.add(float("nan")) == "a batch's loss is nan"


@pytest.mark.parametrize("conv_args,form", [(dict(kernel_size=3, stride=2, padding=1), "patches"),
                                            (dict(kernel_size=5, stride=1, padding=0), "row windows")])
def test_kfac_factors_of_the_optimizer_equal_the_analysis_tool(conv_args, form, rng):
    """The optimizer's A (one symmetric product of the patch rows or the row-window Gramian, the bias
    row from the patches' sums) and G, after one statistics step with decay 0, equal
    ``curvature.kfac_factors`` of the batch (which test_curvature.py holds to a loop over patches and
    the gathering-filter convolution)."""
    conv = Convolution((None, 2, 6, 6) if form == "patches" else (None, 2, 8, 8), output_layers=3, seed=1,
                       dtype=F64, **conv_args)
    assert ls.input_factor_form(conv, (7,) + conv.input_shape) == form
    out = math.prod(conv.compute_output_shape(conv.input_shape))
    layers = [conv, ReLU(), Flatten(), Linear(out, 3, seed=2, dtype=F64)]
    opt = KFAC(cov_every=1, decay=0.0)
    net = NeuralNetwork(layers, loss_fn=SoftMaxLoss(), optimizer=opt, workers=1)
    X, y = rng.standard_normal((7,) + conv.input_shape), rng.integers(0, 3, 7)
    ref = cv.kfac_factors(net, X, y)
    net.train_step(X, y)
    for layer in net.trainable_layers:
        kf = opt.curvature(layer)
        close(kf.A, ref[layer.name].A, 1e-12)
        close(kf.G, ref[layer.name].G, 1e-12)


# ----------------------------------------------------------------------------- the package and its names
def test_names_and_old_paths_reach_the_kfac_package():
    import importlib
    import nn_from_scratch.kfac as kfac_pkg
    from nn_from_scratch.kfac.optimizers import EKFAC as E2, KFAC as K2
    assert K2 is KFAC and E2 is EKFAC and kfac_pkg.KFAC is KFAC
    assert type(optimizers.get("kfac")) is KFAC and type(optimizers.get("EKFAC")) is EKFAC
    assert optimizers.KFAC is KFAC                                   # the attribute it had when it lived there
    assert type(NeuralNetwork([Linear(3, 2)], loss_fn=SoftMaxLoss(), optimizer="ekfac").optimizer) is EKFAC
    for old, new in [("training.kfac_optim", "kfac.optimizers"), ("kfac_optim", "kfac.optimizers"),
                     ("training.kronecker", "kfac.factors"), ("analysis.kronecker", "kfac.factors"),
                     ("training.layer_statistics", "kfac.statistics"),
                     ("analysis.layer_statistics", "kfac.statistics")]:
        assert importlib.import_module(f"nn_from_scratch.{old}") is importlib.import_module(f"nn_from_scratch.{new}")
    from nn_from_scratch.training.optimizer_base import optimizer_class
    assert optimizer_class("kfac") is KFAC and optimizer_class("EKFAC") is EKFAC   # the registry, by name
    with pytest.raises(ValueError, match="'kfac' already names the optimizer KFAC"):
        class MyKFAC(optimizers.GradientDescent):                      # a user's class cannot take it
            names = ("kfac",)
    assert optimizer_class("kfac") is KFAC


def test_training_alone_gets_kfac_by_name_in_a_fresh_interpreter():
    """``training/`` never imports ``kfac/``; the package's import registers it, so a user who imports
    only ``nn_from_scratch.training.optimizers`` still gets ``"kfac"`` and can load a K-FAC model."""
    import os
    import subprocess
    import sys
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    code = ("from nn_from_scratch.training import optimizers as o\n"
            "import sys\n"
            "print(type(o.get('kfac')).__name__, type(o.get('ekfac')).__name__, 'nn_from_scratch.kfac' in sys.modules)")
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([root, os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep))
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=root, env=env, timeout=120)
    assert done.returncode == 0 and done.stdout.split() == ["KFAC", "EKFAC", "True"], done.stderr
