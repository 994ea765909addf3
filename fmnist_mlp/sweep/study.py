"""The sweep directory and its Optuna study: creation, the spec check, sweep.json read back.

Layout of a sweep directory::

    DIR/sweep.json       the spec as resolved (checked against on every later run), the study's
                         name, storage and budget
    DIR/study.journal    Optuna's journal (file) storage, unless --storage names another
    DIR/runs/            one ordinary run directory per trial (the study stores its name only)
    DIR/locks/           journal only: trial-N.lock, held (flock) by the worker training trial N
    DIR/.claim.lock      journal only: held while a worker picks its next trial

Two coordinators, by storage. With the journal file (one machine), flock (flocks.py): the kernel
releases it the moment its holder dies, however it dies, so a dead worker's trial is taken over at
once and exactly once. With a database (many machines), the database alone (ownership.py): a claim lock
held in the database and Optuna's trial heartbeat, because many cluster filesystems keep flock
per node (BeeGFS without global locks, Lustre with localflock, NFS mounted local_lock). Either way
a taken-over trial is the same trial, resumed from its run's checkpoint, counted once.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, TypeVar

from fmnist_mlp.errors import ConfigError, FmnistMlpError, require_extra
from fmnist_mlp.io.files import atomic_write
from fmnist_mlp.io.paths import make_folder
from fmnist_mlp.io.printable import printable
from fmnist_mlp.sweep.flocks import claim_lock
from fmnist_mlp.sweep.ownership import heartbeat_settings
from fmnist_mlp.sweep.spec import SweepSpec
from fmnist_mlp.sweep.storage import (StorageRef, check_reachable, make_storage, parse_storage,
                                      refuse_for_workers, where_of)

T = TypeVar("T")
BUDGET_KEY, SPEC_KEY = "fmnist_mlp:budget", "fmnist_mlp:spec"   # the study's user attributes

def import_optuna():
    optuna = require_extra("optuna", "sweep")
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    # A resumed trial re-reports the epochs after its checkpoint; Optuna keeps the first value.
    warnings.filterwarnings("ignore", message=".*is already reported.*")
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
    # Trial heartbeats are recorded by our own thread (ownership.Heartbeat), not study.optimize's.
    warnings.filterwarnings("ignore", message=".*Heartbeat of storage is supposed to be used.*")
    return optuna


@dataclass
class Sweep:
    """An open sweep. What its directory and storage settle is resolved once, when it is opened,
    into plain values (``runs_dir``, ``budget``, ``coordinated_by_database``, ``call``) that the
    worker reads as they are, instead of asking this module again for each one."""
    dir: Path
    spec: SweepSpec | None
    info: dict[str, Any]        # sweep.json
    study: Any                  # optuna.Study
    ref: StorageRef | None = None
    rdb: Any = None             # the RDBStorage when the study is in a database
    storage: Any = None         # the Optuna storage the study was opened on (new trials are asked
                                # on it, each with its own sampler: claim.py)
    read_only: bool = False
    # (interval, grace) of the trials' heartbeats (database), from the environment when opened
    heartbeat: tuple[int, int] = field(default_factory=heartbeat_settings)
    runs_dir: Path = field(init=False)      # DIR/runs: one run directory per trial
    budget: int = field(init=False)         # info["trials"], raised by refresh_budget
    coordinated_by_database: bool = field(init=False)
    # ``call(fn, what, log=None)``: ``fn()``, a call on the study; with a database, retried while
    # it is away (weather.py), each attempt within the per-call time limit. Chosen once.
    call: Callable[..., Any] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self.runs_dir = self.dir / "runs"
        self.budget = int(self.info["trials"])
        self.coordinated_by_database = self.rdb is not None
        self.call = _study_call(self.ref, self.rdb)

    def refresh_budget(self) -> int:
        """The budget as the study holds it now (another copy of DIR may have extended it)."""
        stored = self.study.user_attrs.get(BUDGET_KEY)
        if _is_budget(stored) and stored > self.budget:
            self.info = {**self.info, "trials": stored}
            self.budget = stored
        return self.budget

    def run_dir_of(self, stored: str | None) -> Path | None:
        """A trial's run directory from its stored name: relative to DIR (a moved sweep still
        finds its runs); only ever a folder of DIR/runs, whatever the study says."""
        if not stored or not isinstance(stored, str):
            return None
        name = Path(stored).name
        if name in ("", ".", ".."):
            return None
        return self.runs_dir / name


def _direct(fn: Callable[[], T], what: str, log: Callable[[str], None] | None = None) -> T:
    """A call on the journal file: made as it is, as there is no server to wait for."""
    return fn()


def _study_call(ref: StorageRef | None, rdb: Any) -> Callable[..., Any]:
    """How every call on the study is made: directly (the journal file), or retried while the
    database is away, each attempt within the per-call time limit (weather.py)."""
    if rdb is None:
        return _direct
    from fmnist_mlp.sweep import weather

    where, watchdog = where_of(ref), rdb.watchdog

    def retried(fn: Callable[[], T], what: str, log: Callable[[str], None] | None = None) -> T:
        return weather.call(fn, what, where, log=log or weather.to_stderr, watchdog=watchdog)
    return retried


def open_sweep(directory: str | Path, spec: SweepSpec | None = None,
               storage: str | None = None, *, read_only: bool = False,
               trials: int | None = None, note: Callable[[str], None] | None = None) -> Sweep:
    """Create the sweep directory for ``spec``, or open an existing one (``spec`` None: must
    exist). A different spec for an existing directory is refused; ``trials`` above the recorded
    budget extends it. ``read_only``: write nothing, to DIR or to the study (status, report).

    The storage is checked (its server reached) before DIR is created, so a bad URL leaves
    nothing behind."""
    optuna = import_optuna()
    beat = heartbeat_settings()         # a bad FMNIST_MLP_SWEEP_* value: one line, before DIR
    pruner = make_pruner(spec) if spec is not None else None      # (a bad one: before DIR too)
    directory = Path(directory).absolute()
    info_path = directory / "sweep.json"
    if spec is None or info_path.exists() or info_path.is_symlink():
        if spec is None and not info_path.exists():
            raise ConfigError(f"{directory}: not a sweep directory (no sweep.json)")
        info = read_info(info_path)
        ref = parse_storage(info["storage"])
        if spec is not None:
            _check_same_sweep(directory, info, spec, storage, ref)
            info = _extend_budget(directory, info, spec, trials, note)
        existed = True
    else:
        ref = parse_storage(storage)
        refuse_for_workers(ref)
        check_reachable(ref)
        info = _create(directory, spec, ref, trials)
        existed = False
    if spec is not None:
        refuse_for_workers(ref)
        if ref.kind == "journal":
            _check_locks_dir(directory)
    backend = make_storage(ref, directory, read_only=read_only,
                           heartbeat=beat if ref.is_database else None, patient=existed)
    rdb = backend if ref.is_database else None
    sweep = Sweep(directory, spec, info, None, ref, rdb, backend, read_only, beat)
    sweep.call(lambda: _open_study(optuna, sweep, pruner), "opening the study")
    return sweep


def _open_study(optuna, sweep: Sweep, pruner) -> None:
    """The study opened (made if it is not there yet, unless read-only) with the spec's pruner,
    and the budget settled with it. Journal: both under the claim lock, so of several workers
    starting together one creates the study, and each reads and raises the budget in turn."""
    if sweep.read_only or sweep.ref.kind != "journal":
        sweep.study = _load_study(optuna, sweep.storage, sweep.info, sweep.ref,
                                  create=not sweep.read_only, pruner=pruner)
        _budget_in_study(sweep)
        return
    with claim_lock(sweep.dir):
        sweep.study = _load_study(optuna, sweep.storage, sweep.info, sweep.ref, create=True,
                                  pruner=pruner)
        _budget_in_study(sweep)


def _is_budget(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and 1 <= value <= 10**6


def _budget_in_study(sweep: Sweep) -> None:
    """The study holds the budget (and the spec): the one truth for every copy of DIR. A larger
    budget here is written to the study; a larger one there is taken (sweep.json in this copy
    may be older)."""
    stored = sweep.study.user_attrs.get(BUDGET_KEY)
    if sweep.read_only:
        sweep.refresh_budget()
        return
    if not _is_budget(stored) or stored < sweep.budget:
        sweep.study.set_user_attr(BUDGET_KEY, sweep.budget)
        if SPEC_KEY not in sweep.study.user_attrs:
            sweep.study.set_user_attr(SPEC_KEY, _without_budget(sweep.info["spec"]))
    sweep.refresh_budget()


def _load_study(optuna, backend, info, ref: StorageRef, create: bool, pruner=None):
    """The study, opened (``create``: made if it is not there yet) with the spec's pruner."""
    name = info["study_name"]
    try:
        if not create:
            study = optuna.load_study(study_name=name, storage=backend)
        else:
            study = optuna.create_study(storage=backend, study_name=name, direction="maximize",
                                        load_if_exists=True, pruner=pruner)
        study.get_trials(deepcopy=False)        # damage in the records shows here, as one line
    except KeyError:
        raise ConfigError(f"{ref.shown}: holds no study {name!r} (sweep.json names it); "
                          f"wrong --storage, or the study was deleted") from None
    except FmnistMlpError:
        raise
    except Exception as exc:    # a damaged journal record: any of Optuna's replay errors
        from fmnist_mlp.sweep.weather import is_storage_error

        if is_storage_error(exc):       # the database away: retried by the caller
            raise
        raise ConfigError(f"{ref.shown}: the study's records are damaged "
                          f"({type(exc).__name__}: {printable(exc)[:160]})") from None
    return study


