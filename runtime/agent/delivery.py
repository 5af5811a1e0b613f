"""Bundles delivered in chunks over MQTT: written to disk as they arrive, resumed, checked.

The host packs a bundle folder into one uncompressed tar (the *blob*) and publishes it as
retained messages, one per chunk, on ``edgec/<fleet>/blobs/<sha256>/<index>``; the desired
state names the blob with its size, chunk size and every chunk's sha256. A board asks for a
few chunks at a time (it subscribes to their topics, the broker sends the retained copies),
checks each against its sha256, writes it at its offset in ``<store>/.downloads/<sha>.part``
and records how far the contiguous good prefix reaches in ``<sha>.json``. A broker outage or
a restart resumes from that mark; the whole blob is never held in memory.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ...errors import BundleError, IntegrityError
from ..files import write_atomic
from ..bundle.archive import inside, unpack
from ..bundle.manifest import sha256_file

CHUNK_BYTES = 256 * 1024
# A sha256 as the fleet writes it. Anything else from the broker never becomes a file name.
SHA256 = re.compile(r"[0-9a-f]{64}")


@dataclass(frozen=True)
class Blob:
    """What the desired state says about a packed bundle."""

    sha256: str
    size: int
    chunk_size: int
    chunks: tuple[str, ...]  # sha256 of each chunk
    url: str | None = None  # where a web server serves it (runtime/agent/urlsource.py); None: chunks on the broker

    @classmethod
    def from_dict(cls, data: Any) -> Blob:
        try:
            blob = cls(str(data["sha256"]), int(data["size"]), int(data["chunk_size"]), tuple(map(str, data["chunks"])),
                       data.get("url"))
        except (KeyError, TypeError, ValueError, AttributeError):
            raise BundleError("the update's blob description is malformed") from None
        if blob.url is not None and not isinstance(blob.url, str):
            raise BundleError("the update's blob URL is not a string")
        expected = -(-blob.size // blob.chunk_size) if blob.chunk_size > 0 else -1
        if blob.size <= 0 or blob.chunk_size <= 0 or len(blob.chunks) != expected:
            raise BundleError("the update's blob description is inconsistent (size, chunk size, chunk count)")
        if not SHA256.fullmatch(blob.sha256) or not all(SHA256.fullmatch(c) for c in blob.chunks):
            raise BundleError("the update's blob description has a digest that is not 64 lowercase hex digits")
        return blob

    def to_dict(self) -> dict[str, Any]:
        return {"sha256": self.sha256, "size": self.size, "chunk_size": self.chunk_size, "chunks": list(self.chunks),
                **({"url": self.url} if self.url else {})}


class Download:
    """One blob being downloaded into ``folder``, resumable across restarts."""

    def __init__(self, folder: Path, blob: Blob) -> None:
        self.blob = blob
        if not SHA256.fullmatch(blob.sha256):
            raise BundleError("the blob's sha256 is not 64 lowercase hex digits")
        folder.mkdir(parents=True, exist_ok=True)
        self.part = inside(folder, folder / f"{blob.sha256}.part")
        self.mark = inside(folder, folder / f"{blob.sha256}.json")
        self.done = self._read_mark()
        self._have: set[int] = set()  # chunks written past the contiguous prefix (this run)
        self.received_bytes = 0  # chunk bytes taken from the network by this run
        self.resumed_from = self.done
        self._fd = os.open(self.part, os.O_RDWR | os.O_CREAT, 0o644)

    def _read_mark(self) -> int:
        try:
            data = json.loads(self.mark.read_text())
            if data.get("sha256") == self.blob.sha256 and self.part.is_file():
                return max(0, min(int(data["done"]), len(self.blob.chunks)))
        except (OSError, ValueError, KeyError, TypeError):
            pass
        return 0

    @property
    def complete(self) -> bool:
        return self.done >= len(self.blob.chunks)

    def wanted(self, window: int) -> list[int]:
        """The next chunks to ask for (at most ``window``, not yet written)."""
        out = []
        index = self.done
        while index < len(self.blob.chunks) and len(out) < window:
            if index not in self._have:
                out.append(index)
            index += 1
        return out

    def accept(self, index: int, payload: bytes) -> bool:
        """Write chunk ``index`` if it is one we lack and it checks out; True if it was taken."""
        if not 0 <= index < len(self.blob.chunks) or index < self.done or index in self._have:
            return False
        if hashlib.sha256(payload).hexdigest() != self.blob.chunks[index]:
            return False  # damaged or stale: asked for again
        expected = min(self.blob.chunk_size, self.blob.size - index * self.blob.chunk_size)
        if len(payload) != expected:
            return False
        os.pwrite(self._fd, payload, index * self.blob.chunk_size)
        self.received_bytes += len(payload)
        self._have.add(index)
        advanced = False
        while self.done in self._have:
            self._have.discard(self.done)
            self.done += 1
            advanced = True
        if advanced:
            os.fsync(self._fd)  # the data first, then the mark that vouches for it
            write_atomic(self.mark, json.dumps({"sha256": self.blob.sha256, "done": self.done}).encode())
        return True

    def finish(self, dest: Path) -> Path:
        """Check the whole blob and unpack it to ``dest`` (a new folder); remove the download files.

        Raises:
            IntegrityError: The blob's sha256 differs.
            BundleError: Not a bundle archive (links, folders, too many files, odd names).
        """
        self.close()
        os.truncate(self.part, self.blob.size)
        digest = sha256_file(self.part)
        if digest != self.blob.sha256:
            self.discard()
            raise IntegrityError(f"the downloaded bundle's sha256 is {digest[:12]}..., not the "
                                 f"{self.blob.sha256[:12]}... announced")
        staging = dest.with_name(f".{dest.name}.unpack")
        shutil.rmtree(staging, ignore_errors=True)
        try:
            unpack(self.part, staging, most_bytes=self.blob.size)
            if dest.exists():
                shutil.rmtree(dest)
            os.replace(staging, dest)
        except BundleError:
            self.discard()  # a hostile or broken archive is not kept to be resumed
            raise
        finally:
            shutil.rmtree(staging, ignore_errors=True)
        self.discard()
        return dest

    def discard(self) -> None:
        self.close()
        self.part.unlink(missing_ok=True)
        self.mark.unlink(missing_ok=True)

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1


def describe_blob(archive: Path, chunk_size: int = CHUNK_BYTES) -> Blob:
    """The :class:`Blob` of a packed archive (host side)."""
    whole, chunks, size = hashlib.sha256(), [], 0
    with open(archive, "rb") as fh:
        for block in iter(lambda: fh.read(chunk_size), b""):
            whole.update(block)
            chunks.append(hashlib.sha256(block).hexdigest())
            size += len(block)
    return Blob(whole.hexdigest(), size, chunk_size, tuple(chunks))


def clean_downloads(folder: Path) -> None:
    """At a board's start: keep the newest partial download in ``folder`` (it resumes), remove the rest."""
    if not folder.is_dir():
        return
    marks = sorted((p for p in folder.glob("*.json") if SHA256.fullmatch(p.stem)), key=lambda p: p.stat().st_mtime)
    keep = {marks[-1].name, f"{marks[-1].stem}.part"} if marks else set()
    for path in folder.iterdir():
        if path.name in keep:
            continue
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path, ignore_errors=True)
        else:
            path.unlink(missing_ok=True)
