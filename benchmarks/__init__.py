"""The speed benchmark: the NumPy engine and the identical PyTorch CPU loop, side by side.

``run`` orchestrates (one child process per measurement), ``worker`` measures inside a child,
``probes`` times the whole tool (``--help``, cache load, memory), ``overhead`` compares a real
``train`` epoch with the bare loop, ``targets`` checks issue 5's goals, ``report`` prints tables.
Kept free of imports so ``python -m benchmarks.worker`` starts clean.
"""
