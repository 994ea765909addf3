"""The benchmark harness (benchmarks/, beside the package): a tiny --quick run on synthetic data,
the FLOP count, case selection and the memory probe. No timing assertions: numbers must exist, be finite and
positive, and be combined correctly; how large they are is the benchmark's business."""

from __future__ import annotations

import importlib.util
import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

from benchmarks import probes as bench_probes, run as bench

REPO = Path(__file__).resolve().parents[1]
BENCH = [sys.executable, "-m", "benchmarks"]      # run from REPO, as `make bench` does
HAS_TORCH = importlib.util.find_spec("torch") is not None
HAS_JAX = importlib.util.find_spec("jax") is not None
SMALL_CASE = "784-256-128-10_b32_adam_d0.2"


def _positive(value) -> bool:
    return isinstance(value, (int, float)) and math.isfinite(value) and value > 0


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory):
    """One tiny end-to-end run of the script (torch included when importable)."""
    out = tmp_path_factory.mktemp("bench") / "result.json"
    proc = subprocess.run(
        [*BENCH, "--quick", "--synthetic", "256", "--cases", SMALL_CASE,
         "--threads", "1", "--skip", "cli", "--peak-size", "256", "--out", str(out)],
        capture_output=True, text=True, cwd=REPO, timeout=300)
    assert proc.returncode == 0, proc.stderr
    return proc, json.loads(out.read_text())


def test_quick_run_writes_complete_json(quick_run):
    _, results = quick_run
    assert results["schema"] == bench.SCHEMA
    assert "2*N*D_in*D_out" in results["flop_formula"] and "VmHWM" in results["memory_method"]
    assert results["settings"]["n_train"] == 256 and results["settings"]["threads"] == 1
    assert _positive(results["peak"]["start"]["numpy"]["gflops"])
    assert _positive(results["peak"]["end"]["numpy"]["gflops"])
    best = results["peak"]["numpy_best_gflops"]
    assert best == max(results["peak"]["start"]["numpy"]["gflops"], results["peak"]["end"]["numpy"]["gflops"])

    [case] = results["cases"]
    assert (case["name"], case["hidden"], case["batch_size"], case["optimizer"], case["dropout"]) == \
        (SMALL_CASE, [256, 128], 32, "adam", 0.2)
    numpy_run = case["numpy"]
    assert _positive(numpy_run["samples_per_sec"]) and _positive(numpy_run["peak_rss_mb"])
    assert len(numpy_run["epoch_seconds"]) == 1 and numpy_run["samples_per_epoch"] == 256
    assert math.isfinite(numpy_run["last_epoch_loss"])
    assert case["numpy_gflops"] == pytest.approx(numpy_run["samples_per_sec"] * case["train_flops_per_sample"] / 1e9)
    assert case["numpy_pct_of_peak"] == pytest.approx(100 * case["numpy_gflops"] / best)
    assert case["numpy_model_pct_of_peak"] == pytest.approx(
        100 * numpy_run["samples_per_sec"] * case["model_flops_per_sample"] / 1e9 / best)

    [inference] = results["inference"]
    assert inference["net"] == "784-256-128-10" and _positive(inference["numpy"]["samples_per_sec"])


@pytest.mark.skipif(not HAS_TORCH, reason="torch is not installed (optional bench extra)")
def test_quick_run_measures_torch_side_by_side(quick_run):
    _, results = quick_run
    [case] = results["cases"]
    assert _positive(case["torch"]["samples_per_sec"]) and math.isfinite(case["torch"]["last_epoch_loss"])
    assert case["ratio"] == pytest.approx(case["numpy"]["samples_per_sec"] / case["torch"]["samples_per_sec"])
    [inference] = results["inference"]
    assert inference["ratio"] == pytest.approx(
        inference["numpy"]["samples_per_sec"] / inference["torch"]["samples_per_sec"])
    assert results["machine"]["torch"] and results["torch_skipped_reason"] is None


@pytest.mark.skipif(not HAS_JAX, reason="jax is not installed (optional bench extra)")
def test_quick_run_measures_jax_side_by_side(quick_run):
    _, results = quick_run
    [case] = results["cases"]
    assert _positive(case["jax"]["samples_per_sec"]) and math.isfinite(case["jax"]["last_epoch_loss"])
    assert case["jax_ratio"] == pytest.approx(case["numpy"]["samples_per_sec"] / case["jax"]["samples_per_sec"])
    assert results["machine"]["jax"] and results["jax_skipped_reason"] is None


