"""``edgec keys new`` and ``edgec sign``: the fleet's ed25519 key pair, and signed bundles."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer
from rich.markup import escape

from .app import handles_errors, out

group = typer.Typer(help="Make the ed25519 key pair that signs bundles for a fleet.", no_args_is_help=True)
commands = typer.Typer()  # sign


@group.command("new")
@handles_errors
def keys_new(
    out_path: Path = typer.Option(..., "--out", "-o", help="Private key file; the public key is written beside it as OUT.pub."),
    force: bool = typer.Option(False, "--force", help="Replace key files that exist."),
) -> None:
    """Make an ed25519 key pair for signing bundles.

    \b
    Keep the private key on the host that builds bundles (it is written mode 0600); copy
    OUT.pub to the boards and list it in their runtime.toml as trusted_keys = ["..."].
    \b
    Example:
      edgec keys new --out fleet-key
    """
    from ..sdk.bundle.sign import new_keys

    private, public, kid = new_keys(out_path, force=force)
    out.print(f"private key {escape(str(private))} (keep it secret), public key {escape(str(public))} "
              f"(for the boards), key id {kid}")


@commands.command()
@handles_errors
def sign(
    bundle: Path = typer.Argument(..., help="Bundle folder written by `edgec convert`."),
    key: Path = typer.Option(..., "--key", "-k", help="Private key from `edgec keys new`."),
    release: Optional[int] = typer.Option(None, "--release", min=0, help="Release number signed into the manifest (default: the one it has, else the time in ms). Boards refuse an older release than they run unless rolled back."),
) -> None:
    """Sign a bundle's manifest (which lists every file's sha256) with an ed25519 key.

    \b
    The signature is written as manifest.sig in the bundle. Boards with trusted_keys set
    serve only bundles signed by one of them; `edgec verify BUNDLE --key KEY.pub` checks one.
    The manifest gets a release number first (kept when re-signing): a board that trusts
    keys refuses a bundle older than the newest it accepted, unless `edgec fleet rollback`
    (or push --rollback) names it.
    \b
    Example:
      edgec sign build/rpi4 --key fleet-key
      edgec sign build/rpi4 --key fleet-key --release 42     # your CI's build number
    """
    from ..sdk.bundle.sign import sign_bundle
    from ..runtime.bundle.manifest import read_manifest

    kid = sign_bundle(bundle, key, release=release)
    out.print(f"signed {escape(str(bundle))} (release {read_manifest(bundle).release}) with key {kid}")