def study_name_for(directory: Path, spec: SweepSpec) -> str:
    """The same directory name and spec give the same study: two machines that each name the
    sweep's folder (on a shared filesystem, or each its own copy) and one database URL meet in
    one study instead of making two."""
    text = json.dumps(_without_budget(spec.identity()), sort_keys=True)
    return f"fmnist-mlp-{directory.name}-{hashlib.sha256(text.encode()).hexdigest()[:8]}"


def _without_budget(identity: dict) -> dict:
    return {k: v for k, v in identity.items() if k != "trials"}


def _create(directory: Path, spec: SweepSpec, ref: StorageRef, trials: int | None) -> dict:
    """DIR made whole (its runs/ and, journal, locks/ folders, then sweep.json), in one call;
    or, when another worker starting together wrote sweep.json first, its sweep, checked."""
    identity = spec.identity()
    budget = _budget(spec, trials)
    info = {"fingerprint": spec.fingerprint(), "spec_file": spec.source, "trials": budget,
            "study_name": study_name_for(directory, spec), "storage": ref.url, "spec": identity}
    folders = ("runs", "locks") if ref.kind == "journal" else ("runs",)
    if make_folder(directory, "--dir", ConfigError, subfolders=folders,
                   first=("sweep.json", _info_bytes(info))):
        return info
    existing = read_info(directory / "sweep.json")
    _check_same_sweep(directory, existing, spec, ref.url, parse_storage(existing["storage"]))
    return _extend_budget(directory, existing, spec, trials)


