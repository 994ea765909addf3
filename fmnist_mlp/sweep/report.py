"""``sweep report``: the best trial's config as DIR/best.yaml, PNGs in DIR/report/, a table.

PNGs: the metric against each parameter, every trial's validation curve (pruned ones faded),
the best-so-far curve over trials, and Optuna's parameter importances (PED-ANOVA, which needs no
scikit-learn, unlike fANOVA).
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from fmnist_mlp.rundir import files as runs
from fmnist_mlp.config.schema import config_from_dict, dump_config
from fmnist_mlp.errors import ConfigError, FmnistMlpError
from fmnist_mlp.sweep.status import format_trials, space_of, sweep_status
from fmnist_mlp.sweep.study import Sweep, import_optuna


def write_report(sweep: Sweep, top: int = 10) -> tuple[str, list[Path]]:
    status = sweep_status(sweep)
    best = status["best"]
    if best is None:
        raise ConfigError(f"{sweep.dir}: no finished trial yet; nothing to report")
    plt = _pyplot()
    paths = [write_best_config(sweep, best)]
    out = sweep.dir / "report"
    out.mkdir(exist_ok=True)
    rows = status["trials"]
    paths.append(_metric_vs_params(plt, sweep, rows, out / "metric_vs_params.png"))
    paths.append(_val_curves(plt, rows, out / "val_curves.png"))
    paths.append(_best_so_far(plt, rows, out / "best_so_far.png"))
    importance = _importances(plt, sweep, out / "importances.png")
    if importance is not None:
        paths.append(importance)
    ranked = sorted((r for r in rows if r["best_val_acc"] is not None),
                    key=lambda r: -r["best_val_acc"])[:top]
    return format_trials(ranked), paths


def write_best_config(sweep: Sweep, best: dict[str, Any]) -> Path:
    """The resolved base config with the best trial's parameters: ready for train --config."""
    raw = json.loads(json.dumps(sweep.info["spec"]["base_config"]))
    for key, value in best["params"].items():
        node = raw
        *sections, leaf = key.split(".")
        for part in sections:
            node = node[part]
        node[leaf] = value
    cfg = config_from_dict(raw, source=f"{sweep.dir}/sweep.json")
    header = (f"# Best trial ({best['number']}) of sweep {sweep.dir}: best_val_acc "
              f"{best['best_val_acc']:.4f}\n# " + " ".join(
                  f"{k}={json.dumps(v)}" for k, v in best["params"].items()) + "\n")
    path = sweep.dir / "best.yaml"
    runs.atomic_write_text(path, header + dump_config(cfg))
    return path


def _pyplot():
    try:
        import matplotlib
    except ImportError:
        raise ConfigError("install matplotlib: pip install -e '.[plot]'") from None
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _metric_vs_params(plt, sweep: Sweep, rows, path: Path) -> Path:
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
        ax.grid(alpha=0.3)
    axes[0][0].set_ylabel("best val acc")
    axes[0][0].legend(fontsize=7)
    return _save(plt, fig, path)


def _x(p, value) -> float:
    return float(p.values.index(value)) if p.kind == "choice" else float(value)


def _val_curves(plt, rows, path: Path) -> Path:
    fig, ax = plt.subplots(figsize=(6, 4))
    for r in rows:
        if not r["run_dir"]:
            continue
        metrics = runs.read_metrics(r["run_dir"])
        epochs = [m.get("epoch") for m in metrics]
        accs = [m.get("val_acc") for m in metrics]
        if not metrics or not all(isinstance(v, (int, float)) for v in epochs + accs):
            continue
        pruned = r["state"] == "pruned"
        ax.plot(epochs, accs, marker="o", ms=3, alpha=0.25 if pruned else 0.9,
                linestyle="--" if pruned else "-", label=f"trial {r['number']}"
                + (" (pruned)" if pruned else ""))
    ax.set_xlabel("epoch")
    ax.set_ylabel("val acc")
    ax.set_title("validation accuracy of every trial (pruned: faded, dashed)")
    ax.grid(alpha=0.3)
    if len(rows) <= 16:
        ax.legend(fontsize=6, ncol=2)
    return _save(plt, fig, path)


def _best_so_far(plt, rows, path: Path) -> Path:
    fig, ax = plt.subplots(figsize=(6, 4))
    best, xs, ys = -math.inf, [], []
    for r in sorted(rows, key=lambda r: r["number"]):
        if r["state"] == "finished" and r["best_val_acc"] is not None:
            ax.scatter([r["number"]], [r["best_val_acc"]], color="tab:blue", s=16, alpha=0.6)
            best = max(best, r["best_val_acc"])
        if best > -math.inf:
            xs.append(r["number"])
            ys.append(best)
    ax.step(xs, ys, where="post", color="tab:red", label="best so far")
    ax.set_xlabel("trial")
    ax.set_ylabel("best val acc")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return _save(plt, fig, path)


def _importances(plt, sweep: Sweep, path: Path) -> Path | None:
    """Optuna's parameter importances; None when too few trials finished to estimate them."""
    optuna = import_optuna()
    try:
        # PED-ANOVA (the default of the Optuna installed here): deterministic, needs no scikit-learn,
        # which fANOVA would.
        evaluator = optuna.importance.PedAnovaImportanceEvaluator()
        importances = optuna.importance.get_param_importances(sweep.study, evaluator=evaluator)
    except (ValueError, RuntimeError, ImportError, FmnistMlpError):
        return None
    if not importances:
        return None
    names = list(importances)[::-1]
    fig, ax = plt.subplots(figsize=(6, 0.5 * len(names) + 1.5))
    ax.barh(names, [importances[n] for n in names], color="tab:green")
    ax.set_xlabel("importance for best val acc (PED-ANOVA)")
    fig.tight_layout()
    return _save(plt, fig, path)


def _save(plt, fig, path: Path) -> Path:
    fig.tight_layout()
    tmp = path.with_name(f".{path.name}.tmp")
    fig.savefig(tmp, dpi=90, format="png")
    plt.close(fig)
    tmp.replace(path)
    return path
