"""Arrays in files and bodies: ``.npy`` and ``.npz``, read without unpickling and within a size.

The one place edgec reads and writes numpy's formats: request bodies and answers on the
board, ``edgec run``'s inputs and outputs, and the SDK's sample data. Nothing here ever
unpickles, and an archive whose arrays would decompress past ``max_bytes`` is refused from
its headers, before anything is allocated.
"""

from __future__ import annotations

import io
import math
import re
import zipfile
from collections.abc import Mapping
from pathlib import Path

import numpy as np

from ...errors import EdgecError, InputError
from ..files import write_atomic

_ZIP_MAGIC = b"PK\x03\x04"
_EMPTY_ZIP = b"PK\x05\x06"
_NPY_MAGIC = b"\x93NUMPY"
# The header numpy writes for a plain C-order array; anything else goes through np.load.
_NPY_HEADER = re.compile(r"\{'descr': '([<>|=][a-zA-Z]\d+)', 'fortran_order': False, 'shape': \(([\d, ]*)\), *\}\s*")


def load_npy(body: bytes) -> np.ndarray:
    """An ``.npy`` body as an array (a read-only view, no copy; never unpickles).

    ``np.load`` parses the header with ``ast.literal_eval`` (~30 µs, more than a small CNN's
    run); the header of a plain array is matched here instead.

    Raises:
        ValueError: Not an ``.npy`` array of numbers (truncated, pickled objects...).
    """
    if body[:8] == _NPY_MAGIC + b"\x01\x00" and len(body) >= 10:
        end = 10 + int.from_bytes(body[8:10], "little")
        match = _NPY_HEADER.fullmatch(body[10:end].decode("latin-1"))
        if match:
            dtype = np.dtype(match.group(1))
            shape = tuple(int(d) for d in match.group(2).split(",") if d.strip())
            count = math.prod(shape)
            if dtype.kind in "biuf" and len(body) - end == count * dtype.itemsize:
                return np.frombuffer(body, dtype, count=count, offset=end).reshape(shape)
    return np.load(io.BytesIO(body), allow_pickle=False)


def npy_bytes(array: np.ndarray) -> bytes:
    """One array as an ``.npy`` file (format 1.0)."""
    if not array.flags.c_contiguous:
        array = np.ascontiguousarray(array)  # (which would also turn a 0-d array into 1-d)
    header = "{'descr': %r, 'fortran_order': False, 'shape': %r, }" % (np.lib.format.dtype_to_descr(array.dtype),
                                                                       tuple(array.shape))
    header += " " * (-(10 + len(header) + 1) % 64) + "\n"
    return b"\x93NUMPY\x01\x00" + len(header).to_bytes(2, "little") + header.encode("latin-1") + array.tobytes()


def read_npz(source: str | Path | bytes, *, what: str = "input", error: type[EdgecError] = InputError,
             max_bytes: int | None = None) -> dict[str, np.ndarray]:
    """The arrays of an ``.npz`` file or body, keyed by name.

    Args:
        source: A path, or the archive's bytes.
        what: How messages name it (``calibration data calib.npz``).
        error: The error class to raise (``InputError`` for requests, ``CalibrationError``...).
        max_bytes: Most bytes the arrays may take once read; checked from their headers first.

    Raises:
        error: Missing, not a zip archive, damaged, pickled objects, or larger than ``max_bytes``.
    """
    try:
        data = source if isinstance(source, bytes) else Path(source).read_bytes()
    except FileNotFoundError:
        raise error(f"{what} does not exist") from None
    except OSError as exc:
        raise error(f"{what} cannot be read ({exc.strerror})") from None
    if data[:4] not in (_ZIP_MAGIC, _EMPTY_ZIP):
        raise error(f"{what} is not an .npz archive (not a zip file): save arrays with np.savez")
    try:
        with zipfile.ZipFile(io.BytesIO(data)) as archive:
            _check_sizes(archive, what, error, max_bytes)
        with np.load(io.BytesIO(data), allow_pickle=False) as npz:
            return {name: npz[name] for name in npz.files}
    except EdgecError:
        raise
    except ValueError as exc:
        if "pickle" in str(exc).lower():
            raise error(f"{what} holds object (pickled) arrays, which edgec refuses to load: save plain numeric "
                        "arrays with np.savez") from None
        raise error(f"{what} is not a readable .npz ({exc})") from None
    except (OSError, zipfile.BadZipFile, EOFError, KeyError) as exc:
        raise error(f"{what} is not a readable .npz ({exc}); it may be truncated") from None


def _check_sizes(archive: zipfile.ZipFile, what: str, error: type[EdgecError], max_bytes: int | None) -> None:
    """Refuse members whose npy headers promise more than ``max_bytes`` (or than the member holds)."""
    total = 0
    for info in archive.infolist():
        if not info.filename.endswith(".npy"):
            continue
        with archive.open(info) as fh:
            version = np.lib.format.read_magic(fh)
            read_header = {(1, 0): np.lib.format.read_array_header_1_0,
                           (2, 0): np.lib.format.read_array_header_2_0}.get(version)
            if read_header is None:
                raise error(f"{what}: {info.filename} has npy format version {version}, which edgec does not read")
            shape, _, dtype = read_header(fh, max_header_size=10_000)
        nbytes = math.prod(shape) * dtype.itemsize
        if nbytes > info.file_size:
            raise error(f"{what}: {info.filename} claims {nbytes} bytes of data but holds {info.file_size}")
        total += nbytes
        if max_bytes is not None and total > max_bytes:
            raise error(f"{what} holds arrays of more than {max_bytes} bytes once decompressed: send less at a time")


def npz_bytes(arrays: Mapping[str, np.ndarray]) -> bytes:
    """Arrays as an (uncompressed) ``.npz`` archive."""
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    return buf.getvalue()


def write_npz(path: str | Path, arrays: Mapping[str, np.ndarray]) -> Path:
    """Write arrays to ``path`` atomically: a complete file or none."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    return write_atomic(path, npz_bytes(arrays))
