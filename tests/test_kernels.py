"""The fused kernels (fmnist_mlp/nn/kernels/) against the NumPy reference they stand beside.

The updates and the hidden-layer chains do the reference's float operations in the reference's
order, so they are held to it bit for bit: on arrays larger than this machine's caches, in both
memory layouts, with dropout drawn from the same stream, in float32 and float64. The choice
(train.kernels) is visible in the summary and at --verbose, a missing extra is one line, and the
compiled code's cache is reused, and rebuilt when damaged.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from conftest import require_numba
from fmnist_mlp.nn import MLP
from fmnist_mlp.nn.optim import OPTIMIZERS, make_optimizer
from fmnist_mlp.nn.workspace import ParameterSet, UpdateRunner
from fmnist_mlp.rundir import files as runs

REPO = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1", "MKL_NUM_THREADS": "1",
       "PYTHONPATH": str(REPO)}
SMALL = ["data.subset=1000", "data.val_size=500", "model.hidden=[32, 16]", "train.epochs=2",
         "train.batch_size=100", "model.dropout=0.2", "data.augment.flip=true"]
# 9 M entries, 36 MB per float32 array: each array alone is larger than this machine's 32 MB L3.
LARGE = {"layer0.W": (2990, 3000), "layer0.b": (3000,), "layer1.W": (3000, 10), "layer1.b": (10,)}


@pytest.fixture
def numba_kernels():
    require_numba()


# ------------------------------------------------------------------------------ the updates
@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(OPTIMIZERS))
def test_every_fused_update_is_bit_identical_to_numpy_on_arrays_larger_than_the_caches(
        name, numba_kernels):
    rng = np.random.default_rng(0)
    sets = []
    for kernels in ("numpy", "numba"):
        params, grads = ParameterSet(LARGE, np.float32), ParameterSet(LARGE, np.float32)
        params.flat[:] = np.random.default_rng(1).standard_normal(params.flat.size)
        opt = make_optimizer(name, params, lr=0.01, weight_decay=0.1, kernels=kernels)
        assert opt.kernels == kernels
        sets.append((params, grads, opt))
    runner = sets[1][2]._fused.runner
    assert isinstance(runner, UpdateRunner) and runner.size >= runner.MIN_SIZE
    for step in range(4):
        g = rng.standard_normal(sets[0][1].flat.size, dtype=np.float32)
        g[::1001] = 0.0                             # zero gradients: 0/(√0 + ε) in adagrad & co
        for params, grads, opt in sets:
            grads.flat[:] = g
            opt.step(params, grads, 0.02 / (step + 1))     # the learning rate changes each step
    (p0, _, reference), (p1, _, fused) = sets
    assert np.array_equal(p0.flat, p1.flat)
    want, got = reference.state_dict(), fused.state_dict()
    assert want.keys() == got.keys()
    for key in want:
        assert np.array_equal(want[key], got[key]), key


@pytest.mark.parametrize("name", sorted(OPTIMIZERS))
def test_fused_float64_update_matches_the_reference_and_continues_after_a_state_round_trip(
        name, numba_kernels):
    shapes = {"layer0.W": (7, 5), "layer0.b": (5,)}
    rng = np.random.default_rng(2)
    start = rng.standard_normal(40)
    runs_ = {}
    for kernels in ("numpy", "numba"):
        params, grads = ParameterSet(shapes, np.float64), ParameterSet(shapes, np.float64)
        params.flat[:] = start
        opt = make_optimizer(name, params, lr=0.1, weight_decay=0.05, kernels=kernels)
        gen = np.random.default_rng(3)
        for step in range(3):
            grads.flat[:] = gen.standard_normal(40)
            opt.step(params, grads, 0.1 / (step + 1))
        fresh = make_optimizer(name, params, lr=0.1, weight_decay=0.05, kernels=kernels)
        fresh.load_state_dict(opt.state_dict())
        grads.flat[:] = gen.standard_normal(40)
        fresh.step(params, grads, 0.02)
        runs_[kernels] = params.flat.copy()
    assert np.array_equal(runs_["numpy"], runs_["numba"])


def test_a_plain_dict_or_an_optimiser_defined_elsewhere_keeps_the_numpy_passes(numba_kernels):
    plain = {"layer0.W": np.ones((3, 2), np.float32)}
    assert make_optimizer("adam", plain, lr=0.1, kernels="numba").kernels == "numpy"

    from fmnist_mlp.nn.optim import SGD

    class Custom(SGD):          # its own formula: the fused SGD kernel must not stand in for it
        def _update(self, param, grad, lr, tmp):
            param -= 2 * lr * grad

    params = ParameterSet({"layer0.W": (3, 2)}, np.float32)
    custom = Custom(params, lr=0.1)
    custom.use_kernels("numba", params)
    assert custom.kernels == "numpy"


# ------------------------------------------------------------------------------ the layer chains
CHAINS = [
    dict(hidden=[256, 128]),
    dict(hidden=[1024, 512], dropout=0.2, input_dropout=0.1),             # feature layout (auto)
    dict(hidden=[64, 32], dropout=0.3, layout="row", batchnorm=True),
    dict(hidden=[48], activation="linear", dropout=0.5, layout="feature"),
    dict(hidden=[24, 16], batchnorm=True, dropout=0.4, dtype="float64", layout="feature"),
    dict(hidden=[16], l2=0.01, label_smoothing=0.1, input_dropout=0.3, dtype="float64"),
]


@pytest.mark.parametrize("settings", CHAINS, ids=lambda s: ",".join(f"{k}={v}" for k, v in s.items()))
def test_fused_chains_give_the_reference_bits(settings, numba_kernels):
    """Loss, gradients, running statistics and evaluation logits, over steps that change the
    weights, with dropout masks drawn from the same stream."""
    rng = np.random.default_rng(4)
    x = rng.standard_normal((96, 784)).astype(settings.get("dtype", "float32"))
    x[0] = 0.0                                  # a row of zeros: z = b exactly, ±0 at the kink
    y = rng.integers(0, 10, 96)
    models = [MLP(seed=0, kernels=k, **settings) for k in ("numpy", "numba")]
    assert models[1].kernels == "numba"
    streams = [np.random.default_rng(9) for _ in models]
    for _ in range(3):
        results = [m.loss_and_grad(x, y, s) for m, s in zip(models, streams)]
        assert results[0] == results[1]
        assert np.array_equal(models[0].grads.flat, models[1].grads.flat)
        for m in models:
            m.params.flat -= 0.05 * m.grads.flat
    for name in models[0].buffers:
        assert np.array_equal(models[0].buffers[name], models[1].buffers[name]), name
    assert np.array_equal(models[0].logits(x), models[1].logits(x))
    assert streams[0].bit_generator.state == streams[1].bit_generator.state


@pytest.mark.parametrize("layout", ["row", "feature"])
@pytest.mark.parametrize("n", [5, 13, 128, 300, 512, 2000, 20000])
@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_fused_batchnorm_sums_in_numpys_order_and_gives_its_bits(layout, n, dtype, numba_kernels):
    """Batch sums are where bits could part: NumPy sums a row-major batch row after row and a
    feature-major one pairwise (eight running sums, halves above 128 rows); the kernels do too,
    feature-major four units at a time in vectors (42 units: a group of two at the end; a batch
    of 13 or 300: a last block with terms past its eights; 20,000: a plan of 256 blocks)."""
    from fmnist_mlp.nn import layers
    from fmnist_mlp.nn.kernels.chains import FusedChains

    rng = np.random.default_rng(n)
    d = 42

    def arrays():
        make = ((lambda: np.empty((d, n), dtype).T) if layout == "feature"
                else (lambda: np.empty((n, d), dtype)))
        z, dout = make(), make()
        z[...] = rng.standard_normal((n, d)) * 3 + 1
        dout[...] = rng.standard_normal((n, d))
        return z, dout, make(), make()

    state = rng.bit_generator.state
    outs = {}
    for name, ops in (("numpy", layers), ("numba", FusedChains("relu", dtype))):
        rng.bit_generator.state = state
        z, dout, out, scratch = arrays()
        gamma, beta = rng.uniform(0.5, 1.5, d).astype(dtype), rng.normal(0, 0.3, d).astype(dtype)
        stats = [np.empty(d, dtype) for _ in range(5)]      # mean, var, inv_std, dγ, dβ
        ops.batchnorm_forward_train(z, gamma, beta, 1e-5, out, *stats[:3])
        ops.batchnorm_backward(dout, z, gamma, stats[2], stats[3], stats[4], scratch)
        outs[name] = [z, out, dout, *stats]
    for want, got in zip(outs["numpy"], outs["numba"]):
        assert np.array_equal(want, got)


# ------------------------------------------------------------------------------ the loss head
@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("n,k", [(1, 10), (128, 10), (512, 10), (33, 2), (40, 300)])
@pytest.mark.parametrize("smoothing", [0.0, 0.1])
def test_fused_head_gives_the_references_loss_gradient_and_count(n, k, smoothing, dtype,
                                                                  numba_kernels):
    """Loss, dL/dlogits, the output bias's gradient and #correct against one_hot_targets +
    softmax_cross_entropy + argmax + the batch sum, bit for bit: rows with ties (argmax takes the first), a row with NaN, a row of ±0, logits
    of ±1e4; with the labels' targets and with given ones (distillation)."""
    from fmnist_mlp.nn.kernels.head import FusedHead
    from fmnist_mlp.nn.losses import one_hot_targets, softmax_cross_entropy

    rng = np.random.default_rng(n * k)
    logits = (rng.standard_normal((n, k)) * 3).astype(dtype)
    y = rng.integers(0, k, n)
    if n > 4:
        logits[1, :] = 2.0                                  # all tied: the first is the argmax
        logits[2, 3 % k] = np.nan
        logits[3, :] = -0.0
        logits[4, 0], logits[4, -1] = 1e4, -1e4
    head = FusedHead(dtype)
    soft = rng.dirichlet(np.ones(k), n).astype(dtype)
    for given in (None, soft):
        target = one_hot_targets(y, k, smoothing, dtype) if given is None else given
        with np.errstate(invalid="ignore"):
            want_loss, want_grad = softmax_cross_entropy(logits, target)
            want_db = np.sum(want_grad, axis=0)
            got_db = np.full(k, 7.0, dtype)
            got_loss, got_grad, got_correct = head.loss_and_dlogits(logits, y, given, smoothing,
                                                                    got_db)
        assert got_loss == want_loss or (np.isnan(got_loss) and np.isnan(want_loss))
        assert np.array_equal(got_grad, want_grad, equal_nan=True)
        assert np.array_equal(got_db, want_db, equal_nan=True)
        assert got_correct == int(np.count_nonzero(logits.argmax(axis=1) == y))
        assert got_grad.dtype == np.dtype(dtype)


