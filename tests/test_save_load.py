"""Saving and loading models: bitwise round trips, refusal of wrong files,
atomic writes, and files that NumPy reads with ``allow_pickle=False``.

Tests taking ``backend`` run on NumPy and, with a GPU, on CuPy: a CuPy network
saves and loads (into CuPy, since the fixture selects it) bitwise the same way.
"""
import json
import os
import pathlib

import numpy as np
import pytest

import nn_from_scratch as nf
from nn_from_scratch.training import serialization
from nn_from_scratch.backend import is_device_array, to_numpy
from nn_from_scratch.training.serialization import ModelFileError


def rich_cnn(dtype=np.float32, seed=0):
    """A network using every kind of configuration a saved file has to carry."""
    nf.set_seed(seed)
    layers = [
        nf.Convolution((None, 2, 9, 9), kernel_size=(3, 2), output_layers=4, padding="same", stride=(1, 2),
                       dtype=dtype, name="conv_a"),
        nf.ReLU(name="relu_a"),
        nf.MaxPool((None, 4, 9, 5), pool_size=2, stride=1, padding="valid", name="pool_a"),
        nf.Convolution((None, 4, 8, 4), kernel_size=3, output_layers=3, padding=((1, 0), 1), dilation=(2, 1),
                       use_bias=False, dtype=dtype, name="conv_b"),
        nf.AvgPool((None, 3, 5, 4), pool_size=2, padding="same", name="pool_b"),
        nf.Reshape((None, 3, 3, 2), target_shape=(9, 2), name="reshape"),
        nf.Vectorization(name="flat"),
        nf.Linear(18, 6, dtype=dtype, name="fc1"),
        nf.Sigmoid(name="sig"),
        nf.Linear(6, 5, use_bias=False, dtype=dtype, name="fc2"),
        nf.Softmax(axis=1, name="softmax"),
    ]
    return nf.NeuralNetwork(layers, loss_fn=nf.MSELoss(name="mse"),
                            optimizer=nf.Adam(lr=0.003, beta_1=0.8, amsgrad=True), batch_size=17, name="rich")


def mlp(seed=0, dtype=np.float32, hidden=6):
    return nf.NeuralNetwork([nf.Linear(4, hidden, seed=seed, dtype=dtype), nf.Tanh(),
                             nf.Linear(hidden, 3, seed=seed + 1, dtype=dtype)],
                            optimizer=nf.GradientDescent(0.05, momentum=0.9, nesterov=True))


def params_of(net):
    """(layer position and class, parameter name, array) for every parameter (names may differ)."""
    return [(f"{i}:{type(layer).__name__}", k, p) for i, layer in enumerate(net.layers)
            for k, p in layer.params.items()]


def assert_same_params(a, b):
    pa, pb = params_of(a), params_of(b)
    assert [(n, k) for n, k, _ in pa] == [(n, k) for n, k, _ in pb]
    for (_, _, x), (_, _, y) in zip(pa, pb):
        assert x.dtype == y.dtype and x.shape == y.shape
        assert to_numpy(x).tobytes() == to_numpy(y).tobytes()  # bitwise


