"""The pure-NumPy network engine: no I/O, no configuration files, no printing."""

from fmnist_mlp.nn.model import MLP

__all__ = ["MLP"]
