"""The same training loop in JAX: the whole step (forward, backward, update) one XLA-compiled call.

Written as a new JAX user would write it, with no library beyond ``jax`` itself: parameters as a
list of dicts, ``jax.value_and_grad`` of a log-softmax cross-entropy, the momentum or Adam update
written out (the engine's formulas and hyperparameters), dropout from ``jax.random`` with the key
split inside the step, batch normalisation with batch statistics (running averages are not kept:
this favours JAX). The data lives on the device; each step gathers its batch inside the compiled
call from the epoch's shuffled indices (also favours JAX: no host copy per step). The loss is
summed on the device and read once per epoch, so dispatch stays asynchronous. Both batch shapes
(full and the last, shorter one) are compiled before the timed epochs.
"""

from __future__ import annotations

import math


def _init(hidden, batchnorm: bool, seed: int):
    """He-normal weights, zero biases (γ = 1, β = 0 with batch norm), as the engine starts."""
    import numpy as np

    rng = np.random.default_rng(seed)
    sizes, params = [784, *hidden, 10], []
    for i, (d_in, d_out) in enumerate(zip(sizes[:-1], sizes[1:])):
        layer = {"W": (rng.standard_normal((d_in, d_out)) * math.sqrt(2.0 / d_in)).astype("float32")}
        if batchnorm and i < len(hidden):
            layer["gamma"], layer["beta"] = np.ones(d_out, "float32"), np.zeros(d_out, "float32")
        else:
            layer["b"] = np.zeros(d_out, "float32")
        params.append(layer)
    return params


def _make_step(job: dict):
    import jax
    import jax.numpy as jnp

    from benchmarks.worker import OPTIMIZER_SETTINGS

    dropout, settings = job["dropout"], OPTIMIZER_SETTINGS[job["optimizer"]]

    def loss_fn(params, x, y, key):
        for layer in params[:-1]:
            z = x @ layer["W"]
            if "gamma" in layer:
                mean, var = z.mean(axis=0), z.var(axis=0)
                z = (z - mean) * jax.lax.rsqrt(var + 1e-5) * layer["gamma"] + layer["beta"]
            else:
                z = z + layer["b"]
            x = jax.nn.relu(z)
            if dropout:
                key, sub = jax.random.split(key)
                keep = jax.random.bernoulli(sub, 1.0 - dropout, x.shape)
                x = jnp.where(keep, x / (1.0 - dropout), 0.0)
        logits = x @ params[-1]["W"] + params[-1]["b"]
        logp = jax.nn.log_softmax(logits)
        return -jnp.mean(jnp.take_along_axis(logp, y[:, None], axis=1))

    def update(params, state, grads, t):
        lr = settings["lr"]
        if job["optimizer"] == "momentum":
            velocity = jax.tree.map(lambda v, g: settings["momentum"] * v + g, state["v"], grads)
            return jax.tree.map(lambda p, v: p - lr * v, params, velocity), {"v": velocity}
        b1, b2, eps = settings["beta1"], settings["beta2"], settings["eps"]
        m = jax.tree.map(lambda m, g: b1 * m + (1 - b1) * g, state["m"], grads)
        v = jax.tree.map(lambda v, g: b2 * v + (1 - b2) * g * g, state["v"], grads)
        m_hat, v_hat = 1 - b1 ** t, 1 - b2 ** t
        new = jax.tree.map(lambda p, m, v: p - lr * (m / m_hat) / (jnp.sqrt(v / v_hat) + eps),
                           params, m, v)
        return new, {"m": m, "v": v}

    @jax.jit
    def step(params, state, x_all, y_all, idx, key, t, loss_sum):
        key, sub = jax.random.split(key)
        x, y = x_all[idx], y_all[idx]
        loss, grads = jax.value_and_grad(loss_fn)(params, x, y, sub)
        params, state = update(params, state, grads, t)
        return params, state, key, loss_sum + loss * idx.shape[0]

    return step


def jax_train(job: dict, load_arrays, timed_epochs) -> dict:
    """Full epochs of the jit-compiled step (``timed_epochs`` from the worker times them)."""
    import jax
    import jax.numpy as jnp
    import numpy as np

    x_np, y_np = load_arrays(job, "train")
    x_all, y_all = jnp.asarray(x_np), jnp.asarray(y_np.astype(np.int32))
    params = jax.tree.map(jnp.asarray, _init(job["hidden"], job.get("batchnorm", False), job["seed"]))
    slots = ("v",) if job["optimizer"] == "momentum" else ("m", "v")
    state = {s: jax.tree.map(jnp.zeros_like, params) for s in slots}
    step = _make_step(job)
    batch = job["batch_size"]
    held = {"params": params, "state": state, "key": jax.random.PRNGKey(job["seed"]), "t": 0}

    def run(order) -> tuple[float, int]:
        loss_sum = jnp.zeros((), jnp.float32)
        for start in range(0, len(order), batch):
            held["t"] += 1
            idx = jnp.asarray(order[start:start + batch].astype(np.int32))
            held["params"], held["state"], held["key"], loss_sum = step(
                held["params"], held["state"], x_all, y_all, idx, held["key"],
                jnp.float32(held["t"]), loss_sum)
        return float(loss_sum) / max(1, len(order)), -1       # float(): waits for the last step

    last = len(x_np) % batch                    # compile the last, shorter batch's shape too
    if last:
        run(np.arange(last))
    result = timed_epochs(job, len(x_np), run)
    result["jax"] = jax.__version__
    return result
