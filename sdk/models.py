"""Load the model a user gives edgec, safely, into one :class:`SourceModel` shape.

Accepted forms:

- ``model.pt2``: a ``torch.export`` program. Loaded with every ``torch.load`` forced to
  ``weights_only=True`` and raw pickle refused, so a hostile file cannot run code.
- ``model.onnx``: checked with the ONNX checker, run with onnxruntime.
- ``pkg.module:factory``: a callable returning an ``nn.Module``, plus optional weights
  (``.safetensors``, or a ``state_dict`` read with ``weights_only=True``).
- an ``nn.Module`` or ``ExportedProgram`` object (Python API).

Pickled checkpoints (``.pt``, ``.pth``, ``.pkl``, ``.ckpt``) are refused as models: unpickling
runs arbitrary code.
"""

from __future__ import annotations

import contextlib
import importlib
import inspect
import re
import sys
import threading
import zipfile
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from .._quiet import quiet
from ..errors import MissingDependencyError, ModelLoadError, first_line
from ..runtime.manifest import TensorSpec

PICKLE_SUFFIXES = (".pt", ".pth", ".pkl", ".pickle", ".ckpt", ".bin", ".tar")
FACTORY_RE = re.compile(r"^[A-Za-z_][\w.]*:[A-Za-z_][\w.]*$")
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
_ONNX_DTYPES = {
    "tensor(float)": "float32",
    "tensor(float16)": "float16",
    "tensor(double)": "float32",
    "tensor(int64)": "int64",
    "tensor(int32)": "int32",
    "tensor(int8)": "int8",
    "tensor(uint8)": "uint8",
    "tensor(bool)": "bool",
}


class SourceModel(Protocol):
    """The original model, as the pipeline sees it."""

    kind: str  # "torch" | "onnx"
    label: str
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]
    size_bytes: int

    def run(self, feeds: Mapping[str, np.ndarray]) -> list[np.ndarray]:
        """Reference outputs for ``feeds`` keyed by input name."""
        ...


def require_torch() -> Any:
    try:
        import torch
    except ImportError:
        raise MissingDependencyError("torch", "sdk", "to load PyTorch models") from None
    return torch


@dataclass
class TorchSource:
    """A PyTorch model held as a ``torch.export`` program (dynamic batch where possible)."""

    program: Any  # torch.export.ExportedProgram
    label: str
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]
    size_bytes: int
    kind: str = "torch"

    _module: Any = None

    def module(self) -> Any:
        """The program as a callable module, built once (building it is costly)."""
        if self._module is None:
            self._module = self.program.module()
        return self._module

    def run(self, feeds: Mapping[str, np.ndarray]) -> list[np.ndarray]:
        torch = require_torch()
        args = tuple(torch.from_numpy(np.ascontiguousarray(feeds[t.name])) for t in self.inputs)
        with torch.no_grad():
            out = self.module()(*args)
        return [o.detach().cpu().numpy() for o in _flatten(out)]


@dataclass
class OnnxSource:
    """An ONNX model file, run with onnxruntime as the reference."""

    path: Path
    label: str
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]
    size_bytes: int
    session: Any
    kind: str = "onnx"

    def run(self, feeds: Mapping[str, np.ndarray]) -> list[np.ndarray]:
        return self.session.run(None, {t.name: feeds[t.name] for t in self.inputs})


def _flatten(out: Any) -> list[Any]:
    if isinstance(out, (list, tuple)):
        return [x for o in out for x in _flatten(o)]
    if isinstance(out, dict):
        return [x for o in out.values() for x in _flatten(o)]
    return [out]


