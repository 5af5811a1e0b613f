"""Fetching a board's captured samples (``[capture]`` on the board) as an ``.npz`` the next conversion takes."""

from __future__ import annotations

import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any

from ...errors import BrokerError, InputError
from ...runtime.bundle.arrays import read_npz
from ..bundle.writer import output_files

CHUNK = 1 << 20


def pull(board: str, model: str, token: str, out: Path, *, max_mb: float = 256.0, force: bool = False,
         timeout_s: float = 60.0) -> dict[str, Any]:
    """Fetch ``model``'s samples from the board at ``board`` (``http://host:8080``) into ``out``.

    The answer is read to at most ``max_mb`` and checked as an ``.npz`` of plain arrays (no pickles, its
    decompressed size bounded too) before ``out`` is written, atomically.

    Raises:
        InputError: A bad URL, or the board's answer is not the samples.
        BrokerError: The board cannot be reached, or refused (token, capture off, unknown model).
    """
    parts = urllib.parse.urlsplit(board)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise InputError(f"--board {board!r} must be the board's address, e.g. http://pi-kitchen:8080")
    url = f"{board.rstrip('/')}/v1/models/{urllib.parse.quote(model, safe='')}/capture"
    request = urllib.request.Request(url, headers={"Authorization": f"Bearer {token}"})
    limit = int(max_mb * 2**20)
    try:
        with urllib.request.urlopen(request, timeout=timeout_s) as resp:
            body = bytearray()
            while chunk := resp.read(CHUNK):
                body += chunk
                if len(body) > limit:
                    raise InputError(f"the board sent more than {max_mb:g} MB: raise --max-mb if you expect that much")
    except urllib.error.HTTPError as exc:
        try:
            reason = exc.read(4096).decode("utf-8", "replace")
        except OSError:
            reason = ""
        raise BrokerError(f"the board answered {exc.code} for {url}: {reason.strip() or exc.reason}") from None
    except (urllib.error.URLError, OSError) as exc:
        raise BrokerError(f"cannot reach the board at {board}: {getattr(exc, 'reason', exc)}") from None
    arrays = read_npz(bytes(body), what=f"the capture of {model} from {board}", error=InputError,
                      max_bytes=8 * limit)
    samples = len(arrays["reason"]) if "reason" in arrays else 0
    with output_files([out], force=force) as stage:
        (stage / Path(out).name).write_bytes(bytes(body))
    reasons: dict[str, int] = {}
    for reason in arrays.get("reason", []):
        reasons[str(reason)] = reasons.get(str(reason), 0) + 1
    return {"samples": samples, "bytes": len(body), "reasons": reasons,
            "inputs": sorted(k for k in arrays if "." not in k and k not in ("reason", "time"))}
