"""What a sweep holds: one row per trial (from the study, its run directory and its lock)."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from fmnist_mlp.rundir import files as runs
from fmnist_mlp.errors import FmnistMlpError
from fmnist_mlp.io.printable import printable
from fmnist_mlp.sweep.spec import Param, decode_params, param_from_record
from fmnist_mlp.sweep.flocks import claim_lock, is_trial_held
from fmnist_mlp.sweep.study import Sweep, import_optuna

STATES = {"COMPLETE": "finished", "PRUNED": "pruned", "FAIL": "failed", "WAITING": "waiting"}


def space_of(sweep: Sweep) -> tuple[Param, ...]:
    """The searched parameters as recorded in sweep.json (no spec file needed)."""
    return tuple(param_from_record(k, e) for k, e in sweep.info["spec"]["space"].items())


def trial_rows(sweep: Sweep) -> list[dict[str, Any]]:
    """One row per trial. A trial counts as running only while a live, unreleased owner beats
    for it (database) or holds its lock (journal); else it is interrupted, to be resumed."""
    import_optuna()
    space = space_of(sweep)

    def read() -> tuple[list, set[int]]:
        sweep.refresh_budget()
        trials = sweep.study.get_trials(deepcopy=False)
        return trials, _running(sweep, [t for t in trials if t.state.name == "RUNNING"])

    trials, held = sweep.call(read, "reading the study")
    rows = []
    for t in trials:
        state = STATES.get(t.state.name)
        if state is None:
            state = "running" if t.number in held else "interrupted"
        run_dir = sweep.run_dir_of(t.user_attrs.get("run_dir"))
        summary = _summary(run_dir)
        best = t.value if t.value is not None else summary.get("best_val_acc")
        epochs = summary.get("epochs_completed")
        reason = t.user_attrs.get("fail_reason") if state == "failed" else None
        rows.append({"number": t.number, "state": state,
                     "params": decode_params(t.params, space),
                     "best_val_acc": best if _finite(best) else None,
                     "epochs": epochs if isinstance(epochs, int) and not isinstance(epochs, bool)
                     else None,
                     "run_dir": str(run_dir) if run_dir else None,
                     "worker": printable(str(t.user_attrs.get("worker") or "")) or None,
                     "reason": printable(str(reason)) if reason else None})
    return rows


def _running(sweep: Sweep, running: list) -> set[int]:
    """Numbers of the RUNNING trials whose worker is alive: its heartbeat is fresh (database),
    or it holds the trial's lock (journal). Read only: nothing is created or locked for long."""
    if not running:
        return set()
    if sweep.coordinated_by_database:
        from fmnist_mlp.sweep import optuna_private as private
        from fmnist_mlp.sweep.ownership import Liveness

        owners = Liveness(sweep.rdb, private.study_id(sweep.study))
        return {t.number for t in running if owners.is_running(t)}
    if sweep.read_only or sweep.ref is None or sweep.ref.kind != "journal":
        return {t.number for t in running if is_trial_held(sweep.dir, t.number, create=False)}
    with claim_lock(sweep.dir):       # no worker is between asking and locking a trial now
        return {t.number for t in running if is_trial_held(sweep.dir, t.number)}


def sweep_status(sweep: Sweep) -> dict[str, Any]:
    rows = trial_rows(sweep)        # (the budget refreshed from the study)
    done = [r for r in rows if r["state"] == "finished" and r["best_val_acc"] is not None]
    best = max(done, key=lambda r: r["best_val_acc"], default=None)
    return {"dir": str(sweep.dir), "metric": sweep.info["spec"]["metric"],
            "budget": sweep.budget, "budget_left": sweep.budget - len(rows),
            "best": best, "trials": rows}


def format_status(status: dict[str, Any]) -> str:
    lines = [format_trials(status["trials"])]
    lines += [f"trial {r['number']} failed: {r['reason']}" for r in status["trials"]
              if r.get("reason")]
    best = status["best"]
    lines.append("best so far: " + (f"trial {best['number']}, {status['metric']} "
                                    f"{best['best_val_acc']:.4f}" if best else "none yet"))
    lines.append(f"budget left: {status['budget_left']} of {status['budget']} trials")
    return "\n".join(lines)


def format_trials(rows: list[dict[str, Any]]) -> str:
    header = ["trial", "state", "best_val_acc", "epochs", "params", "run_dir"]
    table = [header] + [[str(r["number"]), r["state"],
                         f"{r['best_val_acc']:.4f}" if r["best_val_acc"] is not None else "-",
                         str(r["epochs"] if r["epochs"] is not None else "-"),
                         " ".join(f"{k}={_show(v)}" for k, v in r["params"].items()),
                         Path(r["run_dir"]).name if r["run_dir"] else "-"] for r in rows]
    widths = [max(len(row[i]) for row in table) for i in range(len(header))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip() for row in table)


def _show(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return json.dumps(value).replace(" ", "")


def _summary(run_dir: str | None) -> dict:
    if not run_dir:
        return {}
    try:
        return runs.read_summary(run_dir)
    except FmnistMlpError:
        return {}


def _finite(x: Any) -> bool:
    return isinstance(x, (int, float)) and math.isfinite(x)
