"""Whether an SQLite write-ahead log was damaged: committed frames SQLite would silently skip.

SQLite replays a WAL frame by frame and stops at the first frame whose salt or cumulative
checksum does not match; everything after it is ignored without an error. A torn last frame
(a write cut short) is expected; a bad frame followed by more frames of the same log is
damage, and the commits in those frames are lost. The format is SQLite's documented one
(https://www.sqlite.org/fileformat2.html#walformat): a 32-byte header, then frames of a
24-byte header and one page.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from pathlib import Path

MAGIC = (0x377F0682, 0x377F0683)  # checksums over little- or big-endian words
HEADER, FRAME_HEADER = 32, 24


@dataclass(frozen=True)
class WalDamage:
    """Frames past the first bad one that belong to the same log (lost commits)."""

    bad_frame: int  # 0-based index of the first frame that fails its checksum
    frames_after: int  # frames of this log after it, which SQLite ignores
    frames: int  # frames in the file


def _checksum(data: bytes, s0: int, s1: int, endian: str) -> tuple[int, int]:
    words = struct.unpack(f"{endian}{len(data) // 4}I", data)
    for i in range(0, len(words), 2):
        s0 = (s0 + words[i] + s1) & 0xFFFFFFFF
        s1 = (s1 + words[i + 1] + s0) & 0xFFFFFFFF
    return s0, s1


def check_wal(path: Path, *, max_bytes: int = 256 * 2**20) -> WalDamage | None:
    """The damage in the WAL at ``path``, or ``None`` when it is absent, intact or only torn at its end."""
    try:
        size = path.stat().st_size
        if size < HEADER or size > max_bytes:
            return None
        data = path.read_bytes()
    except OSError:
        return None
    magic, _version, page_size, _ckpt, salt1, salt2, c1, c2 = struct.unpack(">8I", data[:HEADER])
    if magic not in MAGIC or page_size < 512 or page_size & (page_size - 1):
        return None  # not a WAL SQLite would replay at all (it resets such a log)
    endian = ">" if magic == MAGIC[1] else "<"
    s0, s1 = _checksum(data[:24], 0, 0, endian)
    if (s0, s1) != (c1, c2):
        return None  # an invalid header: SQLite ignores the whole log (nothing of it was ever usable)
    step = FRAME_HEADER + page_size
    frames = (size - HEADER) // step
    bad = None
    for i in range(frames):
        at = HEADER + i * step
        _page, _commit, fs1, fs2, f1, f2 = struct.unpack(">6I", data[at:at + FRAME_HEADER])
        if (fs1, fs2) != (salt1, salt2):
            if bad is None:
                return None  # the rest is an older log's leftovers: the normal end of this one
            continue
        if bad is not None:
            return WalDamage(bad, sum(1 for j in range(i, frames) if _salts(data, HEADER + j * step) == (salt1, salt2)),
                             frames)
        n0, n1 = _checksum(data[at:at + 8] + data[at + FRAME_HEADER:at + step], s0, s1, endian)
        if (n0, n1) != (f1, f2):
            bad = i
            continue
        s0, s1 = n0, n1
    return None


def _salts(data: bytes, at: int) -> tuple[int, int]:
    return struct.unpack(">2I", data[at + 8:at + 16])
