"""The telemetry spool on a damaged disk: real SQLite files, truncated, garbled, killed mid-write.

The promise under test: a damaged spool never stops the device, never publishes a garbled
message, and never reuses a sequence number, so every lost message is visible to a consumer
as a gap in ``seq`` (or counted as ``damaged``/``dropped``).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from edgec.runtime.agent.spool import Spool

TOPIC = "edgec/test/pi-1/events"


def fill(path: Path, n: int, pad: int = 200) -> list[int]:
    spool = Spool(path)
    seqs = [spool.put(TOPIC, json.dumps({"i": i, "pad": "x" * pad}).encode()) for i in range(n)]
    spool.close()
    return seqs


def check_readable(spool: Spool) -> list[int]:
    """Every message the spool hands out is one that was put: valid JSON, its own number."""
    messages = spool.after(0, 100_000)
    for m in messages:
        assert m.topic == TOPIC and "pad" in json.loads(m.payload)
    return [m.seq for m in messages]


def test_a_truncated_spool_is_set_aside_and_what_is_readable_is_kept(tmp_path):
    path = tmp_path / "spool.sqlite"
    seqs = fill(path, 2000)
    os.truncate(path, path.stat().st_size - 1000)
    spool = Spool(path)
    assert [p.name.startswith("spool.sqlite.corrupt-") for p in spool.quarantined] == [True]
    assert spool.quarantined[0].exists() and "quick_check" in spool.problems[0] and "\n" not in spool.problems[0]
    kept = check_readable(spool)
    assert 0 < len(kept) < len(seqs) and set(kept) <= set(seqs)
    assert spool.put(TOPIC, b"{}") == seqs[-1] + 1  # numbering goes on: what was lost is a gap
    spool.close()


def test_a_garbage_header_does_not_stop_the_device(tmp_path):
    path = tmp_path / "spool.sqlite"
    seqs = fill(path, 300)
    with open(path, "r+b") as f:
        f.write(b"\0" * 100)
    problems = []
    spool = Spool(path, on_problem=problems.append)
    assert len(spool) == 0 and spool.quarantined and problems and "not a database" in problems[0]
    assert spool.put(TOPIC, b"{}") == seqs[-1] + 1
    spool.close()


def test_a_garbled_row_is_never_handed_out_and_is_counted(tmp_path):
    path = tmp_path / "spool.sqlite"
    seqs = fill(path, 500)
    data = bytearray(path.read_bytes())
    at = data.find(b'{"i": 250,')
    assert at > 0
    data[at + 7] ^= 0x01  # one bit in the payload: a valid page, a wrong message
    path.write_bytes(bytes(data))
    spool = Spool(path)
    assert not spool.quarantined  # the file's structure is sound; only the row's checksum can tell
    kept = check_readable(spool)
    assert kept == seqs[:250] + seqs[251:]  # the garbled one (seq 251) is gone, nothing else
    assert spool.damaged == 1 and "seq 251" in spool.problems[-1]
    spool.close()
    assert Spool(path).damaged == 1  # the count survives a restart


KILLED_WRITER = """
import os, signal, sys, json
from edgec.runtime.agent.spool import Spool
spool = Spool(sys.argv[1])
for i in range(int(sys.argv[2])):
    seq = spool.put("edgec/test/pi-1/events", json.dumps({"i": i, "pad": "x"}).encode())
