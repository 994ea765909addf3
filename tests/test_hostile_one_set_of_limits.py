"""Issue 31, one set of limits: each bound a reader enforces is checked when the config or spec is
validated, so nothing is trained or created that the tool would later refuse; grid sizes are
counted before anything is created; the memory estimate covers the whole run's peak, checkpoint
writes included; settings that silently do something else (min_lr above lr, a mixup α of 1e308,
a YAML key given twice, a trial number past bash's arithmetic) are refused."""

from __future__ import annotations

import os
import shutil
import subprocess

import pytest

from fmnist_mlp.config.validate import config_from_dict
from round3_helpers import ENV, GiB, REPO, TINY, fmnist, limited, one_line
from sweep_helpers import write_spec


def _deep(layers: int) -> list[str]:
    return ["--set", "model.hidden=[" + ",".join(["1"] * layers) + "]"]


# ------------------------------------------------------------------------- model files


def test_a_net_deeper_than_its_checkpoint_can_hold_is_refused_before_training(tmp_path):
    # Cause 5: 1,700 one-unit layers trained, then the model-file reader (10,000 arrays at
    # most) refused the run's own checkpoint.
    proc = fmnist("train", *TINY, *_deep(1700), "--runs-dir", tmp_path / "runs")
    assert proc.returncode == 2
    line = one_line(proc)
    assert "model.hidden: 1700 hidden layers, at most 1656" in line
    assert not (tmp_path / "runs").exists()


def test_the_deepest_net_the_config_accepts_is_trained_and_read_back(real_data_dir, tmp_path):
    from fmnist_mlp.config.validate import max_hidden_layers

    most = max_hidden_layers(config_from_dict({}))
    proc = fmnist("train", *TINY, *_deep(most), "--data-dir", real_data_dir, "--runs-dir",
                  tmp_path / "runs", "-q")
    assert proc.returncode == 0, proc.stderr
    proc = fmnist("eval", proc.stdout.strip(), "--data-dir", real_data_dir, "--json")
    assert proc.returncode == 0, proc.stderr


@pytest.mark.parametrize("settings, per_layer", [
    ({}, 2 * 3),                                              # W, b; Adam's m and v of each
    ({"optimizer": {"name": "sgd"}}, 2),
    ({"model": {"batchnorm": True}}, 5 * 3),                  # W, γ, β, two running statistics
    ({"optimizer": {"name": "momentum"}, "model": {"batchnorm": True}}, 5 * 2)])
def test_the_depth_limit_follows_the_arrays_each_layer_stores(settings, per_layer):
    from fmnist_mlp.errors import ConfigError
    from fmnist_mlp.config.validate import max_hidden_layers
    from fmnist_mlp.io.model_file import MAX_NPZ_MEMBERS

    most = max_hidden_layers(config_from_dict(settings))
    assert most * per_layer <= MAX_NPZ_MEMBERS - 64 < (most + 1) * per_layer
    config_from_dict({**settings, "model": {**settings.get("model", {}), "hidden": [1] * most}})
    with pytest.raises(ConfigError, match="hidden layers, at most"):
        config_from_dict({**settings, "model": {**settings.get("model", {}),
                                                "hidden": [1] * (most + 1)}})


# ------------------------------------------------------------------------- memory


@pytest.mark.slow
def test_a_net_whose_checkpoint_write_would_not_fit_is_refused_before_training(real_data_dir,
                                                                               tmp_path):
    # Cause 6: the estimate left out the checkpoint write's copies. Under a 1.9 GB address
    # space a 47M-parameter net "fitted", trained its epoch, then died writing its checkpoint
    # (a MemoryError traceback, then "ValueError: I/O operation on closed file"), marked
    # failed with no checkpoint.
    runs = tmp_path / "runs"
    proc = subprocess.run(
        [os.sys.executable, "-m", "fmnist_mlp", "train", "--set", "model.hidden=[60000]",
         "--set", "train.batch_size=10", "--set", "train.eval_batch_size=100",
         "--set", "data.subset=100", "--set", "data.val_size=100", "--set", "train.epochs=1",
         "--data-dir", str(real_data_dir), "--runs-dir", str(runs), "-q"],
        env=ENV, capture_output=True, text=True, timeout=300,
        preexec_fn=limited(int(1.9 * GiB)))
    assert proc.returncode == 2, proc.stderr
    line = one_line(proc)
    assert "needs about" in line and "of memory (estimated)" in line
    assert not runs.exists()


