"""One benchmark measurement, run in a fresh child process.

The parent (:mod:`benchmarks.run`) starts ``python -m benchmarks.worker '<job json>'``
with the BLAS/OpenMP thread variables already in the environment, so they take effect before
NumPy or torch is imported here. The child prints exactly one JSON object on its last stdout
line. Every child reports its own peak resident memory (VmHWM, see :func:`_peak_rss_mb`), which
therefore covers one engine and one job only: the float32 data copy, the imported libraries and
the model, optimiser and work buffers.

Job kinds (``job["kind"]``): ``peak`` (float32 matmul GFLOP/s), ``train`` (full epochs after a
warm-up), ``infer`` (forward passes over the test set), ``load_raw`` (decoded-data cache),
``overhead`` (bare loop vs the real training path, :mod:`benchmarks.overhead`) and ``products``
(a training step against its matrix products alone, :mod:`benchmarks.products`).
``job["engine"]`` is ``numpy`` (the engine, with ``job["kernels"]``: auto | numpy | numba),
``torch`` or ``jax`` (:mod:`benchmarks.jax_loop`).
"""

from __future__ import annotations

import json
import resource
import sys
import time

# The hyperparameters the benchmark grid names; the same values drive both engines.
OPTIMIZER_SETTINGS = {
    "momentum": {"lr": 0.01, "momentum": 0.9},
    "adam": {"lr": 1e-3, "beta1": 0.9, "beta2": 0.999, "eps": 1e-8},
}


def _peak_rss_mb() -> float:
    """Peak resident set size of this process's own memory so far, in MiB.

    VmHWM from /proc/self/status where it exists: ``ru_maxrss`` of a freshly exec'd child starts
    at its parent's high-water mark (Linux carries it across fork+exec), so with a parent that
    held the dataset it would report the parent's peak, not the child's.
    """
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024.0
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def _load_arrays(job: dict, part: str):
    """The float32 images (N, 784) and int64 labels (N,) the parent saved for ``part``."""
    import numpy as np

    x = np.load(job["data"][f"{part}_x"])
    y = np.load(job["data"][f"{part}_y"])
    return np.ascontiguousarray(x, dtype=np.float32), np.ascontiguousarray(y, dtype=np.int64)


def _epoch_orders(n: int, epochs: int, seed: int):
    """The shuffled sample orders, one (n,) int64 array per epoch, shared by both engines."""
    import numpy as np

    rng = np.random.default_rng(seed)
    return [rng.permutation(n) for _ in range(epochs)]


# ---------------------------------------------------------------------------------------- peak
def measure_peak(job: dict) -> dict:
    """Best-of-``repeats`` GFLOP/s of a float32 (size x size) @ (size x size) product."""
    size, repeats = job["size"], job["repeats"]
    if job["engine"] == "torch":
        import torch

        torch.set_num_threads(job["threads"])
        a, b = torch.randn(size, size), torch.randn(size, size)
        c = torch.empty(size, size)
        matmul = lambda: torch.mm(a, b, out=c)  # noqa: E731
    else:
        import numpy as np

        rng = np.random.default_rng(0)
        a = rng.standard_normal((size, size), dtype=np.float32)
        b = rng.standard_normal((size, size), dtype=np.float32)
        c = np.empty((size, size), dtype=np.float32)
        matmul = lambda: np.matmul(a, b, out=c)  # noqa: E731
    for _ in range(2):  # warm-up: thread pool start, page faults on c
        matmul()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        matmul()
        times.append(time.perf_counter() - start)
    flops = 2.0 * size**3
    return {"gflops": flops / min(times) / 1e9, "seconds": times, "size": size}


# --------------------------------------------------------------------------------- NumPy engine
def _numpy_model_and_optimizer(job: dict):
    from fmnist_mlp.data.download import user_cache_dir
    from fmnist_mlp.nn import MLP, kernels
    from fmnist_mlp.nn.optim import make_optimizer

    kernels.set_cache_dir(user_cache_dir() / "kernels")     # where `train` caches them too
    choice = job.get("kernels", "auto")
    model = MLP(input_size=784, hidden=tuple(job["hidden"]), num_classes=10, activation="relu",
                output="softmax", loss="cross_entropy", dropout=job["dropout"],
                batchnorm=job.get("batchnorm", False), dtype="float32", seed=job["seed"],
                kernels=choice)
    settings = OPTIMIZER_SETTINGS[job["optimizer"]]
    optimizer = make_optimizer(job["optimizer"], model.params, kernels=choice, **settings)
    return model, optimizer, settings["lr"]


