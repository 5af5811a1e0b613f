"""PyTorch models, loaded safely: ``torch.export`` programs, factories with weights, modules.

A ``.pt2`` is loaded with every ``torch.load`` forced to ``weights_only=True`` and raw pickle
refused, so a hostile file cannot run code; weights come from safetensors or a weights-only
state_dict. Whatever the form, the model is held as a ``torch.export`` program with a dynamic
batch where the model allows one.
"""

from __future__ import annotations

import contextlib
import importlib
import inspect
import os
import sys
import threading
import types
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..._optional import need
from ..._quiet import quiet
from ...errors import InferenceError, ModelLoadError, first_line
from ...runtime.bundle.tensors import TensorSpec

_TORCH_DTYPES = {
    "torch.float32": "float32",
    "torch.float16": "float16",
    "torch.bfloat16": "float32",
    "torch.float64": "float32",
    "torch.int64": "int64",
    "torch.int32": "int32",
    "torch.int8": "int8",
    "torch.uint8": "uint8",
    "torch.bool": "bool",
}

def trainable(graph: Any) -> Any:
    """An exported program's module that takes ``.train()`` and ``.eval()`` like any module.

    ``ExportedProgram.module()`` refuses both; the graph is fixed at export, so the modes
    switch what can switch in a graph (dropout and batch norm), which is what training and
    distillation need.
    """
    with quiet():  # torchao reports every optional CUDA kernel it cannot load
        pt2e = need("torchao.quantization.pt2e", extra="sdk", purpose="to train an exported program")

    def train(self: Any, mode: bool = True) -> Any:
        (pt2e.move_exported_model_to_train if mode else pt2e.move_exported_model_to_eval)(self)
        return self  # as nn.Module.train does, so `model.eval()(x)` works

    def evaluate(self: Any) -> Any:
        return train(self, False)

    graph.train = types.MethodType(train, graph)
    graph.eval = types.MethodType(evaluate, graph)
    return graph


def require_torch() -> Any:
    """``torch``, or an error naming the extra that installs it."""
    return need("torch", extra="sdk", purpose="to load PyTorch models")


@dataclass
class TorchSource:
    """A PyTorch model held as a ``torch.export`` program (dynamic batch where possible)."""

    program: Any  # torch.export.ExportedProgram
    label: str
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]
    size_bytes: int
    kind: str = "torch"
    examples: dict[str, tuple[int, ...]] = field(default_factory=dict)  # sizes the program was exported with
    warnings: list[str] = field(default_factory=list)  # what the user should know about the file

    _module: Any = None

    def module(self) -> Any:
        """The program as a callable module, built once (building it is costly)."""
        if self._module is None:
            self._module = self.program.module()
        return self._module

    def run(self, feeds: Mapping[str, np.ndarray]) -> list[np.ndarray]:
        """The outputs for ``feeds``. A program exported with a fixed batch (``torch.export.export(model,
        (x[:1],))``) runs a larger batch in chunks of its own.

        Raises:
            InferenceError: The program refuses the inputs (one line, with what to do).
        """
        chunk = static_batch(self.inputs, feeds)
        if chunk:
            n = len(feeds[self.inputs[0].name])
            parts = [self._run({k: v[i:i + chunk] for k, v in feeds.items()}) for i in range(0, n, chunk)]
            return [np.concatenate(p) for p in zip(*parts)]
        return self._run(feeds)

    def _run(self, feeds: Mapping[str, np.ndarray]) -> list[np.ndarray]:
        torch = require_torch()
        args = tuple(torch.from_numpy(np.ascontiguousarray(feeds[t.name])) for t in self.inputs)
        try:
            with torch.no_grad():
                out = self.module()(*args)
        except Exception as exc:  # torch's guards raise AssertionError, kernels RuntimeError
            shapes = ", ".join(f"{t.name} {list(np.shape(feeds[t.name]))}" for t in self.inputs)
            raise InferenceError(f"{self.label} does not run on inputs {shapes} ({first_line(exc, 300)}): it takes "
                                 f"{'; '.join(t.describe() for t in self.inputs)}") from None
        return [o.detach().cpu().numpy() for o in _flatten(out)]


def fixed_batch(inputs: Sequence[TensorSpec]) -> int:
    """The batch a program was exported with when every input has the same fixed first size, else 0."""
    firsts = {t.shape[0] if t.shape else None for t in inputs}
    return firsts.pop() or 0 if len(firsts) == 1 else 0


def _chunk(b: int, rows: set[Any]) -> int:
    n = rows.pop() if len(rows) == 1 else None
    return b if b and isinstance(n, int) and n > b and n % b == 0 else 0


def static_batch(inputs: Sequence[TensorSpec], feeds: Mapping[str, np.ndarray]) -> int:
    """The fixed batch to run ``feeds`` in chunks of, or 0: every input has the same fixed first size ``b``,
    and the feeds hold a multiple of ``b`` rows (more than ``b``) on every input."""
    return _chunk(fixed_batch(inputs), {np.shape(feeds[t.name])[0] if np.ndim(feeds[t.name]) else None for t in inputs})