def test_the_estimate_counts_a_checkpoint_writes_copies():
    from fmnist_mlp.nn import memory

    args = (784, [100], 10, 1, 1, 4)
    params = memory.parameter_count(784, [100], 10)
    with_copies = memory.training_bytes(*args, data_rows=0)
    assert with_copies - params * memory.arrays_per_parameter() * 4 >= \
        params * 4 * (2 + 3 * 3)      # Adam's state copied, the serialised checkpoint thrice


# ------------------------------------------------------------------------- sweeps


def test_a_grid_too_large_to_build_is_refused_before_anything_is_created(tmp_path):
    # Cause 7: 40^8 points went to Optuna's grid sampler, which built all of it (24 GB, killed
    # by the kernel), after sweep.json and the journal were created. Run under a 2 GB address
    # space, so that a tree that still builds it fails fast instead of eating the machine.
    space = {f"optimizer.{key}": {"choice": [round(0.01 * (i + 1), 3) for i in range(40)]}
             for key in ("lr", "weight_decay", "beta1", "momentum", "eps", "rho", "beta2")}
    space["train.batch_size"] = {"choice": list(range(1, 41))}
    spec = write_spec(tmp_path / "grid.yaml", method="grid", space=space)
    spec.write_text(spec.read_text().replace("trials: 4\n", ""))
    sweep_dir = tmp_path / "sweep"
    proc = subprocess.run([os.sys.executable, "-m", "fmnist_mlp", "sweep", "run", str(spec),
                           "--dir", str(sweep_dir)], env=ENV, capture_output=True, text=True,
                          timeout=300, preexec_fn=limited(2 * GiB))
    assert proc.returncode == 2, proc.stderr
    assert "40 x 40 x 40 x 40 x 40 x 40 x 40 x 40 = 6553600000000 points" in one_line(proc)
    assert not sweep_dir.exists()


@pytest.mark.parametrize("number", ["18446744073709551617", "9223372036854775808",
                                    "1000000000"])
def test_sweep_sh_refuses_a_trial_number_past_bash_arithmetic(real_data_dir, tmp_path, number):
    # Cause 14: -i was checked by a pattern, then overflowed: -i 18446744073709551617 ran trial 1.
    runs = tmp_path / "runs"
    if shutil.which("fmnist-mlp", path=ENV["PATH"]) is None:
        pytest.skip("needs the fmnist-mlp console script on PATH")
    proc = subprocess.run(["bash", str(REPO / "scripts" / "sweep.sh"), "-i", number, "-r",
                           str(runs), "-d", str(real_data_dir), "optimizer.lr=1e-3,3e-3", "--",
                           *TINY], env=ENV, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert "-i" in one_line(proc) and number in proc.stderr
    assert not runs.exists() or not any(runs.iterdir())


# ------------------------------------------------------------------------- settings


@pytest.mark.parametrize("setting, message", [
    (["--set", "schedule.min_lr=0.01"], "schedule.min_lr: 0.01 is above optimizer.lr (0.001)"),
    (["--set", "schedule.name=cosine", "--set", "schedule.min_lr=1"], "is above optimizer.lr"),
    (["--set", "data.augment.mixup=1e308"], "data.augment.mixup: must be <= 100"),
    (["--set", "data.augment.mixup=101"], "data.augment.mixup: must be <= 100"),
])
def test_settings_that_silently_do_something_else_are_refused(tmp_path, setting, message):
    # Cause 12: min_lr above lr trained at ~1000x the configured rate; a mixup α of 1e308 mixed
    # nothing at all.
    proc = fmnist("train", *TINY, *setting, "--runs-dir", tmp_path / "runs")
    assert proc.returncode == 2
    assert message in one_line(proc)
    assert not (tmp_path / "runs").exists()


def test_a_config_with_a_key_given_twice_is_refused(tmp_path):
    # Cause 13: `seed: 1` then `seed: 2` was accepted, the last winning (JSON refuses it).
    config = tmp_path / "twice.yaml"
    config.write_text("seed: 1\ntrain:\n  epochs: 1\nseed: 2\n")
    proc = fmnist("train", "--config", config, "--runs-dir", tmp_path / "runs")
    assert proc.returncode == 2
    assert one_line(proc) == (f"error: {config}: invalid YAML at line 4: key 'seed' appears "
                              f"twice in one mapping (which one was meant?)")
    nested = tmp_path / "nested.yaml"
    nested.write_text("optimizer: {lr: 0.1, name: sgd, lr: 0.2}\n")
    assert "key 'lr' appears twice" in one_line(fmnist("train", "--config", nested))
    assert not (tmp_path / "runs").exists()