@pytest.mark.parametrize("kernels", ["numpy", "numba"])
def test_the_products_measurement_trains_on_finite_weights(kernels):
    """The step-vs-products bursts must not poison the steps they time: the products' own
    outputs start as zeros and the update alone runs at lr 0. Before, uninitialised logits and a
    fixed gradient applied hundreds of times overflowed the weights, and the timed steps ran on
    inf and NaN."""
    import numpy as np

    from benchmarks.products import measure_products
    from benchmarks.worker import _numpy_model_and_optimizer

    if kernels == "numba":
        pytest.importorskip("numba")
    built = []

    def build(job):
        built.append(_numpy_model_and_optimizer(job))
        return built[-1]

    job = {"hidden": [256, 128], "batch_size": 64, "optimizer": "momentum", "dropout": 0.0,
           "seed": 0, "steps": 5, "rounds": 4, "kernels": kernels}
    with np.errstate(over="raise", invalid="raise"):
        result = measure_products(job, build)
    model = built[0][0]
    assert np.isfinite(model.params.flat).all() and np.abs(model.params.flat).max() < 10
    assert result["kernels"]["layers"] == kernels


def test_the_blas_spin_measurement_reports_each_thread_and_both_splits(capsys):
    """benchmarks.blas_spin on a small pass: every thread's CPU share (the main one marked), and
    the pass on one thread and split, alone and after a product, with their ratio."""
    import re

    pytest.importorskip("numba")
    from benchmarks import blas_spin

    blas_spin.main(["--size", "100000", "--seconds", "0.05", "--repeats", "3"])
    out = capsys.readouterr().out
    shares = re.findall(r"thread (\d+)( \(main\))?: (\d+\.\d+)", out)
    assert sum(1 for _, main, _ in shares if main) == 1, out
    assert all(float(share) > 0 for _, main, share in shares if main), out
    for where in ("standing alone", "right after a product"):
        line = re.search(rf"{where}: one thread (\d+), split over two (\d+) \(split / one "
                         rf"thread (\d+\.\d+)\)", out)
        assert line and int(line[1]) > 0 and int(line[2]) > 0, out


def test_quick_run_times_a_step_against_its_matrix_products(quick_run):
    proc, results = quick_run
    rows = results["products"]
    assert [(r["net"], r["optimizer"]) for r in rows] == [("784-256-128-10", "momentum"),
                                                         ("784-256-128-10", "adam")]
    for row in rows:
        assert _positive(row["step_seconds"]) and _positive(row["products_seconds"])
        # Each round's products over its own step (bursts back to back), the median of those.
        pairs = list(zip(row["products_rounds"], row["step_rounds"]))
        assert len(pairs) == 3 and all(_positive(p) and _positive(s) for p, s in pairs)
        ratios = sorted(p / s for p, s in pairs)
        assert row["share"] == pytest.approx(ratios[1])
        assert _positive(row["update_gb_per_s"]) and _positive(row["copy_gb_per_s"])
        assert row["parameters"] == 784 * 256 + 256 + 256 * 128 + 128 + 128 * 10 + 10
    assert "A training step against its matrix products alone" in proc.stdout


def test_quick_run_prints_the_table(quick_run):
    proc, _ = quick_run
    header = next(line for line in proc.stdout.splitlines() if line.startswith("case "))
    for column in ("numpy samples/s", "torch samples/s", "ratio", "GFLOP/s", "% of peak", "% of peak (6N)"):
        assert column in header
    assert any(line.startswith(SMALL_CASE) for line in proc.stdout.splitlines())


def test_train_flops_count_forward_once_backward_twice_except_first_dx():
    # 784-256-128-10: layer 0 has forward + dW only; the others forward + dW + dX.
    expected = 2 * (784 * 256 * 2 + 256 * 128 * 3 + 128 * 10 * 3)
    assert bench.train_flops_per_sample((256, 128)) == expected
    assert bench.infer_flops_per_sample((256, 128)) == 2 * (784 * 256 + 256 * 128 + 128 * 10)
    assert bench.train_flops_per_sample(()) == 2 * 784 * 10 * 2
    # The 6N convention counts every weight's forward (2) and backward (4) FLOPs.
    assert bench.model_flops_per_sample((1024, 512)) == 6 * (784 * 1024 + 1024 * 512 + 512 * 10)


