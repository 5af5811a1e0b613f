"""Waiting for a helper's server to listen, and stopping its process as a service manager would."""

from __future__ import annotations

import socket
import subprocess
import time
from pathlib import Path


def terminate(process: subprocess.Popen, timeout_s: float = 10.0) -> None:
    """SIGTERM, then SIGKILL if it has not exited within ``timeout_s``."""
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout_s)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def listening(port: int, process: subprocess.Popen, timeout_s: float, log: Path, name: str = "the server") -> None:
    """Return once 127.0.0.1:``port`` accepts a connection.

    Raises:
        RuntimeError: The process exited (with the end of its ``log``), or nothing listened in time.
    """
    until = time.monotonic() + timeout_s
    while time.monotonic() < until:
        if process.poll() is not None:
            raise RuntimeError(f"{name} exited: {log.read_text()[-500:] if log.exists() else ''}")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"{name} did not listen on port {port} within {timeout_s}s")
