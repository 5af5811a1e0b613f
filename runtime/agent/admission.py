"""Whether a pushed bundle is for this board: its CPU architecture, the room it needs, where it may come from,
not a downgrade, a version already here; and what a refused push is remembered by."""

from __future__ import annotations

import shutil
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from ...errors import EdgecError
from .delivery import Blob
from .urlsource import url_problem
from ..bundle.manifest import read_manifest
from ..system import host_arch


def manifest_device(folder: Path) -> Any:
    """The ``device`` profile recorded in a bundle folder's manifest, or ``None``."""
    try:
        return read_manifest(folder).device
    except EdgecError:
        return None


def wrong_device(device: Any, want: dict[str, Any]) -> str | None:
    """Why a bundle built for ``device`` (a manifest's profile) cannot go live here, or ``None``."""
    if not isinstance(device, dict) or want.get("any_device") is True:
        return None
    arch, here = device.get("arch"), host_arch()
    if isinstance(arch, str) and arch and host_arch(arch.replace("-", "_")) != here:
        return (f"the bundle was built for {device.get('name') or 'another board'} ({arch}); this board is {here}: "
                f"on the host, convert for this board's profile (edgec convert --device ...) and push that, or push "
                "with --any-device if the model really runs here")
    return None


def release_of(folder: Path) -> int:
    """The release number signed into a bundle folder's manifest (0 when it has none)."""
    try:
        return read_manifest(folder).release or 0
    except EdgecError:
        return 0


def downgrade(entry: dict[str, Any], version: str, want: dict[str, Any], folder: Path | None = None,
              running: Path | None = None) -> str | None:
    """Why a board that trusts keys refuses ``version`` as a downgrade, or ``None``.

    ``entry`` is the board's record of the model: the versions it ran and replaced, and the
    newest release it accepted (the one ``running`` counts too). Before the download only the
    version is known; with ``folder`` the bundle's own signed release is compared. A signed
    rollback names a downgrade on purpose.
    """
    if want.get("rollback") is True:
        return None
    how = "a signed rollback takes it back (edgec fleet rollback --key KEY, or push --rollback), a replayed push does not"
    if version in entry.get("replaced", []):
        return f"version {version} was replaced on this board: {how}"
    newest = max(entry.get("release", 0), release_of(running) if running is not None else 0)
    if folder is not None and release_of(folder) < newest:
        return f"version {version} is release {release_of(folder)}, older than release {newest} this board accepted: {how}"
    return None


def fetch_problem(want: dict[str, Any], blob: Blob, store: Path, budget_bytes: int, url_prefixes: tuple[str, ...], *,
                  signed: bool) -> str | None:
    """Why a board must not fetch ``blob`` for ``want`` (another board's bundle, no room for it, a URL it may not
    use), or ``None``."""
    return (wrong_device(want.get("device"), want) or room_for(store, blob, int(want.get("model_bytes", 0)), budget_bytes)
            or (url_problem(blob.url, url_prefixes, signed) if blob.url is not None else None))


def room_for(store: Path, blob: Blob, model_bytes: int, budget_bytes: int) -> str | None:
    """Why the bundle does not fit (disk for the download and the unpacked copy, the model budget), or ``None``."""
    free = shutil.disk_usage(store).free
    if blob.size * 2 > free:
        return f"the bundle needs {blob.size * 2} bytes of disk (download and unpacked), {free} are free"
    if model_bytes > budget_bytes:
        return f"the model file ({model_bytes} bytes) is larger than this board's model budget ({budget_bytes} bytes)"
    return None


def bundle_version(folder: Path) -> str | None:
    """The version of the bundle in ``folder``, or ``None`` when it is not a readable bundle."""
    try:
        return read_manifest(folder).version
    except EdgecError:
        return None


def local_version(models: Iterable[Any], store: Path, model: str, version: str) -> Path | None:
    """A folder on this board holding ``version`` of ``model``: in the store, or the configured (starting) bundle."""
    candidates = [store / model / version, *(m.path for m in models if m.name == model)]
    return next((f for f in candidates if f.is_dir() and bundle_version(f) == version), None)


def failure_key(want: dict[str, Any]) -> str:
    """What a failure is remembered by: the push (a new push of the same bundle is tried again)."""
    blob = want.get("blob")
    return str(want.get("rollout") or (blob.get("sha256") if isinstance(blob, dict) else want.get("version")))
