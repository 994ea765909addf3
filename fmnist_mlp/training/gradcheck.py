"""``fmnist-mlp gradcheck``: backprop against central differences for a config's architecture."""

from __future__ import annotations

import dataclasses
from pathlib import Path

from fmnist_mlp.config.plan import build_model, check_fits, load_splits, make_streams
from fmnist_mlp.config.schema import Config
from fmnist_mlp.data.facts import NUM_CLASSES, NUM_FEATURES


def run_gradcheck(cfg: Config, samples: int = 4, real: bool = False,
                  data_dir: str | Path | None = None,
                  max_entries: int | None = 50) -> dict[str, float]:
    """Max relative error of backprop vs central differences, per parameter, for the config's
    architecture rebuilt in float64 (dropout kept, with a fixed mask, so it is checked too)."""
    from fmnist_mlp.nn.gradcheck import gradient_check

    check_fits(cfg)
    cfg64 = dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, dtype="float64"))
    streams = make_streams(cfg.seed)
    model = build_model(cfg64, streams["init"])
    if real:
        train = load_splits(cfg64, data_dir).train
        x, y = train.x[:samples], train.y[:samples]
    else:
        x = streams["shuffle"].standard_normal((samples, NUM_FEATURES))
        y = streams["shuffle"].integers(0, NUM_CLASSES, samples)
    # Sampling entries keeps wide layers (best.yaml: 1024x1024) to seconds, not hours.
    return gradient_check(model, x, y, max_entries=max_entries)