def _numpy_train(job: dict) -> dict:
    """The bare engine loop: gather a batch into a reused buffer, loss_and_grad, step."""
    import numpy as np

    x, y = _load_arrays(job, "train")
    model, optimizer, lr = _numpy_model_and_optimizer(job)
    batch = job["batch_size"]
    xb = np.empty((batch, x.shape[1]), dtype=np.float32)
    yb = np.empty(batch, dtype=np.int64)
    dropout_rng = np.random.default_rng(job["seed"] + 1)

    def run(order) -> tuple[float, int]:
        loss_sum, correct = 0.0, 0
        for start in range(0, len(order), batch):
            idx = order[start:start + batch]
            n = len(idx)
            np.take(x, idx, axis=0, out=xb[:n], mode="clip")
            np.take(y, idx, out=yb[:n], mode="clip")
            loss, n_correct = model.loss_and_grad(xb[:n], yb[:n], rng=dropout_rng)
            optimizer.step(model.params, model.grads, lr)
            loss_sum += loss * n
            correct += n_correct
        return loss_sum / len(order), correct

    result = _timed_epochs(job, len(x), run)
    result["kernels"] = {"layers": model.kernels, "optimizer": optimizer.kernels}
    return result


# ---------------------------------------------------------------------------------- torch loop
def _torch_net(job: dict):
    """nn.Linear + ReLU (+ Dropout after each hidden ReLU, as the engine places it)."""
    import torch
    from torch import nn

    torch.manual_seed(job["seed"])
    layers, width = [], 784
    for hidden in job["hidden"]:
        if job.get("batchnorm"):            # as the engine: no bias before batch norm
            layers += [nn.Linear(width, hidden, bias=False), nn.BatchNorm1d(hidden), nn.ReLU()]
        else:
            layers += [nn.Linear(width, hidden), nn.ReLU()]
        if job["dropout"] > 0:
            layers.append(nn.Dropout(job["dropout"]))
        width = hidden
    layers.append(nn.Linear(width, 10))
    return nn.Sequential(*layers)


def _torch_train(job: dict) -> dict:
    """The idiomatic fast torch loop: index_select a batch, forward, cross-entropy, backward, step."""
    import torch

    torch.set_num_threads(job["threads"])
    x_np, y_np = _load_arrays(job, "train")
    x, y = torch.from_numpy(x_np), torch.from_numpy(y_np)
    net = _torch_net(job).train()
    settings = OPTIMIZER_SETTINGS[job["optimizer"]]
    # "default" lets torch choose its implementation; "foreach"/"fused" force the multi-tensor or
    # fused kernels, so a faster torch baseline can be checked on a quiet machine.
    impl = job.get("torch_optimizer_impl", "default")
    impl_kwargs = {} if impl == "default" else {impl: True}
    if job["optimizer"] == "momentum":
        optimizer = torch.optim.SGD(net.parameters(), lr=settings["lr"], momentum=settings["momentum"],
                                    **impl_kwargs)
    else:
        optimizer = torch.optim.Adam(net.parameters(), lr=settings["lr"], eps=settings["eps"],
                                     betas=(settings["beta1"], settings["beta2"]), **impl_kwargs)
    loss_fn = torch.nn.CrossEntropyLoss()
    batch = job["batch_size"]

    def run(order) -> tuple[float, int]:
        order_t = torch.from_numpy(order)
        loss_sum = 0.0
        for start in range(0, len(order), batch):
            idx = order_t[start:start + batch]
            xb, yb = x.index_select(0, idx), y.index_select(0, idx)
            optimizer.zero_grad(set_to_none=True)
            loss = loss_fn(net(xb), yb)
            loss.backward()
            optimizer.step()
            loss_sum += loss.item() * len(idx)
        # Accuracy is not counted here (the engine counts it for free); this favours torch.
        return loss_sum / len(order), -1

    return _timed_epochs(job, len(x_np), run)


