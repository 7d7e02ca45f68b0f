"""The example networks of ``examples/networks.py`` are the ones the studies build by hand:
the same layers, settings and initial weights (so the study command lines can build theirs here)."""
import numpy as np
import pytest

from nn_from_scratch.examples import networks


def _same(a, b):
    assert [type(layer) for layer in a.layers] == [type(layer) for layer in b.layers]
    def settings(net):      # automatic names count up (convolution_1, convolution_2): not a setting
        return [{k: v for k, v in layer.get_config().items()
                 if k != "name" or not v.startswith(type(layer).__name__.lower())} for layer in net.layers]
    assert settings(a) == settings(b)
    assert type(a.loss_fn) is type(b.loss_fn) and a.batch_size == b.batch_size
    assert a.optimizer.get_config() == b.optimizer.get_config() and type(a.optimizer) is type(b.optimizer)
    for wa, wb in zip(a.get_weights(), b.get_weights(), strict=True):
        np.testing.assert_array_equal(wa, wb)


@pytest.mark.parametrize("kw", [{}, {"channels": (4, 6), "hidden": 12, "seed": 3, "batch_size": 8}])
def test_separation_cnn_is_the_separation_studys(kw):
    from nn_from_scratch.analysis.separation_cli import separation_cnn
    _same(networks.separation_cnn(**kw), separation_cnn(**kw))
    assert networks.separation_cnn(**kw).name == "separation_cnn"


@pytest.mark.parametrize("seed", [0, 7])
def test_permutation_cnn_is_the_permutation_studys(seed):
    from nn_from_scratch.analysis.permutation_cli import build_seed_cnn
    _same(networks.permutation_cnn(seed), build_seed_cnn(seed))
    _same(networks.permutation_cnn(seed, lr=0.01, momentum=0.5, batch_size=16),
          build_seed_cnn(seed, lr=0.01, momentum=0.5, batch_size=16))