def _info_bytes(info: dict) -> bytes:
    return (json.dumps(info, indent=2) + "\n").encode("utf-8")


def _budget(spec: SweepSpec, trials: int | None) -> int:
    if trials is None:
        return spec.trials
    if spec.method == "grid":
        raise ConfigError(f"--trials: a grid's budget is its size ({spec.trials})")
    return trials


def _check_same_sweep(directory: Path, info: dict, spec: SweepSpec, storage: str | None,
                      ref: StorageRef) -> None:
    identity = _without_budget(spec.identity())
    recorded = _without_budget(info["spec"])
    if identity != recorded:
        changed = [k for k in identity if identity[k] != recorded.get(k)]
        raise ConfigError(f"{directory}: this sweep was started with a different spec "
                          f"(changed: {', '.join(changed) or 'spec'}); use a new --dir")
    if storage is not None and parse_storage(storage).url != ref.url:
        raise ConfigError(f"{directory}: this sweep's study is in {ref.shown}, not "
                          f"{parse_storage(storage).shown}")


def _extend_budget(directory: Path, info: dict, spec: SweepSpec, trials: int | None,
                   note: Callable[[str], None] | None = None) -> dict:
    """A larger budget (``--trials N``, or the spec's ``trials`` raised) extends the sweep; a
    smaller ``--trials`` is refused, as trials already run cannot be unrun. A smaller ``trials``
    in the spec file is what it was before ``--trials`` extended the sweep: said, and kept."""
    wanted = _budget(spec, trials)
    if trials is None and wanted < info["trials"]:
        if note is not None:
            note(f"{spec.source}: trials: {wanted} is below this sweep's budget of "
                 f"{info['trials']} (extended with --trials); continuing with {info['trials']}")
        return info
    if wanted == info["trials"]:
        return info
    if wanted < info["trials"]:
        raise ConfigError(f"{directory}: this sweep's budget is {info['trials']} trials; "
                          f"it can be extended (--trials N above it), not reduced to {wanted}")
    info = {**info, "trials": wanted}
    atomic_write(directory / "sweep.json", _info_bytes(info), base=directory)
    return info


