"""fit/evaluate/predict features: validation_split, metrics, sample/class weights, predict_proba,
evaluate's return values, confusion_matrix.

References: Keras's own functions (its validation split, top-k metric, weighted losses and their
gradients through TensorFlow, class weights -> sample weights), scikit-learn's confusion
matrix, SciPy's softmax, and closed-form identities of plain SGD.
"""
import numpy as np
import pytest
import scipy.special

import nn_from_scratch as nf
from nn_from_scratch.training import metrics as nm

tf = pytest.importorskip("tensorflow")
keras = pytest.importorskip("keras")


def blobs(rng, n=120, d=6, k=4, spread=0.9):
    centres = 2.0 * rng.standard_normal((k, d))
    y = rng.integers(0, k, n)
    return centres[y] + spread * rng.standard_normal((n, d)), y


def mlp(seed=0, lr=0.1, d=6, k=4, dtype=np.float32, **kw):
    return nf.NeuralNetwork([nf.Linear(d, 8, seed=seed, dtype=dtype), nf.ReLU(),
                             nf.Linear(8, k, seed=seed + 1, dtype=dtype)],
                            optimizer=nf.GradientDescent(lr), **kw)


def weights(net):
    return net.get_weights()


# ------------------------------------------------------------------ validation_split
@pytest.mark.parametrize("n,frac", [(10, 0.25), (97, 0.1), (120, 0.5), (7, 0.3)])
def test_validation_split_takes_the_last_fraction_before_shuffling_as_keras(rng, n, frac):
    from keras.src.trainers.data_adapters.array_slicing import train_validation_split
    X, y = blobs(rng, n=n)
    (xt, yt), (xv, yv) = train_validation_split((X, y), validation_split=frac)
    a, b = mlp(), mlp()
    ha = a.fit(X, y, epochs=2, batch_size=4, seed=3, verbose=0, validation_split=frac)
    hb = b.fit(np.asarray(xt), np.asarray(yt), epochs=2, batch_size=4, seed=3, verbose=0,
               validation_data=(np.asarray(xv), np.asarray(yv)))
    assert ha.history == hb.history
    for wa, wb in zip(weights(a), weights(b)):
        np.testing.assert_array_equal(wa, wb)


def test_validation_split_bad_values_are_refused(rng):
    X, y = blobs(rng, n=10)
    for bad in (1.0, -0.1, "0.2", True):
        with pytest.raises(ValueError, match=r"validation_split must be a fraction in \(0, 1\)"):
            mlp().fit(X, y, verbose=0, validation_split=bad)
    with pytest.raises(ValueError, match="not both"):
        mlp().fit(X, y, verbose=0, validation_split=0.2, validation_data=(X, y))


def test_validation_split_too_small_leaves_nothing(rng):
    X, y = blobs(rng, n=10)
    with pytest.raises(ValueError, match="leaves 10 for training and 0 for validation"):
        mlp().fit(X, y, verbose=0, validation_split=1e-17)     # 1 - 1e-17 == 1.0


# ------------------------------------------------------------------ metrics
def test_top_k_matches_keras_including_ties(rng):
    z = np.round(rng.standard_normal((300, 6)), 1).astype(np.float32)    # rounding makes ties
    y = rng.integers(0, 6, 300)
    for k in (1, 2, 3, 5):
        ref = keras.metrics.SparseTopKCategoricalAccuracy(k=k)
        ref.update_state(y, z)
        ours = float(nm.TopKAccuracy(k).batch_sum(z, y)) / len(y)
        assert ours == pytest.approx(float(ref.result()), abs=1e-7), k
        # one-hot targets give the same
        assert float(nm.TopKAccuracy(k).batch_sum(z, np.eye(6)[y])) / len(y) == ours


def test_regression_metrics_match_keras(rng):
    yp = rng.standard_normal((50, 3)).astype(np.float32)
    yt = rng.standard_normal((50, 3)).astype(np.float32)
    for ours, ref in ((nm.MeanAbsoluteError(), keras.metrics.MeanAbsoluteError()),
                      (nm.MeanSquaredError(), keras.metrics.MeanSquaredError())):
        ref.update_state(yt, yp)
        assert float(ours.batch_sum(yp, yt)) / 50 == pytest.approx(float(ref.result()), rel=1e-6)


