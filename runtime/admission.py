"""Whether a pushed bundle is for this board: its device profile's CPU architecture against this machine's."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from .system import host_arch


def manifest_device(folder: Path) -> Any:
    """The ``device`` profile recorded in a bundle folder's manifest, or ``None``."""
    try:
        return json.loads((folder / "manifest.json").read_text()).get("device")
    except (OSError, ValueError, AttributeError):
        return None


def wrong_device(device: Any, want: dict[str, Any]) -> str | None:
    """Why a bundle built for ``device`` (a manifest's profile) cannot go live here, or ``None``."""
    if not isinstance(device, dict) or want.get("any_device") is True:
        return None
    arch, here = device.get("arch"), host_arch()
    if isinstance(arch, str) and arch and arch.lower().replace("-", "_") != here:
        return (f"the bundle was built for {device.get('name') or 'another board'} ({arch}); this board is {here}: "
                f"on the host, convert for this board's profile (edgec convert --device ...) and push that, or push "
                "with --any-device if the model really runs here")
    return None
