# Building ONNX graphs node by node from numpy weights (no torch, no exporter).
#
# Rules:
# - Names are deterministic: an initializer is named by the caller (a readable,
#   Hugging Face-like name such as "model.layers.0.mlp.down_proj") or numbered in
#   creation order, and every node output is numbered in creation order, so the
#   same sequence of calls gives the same graph and the same serialised bytes.
# - Constants are stored once per call; callers keep the returned name to share
#   one initializer between several nodes (e.g. tied embeddings).
#
# Theory of operation: `GraphBuilder` only accumulates NodeProtos and
# TensorProtos; `model()` wraps them with the caller's inputs and outputs into a
# ModelProto with a fixed opset and IR version (no timestamps, no random ids).
from __future__ import annotations

from typing import Any

import numpy as np
import onnx
from onnx import helper, numpy_helper

__all__ = ["IR_VERSION", "OPSET", "GraphBuilder"]

OPSET, IR_VERSION = 17, 9


class GraphBuilder:
    """Accumulates nodes and initializers with generated, unique names."""

    def __init__(self) -> None:
        self.nodes: list[onnx.NodeProto] = []
        self.initializers: list[onnx.TensorProto] = []
        self._count = 0

    def const(self, array: np.ndarray, name: str | None = None) -> str:
        """Add `array` as an initializer and return its name."""
        self._count += 1
        name = name or f"const_{self._count}"
        self.initializers.append(numpy_helper.from_array(np.asarray(array), name))
        return name

    def ints(self, *values: int) -> str:
        """A 1-D int64 constant (shapes, axes, split sizes)."""
        return self.const(np.array(values, np.int64))

    def scalar(self, value: float, dtype: type[np.generic] = np.float32) -> str:
        return self.const(np.array(value, dtype))

    def op(self, op_type: str, *inputs: str, out: str | None = None, **attributes: Any) -> str:
        """Add one single-output node; returns the output's name."""
        return self.ops(op_type, *inputs, outs=[out] if out else None, **attributes)[0]

    def ops(self, op_type: str, *inputs: str, outs: list[str] | None = None, count: int = 1,
            **attributes: Any) -> list[str]:
        """Add one node with `count` outputs (or the named `outs`); returns their names."""
        self._count += 1
        outputs = outs or [f"{op_type.lower()}_{self._count}_{i}" for i in range(count)]
        self.nodes.append(helper.make_node(op_type, list(inputs), outputs, **attributes))
        return outputs

    def model(self, name: str, inputs: list[onnx.ValueInfoProto], outputs: list[onnx.ValueInfoProto],
              *, producer: str, version: str, doc: str = "") -> onnx.ModelProto:
        """The finished model (checked by onnx.checker)."""
        graph = helper.make_graph(self.nodes, name, inputs, outputs, self.initializers)
        model = helper.make_model(
            graph,
            opset_imports=[helper.make_opsetid("", OPSET)],
            ir_version=IR_VERSION,
            producer_name=producer,
            producer_version=version,
            doc_string=doc,
        )
        onnx.checker.check_model(model)
        return model