def test_fused_head_leaves_a_label_out_of_range_to_the_reference(numba_kernels):
    """A label ≥ K: the fused head computes nothing and the model raises as the reference does."""
    from fmnist_mlp.nn.kernels.head import FusedHead

    logits = np.zeros((3, 10), np.float32)
    assert FusedHead(np.float32).loss_and_dlogits(logits, np.array([0, 10, 1]), None, 0.0) is None
    models = [MLP(hidden=[8], kernels=k) for k in ("numpy", "numba")]
    x = np.zeros((3, 784), np.float32)
    errors = []
    for model in models:
        with pytest.raises(IndexError) as caught:
            model.loss_and_grad(x, np.array([0, 10, 1]))
        errors.append(str(caught.value))
    assert errors[0] == errors[1]


@pytest.mark.parametrize("batchnorm", [True, False])
@pytest.mark.parametrize("threads", [2, 3])
@pytest.mark.parametrize("layout", ["row", "feature"])
def test_chains_and_batchnorm_split_across_threads_give_the_same_bits(layout, threads, batchnorm,
                                                                        numba_kernels, monkeypatch):
    """Rows and feature-major units split over threads (uneven parts): each is
    computed alone, so the split changes nothing, against the NumPy reference (without batch
    norm the chain's backward sums the bias gradient too: per unit, or over every row at once)."""
    from fmnist_mlp.nn.kernels.chains import SplitUnits

    monkeypatch.setattr(SplitUnits, "MIN_SIZE", 0)
    monkeypatch.setattr(SplitUnits, "MIN_SIZE_ONE_PASS", 0)
    rng = np.random.default_rng(8)
    x = rng.standard_normal((200, 784)).astype(np.float32)
    y = rng.integers(0, 10, 200)
    settings = dict(hidden=[200, 72], dropout=0.3, batchnorm=batchnorm, layout=layout, seed=2)
    reference, fused = MLP(kernels="numpy", **settings), MLP(kernels="numba", **settings)
    fused._fused._split = SplitUnits(fused, threads=threads)
    streams = [np.random.default_rng(1), np.random.default_rng(1)]
    for _ in range(2):
        assert reference.loss_and_grad(x, y, streams[0]) == fused.loss_and_grad(x, y, streams[1])
        assert np.array_equal(reference.grads.flat, fused.grads.flat)
        for m in (reference, fused):
            m.params.flat -= 0.05 * m.grads.flat
    for name in reference.buffers:
        assert np.array_equal(reference.buffers[name], fused.buffers[name]), name


