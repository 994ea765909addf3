"""Distillation: softened teacher targets, the model's ``targets=`` loss, the config keys and a
student trained from a real teacher run through the CLI."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from fmnist_mlp.data.augment import make_augmenter, mirror
from fmnist_mlp.config.plan import Engine, make_streams
from fmnist_mlp.config.load import load_config
from fmnist_mlp.training.distill import ConsistentTeachers, mean_softened, mix_targets, soften
from fmnist_mlp.errors import ConfigError
from fmnist_mlp.nn import MLP
from fmnist_mlp.nn.losses import one_hot_targets, softmax
from fmnist_mlp.nn.optim import make_optimizer
from fmnist_mlp.training.loop import LoopData, LoopSettings, fit
from sweep_helpers import REPO, write_spec

ENV = {**os.environ, "OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
SMALL = ["--set", "data.subset=1000", "--set", "data.val_size=500", "--set", "model.hidden=[32]",
         "--set", "train.epochs=2", "--set", "train.batch_size=100"]


def test_softening_probabilities_equals_softening_logits():
    logits = np.random.default_rng(0).normal(size=(5, 10)) * 4.0
    for t in (0.5, 1.0, 3.0):
        np.testing.assert_allclose(soften(softmax(logits), t), softmax(logits / t), rtol=1e-10)


def test_high_temperature_flattens_and_rows_sum_to_one():
    probs = softmax(np.random.default_rng(1).normal(size=(4, 10)) * 5.0)
    hot = soften(probs, 100.0)
    assert np.abs(hot - 0.1).max() < 0.02
    np.testing.assert_allclose(hot.sum(axis=1), 1.0)


def test_teachers_are_averaged_and_mixed_with_the_labels():
    a = np.eye(10)[[0, 1]]
    b = np.eye(10)[[2, 1]]
    teachers = mean_softened([a, b], 1.0)
    np.testing.assert_allclose(teachers[0, [0, 2]], [0.5, 0.5])
    labels = np.eye(10)[[0, 1]]
    mixed = mix_targets(labels, teachers, 0.25, np.float32)
    assert mixed.dtype == np.float32
    np.testing.assert_allclose(mixed[0, [0, 2]], [0.875, 0.125])
    np.testing.assert_allclose(mixed.sum(axis=1), 1.0, rtol=1e-6)


def test_only_the_teachers_that_never_saw_a_row_score_it():
    a = np.array([[0.9, 0.1], [0.2, 0.8], [0.6, 0.4]])
    b = np.array([[0.5, 0.5], [0.4, 0.6], [0.3, 0.7]])
    unseen = [np.array([True, False, False]), np.array([False, True, False])]
    # Row 0: only a left it out; row 1: only b; row 2: both trained on it, so both score it.
    np.testing.assert_allclose(mean_softened([a, b], 1.0, unseen), [a[0], b[1], (a[2] + b[2]) / 2])
    # Both left row 0 out: their mean. Rows every teacher saw are the plain mean, bit for bit.
    both = [np.array([True, False, False])] * 2
    np.testing.assert_allclose(mean_softened([a, b], 1.0, both)[0], (a[0] + b[0]) / 2)
    none = [np.zeros(3, dtype=bool)] * 2
    assert np.array_equal(mean_softened([a, b], 2.0, none), mean_softened([a, b], 2.0))


def test_cross_fitted_teachers_each_leave_out_a_different_part(real_data_dir):
    from fmnist_mlp.config.plan import row_kwargs
    from fmnist_mlp.training.distill import unseen_rows as _unseen_rows

    student = row_kwargs(load_config(None, ["data.split_seed=0"]))
    teachers = [row_kwargs(load_config(None, ["data.split_seed=0", "data.folds=3",
                                              f"data.fold={f}", "seed=7"]))
                for f in range(3)]
    unseen = np.array(_unseen_rows(student, teachers, real_data_dir))
    assert unseen.shape == (3, 55_000)
    assert (unseen.sum(axis=0) == 1).all()          # each row left out by exactly one teacher
    assert unseen.sum(axis=1).tolist() == [18_333, 18_333, 18_334]
    # A teacher on another split never trained on the student's rows that are its validation.
    other = row_kwargs(load_config(None, ["data.split_seed=1"]))
    assert _unseen_rows(student, [other], real_data_dir)[0].sum() == pytest.approx(5_000 * 55 / 60, abs=50)


def _tiny(**kw):
    return MLP(input_size=6, hidden=[5], num_classes=4, dtype="float64", seed=3, **kw)


def test_one_hot_targets_give_the_labels_path_exactly():
    rng = np.random.default_rng(2)
    x, y = rng.normal(size=(7, 6)), rng.integers(0, 4, 7)
    model = _tiny(label_smoothing=0.1)
    loss, correct = model.loss_and_grad(x, y)
    grads = {k: v.copy() for k, v in model.grads.items()}
    target = one_hot_targets(y, 4, 0.1, np.float64)
    loss2, correct2 = model.loss_and_grad(x, y, targets=target)
    assert (loss, correct) == (loss2, correct2)
    for name, grad in grads.items():
        np.testing.assert_array_equal(grad, model.grads[name])


@pytest.mark.parametrize("batchnorm", [False, True])
def test_soft_target_gradient_matches_finite_differences(batchnorm):
    rng = np.random.default_rng(4)
    x, y = rng.normal(size=(6, 6)), rng.integers(0, 4, 6)
    target = softmax(rng.normal(size=(6, 4)))
    model = _tiny(batchnorm=batchnorm)
    model.loss_and_grad(x, y, targets=target)
    for name, param in model.params.items():
        analytic = model.grads[name].copy()
        numeric = np.zeros_like(param)
        for j in range(param.size):
            old = param.flat[j]
            param.flat[j] = old + 1e-6
            plus, _ = model.loss_and_grad(x, y, targets=target, backward=False)
            param.flat[j] = old - 1e-6
            minus, _ = model.loss_and_grad(x, y, targets=target, backward=False)
            param.flat[j] = old
            numeric.flat[j] = (plus - minus) / 2e-6
        scale = np.abs(analytic).max() + np.abs(numeric).max()
        assert np.abs(analytic - numeric).max() / max(1e-8, scale) < 1e-6, name


def test_targets_of_the_wrong_shape_are_refused():
    model = _tiny()
    with pytest.raises(ValueError, match="targets"):
        model.loss_and_grad(np.zeros((3, 6)), np.zeros(3, int), targets=np.full((3, 5), 0.2))


def test_consistent_teachers_mix_the_labels_with_each_teachers_view_of_the_batch():
    rng = np.random.default_rng(8)
    x, labels = rng.normal(size=(5, 6)), one_hot_targets(rng.integers(0, 4, 5), 4, 0.1, np.float64)
    a, b = _tiny(), MLP(input_size=6, hidden=[3], num_classes=4, dtype="float64", seed=9)
    teachers = ConsistentTeachers([a, b], [(1.0, 0.0), (2.0, -0.5)], weight=0.6, temperature=2.0)
    expected = 0.4 * labels + 0.6 * 0.5 * (soften(a.forward(x), 2.0)
                                           + soften(b.forward(2.0 * x - 0.5), 2.0))
    np.testing.assert_allclose(teachers(x, labels), expected, rtol=1e-12)


def test_consistent_teachers_score_the_augmented_batch_the_student_learns_from():
    """fit hands the teacher each batch after augmentation: with alternating flips the views are
    known exactly (epoch 0 mirrors the even rows), and the teacher must have seen just those."""
    rng = np.random.default_rng(5)
    x, y = rng.normal(size=(8, 784)), rng.integers(0, 10, 8)
    teacher = MLP(input_size=784, hidden=[5], num_classes=10, dtype="float64", seed=1)
    consistent = ConsistentTeachers([teacher], [(1.0, 0.0)], weight=0.5, temperature=1.0)
    seen = []

    def watched(batch, labels):
        seen.append(batch.copy())
        return consistent(batch, labels)

    student = MLP(input_size=784, hidden=[4], num_classes=10, dtype="float64", seed=2)
    fit(Engine(student, make_optimizer("sgd", student.params, lr=0.01), lambda step: 0.01),
        LoopData(x, y, x[:2], y[:2], teacher=watched,
                 augment=make_augmenter(flip=True, alternate_flip=True)),
        LoopSettings(epochs=1, batch_size=8), make_streams(0))
    views = np.where((np.arange(8) % 2 == 0)[:, None], mirror(x), x)
    assert len(seen) == 1
    assert sorted(r.tobytes() for r in seen[0]) == sorted(r.tobytes() for r in views)


def test_consistent_needs_teachers():
    with pytest.raises(ConfigError, match="distill.consistent: needs distill.teachers"):
        load_config(None, ["distill.consistent=true"])


def test_distill_config_keys():
    cfg = load_config(None, ["distill.teachers=[runs/a, runs/b]", "distill.weight=0.7",
                             "distill.temperature=2"])
    assert cfg.distill.teachers == ("runs/a", "runs/b")
    assert (cfg.distill.weight, cfg.distill.temperature) == (0.7, 2.0)
    assert load_config(None).distill.teachers == ()


@pytest.mark.parametrize("override, fragment", [
    ("distill.teachers=[1]", "distill.teachers[0]"),
    ("distill.teachers={a: 1}", "distill.teachers: expected a list of strings"),
    ("distill.weight=1.5", "distill.weight"),
    ("distill.temperature=0", "distill.temperature"),
])
def test_bad_distill_values_name_the_key(override, fragment):
    with pytest.raises(ConfigError, match=fragment.replace("[", r"\[").replace("]", r"\]")):
        load_config(None, [override])


def test_distillation_needs_cross_entropy():
    with pytest.raises(ConfigError, match="distill.teachers"):
        load_config(None, ["distill.teachers=[x]", "loss.name=squared_error",
                           "model.output=sigmoid"])


def _fmnist(*args, cwd):
    return subprocess.run([sys.executable, "-m", "fmnist_mlp", *map(str, args)], cwd=cwd, env=ENV,
                          capture_output=True, text=True, timeout=120)


@pytest.mark.slow
def test_student_trains_from_a_real_teacher_and_a_missing_teacher_is_one_line(
        real_data_dir, tmp_path):
    teacher = _fmnist("train", *SMALL, "--name", "teacher", "--set", "data.augment.test_flip=true",
                      "--data-dir", real_data_dir, cwd=tmp_path)
    assert teacher.returncode == 0, teacher.stderr
    teacher_dir = teacher.stdout.strip().splitlines()[-1]
    # A different seed: the student's split and normalisation differ from the teacher's.
    student = _fmnist("train", *SMALL, "--name", "student", "--set", "seed=1",
                      "--set", f"distill.teachers=[{teacher_dir}]", "--set", "distill.weight=0.5",
                      "--set", "distill.temperature=2", "--data-dir", real_data_dir, "--json",
                      cwd=tmp_path)
    assert student.returncode == 0, student.stderr
    summary = json.loads(student.stdout)
    assert summary["status"] == "finished" and summary["test_acc"] > 0.5
    # Function matching: the teacher scores every flipped, mixed batch as the student sees it.
    matched = _fmnist("train", *SMALL, "--name", "matched", "--set", "seed=1",
                      "--set", f"distill.teachers=[{teacher_dir}]", "--set", "distill.consistent=true",
                      "--set", "data.augment.flip=true", "--set", "data.augment.mixup=0.4",
                      "--data-dir", real_data_dir, "--json", cwd=tmp_path)
    assert matched.returncode == 0, matched.stderr
    matched_summary = json.loads(matched.stdout)
    assert matched_summary["status"] == "finished" and matched_summary["test_acc"] > 0.5
    [matched_dir] = (tmp_path / "runs").glob("*-matched-*")
    matched_cfg = load_config(matched_dir / "config.yaml")
    assert matched_cfg.distill.consistent and matched_cfg.data.augment.mixup == 0.4

    before = sorted(p.name for p in (tmp_path / "runs").iterdir())
    missing = _fmnist("train", *SMALL, "--name", "orphan", "--set",
                      f"distill.teachers=[{tmp_path / 'no-such-run'}]",
                      "--data-dir", real_data_dir, cwd=tmp_path)
    assert missing.returncode == 1
    assert "no-such-run" in missing.stderr and "Traceback" not in missing.stderr
    assert len(missing.stderr.strip().splitlines()) == 1
    assert sorted(p.name for p in (tmp_path / "runs").iterdir()) == before


@pytest.mark.slow
def test_a_student_of_cross_fitted_teachers_trains_and_function_matching_refuses_them(
        real_data_dir, tmp_path):
    folds = []
    for fold in (0, 1):
        run = _fmnist("train", *SMALL, "--name", f"fold{fold}", "--set", "data.folds=2",
                      "--set", f"data.fold={fold}", "--data-dir", real_data_dir, cwd=tmp_path)
        assert run.returncode == 0, run.stderr
        folds.append(run.stdout.strip().splitlines()[-1])
    teachers = f"distill.teachers=[{','.join(folds)}]"
    student = _fmnist("train", *SMALL, "--name", "student", "--set", teachers,
                      "--data-dir", real_data_dir, "--json", cwd=tmp_path)
    assert student.returncode == 0, student.stderr
    assert json.loads(student.stdout)["status"] == "finished"
    matched = _fmnist("train", *SMALL, "--name", "matched", "--set", teachers,
                      "--set", "distill.consistent=true", "--data-dir", real_data_dir, cwd=tmp_path)
    assert matched.returncode != 0 and "Traceback" not in matched.stderr
    assert "data.fold" in matched.stderr and len(matched.stderr.strip().splitlines()) == 1


@pytest.mark.slow
def test_distill_script_trains_teachers_by_sweep_then_the_student(real_data_dir, tmp_path):
    """scripts/distill.sh end to end on a tiny sweep: every finished trial teaches the student,
    and a relative -r is resolved against the caller's directory, not the repository."""
    spec = write_spec(tmp_path / "teachers.yaml", method="grid", trials=2,
                      space={"model.dropout": {"choice": [0.0, 0.2]}})
    env = {**ENV, "PYTHONPATH": str(REPO), "FMNIST_MLP_DATA_DIR": real_data_dir,
           "PATH": f"{os.path.dirname(sys.executable)}{os.pathsep}{os.environ['PATH']}"}
    proc = subprocess.run(["bash", str(REPO / "scripts" / "distill.sh"), "-r", "out", "-s", spec.name,
                           "-j", "1", "--", *SMALL, "--set", "distill.weight=0.6"],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    student = proc.stdout.strip().splitlines()[-1]
    assert student.startswith(str(tmp_path / "out"))
    summary = json.loads(open(os.path.join(student, "summary.json")).read())
    assert summary["status"] == "finished"
    teachers = load_config(os.path.join(student, "config.yaml")).distill.teachers
    trials = sorted(str(p) for p in (tmp_path / "out" / "teachers" / "runs").iterdir())
    assert sorted(teachers) == trials and len(trials) == 2

    bad = subprocess.run(["bash", str(REPO / "scripts" / "distill.sh"), "--bogus"], cwd=tmp_path,
                         env=env, capture_output=True, text=True, timeout=30)
    assert bad.returncode == 2 and "--bogus" in bad.stderr


@pytest.mark.slow
@pytest.mark.parametrize("shape, fragment", [
    ({"input_size": 100, "num_classes": 10}, "cannot score Fashion-MNIST images"),
    ({"input_size": 784, "num_classes": 5}, "scores 5 classes, not the dataset's 10"),
])
def test_a_teacher_of_another_shape_is_refused_in_one_line(real_data_dir, tmp_path, shape,
                                                            fragment):
    # No command of this tool makes such a teacher: the checkpoint is written by hand, with a
    # valid config beside the foreign shape, as another program (or a hand edit) could.
    from fmnist_mlp.config.load import config_to_dict
    from fmnist_mlp.rundir.files import Checkpoint, save_checkpoint

    foreign = MLP(hidden=[8], seed=0, **shape)
    config = config_to_dict(load_config(None, ["data.normalize=scale", "model.hidden=[8]"]))
    teacher = tmp_path / "foreign.npz"
    save_checkpoint(teacher, Checkpoint(foreign.state_dict(), {}, {},
                                        {"config": config, "model_spec": foreign.spec()}))
    student = _fmnist("train", *SMALL, "--name", "student", "--set",
                      f"distill.teachers=[{teacher}]", "--data-dir", real_data_dir, cwd=tmp_path)
    assert student.returncode != 0
    assert student.stderr.count("\n") == 1 and "Traceback" not in student.stderr
    assert str(teacher) in student.stderr and fragment in student.stderr
    assert not (tmp_path / "runs").exists() or not any((tmp_path / "runs").iterdir())
