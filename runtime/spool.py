"""A bounded on-disk queue of outgoing MQTT messages (SQLite from the standard library).

Every QoS 1 message is written here before it is handed to the MQTT client and deleted
only when the broker acknowledges it, so neither a broker outage nor a restart of the
process loses it. Messages leave in the order they came (the row id, which SQLite's
AUTOINCREMENT never reuses, is also the message's ``seq``). When the spool is full the
oldest messages are dropped and counted; the count survives restarts.

The database runs in WAL mode with ``synchronous=NORMAL``: a committed message survives the
process being killed; only a power cut can take the last few commits with it.
"""

from __future__ import annotations

import sqlite3
import threading
from dataclasses import dataclass
from pathlib import Path

from ..errors import SpoolError, ValidationError


@dataclass(frozen=True)
class Spooled:
    """One stored message."""

    seq: int
    topic: str
    payload: bytes
    qos: int
    retain: bool


class Spool:
    """A bounded, ordered, crash-safe message store.

    Args:
        path: The SQLite file (created with its folder).
        max_messages: Most messages kept; beyond it the oldest are dropped.
        max_bytes: Most payload bytes kept; beyond it the oldest are dropped.
    """

    def __init__(self, path: str | Path, *, max_messages: int = 100_000, max_bytes: int = 64 * 2**20) -> None:
        if max_messages < 1 or max_bytes < 1:
            raise ValidationError("spool limits must be positive")
        self.path = Path(path)
        self.max_messages = max_messages
        self.max_bytes = max_bytes
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        try:
            self._db = sqlite3.connect(str(self.path), check_same_thread=False, isolation_level=None)
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=NORMAL")
            # After a backlog drains, give the write-ahead log's disk space back.
            self._db.execute("PRAGMA journal_size_limit=1048576")
            self._db.execute(
                "CREATE TABLE IF NOT EXISTS messages (seq INTEGER PRIMARY KEY AUTOINCREMENT, topic TEXT NOT NULL, "
                "payload BLOB NOT NULL, qos INTEGER NOT NULL, retain INTEGER NOT NULL)")
            self._db.execute("CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value INTEGER NOT NULL)")
            self._db.execute("INSERT OR IGNORE INTO meta VALUES ('dropped', 0)")
            count, size = self._db.execute("SELECT COUNT(*), COALESCE(SUM(LENGTH(payload)), 0) FROM messages").fetchone()
        except sqlite3.DatabaseError as exc:
            raise SpoolError(f"spool {self.path} is not usable ({exc}): move it away or delete it") from None
        self._count = int(count)
        self._bytes = int(size)

    # -- writing ---------------------------------------------------------------------------
    def put(self, topic: str, payload: bytes, *, qos: int = 1, retain: bool = False) -> int:
        """Store one message; returns its ``seq``. Drops the oldest if the spool is full."""
        with self._lock:
            self._db.execute("BEGIN")
            try:
                cur = self._db.execute("INSERT INTO messages (topic, payload, qos, retain) VALUES (?, ?, ?, ?)",
                                       (topic, payload, qos, int(retain)))
                self._count += 1
                self._bytes += len(payload)
                if self._count > self.max_messages or self._bytes > self.max_bytes:
                    self._drop_oldest()
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                self._count, self._bytes = self._db.execute(
                    "SELECT COUNT(*), COALESCE(SUM(LENGTH(payload)), 0) FROM messages").fetchone()
                raise
            return int(cur.lastrowid)

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
        if not seqs:
            return
        with self._lock:
            self._db.execute("BEGIN")
            removed = 0
            size = 0
            for i in range(0, len(seqs), 500):
                chunk = seqs[i:i + 500]
                marks = ",".join("?" * len(chunk))
                n, b = self._db.execute(f"SELECT COUNT(*), COALESCE(SUM(LENGTH(payload)), 0) FROM messages "
                                        f"WHERE seq IN ({marks})", chunk).fetchone()
                self._db.execute(f"DELETE FROM messages WHERE seq IN ({marks})", chunk)
                removed += n
                size += b
            self._db.execute("COMMIT")
            self._count -= removed
            self._bytes -= size

    # -- reading ---------------------------------------------------------------------------
    def after(self, seq: int, limit: int) -> list[Spooled]:
        """Up to ``limit`` messages with a ``seq`` above ``seq``, oldest first."""
        with self._lock:
            rows = self._db.execute("SELECT seq, topic, payload, qos, retain FROM messages WHERE seq > ? "
                                    "ORDER BY seq LIMIT ?", (seq, limit)).fetchall()
        return [Spooled(int(s), t, bytes(p), int(q), bool(r)) for s, t, p, q, r in rows]

    def __len__(self) -> int:
        return self._count

    @property
    def queued_bytes(self) -> int:
        """Payload bytes waiting."""
        return self._bytes

    @property
    def dropped(self) -> int:
        """Messages dropped for lack of room, ever (persisted)."""
        with self._lock:
            return int(self._db.execute("SELECT value FROM meta WHERE key = 'dropped'").fetchone()[0])

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
