"""Shapes inferred where Keras and PyTorch's lazy modules infer them (docs/layers.md, "Shapes inferred").

``Linear(10)``/``Dense(10)``, ``Convolution(kernel_size=3, output_layers=4)`` and ``BatchNorm()`` take
their input size from the layer before when the network is built; their weights are then the ones
the explicit form draws with the same seed (compared array for array, bitwise).  ``BatchNorm(C)``
after a convolution means C channels.  Unbuilt layers refuse to be counted, saved or trained with an
error naming the layer and the way out; the summary marks what it cannot know.  References: the
explicit-shape network (the lab's forms), Keras's own build of the same Sequential model.
"""
import numpy as np
import pytest

import nn_from_scratch as nf
from nn_from_scratch.layers.initializers import set_seed


def lazy_cnn(seed=None):
    s = (lambda i: None) if seed is None else (lambda i: seed + i)
    return [nf.Convolution(kernel_size=3, output_layers=4, seed=s(0)), nf.BatchNorm(), nf.ReLU(),
            nf.MaxPool(2), nf.Convolution(kernel_size=(3, 3), output_layers=6, padding=1, use_bias=False, seed=s(1)),
            nf.BatchNorm(6), nf.ReLU(), nf.Vectorization(), nf.Dense(32, seed=s(2)), nf.ReLU(),
            nf.Linear(out_features=10, seed=s(3))]


def explicit_cnn(seed=None):
    s = (lambda i: None) if seed is None else (lambda i: seed + i)
    return [nf.Convolution((None, 1, 28, 28), kernel_size=3, output_layers=4, seed=s(0)),
            nf.BatchNorm((None, 4, None, None)), nf.ReLU(), nf.MaxPool(pool_size=2),
            nf.Convolution((None, 4, 13, 13), kernel_size=(3, 3), output_layers=6, padding=1, use_bias=False,
                           seed=s(1)),
            nf.BatchNorm((None, 6, None, None)), nf.ReLU(), nf.Vectorization(), nf.Linear(6 * 13 * 13, 32, seed=s(2)),
            nf.ReLU(), nf.Linear(32, 10, seed=s(3))]


def assert_same_weights(a, b):
    wa, wb = a.get_weights(), b.get_weights()
    assert [w.shape for w in wa] == [w.shape for w in wb]
    for x, y in zip(wa, wb):
        np.testing.assert_array_equal(x, y)


@pytest.mark.parametrize("how", ["layer seeds", "set_seed"])
def test_inferred_network_equals_the_explicit_one(how):
    """Same shapes, same weights (bitwise), same outputs and gradients as the explicit-shape network."""
    if how == "layer seeds":
        lazy, explicit = nf.NeuralNetwork(lazy_cnn(seed=5), input_shape=(1, 28, 28)), \
            nf.NeuralNetwork(explicit_cnn(seed=5))
    else:   # every layer drawn in order from the global generator: at build for the inferred ones
        set_seed(11)
        lazy = nf.NeuralNetwork(lazy_cnn(), input_shape=(1, 28, 28))
        set_seed(11)
        explicit = nf.NeuralNetwork(explicit_cnn())
    assert lazy._shapes == explicit._shapes
    assert lazy._shapes[-1] == (10,) and lazy._shapes[3] == (4, 13, 13)
    assert_same_weights(lazy, explicit)
    rng = np.random.default_rng(0)
    X, y = rng.standard_normal((16, 1, 28, 28)).astype(np.float32), np.arange(16) % 10
    lazy.engine = explicit.engine = False     # each layer's own code: the engine may pick its arrangement by timing
    np.testing.assert_array_equal(lazy.predict(X), explicit.predict(X))
    ga, gb = lazy.gradients(X, y), explicit.gradients(X, y)
    assert len(ga) == len(gb) == 9
    for la, lb in zip(lazy.layers, explicit.layers):       # layer by layer (the auto names differ)
        for k in la.grads:
            np.testing.assert_array_equal(ga[(la.name, k)], gb[(lb.name, k)])


def test_linear_alone_draws_the_explicit_weights_at_its_first_forward():
    lazy, explicit = nf.Dense(7, seed=3), nf.Linear(5, 7, seed=3)
    assert not lazy.built and lazy.in_features is None
    x = np.random.default_rng(1).standard_normal((4, 5)).astype(np.float32)
    np.testing.assert_array_equal(lazy.forward(x), explicit.forward(x))
    assert lazy.built and lazy.input_shape == (5,) and lazy.count_params() == 5 * 7 + 7
    assert nf.Linear(units=7).out_features == nf.Linear(out_features=7).out_features == 7


