"""Tests for fmnist_mlp.plots: every picture is a real, non-blank PNG of the expected size."""

import math
import struct
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("matplotlib")

import matplotlib  # noqa: E402
from matplotlib.image import imread  # noqa: E402

from fmnist_mlp import plots
from fmnist_mlp.errors import FmnistMlpError
from fmnist_mlp.scoring.metrics import confusion_matrix
from fmnist_mlp.nn import MLP

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def png_size(path):
    """(width, height) from the IHDR chunk, after checking the 8-byte PNG signature."""
    header = path.read_bytes()[:24]
    assert header[:8] == PNG_SIGNATURE, f"{path} is not a PNG"
    length, chunk_type = struct.unpack(">I4s", header[8:16])
    assert chunk_type == b"IHDR" and length == 13
    return struct.unpack(">II", header[16:24])


def assert_picture(path, width, height):
    """A valid PNG of exactly width x height pixels with visible content, and no temp files left."""
    assert path.is_file()
    assert png_size(path) == (width, height)
    pixels = imread(path)
    assert pixels.shape[:2] == (height, width)
    assert pixels[..., :3].std() > 0.05, f"{path.name} looks blank"
    assert not [p.name for p in path.parent.iterdir() if p.name.endswith(".tmp")]


def grid_pixels(rows, cols):
    """Pixel size of a grid figure, from the layout rule in plots (cells plus a title band)."""
    width = max(cols * plots.GRID_CELL_INCHES, plots.GRID_MIN_WIDTH_INCHES) * plots.DPI
    height = (rows * plots.GRID_CELL_INCHES + plots.GRID_TITLE_INCHES) * plots.DPI
    return round(width), round(height)


def synthetic_metrics(epochs=8):
    return [
        {"epoch": e, "train_loss": 1.0 / e, "train_acc": 1 - 0.3 / e,
         "val_loss": 1.1 / e + 0.01 * e, "val_acc": 0.9 - 0.3 / e - 0.004 * e, "lr": 1e-3}
        for e in range(1, epochs + 1)
    ]


@pytest.fixture(scope="module")
def tiny_trained_model():
    """A real 784-16-10 MLP trained briefly on structured synthetic 'images' (class = bright band).

    Returns (model, x_test, y_test) with some but not all test images misclassified.
    """
    rng = np.random.default_rng(0)

    def make(n):
        y = rng.integers(0, 10, n)
        x = rng.normal(0.0, 1.0, (n, 28, 28)).astype(np.float32)
        for i, label in enumerate(y):
            x[i, 2 + 2 * label: 4 + 2 * label, :] += 1.5  # class c lights rows 2c+2..2c+3
        return x.reshape(n, 784), y

    x_train, y_train = make(600)
    x_test, y_test = make(300)
    model = MLP(hidden=(16,), seed=0)
    for step in range(60):
        batch = slice((step * 100) % 600, (step * 100) % 600 + 100)
        model.loss_and_grad(x_train[batch], y_train[batch])
        for name, param in model.params.items():
            param -= 0.05 * model.grads[name]
    return model, x_test, y_test


def test_reliability_diagram_png(tmp_path):
    rng = np.random.default_rng(0)
    probs = rng.dirichlet(np.ones(10) * 0.3, size=500)
    y = np.where(rng.random(500) < 0.7, probs.argmax(axis=1), rng.integers(0, 10, 500))
    path = plots.plot_reliability_diagram(probs, y, tmp_path / "rel.png")
    assert_picture(path, *(round(v * plots.DPI) for v in plots.RELIABILITY_SIZE))


def test_learning_curves_png(tmp_path):
    path = plots.plot_learning_curves(synthetic_metrics(), tmp_path / "curves.png")
    width, height = plots.LEARNING_CURVES_SIZE
    assert_picture(path, width * plots.DPI, height * plots.DPI)


def test_learning_curves_tolerate_missing_validation_values(tmp_path):
    metrics = synthetic_metrics(3)
    for m in metrics:
        m["val_loss"] = m["val_acc"] = None
    path = plots.plot_learning_curves(metrics, tmp_path / "curves.png")
    assert png_size(path) == (1200, 450)


def test_learning_curves_refuse_an_empty_history(tmp_path):
    with pytest.raises(FmnistMlpError, match="no epochs"):
        plots.plot_learning_curves([], tmp_path / "curves.png")
    assert not (tmp_path / "curves.png").exists()


def test_confusion_matrix_png(tmp_path, tiny_trained_model):
    model, x, y = tiny_trained_model
    cm = confusion_matrix(y, model.predict(x))
    path = plots.plot_confusion_matrix(cm, tmp_path / "cm.png")
    width, height = plots.CONFUSION_SIZE
    assert_picture(path, width * plots.DPI, height * plots.DPI)