@pytest.mark.slow
def test_fused_chains_are_bit_identical_on_work_arrays_larger_than_the_caches(numba_kernels):
    """4096 × 2048 float32 work arrays (32 MB each: h, mask, dropped, dh)."""
    rng = np.random.default_rng(5)
    x = rng.standard_normal((4096, 784), dtype=np.float32)
    y = rng.integers(0, 10, 4096)
    models = [MLP(hidden=[2048], dropout=0.25, seed=1, kernels=k) for k in ("numpy", "numba")]
    results = [m.loss_and_grad(x, y, np.random.default_rng(6)) for m in models]
    assert results[0] == results[1]
    assert np.array_equal(models[0].grads.flat, models[1].grads.flat)


# ------------------------------------------------------------------------------ the batch gather
AUGMENTS = [dict(), dict(flip=True), dict(flip=True, alternate_flip=True), dict(shift=1),
            dict(flip=True, shift=2), dict(shift=5, cutout=8), dict(flip=True, shift=27),
            dict(flip=True, shift=40)]     # offsets past the image: rows with no column inside


@pytest.mark.parametrize("normalize", ["standardize", "scale"])
@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_pixel_bytes_decode_to_the_inputs_bit_for_bit(normalize, dtype):
    """The training split kept as bytes (EncodedRows) decodes to exactly the float rows."""
    from fmnist_mlp.data.dataset import RawData, make_splits

    rng = np.random.default_rng(2)
    raw = RawData(rng.integers(0, 256, (700, 28, 28), dtype=np.uint8), rng.integers(0, 10, 700, dtype=np.uint8),
                  rng.integers(0, 256, (50, 28, 28), dtype=np.uint8), rng.integers(0, 10, 50, dtype=np.uint8))
    rows = make_splits(raw, val_size=100, normalize=normalize, dtype=dtype)
    encoded = make_splits(raw, val_size=100, normalize=normalize, dtype=dtype, encode_train=True)
    assert encoded.train.x.pixels.dtype == np.uint8 and encoded.train.x.shape == rows.train.x.shape
    assert np.array_equal(encoded.train.x.decode(), rows.train.x)
    assert np.array_equal(encoded.train.y, rows.train.y) and np.array_equal(encoded.val.x, rows.val.x)