def test_grid_and_case_selection():
    cases = bench.benchmark_cases()
    assert len(cases) == 25 and len({c["name"] for c in cases}) == 25
    assert cases[-1]["name"] == "784-1024-1024-1024-10_b128_adam_d0.2_bn"       # best.yaml's shape
    assert cases[-1]["batchnorm"] and cases[-1]["hidden"] == [1024, 1024, 1024]
    quick = bench.select_cases(cases, None, quick=True)
    assert [c["name"] for c in quick] == list(bench.QUICK_CASES)
    chosen = bench.select_cases(cases, "784-1024-512-10_b512_*, *_b32_momentum_d0", quick=False)
    assert {c["name"] for c in chosen} == {
        "784-1024-512-10_b512_momentum_d0", "784-1024-512-10_b512_momentum_d0.2",
        "784-1024-512-10_b512_adam_d0", "784-1024-512-10_b512_adam_d0.2",
        "784-256-128-10_b32_momentum_d0", "784-1024-512-10_b32_momentum_d0"}
    with pytest.raises(ValueError, match="matches no case"):
        bench.select_cases(cases, "no-such-case", quick=False)


def test_unmatched_cases_is_a_one_line_error_without_traceback(tmp_path):
    out = tmp_path / "never.json"
    proc = subprocess.run([*BENCH, "--cases", "nope*", "--synthetic", "64",
                           "--out", str(out)], capture_output=True, text=True, cwd=REPO, timeout=60)
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr and "--cases 'nope*' matches no case" in proc.stderr
    assert not out.exists()


def test_peak_rss_of_command_sees_the_childs_allocation():
    allocate = "import numpy as np; a = np.ones(200 * 2**20, dtype=np.uint8); print(a.sum() > 0)"
    result = bench_probes.peak_rss_of_command([sys.executable, "-c", allocate])
    assert result["peak_rss_mb"] >= 200
    with pytest.raises(RuntimeError, match="exited with 3"):
        bench_probes.peak_rss_of_command([sys.executable, "-c", "raise SystemExit(3)"])


def test_time_command_reports_the_best_of_its_repeats():
    result = bench_probes.time_command([sys.executable, "-c", "pass"], repeats=2)
    assert len(result["seconds"]) == 2 and result["best_seconds"] == min(result["seconds"]) > 0


# ------------------------------------------------------------------ probes on the real data files
REAL_DATA = Path("/usr/share/datasets/fashion-mnist")
TINY = ("data.subset=600", "data.val_size=200", "model.hidden=[16]", "train.batch_size=100")




@pytest.mark.realdata
def test_train_overhead_times_bare_epochs_around_real_ones(real_data_dir):
    from benchmarks.overhead import measure_train_overhead

    result = measure_train_overhead(str(bench_probes.DEFAULT_CONFIG), str(real_data_dir), timed_epochs=1,
                                    overrides=TINY)
    assert len(result["bare_epoch_seconds"]) == 2 and len(result["real_epoch_seconds"]) == 1
    assert all(_positive(s) for s in result["bare_epoch_seconds"] + result["real_epoch_seconds"])
    mean_bare = sum(result["bare_epoch_seconds"]) / 2
    assert result["ratio"] == pytest.approx(result["real_epoch_seconds"][0] / mean_bare)


@pytest.mark.realdata
def test_cache_load_probe_times_a_fresh_process(real_data_dir):
    result = bench_probes.measure_cache_load(str(real_data_dir), 1, bench.run_child)
    assert "error" not in result, result
    for key in ("fresh_process_seconds", "same_process_second_call_seconds", "first_ever_call_seconds",
                "peak_rss_mb"):
        assert _positive(result[key])


@pytest.mark.slow
def test_before_after_compares_every_row_of_two_checkouts():
    # The same checkout on both sides: every row is timed on each round, and the ratios are
    # finite and positive (how close to 1 they are is load, not something a test can assert).
    from benchmarks import ab

    ratios = ab.compare(REPO, REPO, rounds=2)
    assert len(ratios) == 2 * (len(ab.OPTIMIZERS) + 1)
    assert all(len(r) == 2 and all(_positive(v) for v in r) for r in ratios.values())