def in_chunks(graph: Any, batch: int) -> Any:
    """``graph`` (an exported program's module) taking batches of any multiple of the fixed ``batch`` it
    was exported with, in chunks of it: a teacher or student saved the plain way (``torch.export.export(
    model, (x[:1],))``) trains and distils on batches of 32. Gradients flow through every chunk."""
    if not batch:
        return graph
    torch = require_torch()
    whole = graph.forward

    def forward(*args: Any) -> Any:
        chunk = _chunk(batch, {a.shape[0] if isinstance(a, torch.Tensor) and a.ndim else None for a in args})
        if not chunk:
            return whole(*args)
        parts = [whole(*(a[i:i + chunk] for a in args)) for i in range(0, args[0].shape[0], chunk)]
        return _concat(torch, parts)

    graph.forward = forward
    return graph


def _concat(torch: Any, parts: list[Any]) -> Any:
    first = parts[0]
    if isinstance(first, (list, tuple)):
        return type(first)(_concat(torch, [p[i] for p in parts]) for i in range(len(first)))
    if isinstance(first, dict):
        return {k: _concat(torch, [p[k] for p in parts]) for k in first}
    return torch.cat(parts)


def _flatten(out: Any) -> list[Any]:
    if isinstance(out, (list, tuple)):
        return [x for o in out for x in _flatten(o)]
    if isinstance(out, dict):
        return [x for o in out.values() for x in _flatten(o)]
    return [out]


_unsafe_guard = threading.Lock()


@contextlib.contextmanager
def _weights_only_loading() -> Iterator[None]:
    """Force every ``torch.load`` to ``weights_only=True`` and refuse raw pickle meanwhile.

    ``torch.export.load`` falls back to full unpickling when the safe load fails, and reads
    some constants with ``pickle.loads``; a hostile ``.pt2`` would run code there.
    """
    torch = require_torch()
    from torch.export.pt2_archive import _package

    real_load = torch.load

    def safe_load(*args: Any, **kwargs: Any) -> Any:
        kwargs["weights_only"] = True
        return real_load(*args, **kwargs)

    def refuse(*_: Any, **__: Any) -> Any:
        raise ModelLoadError("the .pt2 file holds pickled Python objects, which edgec refuses to unpickle")

    class _NoPickle:
        loads = staticmethod(refuse)

    with _unsafe_guard:
        saved = (torch.load, getattr(_package, "pickle", None), torch._C._pickle_load_obj)
        torch.load = safe_load
        _package.pickle = _NoPickle  # type: ignore[assignment]
        torch._C._pickle_load_obj = refuse
        try:
            yield
        finally:
            torch.load = saved[0]
            if saved[1] is not None:
                _package.pickle = saved[1]
            torch._C._pickle_load_obj = saved[2]


def load_pt2(path: Path) -> TorchSource:
    torch = require_torch()
    try:
        with _weights_only_loading():
            program = torch.export.load(str(path))
    except ModelLoadError as exc:
        raise ModelLoadError(f"{path.name}: {exc}") from None
    except Exception as exc:  # torch raises many types for damaged archives
        detail = first_line(exc, 200)
        if "weights_only" in str(exc) or "Unsupported global" in str(exc):
            detail = "it holds pickled objects that are not plain tensors, which edgec refuses to unpickle"
        raise ModelLoadError(f"cannot load {path.name} as a torch.export program: {detail}") from None
    return from_program(program, label=path.name, size_bytes=path.stat().st_size)


def from_program(program: Any, *, label: str, size_bytes: int) -> TorchSource:
    torch = require_torch()
    names = list(program.graph_signature.user_inputs)
    placeholders = {n.name: n for n in program.graph.nodes if n.op == "placeholder"}
    inputs = []
    example: dict[str, np.ndarray] = {}
    for name in names:
        val = placeholders[name].meta.get("val")
        if val is None or not hasattr(val, "shape"):
            raise ModelLoadError(f"{label}: input {name} is not a tensor; edgec converts tensor-in/tensor-out models")
        shape = tuple(int(d) if isinstance(d, int) else None for d in val.shape)
        dtype = _TORCH_DTYPES.get(str(val.dtype))
        if dtype is None:
            raise ModelLoadError(f"{label}: input {name} has dtype {val.dtype}, which edgec cannot feed")
        inputs.append(TensorSpec(name=name, shape=shape, dtype=dtype))
        # Dynamic sizes as the program was exported with (a height the model's guards accept), not made up.
        concrete = tuple(_example_size(v) if d is None else d for d, v in zip(shape, val.shape))
        example[name] = np.zeros(concrete, dtype=dtype)
    with torch.no_grad():
        out = program.module()(*(torch.from_numpy(example[n]) for n in names))
    flat = _flatten(out)
    batch_dynamic = bool(inputs) and inputs[0].shape[:1] == (None,)
    outputs = []
    for i, o in enumerate(flat):
        name = "output" if len(flat) == 1 else f"output_{i}"
        shape = tuple(int(d) for d in o.shape)
        if batch_dynamic and shape:
            shape = (None, *shape[1:])
        outputs.append(TensorSpec(name=name, shape=shape, dtype=_TORCH_DTYPES.get(str(o.dtype), "float32")))
    return TorchSource(program, label, tuple(inputs), tuple(outputs), size_bytes,
                       examples={n: a.shape for n, a in example.items()})


