"""The README's import path for the optimisers: `from fmnist_mlp.optim import make_optimizer`.

The update rules live in the engine, `fmnist_mlp/nn/optim.py`; this module only names them here.
"""

from fmnist_mlp.nn.optim import *  # noqa: F401,F403  (the public names: see nn/optim.__all__)
from fmnist_mlp.nn.optim import make_optimizer  # noqa: F401
