"""The last sequence number a spool gave out, kept in a small file beside its database.

A lost or damaged SQLite write-ahead log rolls the database back silently; numbering taken
from the database would then give the lost messages' numbers to new ones, and a consumer
could not see the loss. This file cannot be rolled back with the WAL, so numbers are never
reused and every loss is a gap.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

log = logging.getLogger("edgec.telemetry")
RESERVE = 256  # seq numbers made durable ahead at a time (the widest gap an unclean reboot can leave unused)


def _boot_id() -> str:
    """This boot of the machine (Linux); '' where unknown, which counts as a new boot every time."""
    try:
        return Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    except OSError:
        return ""


class SeqMark:
    """The last ``seq`` given out, kept apart from the database so a lost WAL cannot roll it back.

    ``<spool>.seq`` holds, in one fixed-size record, the last number given out (rewritten
    with every message, not synced: it survives the process being killed), the machine's
    boot id, and a reservation that is synced to disk ``RESERVE`` numbers ahead. After a
    process crash the last number is exact; after a power cut numbers resume above the
    reservation, so none is reused.
    """

    _FORMAT = "%20d %20d %-36s %d\n"  # last, reserved, boot id, clean

    def __init__(self, path: Path) -> None:
        self.path = path
        self.boot = _boot_id()
        self.last, self.reserved, self.resumed_unclean = self._read()
        self._fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)

    def _read(self) -> tuple[int, int, bool]:
        try:
            fields = self.path.read_text(encoding="ascii").split()
        except FileNotFoundError:
            return 0, 0, False
        except (OSError, UnicodeDecodeError):
            fields = []
        try:
            last, reserved, boot, clean = int(fields[0]), int(fields[1]), fields[2], fields[3] == "1"
        except (IndexError, ValueError):
            log.warning("telemetry spool: %s is damaged; seq resumes above the database's numbers", self.path)
            return 0, 0, True
        if clean:
            return last, reserved, False
        if boot == self.boot and boot:  # the process died, the machine did not: `last` is exact
            return max(last, 0), reserved, True
        return max(last, reserved), reserved, True  # a reboot without a clean close: skip the reservation

    def next(self, floor: int) -> int:
        """Give out the number after ``max(last, floor)``; make it durable when it passes the reservation."""
        seq = max(self.last, floor) + 1
        if seq > self.reserved:
            self._write(seq, seq + RESERVE - 1, clean=False, sync=True)
        self.last = seq
        self._write(seq, self.reserved, clean=False, sync=False)
        return seq

    def close(self) -> None:
        """A clean stop: the last number becomes the reservation (no gap after a reboot)."""
        self._write(self.last, self.last, clean=True, sync=True)
        os.close(self._fd)

    def _write(self, last: int, reserved: int, *, clean: bool, sync: bool) -> None:
        record = (self._FORMAT % (last, reserved, self.boot or "-", int(clean))).encode("ascii")
        os.pwrite(self._fd, record, 0)
        if sync:
            os.fsync(self._fd)
        self.reserved = reserved