def test_conv1d_takes_its_number_of_axes_from_the_input():
    lazy = nf.Convolution(kernel_size=3, output_layers=2, seed=0)
    net = nf.NeuralNetwork([lazy, nf.ReLU(), nf.Vectorization(), nf.Dense(3, seed=1)], input_shape=(2, 10))
    assert lazy.ndim == 1 and lazy.kernel_size == (3,) and lazy.W.shape == (2, 2, 3)
    assert net._shapes == [(2, 8), (2, 8), (16,), (3,)]
    np.testing.assert_array_equal(lazy.W, nf.Conv1D(2, 2, 3, seed=0).W)


def test_batchnorm_c_after_a_convolution_means_c_channels():
    conv = nf.Convolution((None, 1, 8, 8), kernel_size=3, output_layers=8)
    bn = nf.BatchNorm(8)
    net = nf.NeuralNetwork([conv, bn, nf.Vectorization(), nf.Dense(3)])
    assert bn.input_shape == (8, None, None) and bn.gamma.shape == (8,)
    assert net._shapes[1] == (8, 6, 6)
    # on vectors it is D features, as before
    feat = nf.BatchNorm(8)
    nf.NeuralNetwork([nf.Linear(4, 8), feat, nf.Linear(8, 2)])
    assert feat.input_shape == (8,)
    # the explicit forms keep their meaning
    assert nf.BatchNorm((None, 8)).input_shape == (8,)
    assert nf.BatchNorm((None, 8, None, None)).input_shape == (8, None, None)


def test_batchnorm_with_the_wrong_count_shows_the_form_to_write():
    with pytest.raises(nf.ShapeError) as e:
        nf.NeuralNetwork([nf.Convolution((None, 1, 8, 8), kernel_size=3, output_layers=16), nf.BatchNorm(8)])
    msg = str(e.value)
    assert "given 8 channels but its input has 16" in msg and "BatchNorm(16)" in msg and "BatchNorm()" in msg
    assert "BatchNorm((None, 16, None, None))" in msg


def test_linear_after_a_convolution_without_flatten_says_so():
    with pytest.raises(nf.ShapeError, match=r"maps vectors to vectors.*Vectorization/Flatten"):
        nf.NeuralNetwork([nf.Convolution((None, 1, 8, 8), kernel_size=3, output_layers=2), nf.Dense(10)])


def test_an_unbuilt_layer_names_itself_and_the_way_out():
    net = nf.NeuralNetwork(lazy_cnn())            # no input_shape: nothing can be inferred yet
    assert not net.built and "not built" in repr(net)
    dense = net.layers[8]
    for use in (lambda: dense.W, lambda: dense.count_params(), lambda: net.get_weights(), lambda: net.count_params(),
                lambda: net.save("never_written.npz"), lambda: net.layers[0].b):
        with pytest.raises(nf.NotBuiltError) as e:
            use()
        msg = str(e.value)
        assert "has no parameters yet" in msg and "input_shape=(1, 28, 28)" in msg, msg
    with pytest.raises(nf.NotBuiltError, match=r"Linear layer '.*'.*Linear\(800, 32\)"):
        dense.count_params()
    text = net.summary(print_fn=None)
    assert "? (unbuilt)" in text and "Total params: ?" in text and "input_shape=(1, 28, 28)" in text


def test_summary_shows_real_shapes_with_input_shape_and_a_hint_without():
    layers = lambda: [nf.Conv2D(1, 8, 3), nf.BatchNorm(8), nf.ReLU(), nf.GlobalAveragePooling(), nf.Dense(3)]  # noqa: E731
    known = nf.NeuralNetwork(layers(), input_shape=(1, 28, 28)).summary(print_fn=None)
    assert "(N, 8, 26, 26)" in known and "?" not in known
    unknown = nf.NeuralNetwork(layers()).summary(print_fn=None)
    assert "(N, 8, ?, ?)" in unknown and "NeuralNetwork(layers, input_shape=(1, 28, 28))" in unknown


def test_fit_builds_from_the_data_and_the_model_file_round_trips(tmp_path):
    """No input shape anywhere: the first fit builds every layer from its batch shape; save/load then
    give the same network (the file holds the explicit forms)."""
    set_seed(3)
    net = nf.NeuralNetwork(lazy_cnn(), optimizer=nf.Adam(1e-3), workers=1)
    rng = np.random.default_rng(0)
    X, y = rng.standard_normal((40, 1, 28, 28)).astype(np.float32), np.arange(40) % 10
    net.fit(X, y, epochs=1, batch_size=20, verbose=0)
    assert net.built and net.input_shape == (1, 28, 28)
    path = tmp_path / "lazy.npz"
    net.save(path)
    back = nf.NeuralNetwork.load(path)
    assert_same_weights(net, back)
    np.testing.assert_array_equal(net.predict(X), back.predict(X))
    # the same training continues identically in both
    net.fit(X, y, epochs=1, batch_size=20, verbose=0, seed=1)
    back.fit(X, y, epochs=1, batch_size=20, verbose=0, seed=1)
    assert_same_weights(net, back)


