"""``edgec deploy install``: the runtime as a hardened systemd service on the board.

The unit runs ``python -m edgec serve --config <runtime.toml>`` with the interpreter edgec is
installed in, as a user of its own (``DynamicUser``, or a dedicated ``--user``), with a read-only
view of the system (``ProtectSystem=strict``) and its writable state under ``/var/lib/edgec``
(``StateDirectory``), restarted on failure, and memory-capped from the device profile the
bundles were built for (the profile's model RAM plus the serving process's own share).
"""

from __future__ import annotations

import shlex
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import EdgecError, ValidationError
from .config import ServeConfig
from .files import write_atomic
from .bundle.manifest import read_manifest

STATE = Path("/var/lib/edgec")
PROCESS_MB = 256  # Python, numpy, the backends' own code, the HTTP server, spool and batcher buffers


@dataclass
class Unit:
    """A unit file to write, and what a person should know about it."""

    name: str
    path: Path
    text: str
    memory_max_mb: int
    warnings: list[str] = field(default_factory=list)

    def commands(self) -> list[str]:
        return ["systemctl daemon-reload", f"systemctl enable --now {self.name}",
                f"systemctl status {self.name}", f"journalctl -u {self.name} -f"]


def _manifests(config: ServeConfig) -> list[Any]:
    """Each configured bundle's manifest, read once.

    Raises:
        ValidationError: A bundle is missing or its manifest is unusable.
    """
    out = []
    for model in config.models:
        try:
            out.append(read_manifest(model.path))
        except EdgecError as exc:
            raise ValidationError(f"model {model.name}: {exc}") from None
    return out


def _memory_mb(config: ServeConfig, manifests: list[Any]) -> tuple[int, str]:
    """MemoryMax: the largest model budget among the bundles' profiles (or the cache budget), plus the process."""
    budgets = [(int(config.budget_mb), "the cache budget (budget_mb)")]
    budgets += [(int(m.device["model_ram_mb"]), f"{m.device.get('name', '?')}'s model RAM")
                for m in manifests if m.device.get("model_ram_mb")]
    model_mb, source = max(budgets)
    return model_mb + PROCESS_MB, source


def _closed_to_others(path: Path) -> Path | None:
    """The first folder on the way to ``path`` (or the file) that other users cannot enter or read."""
    path = path.resolve()  # what the kernel opens: a venv's python is a link to the base interpreter
    for folder in reversed(path.parents):
        try:
            if not folder.stat().st_mode & 0o001:
                return folder
        except OSError:
            return folder
    try:
        mode = path.stat().st_mode
    except OSError:
        return path
    return None if mode & 0o004 and (not path.is_dir() or mode & 0o001) else path


