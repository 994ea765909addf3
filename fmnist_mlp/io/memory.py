"""The machine's memory, and whether an estimate fits in it (the estimates: :mod:`fmnist_mlp.nn.memory`)."""

from __future__ import annotations

import os

from fmnist_mlp.errors import ConfigError


def available_bytes() -> int:
    """Memory this process may use: MemAvailable (Linux), else physical memory; never more than
    what an address-space limit (``ulimit -v``, RLIMIT_AS) leaves it."""
    machine = _machine_bytes()
    left = _address_space_left()
    return machine if left is None else min(machine, left)


def _address_space_left() -> int | None:
    """RLIMIT_AS less the address space already mapped (VmSize), or None without a limit."""
    try:
        import resource

        soft, _ = resource.getrlimit(resource.RLIMIT_AS)
    except (ImportError, OSError, ValueError):
        return None
    if soft == resource.RLIM_INFINITY or soft < 0:
        return None
    used = 0
    try:
        with open("/proc/self/status", encoding="ascii") as f:
            for line in f:
                if line.startswith("VmSize:"):
                    used = int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return max(0, soft - used)


def _machine_bytes() -> int:
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