def precheck(model: Any) -> None:
    """Cheap checks on a model argument (no framework import), so obvious mistakes fail first.

    Raises:
        ModelLoadError: A missing path, a folder, a pickle, or an unknown kind of file.
    """
    if not isinstance(model, (str, Path)):
        return
    path = Path(model)
    if not path.exists():
        if FACTORY_RE.match(str(model)):
            return
        raise ModelLoadError(
            f"model file {path} does not exist: pass a .pt2 or .onnx file, or pkg.module:factory"
        )
    if path.is_dir():
        raise ModelLoadError(f"{path} is a folder: pass a model file (.pt2, .onnx) or pkg.module:factory")
    suffix = path.suffix.lower()
    if suffix in PICKLE_SUFFIXES:
        raise ModelLoadError(
            f"refusing to load {path.name}: pickled checkpoints can run arbitrary code when "
            "loaded. Export a program with torch.export.save(torch.export.export(model, args), "
            "'model.pt2'), or save the weights with safetensors and pass "
            "pkg.module:factory --weights model.safetensors"
        )
    if suffix in (".keras", ".h5"):
        raise ModelLoadError(
            f"{path.name}: this edgec build has no Keras loader yet; export the model to ONNX "
            "(tf2onnx) or convert it from its PyTorch source"
        )
    if suffix == ".tflite":
        raise ModelLoadError(
            f"{path.name} is already a TFLite model: edgec converts from .pt2, .onnx or "
            "pkg.module:factory; to serve a .tflite, convert its source model"
        )
    if suffix not in (".pt2", ".onnx"):
        raise ModelLoadError(
            f"cannot tell what kind of model {path.name} is from its suffix {suffix or '(none)'}: "
            "expected .pt2 (torch.export), .onnx, or pkg.module:factory"
        )
    if suffix == ".pt2" and not zipfile.is_zipfile(path):
        raise ModelLoadError(
            f"{path.name} is not a torch.export archive (a .pt2 is a zip file); it may be "
            "truncated or corrupt: save it again with torch.export.save"
        )


def load_model(
    model: Any,
    *,
    weights: str | Path | None = None,
    example: Mapping[str, np.ndarray] | None = None,
) -> SourceModel:
    """Load ``model`` into a :class:`SourceModel`.

    Args:
        model: A path (``.pt2``, ``.onnx``), ``pkg.module:factory``, an ``nn.Module`` or an
            ``ExportedProgram``.
        weights: Weights for a factory or module (``.safetensors``, or a ``.pt`` state_dict
            read with ``weights_only=True``).
        example: Example inputs keyed by input name (first axis the batch). Needed to trace
            an ``nn.Module`` or factory; ignored for files that carry their own signature.

    Raises:
        ModelLoadError: The file is missing, corrupt, of an unknown kind, or unsafe to load.
        MissingDependencyError: The framework for this kind of model is not installed.
    """
    precheck(model)
    if isinstance(model, (str, Path)):
        path = Path(model)
        if path.exists():
            return _load_file(path, weights=weights)
        return _from_module(_call_factory(str(model)), label=str(model), weights=weights, example=example)
    torch = sys.modules.get("torch")
    if torch is not None and isinstance(model, torch.export.ExportedProgram):
        return _from_program(model, label="ExportedProgram", size_bytes=_state_bytes(model.state_dict))
    if torch is not None and isinstance(model, torch.nn.Module):
        return _from_module(model, label=type(model).__name__, weights=weights, example=example)
    raise ModelLoadError(
        f"cannot convert a {type(model).__name__}: pass a path, pkg.module:factory, an nn.Module "
        "or an ExportedProgram"
    )


def load_module(model: Any, *, weights: str | Path | None = None, what: str = "model") -> Any:
    """A trainable ``torch.nn.Module`` from ``pkg.module:factory`` (+ weights), a module, or a ``.pt2``.

    A ``.pt2`` gives the exported graph as a module: it trains, but it has no Conv or Linear
    submodules left for structured pruning to remove channels from.

    Raises:
        ModelLoadError: Not loadable as a torch module (an ``.onnx`` file, a bad factory...).
    """
    torch = require_torch()
    precheck(model)
    if isinstance(model, torch.nn.Module):
        if weights is not None:
            load_weights(model, weights)
        return model
    if isinstance(model, (str, Path)) and Path(model).exists():
        path = Path(model)
        if path.suffix.lower() != ".pt2":
            raise ModelLoadError(f"{what} {path.name} is not a PyTorch model: training needs a .pt2 or "
                                 "pkg.module:factory (with --weights)")
        if weights is not None:
            raise ModelLoadError("--weights applies to pkg.module:factory models, not to .pt2 files")
        return _load_pt2(path).module()
    if isinstance(model, (str, Path)):
        module = _call_factory(str(model))
        if not isinstance(module, torch.nn.Module):
            raise ModelLoadError(f"{model} returned a {type(module).__name__}, not a torch.nn.Module")
        if weights is not None:
            load_weights(module, weights)
        return module
    raise ModelLoadError(f"cannot train a {type(model).__name__}: pass pkg.module:factory, a .pt2 or an nn.Module")


