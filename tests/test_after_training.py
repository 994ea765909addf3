"""After training, end to end through the CLI: predict on PNG files, export to ONNX and
safetensors, ensembles, TensorBoard event files; real Pillow, ONNX Runtime and TensorBoard."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from conftest import need
from training_helpers import InterruptAt

pytestmark = [pytest.mark.realdata, pytest.mark.slow]   # trains three small runs

SMALL = ["--set", "data.subset=1000", "--set", "data.val_size=500", "--set", "train.epochs=2",
         "--set", "train.batch_size=100"]
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
NUM_PNG = 200


def fmnist(*args, cwd, timeout=120) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "fmnist_mlp", *map(str, args)], cwd=cwd,
                          env=ENV, capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope="module")
def work(real_data_dir, tmp_path_factory):
    """Two small finished runs: A with batch norm and test-time flips, B plain tanh (another
    seed, so their validation rows differ)."""
    work = tmp_path_factory.mktemp("after")
    made = {}
    for name, extra in (("a", ["--set", "model.hidden=[32]", "--set", "model.batchnorm=true",
                               "--set", "data.augment.test_flip=true"]),
                        ("b", ["--set", "model.hidden=[24]", "--set", "model.activation=tanh",
                               "--set", "seed=1"])):
        proc = fmnist("train", "--config", Path(__file__).parents[1] / "configs/default.yaml",
                      *SMALL, *extra, "--name", name, "--data-dir", real_data_dir, "--json",
                      cwd=work)
        assert proc.returncode == 0, proc.stderr
        made[name] = work / json.loads(proc.stdout)["run_dir"]
    return work, made["a"], made["b"], real_data_dir


def engine_outputs(run, rows=slice(None), data_dir=None):
    """What eval scores, straight from the engine: (outputs, labels) on the test split."""
    from fmnist_mlp.config.plan import load_splits as load_splits_for
    from fmnist_mlp.rundir.trained import load_model

    model, config = load_model(run)
    test = load_splits_for(config, data_dir).test
    return model.forward(test.x[rows]), test.y[rows]


@pytest.fixture(scope="module")
def test_pngs(work):
    need("PIL")
    from PIL import Image

    from fmnist_mlp.data import load_raw

    folder = work[0] / "test-pngs"
    folder.mkdir()
    raw = load_raw(work[3], progress=False)
    for i in range(NUM_PNG):
        Image.fromarray(raw.test_images[i]).save(folder / f"test-{i:04d}.png")
    return folder


def test_test_images_saved_as_png_predict_exactly_as_eval_scores_them(work, test_pngs, tmp_path):
    from fmnist_mlp.config.plan import load_splits as load_splits_for
    from fmnist_mlp.rundir.trained import load_model
    from fmnist_mlp.predict.run import load_pixels
    from fmnist_mlp.rundir.trained import load_trained

    root, run_a, _, data_dir = work
    # The network's inputs from the PNG files are bit-identical to eval's test rows...
    _, images, failures = load_pixels([test_pngs])
    _, config = load_model(run_a)
    test = load_splits_for(config, data_dir).test
    assert not failures
    np.testing.assert_array_equal(load_trained(run_a).inputs(images.reshape(NUM_PNG, -1)),
                                  test.x[:NUM_PNG])
    # ...so predict's probabilities equal the engine's on those rows bit for bit (same batch, same
    # BLAS threads: a matrix product's summation order depends on both)...
    proc = fmnist("predict", run_a, test_pngs, "--json", "--top", "3", cwd=root)
    assert proc.returncode == 0, proc.stderr
    rows = json.loads(proc.stdout)["predictions"]
    assert [Path(r["file"]).name for r in rows] == [f"test-{i:04d}.png" for i in range(NUM_PNG)]
    probabilities = np.array([r["probabilities"] for r in rows], dtype=np.float32)
    script = ("import sys, numpy as np; from fmnist_mlp.rundir.trained import load_model; "
              "from fmnist_mlp.config.plan import load_splits; m, c = load_model(sys.argv[1]); "
              "x = load_splits(c, sys.argv[2]).test.x[:int(sys.argv[3])]; "
              "np.save(sys.argv[4], m.forward(x))")
    subprocess.run([sys.executable, "-c", script, run_a, data_dir, str(NUM_PNG),
                    tmp_path / "engine.npy"], env=ENV, check=True, timeout=60)
    np.testing.assert_array_equal(probabilities, np.load(tmp_path / "engine.npy"))
    # ...and the labels are eval's, from its full-split pass.
    evaluated = json.loads(fmnist("eval", run_a, "--json", "--data-dir", data_dir, cwd=root).stdout)
    model, _ = load_model(run_a)
    full = model.forward(test.x)[:NUM_PNG]
    assert [r["label"] for r in rows] == full.argmax(axis=1).tolist()
    assert np.abs(probabilities - full).max() < 1e-6
    cm = np.zeros((10, 10), int)
    np.add.at(cm, (test.y, model.predict(test.x)), 1)
    assert cm.tolist() == evaluated["confusion_matrix"]
    top = rows[0]["top"]
    assert len(top) == 3 and top[0]["probability"] >= top[1]["probability"] >= top[2]["probability"]
    assert top[0]["class_name"] == rows[0]["class_name"]


def test_a_bad_file_is_one_line_and_the_rest_are_predicted(work, test_pngs, tmp_path):
    root, run_a, _, _ = work
    (tmp_path / "a-notes.png").write_text("not an image")
    for i in (0, 1):
        (tmp_path / f"b-{i}.png").write_bytes((test_pngs / f"test-{i:04d}.png").read_bytes())
    saved = tmp_path / "seen"
    proc = fmnist("predict", run_a, tmp_path, "--save-preprocessed", saved, cwd=root)
    assert proc.returncode == 1
    assert proc.stderr.strip().count("\n") == 0 and "a-notes.png" in proc.stderr
    assert "Traceback" not in proc.stderr
    lines = proc.stdout.strip().splitlines()
    assert len(lines) == 2 and lines[0].startswith(str(tmp_path / "b-0.png"))
    assert sorted(p.name for p in saved.iterdir()) == ["b-0.png", "b-1.png"]
    from PIL import Image

    seen = np.asarray(Image.open(saved / "b-0.png"))
    np.testing.assert_array_equal(seen, np.asarray(Image.open(test_pngs / "test-0000.png")))


def test_a_photo_is_preprocessed_and_predicted(work, tmp_path):
    need("PIL")
    from PIL import Image

    root, run_a, _, _ = work
    photo = np.full((300, 240, 3), 235, np.uint8)                  # a trouser-ish dark shape
    photo[30:270, 80:115] = photo[30:270, 125:160] = 30
    photo[30:60, 80:160] = 30
    Image.fromarray(photo).save(tmp_path / "photo.jpg", quality=90)
    proc = fmnist("predict", run_a, tmp_path / "photo.jpg", "--json",
                  "--save-preprocessed", tmp_path / "seen", cwd=root)
    assert proc.returncode == 0, proc.stderr
    seen = np.asarray(Image.open(tmp_path / "seen" / "photo.png"))
    assert seen.shape == (28, 28) and seen[:, :3].max() < 40 and seen[5:20, 10:18].mean() > 150
    probs = json.loads(proc.stdout)["predictions"][0]["probabilities"]
    assert len(probs) == 10 and sum(probs) == pytest.approx(1.0, abs=1e-5)


def test_onnx_runtime_scores_like_eval(work, tmp_path):
    need("onnx", "onnxruntime")
    import onnxruntime as ort

    from fmnist_mlp.data import load_raw

    root, run_a, _, data_dir = work
    proc = fmnist("export", run_a, "--format", "onnx", "-o", tmp_path / "a.onnx", cwd=root)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == str(tmp_path / "a.onnx")
    rows = slice(0, 2000)
    session = ort.InferenceSession(str(tmp_path / "a.onnx"), providers=["CPUExecutionProvider"])
    pixels = load_raw(data_dir, progress=False).test_images.reshape(-1, 784)[rows]
    _, probabilities = session.run(None, {"pixels": pixels.astype(np.float32)})
    expected, labels = engine_outputs(run_a, rows, data_dir)
    assert np.abs(probabilities - expected).max() < 1e-5
    assert np.mean(probabilities.argmax(1) == labels) == np.mean(expected.argmax(1) == labels)
    again = fmnist("export", run_a, "--format", "onnx", "-o", tmp_path / "a.onnx", cwd=root)
    assert again.returncode == 2 and "already exists" in again.stderr
    # Without -o the default file is refused by its name, and -o is only offered, not blamed.
    first = fmnist("export", run_a, "--format", "onnx", cwd=root)
    default = Path(first.stdout.strip())
    try:
        second = fmnist("export", run_a, "--format", "onnx", cwd=root)
        assert second.returncode == 2 and second.stderr.count("\n") == 1
        assert second.stderr.startswith(f"error: {default}: already exists")
        assert "-o PATH" in second.stderr and f"-o {default}" not in second.stderr
    finally:
        default.unlink()


def test_safetensors_is_a_model_for_eval_predict_and_export(work, test_pngs, tmp_path):
    need("safetensors")
    root, run_a, _, data_dir = work
    path = tmp_path / "a.safetensors"
    assert fmnist("export", run_a, "--format", "safetensors", "-o", path, cwd=root).returncode == 0
    assert b"pickle" not in path.read_bytes()[:4096]
    from_run = json.loads(fmnist("eval", run_a, "--json", "--data-dir", data_dir, cwd=root).stdout)
    from_file = json.loads(fmnist("eval", path, "--json", "--data-dir", data_dir, cwd=root).stdout)
    for key in ("loss", "accuracy", "confusion_matrix", "macro_f1", "ece"):
        assert from_file[key] == from_run[key], key
    one = test_pngs / "test-0003.png"
    a = json.loads(fmnist("predict", run_a, one, "--json", cwd=root).stdout)["predictions"]
    b = json.loads(fmnist("predict", path, one, "--json", cwd=root).stdout)["predictions"]
    assert a[0]["probabilities"] == b[0]["probabilities"]
    need("onnx", "onnxruntime")
    import onnxruntime as ort

    onnx_path = tmp_path / "from-safetensors.onnx"
    proc = fmnist("export", path, "--format", "onnx", "-o", onnx_path, cwd=root)
    assert proc.returncode == 0, proc.stderr
    from PIL import Image

    pixels = np.asarray(Image.open(one), np.float32).reshape(1, 784)
    session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    np.testing.assert_allclose(session.run(["probabilities"], {"pixels": pixels})[0][0],
                               a[0]["probabilities"], atol=1e-6)


def test_an_ensemble_scores_the_mean_of_its_runs(work, tmp_path, test_pngs):
    root, run_a, run_b, data_dir = work
    proc = fmnist("eval", run_a, run_b, "--json", "--data-dir", data_dir, cwd=root)
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout)
    out_a, labels = engine_outputs(run_a, data_dir=data_dir)
    out_b, _ = engine_outputs(run_b, data_dir=data_dir)
    by_hand = (out_a + out_b) / 2
    assert result["accuracy"] == float(np.mean(by_hand.argmax(1) == labels))
    assert result["loss"] == pytest.approx(float(-np.log(by_hand[np.arange(10000), labels]).mean()),
                                           rel=1e-6)
    # predict with -m averages the same way, on the same images as PNG files
    one = test_pngs / "test-0007.png"
    rows = json.loads(fmnist("predict", run_a, one, "-m", run_b, "--json", cwd=root).stdout)
    np.testing.assert_allclose(rows["predictions"][0]["probabilities"], by_hand[7], rtol=1e-6)
    # different seeds mean different validation rows: refused in one line, exit 2
    val = fmnist("eval", run_a, run_b, "--split", "val", "--data-dir", data_dir, cwd=root)
    assert val.returncode == 2 and "seed" in val.stderr and val.stderr.count("\n") == 1
    # Runs on the same rows are scored on them: a run with itself is the run, on any split.
    for split in ("val", "train"):
        alone = fmnist("eval", run_a, "--split", split, "--json", "--data-dir", data_dir, cwd=root)
        twice = fmnist("eval", run_a, run_a, "--split", split, "--json", "--data-dir", data_dir,
                       cwd=root)
        assert alone.returncode == 0 and twice.returncode == 0, alone.stderr + twice.stderr
        alone, twice = json.loads(alone.stdout), json.loads(twice.stdout)
        assert twice["confusion_matrix"] == alone["confusion_matrix"], split
        assert twice["accuracy"] == alone["accuracy"]
        assert twice["loss"] == pytest.approx(alone["loss"], rel=1e-5)


def test_the_onnx_ensemble_equals_the_engine_ensemble(work, tmp_path):
    need("onnx", "onnxruntime")
    import onnxruntime as ort

    from fmnist_mlp.data import load_raw

    root, run_a, run_b, data_dir = work
    path = tmp_path / "ab.onnx"
    proc = fmnist("export", run_a, run_b, "--format", "onnx", "-o", path, cwd=root)
    assert proc.returncode == 0, proc.stderr
    rows = slice(0, 2000)
    pixels = load_raw(data_dir, progress=False).test_images.reshape(-1, 784)[rows]
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    logits, probabilities = session.run(None, {"pixels": pixels.astype(np.float32)})
    out_a, labels = engine_outputs(run_a, rows, data_dir)
    out_b, _ = engine_outputs(run_b, rows, data_dir)
    assert np.abs(probabilities - (out_a + out_b) / 2).max() < 1e-5
    np.testing.assert_allclose(np.exp(logits), probabilities, rtol=1e-5, atol=1e-7)
    refused = fmnist("export", run_a, run_b, "--format", "safetensors", "-o", tmp_path / "x",
                     cwd=root)
    assert refused.returncode == 2 and not (tmp_path / "x").exists()


def test_tensorboard_event_files_read_back(work, tmp_path):
    need("tensorboardX", "tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from fmnist_mlp.rundir import files as runs

    root, _, _, data_dir = work
    proc = fmnist("train", "--config", Path(__file__).parents[1] / "configs/default.yaml", *SMALL,
                  "--set", "model.hidden=[16]", "--tensorboard", "--name", "tb", "--runs-dir",
                  tmp_path, "--data-dir", data_dir, "--json", cwd=root)
    assert proc.returncode == 0, proc.stderr
    run_dir = root / json.loads(proc.stdout)["run_dir"]
    events = EventAccumulator(str(run_dir), size_guidance={"scalars": 0, "histograms": 0,
                                                           "images": 0, "tensors": 0})
    events.Reload()
    metrics = runs.read_metrics(run_dir)
    val_acc = [(e.step, e.value) for e in events.Scalars("accuracy/val")]
    assert val_acc == [(m["epoch"], pytest.approx(m["val_acc"])) for m in metrics]
    for tag in ("loss/train", "loss/val", "accuracy/train", "lr", "samples_per_sec"):
        assert len(events.Scalars(tag)) == 2, tag
    tags = events.Tags()
    assert {"weights/layer0.W", "gradient_norm/layer0.W", "gradient_norm/layer1.W"} <= set(
        tags["histograms"])
    norms = events.Histograms("gradient_norm/layer0.W")
    assert [h.step for h in norms] == [1, 2] and norms[0].histogram_value.num == 10   # batches
    image = events.Images("weights/layer0")[0]
    assert image.width == 4 * 29 - 1 and image.height == 4 * 29 - 1               # 16 maps, 4x4
    summary = json.loads((run_dir / "summary.json").read_text())
    assert events.Scalars("hparams/test_acc")[0].value == pytest.approx(summary["test_acc"])
    assert "_hparams_/session_start_info" in events.PluginTagToContent("hparams")


def blocked(module: str, argv: list[str], cwd) -> subprocess.CompletedProcess:
    """Run the CLI in a process where importing ``module`` fails, as if it were not installed."""
    code = (f"import sys; sys.modules[{module!r}] = None; from fmnist_mlp.cli import main; "
            f"main({[str(a) for a in argv]!r})")
    return subprocess.run([sys.executable, "-c", code], cwd=cwd, env=ENV, capture_output=True,
                          text=True, timeout=60)


def test_missing_extras_are_one_line_with_the_install_command(work, test_pngs, tmp_path):
    root, run_a, _, data_dir = work
    proc = blocked("PIL", ["predict", run_a, test_pngs], root)
    assert proc.returncode == 2 and proc.stderr.strip() == (
        "error: install pillow: pip install -e '.[image]'")
    proc = blocked("onnx", ["export", run_a, "--format", "onnx", "-o", tmp_path / "m.onnx"], root)
    assert proc.returncode == 2 and "pip install -e '.[export]'" in proc.stderr
    proc = blocked("tensorboardX", ["train", "--set", "train.epochs=1", "--tensorboard",
                                    "--runs-dir", tmp_path / "runs", "--data-dir", data_dir], root)
    assert proc.returncode == 2 and "pip install -e '.[tensorboard]'" in proc.stderr
    assert not (tmp_path / "runs").exists()                       # nothing created


def test_a_resumed_run_continues_its_tensorboard_curves(work, tmp_path):
    need("tensorboardX", "tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from fmnist_mlp.rundir import files as runs
    from fmnist_mlp.config.load import load_config
    from fmnist_mlp.training.session import run_training
    from fmnist_mlp.training.loop import TrainingInterrupted

    data_dir = work[3]
    cfg = load_config(None, ["data.subset=600", "data.val_size=300", "model.hidden=[8]",
                             "train.epochs=4", "train.batch_size=100", "train.tensorboard=true"])
    with pytest.raises(TrainingInterrupted):
        run_training(cfg, name="tb", runs_dir=tmp_path, data_dir=data_dir,
                     callbacks=[InterruptAt(epoch=3, batch=2)])
    (run_dir,) = tmp_path.glob("*-tb-*")
    run_training(None, resume=run_dir, data_dir=data_dir)
    events = EventAccumulator(str(run_dir), size_guidance={"scalars": 0})
    events.Reload()
    val_acc = [(e.step, e.value) for e in events.Scalars("accuracy/val")]
    assert val_acc == [(m["epoch"], pytest.approx(m["val_acc"])) for m in runs.read_metrics(run_dir)]
    assert [step for step, _ in val_acc] == [1, 2, 3, 4]


@pytest.mark.parametrize("value", [np.inf, np.nan])
def test_a_checkpoint_with_non_finite_weights_is_refused_in_one_line(work, test_pngs, tmp_path,
                                                                     value):
    # A hand-edited (or bit-rotted) best.npz with an infinite weight was scored: eval printed
    # "loss: nan", predict "probability": null, and two screens of NumPy RuntimeWarnings.
    root, run_a, _, _ = work
    arrays = dict(np.load(run_a / "checkpoints" / "best.npz"))
    arrays["param/layer1.W"] = arrays["param/layer1.W"].copy()
    arrays["param/layer1.W"][3, 4] = value
    damaged = tmp_path / "damaged.npz"
    np.savez(damaged, **arrays)
    for argv in (["eval", damaged, "--json"], ["predict", damaged, test_pngs / "test-0000.png"],
                 ["export", damaged, "--format", "onnx", "-o", tmp_path / "x.onnx"]):
        proc = fmnist(*argv, cwd=root)
        assert proc.returncode == 1, proc.stderr
        assert proc.stdout == ""
        assert proc.stderr.strip() == (f"error: {damaged}: layer1.W holds NaN or infinite values "
                                       f"(a damaged model); use another checkpoint")
    assert not (tmp_path / "x.onnx").exists()


def test_an_onnx_export_given_as_the_model_says_what_to_give_instead(work, test_pngs, tmp_path):
    # `predict model.onnx photo.png` said "not a .npz checkpoint (foreign or corrupt file)":
    # the file is neither foreign nor corrupt; it is our own export, which only ONNX Runtime runs.
    root, run_a, _, _ = work
    need("onnx")
    onnx_file = tmp_path / "a.onnx"
    assert fmnist("export", run_a, "--format", "onnx", "-o", onnx_file, cwd=root).returncode == 0
    for argv in (["eval", onnx_file], ["predict", onnx_file, test_pngs / "test-0000.png"]):
        proc = fmnist(*argv, cwd=root)
        assert proc.returncode == 1 and proc.stdout == ""
        assert proc.stderr.strip() == (
            f"error: {onnx_file}: an ONNX export is run with ONNX Runtime; give fmnist-mlp "
            f"the run directory, a .npz checkpoint or a .safetensors export")


def test_save_preprocessed_never_writes_through_a_link(work, test_pngs, tmp_path):
    # A dangling link in the --save-preprocessed folder named like an output ("test-0000.png")
    # had Pillow write the image wherever it pointed; a taken name gets "-2" instead.
    root, run_a, _, _ = work
    seen, victim = tmp_path / "seen", tmp_path / "elsewhere" / "victim.png"
    seen.mkdir()
    victim.parent.mkdir()
    (seen / "test-0000.png").symlink_to(victim)
    proc = fmnist("predict", run_a, test_pngs / "test-0000.png", "--save-preprocessed", seen,
                  cwd=root)
    assert proc.returncode == 0, proc.stderr
    assert not victim.exists()
    assert (seen / "test-0000-2.png").is_file() and (seen / "test-0000.png").is_symlink()


def test_save_preprocessed_that_cannot_be_created_is_one_plain_line(work, test_pngs, tmp_path):
    # It printed Python's "[Errno 20] Not a directory: '...'" with exit 1; like export's -o, a
    # place that cannot be written is a usage error, said in the tool's words.
    root, run_a, _, _ = work
    (tmp_path / "a-file").write_text("")
    target = tmp_path / "a-file" / "seen"
    proc = fmnist("predict", run_a, test_pngs / "test-0000.png", "--save-preprocessed", target,
                  cwd=root)
    assert proc.returncode == 2 and proc.stdout == ""
    assert proc.stderr.strip() == (f"error: --save-preprocessed {target}: cannot create the "
                                   f"folder (Not a directory)")


def test_deeply_nested_safetensors_metadata_is_one_line(work, tmp_path):
    # json.loads of "[[[[..." 100,000 deep in a .safetensors' metadata raised a RecursionError
    # traceback from eval and predict.
    need("safetensors")
    from safetensors import safe_open
    from safetensors.numpy import save_file

    root, run_a, _, _ = work
    exported = tmp_path / "a.safetensors"
    assert fmnist("export", run_a, "--format", "safetensors", "-o", exported,
                  cwd=root).returncode == 0
    with safe_open(str(exported), framework="numpy") as f:
        metadata = dict(f.metadata())
        arrays = {name: f.get_tensor(name) for name in f.keys()}
    metadata["config"] = "[" * 100_000 + "]" * 100_000
    deep = tmp_path / "deep.safetensors"
    save_file(arrays, str(deep), metadata=metadata)
    proc = fmnist("eval", deep, cwd=root)
    assert proc.returncode == 1 and proc.stdout == ""
    assert proc.stderr.strip() == f"error: {deep}: metadata entry 'config' missing or not JSON"
