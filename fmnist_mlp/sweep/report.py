"""``sweep report``: the best trial's config as DIR/best.yaml, PNGs in DIR/report/, a table.

PNGs: the metric against each parameter, every trial's validation curve (pruned ones faded),
the best-so-far curve over trials, and Optuna's parameter importances (PED-ANOVA, which needs no
scikit-learn, unlike fANOVA).
"""

from __future__ import annotations

import io
import json
import math
from pathlib import Path
from typing import Any

from fmnist_mlp.rundir import files as runs
from fmnist_mlp.config.load import dump_config
from fmnist_mlp.config.validate import config_from_dict
from fmnist_mlp.errors import ConfigError, FmnistMlpError, require_extra
from fmnist_mlp.io.files import FileWriteError, atomic_write, dir_inside
from fmnist_mlp.io.paths import check_new_dirs
from fmnist_mlp.io.printable import printable
from fmnist_mlp.sweep.status import format_trials, space_of, sweep_status
from fmnist_mlp.sweep.study import Sweep, import_optuna


# Importances ranked from a handful of trials are noise: below this many finished trials they
# are withheld, and the reason printed.
MIN_TRIALS_FOR_IMPORTANCE = 8


def write_report(sweep: Sweep, top: int = 10, out: Path | None = None) -> tuple[str, list[Path]]:
    """best.yaml and the PNGs, into DIR (DIR/best.yaml, DIR/report/) or into ``out`` (for a
    sweep directory the reader may not write to). Every file through the one safe writer: a link
    planted at a PNG, its temporary or the report folder is refused, never written through."""
    status = sweep_status(sweep)
    best = status["best"]
    if best is None:
        raise ConfigError(f"{sweep.dir}: no finished trial yet; nothing to report")
    plt = _pyplot()
    base = sweep.dir if out is None else Path(out).absolute()
    if out is not None:
        check_new_dirs(base, "--out", ConfigError)     # no control characters in new names
        try:
            base.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise ConfigError(f"--out {base}: cannot create ({exc.strerror})") from None
    try:
        report = dir_inside(base, "report") if out is None else base
        paths = [write_best_config(sweep, best, base)]
    except (FileWriteError, OSError) as exc:
        if out is not None:
            raise
        raise FileWriteError(f"{printable(exc)}; a sweep you may only read is reported with "
                             f"--out FOLDER") from None
    rows = status["trials"]
    paths.append(_metric_vs_params(plt, sweep, rows, report / "metric_vs_params.png", base))
    paths.append(_val_curves(plt, rows, report / "val_curves.png", base))
    paths.append(_best_so_far(plt, rows, report / "best_so_far.png", base))
    importance, note = _importances(plt, sweep, rows, report / "importances.png", base)
    if importance is not None:
        paths.append(importance)
    ranked = sorted((r for r in rows if r["best_val_acc"] is not None),
                    key=lambda r: -r["best_val_acc"])[:top]
    return format_trials(ranked) + f"\n{note}", paths


def write_best_config(sweep: Sweep, best: dict[str, Any], base: Path) -> Path:
    """The resolved base config with the best trial's parameters: ready for train --config."""
    raw = json.loads(json.dumps(sweep.info["spec"]["base_config"]))
    for key, value in best["params"].items():
        node = raw
        *sections, leaf = key.split(".")
        for part in sections:
            node = node[part]
        node[leaf] = value
    cfg = config_from_dict(raw, source=f"{sweep.dir}/sweep.json")
    header = (f"# Best trial ({best['number']}) of sweep {printable(sweep.dir)}: best_val_acc "
              f"{best['best_val_acc']:.4f}\n# " + " ".join(
                  f"{k}={json.dumps(v)}" for k, v in best["params"].items()) + "\n")
    path = base / "best.yaml"
    atomic_write(path, (header + dump_config(cfg)).encode("utf-8"), base=base)
    return path


def _pyplot():
    matplotlib = require_extra("matplotlib", "plot")
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _metric_vs_params(plt, sweep: Sweep, rows, path: Path, base: Path) -> Path:
    space = space_of(sweep)
    fig, axes = plt.subplots(1, len(space), figsize=(3.6 * len(space), 3.2), squeeze=False)
    for ax, p in zip(axes[0], space):
        for faded in (True, False):
            pts = [(r["params"][p.key], r["best_val_acc"]) for r in rows
                   if p.key in r["params"] and r["best_val_acc"] is not None
                   and (r["state"] != "finished") == faded]
            if not pts:
                continue
            xs = [_x(p, v) for v, _ in pts]
            ax.scatter(xs, [y for _, y in pts], alpha=0.3 if faded else 0.9, s=22,
                       color="grey" if faded else "tab:blue",
                       label="pruned/stopped" if faded else "finished")
        if p.kind == "choice":
            ax.set_xticks(range(len(p.values)), [json.dumps(v) for v in p.values], fontsize=7)
            ax.set_xlim(-0.5, len(p.values) - 0.5)
        elif p.log:
            ax.set_xscale("log")
            ax.xaxis.set_minor_formatter(plt.NullFormatter())   # 2x10^-3 labels overlap
        ax.set_xlabel(p.key)
        ax.set_title(f"best val acc by {p.key}", fontsize=9)
        ax.grid(alpha=0.3)
    axes[0][0].set_ylabel("best val acc")
    axes[0][0].legend(fontsize=7)
    return _save(plt, fig, path, base)


