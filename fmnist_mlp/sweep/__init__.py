"""Hyperparameter sweeps on Optuna: a spec (spec.py), its study (study.py), workers that train
trials as ordinary run directories (worker.py), Slurm job arrays (slurm.py), status and report.

Optuna is imported only by the modules that need it, so the spec can be checked without it.
"""
