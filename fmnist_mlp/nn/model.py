"""The multi-layer perceptron: a composition of the layers in :mod:`fmnist_mlp.nn.layers`.

Rows are examples: ``x`` (N, D), ``W`` (D_in, D_out), ``b`` (D_out,), logits (N, K), ``y`` (N,).
A hidden layer computes ``h = f(x W + b)`` (with batch normalisation ``h = f(BN(x W))``, then
inverted dropout in training); the last layer gives the logits ``z = h W + b``, and the loss head
(:mod:`fmnist_mlp.nn.losses`) gives the loss and dL/dz. :meth:`MLP.loss_and_grad` runs that
forward down the layers and backward up them; evaluation runs the same forward functions.

Parameters live in ``params`` under names like ``"layer0.W"``; ``grads`` has the same keys and is
filled by :meth:`MLP.loss_and_grad`. Both hold the *same* arrays for the model's lifetime (updates
and loads are in place), views of one flat array each (:class:`~fmnist_mlp.nn.workspace.ParameterSet`),
so an optimiser can keep per-name state safely and update everything in a few passes.
With batch normalisation a hidden layer has ``W``, ``gamma`` and ``beta`` (no ``b``: β is its
bias) in ``params``, and running statistics, which are state but not parameters, in ``buffers``.
"""

from __future__ import annotations

from typing import Any, Mapping, Sequence

import numpy as np

from fmnist_mlp.data.facts import NUM_CLASSES, NUM_FEATURES
from fmnist_mlp.nn import layers
from fmnist_mlp.nn.activations import ACTIVATIONS
from fmnist_mlp.nn.config_keys import build_from_config
from fmnist_mlp.nn.init import INITS, init_weight, resolve_init
from fmnist_mlp.nn.losses import LOSSES, OUTPUTS, apply_output, loss_and_dlogits
from fmnist_mlp.nn.losses import one_hot_targets, per_example_loss
from fmnist_mlp.nn.workspace import BatchWork, LayerWork, ParameterSet, Workspace, resolve_layout
from fmnist_mlp.nn.rng import spawn_streams

DTYPES = ("float32", "float64")
# Running statistics: state the evaluation path uses, not trained parameters (no gradient, no
# optimiser state). The last part of a name says which it is; each starts at its value here.
BUFFERS = {"running_mean": 0.0, "running_var": 1.0}


def parameter_shapes(layer_widths: Sequence[int],
                     batchnorm: bool = False) -> dict[str, tuple[int, ...]]:
    """Every array a model of these widths holds, by name, in the model's order.

    ``layer_widths`` = [input, *hidden, classes]. Layer i has ``layer{i}.W`` (D_in, D_out) and
    ``layer{i}.b`` (D_out,); with batch norm a hidden layer has ``gamma`` and ``beta`` (D_out,)
    instead of ``b`` (β is its bias), and the buffers ``running_mean``, ``running_var`` (D_out,):
    :func:`is_buffer` tells them from parameters. The checkpoint checker asks this function too.
    """
    widths = [int(w) for w in layer_widths]
    shapes: dict[str, tuple[int, ...]] = {}
    for i, (fan_in, fan_out) in enumerate(zip(widths[:-1], widths[1:])):
        shapes[f"layer{i}.W"] = (fan_in, fan_out)
        if batchnorm and i < len(widths) - 2:
            for name in ("gamma", "beta", *BUFFERS):
                shapes[f"layer{i}.{name}"] = (fan_out,)
        else:
            shapes[f"layer{i}.b"] = (fan_out,)
    return shapes


def is_buffer(name: str) -> bool:
    """True for running statistics (``layer0.running_mean``), False for trained parameters."""
    return name.rpartition(".")[2] in BUFFERS