def _x(p, value) -> float:
    return float(p.values.index(value)) if p.kind == "choice" else float(value)


def _curve(run_dir: str | None) -> tuple[list, list]:
    """A run's (epochs, val accs) from its metrics.jsonl; empty when missing or damaged."""
    if not run_dir:
        return [], []
    try:
        metrics = runs.read_metrics(run_dir)
    except (FmnistMlpError, OSError):
        return [], []
    epochs = [m.get("epoch") for m in metrics]
    accs = [m.get("val_acc") for m in metrics]
    if not all(isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)
               for v in epochs + accs):
        return [], []
    return epochs, accs


def _val_curves(plt, rows, path: Path, base: Path) -> Path:
    fig, ax = plt.subplots(figsize=(6, 4))
    for r in rows:
        epochs, accs = _curve(r["run_dir"])
        if not epochs:
            continue
        pruned = r["state"] == "pruned"
        ax.plot(epochs, accs, marker="o", ms=3, alpha=0.25 if pruned else 0.9,
                linestyle="--" if pruned else "-", label=f"trial {r['number']}"
                + (" (pruned)" if pruned else ""))
    ax.set_xlabel("epoch")
    ax.set_ylabel("val acc")
    ax.set_title("validation accuracy of every trial (pruned: faded, dashed)")
    ax.grid(alpha=0.3)
    if len(rows) <= 16 and ax.lines:
        ax.legend(fontsize=6, ncol=2)
    return _save(plt, fig, path, base)


def _best_so_far(plt, rows, path: Path, base: Path) -> Path:
    """Finished trials as points and the best so far as a step line; pruned trials as grey
    crosses at the val acc of their last epoch (where the pruner stopped them)."""
    fig, ax = plt.subplots(figsize=(6, 4))
    best, xs, ys = -math.inf, [], []
    pruned = []
    for r in sorted(rows, key=lambda r: r["number"]):
        if r["state"] == "finished" and r["best_val_acc"] is not None:
            ax.scatter([r["number"]], [r["best_val_acc"]], color="tab:blue", s=16, alpha=0.6)
            best = max(best, r["best_val_acc"])
        elif r["state"] == "pruned":
            epochs, accs = _curve(r["run_dir"])
            if accs:
                pruned.append((r["number"], accs[-1], epochs[-1]))
        if best > -math.inf:
            xs.append(r["number"])
            ys.append(best)
    if pruned:
        ax.scatter([p[0] for p in pruned], [p[1] for p in pruned], marker="x", color="grey",
                   s=24, label="pruned (val acc at its last epoch)")
    ax.step(xs, ys, where="post", color="tab:red", label="best so far")
    ax.set_xlabel("trial")
    ax.set_ylabel("best val acc")
    ax.set_title("best val acc so far, by trial number")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return _save(plt, fig, path, base, "pruned trials shown at their last epoch: "
                 + ", ".join(f"{n} (epoch {e})" for n, _, e in pruned))


def _importances(plt, sweep: Sweep, rows, path: Path, base: Path) -> tuple[Path | None, str]:
    """Optuna's parameter importances, and a line saying how many trials they rest on (or why
    they are withheld)."""
    finished = sum(1 for r in rows if r["state"] == "finished" and r["best_val_acc"] is not None)
    if finished < MIN_TRIALS_FOR_IMPORTANCE:
        return None, (f"importances withheld: {finished} finished trial(s), at least "
                      f"{MIN_TRIALS_FOR_IMPORTANCE} are needed for a ranking that is not noise")
    optuna = import_optuna()
    try:
        # PED-ANOVA (the default of the Optuna installed here): deterministic, needs no scikit-learn,
        # which fANOVA would.
        evaluator = optuna.importance.PedAnovaImportanceEvaluator()
        importances = optuna.importance.get_param_importances(sweep.study, evaluator=evaluator)
    except (ValueError, TypeError, RuntimeError, ImportError, FmnistMlpError) as exc:
        return None, f"importances withheld: {printable(exc)[:120]}"
    if not importances:
        return None, "importances withheld: no parameter varied"
    names = list(importances)[::-1]
    fig, ax = plt.subplots(figsize=(6, 0.5 * len(names) + 1.5))
    ax.barh(names, [importances[n] for n in names], color="tab:green")
    ax.set_xlabel("importance for best val acc (PED-ANOVA)")
    ax.set_title(f"parameter importances, from {finished} finished trials")
    return _save(plt, fig, path, base), f"importances from {finished} finished trials"


def _save(plt, fig, path: Path, base: Path, description: str = "") -> Path:
    """The PNG through the safe writer; its titles also go into the file's Title text, so a
    reader (or a test) can tell what it shows without looking."""
    fig.tight_layout()
    titles = [ax.get_title() for ax in fig.axes if ax.get_title()]
    if not titles:
        raise AssertionError(f"{path.name}: every plot of the report has a title")
    buf = io.BytesIO()
    fig.savefig(buf, dpi=90, format="png",
                metadata={"Title": "; ".join(titles), "Description": description})
    plt.close(fig)
    return atomic_write(path, buf.getvalue(), base=base)
