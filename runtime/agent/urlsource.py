"""Bundles from a web server: a blob's chunks streamed over HTTP(S), resumed with Range requests.

A desired state may name its blob's URL (``blob.url``) beside the chunk digests; the broker then
carries only the control plane, and the bytes come from any static web server or object store.
The board asks for the bytes from the first chunk it lacks (``Range: bytes=<offset>-``); a server
that ignores ranges answers the whole file and the chunks the board has are skipped. Every chunk
is checked against its sha256 before it is written, as chunks from the broker are, so the server
needs no trust: a wrong or tampered file fails its digests and the update fails, said once.

Bounded and hostile-safe: redirects are not followed (the URL checked against ``[fleet]
blob_urls`` is the one fetched), reads never exceed a chunk, the body never exceeds the
announced size, and a dropped connection or a server that went away is retried with backoff
from the last good chunk, for as long as the desired state stands.
"""

from __future__ import annotations

import hashlib
import http.client
import logging
import re
import threading
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable
from typing import Any

from ..._version import __version__
from .delivery import Download

log = logging.getLogger("edgec.fleet")
MAX_URL = 2048
MAX_BACKOFF_S = 60.0
# Answers that will not change by asking again: the push named a file this server does not serve.
_FINAL = {301, 302, 303, 307, 308, 400, 401, 403, 404, 405, 410, 416}
_CONTENT_RANGE = re.compile(r"bytes (\d+)-(\d+)/(\d+|\*)")


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args: Any, **kwargs: Any) -> None:
        return None  # urllib then raises HTTPError with the 3xx status


_OPENER = urllib.request.build_opener(_NoRedirect())


class Refused(Exception):
    """The server answered something that asking again will not fix."""


def url_problem(url: Any, prefixes: tuple[str, ...], signed: bool) -> str | None:
    """Why a board must not fetch ``url`` (from a desired state), or None.

    An http(s) URL without credentials, spaces or control characters, under one of ``prefixes``
    when given; an unsigned fleet takes URLs only under ``prefixes`` (anyone who can publish on its
    broker could otherwise point its boards at any host).
    """
    if not isinstance(url, str) or not 0 < len(url) <= MAX_URL:
        return f"the bundle URL must be a string of at most {MAX_URL} characters"
    parts = urllib.parse.urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname or "@" in parts.netloc:
        return f"the bundle URL {url[:80]!r} is not an http(s) URL with a host (and no user:password@)"
    if any(ord(c) <= 32 or ord(c) == 127 for c in url):
        return "the bundle URL holds spaces or control characters"
    if prefixes and not any(url.startswith(p) for p in prefixes):
        return f"the bundle URL {url[:80]!r} is not under this board's [fleet] blob_urls"
    if not prefixes and not signed:
        return ("this board takes unsigned desired states (allow_unsigned = true), so it fetches bundles only from "
                "URLs under [fleet] blob_urls; none is set")
    return None


class UrlSource:
    """Streams ``download``'s missing chunks from ``url`` on a thread of its own.

    ``lock`` guards ``download`` (shared with whoever reads its progress); ``on_chunk`` is called
    after each chunk written. ``failed`` says why the fetch gave up for good; ``error`` is the last
    problem it is retrying past.
    """

    def __init__(self, url: str, download: Download, lock: threading.Lock, on_chunk: Callable[[], None], *,
                 timeout_s: float = 15.0) -> None:
        self.url, self.download, self.lock, self.on_chunk = url, download, lock, on_chunk
        self.timeout_s = timeout_s
        self.failed: str | None = None
        self.error: str | None = None
        self.requests = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="edgec-fleet-url", daemon=True)

    def start(self) -> UrlSource:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(self.timeout_s + 1)

    def _run(self) -> None:
        delay = 1.0
        while not self._stop.is_set() and not self.download.complete:
            before = self.download.done
            try:
                self._stream()
            except Refused as exc:
                self.failed = str(exc)
                self.on_chunk()  # wake the updater to say so
                return
            except (OSError, http.client.HTTPException, ValueError) as exc:
                self.error = f"{self.url}: {getattr(exc, 'reason', None) or exc}"
                log.info("bundle download from %s interrupted (%s); resuming from chunk %d", self.url, self.error,
                         self.download.done)
            if self.download.complete:
                return
            delay = 1.0 if self.download.done > before else min(delay * 2, MAX_BACKOFF_S)
            self._stop.wait(delay)

    def _stream(self) -> None:
        blob = self.download.blob
        start = self.download.done
        offset = start * blob.chunk_size
        request = urllib.request.Request(self.url, headers={"Range": f"bytes={offset}-",
                                                            "User-Agent": f"edgec/{__version__}"})
        self.requests += 1
        try:
            response = _OPENER.open(request, timeout=self.timeout_s)
        except urllib.error.HTTPError as exc:
            exc.close()
            if exc.code in _FINAL:
                raise Refused(f"{self.url} answered HTTP {exc.code}"
                              + (" (a redirect: boards do not follow them; push the final URL)"
                                 if 300 <= exc.code < 400 else "")) from None
            raise OSError(f"HTTP {exc.code}") from None
        with response:
            index = self._first_index(response, start, offset)
            while index < len(blob.chunks) and not self._stop.is_set():
                expected = min(blob.chunk_size, blob.size - index * blob.chunk_size)
                payload = _read(response, expected)
                if len(payload) < expected:
                    raise OSError(f"the connection closed {len(payload)} bytes into chunk {index}")
                if index >= start:
                    if hashlib.sha256(payload).hexdigest() != blob.chunks[index]:
                        raise Refused(f"the file at {self.url} is not the pushed bundle: chunk {index}'s sha256 "
                                      "differs from the desired state's")
                    with self.lock:
                        self.download.accept(index, payload)
                    self.error = None
                    self.on_chunk()
                index += 1

    def _first_index(self, response: Any, start: int, offset: int) -> int:
        """The chunk the body begins with: ``start`` for a range answer, 0 for the whole file."""
        size = self.download.blob.size
        if response.status == 206:
            found = _CONTENT_RANGE.fullmatch((response.headers.get("Content-Range") or "").strip())
            if not found or int(found.group(1)) != offset or (found.group(3) != "*" and int(found.group(3)) != size):
                raise Refused(f"{self.url} answered the range {response.headers.get('Content-Range')!r}, not bytes "
                              f"{offset}- of a {size}-byte file: it is not the pushed bundle")
            return start
        if response.status != 200:
            raise OSError(f"HTTP {response.status}")
        length = response.headers.get("Content-Length")
        if length is not None and length.isdigit() and int(length) != size:
            raise Refused(f"{self.url} serves {length} bytes, not the pushed bundle's {size}")
        return 0


def _read(response: Any, n: int) -> bytes:
    """Up to ``n`` bytes, fewer only at the end of the body."""
    parts, got = [], 0
    while got < n:
        part = response.read(n - got)
        if not part:
            break
        parts.append(part)
        got += len(part)
    return b"".join(parts)
