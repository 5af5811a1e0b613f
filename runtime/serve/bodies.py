"""Request bodies of the edgec API (``/v1``): JSON, ``.npy`` or ``.npz`` in; JSON, ``.npy`` or ``.npz`` out."""

from __future__ import annotations

import json
from typing import Any

import numpy as np

from ...errors import InputError
from ..bundle.arrays import load_npy, npy_bytes, npz_bytes, read_npz
from . import oip


def decode_inputs(body: bytes, content_type: str, model: Any, max_bytes: int | None = None) -> dict[str, np.ndarray]:
    """Request body -> arrays keyed by input name, in the dtypes the model takes from callers."""
    ctype = content_type.split(";")[0].strip().lower()
    specs = {t.name: t for t in model.inputs}
    if ctype in ("application/x-npy", "application/octet-stream"):
        try:
            array = load_npy(body)
        except Exception as exc:
            raise InputError(f"body is not a .npy array: {exc}") from None
        if len(specs) != 1:
            raise InputError(f"this model takes {len(specs)} inputs ({', '.join(specs)}): send an .npz or JSON")
        return {next(iter(specs)): array}
    if ctype in ("application/x-npz", "application/zip"):
        return read_npz(body, what="the body", error=InputError, max_bytes=max_bytes)
    if ctype in ("application/json", ""):
        try:
            data = json.loads(body or b"{}")
        except (json.JSONDecodeError, UnicodeDecodeError, RecursionError) as exc:
            raise InputError(f"body is not JSON: {exc}") from None
        inputs = data.get("inputs") if isinstance(data, dict) else None
        if inputs is None:
            raise InputError('JSON body must be {"inputs": {"<input name>": [[...]]}} (or a list for one input)')
        if not isinstance(inputs, dict):
            if len(specs) != 1:
                raise InputError(f"this model takes inputs {', '.join(specs)}: key them by name")
            inputs = {next(iter(specs)): inputs}
        feeds = {}
        for key, value in inputs.items():
            spec = specs.get(key)
            floats = spec is None or spec.takes_floats
            try:
                feeds[key] = np.asarray(value, dtype=np.float32 if floats else np.int64)
            except (TypeError, ValueError) as exc:
                raise InputError(f"input {key} is not a rectangular array of numbers: {exc}") from None
        return feeds
    raise InputError(f"unsupported Content-Type {content_type!r}: use application/json, application/x-npy "
                     "or application/x-npz")


def encode_outputs(name: str, outputs: dict[str, np.ndarray], accept: str) -> tuple[bytes, str]:
    """The answer body and its content type: ``.npz`` or ``.npy`` when ``accept`` asks, else JSON.

    Non-finite values go into JSON as ``null`` (JSON has no NaN).
    """
    if "application/x-npz" in accept:
        return npz_bytes(outputs), "application/x-npz"
    if "application/x-npy" in accept and len(outputs) == 1:
        return npy_bytes(next(iter(outputs.values()))), "application/x-npy"
    return json.dumps({"model": name, "outputs": {k: _nested(v) for k, v in outputs.items()}},
                      allow_nan=False).encode(), "application/json"


def _nested(array: np.ndarray) -> Any:
    """An array as nested lists, NaN and infinities as ``None``."""
    if array.dtype.kind == "f" and not np.isfinite(array).all():
        return np.where(np.isfinite(array), array.astype(object), None).tolist()
    return array.tolist()


def json_end(body: bytes, headers: Any, json_route: bool) -> int:
    """How many leading bytes of ``body`` are JSON: all of a /v1 JSON body, a /v2 body's JSON head."""
    if json_route:
        head = headers.get(oip.HEADER_LENGTH)
        return len(body) if head is None else min(len(body), int(head)) if head.isdigit() else 0
    return len(body) if headers.get("content-type", "").split(";")[0].strip().lower() in ("application/json", "") else 0


def json_cost(body: bytes, end: int) -> int:
    """An upper bound on the memory ``json.loads(body[:end])`` takes: a str copy of the text, and per
    list, object, element and string the CPython objects it makes (measured on CPython 3.11 with
    tracemalloc: a list of one number 100 bytes, a float and its slot 33, an empty object 75)."""
    if end <= 0:
        return 0
    count = body.count
    return (end + 104 * count(b"[", 0, end) + 240 * count(b"{", 0, end) + 40 * (count(b",", 0, end) + 1)
            + 32 * count(b'"', 0, end))
