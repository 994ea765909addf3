"""The plan made once, flowing down (issue 32): step counts computed once from the dataset's facts
and held by the data and the loop; callbacks with one calling convention, started and ended by
the loop however it stops; the config serialised once into the run's record, which the run
directory and its checkpoints keep as they are."""

from __future__ import annotations

import json

import numpy as np
import pytest

from fmnist_mlp.config.load import load_config, plan_from
from fmnist_mlp.config.plan import make_plan, make_streams
from fmnist_mlp.errors import TrainingDivergedError, TrainingInterrupted, TrainingPruned
from fmnist_mlp.nn.engine import build_engine
from fmnist_mlp.training.callbacks import EVENTS
from fmnist_mlp.training.loop import LoopData, fit

TINY = ["model.hidden=[2]", "optimizer.name=sgd", "optimizer.lr=0.01"]


class Heard:
    """Every event, with what it was called with."""

    def __init__(self, fail_at: tuple[str, BaseException] | None = None) -> None:
        self.calls: list[tuple[str, tuple]] = []
        self.fail_at = fail_at

    def __getattr__(self, name):
        if name not in EVENTS:
            raise AttributeError(name)

        def listener(*args, **kwargs):
            assert not kwargs
            self.calls.append((name, args))
            if self.fail_at and self.fail_at[0] == name and name != "on_train_end":
                raise self.fail_at[1]
        return listener


def _fit(plan, x, y, callbacks):
    engine = build_engine(plan.engine, make_streams(plan.seed)["init"])
    data = LoopData(x, y, x[:10], y[:10])
    return fit(engine, data, plan.loop, make_streams(plan.seed), callbacks=callbacks)


@pytest.fixture(scope="module")
def raw(real_data_dir):
    from fmnist_mlp.data import load_raw

    return load_raw(real_data_dir, progress=False)


@pytest.mark.realdata
@pytest.mark.parametrize("overrides", [
    ["data.subset=300", "train.batch_size=64"],                  # a partial last batch
    ["data.subset=256", "train.batch_size=64"],                  # none
    ["data.subset=301", "data.folds=3", "data.fold=1", "train.batch_size=50"],
    ["data.subset=40", "train.batch_size=128"],                  # one batch, smaller than asked
])
def test_the_steps_are_counted_once_from_the_facts_and_the_split_and_the_loop_agree(overrides,
                                                                                    raw):
    from fmnist_mlp.data import make_splits

    (plan,) = plan_from(None, [*TINY, "train.epochs=2", *overrides])
    # the split the data spec names has the rows the plan counted from the dataset's facts
    splits = make_splits(raw, **plan.data.splits)
    assert len(splits.train.y) == plan.data.train_rows
    # and the loop cuts exactly the plan's steps from it
    heard = Heard()
    x = np.ascontiguousarray(splits.train.x)
    state = _fit(plan, x, splits.train.y, [heard])
    batches = [args[0].num_batches for name, args in heard.calls if name == "on_epoch_start"]
    assert batches == [plan.steps_per_epoch] * 2
    assert state.step == plan.total_steps == sum(name == "on_batch" for name, _ in heard.calls)


def _endings():
    finite = (np.ones((64, 784), np.float32), np.arange(64) % 10)
    broken = (np.full((64, 784), np.inf, np.float32), np.arange(64) % 10)
    return {
        "finished": (finite, None, None),
        "interrupted": (finite, ("on_batch", KeyboardInterrupt()), TrainingInterrupted),
        "pruned": (finite, ("on_epoch_end", TrainingPruned("pruned at epoch 1")), TrainingPruned),
        "failed": (broken, None, TrainingDivergedError),     # a real NaN loss
    }


@pytest.mark.parametrize("ending", ["finished", "interrupted", "pruned", "failed"])
def test_the_loop_starts_and_ends_every_callback_once_with_one_event_however_it_stops(ending):
    (x, y), fail_at, raises = _endings()[ending]
    (plan,) = plan_from(None, [*TINY, "train.epochs=2", "train.batch_size=32"])
    quiet, failing = Heard(), Heard(fail_at)
    if raises is None:
        _fit(plan, x, y, [quiet, failing])
    else:
        with pytest.raises(raises):
            _fit(plan, x, y, [quiet, failing])
    for heard in (quiet, failing):
        names = [name for name, _ in heard.calls]
        assert names[0] == "on_train_start" and names.count("on_train_start") == 1
        assert names[-1] == "on_train_end" and names.count("on_train_end") == 1
        events = {id(args[0]) for _, args in heard.calls}
        assert all(len(args) == 1 for _, args in heard.calls) and len(events) == 1
        assert heard.calls[-1][1][0].status == ending


@pytest.mark.realdata
def test_the_config_is_serialised_once_into_the_runs_record(real_data_dir, tmp_path):
    import yaml

    from fmnist_mlp.config.plan import flatten
    from fmnist_mlp.rundir import layout
    from fmnist_mlp.rundir.files import load_checkpoint
    from fmnist_mlp.training.session import run_training

    cfg = load_config(None, [*TINY, "train.epochs=1", "data.subset=200", "seed=3"])
    plan = make_plan(cfg)
    record = plan.record
    assert yaml.safe_load(record.yaml) == record.config
    assert set(record.hparams) == set(flatten(record.config))
    assert record.hparams["model.hidden"] == "[2]" and record.hparams["seed"] == 3
    result = run_training(plan, name="record", runs_dir=tmp_path, data_dir=real_data_dir)
    assert (result.run_dir / layout.CONFIG).read_text(encoding="utf-8") == record.yaml
    for checkpoint in (layout.LAST, layout.BEST):
        meta = load_checkpoint(result.run_dir / checkpoint).meta
        assert meta["config"] == json.loads(json.dumps(record.config))


def test_the_finished_plan_is_checked_against_memory_by_its_own_estimate():
    """make_plan checks the plan it made, last, by the plan's own estimate (what --dry-run
    prints): the same number the config's check_fits gives, and a plan that cannot fit is one
    line naming the config, the widths and the batch size."""
    from fmnist_mlp.config.plan import check_fits
    from fmnist_mlp.errors import ConfigError

    cfg = load_config(None, [*TINY, "train.batch_size=32", "model.batchnorm=true"])
    plan = make_plan(cfg)
    assert plan.memory_bytes == check_fits(cfg) > 0
    wider = make_plan(load_config(None, [*TINY, "train.batch_size=32", "model.hidden=[64]"]))
    assert wider.memory_bytes > plan.memory_bytes            # the plan's own widths count
    big = load_config(None, ["model.hidden=[400000, 400000]", "train.batch_size=64"])
    with pytest.raises(ConfigError, match=r"^big\.yaml: model\.hidden=\[400000, 400000\], "
                                          r"train\.batch_size=64: needs about .* of memory"):
        make_plan(big, "big.yaml")
