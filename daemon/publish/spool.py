"""The spool: every event is written here before it is published and deleted only when the broker acknowledges it.

"Broker down" is a normal state for a street sensor, so the spool, not the MQTT client, is the source of truth for
what still has to be sent. It is one SQLite file in WAL mode: a committed row survives `kill -9` (the WAL is on
disk before `put` returns); `synchronous=NORMAL` means a power cut may lose the last few rows but never corrupts the
file, which is the right trade for an SD card.

Row ids only grow (AUTOINCREMENT), so "everything after id N" is a stable cursor for the publisher, and publishing
in id order keeps events in the order they were heard across outages and restarts.

Bounded by rows and payload bytes: when either limit is passed the oldest rows are dropped and counted; losing the
oldest data is better than refusing new data or filling the card.

If the file cannot be written (folder missing or read-only, disk full, I/O error) new rows go to a bounded
in-memory queue instead, `stats()` says so, and the disk is retried every `retry_s`; when it works again the
memory rows are moved to disk with the ids they already have, so ordering and cursors stay valid.

Threading: one connection shared by the service thread (`put`) and the publisher thread (`pending`, `ack`), every
call under one lock. Calls are short (one small transaction), so contention is negligible at one event per 10 s.
"""

from __future__ import annotations

import collections
import contextlib
import logging
import sqlite3
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

DEFAULT_MEMORY_ROWS = 1000
DEFAULT_RETRY_S = 30.0
FULL_LOG_S = 600.0
_SCHEMA = """
CREATE TABLE IF NOT EXISTS events (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    topic TEXT NOT NULL,
    payload BLOB NOT NULL,
    size INTEGER NOT NULL,
    created REAL NOT NULL
)
"""


@dataclass(frozen=True)
class SpoolRow:
    row_id: int
    topic: str
    payload: bytes