@pytest.mark.parametrize("settings", AUGMENTS, ids=lambda s: ",".join(f"{k}={v}" for k, v in s.items()) or "none")
@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_the_fused_gather_makes_the_references_batch_from_the_same_draws(settings, dtype, numba_kernels):
    """Gather + decode + flip + shift in one pass against np.take on float rows then the
    augmenter: the same batch bit for bit, the random stream left in the same state, on a
    split as large as the real one (55,000 images, 43 MB of bytes, larger than the L3)."""
    from fmnist_mlp.data.augment import make_augmenter
    from fmnist_mlp.data.dataset import EncodedRows
    from fmnist_mlp.nn.kernels.batches import FusedBatches

    rng = np.random.default_rng(3)
    pixels = rng.integers(0, 256, (55000, 784), dtype=np.uint8)
    pixels[:, :60] = 7                      # no pixel 0: the shifted border is the batch minimum
    encoded = EncodedRows(pixels, 0.2860, 0.3530, np.dtype(dtype))
    augment = make_augmenter(**settings)
    batches = FusedBatches(dtype)
    for epoch, rows in enumerate((rng.permutation(55000)[:512], rng.permutation(55000)[:77])):
        want = encoded.decode(rows)
        streams = [np.random.default_rng(epoch), np.random.default_rng(epoch)]
        if augment is not None:
            augment(want, streams[0], rows, epoch)
        got = np.full_like(want, np.nan)
        flips, offsets = augment.draw(streams[1], rows, epoch) if augment else (None, None)
        batches.fill(got, encoded, rows, flips, offsets, settings.get("shift", 0))
        if augment is not None:
            augment.cut_out(got, streams[1])
        assert np.array_equal(got, want)
        assert streams[0].bit_generator.state == streams[1].bit_generator.state


