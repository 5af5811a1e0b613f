"""A bounded on-disk queue of outgoing MQTT messages (SQLite from the standard library).

Every QoS 1 message is written here before it is handed to the MQTT client and deleted
only when the broker acknowledges it, so neither a broker outage nor a restart of the
process loses it. Messages leave in the order they came, numbered by ``seq``. When the spool
is full the oldest messages are dropped and counted; the count survives restarts.

The database runs in WAL mode with ``synchronous=NORMAL``: a committed message survives the
process being killed; only a power cut can take the last few commits with it.

What a damaged disk can do, and what the spool does about it:

- **A damaged database** (a torn header, truncated pages, a flipped page) is found at open
  (``PRAGMA quick_check``) or when a read fails: the file is moved aside as
  ``<spool>.corrupt-<time>``, the messages still readable in it are copied into a new
  spool, and serving goes on. The loss is counted (``damaged``) and shows as gaps in ``seq``.
- **A garbled row** fails its CRC-32 and is never published: it is deleted and counted.
- **A lost or damaged write-ahead log** takes committed messages with it, and SQLite cannot
  tell. A damaged one is checked for before SQLite opens it (:mod:`.walcheck`): the messages
  numbered past the newest row left are counted in ``damaged`` and reported like any other
  loss, and the log is copied aside as ``<spool>-wal.corrupt-<time>``. ``seq`` therefore does not come from the database: the last number given out is kept
  in ``<spool>.seq`` beside it (written with every message, and made durable in blocks), so
  numbers are never reused and lost messages show as a gap to any consumer.
"""

from __future__ import annotations

import logging
import os
import shutil
import sqlite3
import struct
import threading
import time
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ...errors import SpoolError, ValidationError
from .seqmark import SeqMark
from .walcheck import WalDamage, check_wal

log = logging.getLogger("edgec.telemetry")


@dataclass(frozen=True)
class Spooled:
    """One stored message."""

    seq: int
    topic: str
    payload: bytes
    qos: int
    retain: bool


def row_crc(seq: int, topic: str, payload: bytes, qos: int, retain: bool) -> int:
    """The CRC-32 a row is stored with: of its number, topic, payload and flags."""
    return zlib.crc32(payload, zlib.crc32(struct.pack("<qBB", seq, qos, int(retain)) + topic.encode()))


