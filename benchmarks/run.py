"""Benchmark: the engine, the identical PyTorch CPU loop and a jit-compiled JAX step, in one run.

Every measurement runs in a fresh child process (:mod:`benchmarks.worker`) whose BLAS and
OpenMP thread counts are set in its environment before NumPy or torch is imported, and the two
engines alternate case by case, so neither gets a warmer machine or the other's memory. The
float32 matrix-product peak is measured at the start and again at the end of the same run.

Public entry points: :func:`run_benchmark` (returns a JSON-serialisable dict),
:func:`format_report` (the readable tables) and :func:`write_results`.
"""

from __future__ import annotations

import datetime as _dt
import fnmatch
import importlib.util
import json
import os
import platform
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Callable

from benchmarks import probes as bench_probes
from benchmarks.report import format_report
from benchmarks.worker import OPTIMIZER_SETTINGS

__all__ = ["run_benchmark", "format_report", "write_results", "default_output_path", "benchmark_cases",
           "select_cases", "train_flops_per_sample", "model_flops_per_sample", "infer_flops_per_sample"]

SCHEMA = "fmnist-mlp-bench/1"
REPO_ROOT = bench_probes.REPO_ROOT
NETS = ((256, 128), (1024, 512))
BATCH_SIZES = (32, 128, 512)
OPTIMIZERS = ("momentum", "adam")
DROPOUTS = (0.0, 0.2)
# best.yaml's shape (3 × 1024, batch norm, dropout, Adam), one row beside the grid.
BEST_SHAPE = {"hidden": [1024, 1024, 1024], "batch_size": 128, "optimizer": "adam", "dropout": 0.2,
              "batchnorm": True}
# The step-vs-products table: these nets at batch 128, each optimiser.
PRODUCT_NETS = ((256, 128), (1024, 512), (1024, 1024, 1024))
# The key rows (small and large net at batch 128, momentum; Adam + dropout): a smoke run.
QUICK_CASES = ("784-256-128-10_b128_momentum_d0", "784-1024-512-10_b128_momentum_d0",
               "784-1024-512-10_b128_adam_d0.2")
EVAL_BATCH_SIZE = 2000  # the config's train.eval_batch_size default
PEAK_SIZE = 2048
THREAD_ENV_VARS = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS",
                   "VECLIB_MAXIMUM_THREADS", "NUMEXPR_NUM_THREADS")
FLOP_FORMULA = (
    "one matmul (N, D_in) @ (D_in, D_out) = 2*N*D_in*D_out FLOPs; per layer the forward pass is 1 "
    "matmul and the backward pass 2 (dW and dX), except the first layer, whose dX is not computed; "
    "train FLOPs/sample = sum over layers of 2*D_in*D_out*(3 if layer > 0 else 2); inference "
    "FLOPs/sample = sum over layers of 2*D_in*D_out; bias, activation, loss and optimiser work not counted. "
    "Model FLOPs/sample (the usual 6N convention) = 6 * sum over layers of D_in*D_out: it also counts "
    "the first layer's dX, which neither engine computes")
MEMORY_METHOD = (
    "per measuring child process (one engine, one job): VmHWM from /proc/self/status at its end "
    "(resource.getrusage(RUSAGE_SELF).ru_maxrss where /proc is missing; on Linux ru_maxrss of an "
    "exec'd child starts at the parent's high-water mark, so it would overstate); includes the "
    "interpreter, imported libraries and the float32 data copy. Default-config training: "
    "getrusage(RUSAGE_CHILDREN).ru_maxrss in a small wrapper process that runs only 'fmnist-mlp train'")

