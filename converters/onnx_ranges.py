"""What an ONNX graph's tensors hold on real samples, and what that means for int8 and fp16.

- :func:`mixed_range_concats`: a ``Concat`` of parts whose ranges differ by orders of
  magnitude (a detector's box coordinates in pixels beside class scores in 0..1) cannot share
  one int8 scale: every score would round to 0 or one step. Such a concat, and the head after
  it up to the next layer with weights, stays in float; each part is quantized on its own
  before it, the way NNCF's ignored scopes and the major exporters treat detection heads.
- :func:`fp16_overflows`: tensors whose values do not fit fp16 (beyond ±65504, or so large
  that their products do), whose nodes stay fp32 in an fp16 model.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..runtime.bundle.backends.onnx import session
from .base import RANGE_RATIO

# Nodes after a mixed Concat that hold no weights (reshapes, activations, arithmetic) stay
# float with it; a layer with weights ends the head and is quantized as usual.
WEIGHT_OPS = {"Conv", "ConvTranspose", "Gemm", "MatMul", "LSTM", "GRU", "RNN"}
# Samples run to measure ranges: ranges of a head settle within a few batches.
PROBE_SAMPLES = 32
# fp16's largest finite value, with headroom for what a node computes from such values.
FP16_SAFE = 65504.0 / 4
# Reductions that square before they sum.
SQUARE_SUMS = {"ReduceL2", "ReduceSumSquare"}


@dataclass(frozen=True)
class MixedRange:
    """A Concat whose parts need separate int8 scales.

    Attributes:
        node: The Concat's node name.
        ratio: Largest over smallest of its parts' peak |value|.
        float_nodes: The nodes kept float: the Concat and the weightless head after it.
    """

    node: str
    ratio: float
    float_nodes: tuple[str, ...]

    def describe(self) -> str:
        head = len(self.float_nodes) - 1
        return (f"{self.node}: parts differ {self.ratio:.0f}x in range" +
                (f", kept float with the {head} weightless node{'s' if head != 1 else ''} after it" if head else
                 ", kept float"))


def probe(model: Any, names: list[str], batches: Iterable[dict[str, np.ndarray]]) -> Iterator[list[np.ndarray]]:
    """Run ``model`` (a ``ModelProto``) with the tensors ``names`` exposed as outputs, batch by batch."""
    import onnx
    from onnx import helper

    exposed = onnx.ModelProto()
    exposed.CopyFrom(model)
    known = {o.name for o in exposed.graph.output}
    exposed.graph.output.extend(helper.make_tensor_value_info(n, onnx.TensorProto.FLOAT, None)
                                for n in names if n not in known)
    runner = session(exposed.SerializeToString())
    for feeds in batches:
        yield runner.run(names, feeds)


def _float_tensors(model: Any) -> set[str]:
    """Names of tensors known to be float32 (values, inputs, outputs after shape inference)."""
    import onnx

    floats = set()
    for v in [*model.graph.value_info, *model.graph.input, *model.graph.output]:
        if v.type.tensor_type.elem_type == onnx.TensorProto.FLOAT:
            floats.add(v.name)
    return floats


def _peaks(model: Any, names: list[str], batches: Iterable[dict[str, np.ndarray]],
           sizes: dict[str, int] | None = None) -> dict[str, float]:
    """Largest finite |value| of each tensor over ``batches`` (and its size per batch into ``sizes``)."""
    peaks: dict[str, float] = {}
    for values in probe(model, names, batches):
        for name, value in zip(names, values):
            if sizes is not None:
                sizes[name] = max(sizes.get(name, 0), int(value.size))
            if value.size:
                finite = np.abs(value[np.isfinite(value)]) if not np.isfinite(value).all() else np.abs(value)
                peak = float(finite.max()) if finite.size else 0.0
                peaks[name] = max(peaks.get(name, 0.0), peak)
    return peaks


def mixed_range_concats(model: Any, batches: Iterable[dict[str, np.ndarray]]) -> list[MixedRange]:
    """The Concats of ``model`` (a shape-inferred ``ModelProto``) whose parts' ranges differ by over
    :data:`RANGE_RATIO` on ``batches``, each with the weightless head after it."""
    from onnx import numpy_helper

    inits = {i.name: i for i in model.graph.initializer}
    floats = _float_tensors(model)
    concats = [n for n in model.graph.node if n.op_type == "Concat" and len(n.input) > 1]
    names = sorted({i for n in concats for i in n.input if i and i not in inits and i in floats})
    if not names:
        return []
    peaks = _peaks(model, names, batches)
    for n in concats:
        for i in n.input:
            if i in inits:
                arr = numpy_helper.to_array(inits[i])
                if arr.dtype.kind == "f" and arr.size:
                    peaks[i] = float(np.abs(arr).max())
    consumers: dict[str, list[Any]] = {}
    for n in model.graph.node:
        for i in n.input:
            consumers.setdefault(i, []).append(n)
    found = []
    for n in concats:
        parts = [peaks[i] for i in n.input if i in peaks and peaks[i] > 0]
        if len(parts) < 2 or max(parts) / min(parts) < RANGE_RATIO:
            continue
        head, todo, seen = [n.name], list(n.output), set()
        while todo:
            tensor = todo.pop()
            for c in consumers.get(tensor, []):
                if c.name in seen or c.op_type in WEIGHT_OPS:
                    continue
                seen.add(c.name)
                head.append(c.name)
                todo.extend(c.output)
        found.append(MixedRange(n.name, max(parts) / min(parts), tuple(head)))
    return found


def fp16_overflows(model: Any, batches: Iterable[dict[str, np.ndarray]]) -> list[str]:
    """Nodes of ``model`` that read or write values too large for fp16 on ``batches``, in graph order."""
    floats = _float_tensors(model)
    produced = [o for n in model.graph.node for o in n.output if o in floats]
    if not produced:
        return []
    batches = list(batches)
    sizes: dict[str, int] = {}
    peaks = _peaks(model, produced, batches, sizes)
    for feeds in batches:  # the graph's inputs stay float32, but what reads them computes in fp16
        for name, value in feeds.items():
            if name in floats and value.size:
                peaks[name] = max(peaks.get(name, 0.0), float(np.abs(value).max()))
                sizes[name] = max(sizes.get(name, 0), int(value.size))
    from onnx import numpy_helper

    big = {name for name, peak in peaks.items() if peak > FP16_SAFE}
    for n in model.graph.node:
        # A sum of squares can overflow inside the kernel while its result (a norm) fits.
        if n.op_type in SQUARE_SUMS and n.input and n.input[0] in peaks and n.output[0] in sizes:
            count = sizes.get(n.input[0], 1) / max(sizes[n.output[0]], 1)
            if peaks[n.input[0]] ** 2 * count > FP16_SAFE:
                big.add(n.output[0])
    for init in model.graph.initializer:
        arr = numpy_helper.to_array(init)
        if arr.dtype.kind == "f" and arr.size and float(np.abs(arr).max()) > FP16_SAFE:
            big.add(init.name)
    return [n.name for n in model.graph.node if n.name and any(t in big for t in [*n.input, *n.output])]


# An fp16 model whose worst output cosine to fp32 (on the probe samples) is below this was
# mis-converted, not rounded: fp16 keeps a CNN above 0.9999.
FP16_FAITHFUL = 0.999
# Op types tried in fp32, one more per round, when an fp16 model is not faithful.
FP16_ROUNDS = 3


def _worst_cosine(ref: list[np.ndarray], got: list[np.ndarray]) -> float:
    worst = 1.0
    for r, g in zip(ref, got):
        r = r.reshape(len(r), -1).astype(np.float64)
        g = np.nan_to_num(g.reshape(len(g), -1).astype(np.float64), nan=0.0, posinf=1e30, neginf=-1e30)
        norms = np.linalg.norm(r, axis=1) * np.linalg.norm(g, axis=1)
        cos = np.where(norms == 0, 1.0, np.sum(r * g, axis=1) / np.where(norms == 0, 1.0, norms))
        worst = min(worst, float(cos.min()))
    return worst


def faithful_fp16(model: Any, batches: Iterable[dict[str, np.ndarray]]) -> tuple[Any, dict[str, Any]]:
    """``model`` in fp16 with float32 I/O, checked against itself in fp32 on ``batches``.

    Nodes whose values overflow fp16 stay fp32 first. If the fp16 model still disagrees
    with the fp32 one (worst output cosine under :data:`FP16_FAITHFUL`), whole op types are
    kept fp32, the one that helps most each round, until it agrees: an op the converter
    mis-handles is found by what it does, not by a list. Returns the model and what was kept.
    """
    from onnx import shape_inference
    from onnxruntime.transformers.float16 import DEFAULT_OP_BLOCK_LIST, convert_float_to_float16

    batches = list(batches)
    blocked = fp16_overflows(shape_inference.infer_shapes(model), batches) if batches else []
    kept: dict[str, Any] = {}
    if blocked:
        kept["fp32_nodes"] = f"{len(blocked)} node(s) whose values exceed fp16's range stay fp32"

    def convert(types: list[str]) -> Any:
        return convert_float_to_float16(model, keep_io_types=True, node_block_list=blocked,
                                        op_block_list=list(DEFAULT_OP_BLOCK_LIST) + types)

    def score(candidate: Any) -> float:
        try:
            runner = session(candidate.SerializeToString())
        except Exception:  # the converter wrote a graph onnxruntime refuses (a node reading one tensor twice)
            return float("-inf")
        return min(_worst_cosine(r, runner.run(None, feeds)) for feeds, r in zip(batches, reference))

    model16 = convert([])
    if not batches:
        return model16, kept
    fp32 = session(model.SerializeToString())
    reference = [fp32.run(None, feeds) for feeds in batches]
    found = score(model16)
    if found == float("-inf") and blocked:
        blocked, kept = [], {}
        model16 = convert([])
        found = score(model16)
    kept["fp16_cosine"] = round(found, 6)
    types: list[str] = []
    candidates = sorted({n.op_type for n in model.graph.node} - set(DEFAULT_OP_BLOCK_LIST)
                        - {"Constant", "Identity", "Shape", "Reshape", "Flatten", "Squeeze", "Unsqueeze"})
    for _ in range(FP16_ROUNDS):
        if found >= FP16_FAITHFUL or not candidates:
            break
        tried = {t: score(convert(types + [t])) for t in candidates}
        best = max(tried, key=tried.get)
        if tried[best] <= found:
            break
        types.append(best)
        candidates.remove(best)
        found = tried[best]
        model16 = convert(types)
    if types:
        kept["fp32_ops"] = types
        kept["fp16_cosine"] = round(found, 6)
    return model16, kept
