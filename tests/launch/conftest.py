"""Fixtures for the launch tests: the small MNIST slice the training tests use."""

from tests.train.conftest import tiny_mnist  # noqa: F401  (re-exported as a fixture here)
