"""The engine's own BLAS thread pool (nn/kernels/blas_pool.py): the same bits as OpenBLAS's own
threads, products through it, and no hang on Ctrl-C or in a forked child. Each case runs in a
child process with a timeout: the pool is installed into NumPy's BLAS, process-wide."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

pytest.importorskip("numba")

REPO = Path(__file__).resolve().parents[1]


def _pool_pays() -> bool:
    from fmnist_mlp.nn.kernels.blas_pool import wanted

    return wanted([1024], "numba")


def _child(code: str, tmp_path: Path, timeout: float = 240) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code), str(tmp_path / "kernels")],
                          capture_output=True, text=True, timeout=timeout, env=env, cwd=REPO)


def test_steps_with_the_pool_give_the_bits_of_blas_own_threads(tmp_path):
    """Training steps with the pool (products, updates, the hidden layers' chains with dropout
    and batch norm's passes on its workers) give the weights and running statistics of steps
    without it, bit for bit, for a feature-major and a row-major net, with batch norm and
    without (biases summed in the chains)."""
    if not _pool_pays():
        pytest.skip("the pool is only installed with two or more BLAS threads and its callback")
    proc = _child("""
        import hashlib, json, sys
        from contextlib import nullcontext
        import numpy as np
        from fmnist_mlp.nn import MLP, kernels
        from fmnist_mlp.nn.optim import make_optimizer
        kernels.set_cache_dir(sys.argv[1])
        from fmnist_mlp.nn.kernels.blas_pool import pool_for_training

        def train(with_pool, hidden, batchnorm):
            model = MLP(hidden=hidden, batchnorm=batchnorm, dropout=0.2, seed=0, kernels="numba")
            opt = make_optimizer("adam", model.params, lr=1e-3, kernels="numba")
            rng, drop = np.random.default_rng(0), np.random.default_rng(1)
            x = rng.standard_normal((2048, 784), dtype=np.float32)
            y = rng.integers(0, 10, 2048)
            with (pool_for_training(model.hidden, model.kernels) if with_pool
                  else nullcontext()) as pool:
                for _ in range(8):
                    idx = rng.integers(0, 2048, 256)
                    model.loss_and_grad(x[idx], y[idx], drop)
                    opt.step(model.params, model.grads)
                served = pool.products if pool is not None else 0
            state = [model.params.flat, *model.buffers.values()]
            return hashlib.sha256(b"".join(a.tobytes() for a in state)).hexdigest(), served

        results = []
        for hidden in ([512, 64], [300, 100]):      # feature-major, then row-major
            for batchnorm in (True, False):
                (own, _) = train(False, hidden, batchnorm)
                (pooled, served) = train(True, hidden, batchnorm)
                results.append({"same": own == pooled, "served": served})
        print(json.dumps(results))
    """, tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    results = json.loads(proc.stdout.strip().splitlines()[-1])
    assert len(results) == 4 and all(r["served"] > 0 and r["same"] for r in results), results


def test_every_update_as_the_pools_job_gives_the_bits_of_the_plain_kernel(tmp_path):
    """The optimisers' fused updates run as jobs of the pool where one is installed (each step
    one job, counted by the pool), in parts on both threads: the same bits as the kernel in one
    call, for every formula (weight decay folded in for two), in float32 and float64."""
    if not _pool_pays():
        pytest.skip("the pool is only installed with two or more BLAS threads and its callback")
    proc = _child("""
        import hashlib, json, sys
        import numpy as np
        from fmnist_mlp.nn import MLP, kernels
        from fmnist_mlp.nn.optim import make_optimizer
        kernels.set_cache_dir(sys.argv[1])
        from fmnist_mlp.nn.kernels.blas_pool import NativePool

        def steps(name, dtype, pool):
            model = MLP(hidden=[300, 100], seed=0, kernels="numba", dtype=dtype)
            decay = {"weight_decay": 0.01} if name in ("momentum", "adamw") else {}
            opt = make_optimizer(name, model.params, lr=0.01, kernels="numba", **decay)
            rng = np.random.default_rng(3)
            for _ in range(6):          # a new gradient each step, of mixed signs and scales
                model.grads.flat[:] = rng.standard_normal(model.grads.flat.size) * 10.0 ** rng.integers(-3, 2)
                opt.step(model.params, model.grads)
            arrays = [model.params.flat, *opt._flat_state]
            return hashlib.sha256(b"".join(a.tobytes() for a in arrays)).hexdigest()

        results = {}
        for dtype in ("float32", "float64"):
            for name in ("sgd", "momentum", "nesterov", "adagrad", "rmsprop", "adam", "adamw"):
                plain = steps(name, dtype, None)
                pool = NativePool()
                pool.install()
                before = pool.products
                pooled = steps(name, dtype, pool)
                jobs = pool.products - before
                pool.close()
                results[f"{name} {dtype}"] = [plain == pooled, jobs]
        print(json.dumps(results))
    """, tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    results = json.loads(proc.stdout.strip().splitlines()[-1])
    assert len(results) == 14
    assert all(same and jobs == 6 for same, jobs in results.values()), results


# The fused gather's child processes begin alike: the kernels' cache, the gather, the pool.
_GATHER_CHILD = """
        import json, sys, time
        import numpy as np
        from fmnist_mlp.nn import kernels
        kernels.set_cache_dir(sys.argv[1])
        from fmnist_mlp.data.dataset import EncodedRows
        from fmnist_mlp.nn.kernels.batches import FusedBatches
        from fmnist_mlp.nn.kernels.blas_pool import NativePool

        rng = np.random.default_rng(0)"""


def test_the_fused_gather_as_the_pools_job_gives_the_batch_of_one_call(tmp_path):
    """The training loop's fused gather runs in parts on the pool (from 32 images: one job a
    batch, counted): the same batch, bit for bit, as one call, plain and with flips and shifts
    (whose border is the whole batch's minimum, which every part finds), in float32 and
    float64; smaller batches stay in one call."""
    if not _pool_pays():
        pytest.skip("the pool is only installed with two or more BLAS threads and its callback")
    proc = _child(_GATHER_CHILD + """
        pixels = rng.integers(0, 256, (3000, 784), dtype=np.uint8)
        pixels[17, 5] = 0           # one dark pixel: the border's minimum in a part's images only
        pixels[pixels == 0] = 1
        pixels[17, 5] = 0
        results = []
        for dtype in ("float32", "float64"):
            rows, gather = EncodedRows(pixels, 0.286, 0.353, np.dtype(dtype)), FusedBatches(dtype)
            for n in (5, 31, 32, 37, 128, 512):
                for augmented in (False, True):
                    idx = rng.permutation(3000)[:n]
                    idx[-1] = 17            # in the last part
                    flips = rng.random(n) < 0.5 if augmented else None
                    offsets = rng.integers(0, 5, (n, 2)) if augmented else None
                    shift = 2 if augmented else 0
                    one = gather.fill(np.empty((n, 784), dtype), rows, idx, flips, offsets, shift)
                    pool = NativePool()
                    pool.install()
                    before = pool.products
                    parts = gather.fill(np.empty((n, 784), dtype), rows, idx, flips, offsets, shift)
                    jobs = pool.products - before
                    pool.close()
                    results.append([dtype, n, augmented, bool(np.array_equal(one, parts)), jobs])
        print(json.dumps(results))
    """, tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    results = json.loads(proc.stdout.strip().splitlines()[-1])
    assert len(results) == 24
    assert all(same and jobs == (1 if n >= 32 else 0) for _, n, _, same, jobs in results), results


def test_with_the_pool_no_pass_splits_onto_python_threads(tmp_path):
    """Batch norm over 16 feature-major units and 20,000 examples is below the pool's units
    and above the Python threads' size: with the pool installed it runs in one call (the pool's
    worker holds the second core), with the bits of the same steps without the pool, which do
    split it onto a Python thread."""
    if not _pool_pays():
        pytest.skip("the pool is only installed with two or more BLAS threads and its callback")
    proc = _child("""
        import hashlib, json, sys
        import numpy as np
        from fmnist_mlp.nn import MLP, kernels
        kernels.set_cache_dir(sys.argv[1])
        from fmnist_mlp.nn.kernels.blas_pool import NativePool

        def steps(with_pool):
            model = MLP(hidden=[16], batchnorm=True, layout="feature", seed=0, kernels="numba")
            rng = np.random.default_rng(0)
            x = rng.standard_normal((20000, 784), dtype=np.float32)
            y = rng.integers(0, 10, 20000)
            pool = NativePool() if with_pool else None
            if pool is not None:
                pool.install()
            for _ in range(2):
                model.loss_and_grad(x, y)
            if pool is not None:
                pool.close()
            split = model._fused._split.split._pool is not None    # a Python thread started
            return hashlib.sha256(model.grads.flat.tobytes()).hexdigest(), split

        (plain, split_plain), (pooled, split_pooled) = steps(False), steps(True)
        print(json.dumps([plain == pooled, split_plain, split_pooled]))
    """, tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert json.loads(proc.stdout.strip().splitlines()[-1]) == [True, True, False]


def test_pool_after_pool_each_serves_its_product(tmp_path):
    """Fifty pools in a row, each with a product at once: a stopped pool's last wake-up must not
    look like a job to the next pool's worker, and each pool's worker serves its product."""
    if not _pool_pays():
        pytest.skip("the pool is only installed with two or more BLAS threads and its callback")
    proc = _child("""
        import sys
        import numpy as np
        from fmnist_mlp.nn import kernels
        kernels.set_cache_dir(sys.argv[1])
        from fmnist_mlp.nn.kernels.blas_pool import NativePool
        a = np.ones((256, 1024), np.float32)
        want = a @ a.T
        served, last = 0, 0
        for _ in range(50):
            pool = NativePool()
            pool.install()                          # and the product at once, the GIL still held
            ok = np.array_equal(a @ a.T, want)
            count = pool.products                   # the count runs on across pools
            served, last = served + (count - last), count
            pool.close()
            assert ok
        print("served", served)
    """, tmp_path, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert int(proc.stdout.split()[-1]) == 50, proc.stdout


def test_a_forked_child_gets_blas_own_threads_back_and_does_not_hang(tmp_path):
    if not _pool_pays():
        pytest.skip("the pool is only installed with two or more BLAS threads and its callback")
    proc = _child("""
        import os, sys
        import numpy as np
        from fmnist_mlp.nn import kernels
        kernels.set_cache_dir(sys.argv[1])
        from fmnist_mlp.nn.kernels.blas_pool import NativePool
        a = np.ones((512, 1024), np.float32)
        pool = NativePool()
        pool.install()
        want = a @ a.T
        pid = os.fork()
        if pid == 0:                        # no workers here: OpenBLAS's own threads must run
            os._exit(0 if np.array_equal(a @ a.T, want) else 3)
        _, status = os.waitpid(pid, 0)
        print("child", os.waitstatus_to_exitcode(status), "served", pool.products)
        pool.close()
    """, tmp_path, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    line = proc.stdout.strip().splitlines()[-1].split()
    assert line[:2] == ["child", "0"] and int(line[3]) >= 1, proc.stdout


@pytest.mark.realdata
def test_ctrl_c_in_a_training_run_with_the_pool_stops_it_and_records_it(real_data_dir, tmp_path):
    """A real SIGINT to `fmnist-mlp train` on a wide net (the pool installed): the run stops with
    its interrupted exit code and says so, well inside the timeout."""
    if not _pool_pays():
        pytest.skip("the pool is only installed with two or more BLAS threads and its callback")
    env = {**os.environ, "PYTHONPATH": str(REPO), "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "fmnist_mlp", "train", "--set",
                             "model.hidden=[1024, 512]", "--set", "train.epochs=10", "--set",
                             "train.kernels=numba", "--set", "train.batch_size=256",
                             "--data-dir", str(real_data_dir), "--runs-dir", str(tmp_path / "runs"),
                             "--name", "wide"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
                            cwd=tmp_path)
    try:
        for line in proc.stderr:                    # an epoch done: the pool has served
            if re.search(r"epoch +1/", line):
                break
        time.sleep(0.3)                             # inside epoch 2, among the products
        proc.send_signal(signal.SIGINT)
        code = proc.wait(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    err = proc.stderr.read()
    assert code == 130, err[-2000:]
    assert "interrupted during epoch" in err and "Traceback" not in err, err[-2000:]
    (run_dir,) = (tmp_path / "runs").iterdir()
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["status"] == "interrupted" and summary["epochs_completed"] >= 1


def test_the_products_benchmark_with_the_pool_finishes_every_time(tmp_path):
    """The hang that found the start-up race: benchmarks.products' worker on 784-1024-512 with
    Adam (products on BLAS's own threads first, then the pool and at once a step). Before the fix
    one run in three waited for ever; five runs here, each with a timeout."""
    if not _pool_pays():
        pytest.skip("the pool is only installed with two or more BLAS threads and its callback")
    job = {"epochs": 1, "seed": 0, "warmup_batches": 5, "torch_optimizer_impl": "default",
           "kernels": "numba", "kind": "products", "engine": "numpy", "hidden": [1024, 512],
           "batch_size": 128, "optimizer": "adam", "dropout": 0.0, "rounds": 2, "steps": 5,
           "threads": 2}
    env = {**os.environ, "PYTHONPATH": str(REPO), "NUMBA_CACHE_DIR": str(tmp_path / "numba")}
    for _ in range(5):
        proc = subprocess.run([sys.executable, "-m", "benchmarks.worker", json.dumps(job)],
                              capture_output=True, text=True, timeout=120, env=env, cwd=REPO)
        assert proc.returncode == 0, proc.stderr[-2000:]
        assert 0 < json.loads(proc.stdout.strip().splitlines()[-1])["share"] <= 1.5


def test_a_batch_gathered_ahead_on_the_idle_worker_is_the_batch_of_one_call(tmp_path):
    """FusedBatches.start posts the next batch's gather as the pool's background job and returns;
    fill of that batch finishes it. Whether the idle worker did every part (the caller waited),
    the caller did them (filled at once), or both around products in between, the batch is the
    one call's, bit for bit, at every size from one image to several parts of 16; the worker
    ran parts; a batch filled into another buffer than it was started into is gathered anew;
    and a pool closed with a batch pending finishes it first, without hanging."""
    if not _pool_pays():
        pytest.skip("the pool is only installed with two or more BLAS threads and its callback")
    proc = _child(_GATHER_CHILD + """
        pixels = rng.integers(0, 256, (5000, 784), dtype=np.uint8)
        rows, gather = EncodedRows(pixels, 0.286, 0.353, np.float32), FusedBatches(np.float32)
        a = rng.standard_normal((256, 256), dtype=np.float32)
        sizes = [1, 31, 32, 33, 100, 128, 257, 512, 1100]
        wanted = {}
        for n in sizes:
            idx = rng.permutation(5000)[:n]
            wanted[n] = (idx, gather.fill(np.empty((n, 784), np.float32), rows, idx))
        pool = NativePool()
        pool.install()
        results = []
        for n in sizes:
            idx, one = wanted[n]
            for how in ("worker", "caller", "products"):
                out = np.full((n, 784), np.nan, np.float32)
                started = gather.start(out, rows, idx)
                if how == "worker":
                    time.sleep(0.01)
                elif how == "products":
                    for _ in range(3):
                        a @ a
                results.append([n, how, started, bool(np.array_equal(
                    gather.fill(out, rows, idx), one))])
        # Started into one buffer, filled into another: that one is gathered anew.
        idx, one = wanted[128]
        first, second = (np.full((128, 784), np.nan, np.float32) for _ in range(2))
        gather.start(first, rows, idx)
        other = bool(np.array_equal(gather.fill(second, rows, idx), one))
        ran = pool.background_parts
        gather.start(np.empty((512, 784), np.float32), rows, wanted[512][0])
        pool.close()
        print(json.dumps({"results": results, "other": other, "ran": ran}))
    """, tmp_path, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert all(same and started == (n >= 32) for n, _, started, same in out["results"]), out
    assert len(out["results"]) == 27 and out["other"] and out["ran"] > 0, out
