"""Callbacks (``nn_from_scratch.callbacks``): the protocol as ``fit`` calls it, and each built-in
callback against Keras's same-named one driven through the same sequence of epoch logs.

The Keras references are Keras's own callbacks (``keras.callbacks.EarlyStopping`` etc.) attached
to a one-weight Keras model; both callbacks see the same logs epoch by epoch and both models
hold "the epoch number" as their weight, so which epoch's weights were restored is read off
the weight.
"""
import csv
import math
import warnings

import numpy as np
import pytest

import nn_from_scratch as nf
from nn_from_scratch.training import callbacks as cbm

keras = pytest.importorskip("keras")


def blobs(rng, n=120, d=6, k=3, spread=0.7):
    centres = 2.0 * rng.standard_normal((k, d))
    y = rng.integers(0, k, n)
    return centres[y] + spread * rng.standard_normal((n, d)), y


def mlp(seed=0, lr=0.1, d=6, k=3, optimizer=None):
    return nf.NeuralNetwork([nf.Linear(d, 8, seed=seed), nf.ReLU(), nf.Linear(8, k, seed=seed + 1)],
                            optimizer=optimizer or nf.GradientDescent(lr))


class Recorder(nf.Callback):
    def __init__(self):
        self.calls = []
        self.weights = []

    def on_train_begin(self, logs=None):
        self.calls.append(("train_begin",))

    def on_epoch_begin(self, epoch, logs=None):
        self.calls.append(("epoch_begin", epoch))

    def on_batch_end(self, batch, logs=None):
        self.calls.append(("batch_end", batch, logs["loss"]))

    def on_epoch_end(self, epoch, logs=None):
        self.calls.append(("epoch_end", epoch, dict(logs)))
        self.weights.append(self.network.get_weights())

    def on_train_end(self, logs=None):
        self.calls.append(("train_end",))


# ------------------------------------------------------------------ protocol
def test_hooks_are_called_in_keras_order_with_0_based_epochs_and_logs(rng):
    X, y = blobs(rng, n=30)
    net = mlp()
    rec = Recorder()
    hist = net.fit(X, y, epochs=2, batch_size=10, seed=0, verbose=0, validation_data=(X[:9], y[:9]),
                   callbacks=[rec])
    kinds = [c[0] for c in rec.calls]
    assert kinds == (["train_begin"] + (["epoch_begin"] + ["batch_end"] * 3 + ["epoch_end"]) * 2
                     + ["train_end"])
    assert [c[1] for c in rec.calls if c[0] == "epoch_begin"] == [0, 1]
    assert [c[1] for c in rec.calls if c[0] == "batch_end"] == [0, 1, 2, 0, 1, 2]
    # batch logs: each batch's own loss, as the history records it
    assert [c[2] for c in rec.calls if c[0] == "batch_end"] == hist.batch_loss
    ends = [c[2] for c in rec.calls if c[0] == "epoch_end"]
    assert set(ends[0]) == {"loss", "accuracy", "val_loss", "val_accuracy"}
    for key in ends[0]:
        assert [e[key] for e in ends] == hist.history[key]
    assert rec.network is net and rec.model is net
    assert rec.params["epochs"] == 2 and rec.params["steps"] == 3
    assert rec.params["metrics"] == ["loss", "accuracy", "val_loss", "val_accuracy"]


def test_stop_training_after_a_batch_ends_that_epoch_with_its_logs(rng):
    X, y = blobs(rng, n=40)

    class StopAt(nf.Callback):
        def on_batch_end(self, batch, logs=None):
            if batch == 1:
                self.network.stop_training = True

    net = mlp()
    rec = Recorder()
    hist = net.fit(X, y, epochs=5, batch_size=10, seed=0, verbose=0, callbacks=[StopAt(), rec])
    assert net.optimizer.iterations == 2           # two steps taken, not four
    assert len(hist.epoch) == 1 and len(hist.batch_loss) == 2
    # the epoch's loss is the mean over the batches that ran (equal batches)
    assert hist.history["loss"][0] == pytest.approx(np.mean(hist.batch_loss), rel=1e-6)
    assert [c[0] for c in rec.calls][-2:] == ["epoch_end", "train_end"]
    assert "StopAt" in hist.stopped
    # the next fit starts afresh
    hist2 = net.fit(X, y, epochs=2, batch_size=10, seed=0, verbose=0)
    assert len(hist2.epoch) == 2 and hist2.stopped is None


