"""Fleet keys and bundle signing (host side); boards check with :mod:`edgec.runtime.bundle.signing`."""

from __future__ import annotations

import base64
import json
import time
from pathlib import Path

from ..._optional import need
from ...errors import BundleError, ValidationError
from ...runtime.files import write_atomic
from ...runtime.bundle.manifest import MANIFEST_NAME, read_manifest, verify_files
from ...runtime.bundle.signing import SIGNATURE_NAME, key_id, public_raw


def _crypto():
    serialization = need("cryptography.hazmat.primitives.serialization", extra="runtime", purpose="to sign bundles")
    ed25519 = need("cryptography.hazmat.primitives.asymmetric.ed25519", extra="runtime", purpose="to sign bundles")
    return serialization, ed25519


def new_keys(out: str | Path, *, force: bool = False) -> tuple[Path, Path, str]:
    """Write an ed25519 key pair: ``OUT`` (private, PEM, mode 0600) and ``OUT.pub`` (public, PEM).

    Returns:
        The two paths and the key id.

    Raises:
        ValidationError: A key file exists already (unless ``force``), or the folder is not writable.
    """
    serialization, ed25519 = _crypto()
    private_path, public_path = Path(out), Path(f"{out}.pub")
    for path in (private_path, public_path):
        if path.exists() and not force:
            raise ValidationError(f"{path} already exists: pass --force to replace it (bundles signed with it will "
                                  "then fail on boards that trust only the old key)")
    private = ed25519.Ed25519PrivateKey.generate()
    private_pem = private.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                        serialization.NoEncryption())
    public_pem = private.public_key().public_bytes(serialization.Encoding.PEM,
                                                   serialization.PublicFormat.SubjectPublicKeyInfo)
    try:
        private_path.parent.mkdir(parents=True, exist_ok=True)
        write_atomic(private_path, private_pem, 0o600)
        write_atomic(public_path, public_pem)
    except OSError as exc:
        raise ValidationError(f"cannot write the keys to {private_path.parent} ({exc.strerror})") from None
    return private_path, public_path, key_id(public_raw(private.public_key()))


def load_private_key(path: str | Path):
    serialization, ed25519 = _crypto()
    try:
        data = Path(path).read_bytes()
    except OSError as exc:
        raise ValidationError(f"key {path} cannot be read ({exc.strerror}): make one with edgec keys new") from None
    try:
        private = serialization.load_pem_private_key(data, password=None)
    except (ValueError, TypeError):
        raise ValidationError(f"{path} is not an unencrypted PEM private key (edgec keys new writes one; the .pub "
                              "file is for the boards)") from None
    if not isinstance(private, ed25519.Ed25519PrivateKey):
        raise ValidationError(f"{path} is not an ed25519 key")
    return private


def sign_bundle(bundle: str | Path, key: str | Path, *, release: int | None = None) -> str:
    """Sign ``bundle``'s manifest with the private key at ``key``; returns the key id.

    Every file is checked against the manifest first: a bundle whose files do not match is
    not signed. The manifest gets a ``release`` number first, unless it has one: ``release``,
    else the signing time in milliseconds. A board that trusts keys refuses a bundle whose
    release is older than the newest it accepted, unless a signed rollback names it.

    Raises:
        BundleError, IntegrityError: Not a bundle, or its files do not match the manifest.
        ValidationError: The key cannot be read.
    """
    bundle = Path(bundle)
    private = load_private_key(key)
    manifest = read_manifest(bundle)
    verify_files(bundle, manifest)
    if release is not None or manifest.release is None:
        if release is not None and not 0 <= release < 2**53:
            raise ValidationError(f"--release {release} must be a whole number from 0 to 2**53")
        raw = json.loads((bundle / MANIFEST_NAME).read_text(encoding="utf-8"))  # every field kept as written
        raw["release"] = int(time.time() * 1000) if release is None else release
        try:
            write_atomic(bundle / MANIFEST_NAME, (json.dumps(raw, indent=2) + "\n").encode())
        except OSError as exc:
            raise BundleError(f"cannot write {MANIFEST_NAME} in {bundle} ({exc.strerror})") from None
    signed = private.sign((bundle / MANIFEST_NAME).read_bytes())
    kid = key_id(public_raw(private.public_key()))
    record = {"alg": "ed25519", "key_id": kid, "signature": base64.b64encode(signed).decode("ascii")}
    try:
        write_atomic(bundle / SIGNATURE_NAME, (json.dumps(record, indent=2) + "\n").encode())
    except OSError as exc:
        raise BundleError(f"cannot write {SIGNATURE_NAME} in {bundle} ({exc.strerror})") from None
    return kid


class ControlSigner:
    """Signs control messages with the fleet's private key, and recognises its own (see
    :mod:`edgec.runtime.agent.control`).

    Args:
        key: The private key file (``edgec keys new``).

    Raises:
        ValidationError: The key cannot be read.
    """

    def __init__(self, key: str | Path) -> None:
        from ...runtime.bundle.signing import TrustedKeys

        self._private = load_private_key(key)
        self.key_id = key_id(public_raw(self._private.public_key()))
        self._own = TrustedKeys({self.key_id: self._private.public_key()})

    def __call__(self, message: dict, topic: str, **kw) -> dict:
        from ...runtime.agent.control import seal

        return seal(message, topic, self._private, self.key_id, **kw)

    def signed_by_me(self, message: dict, topic: str) -> bool:
        """Whether ``message`` (as found on ``topic``) carries this key's valid signature, expired or not."""
        from ...errors import IntegrityError
        from ...runtime.agent.control import check

        try:
            check(message, topic, self._own, newest_seq=None, now=0.0)
        except IntegrityError:
            return False
        return True


def control_signer(key: str | Path) -> ControlSigner:
    """A :class:`ControlSigner` for the private key at ``key``."""
    return ControlSigner(key)
