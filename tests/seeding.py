"""A fixture shared by the curvature tests: layers built without a seed draw their weights from
one seeded generator, restored afterwards.  Import it into a test module to make it autouse there."""
import pytest


@pytest.fixture(autouse=True)
def seeded_layers():
    """Layers built without a seed draw their weights from one seeded generator (restored after)."""
    from nn_from_scratch.layers import initializers
    saved = initializers._global["rng"]
    initializers.set_seed(20)
    yield
    initializers._global["rng"] = saved
