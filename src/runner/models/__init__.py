"""The model zoo: every model is a `Network` of ordered blocks and a classifier head."""
from runner.models.base import Network

__all__ = ["Network"]
