"""Candidates timed on a real board: the host side of ``edgec convert --measure-on http://board:8080``.

Every tool in this field times candidates on the machine that converts. With ``--measure-on`` the
precision search sends each candidate that meets the accuracy budget to a running ``edgec serve``
(``POST /v1/measure``, admin token, ``[measure] enabled = true`` on the board). There it is
loaded in a child process, checked against golden answers this host computed for that very
candidate, timed at batch 1 and at the profile's batch, and its memory read; the search then
ships by the board's numbers. What the board answers is checked before it is believed: a JSON
object of bounded size whose timings are finite, positive numbers.
"""

from __future__ import annotations

import json
import math
import shutil
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from ...errors import BrokerError, InputError
from ...runtime.bundle.archive import pack
from ...runtime.bundle.golden import write_golden
from ...runtime.bundle.manifest import sha256_file
from ...runtime.bundle.model import LoadedModel

MAX_ANSWER = 1 << 20  # a measurement's answer is a few kB
BOARD_KEYS = ("board", "cpu", "arch", "cores", "memory_bytes", "system")


class CandidateRefused(Exception):
    """The board ran the candidate and refused it (crash, hang, memory, answers unlike the host's)."""


@dataclass(frozen=True)
class BoardTiming:
    """One artifact as the board measured it.

    Attributes:
        p50_ms, p90_ms: Latency at batch 1.
        batch: The batch also timed (``None`` when the model takes batch 1 only).
        batch_p50_ms, batch_p90_ms: Latency of a whole batch.
        peak_rss_bytes: The most memory the measuring process held (runtime + model).
        added_rss_bytes: What loading and running the model added to it.
        load_ms: Opening the model on the board.
        parity: What the golden check found there.
        threads: Threads it ran with.
        note: Why a batch was not timed.
        speedup: Against the reference it was sent with (fp32), timed in alternating rounds there.
        reference_p50_ms: The reference's batch-1 p50 in those rounds.
    """

    p50_ms: float
    p90_ms: float
    batch: int | None
    batch_p50_ms: float | None
    batch_p90_ms: float | None
    peak_rss_bytes: int | None
    added_rss_bytes: int | None
    load_ms: float
    parity: str | None
    threads: int | None
    note: str | None = None
    speedup: float | None = None
    reference_p50_ms: float | None = None

    def to_dict(self) -> dict[str, Any]:
        return {k: getattr(self, k) for k in self.__dataclass_fields__}

    def speedup_over(self, base: BoardTiming) -> float:
        """The speed-up over ``base`` (fp32): as timed against it in alternating rounds, else the ratio of p50s
        (a board that did not pair them)."""
        return self.speedup if self.speedup is not None else base.p50_ms / max(self.p50_ms, 1e-9)


