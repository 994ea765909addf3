"""Shared fixtures: where the real Fashion-MNIST files come from in tests."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from fmnist_mlp.data import DEBIAN_DIR


def require_or_skip(reason: str) -> None:
    """Skip a test that needs something absent, except under CI=true, where it must be there."""
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(f"{reason} (required when CI=true: .ci/run installs it)")
    pytest.skip(reason)


def need(*modules: str) -> None:
    """Skip (fail under CI=true) unless every module imports: the extras a test needs."""
    import importlib

    for name in modules:
        try:
            importlib.import_module(name)
        except ImportError:
            require_or_skip(f"{name} is not installed (pip install -e '.[dev]')")


def _share_the_kernel_cache() -> None:
    """Tests build models with kernels="numba" directly, not through the plan that names the
    kernel cache: they share the user's cache with the CLI's subprocesses, so the suite compiles
    each kernel once."""
    from fmnist_mlp.data.download import user_cache_dir
    from fmnist_mlp.errors import ConfigError
    from fmnist_mlp.nn import kernels

    try:
        kernels.set_cache_dir(user_cache_dir() / "kernels")
    except ConfigError:
        pass


_share_the_kernel_cache()


def require_numba() -> None:
    """Skip (fail under CI=true) a test of the fused kernels where numba is not installed."""
    try:
        import numba  # noqa: F401
    except ImportError:
        require_or_skip("numba is not installed (pip install -e '.[fast]')")


@pytest.fixture(params=["numpy", "numba"])
def kernels(request):
    """Each kernel choice in turn (train.kernels, MLP(kernels=), make_optimizer(kernels=)): the
    tests that matter run on the NumPy reference and on the fused kernels alike."""
    if request.param == "numba":
        require_numba()
    return request.param


@pytest.fixture
def needs_optuna():
    """For the sweep tests (``pytestmark = pytest.mark.usefixtures("needs_optuna")``)."""
    try:
        import optuna  # noqa: F401
    except ImportError:
        require_or_skip("optuna is not installed (pip install -e '.[sweep]')")


@pytest.fixture(scope="session")
def real_data_dir(tmp_path_factory) -> Path:
    """A data directory holding the verified real dataset.

    Filled from Debian's dataset folder into a fresh directory when that folder exists; else the
    user's own verified cache (what `make data` or `fmnist-mlp download` fetched) is used as is.
    """
    from fmnist_mlp.data import ensure_dataset
    from fmnist_mlp.errors import DataError

    if DEBIAN_DIR.is_dir():
        path = tmp_path_factory.mktemp("fmnist-data")
        ensure_dataset(path, sources=[str(DEBIAN_DIR)], progress=False)
        return path
    try:
        return ensure_dataset(None, sources=[], progress=False)     # the cache only, no network
    except DataError:
        require_or_skip(f"the real Fashion-MNIST files are in neither {DEBIAN_DIR} nor the cache "
                        "(run `make data` or `fmnist-mlp download`)")