class Spool:
    """A bounded, ordered, crash-safe message store.

    Args:
        path: The SQLite file (created with its folder).
        max_messages: Most messages kept; beyond it the oldest are dropped.
        max_bytes: Most payload bytes kept; beyond it the oldest are dropped.
        on_problem: Called with a one-line message when the spool finds damage and recovers
            from it (the telemetry agent publishes it as an event).
    """

    def __init__(self, path: str | Path, *, max_messages: int = 100_000, max_bytes: int = 64 * 2**20,
                 on_problem: Callable[[str], None] | None = None) -> None:
        if max_messages < 1 or max_bytes < 1:
            raise ValidationError("spool limits must be positive")
        self.path = Path(path)
        self.max_messages = max_messages
        self.max_bytes = max_bytes
        self.on_problem = on_problem
        self.problems: list[str] = []  # what was found and done, oldest first
        self.quarantined: list[Path] = []
        self._lock = threading.Lock()
        self._generation = 0  # how many times the database file was replaced
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self.mark = SeqMark(Path(f"{self.path}.seq"))
        except OSError as exc:
            raise SpoolError(f"spool {self.path} cannot be created ({exc.strerror}): check the folder's "
                             "permissions or set [telemetry] spool") from None
        wal = check_wal(Path(f"{self.path}-wal"))  # before SQLite replays it and skips the damage silently
        try:
            self._db = self._open()
        except sqlite3.DatabaseError as exc:
            self._db = self._replace(f"cannot be opened ({exc})")
        if wal is not None:
            self._lost_wal(wal)
        if self.mark.resumed_unclean:
            log.info("telemetry spool %s was not closed cleanly; seq resumes at %d", self.path, self.mark.last + 1)

    # -- opening and recovering ------------------------------------------------------------------
    def _open(self) -> sqlite3.Connection:
        db = sqlite3.connect(str(self.path), check_same_thread=False, isolation_level=None)
        try:
            problems = [line.strip() for row in db.execute("PRAGMA quick_check").fetchall()
                        for line in str(row[0]).splitlines() if line.strip() and not line.startswith("***")]
            if problems != ["ok"]:
                raise sqlite3.DatabaseError(f"quick_check: {'; '.join(problems[:3])}")
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("PRAGMA synchronous=NORMAL")
            db.execute("PRAGMA journal_size_limit=1048576")  # give the WAL's space back after a backlog
            db.execute("CREATE TABLE IF NOT EXISTS messages (seq INTEGER PRIMARY KEY, topic TEXT NOT NULL, "
                       "payload BLOB NOT NULL, qos INTEGER NOT NULL, retain INTEGER NOT NULL, crc INTEGER)")
            if "crc" not in {row[1] for row in db.execute("PRAGMA table_info(messages)")}:
                db.execute("ALTER TABLE messages ADD COLUMN crc INTEGER")  # a spool from before checksums
            db.execute("CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value INTEGER NOT NULL)")
            db.execute("INSERT OR IGNORE INTO meta VALUES ('dropped', 0)")
            db.execute("INSERT OR IGNORE INTO meta VALUES ('damaged', 0)")
            count, size, top = db.execute("SELECT COUNT(*), COALESCE(SUM(LENGTH(payload)), 0), COALESCE(MAX(seq), 0) "
                                          "FROM messages").fetchone()
            try:  # a spool from before explicit numbers: AUTOINCREMENT's high-water mark
                row = db.execute("SELECT seq FROM sqlite_sequence WHERE name = 'messages'").fetchone()
                top = max(int(top), int(row[0]) if row else 0)
            except sqlite3.OperationalError:  # (no sqlite_sequence table)
                pass
        except BaseException:
            db.close()
            raise
        self._count, self._bytes, self._top = int(count), int(size), int(top)
        return db

    def _replace(self, why: str) -> sqlite3.Connection:
        """Move a damaged database aside, start a new one, and copy over what can still be read."""
        stamp = time.strftime("%Y%m%dT%H%M%S")
        aside = self.path.with_name(f"{self.path.name}.corrupt-{stamp}")
        for suffix in ("", "-wal", "-shm"):
            src = Path(f"{self.path}{suffix}")
            if src.exists():
                os.replace(src, Path(f"{aside}{suffix}"))
        self.quarantined.append(aside)
        rows, counters = _salvage(aside)
        db = self._open()
        db.execute("BEGIN")
        db.executemany("INSERT OR IGNORE INTO messages (seq, topic, payload, qos, retain, crc) VALUES (?, ?, ?, ?, ?, ?)",
                       [(m.seq, m.topic, m.payload, m.qos, int(m.retain), row_crc(m.seq, m.topic, m.payload, m.qos,
                                                                                      m.retain)) for m in rows])
        for key, value in counters.items():
            db.execute("UPDATE meta SET value = ? WHERE key = ?", (value, key))
        db.execute("COMMIT")
        self._count += len(rows)
        self._bytes += sum(len(m.payload) for m in rows)
        self._top = max([self._top, *(m.seq for m in rows)])
        self._problem(f"telemetry spool {self.path} {why}: moved to {aside.name}, {len(rows)} message(s) recovered "
                      "from it; any others show as gaps in seq")
        return db

    def _lost_wal(self, wal: WalDamage) -> None:
        """Count what a damaged write-ahead log took: the numbers given out past the newest row left."""
        lost = max(0, self.mark.last - self._top)
        try:  # the log as found, for a post-mortem (SQLite overwrites it at its next checkpoint)
            shutil.copyfile(f"{self.path}-wal", f"{self.path}-wal.corrupt-{time.strftime('%Y%m%dT%H%M%S')}")
        except OSError:
            pass
        self._db.execute("UPDATE meta SET value = value + ? WHERE key = 'damaged'", (lost,))
        self._problem(f"telemetry spool {self.path}: its write-ahead log was damaged (frame {wal.bad_frame + 1} of "
                      f"{wal.frames} fails its checksum; {wal.frames_after} later frame(s) were skipped): up to {lost} "
                      f"message(s) (seq {self._top + 1}-{self.mark.last}) are lost, counted in damaged")

    def _problem(self, message: str) -> None:
        log.error(message)
        self.problems.append(message)
        if self.on_problem is not None:
            try:
                self.on_problem(message)
            except Exception:  # a broken listener must not break the spool
                log.exception("spool problem listener failed")

    def _guarded(self, what: Callable[[], Any]) -> Any:
        """Run a database operation; if the file turns out damaged, replace it and run it once more."""
        generation = self._generation
        try:
            return what()
        except sqlite3.OperationalError as exc:  # disk full, read-only, locked: the file is fine, the call failed
            raise SpoolError(f"telemetry spool {self.path}: {exc}") from None
        except sqlite3.DatabaseError as exc:
            with self._lock:
                if self._generation == generation:  # (another thread may have replaced it already)
                    self._db.close()
                    self._db = self._replace(f"was found damaged ({exc})")
                    self._generation += 1
        try:
            return what()
        except sqlite3.DatabaseError as exc:
            raise SpoolError(f"telemetry spool {self.path} failed again after it was replaced: {exc}") from None

    # -- writing ---------------------------------------------------------------------------
    def put(self, topic: str, payload: bytes, *, qos: int = 1, retain: bool = False) -> int:
        """Store one message; returns its ``seq``. Drops the oldest if the spool is full.

        Raises:
            SpoolError: The disk refused the write (full, read-only).
        """
        return self._guarded(lambda: self._put(topic, payload, qos, retain))

    def _put(self, topic: str, payload: bytes, qos: int, retain: bool) -> int:
        with self._lock:
            self._db.execute("BEGIN")
            try:
                seq = self.mark.next(self._top)
                self._db.execute("INSERT INTO messages (seq, topic, payload, qos, retain, crc) VALUES (?, ?, ?, ?, ?, ?)",
                                 (seq, topic, payload, qos, int(retain), row_crc(seq, topic, payload, qos, retain)))
                self._count += 1
                self._bytes += len(payload)
                self._top = seq
                if self._count > self.max_messages or self._bytes > self.max_bytes:
                    self._drop_oldest()
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                self._count, self._bytes = self._db.execute(
                    "SELECT COUNT(*), COALESCE(SUM(LENGTH(payload)), 0) FROM messages").fetchone()
                raise
            return seq

    def _drop_oldest(self) -> None:
        dropped = 0
        while self._count > self.max_messages or self._bytes > self.max_bytes:
            over = max(self._count - self.max_messages, 1)
            rows = self._db.execute("SELECT seq, LENGTH(payload) FROM messages ORDER BY seq LIMIT ?", (over,)).fetchall()
            if not rows:
                break
            self._db.execute("DELETE FROM messages WHERE seq <= ?", (rows[-1][0],))
            self._count -= len(rows)
            self._bytes -= sum(r[1] for r in rows)
            dropped += len(rows)
        self._db.execute("UPDATE meta SET value = value + ? WHERE key = 'dropped'", (dropped,))

    def ack(self, seqs: list[int]) -> None:
        """Delete acknowledged messages (already-dropped ones are ignored)."""
        if seqs:
            self._guarded(lambda: self._delete(seqs))

    def _delete(self, seqs: list[int], counter: str | None = None) -> None:
        with self._lock:
            self._db.execute("BEGIN")
            removed = size = 0
            for i in range(0, len(seqs), 500):
                chunk = seqs[i:i + 500]
                marks = ",".join("?" * len(chunk))
                n, b = self._db.execute(f"SELECT COUNT(*), COALESCE(SUM(LENGTH(payload)), 0) FROM messages "
                                        f"WHERE seq IN ({marks})", chunk).fetchone()
                self._db.execute(f"DELETE FROM messages WHERE seq IN ({marks})", chunk)
                removed += n
                size += b
            if counter is not None:
                self._db.execute("UPDATE meta SET value = value + ? WHERE key = ?", (removed, counter))
            self._db.execute("COMMIT")
            self._count -= removed
            self._bytes -= size

    # -- reading ---------------------------------------------------------------------------
    def after(self, seq: int, limit: int) -> list[Spooled]:
        """Up to ``limit`` messages with a ``seq`` above ``seq``, oldest first.

        A row whose checksum fails is deleted, counted as ``damaged`` and never returned.
        """
        rows = self._guarded(lambda: self._rows(seq, limit))
        good, bad = [], []
        for s, t, p, q, r, crc in rows:
            if not isinstance(t, str) or not isinstance(p, bytes) or q not in (0, 1, 2) or \
                    (crc is not None and crc != row_crc(s, t, p, q, bool(r))):
                bad.append(int(s))
                continue
            good.append(Spooled(int(s), t, p, int(q), bool(r)))
        if bad:
            self._guarded(lambda: self._delete(bad, "damaged"))
            self._problem(f"telemetry spool {self.path}: {len(bad)} damaged message(s) failed their checksum and "
                          f"were deleted, not sent (seq {', '.join(map(str, bad[:5]))}{'...' if len(bad) > 5 else ''})")
        return good

    def _rows(self, seq: int, limit: int) -> list[tuple]:
        with self._lock:
            return self._db.execute("SELECT seq, topic, payload, qos, retain, crc FROM messages WHERE seq > ? "
                                    "ORDER BY seq LIMIT ?", (seq, limit)).fetchall()

    def __len__(self) -> int:
        return self._count

    @property
    def last_seq(self) -> int:
        """The last ``seq`` given out."""
        return self.mark.last

    @property
    def queued_bytes(self) -> int:
        """Payload bytes waiting."""
        return self._bytes

    def _counter(self, key: str) -> int:
        def read() -> int:
            with self._lock:
                return int(self._db.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()[0])

        return self._guarded(read)

    @property
    def dropped(self) -> int:
        """Messages dropped for lack of room, ever (persisted)."""
        return self._counter("dropped")

    @property
    def damaged(self) -> int:
        """Messages deleted because their row failed its checksum (persisted)."""
        return self._counter("damaged")

    def describe(self) -> dict[str, Any]:
        """Counts and problems, for telemetry and ``/health``."""
        return {"queued": len(self), "dropped": self.dropped, "damaged": self.damaged, "last_seq": self.last_seq,
                "quarantined": [p.name for p in self.quarantined], "problems": self.problems[-5:]}

    def disk_bytes(self) -> int:
        """Bytes the spool takes on disk (database plus write-ahead log)."""
        total = 0
        for suffix in ("", "-wal", "-shm"):
            p = Path(str(self.path) + suffix)
            if p.exists():
                total += p.stat().st_size
        return total

    def close(self) -> None:
        with self._lock:
            self._db.close()
            self.mark.close()