@dataclass
class BoardMeter:
    """The board at ``url``, measuring candidates for one conversion (results kept by the file's sha256).

    Args:
        url: ``http://host:port`` of an ``edgec serve`` with ``[measure] enabled = true``.
        token: Its ``admin_token``.
        batch: The batch timed besides batch 1.
        budget_s: Seconds of timing per batch size on the board.
        timeout_s: How long one measurement may take, upload included.
        golden: Held-out inputs each candidate's golden answers are computed on (this host's, per candidate).
    """

    url: str
    token: str
    batch: int = 8
    budget_s: float = 1.0
    timeout_s: float = 600.0
    golden: dict[str, np.ndarray] | None = field(default=None, repr=False)
    board: dict[str, Any] | None = None
    seconds: float = 0.0  # wall time spent measuring, uploads included
    results: dict[tuple[str, str | None], BoardTiming] = field(default_factory=dict)
    _digests: dict[tuple[str, int, int], str] = field(default_factory=dict, repr=False)

    def __post_init__(self) -> None:
        parts = urllib.parse.urlsplit(self.url)
        if parts.scheme not in ("http", "https") or not parts.netloc or parts.query or parts.fragment:
            raise InputError(f"--measure-on {self.url!r} must be the board's address, e.g. http://pi-lab:8080")
        self.url = self.url.rstrip("/")

    def check(self) -> dict[str, Any]:
        """Ask the board who it is before any work (a wrong address, token or a board that does not measure
        fails here, in a second, not after the export)."""
        self.board = _board(self._ask("GET", None, ""))
        return self.board

    def measure(self, path: Path, model: LoadedModel,
                reference: tuple[Path, LoadedModel] | None = None) -> BoardTiming:
        """``path`` (opened as ``model`` on this host) measured on the board, with the ``reference`` artifact
        (fp32) to time it against in alternating rounds; cached by the files' sha256.

        Raises:
            CandidateRefused: The board ran it and refused it; the message is the board's reason.
            BrokerError: The board cannot be reached or did not measure (token, switched off, busy, bad answer).
        """
        if reference is not None and reference[0] == path:
            reference = None  # fp32 itself: nothing to pair it with
        key = (self._digest(path), self._digest(reference[0]) if reference is not None else None)
        if key in self.results:
            return self.results[key]
        with tempfile.TemporaryDirectory(prefix="edgec-candidate-") as tmp:
            archive = _candidate(path, key[0], model, self.golden, Path(tmp) / "candidate")
            if reference is not None:
                upload = Path(tmp) / "upload"
                upload.mkdir()
                archive.rename(upload / "candidate.tar")
                _candidate(reference[0], key[1], reference[1], self.golden, Path(tmp) / "reference").rename(
                    upload / "reference.tar")
                archive = Path(tmp) / "upload.tar"
                pack(upload, archive)
            answer = self._ask("POST", archive, f"?batch={self.batch}&budget_s={self.budget_s:g}")
        self.board = _board(answer)
        timing = _timing(answer)
        self.results[key] = timing
        return timing

    def to_dict(self) -> dict[str, Any]:
        return {"url": self.url, "board": self.board, "batch": self.batch, "seconds": round(self.seconds, 2)}

    def _digest(self, path: Path) -> str:
        """``path``'s sha256, read once per file version (fp32 goes with every candidate)."""
        stat = path.stat()
        key = (str(path.resolve()), stat.st_size, stat.st_mtime_ns)
        if key not in self._digests:
            self._digests[key] = sha256_file(path)
        return self._digests[key]

    def _ask(self, method: str, archive: Path | None, query: str) -> dict[str, Any]:
        started = time.perf_counter()
        headers = {"Authorization": f"Bearer {self.token}"}
        body = None
        if archive is not None:
            body = archive.open("rb")
            headers.update({"Content-Type": "application/x-tar", "Content-Length": str(archive.stat().st_size)})
        request = urllib.request.Request(f"{self.url}/v1/measure{query}", data=body, headers=headers, method=method)
        try:
            with urllib.request.urlopen(request, timeout=self.timeout_s) as resp:
                raw = resp.read(MAX_ANSWER + 1)
        except urllib.error.HTTPError as exc:
            reason = _error_of(exc)
            if exc.code == 422:
                raise CandidateRefused(reason) from None
            raise BrokerError(f"the board at {self.url} answered {exc.code}: {reason}") from None
        except (urllib.error.URLError, OSError) as exc:
            raise BrokerError(f"cannot reach the board at {self.url}: {getattr(exc, 'reason', exc)}") from None
        finally:
            if body is not None:
                body.close()
            self.seconds += time.perf_counter() - started
        if len(raw) > MAX_ANSWER:
            raise BrokerError(f"the board at {self.url} answered more than {MAX_ANSWER} bytes: not edgec's measure")
        try:
            answer = json.loads(raw)
        except (json.JSONDecodeError, UnicodeDecodeError, RecursionError):
            answer = None
        if not isinstance(answer, dict):
            raise BrokerError(f"the board at {self.url} did not answer a JSON object: is it an edgec serve?")
        return answer