def test_activations_numba_does_not_reproduce_bit_for_bit_keep_the_numpy_chain(numba_kernels):
    model = MLP(hidden=[8], activation="tanh", kernels="numba")
    assert model.kernels == "numpy"
    assert make_optimizer("adam", model.params, lr=0.1, kernels="numba").kernels == "numba"


# ------------------------------------------------------------------------------ the choice
def test_auto_is_numba_where_installed_and_a_bad_choice_is_refused(numba_kernels):
    from fmnist_mlp.errors import ConfigError
    from fmnist_mlp.config.validate import config_from_dict
    from fmnist_mlp.nn.kernels import resolve_kernels

    assert resolve_kernels("auto") == "numba" and resolve_kernels("numpy") == "numpy"
    assert MLP(hidden=[4], kernels="auto").kernels == "numba"
    with pytest.raises(ConfigError, match=r"train\.kernels.*'fast-ish'"):
        config_from_dict({"train": {"kernels": "fast-ish"}})
    with pytest.raises(ValueError, match="kernels"):
        MLP(hidden=[4], kernels="cuda")


def _without_numba(tmp_path: Path) -> dict[str, str]:
    """An environment whose `import numba` fails, as where the fast extra is not installed."""
    hide = tmp_path / "hide-numba" / "numba"
    hide.mkdir(parents=True)
    (hide / "__init__.py").write_text("raise ImportError('numba is hidden by the test')\n")
    return {**ENV, "PYTHONPATH": f"{hide.parent}{os.pathsep}{REPO}"}


def _train(args, cwd, env, data_dir, timeout=180) -> subprocess.CompletedProcess:
    sets = [a for s in SMALL for a in ("--set", s)]
    return subprocess.run([sys.executable, "-m", "fmnist_mlp", "train", *sets, "--data-dir",
                           str(data_dir), *args], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=timeout)


