"""ONNX graphs as other exporters write them, made ready for quantization.

Models from other tools' exporters often store every weight as a ``Constant`` node instead of
an initializer (so a scan of initializers sees no layers), carry an old opset (per-channel
``QuantizeLinear``/``DequantizeLinear`` with ``axis`` need opset 13: onnxruntime writes them
anyway and the candidate then fails to load), and lack shape information. :func:`normalize`
fixes all three before anything reads the graph; what it did is returned for the report.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from .._optional import need
from ..errors import first_line

# Per-channel QDQ (DequantizeLinear's axis attribute) exists from opset 13 on.
MIN_OPSET = 13


def constants_to_initializers(model: Any) -> int:
    """Move the main graph's ``Constant`` nodes into initializers, in place; returns how many moved."""
    import onnx
    from onnx import helper, numpy_helper

    outputs = {o.name for o in model.graph.output}
    kept, moved = [], 0
    for node in model.graph.node:
        if node.op_type != "Constant" or node.domain not in ("", "ai.onnx") or len(node.attribute) != 1 \
                or node.output[0] in outputs:
            kept.append(node)
            continue
        attr = node.attribute[0]
        if attr.name == "value":
            tensor = onnx.TensorProto()
            tensor.CopyFrom(attr.t)
        elif attr.name in ("value_float", "value_floats", "value_int", "value_ints"):
            import numpy as np

            value = helper.get_attribute_value(attr)
            dtype = np.float32 if "float" in attr.name else np.int64
            tensor = numpy_helper.from_array(np.array(value, dtype=dtype))
        else:  # sparse tensors and strings stay nodes
            kept.append(node)
            continue
        tensor.name = node.output[0]
        model.graph.initializer.append(tensor)
        moved += 1
    if moved:
        del model.graph.node[:]
        model.graph.node.extend(kept)
    return moved


def opset(model: Any) -> int:
    return next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 0)


def normalize(src: Path, dst: Path) -> dict[str, Any]:
    """Write ``src`` to ``dst`` with Constant weights as initializers, opset ≥ 13, shapes inferred.

    Returns:
        What was done, for the report: ``constants_moved``, ``opset`` (from, to), ``notes``,
        and a one-line ``summary``.
    """
    onnx = need("onnx", extra="sdk", purpose="to prepare ONNX models")
    model = onnx.load(str(src))
    done: dict[str, Any] = {"constants_moved": constants_to_initializers(model), "notes": []}
    before = opset(model)
    done["opset"] = [before, before]
    if 0 < before < MIN_OPSET:
        from onnx import version_converter

        try:
            model = version_converter.convert_version(model, MIN_OPSET)
            done["opset"] = [before, MIN_OPSET]
        except Exception as exc:  # the converter has no adapter for some old ops
            done["notes"].append(f"opset {before} could not be raised to {MIN_OPSET} ({first_line(exc, 160)}); "
                                 "per-channel int8 candidates may fail and are then reported as failed")
    try:
        model = onnx.shape_inference.infer_shapes(model, data_prop=True)
    except Exception as exc:  # shapes help the quantizer but are not required
        done["notes"].append(f"shape inference failed ({first_line(exc, 160)}); quantizing without it")
    onnx.save(model, str(dst))
    done["summary"] = describe(done)
    return done


def describe(done: dict[str, Any]) -> str:
    """One line for the report: what normalizing the graph changed."""
    parts = []
    if done.get("constants_moved"):
        parts.append(f"{done['constants_moved']} Constant nodes made initializers")
    before, after = done.get("opset", [0, 0])
    if before != after:
        parts.append(f"opset {before} raised to {after}")
    return "; ".join(parts + done.get("notes", [])) or "nothing to change"


def float_blocks(model: Any, layers: tuple[str, ...] | list[str]) -> list[str]:
    """The nodes to leave unquantized so that ``layers`` really run in float: each layer with
    the weightless ops it feeds alone (bias, normalization, activation: ``Relu``, SiLU's
    ``Sigmoid`` + ``Mul``), up to the next layer with weights or a merge with another branch.

    Excluding a Conv alone keeps only its weights float: onnxruntime still quantizes its
    output, now before the activation (over the wider pre-activation range) and again after
    it, so every layer "kept in float" added an int8 step and mixed precision got worse the
    more layers it kept. With its block float, the only int8 steps left are at the block's
    edges, where they were before.
    """
    from .onnx_ranges import WEIGHT_OPS

    inits = {i.name for i in model.graph.initializer}
    producer = {o: n for n in model.graph.node for o in n.output}
    readers: dict[str, list[Any]] = {}
    for n in model.graph.node:
        for i in n.input:
            readers.setdefault(i, []).append(n)
    by_name = {n.name: n for n in model.graph.node}
    keep: list[str] = []
    for layer in layers:
        node = by_name.get(layer)
        if node is None:
            continue
        block = [node.name]
        tensors = set(node.output)
        todo = list(node.output)
        while todo:
            for reader in readers.get(todo.pop(), []):
                if reader.name in block or reader.op_type in WEIGHT_OPS:
                    continue
                outside = [i for i in reader.input if i and i not in inits and i not in tensors and i in producer]
                if outside:  # a merge with another branch (a residual Add): the block ends here
                    continue
                block.append(reader.name)
                tensors.update(reader.output)
                todo.extend(reader.output)
        keep += [n for n in block if n not in keep]
    return keep