def _candidate(path: Path, digest: str, model: LoadedModel, golden: dict[str, np.ndarray], tmp: Path) -> Path:
    """A bundle of the artifact alone (model file of sha256 ``digest``, manifest, this host's answers on
    ``golden``), packed."""
    tmp.mkdir()
    folder = tmp / "bundle"
    folder.mkdir()
    manifest = model.manifest
    shutil.copyfile(path, folder / manifest.model_file)
    write_golden(folder, golden, model.predict(golden), [s.name for s in manifest.inputs],
                 [s.name for s in manifest.outputs])
    files = {p.name: digest if p.name == manifest.model_file else sha256_file(p) for p in sorted(folder.iterdir())}
    replace(manifest, files=files).write(folder)
    pack(folder, tmp / "candidate.tar")
    return tmp / "candidate.tar"


def _error_of(exc: urllib.error.HTTPError) -> str:
    try:
        text = exc.read(4096).decode("utf-8", "replace")
        error = json.loads(text).get("error") if text.startswith("{") else None
    except (OSError, ValueError, AttributeError):
        text, error = "", None
    return (str(error) if error else text.strip() or str(exc.reason))[:500]


def _number(value: Any, what: str, *, whole: bool = False, optional: bool = False) -> Any:
    if value is None and optional:
        return None
    ok = isinstance(value, int) if whole else isinstance(value, (int, float))
    if isinstance(value, bool) or not ok or not math.isfinite(value) or value < 0:
        raise BrokerError(f"the board's measurement has a bad {what}: {value!r}")
    return value


def _board(answer: dict[str, Any]) -> dict[str, Any]:
    """The board's description, kept to short strings and numbers (it goes into the report)."""
    info = answer.get("board")
    if not isinstance(info, dict):
        raise BrokerError("the board's answer does not say what board it is: is it an edgec serve?")
    out: dict[str, Any] = {}
    for key in BOARD_KEYS:
        value = info.get(key)
        out[key] = value if isinstance(value, (int, float)) and not isinstance(value, bool) else (
            str(value)[:120] if value is not None else None)
    versions = info.get("versions") if isinstance(info.get("versions"), dict) else {}
    out["versions"] = {str(k)[:40]: str(v)[:40] for k, v in list(versions.items())[:12]}
    return out


def _timing(answer: dict[str, Any]) -> BoardTiming:
    """The board's measurement, each number checked."""
    timing = answer.get("timing")
    if not isinstance(timing, dict) or not isinstance(timing.get("batch1"), dict):
        raise BrokerError("the board's measurement has no batch-1 timing")
    one, many = timing["batch1"], timing.get("batch")
    many = many if isinstance(many, dict) else None
    note = timing.get("note")
    paired = answer.get("paired") if isinstance(answer.get("paired"), dict) else {}
    return BoardTiming(
        p50_ms=_number(one.get("p50_ms"), "p50"), p90_ms=_number(one.get("p90_ms"), "p90"),
        batch=_number(timing.get("batch_size"), "batch", whole=True) if many else None,
        batch_p50_ms=_number(many.get("p50_ms"), "batch p50") if many else None,
        batch_p90_ms=_number(many.get("p90_ms"), "batch p90") if many else None,
        peak_rss_bytes=_number(answer.get("peak_rss_bytes"), "peak RSS", whole=True, optional=True),
        added_rss_bytes=_number(answer.get("added_rss_bytes"), "added RSS", whole=True, optional=True),
        load_ms=_number(answer.get("load_ms"), "load time"),
        parity=str(answer["parity"])[:300] if answer.get("parity") is not None else None,
        threads=_number(one.get("threads"), "thread count", whole=True, optional=True),
        note=str(note)[:200] if note else None,
        speedup=_number(paired.get("speedup"), "paired speed-up", optional=True),
        reference_p50_ms=_number(paired.get("reference_p50_ms"), "reference p50", optional=True))
