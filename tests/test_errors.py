"""The package's errors: one ``require_extra`` for every optional package, one exit code."""

import sys

import pytest

from fmnist_mlp.errors import ConfigError, MissingExtra, require_extra


def test_require_extra_returns_the_module_when_installed():
    import json

    assert require_extra("json", "anything") is json


@pytest.mark.parametrize("module, extra, feature, message", [
    ("PIL.Image", "image", None, "install pillow: pip install -e '.[image]'"),
    ("optuna", "sweep", None, "install optuna: pip install -e '.[sweep]'"),
    ("matplotlib", "plot", "plotting", "plotting needs matplotlib: pip install -e '.[plot]'"),
    ("safetensors.numpy", "export", None, "install safetensors: pip install -e '.[export]'"),
])
def test_a_missing_extra_is_one_line_and_exit_2(monkeypatch, module, extra, feature, message):
    for name in {module, module.partition(".")[0]}:
        monkeypatch.setitem(sys.modules, name, None)                # `import` now fails
    with pytest.raises(MissingExtra) as excinfo:
        require_extra(module, extra, feature=feature)
    assert str(excinfo.value) == message
    assert excinfo.value.exit_code == 2 and isinstance(excinfo.value, ConfigError)


def test_the_memory_check_names_the_need_and_what_the_machine_has():
    from fmnist_mlp.io.memory import check_fits

    check_fits(1 << 20, "small", available=1 << 30)
    with pytest.raises(ConfigError, match=r"^big: needs about 2\.0 GiB of memory \(estimated\), "
                                          r"this machine has 1\.0 GiB available"):
        check_fits(2 << 30, "big", available=1 << 30)
    with pytest.raises(ConfigError, match=r"needs about 2\^81 bytes"):
        check_fits(1 << 80, "huge", available=1 << 30)
