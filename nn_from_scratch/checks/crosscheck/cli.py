"""``python -m nn_from_scratch crosscheck``: the seed lab's CNN (or a saved model) against Keras.

Builds the lab's network (Conv 3x3x4 no bias, ReLU, Conv 7x7x2 no bias, ReLU,
Vectorization, Linear 800 -> 10), or loads ``--model FILE.npz`` (a model saved
with ``NeuralNetwork.save``; ``--import MODULE`` first imports the modules that
define its own layers), runs ``compare`` on one batch with labels and
``compare_training`` for ``--steps`` steps, prints both tables and exits with
0 when everything is within tolerance, 1 otherwise (2: the model cannot be read).
Data: the bundled MNIST digits when the model takes ``(1, 28, 28)`` images or
``(784,)`` vectors and gives 10 classes; otherwise seeded random inputs in
``[0, 1)`` with random labels (or normal targets for ``MSELoss``).
"""

import numpy as np

from ...cli_errors import ArgumentParser, command, check_options
from ...examples import networks as examples
from ...training.optimizers import Adam, GradientDescent, RMSProp

__all__ = ["main", "seed_lab_cnn", "make_optimizer", "OPTIMIZERS"]

#: name -> (factory(lr, weight_decay), default learning rate)
OPTIMIZERS = {
    "sgd": (lambda lr, wd: GradientDescent(lr, weight_decay=wd), 0.1),
    "momentum": (lambda lr, wd: GradientDescent(lr, momentum=0.9, weight_decay=wd), 0.01),
    "nesterov": (lambda lr, wd: GradientDescent(lr, momentum=0.9, nesterov=True, weight_decay=wd), 0.01),
    "adam": (lambda lr, wd: Adam(lr, weight_decay=wd), 1e-3),
    "rmsprop": (lambda lr, wd: RMSProp(lr, weight_decay=wd), 1e-3),
}


def make_optimizer(name, lr=None, weight_decay=0.0):
    """One of ``OPTIMIZERS`` by name, with its default learning rate unless ``lr`` is given."""
    factory, default_lr = OPTIMIZERS[name]
    return factory(default_lr if lr is None else lr, weight_decay)


def seed_lab_cnn(batch_size=50, seed=0, optimizer=None):
    """The network of the seed lab (course lab 8, part 2), with seeded weights.

    Layers are named conv1, relu1, conv2, relu2, flatten, linear (loss: softmax_loss).
    """
    return examples.seed_lab_cnn(batch_size=batch_size, optimizer=optimizer or GradientDescent(lr=0.1), seed=seed)


def _parser():
    p = ArgumentParser(prog="python -m nn_from_scratch crosscheck",
                                description="Compare the seed lab's CNN with Keras: every output and gradient "
                                            "layer by layer, then a whole training run.")
    p.add_argument("--steps", type=int, default=100, help="training steps to compare (default 100)")
    p.add_argument("--optimizer", choices=sorted(OPTIMIZERS) + ["all"], default="sgd",
                   help="optimizer for the training comparison (default sgd; 'all' runs each)")
    p.add_argument("--lr", type=float, default=None, help="learning rate (default: per optimizer)")
    p.add_argument("--weight-decay", type=float, default=0.0, help="decoupled weight decay (default 0)")
    p.add_argument("--batch-size", type=int, default=32, help="batch size (default 32)")
    p.add_argument("--seed", type=int, default=0, help="seed for the weights and the batch order")
    p.add_argument("--lockstep", action="store_true",
                   help="re-sync the Keras weights to ours before every training step (judge each update alone)")
    p.add_argument("--model", metavar="FILE.npz", default=None,
                   help="a saved model (NeuralNetwork.save) instead of the seed lab's CNN")
    p.add_argument("--import", dest="imports", action="append", default=[], metavar="MODULE",
                   help="import this module first (a dotted name or a .py path defining the model's own layers)")
    p.add_argument("--mode", choices=("auto", "chained", "isolated"), default="auto",
                   help="layer comparison: outputs end to end and gradients per layer (auto, default), "
                        "everything end to end (chained), or every layer fed our inputs (isolated)")
    return p