def _perturb(net, rng):
    for layer in net.trainable_layers:
        layer.set_params(**{k: rng.standard_normal(p.shape) for k, p in layer.params.items()})


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_round_trip_class_load(backend, tmp_path, rng, dtype):
    net = rich_cnn(dtype)
    _perturb(net, rng)  # weights no initializer would give
    x = rng.standard_normal((3, 2, 9, 9))
    path = tmp_path / "rich.npz"
    assert net.save(str(path)) == str(path)
    back = nf.NeuralNetwork.load(str(path))
    assert_same_params(net, back)
    assert all(is_device_array(p) == backend.is_gpu for _, _, p in params_of(back))
    assert back.dtype == np.dtype(dtype)
    assert [type(layer) for layer in back.layers] == [type(layer) for layer in net.layers]
    assert [layer.name for layer in back.layers] == [layer.name for layer in net.layers]
    assert back.name == "rich" and back.batch_size == 17
    assert isinstance(back.loss_fn, nf.MSELoss)
    assert isinstance(back.optimizer, nf.Adam) and back.optimizer.get_config() == net.optimizer.get_config()
    conv_b = back.layers[3]
    assert (conv_b.kernel_size, conv_b.stride, conv_b.dilation, conv_b.use_bias) == ((3, 3), (1, 1), (2, 1), False)
    assert back.layers[0].padding == "same" and back.layers[10].axis == 1
    out_a, out_b = net.predict(x), back.predict(x)
    assert out_b.dtype == np.dtype(dtype)
    assert out_a.tobytes() == out_b.tobytes()
    assert back.summary(print_fn=None).replace("rich", "") == net.summary(print_fn=None).replace("rich", "")


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_round_trip_instance_load(backend, tmp_path, rng, dtype):
    src = mlp(seed=1, dtype=dtype)
    _perturb(src, rng)
    path = tmp_path / "mlp.npz"
    src.save(path)  # a pathlib.Path works too
    dst = mlp(seed=7)  # float32, other weights
    assert dst.load(str(path)) is dst
    assert_same_params(src, dst)
    assert dst.dtype == np.dtype(dtype)
    x = rng.standard_normal((5, 4))
    assert src.predict(x).tobytes() == dst.predict(x).tobytes()


def test_loaded_network_keeps_training_like_the_original(backend, tmp_path, rng):
    X, y = rng.standard_normal((30, 4)), rng.integers(0, 3, 30)
    a = mlp(seed=2)
    a.fit(X, y, epochs=1, batch_size=10, seed=0, verbose=0)
    path = str(tmp_path / "a.npz")
    a.save(path)
    b = nf.NeuralNetwork.load(path)
    # the file holds the optimizer's state (issue 24): the loaded model goes on as the original does
    a.fit(X, y, epochs=2, batch_size=10, seed=1, verbose=0)
    b.fit(X, y, epochs=2, batch_size=10, seed=1, verbose=0)
    assert_same_params(a, b)


def test_file_reads_without_pickle(backend, tmp_path):
    net = rich_cnn(np.float64)
    path = str(tmp_path / "m.npz")
    net.save(path)
    with np.load(path, allow_pickle=False) as data:
        files = set(data.files)
        fmt = str(data["__format__"])
        config = json.loads(str(data["__config__"]))
        arrays = {k: data[k] for k in files if k.startswith("layer")}
    assert fmt == serialization.FORMAT
    assert [c["class"] for c in config["layers"]] == [type(layer).__name__ for layer in net.layers]
    expected = {f"layer{i}/{k}" for i, layer in enumerate(net.layers) for k in layer.params}
    assert set(arrays) == expected and files == expected | {"__format__", "__config__"}
    for i, layer in enumerate(net.layers):
        for k, p in layer.params.items():
            assert arrays[f"layer{i}/{k}"].dtype == np.float64
            assert arrays[f"layer{i}/{k}"].tobytes() == to_numpy(p).tobytes()
    for a in arrays.values():
        assert a.dtype != object


def test_another_architecture_is_refused(backend, tmp_path):
    path = str(tmp_path / "cnn.npz")
    rich_cnn().save(path)
    net = mlp()
    before = [to_numpy(p).copy() for _, _, p in params_of(net)]
    with pytest.raises(ModelFileError, match="another architecture"):
        net.load(path)
    assert all(np.array_equal(a, to_numpy(p)) for a, (_, _, p) in zip(before, params_of(net)))
    # same layer classes, other sizes
    mlp().save(path)
    with pytest.raises(ModelFileError, match=r"layer0/W.*\(5, 6\).*\(5, 8\)"):
        mlp(hidden=8).load(path)


@pytest.mark.parametrize("keep", [0.1, 0.5, 0.9, 0.999])
def test_truncated_file_is_refused(tmp_path, keep):
    path = str(tmp_path / "m.npz")
    net = rich_cnn()
    net.save(path)
    data = open(path, "rb").read()
    open(path, "wb").write(data[: int(len(data) * keep)])
    with pytest.raises(ModelFileError, match="truncated or corrupt"):
        nf.NeuralNetwork.load(path)
    with pytest.raises(ModelFileError, match="truncated or corrupt"):
        net.load(path)