# ------------------------------------------------------------------------------ shared timing
def _timed_epochs(job: dict, n: int, run) -> dict:
    """Warm up on ``warmup_batches`` batches, then time ``epochs`` full shuffled epochs.

    ``run(order) -> (mean loss, n_correct)`` trains once over the samples in ``order``.
    """
    orders = _epoch_orders(n, job["epochs"] + 1, job["seed"])
    run(orders[0][: job["warmup_batches"] * job["batch_size"]])
    epoch_seconds, loss, correct = [], float("nan"), -1
    for order in orders[1:]:
        start = time.perf_counter()
        loss, correct = run(order)
        epoch_seconds.append(time.perf_counter() - start)
    total = sum(epoch_seconds)
    return {
        "samples_per_sec": job["epochs"] * n / total,
        "best_epoch_samples_per_sec": n / min(epoch_seconds),
        # Slowest over fastest epoch minus 1: large values mean the machine was busy.
        "epoch_spread": max(epoch_seconds) / min(epoch_seconds) - 1.0,
        "epoch_seconds": epoch_seconds,
        "samples_per_epoch": n,
        "last_epoch_loss": loss,
        "last_epoch_acc": correct / n if correct >= 0 else None,
    }


# ------------------------------------------------------------------------------------ inference
def _infer(job: dict) -> dict:
    """Best-of-``repeats`` time of eval-mode softmax outputs for the whole test set."""
    x_np, _ = _load_arrays(job, "test")
    batch = job["batch_size"]
    if job["engine"] == "torch":
        import torch

        torch.set_num_threads(job["threads"])
        net = _torch_net(job).eval()
        x = torch.from_numpy(x_np)

        def run_once():
            with torch.inference_mode():
                for start in range(0, len(x), batch):
                    torch.softmax(net(x[start:start + batch]), dim=1)
    else:
        model, _, _ = _numpy_model_and_optimizer(job)

        def run_once():
            for start in range(0, len(x_np), batch):
                model.forward(x_np[start:start + batch])

    run_once()  # warm-up
    times = []
    for _ in range(job["repeats"]):
        start = time.perf_counter()
        run_once()
        times.append(time.perf_counter() - start)
    return {"samples_per_sec": len(x_np) / min(times), "seconds": times, "samples": len(x_np)}


def _load_raw(job: dict) -> dict:
    """Seconds for two load_raw calls in this (fresh) process: the first reads the cache."""
    from fmnist_mlp.data import load_raw

    seconds = []
    for _ in range(2):
        start = time.perf_counter()
        load_raw(job.get("data_dir"), progress=False)
        seconds.append(time.perf_counter() - start)
    return {"first_call_seconds": seconds[0], "second_call_seconds": seconds[1]}


def run_job(job: dict) -> dict:
    """Dispatch one job; the result always carries ``peak_rss_mb`` of this process."""
    kind, engine = job["kind"], job.get("engine", "numpy")
    if kind == "peak":
        result = measure_peak(job)
    elif kind == "train" and engine == "jax":
        from benchmarks.jax_loop import jax_train

        result = jax_train(job, _load_arrays, _timed_epochs)
    elif kind == "train":
        result = _torch_train(job) if engine == "torch" else _numpy_train(job)
    elif kind == "products":
        from benchmarks.products import measure_products

        result = measure_products(job, _numpy_model_and_optimizer)
    elif kind == "infer":
        result = _infer(job)
    elif kind == "load_raw":
        result = _load_raw(job)
    elif kind == "overhead":
        from benchmarks.overhead import measure_train_overhead

        result = measure_train_overhead(job.get("config"), job.get("data_dir"), job["timed_epochs"])
    else:
        raise ValueError(f"unknown benchmark job kind {kind!r}")
    result["peak_rss_mb"] = _peak_rss_mb()
    return result


if __name__ == "__main__":
    print(json.dumps(run_job(json.loads(sys.argv[1]))))