class MLP:
    """A fully connected network ``input -> hidden... -> num_classes`` trained by backprop.

    Zero hidden layers with softmax output and cross-entropy is multinomial logistic regression.
    ``dropout`` is inverted dropout on every hidden layer and ``input_dropout`` on the input
    pixels, both active only in :meth:`loss_and_grad`.
    ``l2`` adds ½·l2·Σ‖W‖² to the objective (biases are not penalised); the loss values
    returned are the data loss alone, so training and validation losses stay comparable.
    ``batchnorm`` normalises every hidden layer's ``z = a W`` before its activation (batch
    statistics in training, running averages updated with ``bn_momentum`` in evaluation).
    A hidden layer then has no bias ``b``: the mean subtraction would cancel it, leaving a
    parameter with an exactly zero gradient; β takes its place.
    ``layout`` is how arrays lie in memory, never what they hold (see
    :mod:`fmnist_mlp.nn.workspace`). ``kernels`` (auto | numpy | numba) is who runs the hidden
    layers' elementwise chains, never what they compute (:mod:`fmnist_mlp.nn.kernels`); like
    ``layout`` it is not part of :meth:`spec`. Invalid arguments raise ValueError naming the argument;
    user-facing validation of configs happens before the model is built.
    """

    def __init__(self, input_size: int = NUM_FEATURES, hidden: Sequence[int] = (256, 128),
                 num_classes: int = NUM_CLASSES, activation: str = "relu", output: str = "softmax",
                 loss: str = "cross_entropy", dropout: float = 0.0, label_smoothing: float = 0.0,
                 l2: float = 0.0, init: str = "auto", dtype: str = "float32",
                 seed: int | np.random.Generator = 0, input_dropout: float = 0.0,
                 batchnorm: bool = False, bn_momentum: float = 0.1, bn_eps: float = 1e-5,
                 layout: str = "auto", kernels: str = "numpy") -> None:
        hidden = [int(h) for h in hidden]
        _check_arguments(input_size=input_size, hidden=hidden, num_classes=num_classes,
                         activation=activation, output=output, loss=loss, dropout=dropout,
                         input_dropout=input_dropout, batchnorm=batchnorm,
                         label_smoothing=label_smoothing, l2=l2, init=init, dtype=dtype,
                         bn_momentum=bn_momentum, bn_eps=bn_eps)
        self.input_size, self.hidden, self.num_classes = int(input_size), hidden, int(num_classes)
        self.activation, self.output, self.loss = activation, output, loss
        self.dropout, self.input_dropout = float(dropout), float(input_dropout)
        self.label_smoothing, self.l2 = float(label_smoothing), float(l2)
        self.batchnorm = bool(batchnorm)
        self.bn_momentum, self.bn_eps = float(bn_momentum), float(bn_eps)
        self.init, self.dtype = init, np.dtype(dtype)
        self.layout = resolve_layout(layout, hidden)
        self._seed = seed if isinstance(seed, (int, np.integer)) else None
        init_rng, self._default_dropout_rng = _streams(seed)
        self._keep = layers.keep_threshold(self.dropout)
        self._input_keep = layers.keep_threshold(self.input_dropout)
        self._allocate(init_rng)
        self.kernels, self._fused = _fused_chains(kernels, activation, self.dtype)
        self._fused_head = _fused_head(self._fused, loss, self.dtype)
        # Batch norm and input dropout: the fused ones take the layer functions' arguments.
        self._ops = self._fused or layers
        self._workspace = Workspace(self.input_size, hidden, self.dtype, self.layout,
                                    dropout=self.dropout > 0.0,
                                    input_dropout=self.input_dropout > 0.0,
                                    batchnorm=self.batchnorm)

    def _allocate(self, init_rng: np.random.Generator) -> None:
        """``params``, ``grads`` and ``buffers`` as :func:`parameter_shapes` names them; weights
        drawn from ``init_rng`` layer by layer, γ = 1, b = β = 0, running statistics at BUFFERS."""
        shapes = parameter_shapes([self.input_size, *self.hidden, self.num_classes], self.batchnorm)
        column_major = ["layer0.W"] if self.layout == "feature" and self.hidden else []
        self.params = ParameterSet({k: v for k, v in shapes.items() if not is_buffer(k)},
                                   self.dtype, column_major)
        self.grads = self.params.like()
        scheme = resolve_init(self.init, self.activation)
        for name, (fan_in, fan_out) in ((k, v) for k, v in shapes.items() if k.endswith(".W")):
            self.params[name] = init_weight(init_rng, fan_in, fan_out, scheme, self.dtype)
        for name, value in self.params.items():
            if name.endswith(".gamma"):
                value[...] = 1.0                # b and β start at 0 (the flat array is zeroed)
        self.buffers: dict[str, np.ndarray] = {
            k: np.full(shape, BUFFERS[k.rpartition(".")[2]], self.dtype)
            for k, shape in shapes.items() if is_buffer(k)}

    # ------------------------------------------------------------------ construction
    @classmethod
    def from_config(cls, config: Mapping[str, Any]) -> "MLP":
        """Build from the dict a YAML experiment config gives: its ``model`` and ``loss`` sections
        and ``seed`` (:mod:`fmnist_mlp.nn.config_keys` maps each key to its argument; a key left
        out takes this constructor's default). A bad key or value raises ConfigError naming it."""
        return build_from_config(cls, config)

    def spec(self) -> dict[str, Any]:
        """Constructor arguments as plain values: ``MLP(**model.spec())`` rebuilds the architecture."""
        spec = {
            "input_size": self.input_size, "hidden": list(self.hidden),
            "num_classes": self.num_classes, "activation": self.activation,
            "output": self.output, "loss": self.loss, "dropout": self.dropout,
            "input_dropout": self.input_dropout, "batchnorm": self.batchnorm,
            "bn_momentum": self.bn_momentum, "bn_eps": self.bn_eps,
            "label_smoothing": self.label_smoothing, "l2": self.l2, "init": self.init,
            "dtype": self.dtype.name, "layout": self.layout,
        }
        if self._seed is not None:
            spec["seed"] = int(self._seed)
        return spec

    def num_parameters(self) -> int:
        return int(sum(p.size for p in self.params.values()))

    # ------------------------------------------------------------------ state
    def named_arrays(self) -> dict[str, np.ndarray]:
        """The model's state without copying: parameters, then buffers (running statistics)."""
        return {**self.params, **self.buffers}

    def state_dict(self) -> dict[str, np.ndarray]:
        """Copies of the parameters and buffers, keyed by name."""
        return {k: v.copy() for k, v in self.named_arrays().items()}

    def load_state_dict(self, state: Mapping[str, np.ndarray]) -> None:
        """Copy ``state`` into the parameters and buffers in place; names and shapes must match
        exactly."""
        target = self.named_arrays()
        missing = sorted(set(target) - set(state))
        extra = sorted(set(state) - set(target))
        if missing or extra:
            raise ValueError(f"parameter names do not match this model: missing {missing}, "
                             f"unexpected {extra}")
        for name, value in state.items():
            value = np.asarray(value)
            if value.shape != target[name].shape:
                raise ValueError(f"parameter {name!r} has shape {value.shape}, the model expects "
                                 f"{target[name].shape}")
            np.copyto(target[name], value, casting="same_kind")

    # ------------------------------------------------------------------ training
    def loss_and_grad(self, x: np.ndarray, y: np.ndarray, rng: np.random.Generator | None = None,
                      backward: bool = True, targets: np.ndarray | None = None) -> tuple[float, int]:
        """One training step's forward and backward pass on a batch.

        x: (N, D), y: (N,) labels. Fills ``self.grads`` (unless ``backward`` is False: the
        training-mode loss alone); returns (mean data loss, #correct).
        ``targets`` (N, K), rows summing to one, replaces the one-hot (label-smoothed) targets in
        the loss, e.g. a teacher's probabilities for distillation; ``y`` still counts #correct.
        Dropout masks come from ``rng`` (the model's own stream when None). With batchnorm the
        running statistics are updated too; they do not affect this step's loss or gradients.
        """
        x = self._as_input(x)
        work = self._workspace.for_batch(x.shape[0], training=True)
        rng = self._default_dropout_rng if rng is None else rng
        logits, inputs = self._forward(x, work, rng=rng)
        last_bias = (self.grads[f"layer{len(self.hidden)}.b"]
                     if backward and self._fused_head else None)
        head = self._fused_head and self._fused_head.loss_and_dlogits(
            logits, y, None if targets is None else self._targets(y, targets, x.shape[0]),
            self.label_smoothing, last_bias)
        if head:                                # the same numbers in six calls (nn/kernels)
            loss, dlogits, n_correct = head
        else:
            loss, dlogits = loss_and_dlogits(self.loss, self.output, logits,
                                             self._targets(y, targets, x.shape[0]))
            n_correct = int(np.count_nonzero(logits.argmax(axis=1) == y))
        if backward:
            self._backward(dlogits, inputs, work, last_bias_summed=bool(head))
        return loss, n_correct

    def _forward(self, x: np.ndarray, work: BatchWork, rng: np.random.Generator | None = None,
                 out: np.ndarray | None = None) -> tuple[np.ndarray, list[np.ndarray]]:
        """Logits (N, K) for x (N, D), into ``out`` if given; training mode when ``rng`` is given
        (dropout, batch statistics), else evaluation mode. Also returns the input each dense layer
        multiplied, the cache its backward pass needs for dW."""
        training = rng is not None
        p = self.params
        if training and self.input_dropout > 0.0:
            x = self._ops.dropout_forward(x, self._input_keep, rng, work.input_mask,
                                          work.input_dropped)
        inputs, a = [x], x
        for i, layer in enumerate(work.layers):
            fused = self._fused
            if not self.batchnorm:              # fused: the bias is added in the chain below
                layers.dense_forward(a, p[f"layer{i}.W"], None if fused else p[f"layer{i}.b"],
                                     out=layer.h)
            elif training:
                layers.dense_forward(a, p[f"layer{i}.W"], None, out=layer.xhat)
                self._batchnorm_train(i, layer, n=a.shape[0])
            else:
                layers.dense_forward(a, p[f"layer{i}.W"], None, out=layer.h)
                layers.batchnorm_forward_eval(
                    layer.h, p[f"layer{i}.gamma"], p[f"layer{i}.beta"],
                    self.buffers[f"layer{i}.running_mean"], self.buffers[f"layer{i}.running_var"],
                    self.bn_eps, out=layer.h)
            if fused:                           # the same chain in one pass (nn/kernels)
                a = fused.hidden_forward(layer.h, None if self.batchnorm else p[f"layer{i}.b"],
                                         rng if training and self.dropout > 0.0 else None,
                                         self._keep, layer.mask, layer.dropped)
                inputs.append(a)
                continue
            a = layers.activation_forward(self.activation, layer.h, out=layer.h)
            if training and self.dropout > 0.0:
                a = layers.dropout_forward(a, self._keep, rng, layer.mask, layer.dropped)
            inputs.append(a)
        last = len(self.hidden)
        if out is None:
            out = np.empty((x.shape[0], self.num_classes), self.dtype)
        logits = layers.dense_forward(a, p[f"layer{last}.W"], p[f"layer{last}.b"], out=out)
        return logits, inputs

    def _batchnorm_train(self, i: int, layer: LayerWork, n: int) -> None:
        """Hidden layer i's batch normalisation of ``layer.xhat`` (= z) into ``layer.h``, with
        batch statistics; updates the running averages."""
        self._ops.batchnorm_forward_train(layer.xhat, self.params[f"layer{i}.gamma"],
                                          self.params[f"layer{i}.beta"], self.bn_eps, layer.h,
                                          layer.mean, layer.var, layer.inv_std)
        layers.batchnorm_update_running(self.buffers[f"layer{i}.running_mean"],
                                        self.buffers[f"layer{i}.running_var"],
                                        layer.mean, layer.var, n, self.bn_momentum)

    def _backward(self, dlogits: np.ndarray, inputs: list[np.ndarray], work: BatchWork,
                  last_bias_summed: bool = False) -> None:
        """Backpropagate dL/dlogits (N, K) up the layers, filling ``self.grads``
        (``last_bias_summed``: the output layer's bias gradient is filled already)."""
        p, g = self.params, self.grads
        dz = dlogits                            # dL/d(this dense layer's output)
        summed = last_bias_summed               # whether a fused kernel gave this layer's db
        for i in range(len(self.hidden), -1, -1):
            below = work.layers[i - 1] if i > 0 else None
            has_bias = f"layer{i}.b" in g and not summed
            layers.dense_backward(dz, inputs[i], p[f"layer{i}.W"], g[f"layer{i}.W"],
                                  g[f"layer{i}.b"] if has_bias else None,
                                  below.dh if below is not None else None)
            if self.l2:                         # d/dW of ½·l2·‖W‖²
                g[f"layer{i}.W"] += self.l2 * p[f"layer{i}.W"]
            if below is None:
                break
            dz = below.dh                       # now dL/d(hidden layer i-1's output)
            if self._fused:                     # the same products and the bias sum in one pass
                summed = not self.batchnorm
                self._fused.hidden_backward(dz, below.h, below.mask,
                                            g[f"layer{i - 1}.b"] if summed else None)
            else:
                if self.dropout > 0.0:
                    layers.dropout_backward(dz, below.mask)
                layers.activation_backward(self.activation, dz, below.h)
            if self.batchnorm:                  # below.h is free now: it serves as scratch
                self._ops.batchnorm_backward(dz, below.xhat, p[f"layer{i - 1}.gamma"],
                                             below.inv_std, g[f"layer{i - 1}.gamma"],
                                             g[f"layer{i - 1}.beta"], scratch=below.h)

    def _targets(self, y: np.ndarray, targets: np.ndarray | None, n: int) -> np.ndarray:
        """(N, K) target distribution: ``targets`` when given, else one-hot (label-smoothed)."""
        if targets is None:
            return one_hot_targets(y, self.num_classes, self.label_smoothing, self.dtype)
        targets = np.ascontiguousarray(targets, dtype=self.dtype)
        if targets.shape != (n, self.num_classes):
            raise ValueError(f"targets: expected shape ({n}, {self.num_classes}), "
                             f"got {targets.shape}")
        return targets

    def l2_penalty(self) -> float:
        """½·l2·Σ‖W‖², the part of the objective not included in the reported loss."""
        if not self.l2:
            return 0.0
        return 0.5 * self.l2 * float(sum(np.vdot(v, v) for k, v in self.params.items()
                                         if k.endswith(".W")))

    # ------------------------------------------------------------------ inference
    def logits(self, x: np.ndarray, batch_size: int = 4096) -> np.ndarray:
        """(N, K) pre-output-nonlinearity scores in evaluation mode (no dropout)."""
        x = self._as_input(x)
        out = np.empty((x.shape[0], self.num_classes), dtype=self.dtype)
        for start in range(0, x.shape[0], batch_size):
            chunk = x[start:start + batch_size]
            work = self._workspace.for_batch(chunk.shape[0], training=False)
            self._forward(chunk, work, out=out[start:start + batch_size])
        return out

    def forward(self, x: np.ndarray, batch_size: int = 4096) -> np.ndarray:
        """(N, K) network outputs in evaluation mode: class probabilities for softmax output."""
        logits = self.logits(x, batch_size)
        return apply_output(self.output, logits, out=logits)

    def predict(self, x: np.ndarray, batch_size: int = 4096) -> np.ndarray:
        """(N,) predicted class labels."""
        return self.logits(x, batch_size).argmax(axis=1)

    def evaluate(self, x: np.ndarray, y: np.ndarray, batch_size: int = 2000) -> tuple[float, float]:
        """(mean data loss, accuracy) over the whole of ``x`` in evaluation mode."""
        x = self._as_input(x)
        total_loss, correct = 0.0, 0
        for start in range(0, x.shape[0], batch_size):
            yb = y[start:start + batch_size]
            logits = self.logits(x[start:start + batch_size], batch_size)
            target = one_hot_targets(yb, self.num_classes, self.label_smoothing, self.dtype)
            total_loss += float(per_example_loss(self.loss, self.output, logits, target).sum())
            correct += int(np.count_nonzero(logits.argmax(axis=1) == yb))
        n = max(1, x.shape[0])
        return total_loss / n, correct / n

    # ------------------------------------------------------------------ helpers
    def _as_input(self, x: np.ndarray) -> np.ndarray:
        if x.ndim != 2 or x.shape[1] != self.input_size:
            raise ValueError(f"expected input of shape (N, {self.input_size}), got {x.shape}")
        if x.dtype != self.dtype:
            x = x.astype(self.dtype)
        return x


