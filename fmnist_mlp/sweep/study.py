"""The sweep directory and its Optuna study: creation, the spec check, and claiming trials.

Layout of a sweep directory::

    DIR/sweep.json       the spec as resolved (checked against on every later run), the study's
                         name and storage
    DIR/study.journal    Optuna's journal (file) storage, unless --storage names another
    DIR/runs/            one ordinary run directory per trial
    DIR/locks/           trial-N.lock, held (flock) by the worker training trial N
    DIR/.claim.lock      held while a worker picks its next trial

Why flock, not Optuna's heartbeat: the kernel releases a flock the moment its holder dies, however
it dies (SIGKILL, OOM, pre-emption), so a dead worker's trial can be taken over at once and
exactly once, with no grace period to tune; heartbeat-failed trials are marked FAIL and retried as
*new* trials, which would restart them from scratch and count them twice. flock works between the
processes of one machine and on shared filesystems that support it (NFSv4, Lustre and GPFS with
their lock options); a Slurm array on one node, or on nodes sharing such a filesystem, is covered.
"""

from __future__ import annotations

import fcntl
import json
import os
import secrets
import time
import warnings
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

from fmnist_mlp.errors import ConfigError, FmnistMlpError
from fmnist_mlp.sweep.spec import SweepSpec

INSTALL_HINT = "install optuna: pip install -e '.[sweep]'"


class OptunaMissing(FmnistMlpError):
    exit_code = 2


def import_optuna():
    try:
        import optuna
    except ImportError:
        raise OptunaMissing(INSTALL_HINT) from None
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    # A resumed trial re-reports the epochs after its checkpoint; Optuna keeps the first value.
    warnings.filterwarnings("ignore", message=".*is already reported.*")
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
    return optuna


@dataclass
class Sweep:
    dir: Path
    spec: SweepSpec | None
    info: dict[str, Any]        # sweep.json
    study: Any                  # optuna.Study

    @property
    def runs_dir(self) -> Path:
        return self.dir / "runs"

    @property
    def budget(self) -> int:
        return int(self.info["trials"])