LOOPS = {
    "numpy": "fmnist_mlp.nn.MLP (relu, softmax + cross_entropy, float32) and optim.make_optimizer; per "
             "step: np.take (mode=clip, as the training loop gathers) of the shuffled batch into "
             "reused buffers, model.loss_and_grad (also returns "
             "loss and n_correct), optimizer.step at a constant lr",
    "jax": "benchmarks/jax_loop.py: the whole step (batch gather, forward, log-softmax cross-entropy, "
           "value_and_grad, the momentum/Adam update written out) one jax.jit call; dropout from "
           "jax.random; batch norm with batch statistics only; loss read once per epoch",
    "torch": "nn.Sequential(Linear, ReLU[, Dropout] ..., Linear), nn.CrossEntropyLoss, torch.optim.SGD"
             "(momentum) / Adam; per step: index_select of the same shuffled indices, zero_grad(set_to_none), "
             "forward, backward, step, loss.item() (accuracy not counted: favours torch); "
             "torch.set_num_threads(threads); inference under torch.inference_mode with softmax",
    "both": "same sizes, dtype float32, batch, optimiser hyperparameters, dropout, epoch orders (one numpy "
            "Generator, seed 0), warm-up batches; each engine and case in a fresh process, order alternating",
}


def case_name(hidden, batch_size: int, optimizer: str, dropout: float,
              batchnorm: bool = False) -> str:
    """E.g. ``784-256-128-10_b128_momentum_d0`` (dropout printed without a trailing .0; ``_bn``
    ends a batch-norm case's name)."""
    sizes = "-".join(str(s) for s in (784, *hidden, 10))
    return f"{sizes}_b{batch_size}_{optimizer}_d{dropout:g}" + ("_bn" if batchnorm else "")


def benchmark_cases() -> list[dict]:
    """The full grid (2 nets x 3 batch sizes x 2 optimisers x 2 dropout rates) and best.yaml's
    shape."""
    grid = [{"name": case_name(h, b, o, d), "hidden": list(h), "batch_size": b, "optimizer": o,
             "dropout": d}
            for h in NETS for b in BATCH_SIZES for o in OPTIMIZERS for d in DROPOUTS]
    return grid + [{"name": case_name(**BEST_SHAPE), **BEST_SHAPE}]


def select_cases(cases: list[dict], patterns: str | None, quick: bool) -> list[dict]:
    """Cases whose name matches any comma-separated glob in ``patterns``; --quick alone keeps 3."""
    if patterns:
        globs = [p.strip() for p in patterns.split(",") if p.strip()]
        chosen = [c for c in cases if any(fnmatch.fnmatchcase(c["name"], g) for g in globs)]
        if not chosen:
            raise ValueError(f"--cases {patterns!r} matches no case; names look like {cases[0]['name']}")
        return chosen
    return [c for c in cases if c["name"] in QUICK_CASES] if quick else cases


def layer_shapes(hidden) -> list[tuple[int, int]]:
    sizes = (784, *hidden, 10)
    return list(zip(sizes[:-1], sizes[1:]))


def train_flops_per_sample(hidden) -> int:
    """See FLOP_FORMULA: forward 1 matmul per layer, backward 2 except the first layer's dX."""
    return sum(2 * d_in * d_out * (3 if i > 0 else 2) for i, (d_in, d_out) in enumerate(layer_shapes(hidden)))


def model_flops_per_sample(hidden) -> int:
    """See FLOP_FORMULA: 6 FLOPs per weight per sample (forward 2, backward 4)."""
    return 6 * sum(d_in * d_out for d_in, d_out in layer_shapes(hidden))


def infer_flops_per_sample(hidden) -> int:
    return sum(2 * d_in * d_out for d_in, d_out in layer_shapes(hidden))


def default_threads() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def thread_env(threads: int) -> dict[str, str]:
    """The child's environment: every BLAS/OpenMP thread knob set to ``threads``."""
    env = dict(os.environ)
    env.update({var: str(threads) for var in THREAD_ENV_VARS})
    package_root = str(REPO_ROOT)          # children import benchmarks and fmnist_mlp from here
    env["PYTHONPATH"] = os.pathsep.join(p for p in (package_root, env.get("PYTHONPATH")) if p)
    return env


def run_child(job: dict, threads: int, timeout: float = 3600.0) -> dict:
    """Run one job in a fresh interpreter; a failure becomes ``{"error": "<last stderr line>"}``."""
    job = {**job, "threads": threads}
    proc = subprocess.run([sys.executable, "-m", "benchmarks.worker", json.dumps(job)],
                          env=thread_env(threads), capture_output=True, text=True, timeout=timeout)
    if proc.returncode != 0:
        lines = proc.stderr.strip().splitlines() or [f"exit status {proc.returncode}"]
        return {"error": lines[-1]}
    return json.loads(proc.stdout.strip().splitlines()[-1])