print(seq, flush=True)
os.kill(os.getpid(), signal.SIGKILL)
"""


@pytest.mark.parametrize("damage", ["deleted", "garbled"])
def test_a_lost_write_ahead_log_after_sigkill_shows_as_a_gap_never_as_reused_numbers(tmp_path, damage):
    path = tmp_path / "spool.sqlite"
    run = subprocess.run([sys.executable, "-c", KILLED_WRITER, str(path), "400"], capture_output=True, text=True)
    assert run.returncode == -9, run.stderr
    last = int(run.stdout)
    wal = Path(f"{path}-wal")
    assert wal.stat().st_size > 0  # the 400 commits live in the WAL: a checkpoint never ran
    if damage == "deleted":
        wal.unlink()
        Path(f"{path}-shm").unlink(missing_ok=True)
    else:
        data = bytearray(wal.read_bytes())
        middle = len(data) // 2
        data[middle:middle + 64] = bytes(b ^ 0xA5 for b in data[middle:middle + 64])
        wal.write_bytes(bytes(data))
    spool = Spool(path)
    kept = check_readable(spool)
    assert kept == list(range(1, len(kept) + 1))  # what survived is a prefix, intact
    assert len(kept) < last  # messages were lost ...
    assert spool.put(TOPIC, b'{"pad": 1}') == last + 1  # ... and the next number says how many
    if damage == "garbled":  # the log itself shows the damage: counted and reported, not silent
        assert spool.damaged == last - len(kept) > 0
        assert f"up to {last - len(kept)} message(s)" in spool.problems[-1] and "write-ahead log" in spool.problems[-1]
        assert list(tmp_path.glob("spool.sqlite-wal.corrupt-*"))  # kept for a post-mortem
    spool.close()


def test_after_a_clean_close_numbering_resumes_exactly(tmp_path):
    path = tmp_path / "spool.sqlite"
    first = fill(path, 10)
    spool = Spool(path)
    spool.ack(first)  # all sent: the database holds nothing, the numbering still remembers
    spool.close()
    spool = Spool(path)
    assert len(spool) == 0 and spool.put(TOPIC, b"{}") == 11
    spool.close()


@pytest.mark.parametrize("damage", ["database", "write-ahead log"])
def test_a_damaged_spool_at_start_is_reported_and_telemetry_flows(tmp_path, damage):
    from helpers.broker import Mosquitto
    from helpers.mqtt import Subscriber, config

    from edgec.runtime.agent.telemetry import Telemetry

    cfg = config(tmp_path, None)
    if damage == "database":
        seqs = fill(cfg.spool, 200)
        with open(cfg.spool, "r+b") as f:
            f.write(b"\0" * 100)
    else:  # killed with its messages in the log, then a run of bytes in the log garbled
        run = subprocess.run([sys.executable, "-c", KILLED_WRITER, str(cfg.spool), "400"], capture_output=True, text=True)
        seqs = [int(run.stdout)]
        wal = Path(f"{cfg.spool}-wal")
        data = bytearray(wal.read_bytes())
        data[len(data) // 2:len(data) // 2 + 64] = bytes(64)
        wal.write_bytes(bytes(data))
    broker = Mosquitto(tmp_path / "broker").start()
    try:
        dash = Subscriber(broker.port)
        telemetry = Telemetry(config(tmp_path, broker.port, interval_s=0.2)).start()
        assert Subscriber.wait(lambda: len(dash.on("/telemetry")) >= 2, 20)
        problems = [e for e in dash.on("/events") if e.get("kind") == "telemetry_problem"]
        said = "moved to spool.sqlite.corrupt-" if damage == "database" else "write-ahead log was damaged"
        assert problems and said in problems[0]["message"], problems
        assert all(m["seq"] > seqs[-1] for m in dash.on("/telemetry"))  # no number reused
        spool = dash.on("/telemetry")[-1]["spool"]
        assert spool["quarantined"] if damage == "database" else spool["damaged"] > 0
        assert telemetry.publisher.health()["ok"]
        telemetry.stop()
        dash.close()
    finally:
        broker.stop()


def test_the_sender_survives_an_error_and_health_says_so(tmp_path):
    """Supervision, with one failure injected into a real spool (beside the real-damage test above)."""
    from helpers.broker import Mosquitto
    from helpers.mqtt import Subscriber, config

    from edgec.errors import SpoolError
    from edgec.runtime.agent.publisher import Publisher

    broker = Mosquitto(tmp_path / "broker").start()
    try:
        dash = Subscriber(broker.port)
        pub = Publisher(config(tmp_path, broker.port)).start()
        real_after, failures = pub.spool.after, []

        def failing_once(seq, limit):
            if not failures:
                failures.append(1)
                raise SpoolError("telemetry spool: disk I/O error")
            return real_after(seq, limit)

        pub.spool.after = failing_once
        assert Subscriber.wait(lambda: pub.connected, 10)
        seq = pub.publish("edgec/test/pi-1/events", {"kind": "test", "message": "after the failure"})
        assert Subscriber.wait(lambda: [e for e in dash.on("/events") if e.get("seq") == seq], 20)
        health = pub.health()
        assert health["ok"] and health["sender"] == "running" and health["sender_errors"] == 1
        assert "disk I/O error" in health["last_error"]
        pub.stop()
        assert not pub.ensure_sender()  # stopped on purpose: not restarted
        dash.close()
    finally:
        broker.stop()


def test_a_publisher_whose_sender_thread_is_gone_restarts_it(tmp_path):
    from edgec.runtime.agent.publisher import Publisher
    from helpers.mqtt import config

    problems = []
    pub = Publisher(config(tmp_path, None))
    pub.on_problem = problems.append
    pub.start()
    pub._stopping = True  # let the thread end as if it had died
    pub._wake.set()
    pub._sender.join(5)
    pub._stopping = False
    assert not pub.health()["ok"] and pub.health()["sender"] == "stopped"
    assert pub.ensure_sender() and pub._sender.is_alive() and "restarted" in problems[-1]
    time.sleep(0.1)
    assert pub.health()["ok"]
    pub.stop()


def test_an_intact_or_torn_write_ahead_log_raises_no_alarm(tmp_path):
    """No false losses: a log that wrapped (an older log's frames after this one's) or whose last frame was cut short."""
    from edgec.runtime.agent.walcheck import check_wal

    path = tmp_path / "spool.sqlite"
    run = subprocess.run([sys.executable, "-c", KILLED_WRITER, str(path), "3000"], capture_output=True, text=True)
    assert run.returncode == -9, run.stderr
    wal = Path(f"{path}-wal")
    assert check_wal(wal) is None
    data = bytearray(wal.read_bytes())
    data[-100:] = bytes(100)
    wal.write_bytes(bytes(data))
    assert check_wal(wal) is None
    spool = Spool(path)
    assert spool.damaged == 0 and not spool.problems
    spool.close()
