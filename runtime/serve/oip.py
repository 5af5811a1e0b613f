"""The Open Inference Protocol (KServe v2, REST) for edgec's models: metadata, and infer in JSON or binary.

What Triton's and KServe's clients (``tritonclient``, MLServer's, and every tool built for
them) send and expect: typed tensors (``{"name", "shape", "datatype", "data"}``) in a JSON
body, or, with the binary tensor data extension, a JSON head of
``Inference-Header-Content-Length`` bytes followed by each tensor's raw bytes. Model
metadata comes from the bundle's manifest; the version is the bundle's.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from ...errors import InputError
from ..bundle.tensors import TensorSpec

# Protocol datatypes and the numpy dtypes they travel as (BYTES is not a numeric tensor).
DATATYPES: dict[str, np.dtype] = {name: np.dtype(dtype) for name, dtype in {
    "BOOL": np.bool_, "UINT8": np.uint8, "UINT16": np.uint16, "UINT32": np.uint32, "UINT64": np.uint64,
    "INT8": np.int8, "INT16": np.int16, "INT32": np.int32, "INT64": np.int64,
    "FP16": np.float16, "FP32": np.float32, "FP64": np.float64}.items()}
_BY_DTYPE = {dtype: name for name, dtype in DATATYPES.items()}
HEADER_LENGTH = "inference-header-content-length"
# Response heads of all-binary answers, by model, version, and output names, dtypes and shapes.
_HEADS: dict[tuple[Any, ...], bytes] = {}
EXTENSIONS = ("binary_tensor_data", "model_repository")


def datatype(dtype: np.dtype | str) -> str:
    """The protocol's name for a numpy dtype (``float32`` -> ``FP32``)."""
    return _BY_DTYPE[np.dtype(dtype)]


def tensor_metadata(spec: TensorSpec, batch_of_one: bool) -> dict[str, Any]:
    """One input or output as callers see it: floats for quantized tensors, -1 for dynamic dimensions.

    A model exported with a batch of 1 is served at any batch (row by row), so its batch is -1.
    """
    dtype = "float32" if spec.takes_floats else spec.dtype
    shape = [-1 if d is None or (i == 0 and batch_of_one and d == 1) else int(d) for i, d in enumerate(spec.shape)]
    return {"name": spec.name, "datatype": datatype(dtype), "shape": shape}


def model_metadata(name: str, version: str, platform: str, inputs: tuple[TensorSpec, ...],
                   outputs: tuple[TensorSpec, ...]) -> dict[str, Any]:
    """The model metadata response."""
    batch_of_one = bool(inputs) and bool(inputs[0].shape) and inputs[0].shape[0] == 1
    return {"name": name, "versions": [version], "platform": platform,
            "inputs": [tensor_metadata(s, batch_of_one) for s in inputs],
            "outputs": [tensor_metadata(s, batch_of_one) for s in outputs]}


@dataclass(frozen=True)
class InferRequest:
    """A parsed infer request.

    Attributes:
        inputs: Arrays keyed by input name, in the datatypes the client sent.
        outputs: Output names asked for (``None``: all), each with whether it goes back binary.
        binary: Outputs not named in ``outputs`` go back binary (``binary_data_output``).
        id: The request id to echo.
    """

    inputs: dict[str, np.ndarray]
    outputs: dict[str, bool] | None
    binary: bool
    id: str | None


def parse_infer(body: bytes, header_length: str | None, specs: Mapping[str, TensorSpec]) -> InferRequest:
    """An infer request body (JSON, or JSON head + binary tensors) as arrays.

    Raises:
        InputError: Malformed JSON, a datatype that does not fit the model's input, data that
            does not fill the shape, or binary sizes that do not add up.
    """
    if header_length is not None:
        try:
            head_size = int(header_length)
        except ValueError:
            raise InputError(f"Inference-Header-Content-Length {header_length!r} is not a number") from None
        if not 0 < head_size <= len(body):
            raise InputError(f"Inference-Header-Content-Length {head_size} does not fit a body of {len(body)} bytes")
        head, binary = body[:head_size], memoryview(body)[head_size:]
    else:
        head, binary = body, memoryview(b"")
    try:
        request = json.loads(head)
    except (json.JSONDecodeError, UnicodeDecodeError, RecursionError) as exc:
        raise InputError(f"infer request is not JSON: {exc}") from None
    if not isinstance(request, dict) or not isinstance(request.get("inputs"), list) or not request["inputs"]:
        raise InputError('infer request must be {"inputs": [{"name", "shape", "datatype", "data"}, ...]}')
    inputs: dict[str, np.ndarray] = {}
    offset = 0
    for tensor in request["inputs"]:
        name, array, used = _input(tensor, binary[offset:], specs)
        if name in inputs:
            raise InputError(f"input {name} is given twice")
        inputs[name] = array
        offset += used
    if offset != len(binary):
        raise InputError(f"the body holds {len(binary) - offset} bytes of binary data no input claims")
    params = request.get("parameters") or {}
    if not isinstance(params, dict):
        raise InputError("infer request parameters must be a JSON object")
    outputs = None
    if request.get("outputs") is not None:
        if not isinstance(request["outputs"], list):
            raise InputError('"outputs" must be a list of {"name": ...}')
        outputs = {}
        for item in request["outputs"]:
            if not isinstance(item, dict) or not isinstance(item.get("name"), str):
                raise InputError('each requested output must be {"name": ..., "parameters": {...}}')
            outputs[item["name"]] = bool(_parameters(item, f"output {item['name']}").get("binary_data", False))
    rid = request.get("id")
    return InferRequest(inputs, outputs, bool(params.get("binary_data_output", False)),
                        str(rid) if rid is not None else None)


