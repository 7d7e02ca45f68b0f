"""A loss a user wrote against the older interface ``forward(prediction, target, validate=True)``
still trains and evaluates: the trainer passes ``sample_weight`` only when there are weights."""
import numpy as np
import pytest

import nn_from_scratch as nf


class OldStyleMSE(nf.MSELoss):
    """Overrides ``forward`` with the pre-``sample_weight`` signature (as a course's lab did)."""

    calls = 0

    def forward(self, prediction, target, validate=True):
        OldStyleMSE.calls += 1
        return super().forward(prediction, target, validate=validate)


def _net(loss):
    return nf.NeuralNetwork([nf.Linear(3, 2, seed=0)], loss, optimizer=nf.SGD(0.1))


def test_old_style_loss_fits_and_evaluates_like_the_builtin():
    rng = np.random.default_rng(0)
    X, Y = rng.normal(size=(40, 3)), rng.normal(size=(40, 2))
    old, new = _net(OldStyleMSE()), _net(nf.MSELoss())
    OldStyleMSE.calls = 0
    h_old = old.fit(X, Y, epochs=2, batch_size=8, shuffle=False, verbose=0)
    h_new = new.fit(X, Y, epochs=2, batch_size=8, shuffle=False, verbose=0)
    assert OldStyleMSE.calls >= 10                     # the user's forward really ran in fit
    np.testing.assert_array_equal(h_old["loss"], h_new["loss"])
    assert old.evaluate(X, Y)[0] == new.evaluate(X, Y)[0]


def test_old_style_loss_with_sample_weight_names_the_cause():
    rng = np.random.default_rng(1)
    X, Y = rng.normal(size=(16, 3)), rng.normal(size=(16, 2))
    with pytest.raises(TypeError, match="takes no sample_weight"):
        _net(OldStyleMSE()).fit(X, Y, epochs=1, batch_size=8, verbose=0, sample_weight=np.ones(16))
