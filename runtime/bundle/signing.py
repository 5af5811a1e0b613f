"""Who wrote a bundle: an ed25519 signature over its manifest, checked against trusted keys.

The manifest lists the sha256 of every file in the bundle, so a signature over the
manifest's exact bytes covers the model and everything else: change any file and its sum
no longer matches; change the sum and the signature no longer matches. The signature lives
beside the manifest as ``manifest.sig``::

    {"alg": "ed25519", "key_id": "3f2a...", "signature": "<base64 of 64 bytes>"}

``key_id`` is the first 16 hex digits of the sha256 of the raw public key: it names which
key signed (and which one to trust), it proves nothing itself.

A board given ``trusted_keys`` (public keys, PEM) serves only bundles signed by one of them.
Ed25519 from ``cryptography`` was chosen over OpenSSF ``model-signing``: verifying needs one
small wheel that boards already carry for TLS, no Sigstore client or network, and the
manifest already is the list of file digests that model-signing would build.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..._optional import need
from ...errors import IntegrityError, ValidationError
from .manifest import MANIFEST_NAME

SIGNATURE_NAME = "manifest.sig"


def key_id(raw_public: bytes) -> str:
    """The name of a public key: the first 16 hex digits of the sha256 of its 32 raw bytes."""
    return hashlib.sha256(raw_public).hexdigest()[:16]


def _serialization() -> Any:
    return need("cryptography.hazmat.primitives.serialization", extra="runtime", purpose="to check bundle signatures")


@dataclass(frozen=True)
class TrustedKeys:
    """The public keys a board accepts bundles from, by key id."""

    keys: dict[str, Any]

    @classmethod
    def from_files(cls, paths: list[Path] | tuple[Path, ...]) -> TrustedKeys:
        """Read PEM public keys (``edgec keys new`` writes ``NAME.pub``).

        Raises:
            ValidationError: A file is missing, is a private key, or holds no ed25519 public key.
        """
        serialization = _serialization()
        ed25519 = need("cryptography.hazmat.primitives.asymmetric.ed25519", extra="runtime")
        keys = {}
        for path in paths:
            try:
                data = Path(path).read_bytes()
            except OSError as exc:
                raise ValidationError(f"trusted key {path} cannot be read ({exc.strerror})") from None
            if b"PRIVATE KEY" in data:
                raise ValidationError(f"trusted key {path} is a private key: give the board the .pub file only")
            try:
                public = serialization.load_pem_public_key(data)
            except ValueError:
                raise ValidationError(f"trusted key {path} is not a PEM public key (edgec keys new writes one)") \
                    from None
            if not isinstance(public, ed25519.Ed25519PublicKey):
                raise ValidationError(f"trusted key {path} is not an ed25519 key")
            keys[key_id(public_raw(public))] = public
        return cls(keys)


def public_raw(public: Any) -> bytes:
    serialization = _serialization()
    return public.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


def read_signature(bundle: str | Path) -> dict[str, str] | None:
    """The bundle's ``manifest.sig`` (checked for shape), or None when it is not signed.

    Raises:
        IntegrityError: The file exists but is not a signature edgec wrote.
    """
    path = Path(bundle) / SIGNATURE_NAME
    if not path.is_file():
        return None
    damaged = IntegrityError(f"{path} is not an edgec signature (damaged?): sign the bundle again")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError):
        raise damaged from None
    if (not isinstance(data, dict) or data.get("alg") != "ed25519" or not isinstance(data.get("key_id"), str)
            or not isinstance(data.get("signature"), str)):
        raise damaged
    try:
        base64.b64decode(data["signature"], validate=True)
    except (ValueError, binascii.Error):
        raise damaged from None
    return data


def verify_signature(bundle: str | Path, trusted: TrustedKeys) -> str:
    """Check the bundle's signature against ``trusted``; returns the id of the key that signed.

    Raises:
        IntegrityError: Not signed, signed by a key not trusted, or the manifest changed after signing.
    """
    bundle = Path(bundle)
    signature = read_signature(bundle)
    if signature is None:
        raise IntegrityError(f"{bundle.name} is not signed, and this runtime serves only signed bundles "
                             "(trusted_keys): on the host that holds the fleet's private key, run "
                             "`edgec sign BUNDLE --key fleet-key` and push or copy the signed bundle again")
    public = trusted.keys.get(signature["key_id"])
    if public is None:
        raise IntegrityError(f"{bundle.name} is signed by key {signature['key_id']}, which this runtime does not trust "
                             f"(trusted: {', '.join(sorted(trusted.keys)) or 'none'})")
    exceptions = need("cryptography.exceptions", extra="runtime")
    try:
        public.verify(base64.b64decode(signature["signature"]), (bundle / MANIFEST_NAME).read_bytes())
    except exceptions.InvalidSignature:
        raise IntegrityError(f"{bundle.name}: the signature does not match {MANIFEST_NAME}: the manifest was changed "
                             "after it was signed") from None
    return signature["key_id"]
