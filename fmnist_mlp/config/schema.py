"""The experiment configuration's schema: a tree of frozen dataclasses, and nothing else.

Every key is optional (the defaults below are the schema); each field's metadata holds its allowed
values. The network's keys (the ``model`` and ``loss`` sections) are declared once, beside the
network, in :mod:`fmnist_mlp.nn.config_keys`; their sections are made from that table here. Reading a file and ``--set`` overrides is :mod:`fmnist_mlp.config.load`, checking a plain
dict against this tree is :mod:`fmnist_mlp.config.validate`, and turning a checked
:class:`Config` into objects is :mod:`fmnist_mlp.config.plan`.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Iterator

from fmnist_mlp.data.facts import IMAGE_SIDE, TRAIN_IMAGES
from fmnist_mlp.nn.config_keys import MODEL_KEYS


class _Names:
    """The names a key accepts, read from the engine's own table (a dict or tuple) on first use.

    Lazy because the engine modules import NumPy, which the CLI must not pay for before a
    command runs; written as a reference, so a name added to the engine is accepted here too.
    """

    def __init__(self, module: str, table: str) -> None:
        self.module, self.table = module, table

    def __iter__(self) -> Iterator[str]:
        import importlib

        return iter(tuple(getattr(importlib.import_module(self.module), self.table)))

    def __contains__(self, value: object) -> bool:
        return value in tuple(self)

    def __repr__(self) -> str:
        return f"{self.module}.{self.table}"


def _opt(default: Any, *, choices: tuple | _Names = (), lo: float | None = None,
         hi: float | None = None, lo_open: bool = False, hi_open: bool = False) -> Any:
    """A dataclass field whose metadata carries its allowed values (checked by :func:`_check_range`)."""
    meta = {"choices": choices, "lo": lo, "hi": hi, "lo_open": lo_open, "hi_open": hi_open}
    if isinstance(default, (list, tuple, dict)) or dataclasses.is_dataclass(default):
        return field(default_factory=lambda: default, metadata=meta)
    return field(default=default, metadata=meta)


@dataclass(frozen=True)
class AugmentConfig:
    flip: bool = _opt(False)                 # random horizontal flips, p = 0.5 per image
    alternate_flip: bool = _opt(False)       # with flip: each image mirrored every other epoch
    shift: int = _opt(0, lo=0, hi=IMAGE_SIDE - 1)   # random shifts of up to N pixels in x and y
    cutout: int = _opt(0, lo=0, hi=IMAGE_SIDE)      # blank a random N×N square of each training image
    mixup: float = _opt(0.0, lo=0.0)          # α of mixup's Beta(α, α) pair weights; 0 = off
    test_flip: bool = _opt(False)            # test/eval: mean of each image and its mirror


@dataclass(frozen=True)
class DataConfig:
    val_size: int = _opt(5000, lo=1, hi=TRAIN_IMAGES - 1)   # held out of the 60,000 training images
    split_seed: int | None = _opt(None, lo=0)    # draws the held-out rows; None = the run's seed
    split: str = _opt("stratified", choices=_Names("fmnist_mlp.data.dataset", "SPLITS"))
    normalize: str = _opt("standardize",
                          choices=_Names("fmnist_mlp.data.dataset", "NORMALIZATIONS"))
    subset: int | None = _opt(None, lo=1)        # only N training images: quick runs and tests
    # Cross-fitting for distillation: the training rows cut into `folds` parts (drawn by the
    # split seed, after val and subset) and part `fold` left out, so a teacher scores it unseen.
    folds: int = _opt(1, lo=1, hi=100)
    fold: int | None = _opt(None, lo=0)
    augment: AugmentConfig = _opt(AugmentConfig())


def _engine_section(name: str, section: str) -> type:
    """A section whose keys are the engine's own (``nn.config_keys.MODEL_KEYS[section]``, the
    one place a model's key is declared): a frozen dataclass like the others, each field's type
    its default's, its metadata the key's allowed values."""
    kinds = {bool: bool, int: int, float: float, str: str, tuple: tuple[int, ...]}
    fields = [(key, kinds[type(k.default)],
               _opt(k.default, choices=_Names(*k.choices) if k.choices else (), lo=k.lo,
                    hi=k.hi, lo_open=k.lo_open, hi_open=k.hi_open))
              for key, k in MODEL_KEYS[section].items()]
    return dataclasses.make_dataclass(name, fields, frozen=True, namespace={
        "__module__": __name__, "__doc__": f"The config's {section} section: the network's "
                                           f"keys, declared in fmnist_mlp/nn/config_keys.py."})


ModelConfig = _engine_section("ModelConfig", "model")
LossConfig = _engine_section("LossConfig", "loss")


@dataclass(frozen=True)
class OptimizerConfig:
    name: str = _opt("adam", choices=_Names("fmnist_mlp.nn.optim", "OPTIMIZERS"))
    lr: float = _opt(0.001, lo=0.0, lo_open=True)
    momentum: float = _opt(0.9, lo=0.0, hi=1.0, hi_open=True)
    beta1: float = _opt(0.9, lo=0.0, hi=1.0, hi_open=True)
    beta2: float = _opt(0.999, lo=0.0, hi=1.0, hi_open=True)
    eps: float = _opt(1.0e-8, lo=0.0, lo_open=True)
    rho: float = _opt(0.9, lo=0.0, hi=1.0, hi_open=True)   # RMSProp's squared-gradient decay
    weight_decay: float = _opt(0.0, lo=0.0)    # decoupled (AdamW-style)


@dataclass(frozen=True)
class ScheduleConfig:
    name: str = _opt("constant", choices=_Names("fmnist_mlp.nn.schedules", "SCHEDULES"))
    warmup_epochs: int = _opt(0, lo=0)
    step_epochs: int = _opt(10, lo=1)
    gamma: float = _opt(0.1, lo=0.0, lo_open=True)
    min_lr: float = _opt(0.0, lo=0.0)


@dataclass(frozen=True)
class TrainConfig:
    epochs: int = _opt(10, lo=1)
    batch_size: int = _opt(128, lo=1)
    early_stopping_patience: int | None = _opt(None, lo=1)
    checkpoint_every: int = _opt(1, lo=1)
    eval_batch_size: int = _opt(2000, lo=1)
    plots: bool = _opt(False)
    tensorboard: bool = _opt(False)          # event files in the run directory (tensorboardX)
    # Who runs the elementwise work (speed only: the fused kernels are held equal to NumPy's):
    # auto = numba where the `fast` extra is installed, else numpy.
    kernels: str = _opt("auto", choices=_Names("fmnist_mlp.nn.kernels", "KERNELS"))


@dataclass(frozen=True)
class DistillConfig:
    teachers: tuple[str, ...] = _opt(())        # run directories; [] = no distillation
    weight: float = _opt(0.5, lo=0.0, hi=1.0)  # target = (1 − weight)·labels + weight·teachers
    temperature: float = _opt(1.0, lo=0.0, lo_open=True)   # softens the teachers' probabilities
    consistent: bool = _opt(False)   # teachers score each batch as the student sees it, not once


@dataclass(frozen=True)
class Config:
    seed: int = _opt(0, lo=0)
    data: DataConfig = _opt(DataConfig())
    model: ModelConfig = _opt(ModelConfig())
    loss: LossConfig = _opt(LossConfig())
    optimizer: OptimizerConfig = _opt(OptimizerConfig())
    schedule: ScheduleConfig = _opt(ScheduleConfig())
    train: TrainConfig = _opt(TrainConfig())
    distill: DistillConfig = _opt(DistillConfig())
