"""A Hydra-configured experiment runner for plasticity, reinitialization and sparse training."""
__version__ = "0.1.0"
