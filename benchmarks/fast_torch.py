"""Time a config's recipe in PyTorch next to the NumPy engine, each as a whole fresh process.

    python benchmarks/fast_torch.py --config configs/fast.yaml --seeds 0 1 2

For each seed, runs ``python -m fmnist_mlp train --config CONFIG --set seed=N`` and then this
script's own torch training (``--torch-only``) as child processes, one after the other, and prints
each one's wall time (the whole process: imports, data, training, test score) and test accuracy,
and the torch/NumPy wall-time ratio. Both use the same splits (``load_splits_for``), net
(Linear → [BatchNorm1d] → ReLU → [Dropout] per hidden layer; no bias before batch norm),
AdamW (decay on weight matrices only, as the engine does), label smoothing, the engine's own
learning-rate schedule function, random flips, the checkpoint of the best validation epoch and
flip-averaged test scoring. Not a unit of the package: a tool beside it, like the benchmark.
The machine is shared: compare the two numbers of one run, not numbers of different runs.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _torch_net(cfg):
    from torch import nn

    m = cfg.model
    if m.activation != "relu" or m.input_dropout:
        raise SystemExit("fast_torch.py: only ReLU nets without input dropout are mirrored")
    layers, width = [], 784
    for hidden in m.hidden:
        layers.append(nn.Linear(width, hidden, bias=not m.batchnorm))
        if m.batchnorm:
            layers.append(nn.BatchNorm1d(hidden, eps=1e-5, momentum=0.1))
        layers.append(nn.ReLU())
        if m.dropout:
            layers.append(nn.Dropout(m.dropout))
        width = hidden
    layers.append(nn.Linear(width, 10))
    return nn.Sequential(*layers)


def _flip(x):
    """(B, 784) images mirrored left–right."""
    return x.view(-1, 28, 28).flip(2).reshape(x.shape[0], 784)


def _accuracy(net, x, y, test_flip: bool, batch: int = 2000) -> float:
    import torch

    net.eval()
    correct = 0
    with torch.inference_mode():
        for start in range(0, len(y), batch):
            xb = x[start:start + batch]
            probs = torch.softmax(net(xb), dim=1)
            if test_flip:
                probs = 0.5 * (probs + torch.softmax(net(_flip(xb)), dim=1))
            correct += int((probs.argmax(1) == y[start:start + batch]).sum())
    net.train()
    return correct / len(y)


def train_torch(config_path: str, seed: int) -> dict:
    """Train the config's recipe in torch; the best-validation-epoch weights score the test set."""
    import copy

    import torch

    from fmnist_mlp.config.load import load_config
    from fmnist_mlp.config.plan import load_splits as load_splits_for
    from fmnist_mlp.nn.schedules import make_schedule

    cfg = load_config(config_path, [f"seed={seed}"])
    torch.manual_seed(seed)
    if cfg.optimizer.name not in ("adam", "adamw") or cfg.data.augment.shift or cfg.data.augment.cutout:
        raise SystemExit("fast_torch.py: only Adam/AdamW with flips (no shifts/cutout) is mirrored")
    splits = load_splits_for(cfg)
    x, y = torch.from_numpy(splits.train.x), torch.from_numpy(splits.train.y)
    xv, yv = torch.from_numpy(splits.val.x), torch.from_numpy(splits.val.y)
    xt, yt = torch.from_numpy(splits.test.x), torch.from_numpy(splits.test.y)
    net = _torch_net(cfg).train()
    o = cfg.optimizer
    decayed = [p for n, p in net.named_parameters() if n.endswith("weight") and p.dim() == 2]
    others = [p for n, p in net.named_parameters() if not (n.endswith("weight") and p.dim() == 2)]
    opt = torch.optim.AdamW([{"params": decayed, "weight_decay": o.weight_decay},
                             {"params": others, "weight_decay": 0.0}],
                            lr=o.lr, betas=(o.beta1, o.beta2), eps=o.eps)
    loss_fn = torch.nn.CrossEntropyLoss(label_smoothing=cfg.loss.label_smoothing)
    batch, n = cfg.train.batch_size, len(y)
    steps_per_epoch = -(-n // batch)
    s = cfg.schedule
    lr_at = make_schedule(s.name, base_lr=o.lr, total_steps=cfg.train.epochs * steps_per_epoch,
                          warmup_steps=s.warmup_epochs * steps_per_epoch,
                          step_size=s.step_epochs * steps_per_epoch, gamma=s.gamma,
                          min_lr=s.min_lr, decay_steps=steps_per_epoch)
    gen = torch.Generator().manual_seed(seed)
    t0 = time.perf_counter()
    step, best_val, best_state = 0, -1.0, None
    for _ in range(cfg.train.epochs):
        order = torch.randperm(n, generator=gen)
        for start in range(0, n, batch):
            idx = order[start:start + batch]
            xb, yb = x.index_select(0, idx), y.index_select(0, idx)
            if cfg.data.augment.flip:
                flip = torch.rand(len(idx), generator=gen) < 0.5
                xb[flip] = _flip(xb[flip])
            for group in opt.param_groups:
                group["lr"] = lr_at(step)
            opt.zero_grad(set_to_none=True)
            loss_fn(net(xb), yb).backward()
            opt.step()
            step += 1
        val = _accuracy(net, xv, yv, test_flip=False)   # validation on single images, as the engine
        if val > best_val:
            best_val, best_state = val, copy.deepcopy(net.state_dict())
    net.load_state_dict(best_state)
    test_acc = _accuracy(net, xt, yt, cfg.data.augment.test_flip)
    return {"best_val_acc": best_val, "test_acc": test_acc, "train_s": time.perf_counter() - t0}


def _timed(cmd: list[str], env: dict) -> tuple[float, str]:
    start = time.perf_counter()
    done = subprocess.run(cmd, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - start
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed ({done.returncode}): {done.stderr.strip()[-500:]}")
    return wall, done.stdout


def compare(config: str, seeds: list[int], runs_dir: str) -> None:
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    walls = {"numpy": [], "torch": []}
    print("wall = the whole process; loop = training and test scoring inside it")
    print(f"{'seed':>4}  {'numpy wall':>10}  {'loop':>6}  {'test':>6}  "
          f"{'torch wall':>10}  {'loop':>6}  {'test':>6}  wall ratio  loop ratio")
    for seed in seeds:
        wall_np, out = _timed([sys.executable, "-m", "fmnist_mlp", "train", "--config", config,
                               "--set", f"seed={seed}", "--runs-dir", runs_dir, "--json"], env)
        summary = json.loads(out)
        acc_np, loop_np = summary["test_acc"], summary["wall_time"]
        wall_t, out = _timed([sys.executable, __file__, "--config", config, "--seeds", str(seed),
                              "--torch-only"], env)
        result = json.loads(out.strip().splitlines()[-1])
        acc_t, loop_t = result["test_acc"], result["train_s"]
        walls["numpy"].append(wall_np)
        walls["torch"].append(wall_t)
        print(f"{seed:>4}  {wall_np:10.1f}  {loop_np:6.1f}  {acc_np:6.4f}  {wall_t:10.1f}  "
              f"{loop_t:6.1f}  {acc_t:6.4f}  {wall_t / wall_np:10.2f}  {loop_t / loop_np:10.2f}",
              flush=True)
    total_np, total_t = sum(walls["numpy"]), sum(walls["torch"])
    print(f"mean wall: numpy {total_np / len(seeds):.1f} s, torch {total_t / len(seeds):.1f} s, "
          f"torch/numpy {total_t / total_np:.2f}; load average now "
          f"{' '.join(f'{v:.2f}' for v in os.getloadavg())}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default=str(ROOT / "configs" / "fast.yaml"))
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--runs-dir", default="runs")
    parser.add_argument("--torch-only", action="store_true",
                        help="train the first seed in torch in this process; print one JSON line")
    args = parser.parse_args()
    if args.torch_only:
        print(json.dumps(train_torch(args.config, args.seeds[0])))
    else:
        compare(args.config, args.seeds, args.runs_dir)


if __name__ == "__main__":
    main()