def _fused_chains(kernels: str, activation: str, dtype) -> tuple[str, Any]:
    """(the kernels that run, the fused chains or None): numba's for the activations it fuses,
    else NumPy's reference chain (:mod:`fmnist_mlp.nn.kernels.chains`)."""
    from fmnist_mlp.nn.kernels import resolve_kernels

    kernels = resolve_kernels(kernels)
    if kernels == "numpy":
        return "numpy", None
    from fmnist_mlp.nn.kernels.chains import FUSED_ACTIVATIONS, FusedChains

    if activation not in FUSED_ACTIVATIONS:
        return "numpy", None
    return "numba", FusedChains(activation, dtype)


def _fused_head(fused_chains: Any, loss: str, dtype) -> Any:
    """The fused cross-entropy head where the layers' kernels are fused, else None."""
    if fused_chains is None or loss != "cross_entropy":
        return None
    from fmnist_mlp.nn.kernels.head import FusedHead

    return FusedHead(dtype)


def _streams(seed: int | np.random.Generator) -> tuple[np.random.Generator, np.random.Generator]:
    """Separate streams for initialisation and dropout, so enabling dropout keeps the init."""
    if isinstance(seed, np.random.Generator):
        return seed, np.random.default_rng(seed.integers(2**63))
    streams = spawn_streams(seed, ("init", "dropout"))
    return streams["init"], streams["dropout"]


