"""The small MNIST slice the training tests use, for the contract tests here."""

from tests.train.conftest import tiny_mnist  # noqa: F401  (re-exported as a fixture here)
