"""A real headless Chromium (Debian's ``chromium``), driven over the DevTools protocol, for page tests."""

from __future__ import annotations

import asyncio
import base64
import json
import shutil
import subprocess
import time
import urllib.request
from pathlib import Path
from typing import Any

from .processes import terminate


def chromium_binary() -> str | None:
    return next((p for p in (shutil.which("chromium"), shutil.which("chromium-browser"), "/usr/bin/chromium")
                 if p and Path(p).exists()), None)


class Chromium:
    """One headless Chromium with one page; ``evaluate`` runs JavaScript in it.

    Raises:
        RuntimeError: Chromium is not installed (``scripts/bootstrap.sh`` installs it) or did not start.
    """

    def __init__(self, profile: Path, *, width: int = 1400, height: int = 900) -> None:
        binary = chromium_binary()
        if binary is None:
            raise RuntimeError("chromium is not installed: run scripts/bootstrap.sh (or apt-get install -y chromium)")
        profile.mkdir(parents=True, exist_ok=True)
        (profile / "DevToolsActivePort").unlink(missing_ok=True)  # a previous run's
        self.log = open(profile / "chromium.log", "wb")
        self.process = subprocess.Popen(
            [binary, "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--no-first-run",
             "--remote-debugging-port=0", f"--user-data-dir={profile}", f"--window-size={width},{height}",
             "about:blank"], stdout=self.log, stderr=self.log)
        port_file = profile / "DevToolsActivePort"
        until = time.monotonic() + 60
        while not (port_file.exists() and port_file.read_text().strip()):
            if self.process.poll() is not None or time.monotonic() > until:
                self.close()
                raise RuntimeError(f"chromium did not start: {(profile / 'chromium.log').read_text()[-800:]}")
            time.sleep(0.1)
        port = int(port_file.read_text().split()[0])
        self.loop = asyncio.new_event_loop()
        self._ids, self._ws = 0, None
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/json/list", timeout=10) as resp:
                page = next(t for t in json.loads(resp.read()) if t["type"] == "page")
            self._session, self._ws = self.loop.run_until_complete(self._open(page["webSocketDebuggerUrl"]))
        except BaseException:
            self.close()
            raise

    @staticmethod
    async def _open(url: str) -> tuple[Any, Any]:
        import aiohttp

        session = aiohttp.ClientSession()
        return session, await session.ws_connect(url, max_msg_size=0)

    async def _call(self, method: str, params: dict[str, Any]) -> dict[str, Any]:
        self._ids += 1
        await self._ws.send_json({"id": self._ids, "method": method, "params": params})
        while True:
            message = await asyncio.wait_for(self._ws.receive_json(), 60)
            if message.get("id") == self._ids:
                if "error" in message:
                    raise RuntimeError(f"{method}: {message['error']}")
                return message["result"]

    def call(self, method: str, **params: Any) -> dict[str, Any]:
        return self.loop.run_until_complete(self._call(method, params))

    def goto(self, url: str) -> None:
        self.call("Page.navigate", url=url)

    def evaluate(self, expression: str) -> Any:
        """The JSON value of a JavaScript expression in the page."""
        result = self.call("Runtime.evaluate", expression=expression, returnByValue=True)
        if "exceptionDetails" in result:
            raise RuntimeError(f"{expression!r} threw: {result['exceptionDetails']}")
        return result["result"].get("value")

    def wait_for(self, expression: str, timeout_s: float = 30.0) -> Any:
        """Poll until ``expression`` is truthy; return its value."""
        until = time.monotonic() + timeout_s
        while True:
            value = self.evaluate(expression)
            if value:
                return value
            if time.monotonic() > until:
                raise AssertionError(f"page never satisfied {expression!r} within {timeout_s}s")
            time.sleep(0.2)

    def screenshot(self, path: Path) -> Path:
        path.write_bytes(base64.b64decode(self.call("Page.captureScreenshot", format="png")["data"]))
        return path

    def close(self) -> None:
        if getattr(self, "_ws", None) is not None:
            self.loop.run_until_complete(self._ws.close())
            self.loop.run_until_complete(self._session.close())
            self._ws = None
        if getattr(self, "loop", None) is not None and not self.loop.is_closed():
            self.loop.close()
        terminate(self.process)
        self.log.close()