class Spool:
    """A bounded, ordered, crash-safe queue of (topic, payload) rows. See the module docstring for the guarantees."""

    def __init__(
        self,
        path: str | Path,
        max_rows: int,
        max_bytes: int,
        memory_rows: int = DEFAULT_MEMORY_ROWS,
        retry_s: float = DEFAULT_RETRY_S,
    ) -> None:
        self.path = Path(path)
        self.max_rows = max_rows
        self.max_bytes = max_bytes
        self.memory_rows = memory_rows
        self.retry_s = retry_s
        self._lock = threading.Lock()
        self._db: sqlite3.Connection | None = None
        self._disk_rows = 0
        self._disk_bytes = 0
        self._memory: collections.OrderedDict[int, SpoolRow] = collections.OrderedDict()
        self._memory_bytes = 0
        self._unacked_deletes: set[int] = set()  # acked, but the DELETE failed: never hand these out again
        self._last_id = 0
        self._dropped = 0
        self._last_error: str | None = None
        self._next_retry = 0.0
        self._next_full_log = 0.0
        self._closed = False
        with self._lock:
            self._open()

    # ------------------------------------------------------------------------------------------------------ public

    def put(self, topic: str, payload: bytes) -> int:
        """Store one row and return its id; never raises for disk trouble (falls back to memory instead)."""
        size = len(payload) + len(topic.encode())
        with self._lock:
            self._check_open()
            self._retry_disk()
            if self._db is not None and not self._memory:
                try:
                    with self._db:
                        cur = self._db.execute(
                            "INSERT INTO events (topic, payload, size, created) VALUES (?, ?, ?, ?)",
                            (topic, payload, size, time.time()),
                        )
                        row_id = int(cur.lastrowid or 0)  # always set after an INSERT
                        self._disk_rows += 1
                        self._disk_bytes += size
                        self._trim_disk()
                    self._last_id = max(self._last_id, row_id)
                    return row_id
                except sqlite3.Error as exc:
                    self._recount()
                    self._disk_failed("write", exc)
            self._last_id += 1
            row = SpoolRow(self._last_id, topic, bytes(payload))
            self._memory[row.row_id] = row
            self._memory_bytes += size
            while len(self._memory) > self.memory_rows:
                _, old = self._memory.popitem(last=False)
                self._memory_bytes -= len(old.payload) + len(old.topic.encode())
                self._dropped += 1
            return row.row_id

    def ack(self, row_id: int) -> None:
        """The broker has the row: forget it. Unknown ids (already dropped or acked) are ignored."""
        with self._lock:
            if self._closed:
                return
            old = self._memory.pop(row_id, None)
            if old is not None:
                self._memory_bytes -= len(old.payload) + len(old.topic.encode())
                return
            if self._db is None:
                return  # the file never opened, so no row of ours is on disk
            try:
                self._delete([row_id])
            except sqlite3.Error as exc:
                self._unacked_deletes.add(row_id)
                self._disk_failed("delete", exc)

    def pending(self, after_id: int = 0, limit: int = 100) -> list[SpoolRow]:
        """Up to `limit` rows with id > after_id, oldest first: disk rows, then memory rows (which have larger ids)."""
        with self._lock:
            self._check_open()
            rows: list[SpoolRow] = []
            if self._db is not None:
                try:
                    cur = self._db.execute(
                        "SELECT id, topic, payload FROM events WHERE id > ? ORDER BY id LIMIT ?",
                        (after_id, limit + len(self._unacked_deletes)),
                    )
                    rows = [SpoolRow(i, t, bytes(p)) for i, t, p in cur if i not in self._unacked_deletes]
                except sqlite3.Error as exc:
                    self._disk_failed("read", exc)
            for row_id, row in self._memory.items():
                if len(rows) >= limit:
                    break
                if row_id > after_id:
                    rows.append(row)
            rows.sort(key=lambda r: r.row_id)
            return rows[:limit]

    def depth(self) -> int:
        """Rows waiting to be acknowledged (disk + memory)."""
        with self._lock:
            return self._disk_rows - len(self._unacked_deletes) + len(self._memory)

    def stats(self) -> dict[str, Any]:
        """For the health message."""
        with self._lock:
            return {
                "depth": self._disk_rows - len(self._unacked_deletes) + len(self._memory),
                "bytes": self._disk_bytes + self._memory_bytes,
                "dropped": self._dropped,
                "memory_fallback": self._db is None or bool(self._memory),
                "memory_depth": len(self._memory),
                "last_error": self._last_error,
            }

    def close(self) -> None:
        """Close the file. Rows still in memory are lost (logged): there was nowhere to write them."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            if self._memory:
                log.warning("spool closed with %d event(s) only in memory; they are lost", len(self._memory))
            if self._db is not None:
                with contextlib.suppress(sqlite3.Error):
                    self._db.close()
                self._db = None

    def __enter__(self) -> Spool:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # ----------------------------------------------------------------------------------------------------- private

    def _check_open(self) -> None:
        if self._closed:
            raise RuntimeError("spool is closed")

    def _open(self) -> None:
        """Open (or create) the file; on failure stay in memory mode and schedule a retry."""
        db = None
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None, timeout=5.0)
            db.isolation_level = "DEFERRED"  # `with db:` commits or rolls back one transaction per call
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("PRAGMA synchronous=NORMAL")
            db.execute(_SCHEMA)
            db.commit()
            rows, size, last = db.execute(
                "SELECT COUNT(*), COALESCE(SUM(size), 0), COALESCE(MAX(id), 0) FROM events"
            ).fetchone()
            seq = db.execute("SELECT seq FROM sqlite_sequence WHERE name = 'events'").fetchone()
        except (OSError, sqlite3.Error) as exc:
            if db is not None:
                db.close()
            self._disk_failed("open", f"{exc}{self._folder_problem()}")
            return
        self._db = db
        self._disk_rows, self._disk_bytes = int(rows), int(size)
        self._last_id = max(self._last_id, int(last), int(seq[0]) if seq else 0)
        if self._last_error is not None:
            log.info("spool %s is writable again", self.path)
        self._last_error = None
        if self._disk_rows:
            log.info("spool %s holds %d unsent event(s)", self.path, self._disk_rows)

    def _retry_disk(self) -> None:
        """In memory mode, try the disk again every retry_s; move memory rows to disk with their ids when it works."""
        if self._db is not None and not self._memory:
            return
        now = time.monotonic()
        if now < self._next_retry:
            return
        if self._db is None:
            self._open()
            if self._db is None:
                return
        try:
            with self._db:
                self._db.executemany(
                    "INSERT INTO events (id, topic, payload, size, created) VALUES (?, ?, ?, ?, ?)",
                    [
                        (r.row_id, r.topic, r.payload, len(r.payload) + len(r.topic.encode()), time.time())
                        for r in self._memory.values()
                    ],
                )
                self._disk_rows += len(self._memory)
                self._disk_bytes += self._memory_bytes
                self._trim_disk()
                if self._unacked_deletes:
                    self._delete(sorted(self._unacked_deletes))
        except sqlite3.Error as exc:
            self._recount()
            self._disk_failed("write", exc)
            return
        if self._memory:
            log.info("spool: moved %d event(s) from memory to %s", len(self._memory), self.path)
        self._memory.clear()
        self._memory_bytes = 0
        self._unacked_deletes.clear()
        self._last_error = None

    def _delete(self, ids: list[int]) -> None:
        if self._db is None:
            return
        with self._db:
            removed = 0
            freed = 0
            for chunk_start in range(0, len(ids), 500):
                chunk = ids[chunk_start : chunk_start + 500]
                marks = ",".join("?" * len(chunk))
                freed += self._db.execute(
                    f"SELECT COALESCE(SUM(size), 0) FROM events WHERE id IN ({marks})", chunk
                ).fetchone()[0]
                removed += self._db.execute(f"DELETE FROM events WHERE id IN ({marks})", chunk).rowcount
        self._disk_rows -= removed
        self._disk_bytes -= int(freed)

    def _trim_disk(self) -> None:
        """Drop the oldest rows until both limits hold; runs inside the caller's transaction."""
        excess_rows = self._disk_rows - self.max_rows
        excess_bytes = self._disk_bytes - self.max_bytes
        if excess_rows <= 0 and excess_bytes <= 0:
            return
        if self._db is None:
            return
        drop_ids: list[int] = []
        freed = 0
        for row_id, size in self._db.execute("SELECT id, size FROM events ORDER BY id"):
            if len(drop_ids) >= excess_rows and freed >= excess_bytes:
                break
            drop_ids.append(row_id)
            freed += size
        self._db.execute("DELETE FROM events WHERE id <= ?", (drop_ids[-1],))
        self._disk_rows -= len(drop_ids)
        self._disk_bytes -= freed
        self._dropped += len(drop_ids)
        now = time.monotonic()
        if now >= self._next_full_log:  # once per FULL_LOG_S, not once per event while it stays full
            self._next_full_log = now + FULL_LOG_S
            log.warning(
                "spool full (%d rows / %d bytes max): dropping oldest events, %d dropped so far",
                self.max_rows,
                self.max_bytes,
                self._dropped,
            )

    def _recount(self) -> None:
        """After a rolled-back transaction the in-memory counters may be off: read them back from the file."""
        if self._db is None:
            return
        try:
            rows, size = self._db.execute("SELECT COUNT(*), COALESCE(SUM(size), 0) FROM events").fetchone()
            self._disk_rows, self._disk_bytes = int(rows), int(size)
        except sqlite3.Error:
            pass

    def _folder_problem(self) -> str:
        """SQLite says only "unable to open database file": find out what the OS says about the folder."""
        probe = self.path.parent / f".{self.path.name}.probe"
        try:
            probe.write_bytes(b"")
            probe.unlink()
        except OSError as exc:
            return f" (folder {self.path.parent}: {exc.strerror or exc})"
        return ""

    def _disk_failed(self, what: str, exc: BaseException | str) -> None:
        """Log once per distinct problem (not per event), remember it for health, and schedule a retry."""
        message = f"cannot {what} spool {self.path}: {exc}"
        if message != self._last_error:
            log.error(
                "%s; holding up to %d event(s) in memory, retrying every %.0f s",
                message,
                self.memory_rows,
                self.retry_s,
            )
        self._last_error = message
        self._next_retry = time.monotonic() + self.retry_s
