"""Real web servers on loopback for bundle delivery by URL: Debian's nginx (range requests, a rate limit
to catch a download mid-way, an access log of every Range header) and Python's ``http.server`` (which
answers every request with the whole file)."""

from __future__ import annotations

import functools
import getpass
import http.server
import shutil
import subprocess
import threading
from pathlib import Path

from .broker import free_port
from .processes import listening, terminate


class Nginx:
    """``nginx`` serving ``root`` at ``http://127.0.0.1:<port>/``, at most ``rate`` bytes/s per connection.

    Raises:
        RuntimeError: nginx is not installed (``scripts/bootstrap.sh`` installs ``nginx-light``).
    """

    def __init__(self, workdir: Path, root: Path, *, rate: str = "0", port: int | None = None) -> None:
        binary = shutil.which("nginx") or next((p for p in ("/usr/sbin/nginx",) if Path(p).exists()), None)
        if binary is None:
            raise RuntimeError("nginx is not installed: run scripts/bootstrap.sh (or apt-get install -y nginx-light)")
        self.binary, self.workdir, self.root = binary, Path(workdir), Path(root)
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.port = port or free_port()
        self.access_log = self.workdir / "access.log"
        self.conf = self.workdir / "nginx.conf"
        self.conf.write_text(
            # As root, nginx's workers would switch to nobody and lose access to the test's private folder.
            f"daemon off;\nuser {getpass.getuser()};\nworker_processes 1;\npid {self.workdir}/nginx.pid;\nerror_log {self.workdir}/error.log;\n"
            "events { worker_connections 256; }\n"
            "http {\n"
            "  log_format ranges '$request_uri $status $http_range $body_bytes_sent';\n"
            f"  access_log {self.access_log} ranges;\n"
            f"  client_body_temp_path {self.workdir}/body; proxy_temp_path {self.workdir}/proxy;\n"
            f"  fastcgi_temp_path {self.workdir}/fastcgi; uwsgi_temp_path {self.workdir}/uwsgi;\n"
            f"  scgi_temp_path {self.workdir}/scgi;\n"
            f"  server {{ listen 127.0.0.1:{self.port}; root {self.root}; limit_rate {rate}; }}\n"
            "}\n")
        self.process: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/"

    def start(self, timeout_s: float = 10.0) -> Nginx:
        self.process = subprocess.Popen([self.binary, "-c", str(self.conf), "-p", str(self.workdir)],
                                        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        listening(self.port, self.process, timeout_s, self.workdir / "error.log")
        return self

    def stop(self) -> None:
        if self.process is not None:
            terminate(self.process)
        self.process = None

    def requests(self) -> list[list[str]]:
        """Each request logged so far: [uri, status, Range header or '-', body bytes sent]."""
        if not self.access_log.exists():
            return []
        return [line.split() for line in self.access_log.read_text().splitlines() if line.strip()]


class PlainHttp:
    """Python's ``http.server`` serving ``root``: no range support, every answer is the whole file."""

    def __init__(self, root: Path) -> None:
        handler = functools.partial(_Quiet, directory=str(root))
        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self.port = self.server.server_address[1]
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/"

    def start(self) -> PlainHttp:
        self.thread.start()
        return self

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()


class _Quiet(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: object) -> None:
        pass
