"""What a sweep holds: one row per trial (from the study, its run directory and its lock)."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from fmnist_mlp.rundir import files as runs
from fmnist_mlp.errors import FmnistMlpError
from fmnist_mlp.sweep.spec import Param, decode_params
from fmnist_mlp.sweep.study import Sweep, claim_lock, import_optuna, is_trial_held

STATES = {"COMPLETE": "finished", "PRUNED": "pruned", "FAIL": "failed", "WAITING": "waiting"}


def space_of(sweep: Sweep) -> tuple[Param, ...]:
    """The searched parameters as recorded in sweep.json (no spec file needed)."""
    out = []
    for key, entry in sweep.info["spec"]["space"].items():
        kind = next(k for k in entry if k != "log")
        out.append(Param(key, kind, tuple(entry[kind]), bool(entry.get("log"))))
    return tuple(out)


def trial_rows(sweep: Sweep) -> list[dict[str, Any]]:
    import_optuna()
    space = space_of(sweep)
    with claim_lock(sweep.dir):       # no worker is between asking and locking a trial now
        trials = sweep.study.get_trials(deepcopy=False)
        held = {t.number for t in trials
                if t.state.name == "RUNNING" and is_trial_held(sweep.dir, t.number)}
    rows = []
    for t in trials:
        state = STATES.get(t.state.name)
        if state is None:
            state = "running" if t.number in held else "interrupted"
        run_dir = t.user_attrs.get("run_dir")
        summary = _summary(run_dir)
        best = t.value if t.value is not None else summary.get("best_val_acc")
        rows.append({"number": t.number, "state": state,
                     "params": decode_params(t.params, space),
                     "best_val_acc": best if _finite(best) else None,
                     "epochs": summary.get("epochs_completed"), "run_dir": run_dir,
                     "worker": t.user_attrs.get("worker")})
    return rows


def sweep_status(sweep: Sweep) -> dict[str, Any]:
    rows = trial_rows(sweep)
    done = [r for r in rows if r["state"] == "finished" and r["best_val_acc"] is not None]
    best = max(done, key=lambda r: r["best_val_acc"], default=None)
    return {"dir": str(sweep.dir), "metric": sweep.info["spec"]["metric"],
            "budget": sweep.budget, "budget_left": sweep.budget - len(rows),
            "best": best, "trials": rows}


def format_status(status: dict[str, Any]) -> str:
    lines = [format_trials(status["trials"])]
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
