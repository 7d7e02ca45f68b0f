"""The example networks the project keeps coming back to, built in one place.

* ``seed_lab_layers`` / ``seed_lab_cnn``: the CNN of the course lab (Lab 8, part 2), with the
  lab's own constructor calls: Conv 3x3 -> 4 (no bias), ReLU, Conv 7x7 -> 2 (no bias), ReLU,
  Vectorization, Linear 800 -> 10, SoftMaxLoss.  Shapes ``(N, 1, 28, 28) -> (N, 10)``.
* ``lenet5_layers``: LeNet-5 as the benchmarks use it: Conv 6@5x5 pad 2, ReLU, MaxPool 2,
  Conv 16@5x5, ReLU, MaxPool 2, Flatten, Linear 400 -> 120 -> 84 -> 10 with ReLUs.
* ``separation_cnn``: the class-separation study's CNN (conv 3x3, ReLU, max-pool, twice, then
  two dense layers), narrower than its seed for a CPU.
* ``permutation_cnn``: the permutation-test study's CNN (one 15x15 convolution to 2 channels,
  ReLU, Linear 392 -> 10), trained with SGD and momentum.

``seed``: None (the global generator, see ``set_seed``), an int or a ``numpy.random.Generator``;
the layers draw their weights one after the other from one generator made from it.
"""
import numpy as np

from ..layers.activations import ReLU
from ..layers.reshape import Vectorization
from ..layers.initializers import default_rng
from ..layers.losses import SoftMaxLoss
from ..training.network import NeuralNetwork
from ..layers.conv import Convolution
from ..layers.dense import Linear
from ..training.optimizers import Adam, GradientDescent
from ..layers.pooling import MaxPool

__all__ = ["seed_lab_layers", "seed_lab_cnn", "lenet5_layers", "separation_cnn", "permutation_cnn", "SEED_LAB_NAMES"]

#: layer names of ``seed_lab_layers``
SEED_LAB_NAMES = ("conv1", "relu1", "conv2", "relu2", "flatten", "linear")


def _rng(seed):
    return default_rng(seed) if seed is None or isinstance(seed, np.random.Generator) \
        else np.random.default_rng(seed)


def seed_lab_layers(batch_size=50, use_bias=False, seed=None):
    """The lab's six layers, constructed with the lab's calls (batch size in every shape)."""
    rng = _rng(seed)
    b = batch_size
    n1, a1, n2, a2, fl, li = SEED_LAB_NAMES
    return [
        Convolution((b, 1, 28, 28), kernel_size=3, output_layers=4, use_bias=use_bias, seed=rng, name=n1),
        ReLU((b, 4, 26, 26), name=a1),
        Convolution((b, 4, 26, 26), kernel_size=7, output_layers=2, use_bias=use_bias, seed=rng, name=n2),
        ReLU((b, 2, 20, 20), name=a2),
        Vectorization((b, 2, 20, 20), name=fl),
        Linear((b, 800), (b, 10), seed=rng, name=li),
    ]


def seed_lab_cnn(batch_size=50, optimizer=None, seed=None, use_bias=False):
    """The lab's network: ``NeuralNetwork(n_input=784, n_output=10, ...)`` with SoftMaxLoss.

    ``optimizer`` defaults to ``GradientDescent(lr=0.05)`` (the lab's 0.5 does not train).
    """
    return NeuralNetwork(n_input=28 * 28, n_output=10, batch_size=batch_size,
                         optimizer=optimizer if optimizer is not None else GradientDescent(lr=0.05),
                         layers=seed_lab_layers(batch_size, use_bias, seed),
                         loss_fn=SoftMaxLoss((batch_size, 10), name="softmax_loss"))


def lenet5_layers(batch_size=None, seed=None):
    """LeNet-5 for ``(N, 1, 28, 28)`` MNIST digits (ReLU and max pooling)."""
    rng = _rng(seed)
    b = batch_size
    return [
        Convolution((b, 1, 28, 28), kernel_size=5, output_layers=6, padding=2, seed=rng, name="conv1"),
        ReLU(name="relu1"),
        MaxPool(pool_size=2, name="pool1"),
        Convolution((b, 6, 14, 14), kernel_size=5, output_layers=16, seed=rng, name="conv2"),
        ReLU(name="relu2"),
        MaxPool(pool_size=2, name="pool2"),
        Vectorization(name="flatten"),
        Linear(400, 120, seed=rng, name="fc1"),
        ReLU(name="relu3"),
        Linear(120, 84, seed=rng, name="fc2"),
        ReLU(name="relu4"),
        Linear(84, 10, seed=rng, name="fc3"),
    ]


def separation_cnn(channels=(8, 16), hidden=64, n_classes=10, batch_size=32, optimizer=None, seed=0):
    """The class-separation study's CNN for ``(N, 1, 28, 28)`` digits (Adam, lr 1e-3, by default).

    Layer names: conv1, relu1, maxpool1, conv2, relu2, maxpool2, flatten, fc1, relu3, fc2
    (its seed's names; the seed's ``softmax`` is in the loss).  The seed's own widths are
    ``channels=(32, 64), hidden=512`` (with padding 1 here instead of its 3).
    """
    rng = np.random.default_rng(seed)
    c1, c2 = (int(c) for c in channels)
    layers = [
        Convolution((None, 1, 28, 28), kernel_size=3, output_layers=c1, padding=1, seed=rng, name="conv1"),
        ReLU(name="relu1"), MaxPool(pool_size=2, name="maxpool1"),
        Convolution((None, c1, 14, 14), kernel_size=3, output_layers=c2, padding=1, seed=rng, name="conv2"),
        ReLU(name="relu2"), MaxPool(pool_size=2, name="maxpool2"),
        Vectorization(name="flatten"),
        Linear(c2 * 49, int(hidden), seed=rng, name="fc1"), ReLU(name="relu3"),
        Linear(int(hidden), int(n_classes), seed=rng, name="fc2"),
    ]
    return NeuralNetwork(layers, loss_fn=SoftMaxLoss(name="softmax_loss"),
                         optimizer=optimizer if optimizer is not None else Adam(lr=1e-3),
                         batch_size=batch_size, name="separation_cnn")


def permutation_cnn(seed, lr=1e-3, momentum=0.9, batch_size=64):
    """The permutation-test study's CNN, freshly initialized from ``seed`` (an int: Glorot-uniform
    weights from ``seed`` for the convolution and ``seed + 1`` for the dense layer, zero biases)."""
    return NeuralNetwork([Convolution((None, 1, 28, 28), kernel_size=15, output_layers=2, use_bias=True, seed=seed),
                          ReLU(), Vectorization(), Linear(392, 10, seed=seed + 1)], SoftMaxLoss(),
                         optimizer=GradientDescent(lr=lr, momentum=momentum), batch_size=batch_size)
