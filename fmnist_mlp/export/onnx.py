"""An ONNX graph that computes exactly what ``eval`` scores, from raw pixels to probabilities.

Built with ``onnx.helper`` at a pinned opset and IR version (any ONNX Runtime since 1.13 runs it):

    pixels (N, 784) float32, raw 0..255
      -> × (1/255), − mean, ÷ std             the run's own normalisation (as in training)
      -> [MatMul, Add b | Mul scale, Add shift (batch norm folded), activation] per hidden layer
      -> MatMul, Add b -> output units         softmax, sigmoid or linear
      -> with test-time flips: the same net on Gather(x, mirrored column order), outputs averaged
      -> with several runs: their outputs averaged
    logits, probabilities (N, 10) float32

``probabilities`` are the network's outputs (class probabilities for softmax units). ``logits``
are the last layer's scores when one run without flips is exported; when outputs are averaged
(flips or an ensemble) no such layer exists, and ``logits`` is the inverse of the output units
applied to the average (log p for softmax), so the output units map it back to ``probabilities``.
float64 runs compute in double inside the graph; both outputs are float32.
"""

from __future__ import annotations

import json
from typing import Any, Sequence

import numpy as np

from fmnist_mlp.data.augment import mirror
from fmnist_mlp.data.facts import IMAGE_SIDE, NUM_FEATURES
from fmnist_mlp.errors import require_extra
from fmnist_mlp.nn.layers import batchnorm_eval_affine

OPSET = 17
IR_VERSION = 8
INPUT, LOGITS, PROBABILITIES = "pixels", "logits", "probabilities"
_ACTIVATION_OPS = {"relu": "Relu", "tanh": "Tanh", "sigmoid": "Sigmoid", "linear": None}
_OUTPUT_OPS = {"softmax": "Softmax", "sigmoid": "Sigmoid", "linear": "Identity"}


def _onnx():
    return require_extra("onnx", "export")


class _GraphBuilder:
    """Collects nodes and constant tensors under unique names."""

    def __init__(self) -> None:
        self.onnx = _onnx()
        self.nodes: list[Any] = []
        self.initializers: list[Any] = []
        self._count = 0

    def _name(self, hint: str) -> str:
        self._count += 1
        return f"{hint}_{self._count}"

    def const(self, hint: str, value: np.ndarray) -> str:
        name = self._name(hint)
        self.initializers.append(self.onnx.numpy_helper.from_array(np.asarray(value), name))
        return name

    def op(self, op_type: str, inputs: Sequence[str], output: str | None = None, **attrs) -> str:
        output = output or self._name(op_type.lower())
        self.nodes.append(self.onnx.helper.make_node(op_type, list(inputs), [output], **attrs))
        return output


def _mirrored_columns(side: int = IMAGE_SIDE) -> np.ndarray:
    """Column order that mirrors each row of a flattened side×side image left–right: augment's
    own mirror (what eval's test-time flips use) applied to the column indices."""
    return mirror(np.arange(side * side, dtype=np.int64)[None, :], side)[0]


def _network(g: _GraphBuilder, x: str, model: Any, tag: str) -> str:
    """The MLP's evaluation-mode logits of ``x``; weights are added once per ``tag``."""
    spec, params, buffers = model.spec(), model.params, model.buffers
    dtype = np.dtype(spec["dtype"])
    a = x
    for i in range(len(spec["hidden"])):
        h = g.op("MatMul", [a, _shared(g, f"{tag}layer{i}.W", params[f"layer{i}.W"])])
        if spec["batchnorm"]:
            # Running statistics make batch norm a fixed affine map: z·scale + shift per unit.
            scale, shift = batchnorm_eval_affine(
                params[f"layer{i}.gamma"], params[f"layer{i}.beta"],
                buffers[f"layer{i}.running_mean"], buffers[f"layer{i}.running_var"], spec["bn_eps"])
            h = g.op("Mul", [h, _shared(g, f"{tag}layer{i}.bn_scale", scale.astype(dtype))])
            h = g.op("Add", [h, _shared(g, f"{tag}layer{i}.bn_shift", shift.astype(dtype))])
        else:
            h = g.op("Add", [h, _shared(g, f"{tag}layer{i}.b", params[f"layer{i}.b"])])
        activation = _ACTIVATION_OPS[spec["activation"]]
        a = g.op(activation, [h]) if activation else h
    last = len(spec["hidden"])
    z = g.op("MatMul", [a, _shared(g, f"{tag}layer{last}.W", params[f"layer{last}.W"])])
    return g.op("Add", [z, _shared(g, f"{tag}layer{last}.b", params[f"layer{last}.b"])])


