"""The multi-layer perceptron: dense layers, forward pass and backpropagation, in vectorised NumPy.

Rows are examples: ``x`` (N, D), ``W`` (D_in, D_out), ``b`` (D_out,), logits (N, K), ``y`` (N,).
Parameters live in ``params`` under names like ``"layer0.W"``; ``grads`` has the same keys and is
filled by :meth:`MLP.loss_and_grad`. Both dicts hold the *same* arrays for the model's lifetime
(updates and loads are in place), so an optimiser can keep per-name state safely.
With batch normalisation a hidden layer has ``W``, ``gamma`` and ``beta`` (no ``b``: β is its
bias) in ``params``, and running statistics, which are state but not parameters, in ``buffers``.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Any, Mapping, Sequence

import numpy as np

from fmnist_mlp.errors import ConfigError
from fmnist_mlp.nn import batchnorm as bn
from fmnist_mlp.nn.activations import ACTIVATIONS
from fmnist_mlp.nn.init import INITS, init_weight, resolve_init
from fmnist_mlp.nn.layout import resolve_layout, shaped_like, views_of
from fmnist_mlp.nn.losses import LOSSES, OUTPUTS, loss_and_dlogits, one_hot_targets, per_example_loss
from fmnist_mlp.nn.losses import apply_output

DTYPES = ("float32", "float64")


class _Buffers:
    """Per-batch-size work arrays, allocated once and reused by every step of that size.

    Hidden-layer arrays are always (N, width) to the code; with ``feature_major`` their memory
    holds each unit's N values back to back (a transposed view of a (width, N) array), which
    changes which BLAS kernels the products use but not their results. Only training buffers
    use it: for evaluation's large batches it measured no faster.
    """

    def __init__(self, n: int, input_size: int, hidden: Sequence[int], dropout: bool,
                 input_dropout: bool, dtype, batchnorm: bool = False,
                 feature_major: bool = False) -> None:
        def hidden_array(width: int) -> np.ndarray:
            return np.empty((width, n), dtype).T if feature_major else np.empty((n, width), dtype)

        self.h = [hidden_array(width) for width in hidden]                # f(z) per hidden layer
        self.dh = [hidden_array(width) for width in hidden]               # dL/d(layer output)
        self.mask = [hidden_array(width) for width in hidden] if dropout else []
        self.dropped = [hidden_array(width) for width in hidden] if dropout else []
        self.input_mask = np.empty((n, input_size), dtype) if input_dropout else None
        self.input_dropped = np.empty((n, input_size), dtype) if input_dropout else None
        # Batch normalisation in training: ẑ per hidden layer, and μ_B, σ²_B, 1/σ per unit.
        widths = hidden if batchnorm else []
        self.xhat = [hidden_array(width) for width in widths]
        self.mean = [np.empty(width, dtype) for width in widths]
        self.var = [np.empty(width, dtype) for width in widths]
        self.inv_std = [np.empty(width, dtype) for width in widths]


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
    ``layout`` is how arrays lie in memory, never what they hold (see :func:`resolve_layout`).
    """

    def __init__(self, input_size: int = 784, hidden: Sequence[int] = (256, 128),
                 num_classes: int = 10, activation: str = "relu", output: str = "softmax",
                 loss: str = "cross_entropy", dropout: float = 0.0, label_smoothing: float = 0.0,
                 l2: float = 0.0, init: str = "auto", dtype: str = "float32",
                 seed: int | np.random.Generator = 0, input_dropout: float = 0.0,
                 batchnorm: bool = False, bn_momentum: float = 0.1, bn_eps: float = 1e-5,
                 layout: str = "auto") -> None:
        hidden = [int(h) for h in hidden]
        _validate(input_size, hidden, num_classes, activation, output, loss, dropout,
                  label_smoothing, l2, init, dtype)
        if not 0.0 <= input_dropout < 1.0:
            raise ConfigError(f"model.input_dropout: {input_dropout!r} is not valid; expected a "
                              "probability in [0, 1)")
        self.input_dropout = float(input_dropout)
        if not isinstance(batchnorm, (bool, np.bool_)):
            raise ConfigError(f"model.batchnorm: {batchnorm!r} is not valid; expected true or false")
        if not 0.0 <= bn_momentum <= 1.0:
            raise ConfigError(f"bn_momentum: {bn_momentum!r} is not valid; expected a value in "
                              "[0, 1]")
        if not bn_eps > 0.0:
            raise ConfigError(f"bn_eps: {bn_eps!r} is not valid; expected a positive number")
        self.batchnorm = bool(batchnorm)
        self.layout = resolve_layout(layout, hidden)
        self.bn_momentum, self.bn_eps = float(bn_momentum), float(bn_eps)
        self.input_size, self.hidden, self.num_classes = int(input_size), hidden, int(num_classes)
        self.activation, self.output, self.loss = activation, output, loss
        self.dropout, self.label_smoothing, self.l2 = float(dropout), float(label_smoothing), float(l2)
        self.init, self.dtype = init, np.dtype(dtype)
        self._seed = seed if isinstance(seed, (int, np.integer)) else None
        init_rng, dropout_rng = _streams(seed)
        self._default_dropout_rng = dropout_rng
        self._act = ACTIVATIONS[activation]
        self._keep_threshold = _keep_threshold(self.dropout)
        self._input_keep_threshold = _keep_threshold(self.input_dropout)

        scheme = resolve_init(init, activation)
        sizes = [self.input_size, *hidden, self.num_classes]
        shapes = {}
        for i, (fan_in, fan_out) in enumerate(zip(sizes[:-1], sizes[1:])):
            shapes[f"layer{i}.W"] = (fan_in, fan_out)
            if self.batchnorm and i < len(hidden):
                shapes[f"layer{i}.gamma"], shapes[f"layer{i}.beta"] = (fan_out,), (fan_out,)
            else:
                shapes[f"layer{i}.b"] = (fan_out,)
        # Parameters and gradients are views into one contiguous buffer each, so an optimiser
        # can update all of them with a handful of large ufunc calls instead of many small ones.
        # The feature layout stores the first weight matrix unit by unit (column-major), as
        # PyTorch's Linear does: on this layout its products run faster (see resolve_layout).
        column_major = {"layer0.W"} if self.layout == "feature" and hidden else set()
        self.params: dict[str, np.ndarray] = _views(shapes, self.dtype, column_major)
        self.grads: dict[str, np.ndarray] = _views(shapes, self.dtype, column_major)
        for i, (fan_in, fan_out) in enumerate(zip(sizes[:-1], sizes[1:])):
            self.params[f"layer{i}.W"][...] = init_weight(init_rng, fan_in, fan_out, scheme,
                                                          self.dtype)
        for name, value in self.params.items():
            if name.endswith(".gamma"):
                value[...] = 1.0                # b and β start at 0 (the buffer is zeroed)
        # Running statistics: state the evaluation path uses, but not trained parameters.
        self.buffers: dict[str, np.ndarray] = {}
        if self.batchnorm:
            for i, width in enumerate(hidden):
                self.buffers[f"layer{i}.running_mean"] = np.zeros(width, self.dtype)
                self.buffers[f"layer{i}.running_var"] = np.ones(width, self.dtype)
        self._buffers: OrderedDict[int, _Buffers] = OrderedDict()

    # ------------------------------------------------------------------ construction
    @classmethod
    def from_config(cls, config: Mapping[str, Any]) -> "MLP":
        """Build from the dict a YAML experiment config gives (its ``model`` and ``loss`` sections)."""
        model = dict(config.get("model") or {})
        loss = dict(config.get("loss") or {})
        return cls(
            input_size=model.get("input_size", 784),
            hidden=model.get("hidden", (256, 128)),
            num_classes=model.get("num_classes", 10),
            activation=model.get("activation", "relu"),
            output=model.get("output", "softmax"),
            dropout=model.get("dropout", 0.0),
            input_dropout=model.get("input_dropout", 0.0),
            batchnorm=model.get("batchnorm", False),
            layout=model.get("layout", "auto"),
            init=model.get("init", "auto"),
            dtype=model.get("dtype", "float32"),
            loss=loss.get("name", "cross_entropy"),
            label_smoothing=loss.get("label_smoothing", 0.0),
            l2=loss.get("l2", 0.0),
            seed=config.get("seed", 0),
        )

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
        training-mode loss alone); returns (mean data loss, #correct). ``targets`` (N, K), rows
        summing to one (e.g. distillation's soft targets), replace the (smoothed) one-hot labels
        in the loss; ``y`` still counts the correct predictions.
        Dropout masks come from ``rng`` (the model's own stream when None). With batchnorm the
        running statistics are updated too; they do not affect this step's loss or gradients.
        """
        x = self._as_input(x)
        n = x.shape[0]
        bufs = self._buffers_for(n, training=True)
        rng = self._default_dropout_rng if rng is None else rng

        if self.input_dropout > 0.0:
            x = self._drop(x, bufs.input_mask, bufs.input_dropped, rng, self._input_keep_threshold)
        layer_inputs = [x]                      # the input each layer multiplies, (N, D_in)
        a = x
        for i in range(len(self.hidden)):
            h = bufs.h[i]
            if self.batchnorm:
                self._bn_forward_train(i, a, bufs)
            else:
                np.matmul(a, self.params[f"layer{i}.W"], out=h)
                h += self.params[f"layer{i}.b"]
            self._act.forward(h, h)
            if self.dropout > 0.0:
                a = self._drop(h, bufs.mask[i], bufs.dropped[i], rng, self._keep_threshold)
            else:
                a = h
            layer_inputs.append(a)
        last = len(self.hidden)
        logits = a @ self.params[f"layer{last}.W"]
        logits += self.params[f"layer{last}.b"]

        if targets is None:
            target = one_hot_targets(y, self.num_classes, self.label_smoothing, self.dtype)
        elif targets.shape != logits.shape:
            raise ValueError(f"targets: shape {targets.shape} does not match the logits' {logits.shape}")
        else:
            target = targets
        loss, dz = loss_and_dlogits(self.loss, self.output, logits, target)
        n_correct = int(np.count_nonzero(logits.argmax(axis=1) == y))
        if not backward:                        # the training-mode loss alone (gradient checks)
            return loss, n_correct

        for i in range(last, -1, -1):
            W = self.params[f"layer{i}.W"]
            np.matmul(layer_inputs[i].T, dz, out=self.grads[f"layer{i}.W"])
            if i == last or not self.batchnorm:
                np.sum(dz, axis=0, out=self.grads[f"layer{i}.b"])
            if self.l2:
                self.grads[f"layer{i}.W"] += self.l2 * W
            if i == 0:
                break                           # dL/dx is never needed: skip its matmul
            dh = bufs.dh[i - 1]
            np.matmul(dz, W.T, out=dh)
            if self.dropout > 0.0:
                dh *= bufs.mask[i - 1]
            self._act.backward(dh, bufs.h[i - 1])
            if self.batchnorm:
                # h[i-1] is free now (layer i's dW is done), so it serves as scratch.
                bn.backward(dh, bufs.xhat[i - 1], self.params[f"layer{i - 1}.gamma"],
                            bufs.inv_std[i - 1], self.grads[f"layer{i - 1}.gamma"],
                            self.grads[f"layer{i - 1}.beta"], bufs.h[i - 1])
            dz = dh
        return loss, n_correct

    def _bn_forward_train(self, i: int, a: np.ndarray, bufs: _Buffers) -> None:
        """Hidden layer i's ``y = BN(a W)`` into ``bufs.h[i]``, with batch statistics; updates
        the running averages."""
        xhat = bufs.xhat[i]
        np.matmul(a, self.params[f"layer{i}.W"], out=xhat)
        bn.forward_train(xhat, self.params[f"layer{i}.gamma"], self.params[f"layer{i}.beta"],
                         self.bn_eps, bufs.h[i], bufs.mean[i], bufs.var[i], bufs.inv_std[i])
        bn.update_running(self.buffers[f"layer{i}.running_mean"],
                          self.buffers[f"layer{i}.running_var"], bufs.mean[i], bufs.var[i],
                          a.shape[0], self.bn_momentum)

    @staticmethod
    def _drop(h: np.ndarray, mask: np.ndarray, dropped: np.ndarray, rng: np.random.Generator,
              threshold: int) -> np.ndarray:
        """Inverted dropout: keep each unit with probability q ≈ 1 − dropout, scale it by 1/q.

        The mask is drawn as 16-bit integers straight from the bit generator (four per 64-bit
        draw, about three times faster than float uniforms), so q is ``keep_threshold/65536``
        and the scale uses that exact q: the expected activation is unchanged.
        """
        words = rng.bit_generator.random_raw(-(-h.size // 4))
        # Laid out like the mask, so the comparison streams through memory in order.
        bits = shaped_like(words.view(np.uint16)[:h.size], mask)
        np.less(bits, threshold, out=mask)      # 1.0 where kept, 0.0 where dropped
        mask *= 65536.0 / threshold
        np.multiply(h, mask, out=dropped)
        return dropped

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
            out[start:start + batch_size] = self._eval_logits(x[start:start + batch_size])
        return out

    def forward(self, x: np.ndarray, batch_size: int = 4096) -> np.ndarray:
        """(N, K) network outputs in evaluation mode: class probabilities for softmax output."""
        return apply_output(self.output, self.logits(x, batch_size))

    def predict(self, x: np.ndarray, batch_size: int = 4096) -> np.ndarray:
        """(N,) predicted class labels."""
        return self.logits(x, batch_size).argmax(axis=1)

    def evaluate(self, x: np.ndarray, y: np.ndarray, batch_size: int = 2000) -> tuple[float, float]:
        """(mean data loss, accuracy) over the whole of ``x`` in evaluation mode."""
        x = self._as_input(x)
        total_loss, correct = 0.0, 0
        for start in range(0, x.shape[0], batch_size):
            xb, yb = x[start:start + batch_size], y[start:start + batch_size]
            logits = self._eval_logits(xb)
            target = one_hot_targets(yb, self.num_classes, self.label_smoothing, self.dtype)
            total_loss += float(per_example_loss(self.loss, self.output, logits, target).sum())
            correct += int(np.count_nonzero(logits.argmax(axis=1) == yb))
        n = max(1, x.shape[0])
        return total_loss / n, correct / n

    def _eval_logits(self, x: np.ndarray) -> np.ndarray:
        bufs = self._buffers_for(x.shape[0], training=False)
        a = x
        for i in range(len(self.hidden)):
            h = bufs.h[i]
            np.matmul(a, self.params[f"layer{i}.W"], out=h)
            if self.batchnorm:                  # running statistics: one affine map per unit
                scale, shift = bn.eval_affine(
                    self.params[f"layer{i}.gamma"], self.params[f"layer{i}.beta"],
                    self.buffers[f"layer{i}.running_mean"],
                    self.buffers[f"layer{i}.running_var"], self.bn_eps)
                h *= scale
                h += shift
            else:
                h += self.params[f"layer{i}.b"]
            self._act.forward(h, h)
            a = h                               # inverted dropout needs no scaling at test time
        last = len(self.hidden)
        logits = a @ self.params[f"layer{last}.W"]
        logits += self.params[f"layer{last}.b"]
        return logits

    # ------------------------------------------------------------------ helpers
    def _as_input(self, x: np.ndarray) -> np.ndarray:
        if x.ndim != 2 or x.shape[1] != self.input_size:
            raise ValueError(f"expected input of shape (N, {self.input_size}), got {x.shape}")
        if x.dtype != self.dtype:
            x = x.astype(self.dtype)
        return x

    def _buffers_for(self, n: int, training: bool) -> _Buffers:
        key = (n, training)
        bufs = self._buffers.get(key)
        if bufs is None:
            bufs = _Buffers(n, self.input_size, self.hidden, training and self.dropout > 0.0,
                            training and self.input_dropout > 0.0, self.dtype,
                            training and self.batchnorm, training and self.layout == "feature")
            self._buffers[key] = bufs
            if len(self._buffers) > 6:          # e.g. a train size, its remainder, eval sizes
                self._buffers.popitem(last=False)
        else:
            self._buffers.move_to_end(key)
        return bufs


def _keep_threshold(dropout: float) -> int:
    """Dropout's keep probability as a count out of 65536 (the masks are 16-bit draws)."""
    return min(65535, max(1, round((1.0 - dropout) * 65536)))


def _views(shapes: Mapping[str, tuple[int, ...]], dtype,
           column_major: frozenset[str] | set[str] = frozenset()) -> dict[str, np.ndarray]:
    """Named arrays of the given shapes laid out back to back in one zeroed buffer; the names in
    ``column_major`` are stored column by column (Fortran order)."""
    flat = np.zeros(sum(int(np.prod(shape)) for shape in shapes.values()), dtype=dtype)
    return views_of(flat, shapes, column_major)


def _streams(seed: int | np.random.Generator) -> tuple[np.random.Generator, np.random.Generator]:
    """Separate streams for initialisation and dropout, so enabling dropout keeps the init."""
    if isinstance(seed, np.random.Generator):
        return seed, np.random.default_rng(seed.integers(2**63))
    init_seq, dropout_seq = np.random.SeedSequence(int(seed)).spawn(2)
    return np.random.default_rng(init_seq), np.random.default_rng(dropout_seq)


def _validate(input_size, hidden, num_classes, activation, output, loss, dropout,
              label_smoothing, l2, init, dtype) -> None:
    def bad(field: str, value: Any, expected: str) -> ConfigError:
        return ConfigError(f"{field}: {value!r} is not valid; expected {expected}")

    if input_size < 1:
        raise bad("model.input_size", input_size, "a positive integer")
    if any(h < 1 for h in hidden):
        raise bad("model.hidden", hidden, "a list of positive layer widths (or [] for none)")
    if num_classes < 2:
        raise bad("model.num_classes", num_classes, "at least 2")
    if activation not in ACTIVATIONS:
        raise bad("model.activation", activation, "one of " + ", ".join(ACTIVATIONS))
    if output not in OUTPUTS:
        raise bad("model.output", output, "one of " + ", ".join(OUTPUTS))
    if loss not in LOSSES:
        raise bad("loss.name", loss, "one of " + ", ".join(LOSSES))
    if loss == "cross_entropy" and output != "softmax":
        raise ConfigError(f"loss.name: cross_entropy needs model.output softmax, not {output!r} "
                          "(use squared_error for sigmoid or linear outputs)")
    if not 0.0 <= dropout < 1.0:
        raise bad("model.dropout", dropout, "a probability in [0, 1)")
    if not 0.0 <= label_smoothing < 1.0:
        raise bad("loss.label_smoothing", label_smoothing, "a value in [0, 1)")
    if l2 < 0.0:
        raise bad("loss.l2", l2, "a non-negative number")
    if init not in INITS:
        raise bad("model.init", init, "one of " + ", ".join(INITS))
    if str(dtype) not in DTYPES:
        raise bad("model.dtype", dtype, "float32 or float64")
