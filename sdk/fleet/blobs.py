"""Where a push puts the bundle's bytes: retained chunks on the broker, or a folder a web server serves.

Chunks on the broker suit a few boards and need nothing else. For many boards, or bundles of
many megabytes, ``--blob-dir DIR --blob-url URL`` writes the packed bundle as ``DIR/<sha256>.tar``
(any static web server or object-store mount that serves ``DIR`` at ``URL``), and the desired
state names it by URL: the broker carries only the control plane, boards fetch with HTTP range
requests and check every chunk's sha256 as they would a broker's. Before a push names the URL it
fetches the file back through the boards' own downloader, so a server that does not serve it
fails the push, not every board.
"""

from __future__ import annotations

import dataclasses
import os
import shutil
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ...errors import BundleError, ValidationError
from ...runtime.agent.delivery import Blob, Download, describe_blob
from ...runtime.agent.urlsource import UrlSource, url_problem
from ...runtime.bundle.manifest import sha256_file
from ...runtime.topics import blob_topic
from .link import FleetLink


def publish_chunks(link: FleetLink, archive: Path, chunk_size: int,
                   progress: Callable[[int, int], None] | None = None) -> Blob:
    """Publish an archive's chunks as retained messages; returns its Blob."""
    blob = describe_blob(archive, chunk_size)
    pending: list[Any] = []
    with open(archive, "rb") as fh:
        for index in range(len(blob.chunks)):
            pending.append(link.publish(blob_topic(link.fleet, blob.sha256, index), fh.read(chunk_size)))
            if len(pending) >= 16:
                pending.pop(0).wait_for_publish(60)
            if progress is not None:
                progress(index + 1, len(blob.chunks))
    for info in pending:
        info.wait_for_publish(60)
    return blob


def publish_web(archive: Path, folder: Path, base_url: str, chunk_size: int, *, check_s: float = 120.0) -> Blob:
    """Write the archive as ``folder/<sha256>.tar`` (atomically; kept if already there) and return its Blob
    with the URL boards fetch it from, after fetching it back from that URL.

    Raises:
        ValidationError: ``base_url`` is not an http(s) URL.
        BundleError: The URL does not serve the file (wrong folder, a redirect, another file) within ``check_s``.
    """
    base = web_base(base_url)
    blob = describe_blob(archive, chunk_size)
    folder.mkdir(parents=True, exist_ok=True)
    dest = folder / f"{blob.sha256}.tar"
    if not (dest.is_file() and dest.stat().st_size == blob.size and sha256_file(dest) == blob.sha256):
        staging = folder / f".{dest.name}.{os.getpid()}.tmp"
        try:
            shutil.copyfile(archive, staging)
            os.replace(staging, dest)
        finally:
            staging.unlink(missing_ok=True)
    blob = dataclasses.replace(blob, url=base + dest.name)
    check_served(blob, check_s)
    return blob


def web_base(base_url: str) -> str:
    """``base_url`` ending in ``/``, checked as boards check the URLs they are given.

    Raises:
        ValidationError: Not an http(s) URL with a host.
    """
    base = base_url if base_url.endswith("/") else base_url + "/"
    problem = url_problem(base, (), signed=True)
    if problem:
        raise ValidationError(f"--blob-url: {problem}")
    return base


def check_served(blob: Blob, timeout_s: float) -> None:
    """Fetch the blob from its URL as a board would (ranges, no redirects, every chunk's sha256).

    Raises:
        BundleError: It is not served, or not whole, within ``timeout_s``.
    """
    assert blob.url is not None
    with tempfile.TemporaryDirectory(prefix="edgec-blob-check-") as tmp:
        download = Download(Path(tmp), blob)
        done = threading.Event()
        source = UrlSource(blob.url, download, threading.Lock(), done.set).start()
        until = time.monotonic() + timeout_s
        try:
            while not download.complete and source.failed is None and time.monotonic() < until:
                done.wait(0.5)
                done.clear()
        finally:
            source.stop()
            download.close()
        if source.failed or not download.complete:
            why = source.failed or source.error or f"it did not arrive within {timeout_s:g} s"
            raise BundleError(f"boards could not fetch the bundle from {blob.url}: {why}. Serve the --blob-dir "
                              "folder at the --blob-url (any static web server), then push again")
