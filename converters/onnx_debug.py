"""Per-layer int8 sensitivity of an ONNX QDQ model from one run, as onnxruntime's QDQ debugging tools
(``onnxruntime.quantization.qdq_loss_debug``) and NNCF measure it.

In a QDQ model every quantized tensor passes ``QuantizeLinear`` -> ``DequantizeLinear``: the float
tensor before and the dequantized one after are the same values with int8's rounding added (within
the range the int8 grid covers: a ReLU the quantizer folded into the grid's clip is not counted). Run once on calibration samples with those tensors as extra outputs, a layer's share of
noise is measured where it arises: the noise power its weights and its input activations get,
over their signal power. Keeping the layers with the most noise in float is what mixed precision
does with the ranking; it costs one session and a pass over the samples, not one quantization and
one measurement per layer.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from .._optional import need
from .base import Layer
from ..runtime.bundle.backends.onnx import session


def layer_errors(fp32: Path, quantized: Path, layers: Sequence[Layer], batches: Iterable[dict[str, np.ndarray]], *,
                 threads: int = 1) -> dict[str, float]:
    """For each layer of ``layers`` found in the QDQ model ``quantized`` (made from ``fp32``): noise over
    signal power of its quantized inputs (weights and activations), summed; 0 for a layer left in float."""
    onnx = need("onnx", extra="sdk", purpose="to read ONNX models")
    model = onnx.load(str(quantized))
    graph = model.graph
    producer = {out: node for node in graph.node for out in node.output}
    pairs: dict[str, list[tuple[str, str]]] = {}  # layer -> (float tensor, dequantized tensor) of each input
    wanted: set[str] = set()
    ranges: dict[str, tuple[float, float]] = {}  # dequantized tensor -> the float range its int8 grid covers
    constants = {i.name: i for i in graph.initializer}
    by_name = {node.name: node for node in graph.node}
    for layer in layers:
        node = by_name.get(layer.name)
        if node is None:
            continue
        for tensor in node.input:
            dq = producer.get(tensor)
            if dq is None or dq.op_type != "DequantizeLinear":
                continue
            q = producer.get(dq.input[0])
            if q is not None and q.op_type == "QuantizeLinear":  # an activation (or a weight quantized in-graph)
                before = q.input[0]
                grid = _grid(q, constants)
                if grid is not None:
                    ranges[tensor] = grid
            else:  # a weight stored in int8: its float value is the float model's, read below
                before = f"float:{tensor}"
            pairs.setdefault(layer.name, []).append((before, tensor))
            wanted.update(t for t in (before, tensor) if not t.startswith("float:"))
    if not pairs:
        return {}
    known = {o.name for o in graph.output}
    for name in sorted(wanted - known):
        graph.output.append(onnx.helper.make_empty_tensor_value_info(name))
    path = quantized.with_name(quantized.stem + ".debug.onnx")
    onnx.save(model, str(path))
    try:
        run = session(path, threads=threads, exact_int8=False)
        names = [o.name for o in run.get_outputs()]
        noise: dict[str, float] = dict.fromkeys(wanted, 0.0)
        signal: dict[str, float] = dict.fromkeys(wanted, 0.0)
        weights = {after for layer_pairs in pairs.values() for before, after in layer_pairs if before.startswith("float:")}
        values: dict[str, np.ndarray] = {}  # the dequantized weights (the same every batch)
        for feeds in batches:
            got = dict(zip(names, run.run(names, feeds)))
            values.update({k: got[k] for k in weights})
            for layer_pairs in pairs.values():
                for before, after in layer_pairs:
                    if before.startswith("float:"):
                        continue
                    x, y = got[before].astype(np.float64), got[after].astype(np.float64)
                    if after in ranges:  # a ReLU the quantizer folded into the grid's clip is not noise
                        x = np.clip(x, *ranges[after])
                    noise[after] += float(np.sum((y - x) ** 2))
                    signal[after] += float(np.sum(x ** 2))
    finally:
        path.unlink(missing_ok=True)
    floats = _float_weights(fp32, model, pairs)
    out = {}
    for layer, layer_pairs in pairs.items():
        total = 0.0
        for before, after in layer_pairs:
            if before.startswith("float:"):
                w, wq = floats.get(after), values.get(after)
                if w is None or wq is None or w.shape != wq.shape:
                    continue
                total += float(np.sum((wq.astype(np.float64) - w) ** 2) / max(np.sum(w.astype(np.float64) ** 2), 1e-30))
            else:
                total += noise[after] / max(signal[after], 1e-30)
        out[layer] = total
    return out


def _grid(q: Any, constants: dict[str, Any]) -> tuple[float, float] | None:
    """The float range a per-tensor QuantizeLinear's int8/uint8 grid covers, or ``None``."""
    from onnx import numpy_helper

    if len(q.input) < 3 or q.input[1] not in constants or q.input[2] not in constants:
        return None
    scale, zero = (numpy_helper.to_array(constants[q.input[i]]) for i in (1, 2))
    if scale.size != 1 or zero.dtype not in (np.uint8, np.int8):
        return None
    info = np.iinfo(zero.dtype)
    z, s = float(zero.reshape(-1)[0]), float(scale.reshape(-1)[0])
    return (info.min - z) * s, (info.max - z) * s


def _float_weights(fp32: Path, quantized: Any, pairs: dict[str, list[tuple[str, str]]]) -> dict[str, np.ndarray]:
    """The float value of each weight stored in int8, from the float model: the layer's node of the
    same name, the input at the same position."""
    onnx = need("onnx", extra="sdk", purpose="to read ONNX models")
    from onnx import numpy_helper

    model = onnx.load(str(fp32))
    weights = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}
    by_name = {node.name: node for node in model.graph.node}
    q_nodes = {node.name: node for node in quantized.graph.node}
    out = {}
    for layer, layer_pairs in pairs.items():
        float_node, q_node = by_name.get(layer), q_nodes.get(layer)
        if float_node is None or q_node is None:
            continue
        for before, after in layer_pairs:
            if not before.startswith("float:") or after not in q_node.input:
                continue
            index = list(q_node.input).index(after)
            if index < len(float_node.input) and float_node.input[index] in weights:
                out[after] = weights[float_node.input[index]]
    return out