def _example_size(dim: Any) -> int:
    """A dynamic size's example value from export time (its hint), else 2."""
    hint = getattr(getattr(dim, "node", None), "hint", None)
    return hint if isinstance(hint, int) and hint > 0 else 2


def call_factory(spec: str) -> Any:
    module_name, _, attr = spec.partition(":")
    here = os.getcwd()  # as uvicorn does with module:app: the folder edgec runs in is on the path
    added = here not in sys.path
    if added:
        sys.path.insert(0, here)
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        top = module_name.split(".")[0]
        if getattr(exc, "name", None) == top:  # the package itself is not on the path (not a failing import inside)
            raise ModelLoadError(
                f"cannot import {module_name!r} for {spec}: no module {top!r} here ({here}) or on Python's path. "
                f"Run edgec from the folder holding {top}.py or {top}/, set PYTHONPATH to it, or pip install "
                "your package") from None
        raise ModelLoadError(f"cannot import {module_name!r} for {spec}: {exc}") from None
    finally:
        if added:
            sys.path.remove(here)
    target: Any = module
    for part in attr.split("."):
        if not hasattr(target, part):
            raise ModelLoadError(f"{module_name} has no attribute {attr!r} (from {spec})")
        target = getattr(target, part)
    if not callable(target):
        raise ModelLoadError(f"{spec} is not callable: point at a function or class returning an nn.Module")
    try:
        return target()
    except Exception as exc:
        raise ModelLoadError(f"{spec}() failed: {type(exc).__name__}: {exc}") from None


def state_bytes(state: Mapping[str, Any]) -> int:
    return int(sum(t.numel() * t.element_size() for t in state.values() if hasattr(t, "numel")))


def load_weights(module: Any, weights: str | Path) -> None:
    """Load a state_dict into ``module`` from safetensors or a weights-only torch file."""
    torch = require_torch()
    path = Path(weights)
    if not path.is_file():
        raise ModelLoadError(f"weights file {path} does not exist")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            state = load_file(str(path))
        else:
            state = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as exc:
        detail = first_line(exc, 200)
        raise ModelLoadError(f"cannot read weights {path.name}: {detail}") from None
    if not isinstance(state, Mapping):
        raise ModelLoadError(f"{path.name} does not hold a state_dict (a mapping of tensor names to tensors)")
    result = module.load_state_dict(dict(state), strict=False)
    if result.missing_keys or result.unexpected_keys:
        parts = []
        if result.missing_keys:
            parts.append(f"missing {', '.join(result.missing_keys[:5])}")
        if result.unexpected_keys:
            parts.append(f"unexpected {', '.join(result.unexpected_keys[:5])}")
        raise ModelLoadError(f"weights {path.name} do not fit the model: {'; '.join(parts)}")


def forward_input_names(module: Any) -> list[str]:
    """The positional parameter names of ``module.forward``."""
    params = inspect.signature(module.forward).parameters.values()
    return [
        p.name
        for p in params
        if p.kind in (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)
    ]


def from_module(
    module: Any,
    *,
    label: str,
    weights: str | Path | None,
    example: Mapping[str, np.ndarray] | None,
) -> TorchSource:
    torch = require_torch()
    if not isinstance(module, torch.nn.Module):
        raise ModelLoadError(f"{label} returned a {type(module).__name__}, not a torch.nn.Module")
    if weights is not None:
        load_weights(module, weights)
    module.eval()
    names = forward_input_names(module)
    if example is None:
        raise ModelLoadError(
            f"{label}: edgec needs example inputs to trace this module: pass --calib data "
            "or --input-shape (e.g. --input-shape 1x3x224x224)"
        )
    if len(example) == 1 and len(names) >= 1 and next(iter(example)) not in names:
        example = {names[0]: next(iter(example.values()))}
    missing = [n for n in names[: len(example)] if n not in example]
    if missing or len(example) > len(names):
        raise ModelLoadError(
            f"{label}: forward() takes {', '.join(names)}, but the example inputs are named "
            f"{', '.join(example)}: key the arrays by forward()'s parameter names"
        )
    names = names[: len(example)]
    batch = {n: np.repeat(np.asarray(example[n])[:1], 2, axis=0) for n in names}
    args = tuple(torch.from_numpy(np.ascontiguousarray(batch[n])) for n in names)
    dim = torch.export.Dim("batch", min=1, max=4096)
    try:
        with quiet():
            program = torch.export.export(module, args, dynamic_shapes=tuple({0: dim} for _ in names))
    except Exception:
        try:  # a model that fixes its batch (e.g. a reshape to 1) exports with batch 1
            single = tuple(a[:1] for a in args)
            with quiet():
                program = torch.export.export(module, single)
        except Exception as exc:
            detail = first_line(exc)
            raise ModelLoadError(f"torch.export cannot trace {label}: {detail}") from None
    return from_program(program, label=label, size_bytes=state_bytes(module.state_dict()))