def _shared(g: _GraphBuilder, name: str, value: np.ndarray) -> str:
    """A weight tensor added once under ``name`` and reused by both flip branches."""
    if not any(t.name == name for t in g.initializers):
        g.initializers.append(g.onnx.numpy_helper.from_array(np.ascontiguousarray(value), name))
    return name


def _member(g: _GraphBuilder, member: Any, tag: str) -> tuple[str, str]:
    """(logits, outputs) of one trained run from the raw pixels, both float32."""
    onnx = g.onnx
    model = member.model
    spec = model.spec()
    dtype = np.dtype(spec["dtype"])
    x = INPUT
    if dtype == np.float64:
        x = g.op("Cast", [x], to=onnx.TensorProto.DOUBLE)
    # The same three operations, in the same order and precision, as pixels_to_inputs.
    x = g.op("Mul", [x, g.const("inv255", np.array(1.0 / 255.0, dtype))])
    if (member.mean, member.std) != (0.0, 1.0):
        x = g.op("Sub", [x, g.const("mean", np.array(member.mean, dtype))])
        x = g.op("Div", [x, g.const("std", np.array(member.std, dtype))])
    output_op = _OUTPUT_OPS[spec["output"]]
    softmax_axis = {"axis": 1} if output_op == "Softmax" else {}
    logits = _network(g, x, model, tag)
    out = g.op(output_op, [logits], **softmax_axis)
    if member.test_flip:
        mirrored = g.op("Gather", [x, g.const("mirror", _mirrored_columns())], axis=1)
        out_mirrored = g.op(output_op, [_network(g, mirrored, model, tag)], **softmax_axis)
        out = g.op("Mul", [g.op("Add", [out, out_mirrored]), g.const("half", np.array(0.5, dtype))])
    if dtype == np.float64:
        logits = g.op("Cast", [logits], to=onnx.TensorProto.FLOAT)
        out = g.op("Cast", [out], to=onnx.TensorProto.FLOAT)
    return logits, out


def _inverse_output(g: _GraphBuilder, kind: str, p: str) -> str:
    """ensemble.logits_of_outputs as graph nodes."""
    tiny = g.const("tiny", np.array(np.finfo(np.float32).tiny, np.float32))
    if kind == "softmax":
        return g.op("Log", [g.op("Max", [p, tiny])], output=LOGITS)
    if kind == "sigmoid":
        one_minus = g.op("Sub", [g.const("one", np.array(1.0, np.float32)), p])
        return g.op("Sub", [g.op("Log", [g.op("Max", [p, tiny])]),
                            g.op("Log", [g.op("Max", [one_minus, tiny])])], output=LOGITS)
    return g.op("Identity", [p], output=LOGITS)


def build_onnx(members: Sequence[Any], class_names: Sequence[str]):
    """An ``onnx.ModelProto`` averaging ``members``' outputs (TrainedModel objects)."""
    from fmnist_mlp.scoring.ensemble import output_kind

    kind = output_kind(members)
    g = _GraphBuilder()
    onnx, helper = g.onnx, g.onnx.helper
    results = [_member(g, m, f"m{j}/" if len(members) > 1 else "") for j, m in enumerate(members)]
    if len(members) == 1 and not members[0].test_flip:
        logits, probabilities = results[0]
        g.op("Identity", [logits], output=LOGITS)
        g.op("Identity", [probabilities], output=PROBABILITIES)
    else:
        total = results[0][1] if len(members) == 1 else g.op("Sum", [out for _, out in results])
        if len(members) > 1:
            total = g.op("Div", [total, g.const("count", np.array(len(members), np.float32))])
        g.op("Identity", [total], output=PROBABILITIES)
        _inverse_output(g, kind, PROBABILITIES)
    classes = members[0].model.spec()["num_classes"]
    graph = helper.make_graph(
        g.nodes, "fmnist_mlp",
        [helper.make_tensor_value_info(INPUT, onnx.TensorProto.FLOAT, ["N", NUM_FEATURES])],
        [helper.make_tensor_value_info(name, onnx.TensorProto.FLOAT, ["N", classes])
         for name in (LOGITS, PROBABILITIES)],
        g.initializers)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)],
                              producer_name="fmnist-mlp", ir_version=IR_VERSION,
                              doc_string=__doc__.split("\n\n")[0])
    metadata = {"class_names": list(class_names),
                "config": members[0].config if len(members) == 1 else None,
                "configs": [m.config for m in members],
                "normalization": [{"mean": m.mean, "std": m.std} for m in members],
                "test_flip": [m.test_flip for m in members], "output": kind,
                "sources": [str(m.path) for m in members]}
    helper.set_model_props(model, {key: json.dumps(value) for key, value in metadata.items()})
    onnx.checker.check_model(model)
    return model
