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
