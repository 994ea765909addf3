"""Config schema: loading, --set overrides, validation messages, dumping."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import yaml

from fmnist_mlp.config.load import config_to_dict, dump_config, flatten, load_config, parse_override
from fmnist_mlp.config.schema import Config
from fmnist_mlp.config.validate import all_key_paths, config_from_dict
from fmnist_mlp.errors import ConfigError

CONFIGS = Path(__file__).resolve().parent.parent / "configs"
REQUIRED = ["default", "logistic", "lecture", "sgd", "momentum", "nesterov", "adagrad",
            "rmsprop", "adam", "best", "fast", "distilled"]


@pytest.mark.parametrize("name", REQUIRED)
def test_shipped_config_loads_and_round_trips(name):
    cfg = load_config(CONFIGS / f"{name}.yaml")
    assert config_from_dict(yaml.safe_load(dump_config(cfg))) == cfg


def test_shipped_configs_say_what_they_promise():
    assert load_config(CONFIGS / "logistic.yaml").model.hidden == ()
    lecture = load_config(CONFIGS / "lecture.yaml")
    assert (lecture.model.activation, lecture.loss.name, lecture.optimizer.name) == (
        "sigmoid", "squared_error", "sgd")
    for opt in ["sgd", "momentum", "nesterov", "adagrad", "rmsprop", "adam"]:
        assert load_config(CONFIGS / f"{opt}.yaml").optimizer.name == opt
    best = load_config(CONFIGS / "best.yaml")
    assert best.model.hidden == (1024, 1024) and best.optimizer.name == "adamw"


def test_no_file_gives_the_schema_defaults():
    cfg = load_config(None)
    assert cfg == Config()
    assert cfg.model.hidden == (256, 128) and cfg.optimizer.lr == 0.001
    assert cfg.data.subset is None and cfg.train.early_stopping_patience is None


def test_overrides_take_yaml_values():
    cfg = load_config(None, ["optimizer.lr=0.01", "model.hidden=[512, 256]", "data.subset=1000",
                             "data.augment.flip=true", "train.early_stopping_patience=null",
                             "optimizer.eps=1e-7"])
    assert cfg.optimizer.lr == 0.01
    assert cfg.model.hidden == (512, 256)
    assert cfg.data.subset == 1000 and cfg.data.augment.flip is True
    assert cfg.optimizer.eps == pytest.approx(1e-7)   # "1e-7" is a YAML string; still a number


def test_overrides_apply_on_top_of_the_file(tmp_path):
    path = tmp_path / "x.yaml"
    path.write_text("optimizer:\n  name: sgd\n  lr: 0.5\n")
    cfg = load_config(path, ["optimizer.lr=0.25"])
    assert (cfg.optimizer.name, cfg.optimizer.lr) == ("sgd", 0.25)


def test_empty_hidden_list_is_logistic_regression_and_csv_string_is_accepted():
    assert load_config(None, ["model.hidden=[]"]).model.hidden == ()
    assert load_config(None, ["model.hidden=64,32"]).model.hidden == (64, 32)


@pytest.mark.parametrize("override, fragments", [
    ("model.hiden=[1]", ["model.hiden", "unknown key", "did you mean 'model.hidden'"]),
    ("optimiser.lr=0.1", ["optimiser", "did you mean 'optimizer'"]),
    ("lr=0.1", ["lr", "did you mean 'optimizer.lr'"]),
    ("optimizer.lr=-0.1", ["optimizer.lr", "must be > 0"]),
    ("optimizer.lr=fast", ["optimizer.lr", "expected a number", "fast"]),
    ("data.augment.mixup=.nan", ["data.augment.mixup", "expected a finite number, got nan"]),
    ("optimizer.lr=-.inf", ["optimizer.lr", "expected a finite number, got -inf"]),
    ("optimizer.lr=1e999", ["optimizer.lr", "expected a finite number, got '1e999'"]),
    ("train.epochs=ten", ["train.epochs", "expected an integer"]),
    ("train.epochs=2.5", ["train.epochs", "expected an integer"]),
    ("train.epochs=0", ["train.epochs", ">= 1"]),
    ("train.plots=1", ["train.plots", "true or false"]),
    ("model.batchnorm=3", ["model.batchnorm", "true or false"]),
    ("model.hidden=", ["model.hidden", "empty string"]),
    ("model.hidden=[256, -3]", ["model.hidden[1]", ">= 1"]),
    ("model.hidden=[256, true]", ["model.hidden[1]", "expected an integer"]),
    ("model.dropout=1.0", ["model.dropout", "< 1.0"]),
    ("model.activation=rleu", ["model.activation", "did you mean 'relu'"]),
    ("optimizer.name=adm", ["optimizer.name", "did you mean 'adam'"]),
    ("model=3", ["model", "expected a section"]),
    ("seed=-1", ["seed", ">= 0"]),
    ("model.output=sigmoid", ["loss.name", "softmax"]),
    ("data.fold=0", ["data.fold", "data.folds of 2 or more"]),
    ("data.folds=0", ["data.folds", ">= 1"]),
])
def test_bad_values_name_the_key(override, fragments):
    with pytest.raises(ConfigError) as info:
        load_config(None, [override])
    message = str(info.value)
    assert "\n" not in message
    for fragment in fragments:
        assert fragment in message


def test_unknown_key_in_file_names_file_and_dotted_path(tmp_path):
    path = tmp_path / "exp.yaml"
    path.write_text("train:\n  epoch: 3\n")
    with pytest.raises(ConfigError, match=r"exp\.yaml.*train\.epoch: unknown key.*'train\.epochs'"):
        load_config(path)


@pytest.mark.parametrize("text, fragment", [
    ("model: [1, 2\n", "invalid YAML at line"),
    ("- 1\n- 2\n", "expected a mapping"),
])
def test_malformed_files(tmp_path, text, fragment):
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=fragment):
        load_config(path)


def test_missing_file(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "nope.yaml")


def test_empty_file_is_all_defaults(tmp_path):
    path = tmp_path / "empty.yaml"
    path.write_text("# nothing\n")
    assert load_config(path) == Config()


@pytest.mark.parametrize("item", ["optimizer.lr", "=3", "a..b=1"])
def test_malformed_override(item):
    with pytest.raises(ConfigError):
        load_config(None, [item])


def test_parse_override_keeps_strings_and_lists():
    assert parse_override("model.activation=tanh") == ("model.activation", "tanh")
    assert parse_override("model.hidden=[1,2]") == ("model.hidden", [1, 2])


def test_config_is_frozen():
    cfg = Config()
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.seed = 3  # type: ignore[misc]


def test_dump_has_every_key_and_flatten_lists_them():
    cfg = load_config(None, ["model.hidden=[8]"])
    flat = flatten(yaml.safe_load(dump_config(cfg)))
    assert sorted(flat) == sorted(all_key_paths())
    assert flat["model.hidden"] == [8]
    assert config_to_dict(cfg)["model"]["hidden"] == [8]


def _schema_field(path: str) -> dataclasses.Field:
    """The dataclass field behind a dotted key such as ``"model.activation"``."""
    import typing

    *sections, name = path.split(".")
    cls = Config
    for part in sections:
        cls = typing.get_type_hints(cls)[part]
    return {f.name: f for f in dataclasses.fields(cls)}[name]


def test_name_choices_are_the_engines_own_tables():
    from fmnist_mlp.nn import optim
    from fmnist_mlp.nn import schedules
    from fmnist_mlp.data import dataset
    from fmnist_mlp.nn import activations, init, kernels, losses, model, workspace

    engine_tables = {
        "data.split": dataset.SPLITS, "data.normalize": dataset.NORMALIZATIONS,
        "model.activation": activations.ACTIVATIONS, "model.output": losses.OUTPUTS,
        "model.init": init.INITS, "model.dtype": model.DTYPES, "model.layout": workspace.LAYOUTS,
        "loss.name": losses.LOSSES, "optimizer.name": optim.OPTIMIZERS,
        "schedule.name": schedules.SCHEDULES, "train.kernels": kernels.KERNELS,
    }
    fields = {key: _schema_field(key) for key in all_key_paths()}
    fields = {key: f for key, f in fields.items() if f.metadata.get("choices")}
    assert set(fields) == set(engine_tables)
    defaults = flatten(config_to_dict(Config()))
    for key, table in engine_tables.items():
        assert tuple(fields[key].metadata["choices"]) == tuple(table), key
        assert defaults[key] in table, key
        # every name the engine knows is accepted, and one it does not know is refused by name
        for name in table:
            load_config(None, [f"{key}={name}"] + (["model.output=softmax"] if key != "model.output"
                                                  else ["loss.name=squared_error"]))
        with pytest.raises(ConfigError, match=f"^--set: {key}: 'nope' is not one of"):
            load_config(None, [f"{key}=nope"])


def test_loading_the_config_module_does_not_import_numpy():
    import subprocess
    import sys

    code = "import sys, fmnist_mlp.config.schema; print('numpy' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_distilled_yaml_is_best_yaml_plus_the_distillation_block():
    """The student's recipe is written twice (a config cannot include another): keep them equal
    but for the distillation block, the teachers' split and the length."""
    import dataclasses

    best, distilled = load_config(CONFIGS / "best.yaml"), load_config(CONFIGS / "distilled.yaml")
    # data.split_seed pins the teachers' split for students of other seeds; seed 0 draws it anyway.
    assert distilled.data.split_seed == best.seed == distilled.seed == 0
    same_split = dataclasses.replace(distilled.data, split_seed=best.data.split_seed)
    same_length = dataclasses.replace(distilled.train, epochs=best.train.epochs)
    assert distilled.train.epochs > best.train.epochs   # soft targets pay for a longer run
    assert dataclasses.replace(distilled, distill=best.distill, data=same_split,
                               train=same_length) == best
    assert distilled.distill.weight > 0 and not distilled.distill.teachers


def test_the_config_reference_lists_every_config_key_with_its_default():
    """The configuration reference (docs/configs.md) is the schema users read: no key missing or
    stale, every value the default."""
    import re

    page = (CONFIGS.parent / "docs" / "configs.md").read_text(encoding="utf-8")
    [reference] = [b for b in re.findall(r"```yaml\n(.*?)```", page, re.S) if b.startswith("seed:")]
    listed = flatten(yaml.safe_load(reference))
    assert sorted(listed) == sorted(all_key_paths())
    defaults = flatten(config_to_dict(Config()))
    assert {k: v for k, v in listed.items() if v != defaults[k]} == {}
