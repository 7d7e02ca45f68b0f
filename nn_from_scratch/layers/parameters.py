"""What ``Linear`` and ``Convolution`` share: the public names of their weights and gradients
(``W``, ``W_grad``, and the seed lab's ``_W_pd``), their weight penalties, and config checks."""
import numpy as np

from . import regularizers as _regularizers

__all__ = []


def _size(value, what):
    """A positive int from a saved configuration (``param_shapes``), else ValueError."""
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise ValueError(f"{what} must be a positive integer, received {value!r}")
    return int(value)


def _init_spec(initializer, W_init_range):
    if W_init_range is not None:
        return ("uniform", W_init_range)
    return initializer


class _GradNames:
    """Public accessors shared by the neurons, and their weight penalties."""

    kernel_regularizer = None
    bias_regularizer = None

    def _set_regularizers(self, kernel_regularizer, bias_regularizer):
        self.kernel_regularizer = _regularizers.get(kernel_regularizer, f"{self._describe()}: kernel_regularizer")
        self.bias_regularizer = _regularizers.get(bias_regularizer, f"{self._describe()}: bias_regularizer")

    def _regularizer_config(self):
        cfg = {}
        if self.kernel_regularizer is not None:
            cfg["kernel_regularizer"] = _regularizers.to_config(self.kernel_regularizer)
        if self.bias_regularizer is not None:
            cfg["bias_regularizer"] = _regularizers.to_config(self.bias_regularizer)
        return cfg

    @property
    def W(self):
        return self.params["W"]     # through ``params``: an unbuilt layer says why there is no W yet

    @W.setter
    def W(self, value):
        self.set_params(W=value)

    @property
    def W_grad(self):
        """dL/dW of the last backward pass (same shape as ``W``)."""
        return self._grads.get("W")

    #: the seed lab's name for ``W_grad``
    _W_pd = W_grad