def _parameters(item: dict[str, Any], where: str) -> dict[str, Any]:
    """An input's or output's ``parameters``: a JSON object, or none."""
    params = item.get("parameters")
    if params is None:
        return {}
    if not isinstance(params, dict):
        raise InputError(f"{where}: parameters must be a JSON object, got {type(params).__name__}")
    return params


def _input(tensor: Any, binary: memoryview, specs: Mapping[str, TensorSpec]) -> tuple[str, np.ndarray, int]:
    """One input tensor of a request: its name, its array, and the binary bytes it took."""
    if not isinstance(tensor, dict) or not isinstance(tensor.get("name"), str):
        raise InputError('each input must be {"name", "shape", "datatype", "data"}')
    name, kind, shape = tensor["name"], tensor.get("datatype"), tensor.get("shape")
    spec = specs.get(name)
    if spec is None:
        raise InputError(f"unknown input {name!r}: the model takes {', '.join(specs)}")
    accepted = expected_datatypes(spec)
    if kind not in accepted:
        known = "" if kind in DATATYPES else f" (datatypes: {', '.join(DATATYPES)})"
        raise InputError(f"input {name} is {kind}, but the model takes {' or '.join(accepted)}{known}: "
                         f"expected {spec.describe()}")
    if not isinstance(shape, list) or not all(isinstance(d, int) and not isinstance(d, bool) and d >= 0
                                              for d in shape):
        raise InputError(f"input {name} needs a shape: a list of dimensions (non-negative integers)")
    dtype, count = DATATYPES[kind], math.prod(shape)
    size = _parameters(tensor, f"input {name}").get("binary_data_size")
    if size is not None:
        if not isinstance(size, int) or size != count * dtype.itemsize or size > len(binary):
            raise InputError(f"input {name}: binary_data_size {size!r} does not fit shape {shape} of {kind} "
                             f"({count * dtype.itemsize} bytes) in the {len(binary)} bytes left")
        return name, np.frombuffer(binary[:size], dtype).reshape(shape), size
    if "data" not in tensor:
        raise InputError(f"input {name} has neither data nor binary_data_size")
    try:
        array = np.asarray(tensor["data"], dtype=dtype)
    except (TypeError, ValueError, OverflowError) as exc:
        raise InputError(f"input {name}: data is not a rectangular array of {kind} ({exc})") from None
    if array.size != count:
        raise InputError(f"input {name}: {array.size} values do not fill shape {shape} ({count} values)")
    return name, array.reshape(shape), 0


def expected_datatypes(spec: TensorSpec) -> tuple[str, ...]:
    """The datatypes an input accepts: any float for float (or quantized) inputs, any integer for integer ones."""
    if spec.takes_floats:
        return ("FP32", "FP16", "FP64")
    if spec.dtype == "bool":
        return ("BOOL",)
    return ("INT64", "INT32", "INT16", "INT8", "UINT8", "UINT16", "UINT32", "UINT64")


def encode_outputs(model_name: str, version: str, outputs: dict[str, np.ndarray],
                   request: InferRequest) -> tuple[bytes, int | None]:
    """The infer response body, and the JSON head's length when binary tensors follow it.

    Raises:
        InputError: An output asked for that the model does not have.
    """
    wanted = request.outputs if request.outputs is not None else {name: request.binary for name in outputs}
    unknown = sorted(set(wanted) - set(outputs))
    if unknown:
        raise InputError(f"unknown output {', '.join(unknown)}: the model gives {', '.join(outputs)}")
    if all(wanted.values()):  # all binary: the JSON head depends only on names, dtypes and shapes
        arrays = [np.ascontiguousarray(outputs[name]) for name in wanted]
        key = (model_name, version, tuple((n, a.dtype.str, a.shape) for n, a in zip(wanted, arrays)))
        head = _HEADS.get(key)
        if head is None:
            head = json.dumps({"model_name": model_name, "model_version": version, "outputs": [
                {"name": n, "datatype": datatype(a.dtype), "shape": list(a.shape),
                 "parameters": {"binary_data_size": a.nbytes}} for n, a in zip(wanted, arrays)]}).encode()
            if len(_HEADS) >= 256:
                _HEADS.clear()
            _HEADS[key] = head
        if request.id is not None:
            head = head[:-1] + b', "id": ' + json.dumps(request.id).encode() + b"}"
        return head + b"".join(a.tobytes() for a in arrays), len(head)
    tensors, blobs = [], []
    for name, binary in wanted.items():
        array = np.ascontiguousarray(outputs[name])
        entry: dict[str, Any] = {"name": name, "datatype": datatype(array.dtype), "shape": list(array.shape)}
        if binary:
            blob = array.tobytes()
            entry["parameters"] = {"binary_data_size": len(blob)}
            blobs.append(blob)
        else:
            entry["data"] = json_values(array)
        tensors.append(entry)
    response: dict[str, Any] = {"model_name": model_name, "model_version": version, "outputs": tensors}
    if request.id is not None:
        response["id"] = request.id
    head = json.dumps(response, allow_nan=False).encode()
    if not blobs:
        return head, None
    return head + b"".join(blobs), len(head)


def json_values(array: np.ndarray) -> list[Any]:
    """A tensor's values, flattened, as JSON takes them: NaN and infinities become null."""
    flat = array.reshape(-1)
    if flat.dtype.kind == "f" and not np.isfinite(flat).all():
        return [v if math.isfinite(v) else None for v in flat.tolist()]
    return flat.tolist()
