"""Allows ``python -m fmnist_mlp``."""

from fmnist_mlp.cli import main

if __name__ == "__main__":
    main()
