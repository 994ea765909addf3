"""Every use of Optuna beyond its public API, behind one door.

The sweep needs a few things Optuna keeps private: the ids that name a study and a trial in the
storage, a handle on a trial asked by another process (to resume it as the same trial), the
stale-trial query of ``RDBStorage`` and its heartbeat table, and the journal's operation codes
(a new trial is asked with its own sampler through the public API: ``claim._ask``). They are all
here, so an Optuna release that moves one breaks this module alone;
``tests/test_sweep_optuna_versions.py`` runs this module's checks against the oldest and the
newest Optuna the ``sweep`` extra allows.
"""

from __future__ import annotations

from typing import Any


def study_id(study) -> int:
    """The study's id in its storage."""
    return study._study_id


def trial_id(trial) -> int:
    """A trial's id in its storage (a ``Trial`` or a ``FrozenTrial``)."""
    return trial._trial_id


def trial_handle(study, trial_id_: int):
    """A live ``Trial`` for a trial asked elsewhere (another worker, an earlier run): report,
    should_prune and suggest then work on it as on one this process asked."""
    import optuna

    return optuna.trial.Trial(study, trial_id_)


def stale_trial_ids(rdb, study_id_: int) -> set[int]:
    """RUNNING trials whose last heartbeat is older than the storage's grace period, timed by
    the database's clock."""
    return set(rdb._get_stale_trial_ids(study_id_))


def beating_trial_ids(rdb, study_id_: int) -> set[int]:
    """Trials of the study that have a heartbeat row at all."""
    from optuna.storages._rdb import models

    with rdb.scoped_session() as session:
        rows = (session.query(models.TrialHeartbeatModel.trial_id)
                .join(models.TrialModel).filter(models.TrialModel.study_id == study_id_).all())
    return {r[0] for r in rows}


def journal_op_codes() -> set[int]:
    """The operation codes a journal record may carry."""
    from optuna.storages.journal._storage import JournalOperation

    return {int(o) for o in JournalOperation}


def engine_of(rdb) -> Any:
    """The SQLAlchemy engine under an ``RDBStorage`` (its connections, their pool)."""
    return rdb.engine

