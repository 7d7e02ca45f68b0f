"""Shared fixtures for the test suite."""
import numpy as np
import pytest


@pytest.fixture
def rng():
    """A freshly seeded generator, so every test draws the same numbers on every run."""
    return np.random.default_rng(20240601)
