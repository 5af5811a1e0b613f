"""Check a bundle on the board before trusting it: its manifest, its files, its model, its signature.

``edgec verify BUNDLE`` prints these checks. The sha256 sums prove the files are the ones
the manifest lists; only a signature proves who wrote the manifest. An unsigned bundle
says so rather than passing silently.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

from ...errors import EdgecError
from .manifest import read_manifest, verify_files
from .probe import probe
from .signing import TrustedKeys, read_signature, verify_signature


@dataclass(frozen=True)
class Check:
    """One thing checked: ``ok`` is True (passed), False (failed) or None (not checked, and why)."""

    what: str
    ok: bool | None
    detail: str


def verify_bundle(bundle: str | Path, *, run: bool = True, trusted: TrustedKeys | None = None) -> list[Check]:
    """The checks of ``bundle``, in order; a failed one stops those that depend on it.

    Args:
        bundle: The bundle folder.
        run: Also load the model and run it on its golden inputs (in a child process).
        trusted: Public keys the signature must come from (without them it is reported, not checked).
    """
    bundle = Path(bundle)
    checks: list[Check] = []
    if trusted is not None:  # first: nothing of an untrusted bundle is read further
        try:
            signer = verify_signature(bundle, trusted)
        except EdgecError as exc:
            return [Check("signature", False, str(exc))]
        checks.append(Check("signature", True, f"manifest signed by trusted key {signer}"))
    try:
        manifest = read_manifest(bundle)
    except EdgecError as exc:
        return [Check("manifest", False, str(exc))]
    checks.append(Check("manifest", True, f"{manifest.format} {manifest.precision}, "
                                          f"{len(manifest.inputs)} input(s), {len(manifest.outputs)} output(s)"))
    try:
        verify_files(bundle, manifest)
    except EdgecError as exc:
        return [*checks, Check("files", False, str(exc))]
    checks.append(Check("files", True, f"{len(manifest.files)} file(s) match their sha256 in the manifest"))
    if run:
        started = time.perf_counter()
        try:
            parity = probe(bundle)
            checks.append(Check("model", True, f"loads and runs in a test process "
                                               f"({time.perf_counter() - started:.2f} s)"))
            checks.append(Check("parity", True, parity) if parity else
                          Check("parity", None, "no golden samples in this bundle (made by an older edgec)"))
        except EdgecError as exc:
            checks.append(Check("model", False, str(exc)))
    if trusted is None:
        checks.append(_unchecked_signature(bundle))
    return checks


def _unchecked_signature(bundle: Path) -> Check:
    try:
        signature = read_signature(bundle)
    except EdgecError as exc:
        return Check("signature", False, str(exc))
    if signature is None:
        return Check("signature", None, "not signed: the sha256 sums show the files match the manifest, not who "
                                        "wrote the manifest (edgec sign BUNDLE --key KEY)")
    return Check("signature", None, f"signed by key {signature['key_id']}, not checked: pass --key KEY.pub to check it")
