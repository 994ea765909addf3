"""How much memory a model needs, estimated from its sizes before anything is allocated.

A width of 100,000 or 2**62 must end in one line naming the estimate and the machine's memory,
not in a MemoryError traceback half-way through building the model (or a NumPy error about
negative dimensions once a size overflows int64). The estimate is deliberately simple and on the
generous side: every array the training holds, counted once.
"""

from __future__ import annotations

import os
from typing import Sequence

from fmnist_mlp.errors import ConfigError

# Per parameter: the value, its gradient, one scratch array, and up to two optimiser slots (Adam).
ARRAYS_PER_PARAMETER = 5
# Per unit of a layer, per example of a batch: pre-activation, activation, dropout mask, gradient.
ARRAYS_PER_ACTIVATION = 4


def parameter_count(input_size: int, hidden: Sequence[int], num_classes: int,
                    batchnorm: bool = False) -> int:
    """Weights and biases of the layers (plus gamma, beta and two running statistics with BN)."""
    widths = [int(input_size), *(int(h) for h in hidden), int(num_classes)]
    count = sum(a * b + b for a, b in zip(widths, widths[1:]))
    return count + (4 * sum(widths[1:-1]) if batchnorm else 0)


def training_bytes(input_size: int, hidden: Sequence[int], num_classes: int, batch_size: int,
                   eval_batch_size: int, itemsize: int, *, data_rows: int,
                   batchnorm: bool = False) -> int:
    """Bytes a training needs: parameters with gradients and optimiser state, the work arrays of a
    training and an evaluation batch, and the data itself (``data_rows`` images, held as float rows
    and once as uint8). Python ints: never overflows."""
    widths = [int(input_size), *(int(h) for h in hidden), int(num_classes)]
    params = parameter_count(input_size, hidden, num_classes, batchnorm)
    work = (int(batch_size) * ARRAYS_PER_ACTIVATION + int(eval_batch_size) * 2) * sum(widths)
    data = int(data_rows) * input_size * (itemsize + 1)
    return (params * ARRAYS_PER_PARAMETER + work) * itemsize + data


def available_bytes() -> int:
    """Memory this process may use: MemAvailable (Linux), else physical memory."""
    try:
        with open("/proc/meminfo", encoding="ascii") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return 1 << 62


def format_bytes(n: int) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB", "PiB", "EiB"):
        if n < 1024 or unit == "EiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.3g} EiB"      # pragma: no cover


def check_fits(needed: int, what: str, available: int | None = None) -> None:
    """Raise ConfigError (exit 2) when ``needed`` bytes exceed the memory available."""
    available = available_bytes() if available is None else available
    if needed > available:
        need = format_bytes(needed) if needed < 1 << 70 else f"2^{needed.bit_length()} bytes"
        raise ConfigError(f"{what}: needs about {need} of memory (estimated), this machine has "
                          f"{format_bytes(available)} available; use smaller layers or batches")
