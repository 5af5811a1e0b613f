"""``POST /v1/measure``: a candidate bundle measured on this board, for ``edgec convert --measure-on``.

The host sends each candidate of its precision search as an uncompressed bundle tar (model,
manifest, golden samples), beside the fp32 reference's. The board unpacks them into a private
temporary folder (plain files, flat names, within ``[measure] max_mb``), then loads them in the
probe's child process (:func:`~edgec.runtime.bundle.probe.measure`): the sha256 sums, the golden
parity check (do this board's kernels give the host's answers?), then p50/p90 at batch 1 and at
the asked batch, the memory it took, and the speed-up over the reference timed in alternating
rounds. The child is stopped past ``timeout_s`` or ``max_rss_mb``. The folder is removed
afterwards: a candidate never reaches the serving process or its cache.

One candidate is measured at a time (a second request gets 429): two at once would time each
other. Requests being served meanwhile share the board's CPU; the answer says how many were.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import threading
import time
import urllib.parse
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from ...errors import BundleError, InputError
from ..bundle.archive import unpack
from ..bundle import probe
from ..bundle.bench import MAX_BATCH, MAX_BUDGET_S
from ..bundle.manifest import MANIFEST_NAME, read_manifest
from ..config import ServeConfig
from ..system import board_info

ARCHIVE = "candidate.tar"
REFERENCE = "reference.tar"
PARAMS = {"batch": (int, 1, MAX_BATCH, 8), "budget_s": (float, 0.05, MAX_BUDGET_S, 1.0)}


class Measurer:
    """Measures one candidate at a time for a board configured by ``config``."""

    def __init__(self, config: ServeConfig) -> None:
        self.config = config.measure
        self.threads = config.threads
        self.max_bytes = int(self.config.max_mb * 2**20)
        self.max_rss = int((self.config.max_rss_mb or config.budget_mb) * 2**20)
        self._busy = threading.Lock()
        self._board: dict[str, Any] | None = None

    def board(self) -> dict[str, Any]:
        """This board, as a measurement's record names it (read once)."""
        if self._board is None:
            self._board = board_info()
        return self._board

    @property
    def busy(self) -> bool:
        """Whether a candidate is being measured now."""
        return self._busy.locked()

    @staticmethod
    def params(query: bytes) -> dict[str, Any]:
        """``batch`` and ``budget_s`` from the query string, checked.

        Raises:
            InputError: An unknown parameter, or a value out of range.
        """
        try:
            pairs = urllib.parse.parse_qsl(query.decode("ascii"), strict_parsing=bool(query), max_num_fields=8)
        except (UnicodeDecodeError, ValueError) as exc:
            raise InputError(f"bad query string: {exc}") from None
        out = {key: default for key, (_, _, _, default) in PARAMS.items()}
        for key, value in pairs:
            if key not in PARAMS:
                raise InputError(f"unknown parameter {key!r}: /v1/measure takes {' and '.join(PARAMS)}")
            kind, low, high, _ = PARAMS[key]
            try:
                number = kind(value)
            except ValueError:
                number = None
            if number is None or not low <= number <= high:
                raise InputError(f"{key} must be a {kind.__name__} from {low} to {high}, got {value!r}")
            out[key] = number
        return out

    @contextmanager
    def claim(self) -> Iterator[Path | None]:
        """A private folder for one candidate, or ``None`` while another is being measured."""
        if not self._busy.acquire(blocking=False):
            yield None
            return
        folder = Path(tempfile.mkdtemp(prefix="edgec-measure-"))
        try:
            yield folder
        finally:
            shutil.rmtree(folder, ignore_errors=True)
            self._busy.release()

    def run(self, folder: Path, params: dict[str, Any]) -> dict[str, Any]:
        """Unpack ``folder``'s upload and measure its candidate in a child process.

        The upload is a bundle tar, or a tar of ``candidate.tar`` and ``reference.tar`` (two bundle tars):
        then the two are also timed in alternating rounds, and the answer's ``paired`` has the speed-up.

        Raises:
            BundleError: A hostile or broken archive, a candidate that fails its checks, crashes, hangs
                or takes too much memory; the message says which.
        """
        received = folder / "received"
        unpack(folder / ARCHIVE, received, bundle=False)
        (folder / ARCHIVE).unlink()
        names = {p.name for p in received.iterdir()}
        reference = None
        if MANIFEST_NAME in names:
            bundle = received
        elif ARCHIVE in names and names <= {ARCHIVE, REFERENCE}:
            bundle = folder / "candidate"
            unpack(received / ARCHIVE, bundle)
            if REFERENCE in names:
                reference = folder / "reference"
                unpack(received / REFERENCE, reference)
            shutil.rmtree(received)
        else:
            raise BundleError(f"the upload holds neither a bundle ({MANIFEST_NAME}) nor {ARCHIVE} (with "
                              f"{REFERENCE}): it holds {', '.join(sorted(names)) or 'nothing'}")
        manifest = read_manifest(bundle)
        started = time.perf_counter()
        measured = probe.measure(bundle, batch=params["batch"], budget_s=params["budget_s"], threads=self.threads,
                                 reference=reference, timeout_s=self.config.timeout_s, max_rss_bytes=self.max_rss)
        return {"board": self.board(), "format": manifest.format, "precision": manifest.precision,
                "seconds": time.perf_counter() - started, "load_average": _load_average(), **measured}


def _load_average() -> float | None:
    try:
        return os.getloadavg()[0]
    except (OSError, AttributeError):
        return None
