"""fmnist-mlp: multi-layer perceptrons with hand-written NumPy backpropagation, on Fashion-MNIST.

The front door (:mod:`fmnist_mlp.api`), loaded on first use so that ``import fmnist_mlp`` stays
cheap::

    import fmnist_mlp
    run = fmnist_mlp.train("configs/fast.yaml")           # a Run: .run_dir, .summary
    model = fmnist_mlp.load(run.run_dir)                  # a Model: .predict, .predict_proba, .evaluate
"""

__version__ = "0.1.0"
__all__ = ["train", "load", "Run", "Model", "__version__"]


def __getattr__(name: str):
    if name in ("train", "load", "Run", "Model"):
        from fmnist_mlp import api

        return getattr(api, name)
    raise AttributeError(f"module 'fmnist_mlp' has no attribute {name!r}")
