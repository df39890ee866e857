"""Plain training: no intervention."""
from methods.base import Method


class Vanilla(Method):
    name = "vanilla"