@pytest.mark.realdata
def test_without_the_extra_numba_is_one_line_and_auto_runs_numpy(real_data_dir, tmp_path):
    env = _without_numba(tmp_path)
    refused = _train(["--set", "train.kernels=numba"], tmp_path, env, real_data_dir)
    assert refused.returncode == 2, refused.stderr
    assert refused.stderr.strip() == ("error: train.kernels: numba needs numba: "
                                      "pip install -e '.[fast]'")
    assert not (tmp_path / "runs").exists()            # refused before any directory is made
    auto = _train(["--json", "--verbose"], tmp_path, env, real_data_dir)
    assert auto.returncode == 0, auto.stderr
    assert json.loads(auto.stdout)["kernels"] == {"layers": "numpy", "optimizer": "numpy"}
    assert "kernels: layers numpy, optimizer numpy" in auto.stderr


@pytest.mark.realdata
def test_train_says_which_kernels_ran_in_its_summary_and_at_verbose(real_data_dir, tmp_path,
                                                                     numba_kernels):
    proc = _train(["--json", "--verbose"], tmp_path, ENV, real_data_dir)
    assert proc.returncode == 0, proc.stderr
    summary = json.loads(proc.stdout)
    assert summary["kernels"] == {"layers": "numba", "optimizer": "numba"}
    assert runs.read_summary(tmp_path / summary["run_dir"])["kernels"] == summary["kernels"]
    assert "kernels: layers numba, optimizer numba" in proc.stderr
    quiet = _train(["--json"], tmp_path, ENV, real_data_dir)
    assert "kernels:" not in quiet.stderr


@pytest.mark.realdata
@pytest.mark.parametrize("augment", [["data.augment.shift=1"], ["data.augment.flip=false"]],
                         ids=["flipped-and-shifted", "plain"])
def test_a_short_run_is_the_same_run_with_either_kernels(augment, real_data_dir, tmp_path,
                                                         monkeypatch, numba_kernels):
    """Every fused kernel is bit-identical, so the whole run is: metrics, weights, state (the
    numba run gathers its batches from the pixel bytes, flipped and shifted in one pass; without
    augmentation, each batch after an epoch's first is gathered ahead, on the thread pool's idle
    worker while the step before it trains)."""
    from fmnist_mlp.config.load import load_config
    from fmnist_mlp.nn.kernels import blas_pool
    from fmnist_mlp.nn.kernels.batches import FusedBatches
    from fmnist_mlp.training.session import run_training

    started = []
    start = FusedBatches.start
    monkeypatch.setattr(FusedBatches, "start",
                        lambda self, *a: started.append(start(self, *a)) or started[-1])
    done = {}
    for kernels in ("numpy", "numba"):
        cfg = load_config(None, [*SMALL, "model.batchnorm=true", "optimizer.name=adamw", *augment,
                                 "optimizer.weight_decay=0.01", f"train.kernels={kernels}"])
        done[kernels] = run_training(cfg, name=kernels, runs_dir=tmp_path, data_dir=real_data_dir)
    plain = augment == ["data.augment.flip=false"]
    # 1,000 training rows in batches of 100: nine of each epoch's ten gathered ahead.
    assert started == ([True] * 18 if plain and blas_pool.available() else
                       [False] * 18 if plain else [])
    a, b = (runs.load_checkpoint(done[k].run_dir / "checkpoints" / "last.npz")
            for k in ("numpy", "numba"))
    for name in a.params:
        assert np.array_equal(a.params[name], b.params[name]), name
    for name in a.optim_state:
        assert np.array_equal(a.optim_state[name], b.optim_state[name]), name
    assert runs.read_metrics(done["numpy"].run_dir)[-1]["val_acc"] == \
        runs.read_metrics(done["numba"].run_dir)[-1]["val_acc"]
    assert done["numpy"].summary["test_acc"] == done["numba"].summary["test_acc"]


