"""Pruning: unstructured magnitude pruning, and structured channel pruning that really
shrinks the network (torch-pruning's dependency graph removes the channels from every
layer that shares them, so the exported model is smaller and faster).
"""

from __future__ import annotations

import difflib
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from ..._optional import need
from ...errors import ValidationError

PRUNABLE = ("Conv1d", "Conv2d", "Conv3d", "Linear", "ConvTranspose2d")
# The same layers as ops in an exported graph (aten.<op>.default).
GRAPH_OPS = ("conv1d", "conv2d", "conv3d", "conv_transpose1d", "conv_transpose2d", "linear")


def check_ratio(ratio: float, what: str = "--prune") -> float:
    """A sparsity must lie in [0, 1): 1 would remove everything."""
    if not 0.0 <= ratio < 1.0:
        raise ValidationError(f"{what} {ratio:g} is outside [0, 1): it is the share of weights or channels to remove, "
                              "e.g. 0.5 for half")
    return ratio


def prunable_layers(model: Any) -> dict[str, Any]:
    """Conv and Linear layers by their module path.

    An exported program's module keeps each layer's weights but not its type: its
    convolutions and linear layers are read off the graph instead.
    """
    found = {name: m for name, m in model.named_modules() if type(m).__name__ in PRUNABLE}
    graph = getattr(model, "graph", None)
    if found or graph is None:
        return found
    modules = dict(model.named_modules())
    for node in graph.nodes:
        op = str(node.target).split(".")[-2] if node.op == "call_function" else ""
        weight = node.args[1] if len(node.args) > 1 else None
        if op in GRAPH_OPS and getattr(weight, "op", None) == "get_attr" and weight.target.endswith(".weight"):
            path = weight.target.rsplit(".", 1)[0]
            if path in modules:
                found[path] = modules[path]
    return found


def resolve_layers(model: Any, names: Sequence[str], what: str = "--skip") -> list[Any]:
    """The modules called ``names``; an unknown name suggests the closest ones.

    Raises:
        ValidationError: A name that is not a module of ``model``.
    """
    modules = dict(model.named_modules())
    found = []
    for name in names:
        if name not in modules or not name:
            close = difflib.get_close_matches(name, [n for n in modules if n], n=3, cutoff=0.5)
            hint = f"; did you mean {', '.join(close)}?" if close else f"; layers: {', '.join(list(prunable_layers(model))[:12])}"
            raise ValidationError(f"{what} {name!r} is not a layer of the model{hint}")
        found.append(modules[name])
    return found


def weight_sparsity(model: Any) -> float:
    """Share of exactly-zero weights over all Conv and Linear weights."""
    total = zeros = 0
    for m in prunable_layers(model).values():
        w = m.weight.detach()
        total += w.numel()
        zeros += int((w == 0).sum())
    return zeros / total if total else 0.0


@dataclass
class UnstructuredMask:
    """Zeroed weights that fine-tuning must keep at zero."""

    masks: dict[str, Any]

    def apply(self, model: Any) -> None:
        import torch

        layers = prunable_layers(model)
        with torch.no_grad():
            for name, mask in self.masks.items():
                weight = layers[name].weight
                if mask.device != weight.device:  # the model moved (to train on a GPU, or back): the mask follows once
                    mask = self.masks[name] = mask.to(weight.device)
                weight.mul_(mask)


def prune_unstructured(model: Any, amount: float, *, scope: str = "global", skip: Sequence[str] = (),
                       previous: UnstructuredMask | None = None) -> UnstructuredMask:
    """Zero the ``amount`` smallest-magnitude weights (over all layers, or in each layer).

    The tensors keep their shape: a dense runtime still stores and multiplies the zeros.
    """
    import torch

    check_ratio(amount)
    if scope not in ("global", "layer"):
        raise ValidationError(f"scope must be global or layer, got {scope!r}")
    skipped = {id(m) for m in resolve_layers(model, skip)}
    layers = {n: m for n, m in prunable_layers(model).items() if id(m) not in skipped}
    if not layers:
        raise ValidationError("no Conv or Linear layers left to prune")
    masks: dict[str, Any] = {}
    with torch.no_grad():
        if scope == "global":
            scores = torch.cat([m.weight.detach().abs().flatten() for m in layers.values()])
            k = int(amount * scores.numel())
            threshold = scores.kthvalue(k).values if k > 0 else scores.new_tensor(-1.0)
            for name, m in layers.items():
                masks[name] = (m.weight.abs() > threshold).to(m.weight.dtype)
        else:
            for name, m in layers.items():
                flat = m.weight.detach().abs().flatten()
                k = int(amount * flat.numel())
                threshold = flat.kthvalue(k).values if k > 0 else flat.new_tensor(-1.0)
                masks[name] = (m.weight.abs() > threshold).to(m.weight.dtype)
        if previous is not None:  # progressive: what was pruned stays pruned
            for name, mask in previous.masks.items():
                if name in masks:
                    masks[name] *= mask.to(masks[name].device)
    mask = UnstructuredMask(masks)
    mask.apply(model)
    return mask


def count(model: Any, example: tuple[Any, ...]) -> tuple[int, int]:
    """(MACs, parameters) of ``model`` for one ``example`` batch, counted by torch-pruning."""
    tp = _tp()
    macs, params = tp.utils.count_ops_and_params(model, example)
    return int(macs), int(params)


def prune_structured(model: Any, example: tuple[Any, ...], ratio: float, *, skip: Sequence[str] = (),
                     global_pruning: bool = False) -> Any:
    """Remove ``ratio`` of the output channels of every prunable layer, in place.

    The layer that produces the model's output keeps its width (the classes); channels are
    removed together with everything that depends on them (BatchNorm, the next layer's
    inputs), so the saved and exported model is really smaller.
    """
    import torch

    tp = _tp()
    check_ratio(ratio)
    ignored = resolve_layers(model, skip)
    with torch.no_grad():
        out = model(*example)
    first = out[0] if isinstance(out, (tuple, list)) else out
    for m in prunable_layers(model).values():  # the classifier head keeps its outputs
        if getattr(m, "out_features", None) == first.shape[-1] and m not in ignored:
            ignored.append(m)
    pruner = tp.pruner.MagnitudePruner(
        model, example, importance=tp.importance.MagnitudeImportance(p=2), pruning_ratio=ratio,
        ignored_layers=ignored, global_pruning=global_pruning,
    )
    pruner.step()
    return model


def _tp() -> Any:
    return need("torch_pruning", extra="sdk", purpose="for structured pruning")