def test_metrics_in_history_bar_and_evaluate(rng, capsys):
    X, y = blobs(rng, n=80, k=6)
    Xv, yv = blobs(np.random.default_rng(1), n=40, k=6)
    net = mlp(k=6, metrics=["top_k", "top_2_accuracy"])
    hist = net.fit(X, y, epochs=2, batch_size=16, seed=0, verbose=1, validation_data=(Xv, yv))
    assert set(hist.history) == {"loss", "accuracy", "top_k_accuracy", "top_2_accuracy", "val_loss",
                                 "val_accuracy", "val_top_k_accuracy", "val_top_2_accuracy"}
    err = capsys.readouterr()
    assert "top_2_accuracy" in err.err + err.out
    # the validation figures are those of evaluate; evaluate against a loop over predict
    loss, acc, top5, top2 = net.evaluate(Xv, yv)
    assert hist.history["val_top_2_accuracy"][-1] == top2
    out = net.predict(Xv).astype(np.float64)
    rank = (out > out[np.arange(len(yv)), yv][:, None]).sum(axis=1)
    assert acc == pytest.approx(np.mean(out.argmax(1) == yv))
    assert top5 == pytest.approx(np.mean(rank < 5)) and top2 == pytest.approx(np.mean(rank < 2))
    assert net.evaluate(Xv, yv, return_dict=True) == {"loss": loss, "accuracy": acc, "top_k_accuracy": top5,
                                                      "top_2_accuracy": top2}
    # per-call metrics; the old return value without extra metrics
    assert len(mlp(k=6).evaluate(Xv, yv)) == 2
    assert set(mlp(k=6).evaluate(Xv, yv, metrics=["top_3_accuracy"], return_dict=True)) == {
        "loss", "accuracy", "top_3_accuracy"}


def test_regression_network_metrics_and_old_evaluate(rng):
    X = rng.standard_normal((40, 3))
    T = X @ rng.standard_normal((3, 2))
    net = nf.NeuralNetwork([nf.Linear(3, 2, seed=0)], loss_fn=nf.MSELoss(), optimizer=nf.GradientDescent(0.05))
    assert net.evaluate(X, T)[1] is None
    hist = net.fit(X, T, epochs=2, batch_size=8, verbose=0, metrics=["mae", "mse"], validation_split=0.25)
    assert set(hist.history) == {"loss", "mae", "mse", "val_loss", "val_mae", "val_mse"}
    # for MSELoss the mse metric is the loss
    assert hist.history["mse"] == pytest.approx(hist.history["loss"], rel=1e-6)
    loss, mae = net.evaluate(X, T, metrics=["mae"])
    assert mae == pytest.approx(np.mean(np.abs(net.predict(X).astype(np.float64) - T)), rel=1e-5)


def test_unknown_or_mismatched_metric_lists_the_known_names(rng):
    X, y = blobs(rng, n=20)
    with pytest.raises(ValueError, match=r"unknown metric 'top5'; the known names are \[.*'accuracy'.*'mae'"):
        mlp(metrics=["top5"])
    with pytest.raises(ValueError, match=r"fit\(metrics=\): unknown metric 'f1'"):
        mlp().fit(X, y, verbose=0, metrics=["f1"])
    with pytest.raises(ValueError, match="'mae' compares outputs with regression targets"):
        mlp().evaluate(X, y, metrics=["mae"])
    with pytest.raises(ValueError, match="'accuracy' needs class labels"):
        nf.NeuralNetwork([nf.Linear(3, 2)], loss_fn=nf.MSELoss(), metrics=["accuracy"])
    with pytest.raises(ValueError, match="k must be an integer >= 1"):
        nm.TopKAccuracy(0)


# ------------------------------------------------------------------ sample / class weights
def _tf_weighted(loss_obj, z, t, w):
    zt = tf.constant(z)
    with tf.GradientTape() as tape:
        tape.watch(zt)
        loss = loss_obj(tf.constant(t), zt, sample_weight=tf.constant(w))
    return float(loss), tape.gradient(loss, zt).numpy()


def test_weighted_losses_and_gradients_match_keras(rng):
    z = rng.standard_normal((12, 5))
    y = rng.integers(0, 5, 12)
    w = rng.uniform(0, 3, 12)
    w[3] = 0.0
    ref_loss, ref_grad = _tf_weighted(keras.losses.SparseCategoricalCrossentropy(from_logits=True, dtype="float64"), z, y, w)
    ours = nf.SoftMaxLoss()
    lo = float(ours.forward(z, y, sample_weight=w))
    np.testing.assert_allclose(lo, ref_loss, rtol=1e-12)
    np.testing.assert_allclose(ours.backward(), ref_grad, rtol=1e-10, atol=1e-14)
    # one-hot targets, and MSE on (N, D)
    lo = float(ours.forward(z, np.eye(5)[y], sample_weight=w))
    np.testing.assert_allclose(lo, ref_loss, rtol=1e-12)
    np.testing.assert_allclose(ours.backward(), ref_grad, rtol=1e-10, atol=1e-14)
    t = rng.standard_normal((12, 5))
    ref_loss, ref_grad = _tf_weighted(keras.losses.MeanSquaredError(dtype="float64"), z, t, w)
    mse = nf.MSELoss()
    np.testing.assert_allclose(float(mse.forward(z, t, sample_weight=w)), ref_loss, rtol=1e-12)
    np.testing.assert_allclose(mse.backward(), ref_grad, rtol=1e-10, atol=1e-14)
    # per-sample losses: their mean is the loss
    np.testing.assert_allclose(ours.sample_losses(z, y).mean(), float(ours.forward(z, y)), rtol=1e-13)