def _check_arguments(**args: Any) -> None:
    """Programming errors only (configs are validated before a model is built): ValueError
    naming the argument."""
    checks = {
        "input_size": (args["input_size"] >= 1, "a positive integer"),
        "hidden": (all(h >= 1 for h in args["hidden"]), "positive layer widths ([] for none)"),
        "num_classes": (args["num_classes"] >= 2, "at least 2"),
        "activation": (args["activation"] in ACTIVATIONS, "one of " + ", ".join(ACTIVATIONS)),
        "output": (args["output"] in OUTPUTS, "one of " + ", ".join(OUTPUTS)),
        "loss": (args["loss"] in LOSSES and (args["loss"] != "cross_entropy"
                                             or args["output"] == "softmax"),
                 "one of " + ", ".join(LOSSES) + " (cross_entropy needs softmax output)"),
        "dropout": (0.0 <= args["dropout"] < 1.0, "a probability in [0, 1)"),
        "input_dropout": (0.0 <= args["input_dropout"] < 1.0, "a probability in [0, 1)"),
        "batchnorm": (isinstance(args["batchnorm"], (bool, np.bool_)), "true or false"),
        "label_smoothing": (0.0 <= args["label_smoothing"] < 1.0, "a value in [0, 1)"),
        "l2": (args["l2"] >= 0.0, "a non-negative number"),
        "init": (args["init"] in INITS, "one of " + ", ".join(INITS)),
        "dtype": (str(args["dtype"]) in DTYPES, "one of " + ", ".join(DTYPES)),
        "bn_momentum": (0.0 <= args["bn_momentum"] <= 1.0, "a value in [0, 1]"),
        "bn_eps": (args["bn_eps"] > 0.0, "a positive number"),
    }
    for name, (ok, expected) in checks.items():
        if not ok:
            raise ValueError(f"{name}: {args[name]!r} is not valid; expected {expected}")
