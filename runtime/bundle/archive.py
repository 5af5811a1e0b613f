"""A bundle folder as one uncompressed tar, and back: how bundles travel to boards (chunks over MQTT, a URL,
a candidate sent to be measured), and the checks every received path passes before it is written."""

from __future__ import annotations

import shutil
import tarfile
from pathlib import Path

from ...errors import BundleError
from .manifest import MANIFEST_NAME

MAX_MEMBERS = 64


def is_inside(root: Path, path: Path) -> bool:
    """Whether ``path`` lies strictly under ``root`` (after resolving ``..`` and links)."""
    return root.resolve() in path.resolve().parents


def inside(root: Path, path: Path) -> Path:
    """``path``, proven to stay inside ``root`` (after resolving ``..`` and links).

    Raises:
        BundleError: It would leave ``root``.
    """
    if not is_inside(root, path):
        raise BundleError(f"refusing the path {str(path)!r}: it leaves {str(root)!r}")
    return path


def unpack(archive: Path, dest: Path, most_bytes: int | None = None, *, bundle: bool = True) -> None:
    """Unpack a bundle tar: plain files only, flat names, nothing outside ``dest``, never more bytes
    than the archive holds (``most_bytes``: the size the desired state announced).

    Every member is checked before one byte is written: a sparse member (which inflates far
    past its stored size), a link, a folder or a nested name is refused, and so is an archive
    whose files add up to more than the archive itself. With ``bundle`` (the default) it must
    hold a manifest.
    """
    most = archive.stat().st_size if most_bytes is None else min(most_bytes, archive.stat().st_size)
    dest.mkdir(parents=True)
    try:
        with tarfile.open(archive, "r:") as tar:
            members = []
            for member in tar:
                members.append(member)
                if len(members) > MAX_MEMBERS:
                    raise BundleError(f"the bundle archive holds over {MAX_MEMBERS} entries: too many for a bundle")
            for member in members:
                plain = member.type in (tarfile.REGTYPE, tarfile.AREGTYPE) and not member.issparse()
                if not plain or "/" in member.name or member.name in ("", ".", ".."):
                    raise BundleError(f"the bundle archive holds {member.name!r}, which is not a plain file")
            total = sum(m.size for m in members)
            if total > most:
                raise BundleError(f"the bundle archive's files add up to {total} bytes, more than the {most} bytes "
                                  "of the archive: refused before unpacking")
            # Written one by one, not with extractall: its safe "data" filter is missing from
            # Pythons a board may have (Debian bookworm's 3.11.2), and every member was just
            # checked to be a plain file with a flat name.
            for member in members:
                source = tar.extractfile(member)
                if source is None:
                    raise BundleError(f"the bundle archive's {member.name!r} cannot be read")
                with source, open(inside(dest, dest / member.name), "xb") as target:
                    shutil.copyfileobj(source, target, 2**20)
                    if target.tell() != member.size:
                        raise BundleError(f"the bundle archive's {member.name!r} is not the size its header says")
    except tarfile.TarError as exc:
        raise BundleError(f"the bundle archive cannot be read ({exc})") from None
    if bundle and not (dest / MANIFEST_NAME).is_file():
        raise BundleError("the bundle archive has no manifest.json")


def pack(bundle: Path, archive: Path) -> None:
    """Pack a bundle folder's files into an uncompressed, reproducible tar (host side)."""
    with tarfile.open(archive, "w:", format=tarfile.PAX_FORMAT) as tar:
        for path in sorted(p for p in bundle.iterdir() if p.is_file() and not p.name.startswith(".")):
            info = tar.gettarinfo(str(path), arcname=path.name)
            info.uid = info.gid = 0
            info.uname = info.gname = ""
            info.mtime = 0
            info.mode = 0o644
            with open(path, "rb") as fh:
                tar.addfile(info, fh)