def open_sweep(directory: str | Path, spec: SweepSpec | None = None,
               storage: str | None = None) -> Sweep:
    """Create the sweep directory for ``spec``, or open an existing one (``spec`` None: must
    exist). A different spec for an existing directory is refused."""
    optuna = import_optuna()
    directory = Path(directory)
    info_path = directory / "sweep.json"
    if spec is None and not info_path.is_file():
        raise ConfigError(f"{directory}: not a sweep directory (no sweep.json)")
    if spec is not None:
        _create_or_check(directory, spec, storage)
    try:
        info = json.loads(info_path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ConfigError(f"{info_path}: unreadable ({exc})") from None
    with claim_lock(directory):
        study = optuna.create_study(storage=make_storage(directory, info.get("storage")),
                                    study_name=info["study_name"], direction="maximize",
                                    load_if_exists=True)
    return Sweep(directory, spec, info, study)


def _create_or_check(directory: Path, spec: SweepSpec, storage: str | None) -> None:
    identity = spec.identity()
    info = {"fingerprint": spec.fingerprint(), "spec_file": spec.source, "trials": spec.trials,
            "study_name": f"fmnist-mlp-{directory.resolve().name}-{secrets.token_hex(3)}",
            "storage": storage, "spec": identity}
    try:
        (directory / "runs").mkdir(parents=True, exist_ok=True)
        (directory / "locks").mkdir(exist_ok=True)
    except OSError as exc:
        raise ConfigError(f"--dir {directory}: cannot create ({exc.strerror})") from None
    path = directory / "sweep.json"
    try:
        # O_EXCL: of several workers starting together, exactly one writes sweep.json.
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    except FileExistsError:
        existing = _read_info(path)
        if existing.get("fingerprint") != info["fingerprint"]:
            changed = [k for k in identity if identity[k] != existing.get("spec", {}).get(k)]
            raise ConfigError(f"{directory}: this sweep was started with a different spec "
                              f"(changed: {', '.join(changed) or 'spec'}); use a new --dir")
        if storage is not None and storage != existing.get("storage"):
            raise ConfigError(f"{directory}: this sweep's study is in "
                              f"{existing.get('storage') or 'its journal file'}, not {storage}")
        return
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        f.write(json.dumps(info, indent=2) + "\n")


def _read_info(path: Path) -> dict:
    for _ in range(50):        # another worker may be writing it this very moment
        try:
            info = json.loads(path.read_text(encoding="utf-8"))
            if isinstance(info, dict):
                return info
        except (OSError, json.JSONDecodeError):
            pass
        time.sleep(0.1)
    raise ConfigError(f"{path}: unreadable sweep file")


def make_storage(directory: Path, url: str | None):
    if url:
        return url
    from optuna.storages import JournalStorage
    from optuna.storages.journal import JournalFileBackend

    return JournalStorage(JournalFileBackend(str(directory / "study.journal")))


def make_sampler(spec: SweepSpec, salt: int):
    """A sampler seeded by the spec's seed and the trial count: reproducible, and workers that
    start together do not all draw the same first parameters."""
    optuna = import_optuna()
    seed = spec.seed * 1_000_003 + salt
    if spec.method == "grid":
        grid = {p.key: p.encoded_choices() for p in spec.space}
        return _grid_sampler_class()(grid, seed=spec.seed)
    if spec.method == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    return optuna.samplers.TPESampler(seed=seed)


def _grid_sampler_class():
    optuna = import_optuna()

    class GridSampler(optuna.samplers.GridSampler):
        """Optuna's grid sampler without its ``study.stop()`` once the grid is covered (only
        valid inside ``study.optimize``): the budget, the size of the grid, ends the sweep."""

        def after_trial(self, study, trial, state, values) -> None:
            pass

    return GridSampler


def make_pruner(spec: SweepSpec):
    optuna = import_optuna()
    kinds = {"none": optuna.pruners.NopPruner, "median": optuna.pruners.MedianPruner,
             "hyperband": optuna.pruners.HyperbandPruner}
    try:
        return kinds[spec.pruner](**spec.pruner_args)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"{spec.source}: pruner: {spec.pruner}: {exc}") from None


def suggest(trial, spec: SweepSpec) -> dict[str, Any]:
    """The trial's parameters as config values (choices decoded back to lists)."""
    params = {}
    for p in spec.space:
        if p.kind == "choice":
            value = trial.suggest_categorical(p.key, p.encoded_choices())
        elif p.kind == "int_uniform":
            value = trial.suggest_int(p.key, p.values[0], p.values[1], log=p.log)
        else:
            value = trial.suggest_float(p.key, p.values[0], p.values[1], log=p.log)
        params[p.key] = p.decode(value)
    return params


# A holder keeps the claim lock for one Optuna ask: well under a second, seconds on a slow shared
# file system, so even a large job array starting at once is through in minutes. A wait this
# long means a holder that is stopped (Ctrl-Z) or stuck.
CLAIM_WAIT_SECONDS = 600.0


@contextmanager
def claim_lock(directory: Path, wait: float = CLAIM_WAIT_SECONDS) -> Iterator[None]:
    """Serialises picking trials (and study creation) among all workers of the sweep.

    A dead holder's lock is released by the kernel; a live one that keeps it past ``wait``
    seconds is reported in one line rather than waited for forever."""
    path = directory / ".claim.lock"
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        deadline = time.monotonic() + wait
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    raise FmnistMlpError(
                        f"{path}: waited {wait:g} s for it; another worker of this sweep holds "
                        f"it and may be stopped (Ctrl-Z) or stuck: resume or end it, then run again"
                    ) from None
                time.sleep(0.05)
        yield
    finally:
        os.close(fd)


def try_lock_trial(directory: Path, number: int) -> int | None:
    """An open, exclusively locked fd for trial ``number``'s lock file, or None if a live
    worker holds it. Closing the fd (or the process dying) releases it."""
    fd = os.open(directory / "locks" / f"trial-{number}.lock", os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        return None
    return fd


def is_trial_held(directory: Path, number: int) -> bool:
    fd = try_lock_trial(directory, number)
    if fd is None:
        return True
    os.close(fd)
    return False
