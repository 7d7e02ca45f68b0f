"""Saving the optimizer's state: load then fit goes on bitwise as if never interrupted; the file's
format_version; a file written by the code before issue 24 (tests/fixtures/model_format1.npz,
made by tests/fixtures/make_format1_fixture.py with main at 65ae8aa) still loads and predicts
what that code predicted."""
import json
import os

import numpy as np
import pytest

import nn_from_scratch as nf
from nn_from_scratch.training import schedules as sch
from nn_from_scratch.training.serialization import FORMAT_VERSION, read_model_file, write_npz_atomic

FIXTURES = os.path.join(os.path.dirname(os.path.abspath(__file__)), "fixtures")


def data(seed=0, n=64):
    rng = np.random.default_rng(seed)
    return rng.random((n, 1, 8, 8)).astype(np.float32), rng.integers(0, 3, n)


def cnn(optimizer, stochastic=False):
    extra = [nf.BatchNorm((None, 18), name="bn"), nf.Dropout(0.3, seed=5, name="drop")] if stochastic else []
    return nf.NeuralNetwork([nf.Convolution((None, 1, 8, 8), kernel_size=3, output_layers=2, seed=1, name="conv",
                                            kernel_regularizer=nf.L2(0.001)),
                             nf.ReLU(name="relu"), nf.MaxPool((None, 2, 6, 6), name="pool"),
                             nf.Vectorization(name="flat")] + extra + [nf.Linear(18, 3, seed=2, name="out")],
                            optimizer=optimizer, workers=1)


OPTIMIZERS = {
    "adam": lambda: nf.Adam(0.01),
    "amsgrad": lambda: nf.Adam(0.01, amsgrad=True, weight_decay=0.01),
    "momentum_schedule": lambda: nf.SGD(sch.CosineDecay(0.01, 20, warmup_target=0.2, warmup_steps=6),
                                        momentum=0.9, nesterov=True, clipnorm=1.0),
    "rmsprop_centered": lambda: nf.RMSProp(0.003, momentum=0.5, centered=True),
    "adagrad": lambda: nf.AdaGrad(0.05),
    "adamw_step_decay": lambda: nf.AdamW(sch.StepDecay(0.01, 5, 0.5), global_clipnorm=0.5),
}


@pytest.mark.parametrize("stochastic", [False, True], ids=["plain", "batchnorm_dropout"])
@pytest.mark.parametrize("name", sorted(OPTIMIZERS))
def test_load_then_fit_continues_bitwise(tmp_path, name, stochastic):
    X, y = data()
    straight = cnn(OPTIMIZERS[name](), stochastic)
    straight.fit(X, y, epochs=2, batch_size=8, seed=0, verbose=0)
    straight.fit(X, y, epochs=2, batch_size=8, seed=1, verbose=0)

    first = cnn(OPTIMIZERS[name](), stochastic)
    first.fit(X, y, epochs=2, batch_size=8, seed=0, verbose=0)
    path = first.save(str(tmp_path / "half.npz"))
    resumed = nf.NeuralNetwork.load(path)
    assert resumed.optimizer.iterations == first.optimizer.iterations == 16
    resumed.fit(X, y, epochs=2, batch_size=8, seed=1, verbose=0)
    for a, b in zip(straight.get_weights(), resumed.get_weights()):
        np.testing.assert_array_equal(a, b)
    assert resumed.optimizer.iterations == 32
    # loading into a network with the same optimizer settings restores the state too
    again = cnn(OPTIMIZERS[name](), stochastic)
    again.load(path)
    again.fit(X, y, epochs=2, batch_size=8, seed=1, verbose=0)
    for a, b in zip(straight.get_weights(), again.get_weights()):
        np.testing.assert_array_equal(a, b)


def test_without_the_state_it_would_differ(tmp_path):
    """The test above can fail: a fresh optimizer after the load does not give the same weights."""
    X, y = data()
    straight = cnn(nf.Adam(0.01))
    straight.fit(X, y, epochs=2, batch_size=8, seed=0, verbose=0)
    path = straight.save(str(tmp_path / "m.npz"))
    straight.fit(X, y, epochs=1, batch_size=8, seed=1, verbose=0)
    fresh = nf.NeuralNetwork.load(path)
    fresh.optimizer.reset()
    fresh.fit(X, y, epochs=1, batch_size=8, seed=1, verbose=0)
    assert max(float(np.abs(a - b).max()) for a, b in zip(straight.get_weights(), fresh.get_weights())) > 1e-4