@pytest.mark.realdata
def test_a_run_resumed_with_the_other_kernels_continues_and_says_so(real_data_dir, tmp_path,
                                                                     monkeypatch, numba_kernels):
    """A run started where numba was missing (train.kernels: auto ran numpy) and resumed where
    it is installed continues with numba; the summary and train.log say that it changed."""
    from fmnist_mlp.config.load import load_config
    from fmnist_mlp.errors import TrainingInterrupted
    from fmnist_mlp.nn import kernels as kernels_module
    from fmnist_mlp.training.session import run_training
    from training_helpers import InterruptAt

    cfg = load_config(None, [*SMALL, "train.epochs=3"])
    monkeypatch.setattr(kernels_module, "numba_available", lambda: False)
    with pytest.raises(TrainingInterrupted):
        run_training(cfg, name="switch", runs_dir=tmp_path, data_dir=real_data_dir,
                     callbacks=[InterruptAt(epoch=2, batch=2)])
    (run_dir,) = tmp_path.glob("*-switch-*")
    assert runs.read_summary(run_dir)["kernels"]["optimizer"] == "numpy"
    monkeypatch.undo()
    summary = run_training(None, resume=run_dir, data_dir=real_data_dir).summary
    assert summary["status"] == "finished" and summary["epochs_completed"] == 3
    assert summary["kernels"] == {"layers": "numba", "optimizer": "numba"}
    assert summary["kernels_before_resume"] == {"layers": "numpy", "optimizer": "numpy"}
    assert "not bit for bit" in (run_dir / "train.log").read_text()


# ------------------------------------------------------------------------------ the cache
BUILD = """
import json
from fmnist_mlp.config.plan import build
engine = build({"model": {"hidden": [8]}, "optimizer": {"name": "adam"},
                "train": {"kernels": "numba"}}, 10)
from fmnist_mlp.nn.kernels import chains, jit, updates
hits = sum(sum(k.stats.cache_hits.values()) for k in (updates.adam, chains._forward))
print(json.dumps({"cache": str(jit.CACHE), "hits": hits, "kernels": engine.optimizer.kernels}))
"""


def _build(env) -> dict:
    proc = subprocess.run([sys.executable, "-c", BUILD], env=env, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)


@pytest.mark.slow
def test_compiled_kernels_are_cached_reused_and_rebuilt_when_damaged(tmp_path, numba_kernels):
    env = {**ENV, "XDG_CACHE_HOME": str(tmp_path / "xdg")}
    env.pop("NUMBA_CACHE_DIR", None)
    folder = tmp_path / "xdg" / "fmnist-mlp" / "kernels"
    first = _build(env)
    assert first == {"cache": str(folder), "hits": 0, "kernels": "numba"}
    assert (folder.stat().st_mode & 0o777) == 0o700
    files = [p for p in folder.rglob("*") if p.suffix in (".nbi", ".nbc")]
    assert files and all(p.name.startswith(("updates.", "chains.", "batchnorm.", "head."))
                          for p in files)
    assert _build(env)["hits"] > 0                        # the second process loads, no compile
    for path in files:                                    # damage every index and data file
        path.write_bytes(b"\x80\x04garbage" + path.read_bytes()[: 7])
    rebuilt = _build(env)
    assert rebuilt["kernels"] == "numba"
    assert _build(env)["hits"] > 0                        # and the rebuilt cache loads again


def test_a_cache_folder_others_can_write_to_is_not_used(tmp_path, numba_kernels):
    shared = tmp_path / "xdg" / "fmnist-mlp" / "kernels"
    shared.mkdir(parents=True)
    shared.chmod(0o777)                 # numba unpickles its index: only the user may write here
    env = {**ENV, "XDG_CACHE_HOME": str(tmp_path / "xdg")}
    env.pop("NUMBA_CACHE_DIR", None)
    assert _build(env) == {"cache": "None", "hits": 0, "kernels": "numba"}
    assert list(shared.iterdir()) == []