def test_a_raising_callback_is_named_with_its_hook(rng):
    X, y = blobs(rng, n=20)

    class Broken(nf.Callback):
        def on_epoch_end(self, epoch, logs=None):
            raise KeyError("no such thing")

    net = mlp()
    with pytest.raises(nf.CallbackError, match=r"Broken\.on_epoch_end raised KeyError") as info:
        net.fit(X, y, epochs=2, batch_size=10, verbose=0, callbacks=[Broken()])
    assert isinstance(info.value.__cause__, KeyError)
    assert info.value.hook == "on_epoch_end"
    # the network is left usable: caches cleared, the next fit runs
    assert all(not layer._cache for layer in net.layers)
    net.fit(X, y, epochs=1, batch_size=10, verbose=0)


def test_not_a_callback_is_refused_by_position(rng):
    X, y = blobs(rng, n=20)
    with pytest.raises(TypeError, match=r"callbacks\[1\] is function"):
        mlp().fit(X, y, verbose=0, callbacks=[nf.TerminateOnNaN(), lambda e: None])


def test_no_batch_callback_means_no_batch_calls():
    net = mlp()
    lst = cbm.CallbackList([nf.TerminateOnNaN(), nf.EarlyStopping(monitor="loss"), nf.CSVLogger("x.csv")],
                           net, {})
    assert lst.batch_callbacks == []
    lam = nf.LambdaCallback(on_batch_end=lambda b, logs: None)
    assert cbm.CallbackList([lam], net, {}).batch_callbacks == [lam]


def test_importable_from_both_places():
    for name in set(cbm.__all__) - {"CallbackList"}:
        assert getattr(nf, name) is getattr(cbm, name)
    assert nf.callbacks is cbm


# ------------------------------------------------------------------ Keras references
def _keras_model():
    m = keras.Sequential([keras.Input((1,)), keras.layers.Dense(1, use_bias=False)])
    m.compile(optimizer=keras.optimizers.SGD(learning_rate=0.1), loss="mse")
    return m


def _one_weight_net(lr=0.1):
    return nf.NeuralNetwork([nf.Linear(1, 1, use_bias=False)], loss_fn=nf.MSELoss(),
                            optimizer=nf.GradientDescent(lr))


def _drive(values, ours, theirs, key="val_loss"):
    """Feed the same epoch logs to our callback and Keras's; each model's weight = the epoch.

    Returns (our stop epoch, Keras's stop epoch, our final weight, Keras's final weight)."""
    net, km = _one_weight_net(), _keras_model()
    ours.set_network(net)
    ours.set_params({"metrics": [key]})
    theirs.set_model(km)
    ours.on_train_begin({})
    theirs.on_train_begin({})
    stop_o = stop_k = None
    for epoch, v in enumerate(values):
        if stop_o is None:
            net.set_weights([np.full((2, 1), epoch, dtype=np.float32)])
            ours.on_epoch_end(epoch, {key: v})
            if net.stop_training:
                stop_o = epoch
        if stop_k is None:
            km.set_weights([np.full((1, 1), epoch, dtype=np.float32)])
            theirs.on_epoch_end(epoch, {key: v})
            if km.stop_training:
                stop_k = epoch
    ours.on_train_end({})
    theirs.on_train_end({})
    return stop_o, stop_k, float(net.get_weights()[0][1, 0]), float(km.get_weights()[0][0, 0])


