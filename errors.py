"""Every error edgec raises on purpose.

A flat set of named exceptions under :class:`EdgecError`. Messages say what is wrong and
how to fix it; the CLI prints ``str(error)`` as one line and exits with code 1.
"""

from __future__ import annotations


def first_line(exc: BaseException, limit: int = 2000) -> str:
    """The first line of an exception's message, whole (libraries' messages run to pages; their first line
    says what failed, often at its end: onnxruntime's name the node and the reason last)."""
    text = str(exc).strip()
    return text.splitlines()[0][:limit] if text else type(exc).__name__


class EdgecError(Exception):
    """Base class: an error the user can act on (bad input, missing extra, failed check)."""


class ValidationError(EdgecError, ValueError):
    """An option or config value is invalid (a precision that does not exist, a bad range)."""


class DeviceNotFoundError(EdgecError, LookupError):
    """No device profile has this name; the message names the closest ones."""


class ModelLoadError(EdgecError):
    """The model file is missing, corrupt, of an unknown kind, or refused as unsafe."""


class CalibrationError(EdgecError):
    """Calibration or sample data does not fit the model (names, shapes, dtypes, count)."""


class ConversionError(EdgecError):
    """An exporter or quantizer failed on a model it was given."""


class VerificationError(EdgecError):
    """A converted artifact disagrees with the original model beyond tolerance."""


class BundleError(EdgecError):
    """A bundle is missing, incomplete, tampered with, or its output folder is in the way."""


class IntegrityError(BundleError):
    """A bundle file's sha256 does not match its manifest."""


class InferenceError(EdgecError):
    """The model's backend failed while running it: a damaged model, or kernels that reject
    the inputs it was given. The message names the model and the backend's reason."""


class AccessError(EdgecError, PermissionError):
    """A caller is not allowed to do what it asked: no or a wrong admin token, or a bundle
    outside the folders the runtime may load from."""


class InputError(EdgecError, ValueError):
    """Inputs passed to a loaded model do not match its manifest (name, shape or dtype)."""


class QueueFullError(EdgecError):
    """A model's request queue is full; retry after ``retry_after_s`` seconds."""

    def __init__(self, message: str, retry_after_s: float) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s


class DeadlineError(EdgecError):
    """A request's deadline passed before its model ran it."""


class BrokerError(EdgecError):
    """The MQTT broker cannot be reached, or refused the connection."""


class SpoolError(EdgecError):
    """The telemetry spool (an SQLite file) cannot be opened or written."""


class MissingDependencyError(EdgecError, ImportError):
    """An optional dependency is not installed; the message names the extra that brings it."""

    def __init__(self, package: str, extra: str, purpose: str = "") -> None:
        why = f" (needed {purpose})" if purpose else ""
        super().__init__(
            f"{package} is not installed{why}: run `pip install 'edgec[{extra}]'`"
        )
        self.package = package
        self.extra = extra
