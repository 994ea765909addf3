"""Readable tables from a benchmark results dict (pure: dict in, text out)."""

from __future__ import annotations


def _num(value, fmt: str = ",.0f") -> str:
    return "-" if value is None else format(value, fmt)


def _table(headers: list[str], rows: list[list[str]]) -> str:
    """Left-aligned first column, right-aligned others, widths fitted to the content."""
    widths = [max(len(str(r[i])) for r in [headers, *rows]) for i in range(len(headers))]

    def line(cells):
        return "  ".join(str(c).ljust(w) if i == 0 else str(c).rjust(w)
                         for i, (c, w) in enumerate(zip(cells, widths)))

    return "\n".join([line(headers), line(["-" * w for w in widths]), *map(line, rows)])


def _error_note(row: dict, engine: str) -> str:
    error = row.get(engine, {}).get("error") if isinstance(row.get(engine), dict) else None
    return f"  {row.get('name', row.get('net'))} [{engine}] failed: {error}" if error else ""


NOISY_SPREAD = 0.2  # slowest epoch over fastest epoch beyond this: mark the number as noisy


def _rate(run: dict) -> str:
    """Samples/s, with '*' when this run's epochs differed by more than NOISY_SPREAD."""
    noisy = (run.get("epoch_spread") or 0.0) > NOISY_SPREAD
    return _num(run.get("samples_per_sec")) + ("*" if noisy else "")


def training_table(results: dict) -> str:
    headers = ["case", "numpy samples/s", "torch samples/s", "ratio", "jax samples/s", "ratio jax",
               "GFLOP/s", "% of peak", "% of peak (6N)", "torch GFLOP/s", "numpy MB", "torch MB"]
    rows, notes = [], []
    for case in results["cases"]:
        numpy_row, torch_row, jax_row = (case.get(e, {}) for e in ("numpy", "torch", "jax"))
        rows.append([case["name"], _rate(numpy_row), _rate(torch_row),
                     _num(case.get("ratio"), ".2f"), _rate(jax_row), _num(case.get("jax_ratio"), ".2f"),
                     _num(case.get("numpy_gflops"), ".1f"),
                     _num(case.get("numpy_pct_of_peak"), ".1f"),
                     _num(case.get("numpy_model_pct_of_peak"), ".1f"), _num(case.get("torch_gflops"), ".1f"),
                     _num(numpy_row.get("peak_rss_mb")), _num(torch_row.get("peak_rss_mb"))])
        notes += [n for n in (_error_note(case, e) for e in ("numpy", "torch", "jax")) if n]
    if any("*" in cell for row in rows for cell in row[1:5]):
        notes.append(f"  * epoch times of that run differed by more than {NOISY_SPREAD:.0%}: the machine was busy")
    return "\n".join([_table(headers, rows), *notes])


def inference_table(results: dict) -> str:
    headers = ["net (test set)", "numpy samples/s", "torch samples/s", "ratio", "GFLOP/s", "% of peak",
               "numpy MB", "torch MB"]
    rows, notes = [], []
    for row in results["inference"]:
        numpy_row, torch_row = row.get("numpy", {}), row.get("torch", {})
        rows.append([row["net"], _num(numpy_row.get("samples_per_sec")), _num(torch_row.get("samples_per_sec")),
                     _num(row.get("ratio"), ".2f"), _num(row.get("numpy_gflops"), ".1f"),
                     _num(row.get("numpy_pct_of_peak"), ".1f"), _num(numpy_row.get("peak_rss_mb")),
                     _num(torch_row.get("peak_rss_mb"))])
        notes += [n for n in (_error_note(row, "numpy"), _error_note(row, "torch")) if n]
    return "\n".join([_table(headers, rows), *notes])


def products_table(results: dict) -> str:
    """The step against its matrix products alone (share = products / step), and the update's
    memory traffic beside a plain copy's."""
    headers = ["net (batch 128)", "optimizer", "step ms", "products ms", "share", "update ms",
               "update GB/s", "copy GB/s"]
    rows = []
    for row in results["products"]:
        if "error" in row:
            rows.append([row["net"], row["optimizer"], "failed: " + row["error"], "", "", "", "", ""])
            continue
        rows.append([row["net"], row["optimizer"], _num(1e3 * row["step_seconds"], ".3f"),
                     _num(1e3 * row["products_seconds"], ".3f"), _num(row["share"], ".2f"),
                     _num(1e3 * row["update_seconds"], ".3f"), _num(row["update_gb_per_s"], ".1f"),
                     _num(row["copy_gb_per_s"], ".1f")])
    return _table(headers, rows)


def _peak_line(results: dict) -> str:
    peak = results["peak"]
    start = peak["start"].get("numpy", {}).get("gflops")
    end = peak["end"].get("numpy", {}).get("gflops")
    torch_peak = peak["start"].get("torch", {}).get("gflops")
    size = results["settings"]["peak_size"]
    line = (f"float32 {size}x{size} matmul peak (numpy): start {_num(start, '.1f')}, end {_num(end, '.1f')}, "
            f"best {_num(peak.get('numpy_best_gflops'), '.1f')} GFLOP/s; torch {_num(torch_peak, '.1f')} GFLOP/s")
    if start and end and abs(start - end) > 0.15 * max(start, end):
        line += "\nWARNING: the peak moved by more than 15 % during the run: the machine was busy; rerun when quiet"
    return line


def _extras_lines(results: dict) -> list[str]:
    extras = results.get("extras", {})
    lines = []
    labels = {"help": ("fmnist-mlp --help", "best_seconds", "s"),
              "data_cache": ("decoded data from cache (fresh process)", "fresh_process_seconds", "s"),
              "default_train": ("peak RSS, train configs/default.yaml", "peak_rss_mb", "MB"),
              "train_overhead": ("real train epoch / bare loop epoch", "ratio", "x")}
    for key, (label, field, unit) in labels.items():
        if key not in extras:
            continue
        value = extras[key]
        text = value["error"] if "error" in value else f"{_num(value.get(field), '.3f')} {unit}"
        lines.append(f"  {label}: {text}")
    return lines


def format_report(results: dict) -> str:
    """All tables as one string: settings, peak, training, inference, whole-tool probes."""
    settings, machine = results["settings"], results["machine"]
    parts = [
        f"fmnist-mlp benchmark  {results['started']}  {machine['cpu']}  threads={settings['threads']}  "
        f"numpy {machine['numpy']}  torch {machine['torch'] or '(not run: ' + str(results['torch_skipped_reason']) + ')'}"
        f"  jax {machine.get('jax') if not results.get('jax_skipped_reason') else '(not run: ' + str(results.get('jax_skipped_reason')) + ')'}"
        f"  engine kernels: {settings.get('kernels', 'numpy')} (numba {machine.get('numba')})"
        f"  load average {' '.join(format(x, '.2f') for x in machine.get('load_average', ()))}",
        f"data: {settings['data']}; {settings['epochs']} timed epoch(s) per case after "
        f"{settings['warmup_batches']} warm-up batches; float32; torch optimiser kernels: "
        f"{settings['torch_optimizer_impl']}",
        _peak_line(results), "", "Training throughput (full epochs)", training_table(results),
    ]
    if results.get("products"):
        parts += ["", "A training step against its matrix products alone (one process, alternating)",
                  products_table(results)]
    if results["inference"]:
        parts += ["", f"Inference throughput (eval batch {results['inference'][0]['batch_size']})",
                  inference_table(results)]
    extra_lines = _extras_lines(results)
    if extra_lines:
        parts += ["", "Whole tool", *extra_lines]
    return "\n".join(parts)