def test_confusion_matrix_rejects_mismatched_class_names(tmp_path):
    with pytest.raises(ValueError, match="3 class names"):
        plots.plot_confusion_matrix(np.eye(10, dtype=np.int64), tmp_path / "cm.png",
                                    class_names=["a", "b", "c"])


def test_first_layer_weights_of_a_trained_model(tmp_path, tiny_trained_model):
    model, _, _ = tiny_trained_model
    W = model.params["layer0.W"]  # (784, 16) -> a 4x4 grid
    path = plots.plot_first_layer_weights(W, tmp_path / "w.png")
    assert_picture(path, *grid_pixels(4, 4))


def test_first_layer_weights_show_at_most_100_units(tmp_path):
    W = np.random.default_rng(1).normal(size=(784, 300))
    path = plots.plot_first_layer_weights(W, tmp_path / "w.png")
    assert_picture(path, *grid_pixels(10, 10))


def test_class_templates_are_two_rows_of_five(tmp_path):
    W = np.random.default_rng(2).normal(size=(784, 10))
    path = plots.plot_first_layer_weights(W, tmp_path / "w.png", class_names=plots.CLASS_NAMES)
    assert_picture(path, *grid_pixels(2, 5))


@pytest.mark.parametrize("sign", [1.0, -1.0, 0.0])
def test_weight_sign_is_shown_as_colour(tmp_path, sign):
    """A single all-positive map is red, all-negative blue, all-zero white (limits centred at 0)."""
    W = np.full((784, 1), 0.3 * sign)
    path = plots.plot_first_layer_weights(W, tmp_path / "w.png")
    pixels = imread(path)[..., :3]
    height, width = pixels.shape[:2]
    # Centre of the single map: the grid's cell area, below the title band.
    top = plots.GRID_TITLE_INCHES * plots.DPI
    red, green, blue = pixels[int(top + (height - top) / 2), width // 2]
    if sign > 0:
        assert red > blue + 0.2
    elif sign < 0:
        assert blue > red + 0.2
    else:
        assert min(red, green, blue) > 0.9


def test_first_layer_weights_reject_a_non_image_layer(tmp_path):
    with pytest.raises(ValueError, match=r"\(784, H\)"):
        plots.plot_first_layer_weights(np.zeros((100, 5)), tmp_path / "w.png")


def test_confident_mistakes_png(tmp_path, tiny_trained_model):
    model, x, y = tiny_trained_model
    probs = model.forward(x)
    wrong = int((probs.argmax(axis=1) != y).sum())
    assert 0 < wrong < len(y)
    shown = min(wrong, plots.MAX_MISTAKES)
    path = plots.plot_confident_mistakes(x, y, probs, tmp_path / "m.png")
    cols = min(5, math.ceil(math.sqrt(shown)))
    assert_picture(path, *grid_pixels(math.ceil(shown / cols), cols))


def test_confident_mistakes_when_there_are_none(tmp_path):
    y = np.arange(10)
    probs = np.eye(10)
    path = plots.plot_confident_mistakes(np.random.default_rng(0).random((10, 784)), y, probs,
                                         tmp_path / "m.png")
    assert png_size(path) == (600, 200)
    assert imread(path)[..., :3].std() > 0.01  # the note is drawn


def test_an_existing_picture_is_replaced(tmp_path):
    path = tmp_path / "plots" / "curves.png"
    path.parent.mkdir()
    path.write_bytes(b"old")
    plots.plot_learning_curves(synthetic_metrics(2), path)
    assert png_size(path) == (1200, 450)
    assert sorted(p.name for p in path.parent.iterdir()) == ["curves.png"]


def test_plotting_leaves_global_matplotlib_state_alone(tmp_path):
    before = dict(matplotlib.rcParams)
    backend = matplotlib.get_backend()
    plots.plot_learning_curves(synthetic_metrics(2), tmp_path / "curves.png")
    plots.plot_first_layer_weights(np.ones((784, 3)), tmp_path / "w.png")
    assert matplotlib.get_backend() == backend
    assert dict(matplotlib.rcParams) == before


def test_missing_matplotlib_gives_the_one_line_install_hint(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # `import matplotlib` now fails
    with pytest.raises(FmnistMlpError) as excinfo:
        plots.plot_learning_curves(synthetic_metrics(2), tmp_path / "curves.png")
    assert str(excinfo.value) == "plotting needs matplotlib: pip install -e '.[plot]'"
    assert "\n" not in str(excinfo.value)
    # plot_run says the same before it reads anything, even for a run that does not exist.
    with pytest.raises(FmnistMlpError, match=r"pip install -e '\.\[plot\]'"):
        plots.plot_run(tmp_path / "no-such-run")
    assert list(tmp_path.iterdir()) == []


# ----------------------------------------------------------------------------- plot_run on real runs

def _cli(*args, cwd):
    """Run `fmnist-mlp ARGS` as a user would (a subprocess); returns the CompletedProcess."""
    return subprocess.run([sys.executable, "-m", "fmnist_mlp", *args], cwd=cwd,
                          capture_output=True, text=True, timeout=300)


def _tiny_run(tmp_path, hidden, data_dir):
    """`fmnist-mlp train` for 2 epochs on 600 training images; returns the run directory."""
    result = _cli("train", "--name", "tiny", "--runs-dir", str(tmp_path / "runs"), "--quiet",
                  "--data-dir", str(data_dir),
                  "--set", f"model.hidden={hidden}", "--set", "data.subset=600",
                  "--set", "data.val_size=500", "--set", "train.epochs=2",
                  "--set", "train.batch_size=100", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    run_dir = Path(result.stdout.strip().splitlines()[-1])
    assert (run_dir / "checkpoints").is_dir()
    return run_dir


def _check_run_pictures(run_dir, written, weight_grid):
    names = [p.name for p in written]
    assert names == ["learning_curves.png", "confusion_matrix.png", "first_layer_weights.png",
                     "confident_mistakes.png", "reliability_diagram.png"]
    assert all(p.parent == run_dir / "plots" for p in written)
    by_name = dict(zip(names, written))
    assert_picture(by_name["learning_curves.png"],
                   *(round(v * plots.DPI) for v in plots.LEARNING_CURVES_SIZE))
    assert_picture(by_name["confusion_matrix.png"],
                   *(round(v * plots.DPI) for v in plots.CONFUSION_SIZE))
    assert_picture(by_name["first_layer_weights.png"], *grid_pixels(*weight_grid))
    # A 2-epoch model on 600 images gets far more than 25 of the 10,000 test images wrong.
    assert_picture(by_name["confident_mistakes.png"], *grid_pixels(5, 5))
    assert_picture(by_name["reliability_diagram.png"],
                   *(round(v * plots.DPI) for v in plots.RELIABILITY_SIZE))


@pytest.mark.realdata
@pytest.mark.slow
def test_plot_command_on_a_tiny_trained_run(tmp_path, real_data_dir):
    run_dir = _tiny_run(tmp_path, "[16]", real_data_dir)
    result = _cli("plot", str(run_dir), "--data-dir", str(real_data_dir), cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    written = [Path(line) for line in result.stdout.splitlines()]
    _check_run_pictures(run_dir, written, weight_grid=(4, 4))


@pytest.mark.realdata
@pytest.mark.slow
def test_plot_run_on_a_run_without_hidden_layers_shows_class_templates(tmp_path, real_data_dir):
    run_dir = _tiny_run(tmp_path, "[]", real_data_dir)
    written = plots.plot_run(run_dir, real_data_dir)
    _check_run_pictures(run_dir, written, weight_grid=(2, 5))
    # Plotting again replaces the pictures in place and leaves nothing else behind.
    assert plots.plot_run(run_dir, real_data_dir) == written
    assert sorted(p.name for p in (run_dir / "plots").iterdir()) == sorted(p.name for p in written)


def test_plot_command_without_matplotlib_says_how_to_install_it(tmp_path, monkeypatch, capsys):
    from fmnist_mlp.cli import main

    monkeypatch.setitem(sys.modules, "matplotlib", None)
    with pytest.raises(SystemExit) as excinfo:
        main(["plot", str(tmp_path)])
    assert excinfo.value.code == 2           # a missing extra is a setup error, as everywhere
    captured = capsys.readouterr()
    assert captured.err == "error: plotting needs matplotlib: pip install -e '.[plot]'\n"
    assert captured.out == ""


def test_plot_run_on_a_missing_run_names_it(tmp_path):
    with pytest.raises(FmnistMlpError, match="no-such-run: not a run directory"):
        plots.plot_run(tmp_path / "no-such-run")


def test_plot_run_on_a_directory_without_checkpoints_writes_nothing(tmp_path):
    (tmp_path / "metrics.jsonl").write_text('{"epoch": 1, "train_loss": 1.0}\n')
    with pytest.raises(FmnistMlpError):
        plots.plot_run(tmp_path)
    assert not (tmp_path / "plots").exists()

