"""The README's import path for the optimisers: `from fmnist_mlp.optim import make_optimizer`.

The update rules and their registry live in the engine, `fmnist_mlp/nn/optim.py`; this module
only names them here.
"""

from fmnist_mlp.nn.optim import *  # noqa: F401,F403  (the public names: nn/optim.__all__)
from fmnist_mlp.nn.optim import __all__  # noqa: F401