def _check_locks_dir(directory: Path) -> None:
    """The journal's flock scheme needs DIR/locks as a folder it may write in: said at once,
    not as a raw errno after a wait."""
    locks = directory / "locks"
    if locks.is_symlink() or not locks.is_dir():
        raise ConfigError(f"{locks}: is not a folder (the sweep keeps its trial locks there); "
                          f"move it away")
    if not os.access(locks, os.W_OK | os.X_OK) or not os.access(directory, os.W_OK | os.X_OK):
        raise ConfigError(f"{locks}: not writable (workers lock their trials there); a "
                          f"read-only sweep can be read with `sweep status` and `sweep report --out`")


def read_info(path: Path) -> dict:
    """sweep.json, checked: any damage (not a mapping, a missing or edited field) is one line."""
    for attempt in range(50):       # another worker may be writing it this very moment
        try:
            fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
            with os.fdopen(fd, "rb") as f:
                raw = json.loads(f.read(1 << 20).decode("utf-8"))
            break
        except FileNotFoundError:
            raise ConfigError(f"{path.parent}: not a sweep directory (no sweep.json)") from None
        except OSError as exc:
            raise ConfigError(f"{path}: unreadable ({exc.strerror})") from None
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            if attempt == 49:
                raise ConfigError(f"{path}: unreadable sweep file ({exc})") from None
            time.sleep(0.1)
    problem = _info_problem(raw)
    if problem:
        raise ConfigError(f"{path}: damaged sweep file ({problem}); it is not safe to continue it")
    return raw


def _info_problem(raw: Any) -> str | None:
    from fmnist_mlp.sweep.spec import param_from_record

    if not isinstance(raw, dict):
        return f"expected a mapping, got {type(raw).__name__}"
    name = raw.get("study_name")
    if not isinstance(name, str) or not name or len(name) > 512:
        return "no study_name"
    trials = raw.get("trials")
    if isinstance(trials, bool) or not isinstance(trials, int) or not 1 <= trials <= 10**6:
        return "trials is not a whole number from 1 to 1000000"
    if raw.get("storage") is not None and not isinstance(raw.get("storage"), str):
        return "storage is not a URL"
    spec = raw.get("spec")
    if not isinstance(spec, dict) or not isinstance(spec.get("space"), dict) or not spec["space"]:
        return "no search space"
    if not isinstance(spec.get("base_config"), dict) or spec.get("metric") != "best_val_acc":
        return "no base config or metric"
    for key, entry in spec["space"].items():
        try:
            param_from_record(key, entry)
        except ConfigError as exc:
            return f"space: {exc}"
    return None


def make_pruner(spec: SweepSpec):
    optuna = import_optuna()
    kinds = {"none": optuna.pruners.NopPruner, "median": optuna.pruners.MedianPruner,
             "hyperband": optuna.pruners.HyperbandPruner}
    try:
        return kinds[spec.pruner](**spec.pruner_args)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"{spec.source}: pruner: {spec.pruner}: {exc}") from None