def test_class_weight_is_keras_sample_weight_from_the_labels(rng):
    from keras.src.trainers.data_adapters.data_adapter_utils import class_weight_to_sample_weights
    X, y = blobs(rng, n=60)
    cw = {0: 2.0, 2: 0.5}              # class 1 and 3 missing: weight 1
    sw = np.asarray(class_weight_to_sample_weights(y, cw), dtype=np.float64)
    a, b = mlp(), mlp()
    ha = a.fit(X, y, epochs=2, batch_size=8, seed=0, verbose=0, class_weight=cw)
    hb = b.fit(X, y, epochs=2, batch_size=8, seed=0, verbose=0, sample_weight=sw)
    assert ha.history == hb.history
    for wa, wb in zip(weights(a), weights(b)):
        np.testing.assert_array_equal(wa, wb)


def test_weighted_sgd_step_identities(rng):
    """Plain SGD, one batch of all samples: weights 2 == twice the rate; weights 0/1 on a subset S
    == training on S alone at |S|/N of the rate (L_w = |S|/N * mean over S)."""
    X, y = blobs(rng, n=40)
    X = X.astype(np.float64)
    base = mlp(lr=0.1, dtype=np.float64)
    base.fit(X, y, epochs=1, batch_size=40, shuffle=False, verbose=0, sample_weight=np.full(40, 2.0))
    double = mlp(lr=0.2, dtype=np.float64)
    double.fit(X, y, epochs=1, batch_size=40, shuffle=False, verbose=0)
    for wa, wb in zip(weights(base), weights(double)):
        np.testing.assert_allclose(wa, wb, rtol=1e-12, atol=1e-15)
    keep = rng.random(40) < 0.4
    sub = mlp(lr=0.1, dtype=np.float64)
    sub.fit(X, y, epochs=1, batch_size=40, shuffle=False, verbose=0, sample_weight=keep.astype(float))
    alone = mlp(lr=0.1 * keep.sum() / 40, dtype=np.float64)
    alone.fit(X[keep], y[keep], epochs=1, batch_size=int(keep.sum()), shuffle=False, verbose=0)
    for wa, wb in zip(weights(sub), weights(alone)):
        np.testing.assert_allclose(wa, wb, rtol=1e-12, atol=1e-15)


def test_weighted_batches_run_unsplit_and_match_one_worker_bitwise(rng):
    X, y = blobs(rng, n=256)
    w = rng.uniform(0.5, 2, 256)
    one, two = mlp(workers=1), mlp(workers=2)
    h1 = one.fit(X, y, epochs=1, batch_size=128, seed=0, verbose=0, sample_weight=w)
    h2 = two.fit(X, y, epochs=1, batch_size=128, seed=0, verbose=0, sample_weight=w)
    two.stop_workers()
    assert h1.history == h2.history
    for wa, wb in zip(weights(one), weights(two)):
        np.testing.assert_array_equal(wa, wb)


def test_bad_weights_are_refused(rng):
    X, y = blobs(rng, n=10)
    with pytest.raises(nf.DataError, match=r"sample_weight must have shape \(10,\)"):
        mlp().fit(X, y, verbose=0, sample_weight=np.ones(9))
    with pytest.raises(nf.DataError, match="finite and >= 0"):
        mlp().fit(X, y, verbose=0, sample_weight=-np.ones(10))
    with pytest.raises(ValueError, match="not both"):
        mlp().fit(X, y, verbose=0, sample_weight=np.ones(10), class_weight={0: 1.0})
    with pytest.raises(ValueError, match=r"class_weight keys must be class indices in \[0, 4\), received 7"):
        mlp().fit(X, y, verbose=0, class_weight={7: 1.0})
    with pytest.raises(ValueError, match=r"class_weight\[1\] must be a finite number >= 0"):
        mlp().fit(X, y, verbose=0, class_weight={1: float("nan")})