def test_the_lab_constructor_forms_are_unchanged():
    """The seed lab's calls build what they built before (shapes, parameter shapes, counts)."""
    batch_size, n_channels, n_output = 50, 1, 10
    layers = [nf.Convolution((batch_size, n_channels, 28, 28), kernel_size=3, output_layers=4, use_bias=False),
              nf.ReLU((batch_size, 4, 26, 26)),
              nf.Convolution((batch_size, 4, 26, 26), kernel_size=7, output_layers=2, use_bias=False),
              nf.ReLU((batch_size, 2, 20, 20)), nf.Vectorization((batch_size, 2, 20, 20)),
              nf.Linear((batch_size, 800), (batch_size, n_output))]
    assert all(layer.built for layer in layers)
    net = nf.NeuralNetwork(n_input=28 ** 2, n_output=n_output, batch_size=batch_size, layers=layers,
                           loss_fn=nf.SoftMaxLoss((batch_size, n_output)))
    assert net.input_shape == (1, 28, 28) and net.count_params() == 8438   # Keras's count in the lab
    assert [w.shape for w in net.get_weights()] == [(4, 1, 3, 3), (2, 4, 7, 7), (801, 10)]


@pytest.mark.parametrize("bad", [(0, 28, 28), "28", (1, 2.5)])
def test_network_input_shape_is_checked(bad):
    with pytest.raises(nf.ShapeError, match=r"input_shape must be the shape of one sample"):
        nf.NeuralNetwork([nf.Dense(3)], input_shape=bad)


def test_keras_builds_the_same_model_and_the_converters_take_it():
    """Keras's Sequential of the same layers, built by its own shape inference, has our parameter
    counts and output shapes (channels last); ``to_keras`` of the inferred network computes our
    outputs, and ``from_keras`` gives back a network equal to the explicit one."""
    cc = pytest.importorskip("nn_from_scratch.crosscheck")
    keras = pytest.importorskip("keras")
    net = nf.NeuralNetwork(lazy_cnn(seed=2), input_shape=(1, 28, 28))
    L = keras.layers
    model = keras.Sequential([keras.Input((28, 28, 1)), L.Conv2D(4, 3), L.BatchNormalization(), L.ReLU(),
                              L.MaxPooling2D(2), L.Conv2D(6, 3, padding="same", use_bias=False),
                              L.BatchNormalization(), L.ReLU(), L.Flatten(), L.Dense(32), L.ReLU(), L.Dense(10)])
    assert [layer.count_params() for layer in net.layers] == [layer.count_params() for layer in model.layers]
    ours = [s if len(s) == 1 else s[1:] + s[:1] for s in net._shapes]          # channels last
    assert ours == [tuple(layer.output.shape[1:]) for layer in model.layers]
    twin = cc.to_keras(net)
    X = np.random.default_rng(4).standard_normal((8, 1, 28, 28)).astype(np.float32)
    np.testing.assert_allclose(twin.predict(cc.to_keras_layout(X), verbose=0), net.predict(X), rtol=1e-4, atol=1e-5)
    back = cc.from_keras(twin)
    assert_same_weights(back, nf.NeuralNetwork(explicit_cnn(seed=2)))


def test_a_first_layer_with_free_spatial_sizes_is_completed_by_the_data():
    """``Conv2D(1, 8, 3)`` knows its channels, not the image size; the Dense after the flatten needs it:
    the first predict builds it from the data (the lab's missing channel axis added as usual)."""
    net = nf.NeuralNetwork([nf.Conv2D(1, 8, 3, seed=0), nf.ReLU(), nf.Flatten(), nf.Dense(10, seed=1)])
    assert not net.built and net.input_shape == (1, None, None)
    X = np.random.default_rng(0).standard_normal((5, 28, 28)).astype(np.float32)      # no channel axis
    out = net.predict(X)
    assert out.shape == (5, 10) and net.built and net.input_shape == (1, 28, 28)
    assert net.layers[-1].W.shape == (8 * 26 * 26 + 1, 10)
    np.testing.assert_array_equal(net.layers[-1].W, nf.Linear(8 * 26 * 26, 10, seed=1).W)