def test_the_sums_benchmark_checks_the_kernels_bits_and_times_both(capsys):
    """benchmarks.sums: a line per batch size with NumPy's and the kernel's times, after the
    kernel's sums were found bit-identical to NumPy's (it stops otherwise)."""
    import re

    pytest.importorskip("numba")
    from benchmarks import sums

    sums.main(["--units", "42", "--batches", "13,300", "--repeats", "3"])
    lines = capsys.readouterr().out.strip().splitlines()
    assert [re.match(r"42 units x (\d+): sum NumPy \d+ us, kernel \d+ us; sum of products "
                     r"NumPy \d+ us, kernel \d+ us \(bit-identical\)$", line)[1]
            for line in lines] == ["13", "300"], lines


@pytest.mark.parametrize("pool", ["native", "python"])
def test_the_blas_pool_measurement_runs_products_on_its_pool_with_the_same_bits(pool):
    """benchmarks.blas_pool: a process a side, BLAS's own threads and the callback's pool (the
    engine's compiled one, nn/kernels/blas_pool.py, or Python threads), the step split into its parts;
    products go through the pool, and the weights come out the same."""
    import re
    import subprocess
    import sys
    from pathlib import Path

    pytest.importorskip("numba")
    proc = subprocess.run([sys.executable, "-m", "benchmarks.blas_pool", "--hidden", "256",
                           "--batch-size", "128", "--optimizer", "momentum", "--steps", "5",
                           "--rounds", "1", "--pool", pool], capture_output=True, text=True,
                          timeout=300, cwd=Path(__file__).resolve().parents[1])
    if "no set_threads_callback_function" in proc.stderr:
        pytest.skip("this NumPy's BLAS has no threads callback")
    assert proc.returncode == 0, proc.stderr[-2000:]
    lines = proc.stdout.strip().splitlines()
    for name in ("BLAS's own threads", f"a {pool} pool"):
        assert any(re.match(rf"  {name} +gather +\d+  loss_and_grad +\d+  update +\d+  step +\d+$",
                            line) for line in lines), proc.stdout
    through = re.search(r"products through the pool: (\d+) a process; the weights after the "
                        r"steps: bit-identical on both sides", proc.stdout)
    assert through and int(through[1]) > 0, proc.stdout


@pytest.mark.parametrize("batchnorm", [False, True])
def test_the_step_parts_benchmark_times_every_part_of_a_fused_step(batchnorm, capsys):
    """benchmarks.step_parts: the products, the fused passes (batch norm's only with batch norm),
    the head, the gather and the update each took time inside the step, and less than it."""
    pytest.importorskip("numba")
    from benchmarks import step_parts

    parts = step_parts.main(["--hidden", "32,16", "--batch-size", "64", "--steps", "5",
                             "--rounds", "1", "--optimizer", "adam"]
                            + (["--batchnorm"] if batchnorm else []))
    timed = ["products, forward", "products, backward", "chains, forward", "chains, backward",
             "the head", "the gather", "the update"]
    norm = ["batch norm, forward", "batch norm, backward", "batch norm's running averages (NumPy)"]
    assert all(_positive(parts[name]) for name in timed + (norm if batchnorm else [])), parts
    assert batchnorm or not set(norm) & set(parts), parts
    inside = sum(parts[name] for name in timed + (norm if batchnorm else []))
    assert parts["step"] > inside > parts["products, forward"] + parts["products, backward"]
    assert _positive(parts["the next batch's gather started"]), parts
    assert _positive(parts["step without ahead"]), parts       # rounds of their own
    assert capsys.readouterr().out.startswith("784-32-16-10, batch 64, adam")


def test_the_products_command_prints_a_share_per_row():
    """python -m benchmarks.products: one fresh process per row, a line each with the step, its
    products alone and the share between 0 and 1 (each round's pair divided)."""
    import re

    proc = subprocess.run([*BENCH[:2], "benchmarks.products", "--hidden", "32,16", "--optimizer",
                           "momentum", "--optimizer", "adam", "--rounds", "2", "--steps", "3",
                           "--threads", "1"], capture_output=True, text=True, cwd=REPO, timeout=300)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.strip().splitlines()
    found = [re.match(r"784-32-16-10, batch 128, (\w+): step ([\d.]+) ms, products ([\d.]+) ms, "
                      r"share ([\d.]+), update ([\d.]+) ms", line) for line in lines]
    assert [m[1] for m in found if m] == ["momentum", "adam"], lines
    assert all(0 < float(m[4]) <= 1.5 and float(m[2]) > 0 for m in found), lines
