"""Issue 5's speed targets, checked against one benchmark run's results (pure: dict in, rows out).

A target whose inputs the run did not measure (a case filtered out, torch missing, a probe that
failed) is reported with ``value`` None and ``met`` None rather than guessed.
"""

from __future__ import annotations

SMALL_B128 = "784-256-128-10_b128_momentum_d0"
LARGE_B128 = "784-1024-512-10_b128_momentum_d0"
LARGE_B128_ADAM_DROPOUT = "784-1024-512-10_b128_adam_d0.2"


def _case(results: dict, name: str) -> dict:
    return next((c for c in results.get("cases", []) if c["name"] == name), {})


def _get(row: dict, *keys):
    for key in keys:
        if not isinstance(row, dict) or key not in row:
            return None
        row = row[key]
    return row


def _row(target: str, value, op: str, threshold: float) -> dict:
    compare = {">=": float.__ge__, "<=": float.__le__, "<": float.__lt__}[op]
    met = None if value is None else bool(compare(float(value), float(threshold)))
    return {"target": target, "value": value, "op": op, "threshold": threshold, "met": met}


def _adam_dropout_cost(results: dict):
    """Time per sample of Adam + dropout 0.2 over SGD momentum, larger net, batch 128."""
    base = _get(_case(results, LARGE_B128), "numpy", "samples_per_sec")
    heavy = _get(_case(results, LARGE_B128_ADAM_DROPOUT), "numpy", "samples_per_sec")
    return base / heavy if base and heavy else None


def _inference_ratio(results: dict, net: str):
    return next((row.get("ratio") for row in results.get("inference", []) if row["net"] == net), None)


def evaluate_targets(results: dict) -> list[dict]:
    """One row per target: {target, value, op, threshold, met (True/False/None)}."""
    extras = results.get("extras", {})
    return [
        _row(f"{SMALL_B128}: numpy/torch train samples/s", _get(_case(results, SMALL_B128), "ratio"), ">=", 2.0),
        _row(f"{LARGE_B128}: numpy/torch train samples/s", _get(_case(results, LARGE_B128), "ratio"), ">=", 1.15),
        _row(f"{LARGE_B128}: numpy % of measured matmul peak, model FLOPs (6N, the issue's count)",
             _get(_case(results, LARGE_B128), "numpy_model_pct_of_peak"), ">=", 75.0),
        _row(f"{LARGE_B128}: numpy % of measured matmul peak, FLOPs executed",
             _get(_case(results, LARGE_B128), "numpy_pct_of_peak"), ">=", 75.0),
        _row("784-1024-512-10 b128: numpy time/sample, adam+dropout 0.2 over momentum",
             _adam_dropout_cost(results), "<=", 1.15),
        _row("784-256-128-10 inference: numpy/torch samples/s", _inference_ratio(results, "784-256-128-10"),
             ">=", 2.0),
        _row("784-1024-512-10 inference: numpy/torch samples/s", _inference_ratio(results, "784-1024-512-10"),
             ">=", 2.0),
        _row("real train epoch / bare loop epoch", _get(extras, "train_overhead", "ratio"), "<=", 1.15),
        _row("fmnist-mlp --help wall time (s)", _get(extras, "help", "best_seconds"), "<", 0.3),
        _row("decoded data from cache, fresh process (s)", _get(extras, "data_cache", "fresh_process_seconds"),
             "<", 0.5),
        _row("peak RSS training configs/default.yaml (MB)", _get(extras, "default_train", "peak_rss_mb"),
             "<", 500.0),
    ]