def test_validation_weights_weigh_the_validation_loss(rng):
    X, y = blobs(rng, n=40)
    w = rng.uniform(0, 2, 40)
    net = mlp()
    hist = net.fit(X, y, epochs=1, batch_size=8, verbose=0, sample_weight=w, validation_split=0.25)
    # Keras: the sample weights are split too and weigh the validation loss
    assert hist.history["val_loss"][0] == pytest.approx(net.evaluate(X[30:], y[30:], sample_weight=w[30:])[0],
                                                        rel=1e-6)
    out = net.predict(X[30:]).astype(np.float64)
    per = -scipy.special.log_softmax(out, axis=1)[np.arange(10), y[30:]]
    assert hist.history["val_loss"][0] == pytest.approx(np.mean(per * w[30:]), rel=1e-5)


# ------------------------------------------------------------------ predict_proba, confusion matrix
def test_predict_proba_is_softmax_of_the_logits(rng):
    X, y = blobs(rng, n=30)
    net = mlp()
    p = net.predict_proba(X)
    np.testing.assert_allclose(p, scipy.special.softmax(net.predict(X).astype(np.float64), axis=1), rtol=1e-5)
    np.testing.assert_allclose(p.sum(axis=1), 1, rtol=1e-6)
    np.testing.assert_array_equal(net.predict(X, probabilities=True), p)
    with pytest.raises(TypeError, match="MSELoss does not"):
        nf.NeuralNetwork([nf.Linear(6, 2)], loss_fn=nf.MSELoss()).predict_proba(X)


def test_confusion_matrix_matches_scikit_learn(rng):
    sk = pytest.importorskip("sklearn.metrics")
    t = rng.integers(0, 5, 200)
    p = np.where(rng.random(200) < 0.6, t, rng.integers(0, 5, 200))
    p[p == 4] = 3                          # a class never predicted: an empty column
    np.testing.assert_array_equal(nm.confusion_matrix(t, p), sk.confusion_matrix(t, p))
    for norm in ("true", "pred", "all"):
        np.testing.assert_allclose(nm.confusion_matrix(t, p, normalize=norm),
                                   sk.confusion_matrix(t, p, normalize=norm), rtol=1e-12)
    with pytest.raises(ValueError, match="n_classes=3 but the labels go up to 4"):
        nm.confusion_matrix(t, p, n_classes=3)


def test_network_confusion_matrix_and_its_plot(rng):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    X, y = blobs(rng, n=60)
    net = mlp()
    cm = net.confusion_matrix(X, y)
    assert cm.shape == (4, 4) and cm.sum() == 60
    np.testing.assert_array_equal(cm, nm.confusion_matrix(y, net.predict(X).argmax(1), n_classes=4))
    assert np.trace(cm) == round(net.evaluate(X, y)[1] * 60)
    fig = net.plot_confusion_matrix(X, y, class_names=list("abcd"), normalize="true")
    try:
        assert not plt.fignum_exists(fig.number)  # a Figure not held by pyplot (none left open)
        ax = fig.axes[0]
        assert [t.get_text() for t in ax.get_xticklabels()] == list("abcd")
        assert len(ax.texts) == 16
    finally:
        plt.close(fig)


def test_binary_accuracy_matches_keras_and_is_accuracy_for_a_bce_network(rng):
    z = rng.standard_normal((80, 3)).astype(np.float32)
    t = (rng.random((80, 3)) < 0.5).astype(np.float32)
    ref = keras.metrics.BinaryAccuracy()
    ref.update_state(t, scipy.special.expit(z))
    assert float(nm.BinaryAccuracy().batch_sum(z, t)) / 80 == pytest.approx(float(ref.result()), abs=1e-7)
    p = scipy.special.expit(z)
    ref = keras.metrics.BinaryAccuracy(threshold=0.7)
    ref.update_state(t, p)
    assert float(nm.BinaryAccuracy(0.7, from_logits=False).batch_sum(p, t)) / 80 == pytest.approx(
        float(ref.result()), abs=1e-7)
    # a BinaryCrossEntropy network: "accuracy" is binary accuracy, predict_proba the sigmoid
    X = rng.standard_normal((60, 4))
    yb = (X[:, 0] + X[:, 1] > 0).astype(np.float64)[:, None]
    net = nf.NeuralNetwork([nf.Linear(4, 1, seed=0)], loss_fn=nf.BinaryCrossEntropy(), optimizer=nf.Adam(0.05))
    hist = net.fit(X, yb, epochs=3, batch_size=10, verbose=0, validation_split=0.2)
    assert set(hist.history) == {"loss", "accuracy", "val_loss", "val_accuracy"}
    loss, acc = net.evaluate(X, yb)
    out = net.predict(X).astype(np.float64)
    assert acc == pytest.approx(np.mean((out > 0) == (yb > 0.5)))
    np.testing.assert_allclose(net.predict_proba(X), scipy.special.expit(out), rtol=1e-5)
    with pytest.raises(ValueError, match="'top_k_accuracy' does not apply to a BinaryCrossEntropy network"):
        net.evaluate(X, yb, metrics=["top_k"])