def _load_file(path: Path, *, weights: str | Path | None) -> SourceModel:
    if weights is not None:
        raise ModelLoadError(f"--weights applies to pkg.module:factory models, not to {path.suffix} files")
    return _load_pt2(path) if path.suffix.lower() == ".pt2" else _load_onnx(path)


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


def _load_pt2(path: Path) -> SourceModel:
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
    return _from_program(program, label=path.name, size_bytes=path.stat().st_size)


def _from_program(program: Any, *, label: str, size_bytes: int) -> TorchSource:
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
        concrete = tuple(2 if d is None else d for d in shape)
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
    return TorchSource(program, label, tuple(inputs), tuple(outputs), size_bytes)


def _call_factory(spec: str) -> Any:
    module_name, _, attr = spec.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise ModelLoadError(f"cannot import {module_name!r} for {spec}: {exc}") from None
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


def _state_bytes(state: Mapping[str, Any]) -> int:
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


def _from_module(
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
    return _from_program(program, label=label, size_bytes=_state_bytes(module.state_dict()))



def example_from_shapes(shapes: Sequence[str]) -> dict[str, np.ndarray]:
    """Parse ``--input-shape`` values (``1x3x224x224`` or ``name=1x3x224x224``) into zeros."""
    out: dict[str, np.ndarray] = {}
    for i, text in enumerate(shapes):
        name, _, dims = text.rpartition("=")
        try:
            shape = tuple(int(d) for d in dims.lower().replace(",", "x").split("x"))
        except ValueError:
            raise ModelLoadError(f"--input-shape {text!r} is not like 1x3x224x224 or name=1x3x224x224") from None
        if any(d <= 0 for d in shape):
            raise ModelLoadError(f"--input-shape {text!r} has a dimension that is not positive")
        out[name or f"input_{i}"] = np.zeros(shape, dtype=np.float32)
    return out


def _load_onnx(path: Path) -> OnnxSource:
    try:
        import onnx
        import onnxruntime as ort
    except ImportError:
        raise MissingDependencyError("onnx and onnxruntime", "sdk", "to load ONNX models") from None
    try:
        model = onnx.load(str(path), load_external_data=False)
        onnx.checker.check_model(model)
    except Exception as exc:
        detail = first_line(exc, 200)
        raise ModelLoadError(
            f"{path.name} is not a valid ONNX model ({detail}); it may be truncated or corrupt: export it again"
        ) from None
    if any(init.data_location == onnx.TensorProto.EXTERNAL for init in model.graph.initializer):
        raise ModelLoadError(
            f"{path.name} keeps its weights in external data files: save it as one file "
            "(onnx.save(model, path, save_as_external_data=False))"
        )
    try:
        options = ort.SessionOptions()
        options.log_severity_level = 3
        session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    except Exception as exc:
        raise ModelLoadError(f"onnxruntime cannot load {path.name}: {first_line(exc, 200)}") from None
    inputs = tuple(_onnx_spec(i) for i in session.get_inputs())
    outputs = tuple(_onnx_spec(o) for o in session.get_outputs())
    return OnnxSource(path, path.name, inputs, outputs, path.stat().st_size, session)


def _onnx_spec(arg: Any) -> TensorSpec:
    dtype = _ONNX_DTYPES.get(arg.type)
    if dtype is None:
        raise ModelLoadError(f"ONNX tensor {arg.name} has type {arg.type}, which edgec cannot feed")
    shape = tuple(d if isinstance(d, int) and d > 0 else None for d in arg.shape)
    return TensorSpec(name=arg.name, shape=shape, dtype=dtype)