def _crashing_savez(after_bytes, exc):
    def savez(file, **arrays):
        file.write(b"PK\x03\x04" + b"\0" * after_bytes)  # the start of a zip, then the crash
        raise exc
    return savez


@pytest.mark.parametrize("exc", [OSError("disk full"), KeyboardInterrupt()])
def test_crash_mid_save_leaves_no_file(tmp_path, monkeypatch, exc):
    path = tmp_path / "new.npz"
    monkeypatch.setattr(np, "savez", _crashing_savez(1000, exc))
    with pytest.raises(type(exc)):
        mlp().save(str(path))
    assert not path.exists()
    assert list(tmp_path.iterdir()) == []  # no temporary file left behind


def test_crash_mid_save_keeps_the_old_file(backend, tmp_path, monkeypatch, rng):
    path = tmp_path / "model.npz"
    old = mlp(seed=1)
    old.save(str(path))
    old_bytes = path.read_bytes()
    monkeypatch.setattr(np, "savez", _crashing_savez(300, OSError("disk full")))
    new = mlp(seed=2)
    with pytest.raises(OSError, match="disk full"):
        new.save(str(path))
    monkeypatch.undo()
    assert path.read_bytes() == old_bytes
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.npz"]
    assert_same_params(old, nf.NeuralNetwork.load(str(path)))


def test_save_overwrites_atomically(tmp_path):
    path = tmp_path / "m.npz"
    mlp(seed=1).save(str(path))
    b = mlp(seed=2)
    b.save(str(path))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.npz"]
    assert_same_params(b, nf.NeuralNetwork.load(str(path)))


def test_pathlike_accepted(tmp_path):
    net = mlp()
    path = pathlib.Path(tmp_path) / "p.npz"
    net.save(path)
    assert os.path.getsize(path) > 0
    assert_same_params(net, nf.NeuralNetwork.load(path))


def test_same_shapes_other_configuration_is_refused(tmp_path):
    path = str(tmp_path / "m.npz")
    nf.NeuralNetwork([nf.Linear(4, 3)]).save(path)
    with pytest.raises(ModelFileError, match=r"layer 0 .*use_bias=True in the file but use_bias=False"):
        nf.NeuralNetwork([nf.Linear(4, 3, use_bias=False)]).load(path)

    def cnn(**pool):
        return nf.NeuralNetwork([nf.Convolution((None, 1, 8, 8), kernel_size=3, output_layers=2, padding=1),
                                 nf.MaxPool((None, 2, 8, 8), **pool), nf.Vectorization(), nf.Linear(32, 3)])

    cnn(pool_size=2).save(path)
    # pool 3 / stride 2 / padding 1 gives the same 4x4 output, so every parameter shape agrees
    with pytest.raises(ModelFileError, match=r"layer 1 \(MaxPool.*padding='valid', pool_size=\[2, 2\] in the file"):
        cnn(pool_size=3, stride=2, padding=1).load(path)


def test_batch_size_and_declared_shapes_do_not_matter_for_loading(backend, tmp_path, rng):
    def seed_style(b):
        return nf.NeuralNetwork([nf.Convolution((b, 1, 28, 28), kernel_size=3, output_layers=4, use_bias=False),
                                 nf.ReLU((b, 4, 26, 26)), nf.Vectorization((b, 4, 26, 26)),
                                 nf.Linear((b, 2704), (b, 10))])
    path = str(tmp_path / "m.npz")
    src = seed_style(50)
    src.save(path)
    a = seed_style(7).load(path)
    b = nf.NeuralNetwork([nf.Convolution(in_channels=1, kernel_size=3, output_layers=4, use_bias=False), nf.ReLU(),
                          nf.Vectorization(), nf.Linear(2704, 10)], input_shape=(1, 28, 28)).load(path)
    x = rng.random((3, 28, 28))
    assert src.predict(x).tobytes() == a.predict(x).tobytes() == b.predict(x).tobytes()
