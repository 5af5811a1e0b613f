"""A real Debian ``mosquitto`` on loopback, for tests and benchmarks (never a fake)."""

from __future__ import annotations

import getpass
import shutil
import socket
import subprocess
from pathlib import Path

from .processes import listening, terminate


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Mosquitto:
    """``mosquitto -c <conf>`` on 127.0.0.1, with persistence so a stop/start keeps sessions.

    Raises:
        RuntimeError: mosquitto is not installed (``scripts/bootstrap.sh`` installs it).
    """

    def __init__(self, workdir: Path, port: int | None = None, *, conf: str | None = None) -> None:
        binary = shutil.which("mosquitto") or next(
            (p for p in ("/usr/sbin/mosquitto", "/usr/bin/mosquitto") if Path(p).exists()), None)
        if binary is None:
            raise RuntimeError("mosquitto is not installed: run scripts/bootstrap.sh "
                               "(or apt-get install -y mosquitto)")
        self.binary = binary
        self.workdir = Path(workdir)
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.port = port or free_port()
        self.conf = self.workdir / "mosquitto.conf"
        # As root, mosquitto would switch to the 'mosquitto' user and lose access to its
        # own files under the test's private temporary folder.
        user = f"user {getpass.getuser()}\n"
        # conf: a whole configuration (a shipped one with its paths and port rewritten), listener included.
        self.conf.write_text(user + conf + f"log_dest file {self.workdir}/mosquitto.log\n" if conf is not None else
            user + f"listener {self.port} 127.0.0.1\n"
            "allow_anonymous true\n"
            "persistence true\n"
            f"persistence_location {self.workdir}/\n"
            "max_queued_messages 0\n"  # no cap on messages queued for a subscriber
            "max_inflight_messages 0\n"
            f"log_dest file {self.workdir}/mosquitto.log\n")
        self.process: subprocess.Popen | None = None

    def start(self, timeout_s: float = 10.0) -> Mosquitto:
        self.process = subprocess.Popen([self.binary, "-c", str(self.conf)], stdout=subprocess.DEVNULL,
                                        stderr=subprocess.DEVNULL)
        listening(self.port, self.process, timeout_s, self.workdir / "mosquitto.log", "mosquitto")
        return self

    def stop(self) -> None:
        """SIGTERM, as a service manager stops it (it saves its persistence file first)."""
        if self.process is not None:
            terminate(self.process)
        self.process = None