def prepare_data(workdir: Path, synthetic: int | None, data_dir: str | None) -> dict:
    """Save float32 (N, 784) images and int64 labels as .npy files the children load.

    Real data: all 60,000 training and 10,000 test images, scaled to [0, 1] and standardised
    with the training mean and std. Synthetic: ``synthetic`` Gaussian training rows and a sixth
    as many test rows (for tests and smoke runs without the dataset).
    """
    import numpy as np

    if synthetic:
        rng = np.random.default_rng(0)
        n_test = max(synthetic // 6, 1)
        arrays = {"train_x": rng.standard_normal((synthetic, 784), dtype=np.float32),
                  "train_y": rng.integers(0, 10, synthetic), "test_x":
                  rng.standard_normal((n_test, 784), dtype=np.float32), "test_y": rng.integers(0, 10, n_test)}
        source = f"synthetic ({synthetic} train, {n_test} test Gaussian rows)"
    else:
        from fmnist_mlp.data import load_raw

        raw = load_raw(data_dir, progress=False)
        train_x = raw.train_images.reshape(len(raw.train_images), -1).astype(np.float32) / 255.0
        mean, std = float(train_x.mean()), float(train_x.std())
        test_x = raw.test_images.reshape(len(raw.test_images), -1).astype(np.float32) / 255.0
        arrays = {"train_x": (train_x - mean) / std, "train_y": raw.train_labels,
                  "test_x": (test_x - mean) / std, "test_y": raw.test_labels}
        source = "real Fashion-MNIST (60,000 train, 10,000 test; scaled and standardised)"
    paths = {}
    for key, array in arrays.items():
        paths[key] = str(workdir / f"{key}.npy")
        dtype = np.float32 if key.endswith("_x") else np.int64
        np.save(paths[key], np.ascontiguousarray(array, dtype=dtype))
    return {"paths": paths, "source": source, "n_train": len(arrays["train_x"]),
            "n_test": len(arrays["test_x"])}


_FIXED_SETTINGS = {"dtype": "float32", "optimizers": OPTIMIZER_SETTINGS, "eval_batch_size": EVAL_BATCH_SIZE,
                   "thread_env_vars": list(THREAD_ENV_VARS)}


def _machine_info(threads: int, torch_available: bool) -> dict:
    import numpy as np

    cpu = ""
    try:
        cpu = next(line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo")
                   if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    from importlib.metadata import PackageNotFoundError, version

    def installed(dist: str) -> str | None:
        try:
            return version(dist)
        except PackageNotFoundError:
            return None

    return {"platform": platform.platform(), "cpu": cpu, "cpus_available": default_threads(),
            "threads": threads, "python": platform.python_version(), "numpy": np.__version__,
            "torch": installed("torch") if torch_available else None, "jax": installed("jax"),
            "numba": installed("numba"), "load_average": os.getloadavg(),
            "git_commit": _git_commit()}


def _git_commit() -> str | None:
    """HEAD of the working tree the engine was imported from, with ``+dirty`` for local changes."""
    root = REPO_ROOT
    try:
        head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True,
                              timeout=10).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=root,
                               capture_output=True, text=True, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    return (head + ("+dirty" if dirty else "")) or None


def _measure_case(case: dict, common: dict, engines: list[str], threads: int) -> dict:
    """Both engines on one case, in fresh children; the engine order is chosen by the caller."""
    flops, model_flops = train_flops_per_sample(case["hidden"]), model_flops_per_sample(case["hidden"])
    result = {**case, "train_flops_per_sample": flops, "model_flops_per_sample": model_flops}
    for engine in engines:
        result[engine] = run_child({**common, **case, "kind": "train", "engine": engine}, threads)
    numpy_rate = result["numpy"].get("samples_per_sec")
    if numpy_rate:
        result["numpy_gflops"] = numpy_rate * flops / 1e9
        result["numpy_model_gflops"] = numpy_rate * model_flops / 1e9
    torch_rate = result.get("torch", {}).get("samples_per_sec")
    if numpy_rate and torch_rate:
        result["torch_gflops"] = torch_rate * flops / 1e9
        result["torch_model_gflops"] = torch_rate * model_flops / 1e9
        result["ratio"] = numpy_rate / torch_rate
    jax_rate = result.get("jax", {}).get("samples_per_sec")
    if numpy_rate and jax_rate:
        result["jax_ratio"] = numpy_rate / jax_rate
    return result


def _measure_products(common: dict, threads: int, quick: bool) -> list[dict]:
    """The step-vs-products rows: each net of PRODUCT_NETS at batch 128, each optimiser."""
    rows = []
    for hidden in PRODUCT_NETS[:1] if quick else PRODUCT_NETS:
        for optimizer in OPTIMIZERS:
            job = {**common, "kind": "products", "engine": "numpy", "hidden": list(hidden),
                   "batch_size": 128, "optimizer": optimizer, "dropout": 0.0,
                   "rounds": 3 if quick else 10}
            rows.append({"net": case_name(hidden, 0, "", 0).split("_")[0], "optimizer": optimizer,
                         **run_child(job, threads)})
    return rows


def _measure_peak(engines: list[str], threads: int, repeats: int, size: int) -> dict:
    """NumPy's (and torch's) float32 matmul peak; JAX has no peak probe of its own."""
    return {engine: run_child({"kind": "peak", "engine": engine, "size": size, "repeats": repeats}, threads)
            for engine in engines if engine != "jax"}


def _measure_inference(nets, common: dict, engines: list[str], threads: int, repeats: int) -> list[dict]:
    rows = []
    for i, hidden in enumerate(nets):
        row = {"net": case_name(hidden, 0, "", 0).split("_")[0], "hidden": list(hidden),
               "batch_size": EVAL_BATCH_SIZE, "infer_flops_per_sample": infer_flops_per_sample(hidden)}
        for engine in engines if i % 2 == 0 else engines[::-1]:
            row[engine] = run_child({**common, "kind": "infer", "engine": engine, "hidden": list(hidden),
                                     "dropout": 0.0, "optimizer": "momentum",
                                     "batch_size": EVAL_BATCH_SIZE, "repeats": repeats}, threads)
        rates = [row.get(e, {}).get("samples_per_sec") for e in ("numpy", "torch")]
        if rates[0]:
            row["numpy_gflops"] = rates[0] * row["infer_flops_per_sample"] / 1e9
        if all(rates):
            row["ratio"] = rates[0] / rates[1]
        rows.append(row)
    return rows


def _add_share_of_peak(results: dict) -> None:
    peaks = [p.get("gflops") for p in (results["peak"]["start"].get("numpy", {}),
                                       results["peak"]["end"].get("numpy", {})) if p.get("gflops")]
    results["peak"]["numpy_best_gflops"] = max(peaks) if peaks else None
    if not peaks:
        return
    for row in results["cases"] + results["inference"]:
        for engine in ("numpy", "torch"):
            for kind in ("", "model_"):
                if f"{engine}_{kind}gflops" in row:
                    row[f"{engine}_{kind}pct_of_peak"] = 100.0 * row[f"{engine}_{kind}gflops"] / max(peaks)


def run_benchmark(*, quick: bool = False, cases: str | None = None, epochs: int | None = None,
                  threads: int | None = None, use_torch: bool = True, synthetic: int | None = None,
                  data_dir: str | None = None, skip: tuple[str, ...] = (), peak_size: int = PEAK_SIZE,
                  torch_optimizer_impl: str = "default", use_jax: bool = True,
                  kernels: str = "auto",
                  progress: Callable[[str], None] = lambda message: None) -> dict:
    """Run the whole benchmark and return the results as a JSON-serialisable dict.

    ``skip`` may name the extra sections ``inference``, ``overhead`` (bare loop vs real train),
    ``cli`` (--help time), ``cache`` (decoded-data cache load) and ``rss`` (default-config
    training's peak RSS). ``synthetic`` replaces the real data with N random rows; ``peak_size``
    shrinks the peak matmul (tests only: a small product does not reach the BLAS peak). Torch's own
    matmul peak is measured for context, except with ``quick``. ``torch_optimizer_impl``
    (default | foreach | fused) picks torch's optimiser kernels; ``kernels`` (auto | numpy |
    numba) the engine's (``train.kernels``). ``skip`` may also name ``products`` (the
    step-vs-products table). JAX runs as a third engine where it is importable (``use_jax``).
    """
    threads = threads or default_threads()
    torch_available = use_torch and importlib.util.find_spec("torch") is not None
    jax_available = use_jax and importlib.util.find_spec("jax") is not None
    engines = ["numpy"] + ["torch"] * torch_available + ["jax"] * jax_available
    selected = select_cases(benchmark_cases(), cases, quick)
    epochs = epochs or (1 if quick else 3)
    repeats = 3 if quick else 10
    results = {"schema": SCHEMA, "started": _dt.datetime.now().isoformat(timespec="seconds"),
               "command": sys.argv, "machine": _machine_info(threads, torch_available),
               "flop_formula": FLOP_FORMULA, "memory_method": MEMORY_METHOD, "loops": LOOPS,
               "torch_skipped_reason": None if torch_available else
               ("--no-torch" if not use_torch else "torch is not importable"),
               "jax_skipped_reason": None if jax_available else
               ("--no-jax" if not use_jax else "jax is not importable")}
    with tempfile.TemporaryDirectory(prefix="fmnist-bench-") as workdir:
        progress("preparing data")
        data = prepare_data(Path(workdir), synthetic, data_dir)
        common = {"epochs": epochs, "seed": 0, "warmup_batches": 5 if quick else 20,
                  "torch_optimizer_impl": torch_optimizer_impl, "kernels": kernels}
        results["settings"] = {"quick": quick, **common, "threads": threads, "data": data["source"],
                               "n_train": data["n_train"], "n_test": data["n_test"], "peak_repeats": repeats,
                               "peak_size": peak_size, **_FIXED_SETTINGS}
        progress(f"float32 matmul peak ({peak_size}x{peak_size})")
        results["peak"] = {"start": _measure_peak(["numpy"] if quick else engines, threads, repeats, peak_size)}
        results["cases"] = []
        for i, case in enumerate(selected):
            order = engines if i % 2 == 0 else engines[::-1]
            progress(f"[{i + 1}/{len(selected)}] {case['name']} ({' then '.join(order)})")
            results["cases"].append(_measure_case(case, {**common, "data": data["paths"]}, order, threads))
        results["inference"] = []
        if "inference" not in skip:
            nets = sorted({tuple(c["hidden"]) for c in selected})
            progress("inference on the test set")
            results["inference"] = _measure_inference(nets, {**common, "data": data["paths"]}, engines,
                                                      threads, repeats)
        results["products"] = []
        if "products" not in skip:
            progress("a step against its matrix products alone")
            results["products"] = _measure_products(common, threads, quick)
        results["extras"] = bench_probes.run_probes(
            skip=skip, quick=quick, threads=threads, data_dir=data_dir, synthetic=synthetic,
            progress=progress, thread_env=thread_env(threads), run_child=run_child)
        progress("float32 matmul peak again (end of run)")
        results["peak"]["end"] = _measure_peak(["numpy"], threads, repeats, peak_size)
    _add_share_of_peak(results)
    results["finished"] = _dt.datetime.now().isoformat(timespec="seconds")
    return results


def default_output_path(now: _dt.datetime | None = None) -> Path:
    stamp = (now or _dt.datetime.now()).strftime("%Y%m%d-%H%M%S")
    return Path("bench-results") / f"bench-{stamp}.json"


def write_results(results: dict, path: Path) -> Path:
    """Write the results as indented JSON, atomically (fmnist_mlp.io.files.atomic_write)."""
    from fmnist_mlp.io.files import atomic_write_text

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    return atomic_write_text(path, json.dumps(results, indent=2) + "\n")
