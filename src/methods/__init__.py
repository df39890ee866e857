"""Interventions: one module per method, all behind `methods.base.Method`."""
from methods.base import Method, MethodStack

__all__ = ["Method", "MethodStack"]