def _salvage(path: Path) -> tuple[list[Spooled], dict[str, int]]:
    """The messages (checksums good) and counters still readable in a damaged spool file."""
    rows: dict[int, Spooled] = {}
    counters: dict[str, int] = {}
    try:
        db = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    except sqlite3.DatabaseError:
        return [], {}
    try:
        try:
            crc = "crc" if "crc" in {row[1] for row in db.execute("PRAGMA table_info(messages)")} else "NULL"
        except sqlite3.DatabaseError:
            crc = "crc"
        for order in ("ASC", "DESC"):  # from both ends: a damaged page in the middle hides only its rows
            try:
                for s, t, p, q, r, c in db.execute(
                        f"SELECT seq, topic, payload, qos, retain, {crc} FROM messages ORDER BY seq {order}"):
                    ok = isinstance(s, int) and isinstance(t, str) and isinstance(p, bytes) and q in (0, 1, 2)
                    if ok and (c is None or c == row_crc(s, t, p, q, bool(r))):
                        rows[s] = Spooled(s, t, p, int(q), bool(r))
            except sqlite3.DatabaseError:
                continue
        try:
            counters = {str(k): int(v) for k, v in db.execute("SELECT key, value FROM meta")
                        if k in ("dropped", "damaged")}
        except (sqlite3.DatabaseError, TypeError, ValueError):
            pass
    finally:
        db.close()
    return [rows[s] for s in sorted(rows)], counters
