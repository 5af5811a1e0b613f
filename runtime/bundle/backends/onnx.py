"""ONNX on the board: onnxruntime, with the bundle's execution providers where this build has them.

:func:`session` is the one place edgec opens an onnxruntime session, on the board and on the
host (reference runs, calibration probes, compression timings), so every session gets the
same settings: sleeping worker threads, exact int8 where fast kernels saturate, and no
memory arena under a budget.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np

from ...._optional import need
from ....errors import BundleError
from ....errors import first_line as _first_line
from ..tensors import TensorSpec
from . import BackendOptions

log = logging.getLogger("edgec.runtime")
CPU = "CPUExecutionProvider"
# onnxruntime's type strings for the dtypes edgec feeds.
DTYPES = {
    "tensor(float)": "float32",
    "tensor(float16)": "float16",
    "tensor(double)": "float32",
    "tensor(int64)": "int64",
    "tensor(int32)": "int32",
    "tensor(int8)": "int8",
    "tensor(uint8)": "uint8",
    "tensor(bool)": "bool",
}


def session(model: str | Path | bytes, *, threads: int = 1, providers: tuple[str, ...] = (CPU,),
            lean: bool = False, exact_int8: bool = True, log_level: int = 3) -> Any:
    """An ``onnxruntime.InferenceSession`` with edgec's settings.

    Args:
        model: A model file, or a serialized model.
        threads: Intra-op threads.
        providers: Execution providers, in order.
        lean: No memory arena and no pre-packed weight copies (under a memory budget).
        exact_int8: Exact u8u8 kernels for int8 on x86 CPUs without VNNI.
        log_level: onnxruntime's own log threshold (3: errors; 4: fatal only, for a try that may fail).

    Raises:
        MissingDependencyError: onnxruntime is not installed.
        Exception: Whatever onnxruntime raises for a model it cannot load (callers type it).
    """
    ort = need("onnxruntime", extra="runtime", purpose="to run ONNX models")
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    # Idle worker threads spin by default; with several models on a board's few cores,
    # one model's spinning threads steal the cores another needs (measured: alternating
    # two sessions on 2 cores doubled both latencies). Sleeping workers cost ~nothing.
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    options.inter_op_num_threads = 1
    options.log_severity_level = log_level
    if exact_int8:
        # x86 CPUs without VNNI add pairs of u8 x s8 products in 16 bits: full-range int8
        # weights saturate there (measured: cosine 0.83 to fp32 on a digits CNN). The
        # exact u8u8 kernels cost some speed; models with 7-bit weights do not need them.
        options.add_session_config_entry("session.x64quantprecision", "1")
    if lean:
        # Under a memory budget: no arena that keeps every peak allocation for reuse
        # (the known cause of RSS growing to GiBs), and no pre-packed weight copies.
        options.enable_cpu_mem_arena = False
        options.add_session_config_entry("session.disable_prepacking", "1")
    source = model if isinstance(model, bytes) else str(model)
    return ort.InferenceSession(source, options, providers=list(providers))


def tensor_spec(arg: Any) -> TensorSpec | None:
    """An onnxruntime input or output as a :class:`TensorSpec`; ``None`` for a type edgec cannot feed."""
    dtype = DTYPES.get(arg.type)
    if dtype is None:
        return None
    return TensorSpec(name=arg.name, shape=tuple(d if isinstance(d, int) and d > 0 else None for d in arg.shape),
                      dtype=dtype)


_ACCELERATED_HINT = ("On a Jetson, install NVIDIA's onnxruntime-gpu wheel for your JetPack (edgec[jetson] leaves "
                     "onnxruntime to you; see docs/deploy.md); on a PC with an NVIDIA GPU, pip install onnxruntime-gpu "
                     "in place of onnxruntime.")


_WARNED: set[tuple[str, ...]] = set()


def _warn_once(cause: tuple[str, ...], message: str, *args: Any) -> None:
    """Log ``message`` the first time ``cause`` arises in this process; later ones at debug level."""
    if cause in _WARNED:
        log.debug(message, *args)
        return
    _WARNED.add(cause)
    log.warning(message, *args)


def _exact_or_plain(path: Path, providers: tuple[str, ...], settings: dict[str, Any]) -> tuple[Any, str | None]:
    """A session with ``settings``, and ``None``; if the exact-int8 option is what makes the model fail to
    load (onnxruntime rejects it for some QDQ graphs), the session without it, and why (also logged)."""
    if not settings.get("exact_int8"):
        return session(path, providers=providers, **settings), None
    try:
        return session(path, providers=providers, log_level=4, **settings), None
    except Exception as exc:
        plain = session(path, providers=providers, **{**settings, "exact_int8": False})
        note = (f"onnxruntime cannot load {path.name} with session.x64quantprecision ({_first_line(exc)}); it runs "
                "without that option: on x86 CPUs without VNNI its int8 products may saturate")
        log.warning("%s", note)
        return plain, note


class OnnxRuntimeBackend:
    """onnxruntime, with the manifest's execution providers where this build has them."""

    name = "onnxruntime"

    def __init__(self, path: Path, options: BackendOptions) -> None:
        ort = need("onnxruntime", extra="runtime", purpose="to run ONNX bundles")
        available = set(ort.get_available_providers())
        chosen = [p for p in options.providers if p in available]
        missing = [p for p in options.providers if p not in available and p != CPU]
        if missing:  # said once per process: a conversion opens many sessions for one cause
            _warn_once(("missing", *missing), "%s asks for %s, which this onnxruntime build (%s %s) does not have: "
                       "running on %s. %s", path.name, ", ".join(missing), getattr(ort, "__name__", "onnxruntime"),
                       getattr(ort, "__version__", "?"), ", ".join([p for p in chosen if p != CPU] + [CPU]),
                       _ACCELERATED_HINT)
        if CPU not in chosen:
            chosen.append(CPU)
        settings = {"threads": options.threads, "lean": options.lean, "exact_int8": options.exact_int8}
        try:
            self.session, note = _exact_or_plain(path, tuple(chosen), settings)
        except Exception as exc:  # onnxruntime raises its own non-exported exception types
            if chosen == [CPU]:
                raise BundleError(f"onnxruntime cannot load {path.name}: {_first_line(exc)}") from None
            # A provider that is built in but cannot start here (no GPU, driver mismatch):
            # fall back to the CPU and say why.
            _warn_once(("failed", *chosen[:-1]), "execution providers %s failed for %s (%s); falling back to CPU",
                       ", ".join(chosen[:-1]), path.name, _first_line(exc))
            try:
                self.session, note = _exact_or_plain(path, (CPU,), settings)
            except Exception as exc2:
                raise BundleError(f"onnxruntime cannot load {path.name}: {_first_line(exc2)}") from None
        self.notes = [note] if note else []  # session options dropped because the model failed with them
        self.providers = tuple(self.session.get_providers())
        for p in chosen:
            if p not in self.providers:
                _warn_once(("not started", p), "execution provider %s did not start for %s; running on %s",
                           p, path.name, ", ".join(self.providers))
        self.output_names = [o.name for o in self.session.get_outputs()]
        self.input_types = {i.name: DTYPES.get(i.type, i.type) for i in self.session.get_inputs()}

    def run(self, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
        return self.session.run(self.output_names, feeds)


BACKEND = OnnxRuntimeBackend
