"""fmnist-mlp: multi-layer perceptrons with hand-written NumPy backpropagation, on Fashion-MNIST."""

__version__ = "0.1.0"
