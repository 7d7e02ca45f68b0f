"""Cross-check the framework against TensorFlow/Keras, layer by layer and over training.

One line answers "are my numbers the same as Keras's?"::

    from nn_from_scratch.crosscheck import compare, compare_training, to_keras
    report = compare(network, x, y)          # every output and gradient, per layer
    print(report); assert report.passed
    print(compare_training(network, X, y, steps=100, optimizer=Adam(1e-3)))

* ``to_keras(network)`` builds a ``keras.Sequential`` holding exactly our weights
  (kernel layouts converted, the flatten order fixed); ``from_keras(model)`` is the
  inverse.  Keras works channels-last: a tensor ``(N, C, *S)`` of ours is
  ``(N, *S, C)`` on the Keras side (``to_keras_layout``/``from_keras_layout``).
* ``compare`` runs both with the same input and the loss (labels given) or a
  random upstream gradient, and reports per layer the forward output, dL/dx,
  dL/dW and dL/db as max absolute and max relative error
  ``max|ours - keras| / max(max|keras|, tiny)`` against tolerances.
* ``compare_training`` trains both on identical batches with the same optimizer
  and reports the loss per step and the weight difference after every step.

TensorFlow is imported here, inside a guard, so that a missing installation
gives one clear message; the rest of ``nn_from_scratch`` never needs it.
See docs/CROSSCHECK.md for the tolerance table and the layer mapping.
"""
import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("KERAS_BACKEND", "tensorflow")

INSTALL_HINT = ("from a checkout, install it with `pip install -e \".[keras]\"` (or `python3 dev.py test`, which "
                "installs it; or directly: `pip install tensorflow-cpu`). The distribution is called "
                "nn-from-scratch-edu: `pip install nn_from_scratch` would fetch an unrelated project")

try:
    import tensorflow as _tf  # noqa: F401
    import keras as _keras
except ImportError as _exc:  # pragma: no cover - exercised in a subprocess test
    raise ImportError(
        "nn_from_scratch.crosscheck compares the framework with TensorFlow/Keras, but TensorFlow/Keras "
        f"cannot be imported ({_exc}); {INSTALL_HINT}. The rest of nn_from_scratch works without it."
    ) from _exc

if int(_keras.__version__.split(".")[0]) < 3:  # pragma: no cover - depends on the installation
    raise ImportError(f"nn_from_scratch.crosscheck needs Keras 3 (found keras {_keras.__version__}); "
                      f"{INSTALL_HINT}")
if _keras.backend.backend() != "tensorflow":  # pragma: no cover - depends on the environment
    raise ImportError(
        f"nn_from_scratch.crosscheck needs Keras's TensorFlow backend, but KERAS_BACKEND selects "
        f"{_keras.backend.backend()!r}; run with KERAS_BACKEND=tensorflow"
    )

from .compare import compare  # noqa: E402
from .convert import ConstantPadding, WindowCountScale, keras_loss, keras_optimizer, to_keras  # noqa: E402
from .from_keras import from_keras  # noqa: E402
from .layout import from_keras_layout, keras_flatten_permutation, to_keras_layout  # noqa: E402
from .report import Check, CompareReport, Failure, LayerRow, TrainingReport  # noqa: E402
from .tolerances import TOLERANCES, relative_error  # noqa: E402
from .training import compare_training  # noqa: E402
from .cli import main  # noqa: E402

__all__ = [
    "to_keras", "from_keras", "keras_loss", "keras_optimizer", "compare", "compare_training", "main",
    "to_keras_layout", "from_keras_layout", "keras_flatten_permutation",
    "CompareReport", "TrainingReport", "LayerRow", "Check", "Failure", "TOLERANCES", "relative_error",
    "ConstantPadding", "WindowCountScale", "INSTALL_HINT",
]