def _load_model(args):
    """``(network, X, y, description)`` for ``--model``, or an exit status after printing the error."""
    import sys  # noqa: PLC0415

    from ...data.datasets import load_mnist  # noqa: PLC0415
    from ..loading import GradeError, import_module  # noqa: PLC0415
    from ...layers.losses import MSELoss  # noqa: PLC0415
    from ...training.network import NeuralNetwork  # noqa: PLC0415

    try:
        for name in args.imports:
            import_module(name)
        net = NeuralNetwork.load(args.model)
    except (GradeError, OSError, ValueError) as exc:
        print(f"error: cannot read the model {args.model}: {exc}", file=sys.stderr)
        return 2
    shape, out = tuple(net.input_shape or ()), tuple(net.output_shape or ())
    if shape in ((1, 28, 28), (784,)) and out == (10,) and not isinstance(net.loss_fn, MSELoss):
        X, y = load_mnist("train")
        return net, X.reshape((len(X),) + shape), y, f"MNIST digits: {len(X)} training images (bundled)"
    if not shape or None in shape:
        print(f"error: the model {args.model} does not record its input shape", file=sys.stderr)
        return 2
    rng = np.random.default_rng([args.seed, 7])
    n = max(8 * args.batch_size, 256)
    X = rng.uniform(0, 1, (n,) + shape).astype(np.float32)
    y = rng.standard_normal((n,) + out) if isinstance(net.loss_fn, MSELoss) else rng.integers(0, int(np.prod(out)), n)
    return net, X, y, f"random data: {n} inputs in [0, 1) with random {'targets' if isinstance(net.loss_fn, MSELoss) else 'labels'}"


@command("python -m nn_from_scratch crosscheck")
def main(argv=None):
    """Run the cross-check; returns the exit code (0 all passed, 1 otherwise)."""
    from ...data.datasets import load_mnist  # noqa: PLC0415
    from .compare import compare  # noqa: PLC0415
    from .training import compare_training  # noqa: PLC0415

    args = _parser().parse_args(argv)
    check_options(args, {"steps": ("int>=", 1), "batch_size": ("int>=", 1), "seed": ("int>=", 0),
                         "lr": ("float>", 0.0), "weight_decay": ("float>=", 0.0)})
    rng = np.random.default_rng(args.seed)
    if args.model is None:
        X, y = load_mnist("train")
        net = seed_lab_cnn(batch_size=args.batch_size, seed=args.seed)
        print("Seed lab CNN (course lab 8): Conv 3x3x4 -> ReLU -> Conv 7x7x2 -> ReLU -> Vectorization -> "
              "Linear 800->10")
        print(f"MNIST digits: {len(X)} training images (bundled), batch {args.batch_size}\n")
    else:
        loaded = _load_model(args)
        if isinstance(loaded, int):
            return loaded
        net, X, y, text = loaded
        print(f"Model {args.model}: {len(net.layers)} layers, input {net.input_shape}, loss "
              f"{type(net.loss_fn).__name__}")
        print(f"{text}, batch {args.batch_size}\n")
    idx = rng.choice(len(X), size=min(args.batch_size, len(X)), replace=False)
    report = compare(net, X[idx], y[idx], seed=args.seed, mode=args.mode)
    print(report)
    ok = report.passed
    names = sorted(OPTIMIZERS) if args.optimizer == "all" else [args.optimizer]
    for name in names:
        opt = make_optimizer(name, args.lr, args.weight_decay)
        print()
        tr = compare_training(net, X, y, steps=args.steps, optimizer=opt, batch_size=args.batch_size,
                              seed=args.seed, lockstep=args.lockstep)
        print(f"[{name}]")
        print(tr)
        ok = ok and tr.passed
    print("\nALL PASSED" if ok else "\nFAILED")
    return 0 if ok else 1