def _sequences(seed, n=12, count=40):
    rng = np.random.default_rng(seed)
    for _ in range(count):
        kind = rng.integers(3)
        if kind == 0:      # coarse values: ties and exact min_delta steps happen
            yield list(np.round(rng.uniform(0, 1, n), 1))
        elif kind == 1:    # a decreasing trend with noise, then a plateau
            yield list(np.round(np.concatenate([np.linspace(1, 0.5, n // 2), 0.5 + 0.02 * rng.standard_normal(n - n // 2)]), 3))
        else:
            yield list(rng.uniform(0, 1, n))


@pytest.mark.parametrize("patience,min_delta,baseline,restore", [
    (0, 0, None, False), (2, 0, None, True), (3, 0.05, None, True), (1, 0.1, None, False),
    (2, 0, 0.4, True), (4, 0.01, None, True)])
def test_early_stopping_stops_and_restores_as_keras(patience, min_delta, baseline, restore):
    for values in _sequences(patience * 100 + int(min_delta * 1000)):
        kw = dict(monitor="val_loss", patience=patience, min_delta=min_delta, baseline=baseline,
                  restore_best_weights=restore)
        o = nf.EarlyStopping(**kw)
        k = keras.callbacks.EarlyStopping(**kw)
        stop_o, stop_k, w_o, w_k = _drive(values, o, k)
        assert stop_o == stop_k, values
        assert w_o == w_k, values                  # the same epoch's weights restored (or the last)
        assert o.stopped_epoch == k.stopped_epoch and o.best_epoch == k.best_epoch, values


def test_early_stopping_on_an_accuracy_maximises_as_keras():
    for values in _sequences(7):
        o = nf.EarlyStopping(monitor="val_accuracy", patience=2, min_delta=0.05, restore_best_weights=True)
        assert o.mode == "max"
        k = keras.callbacks.EarlyStopping(monitor="val_accuracy", mode="max", patience=2, min_delta=0.05,
                                          restore_best_weights=True)
        stop_o, stop_k, w_o, w_k = _drive(values, o, k, key="val_accuracy")
        assert (stop_o, w_o) == (stop_k, w_k), values


def test_reduce_lr_on_plateau_follows_keras_rates():
    for values in _sequences(3, n=25, count=30):
        kw = dict(monitor="val_loss", factor=0.5, patience=2, min_delta=0.01, cooldown=1, min_lr=0.01)
        o, k = nf.ReduceLROnPlateau(**kw), keras.callbacks.ReduceLROnPlateau(**kw)
        net, km = _one_weight_net(lr=0.1), _keras_model()
        o.set_network(net)
        o.set_params({"metrics": ["val_loss"]})
        k.set_model(km)
        o.on_train_begin({})
        k.on_train_begin({})
        for epoch, v in enumerate(values):
            lo, lk = {"val_loss": v}, {"val_loss": v}
            o.on_epoch_end(epoch, lo)
            k.on_epoch_end(epoch, lk)
            # Keras keeps the rate in a float32 variable
            assert net.optimizer.lr == pytest.approx(float(km.optimizer.learning_rate), rel=1e-6), (values, epoch)
            assert lo["learning_rate"] == pytest.approx(lk["learning_rate"], rel=1e-6)


def test_learning_rate_scheduler_sets_each_epoch_rate_and_logs_it(rng):
    X, y = blobs(rng, n=20)
    net = mlp(lr=0.1)
    seen = []

    class Watch(nf.Callback):
        def on_epoch_begin(self, epoch, logs=None):
            seen.append(self.network.optimizer.lr)

    sched = nf.LearningRateScheduler(lambda epoch, lr: lr * 0.5 if epoch else lr)
    hist = net.fit(X, y, epochs=4, batch_size=10, verbose=0, callbacks=[sched, Watch()])
    assert seen == [0.1, 0.05, 0.025, 0.0125]
    assert hist.history["learning_rate"] == seen
    # the one-argument form, as Keras's old API
    net.fit(X, y, epochs=2, batch_size=10, verbose=0,
            callbacks=[nf.LearningRateScheduler(lambda epoch: 0.3 / (epoch + 1))])
    assert net.optimizer.lr == 0.15


@pytest.mark.parametrize("bad", [float("nan"), -0.1, "fast", None])
def test_learning_rate_scheduler_refuses_a_bad_rate(rng, bad):
    X, y = blobs(rng, n=20)
    with pytest.raises(nf.CallbackError, match=r"LearningRateScheduler.on_epoch_begin.*epoch 0 must be a finite number >= 0"):
        mlp().fit(X, y, epochs=2, batch_size=10, verbose=0,
                  callbacks=[nf.LearningRateScheduler(lambda epoch, lr: bad)])


# ------------------------------------------------------------------ real fits
def test_early_stopping_in_fit_restores_the_best_epochs_weights_bitwise(rng):
    X, y = blobs(rng, n=60)
    Xv, yv = blobs(np.random.default_rng(5), n=30)
    net = mlp(lr=0.8)                   # a high rate: the validation loss goes up and down
    rec = Recorder()
    es = nf.EarlyStopping(monitor="val_loss", patience=2, restore_best_weights=True)
    hist = net.fit(X, y, epochs=30, batch_size=10, seed=0, verbose=0, validation_data=(Xv, yv),
                   callbacks=[rec, es])
    vl = hist.history["val_loss"]
    # an independent loop over the logged values: Keras's rule with min_delta 0
    best, best_i, wait, stop = math.inf, 0, 0, None
    for i, v in enumerate(vl):
        wait += 1
        if v < best:
            best, best_i, wait = v, i, 0
        elif wait >= 2 and i > 0:
            stop = i
            break
    assert es.best_epoch == best_i
    assert len(vl) == (stop + 1 if stop is not None else 30)
    assert es.stopped_epoch == (stop or 0)
    for got, want in zip(net.get_weights(), rec.weights[best_i]):
        np.testing.assert_array_equal(got, want)
    assert net.evaluate(Xv, yv)[0] == pytest.approx(vl[best_i], rel=1e-6)


def test_unknown_monitor_lists_the_known_names(rng):
    X, y = blobs(rng, n=20)
    with pytest.raises(nf.CallbackError, match=r"monitor='val_los'.*known names are \['accuracy', 'loss', "
                                               r"'val_accuracy', 'val_loss'\]"):
        mlp().fit(X, y, epochs=2, batch_size=10, verbose=0, validation_data=(X, y),
                  callbacks=[nf.EarlyStopping(monitor="val_los")])
    with pytest.raises(nf.CallbackError, match=r"monitor='val_loss'.*need validation_data"):
        mlp().fit(X, y, epochs=2, batch_size=10, verbose=0, callbacks=[nf.EarlyStopping()])
    with pytest.raises(nf.CallbackError, match="cannot tell whether 'wiggle'.*pass mode='min' or mode='max'"):
        cb = nf.EarlyStopping(monitor="wiggle")
        cb.params = {"metrics": ["wiggle"]}
        cbm.CallbackList([cb], mlp(), {"metrics": ["wiggle"]}).call("on_train_begin", {})
    with pytest.raises(ValueError, match="patience must be an integer >= 0, received -1"):
        nf.EarlyStopping(patience=-1)
    with pytest.raises(ValueError, match=r"factor must be in \(0, 1\), received 1.5"):
        nf.ReduceLROnPlateau(factor=1.5)


def test_model_checkpoint_saves_the_improving_epochs_atomically(rng, tmp_path):
    X, y = blobs(rng, n=60)
    Xv, yv = blobs(np.random.default_rng(5), n=30)
    net = mlp(lr=0.8)
    rec = Recorder()
    ck = nf.ModelCheckpoint(str(tmp_path / "ck" / "m-{epoch:02d}-{val_loss:.4f}.npz"), save_best_only=True)
    hist = net.fit(X, y, epochs=8, batch_size=10, seed=0, verbose=0, validation_data=(Xv, yv),
                   callbacks=[rec, ck])
    vl = hist.history["val_loss"]
    improving = [i for i, v in enumerate(vl) if v < min(vl[:i], default=math.inf)]
    assert ck.saved == [str(tmp_path / "ck" / f"m-{i + 1:02d}-{vl[i]:.4f}.npz") for i in improving]
    for i, path in zip(improving, ck.saved):
        loaded = nf.NeuralNetwork.load(path)
        for got, want in zip(loaded.get_weights(), rec.weights[i]):
            np.testing.assert_array_equal(got, want)
    assert not [p for p in (tmp_path / "ck").iterdir() if p.name.startswith(".tmp")]
    # every epoch without save_best_only; a field the logs do not fill is refused before training
    every = nf.ModelCheckpoint(str(tmp_path / "e{epoch}.npz"))
    mlp().fit(X, y, epochs=3, batch_size=30, verbose=0, callbacks=[every])
    assert [p.rsplit("/", 1)[-1] for p in every.saved] == ["e1.npz", "e2.npz", "e3.npz"]
    with pytest.raises(nf.CallbackError, match=r"field that the logs do not fill.*'val_acc'"):
        mlp().fit(X, y, epochs=1, verbose=0, callbacks=[nf.ModelCheckpoint(str(tmp_path / "{val_acc}.npz"))])


def test_csv_logger_writes_the_history_as_keras(rng, tmp_path):
    X, y = blobs(rng, n=30)
    path = tmp_path / "log.csv"
    net = mlp()
    hist = net.fit(X, y, epochs=3, batch_size=10, verbose=0, callbacks=[nf.CSVLogger(str(path))])
    rows = list(csv.reader(open(path, newline="")))
    # Keras: epoch, then the sorted keys, and val_ columns (NA) when there is no validation
    assert rows[0] == ["epoch", "accuracy", "loss", "val_accuracy", "val_loss"]
    assert [r[0] for r in rows[1:]] == ["0", "1", "2"]
    assert [float(r[2]) for r in rows[1:]] == hist.history["loss"]
    assert [float(r[1]) for r in rows[1:]] == hist.history["accuracy"]
    assert all(r[3:] == ["NA", "NA"] for r in rows[1:])
    net.fit(X, y, epochs=2, batch_size=10, verbose=0, callbacks=[nf.CSVLogger(str(path), append=True)])
    rows = list(csv.reader(open(path, newline="")))
    assert len(rows) == 6 and rows[0][0] == "epoch" and [r[0] for r in rows[4:]] == ["0", "1"]


def test_terminate_on_nan_is_on_by_default_and_can_be_given_explicitly(rng):
    X, y = blobs(rng, n=100)
    for kw in ({}, {"stop_on_nonfinite": False, "callbacks": [nf.TerminateOnNaN()]}):
        net = mlp(lr=50.0)
        with np.errstate(all="ignore"), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            t = kw.get("callbacks", [None])[0]
            hist = net.fit(X, y, epochs=20, batch_size=10, seed=0, verbose=0, **kw)
        assert hist.stopped is not None and "loss became" in hist.stopped
        for layer in net.trainable_layers:
            assert np.all(np.isfinite(layer.W))
        if t is not None:
            assert t.stopped_epoch == len(hist.epoch)          # 0-based: the epoch after the finished ones
            assert t.stopped_batch == len(hist.batch_loss) - 10 * len(hist.epoch)
            assert not math.isfinite(t.value)
