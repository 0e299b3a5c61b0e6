"""The spool: order, acks, bounds, crash safety, and the memory fallback when the disk cannot be written."""

from __future__ import annotations

import subprocess
import sys
import threading
from pathlib import Path

from custom.daemon.publish.spool import Spool
from testing.disk import remount, tmpfs

TOPIC = "custom/s1/events"
WAIT_S = 10.0


def payloads(rows) -> list[bytes]:
    return [r.payload for r in rows]


def test_rows_come_back_oldest_first_after_a_cursor(tmp_path: Path):
    with Spool(tmp_path / "s.sqlite", max_rows=100, max_bytes=10**6) as spool:
        ids = [spool.put(TOPIC, f"e{i}".encode()) for i in range(10)]
        assert ids == sorted(ids) and len(set(ids)) == 10
        assert payloads(spool.pending(0, 3)) == [b"e0", b"e1", b"e2"]
        assert payloads(spool.pending(ids[6], 100)) == [b"e7", b"e8", b"e9"]
        row = spool.pending(0, 1)[0]
        assert (row.row_id, row.topic, row.payload) == (ids[0], TOPIC, b"e0")


def test_ack_removes_only_that_row(tmp_path: Path):
    with Spool(tmp_path / "s.sqlite", max_rows=100, max_bytes=10**6) as spool:
        ids = [spool.put(TOPIC, f"e{i}".encode()) for i in range(4)]
        spool.ack(ids[1])
        spool.ack(ids[1])  # a second PUBACK (or a dropped row) is harmless
        spool.ack(999_999)
        assert payloads(spool.pending(0, 10)) == [b"e0", b"e2", b"e3"]
        assert spool.depth() == 3
        assert spool.stats()["bytes"] == 3 * (2 + len(TOPIC))


def test_row_limit_drops_oldest_and_counts(tmp_path: Path):
    with Spool(tmp_path / "s.sqlite", max_rows=5, max_bytes=10**6) as spool:
        for i in range(12):
            spool.put(TOPIC, f"e{i}".encode())
        assert payloads(spool.pending(0, 100)) == [f"e{i}".encode() for i in range(7, 12)]
        stats = spool.stats()
        assert stats["depth"] == 5 and stats["dropped"] == 7 and not stats["memory_fallback"]


def test_byte_limit_drops_oldest_and_counts(tmp_path: Path):
    row_bytes = 100 + len(TOPIC)
    with Spool(tmp_path / "s.sqlite", max_rows=1000, max_bytes=3 * row_bytes + 10) as spool:
        for i in range(6):
            spool.put(TOPIC, bytes([i]) * 100)
        assert [p[0] for p in payloads(spool.pending(0, 100))] == [3, 4, 5]
        assert spool.stats()["dropped"] == 3
        assert spool.stats()["bytes"] <= 3 * row_bytes + 10


def test_survives_reopen_and_ids_never_go_back(tmp_path: Path):
    path = tmp_path / "s.sqlite"
    with Spool(path, max_rows=100, max_bytes=10**6) as spool:
        ids = [spool.put(TOPIC, f"e{i}".encode()) for i in range(5)]
        for row_id in ids[3:]:
            spool.ack(row_id)  # the newest rows are gone: a reused id would slip under a publisher's cursor
    with Spool(path, max_rows=100, max_bytes=10**6) as spool:
        assert payloads(spool.pending(0, 100)) == [b"e0", b"e1", b"e2"]
        assert spool.depth() == 3
        assert spool.put(TOPIC, b"new") > ids[-1]


# Writes rows as fast as it can and prints each id only after put() returned (committed).
WRITER = """
import sys
from custom.daemon.publish.spool import Spool
spool = Spool(sys.argv[1], max_rows=10**6, max_bytes=10**9)
i = 0
while True:
    row_id = spool.put("t", b"payload-%d" % i)
    print(row_id, i, flush=True)
    i += 1
"""


def test_kill9_while_writing_loses_no_committed_row(tmp_path: Path):
    path = tmp_path / "s.sqlite"
    proc = subprocess.Popen([sys.executable, "-c", WRITER, str(path)], stdout=subprocess.PIPE, text=True)
    committed: dict[int, int] = {}
    try:
        for _ in range(300):  # readline blocks only while the child is alive and writing; it exits on kill
            line = proc.stdout.readline()
            if not line:
                break
            row_id, i = map(int, line.split())
            committed[row_id] = i
    finally:
        proc.kill()
        proc.wait(WAIT_S)
        proc.stdout.close()
    assert len(committed) == 300, "the writer died on its own"
    with Spool(path, max_rows=10**6, max_bytes=10**9) as spool:
        rows = {r.row_id: r.payload for r in spool.pending(0, 10**6)}
    for row_id, i in committed.items():
        assert rows.get(row_id) == b"payload-%d" % i
    assert list(rows) == sorted(rows)


