"""Deliberately wrong optimizers shared by the tests that must catch them."""
import nn_from_scratch as nf


class AdamWithoutBiasCorrection(nf.Adam):
    """Bug: forgets the bias correction sqrt(1 - b2^t) / (1 - b1^t)."""

    def _update(self, param, grad, key):
        m = self.state(key, param, "m")
        v = self.state(key, param, "v")
        m += (grad - m) * (1 - self.beta_1)
        v += (grad * grad - v) * (1 - self.beta_2)
        param -= self.lr * m / (v ** 0.5 + self.epsilon)


# --- the classic student bugs in layers (python -m nn_from_scratch grade must catch each) -------------
import numpy as np  # noqa: E402

from nn_from_scratch.layers.activations import ReLU  # noqa: E402
from nn_from_scratch.layers.reshape import Vectorization
from nn_from_scratch.layers.losses import SoftMaxLoss  # noqa: E402
from nn_from_scratch.neurons import Convolution, Linear  # noqa: E402


class TransposedLinear(Linear):
    """Bug: dL/dW = (x.T @ dy).T, unnoticed while W is square (D == M). Caught at dL/dW."""

    def _backward(self, dy, need_input_grad=True):
        dx = super()._backward(dy, need_input_grad)
        self._grads["W"][1:] = self._grads["W"][1:].T.copy()
        return dx


class SoftMaxLossNoMean(SoftMaxLoss):
    """Bug: dL/dz = softmax(z) - t, the 1/N of the batch mean forgotten. Caught at the loss's dL/dx."""

    def _backward(self, upstream):
        return super()._backward(upstream) * self._pred_shape[0]


class FlippedConvolution(Convolution):
    """Bug: a true convolution (flipped kernel) where Keras cross-correlates. Forward and backward agree
    with each other (a gradient check passes); caught at the layer's output against Keras."""

    def _flipped(self, W):
        return np.ascontiguousarray(W[(Ellipsis,) + (slice(None, None, -1),) * self.ndim])

    def _forward(self, x):
        W = self._params["W"]
        self._params["W"] = self._flipped(W)
        try:
            return super()._forward(x)
        finally:
            self._params["W"] = W

    def _backward(self, dy, need_input_grad=True):
        W = self._params["W"]
        self._params["W"] = self._flipped(W)
        try:
            dx = super()._backward(dy, need_input_grad)
        finally:
            self._params["W"] = W
        self._grads["W"] = self._flipped(self._grads["W"])
        return dx


class ReLUNoMask(ReLU):
    """Bug: backward passes dL/dy through where the input was negative. Caught at dL/dx."""

    def _backward(self, dy):
        return dy


class NHWCVectorization(Vectorization):
    """Bug: flattens in (h, w, c) order (Keras's channels-last Flatten) where the layers after it expect
    (c, h, w). Self-consistent (a gradient check passes); caught at the layer's output against Keras."""

    def _forward(self, x):
        last = np.ascontiguousarray(np.moveaxis(x, 1, -1))
        self._cache["x_shape"], self._cache["last_shape"] = x.shape, last.shape
        return last.reshape(x.shape[0], -1)

    def _backward(self, dy):
        return np.ascontiguousarray(np.moveaxis(dy.reshape(self._cache["last_shape"]), -1, 1))