def test_the_file_records_version_and_state(tmp_path):
    X, y = data()
    net = cnn(nf.Adam(0.01))
    net.fit(X, y, epochs=1, batch_size=16, verbose=0)
    config, arrays = read_model_file(net.save(str(tmp_path / "m.npz")))
    assert config["format_version"] == FORMAT_VERSION == 2
    st = config["optimizer_state"]
    assert st["iterations"] == 4
    assert sorted(map(tuple, st["arrays"])) == [(0, "W", "m"), (0, "W", "v"), (0, "b", "m"), (0, "b", "v"),
                                                 (4, "W", "m"), (4, "W", "v")]
    for n, (i, name, slot) in enumerate(st["arrays"]):
        np.testing.assert_array_equal(arrays[f"optimizer/{n}"], net.optimizer.state((net.layers[i], name),
                                                                                    net.layers[i].params[name], slot))
    # another optimizer's settings: the weights load, its state starts afresh
    other = cnn(nf.Adam(0.02))
    other.load(str(tmp_path / "m.npz"))
    assert other.optimizer.iterations == 0


def _rewrite(src, dst, change):
    config, arrays = read_model_file(src)
    change(config, arrays)
    arrays["__format__"] = np.array(nf.serialization.FORMAT)
    arrays["__config__"] = np.array(json.dumps(config))
    write_npz_atomic(dst, arrays)
    return dst


def test_damaged_or_newer_files_are_refused_by_name(tmp_path):
    X, y = data()
    net = cnn(nf.Adam(0.01))
    net.fit(X, y, epochs=1, batch_size=16, verbose=0)
    src = net.save(str(tmp_path / "m.npz"))

    def newer(c, a):
        c["format_version"] = 3
    with pytest.raises(nf.ModelFileError, match="format_version 3; this version of nn_from_scratch reads versions 1 to 2"):
        nf.NeuralNetwork.load(_rewrite(src, str(tmp_path / "n.npz"), newer))

    def wrong_shape(c, a):
        a["optimizer/0"] = a["optimizer/0"][:1]
    with pytest.raises(nf.ModelFileError, match=r"optimizer's saved state is damaged .*state 'm' for layer0/W is "
                                                r"declared float32\(1, 1, 3, 3\) but the parameter is float32\(2, 1, 3, 3\)"):
        nf.NeuralNetwork.load(_rewrite(src, str(tmp_path / "s.npz"), wrong_shape))

    def nan(c, a):
        a["optimizer/1"] = np.full_like(a["optimizer/1"], np.nan)
    with pytest.raises(nf.ModelFileError, match="is not finite floats"):
        nf.NeuralNetwork.load(_rewrite(src, str(tmp_path / "f.npz"), nan))

    def missing(c, a):
        del a["optimizer/2"]
    with pytest.raises(nf.ModelFileError, match="record and its arrays disagree: 6 listed, 5 held"):
        nf.NeuralNetwork.load(_rewrite(src, str(tmp_path / "g.npz"), missing))


def test_a_format1_file_from_before_issue_24_still_loads():
    path = os.path.join(FIXTURES, "model_format1.npz")
    config, arrays = read_model_file(path)
    assert "format_version" not in config and not any(k.startswith("optimizer/") for k in arrays)
    net = nf.NeuralNetwork.load(path)
    assert net.name == "format1_fixture" and type(net.optimizer) is nf.Adam and net.optimizer.iterations == 0
    for i, layer in enumerate(net.layers):
        for k, p in layer.params.items():
            np.testing.assert_array_equal(p, arrays[f"layer{i}/{k}"])
    with np.load(os.path.join(FIXTURES, "model_format1_expected.npz")) as ref:
        np.testing.assert_array_equal(net.predict(ref["X"]), ref["logits"])    # what the old code predicted
    # into an existing network too, and it trains on
    same = nf.NeuralNetwork([nf.Convolution((None, 1, 8, 8), kernel_size=3, output_layers=2, name="conv"),
                             nf.ReLU(), nf.MaxPool((None, 2, 6, 6)), nf.Vectorization(), nf.Linear(18, 3)])
    same.load(path)
    X, y = data()
    h = same.fit(X, y, epochs=1, batch_size=16, verbose=0)
    assert np.isfinite(h.history["loss"][0])