def test_folder_that_cannot_exist_falls_back_to_memory(tmp_path: Path, caplog):
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("a file where the state folder should be")
    with Spool(blocker / "s.sqlite", max_rows=100, max_bytes=10**6, memory_rows=3) as spool:
        ids = [spool.put(TOPIC, f"e{i}".encode()) for i in range(5)]
        stats = spool.stats()
        assert stats["memory_fallback"] and str(blocker) in stats["last_error"]
        assert stats["dropped"] == 2, "memory is bounded too: oldest dropped and counted"
        assert payloads(spool.pending(0, 10)) == [b"e2", b"e3", b"e4"]
        spool.ack(ids[3])
        assert payloads(spool.pending(0, 10)) == [b"e2", b"e4"]
    errors = [r for r in caplog.records if r.levelname == "ERROR"]
    assert len(errors) == 1, "one clear log line, not one per event"


def test_put_and_ack_from_two_threads(tmp_path: Path):
    with Spool(tmp_path / "s.sqlite", max_rows=10**6, max_bytes=10**9) as spool:
        n = 300
        errors: list[BaseException] = []

        def producer() -> None:
            try:
                for i in range(n):
                    spool.put(TOPIC, b"%d" % i)
            except BaseException as exc:
                errors.append(exc)

        thread = threading.Thread(target=producer)
        thread.start()
        seen: list[bytes] = []
        cursor = 0
        while len(seen) < n and not errors:
            for row in spool.pending(cursor, 50):
                seen.append(row.payload)
                cursor = row.row_id
                spool.ack(row.row_id)
            if not thread.is_alive() and not spool.pending(cursor, 1):
                break
        thread.join(WAIT_S)
        assert not errors
        assert seen == [b"%d" % i for i in range(n)]
        assert spool.depth() == 0


# -------------------------------------------------------------------------- real disk faults on a tiny tmpfs


def test_read_only_state_dir_holds_events_in_memory_then_moves_them_to_disk(tmp_path: Path):
    """The state folder is read-only at start (a mount gone wrong) and becomes writable later."""
    with tmpfs(tmp_path / "mnt", "4m") as mnt:
        path = mnt / "s.sqlite"
        remount(mnt, "ro")
        try:
            spool = Spool(path, max_rows=1000, max_bytes=10**6, retry_s=0.0)
            during = [spool.put(TOPIC, f"ro{i}".encode()) for i in range(3)]
            stats = spool.stats()
            assert stats["memory_fallback"] and stats["memory_depth"] == 3, stats
            assert "read-only" in stats["last_error"].lower(), stats
            assert payloads(spool.pending(0, 10)) == [b"ro0", b"ro1", b"ro2"]
        finally:
            remount(mnt, "rw")
        after = spool.put(TOPIC, b"after")  # the retry opens the file and moves the memory rows first, same ids
        assert during == sorted(during) and after > during[-1]
        stats = spool.stats()
        assert not stats["memory_fallback"] and stats["last_error"] is None, stats
        spool.close()
        with Spool(path, max_rows=1000, max_bytes=10**6) as reopened:
            got = [(r.row_id, r.payload) for r in reopened.pending(0, 10)]
        assert got == list(zip([*during, after], [b"ro0", b"ro1", b"ro2", b"after"], strict=True))


def test_full_disk_falls_back_to_memory_without_raising(tmp_path: Path):
    with tmpfs(tmp_path / "mnt", "256k") as mnt:
        spool = Spool(mnt / "s.sqlite", max_rows=10**6, max_bytes=10**9, memory_rows=1000, retry_s=3600)
        try:
            sent = [bytes([i % 256]) * 4000 for i in range(200)]  # 800 kB: cannot fit in 256 kB
            ids = [spool.put(TOPIC, p) for p in sent]
            stats = spool.stats()
            assert stats["memory_fallback"] and "full" in stats["last_error"], stats
            rows = spool.pending(0, 1000)
            assert [r.row_id for r in rows] == ids and payloads(rows) == sent, "nothing lost, order kept"
            assert stats["dropped"] == 0
        finally:
            spool.close()