def build_unit(config_path: str | Path, *, name: str = "edgec", user: str | None = None,
               unit_dir: str | Path = "/etc/systemd/system", memory_mb: int | None = None,
               python: str | None = None) -> Unit:
    """The unit for ``config_path`` (read and checked first).

    Args:
        config_path: The board's ``runtime.toml``.
        name: Unit name (``<name>.service``).
        user: Run as this existing user; ``None`` uses ``DynamicUser`` (a user made at start).
        unit_dir: Where the unit goes.
        memory_mb: MemoryMax in MB (default: the largest model RAM among the bundles' device
            profiles, or ``budget_mb`` if larger, plus the process's own share).
        python: The interpreter (default: the one running now, where edgec is installed).

    Raises:
        ValidationError: The config or a bundle it names is unusable, or a bad name or user.
    """
    config_path = Path(config_path).resolve()
    config = ServeConfig.from_toml(config_path)
    if not name.replace("-", "").replace("_", "").replace("@", "").isalnum():
        raise ValidationError(f"--name {name!r}: use letters, digits, '-' or '_'")
    if user is not None and (not user or not user.replace("-", "").replace("_", "").isalnum()):
        raise ValidationError(f"--user {user!r} is not a user name")
    python = python or sys.executable
    if memory_mb is not None and memory_mb < 64:
        raise ValidationError(f"--memory-mb {memory_mb} is too small to run Python at all; give at least 64")
    manifests = _manifests(config)
    derived, source = _memory_mb(config, manifests)
    memory_mb, why = (memory_mb, "as asked") if memory_mb is not None else (derived, f"{source} plus {PROCESS_MB} MB")
    warnings: list[str] = []
    writable: list[Path] = []
    if config.telemetry is not None:
        writable.append(Path(config.telemetry.spool).resolve().parent)
    if config.fleet is not None:
        writable.append(Path(config.fleet.store).resolve())
    outside = sorted({p for p in writable if not (p == STATE or STATE in p.parents)})
    for p in outside:
        warnings.append(f"{p} is outside {STATE}: the service may write there only if its user owns it; "
                        f"prefer paths under {STATE} in {config_path.name} (spool, [fleet] store)")
    if user is None:  # DynamicUser: a user made at start, in no one's group
        for needed in [Path(python), config_path, *(Path(m.path) for m in config.models)]:
            blocked = _closed_to_others(needed)
            if blocked is not None:
                warnings.append(f"{needed} cannot be read by the service's user ({blocked} is closed to other "
                                f"users): pass --user with the account that owns it, or chmod o+rX")
    accelerators = {str(m.device.get("accelerator", "none")) for m in manifests}
    devices = "yes" if accelerators <= {"none"} else "no"  # GPUs (/dev/nvhost*, /dev/nvidia*) and USB TPUs need /dev
    privileged_port = 0 < config.port < 1024
    identity = ["DynamicUser=yes"] if user is None else [f"User={user}", f"Group={user}"]
    lines = [
        "[Unit]",
        f"Description=edgec runtime: {', '.join(m.name for m in config.models) or 'no models'} "
        f"({config_path})",
        "After=network-online.target",
        "Wants=network-online.target",
        "",
        "[Service]",
        "Type=exec",
        f"ExecStart={shlex.quote(python)} -m edgec serve --config {shlex.quote(str(config_path))}",
        "Environment=PYTHONUNBUFFERED=1",
        *identity,
        "StateDirectory=edgec",
        "StateDirectoryMode=0750",
        "WorkingDirectory=/var/lib/edgec",
        "Restart=on-failure",
        "RestartSec=2s",
        "TimeoutStopSec=30s",
        f"# memory: {why}; throttled at 90%, stopped above",
        f"MemoryHigh={int(memory_mb * 0.9)}M",
        f"MemoryMax={memory_mb}M",
        "ProtectSystem=strict",
        "ProtectHome=read-only",
        *(f"ReadWritePaths=-{p}" for p in outside),
        "PrivateTmp=yes",
        f"PrivateDevices={devices}",
        *([] if devices == "yes" else ["SupplementaryGroups=video"]),
        "NoNewPrivileges=yes",
        "ProtectKernelTunables=yes",
        "ProtectKernelModules=yes",
        "ProtectKernelLogs=yes",
        "ProtectControlGroups=yes",
        "ProtectClock=yes",
        "ProtectHostname=yes",
        "RestrictNamespaces=yes",
        "RestrictRealtime=yes",
        "RestrictSUIDSGID=yes",
        "LockPersonality=yes",
        "RestrictAddressFamilies=AF_INET AF_INET6 AF_UNIX AF_NETLINK",
        "SystemCallArchitectures=native",
        "SystemCallFilter=@system-service",
        "SystemCallErrorNumber=EPERM",
        f"CapabilityBoundingSet={'CAP_NET_BIND_SERVICE' if privileged_port else ''}",
        *(["AmbientCapabilities=CAP_NET_BIND_SERVICE"] if privileged_port else []),
        "UMask=0027",
        "",
        "[Install]",
        "WantedBy=multi-user.target",
        "",
    ]
    return Unit(f"{name}.service", Path(unit_dir) / f"{name}.service", "\n".join(lines), memory_mb, warnings)


def install_unit(unit: Unit, *, force: bool = False) -> Path:
    """Write the unit (atomically; an existing one only with ``force``).

    Raises:
        ValidationError: The unit exists and ``force`` is not set, or its folder is not writable.
    """
    if unit.path.exists() and not force:
        raise ValidationError(f"{unit.path} exists: pass --force to replace it")
    try:
        unit.path.parent.mkdir(parents=True, exist_ok=True)
        write_atomic(unit.path, unit.text.encode(), mode=0o644)
    except PermissionError:
        raise ValidationError(f"cannot write {unit.path}: run as root (sudo), or --unit-dir a folder you own") from None
    return unit.path
