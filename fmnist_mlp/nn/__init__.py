"""The pure-NumPy network engine: no I/O, no configuration files, no printing.

``MLP`` is imported from :mod:`fmnist_mlp.nn.model` on first use (PEP 562), so the NumPy-free
parts (the model's config keys, :mod:`fmnist_mlp.nn.config_keys`) load without NumPy.
"""

__all__ = ["MLP"]


def __getattr__(name: str):
    if name == "MLP":
        from fmnist_mlp.nn.model import MLP

        return MLP
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
