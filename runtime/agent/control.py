"""Signed control messages: what the fleet tells a board (desired states, rollbacks) and how a board
decides to believe it.

Anyone who can publish on the broker could otherwise point a board at any version, replay an
old desired state to downgrade it, or pin it with a device-level message. A board with
``trusted_keys`` believes a control message only if:

- it carries an ed25519 signature (``sig``) by a trusted key over its canonical JSON (sorted
  keys, no spaces, the ``sig`` field left out): the same fleet key that signs bundles;
- its ``topic`` field names the topic it arrived on (``edgec/<fleet>/desired/<model>/<target>``):
  a message signed for one board or group cannot be replayed on another;
- it has not expired (``expires``, seconds since the epoch);
- its ``seq`` (the host's clock in milliseconds) is not older than the newest message the board
  has already acted on for that model: a replayed earlier message is refused.

A version the board ran and replaced is taken back only from a message marked ``rollback``:
``edgec fleet rollback`` signs that; a replay of the old push cannot.
"""

from __future__ import annotations

import base64
import binascii
import json
import time
from typing import Any

from ..._optional import need
from ...errors import IntegrityError
from ..bundle.signing import TrustedKeys

# How long a signed desired state stays good when the host gives no expiry: a board that was
# off for longer refuses it and keeps its version until the fleet pushes again.
DEFAULT_TTL_S = 30 * 24 * 3600


def canonical(message: dict[str, Any]) -> bytes:
    """The bytes a control message's signature covers: its JSON without ``sig``, keys sorted, compact."""
    body = {k: v for k, v in message.items() if k != "sig"}
    return json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode("utf-8")


def seal(message: dict[str, Any], topic: str, private: Any, kid: str, *, ttl_s: float = DEFAULT_TTL_S,
         now: float | None = None) -> dict[str, Any]:
    """``message`` bound to ``topic``, sequenced, given an expiry and signed with ``private`` (host side)."""
    now = time.time() if now is None else now
    body = {**message, "topic": topic, "seq": int(now * 1000), "expires": round(now + ttl_s, 3)}
    signature = private.sign(canonical(body))
    return {**body, "sig": {"alg": "ed25519", "key_id": kid, "signature": base64.b64encode(signature).decode("ascii")}}


def check(message: dict[str, Any], topic: str, trusted: TrustedKeys, *, newest_seq: int | None,
          now: float | None = None) -> int:
    """Believe ``message`` (arrived on ``topic``) or say why not; returns its ``seq``.

    Raises:
        IntegrityError: Unsigned, signed by a key not trusted, tampered with, meant for another
            topic, expired, or older than the newest message acted on (``newest_seq``).
    """
    sig = message.get("sig")
    if not isinstance(sig, dict):
        raise IntegrityError("unsigned control message: this board takes only messages signed with the fleet key "
                             "(edgec fleet push --key KEY)")
    public = trusted.keys.get(str(sig.get("key_id")))
    if public is None:
        raise IntegrityError(f"control message signed by key {str(sig.get('key_id'))[:16]!r}, which this board does "
                             f"not trust (trusted: {', '.join(sorted(trusted.keys)) or 'none'})")
    exceptions = need("cryptography.exceptions", extra="runtime")
    try:
        public.verify(base64.b64decode(str(sig.get("signature")), validate=True), canonical(message))
    except (exceptions.InvalidSignature, binascii.Error, ValueError):
        raise IntegrityError("control message whose signature does not match its content: changed after signing")
    if message.get("topic") != topic:
        raise IntegrityError(f"control message signed for {str(message.get('topic'))[:120]!r} arrived on {topic!r}: "
                             "replayed on another topic")
    expires, seq = message.get("expires"), message.get("seq")
    if not isinstance(expires, (int, float)) or not isinstance(seq, int) or isinstance(seq, bool):
        raise IntegrityError("control message without a numeric seq and expires")
    now = time.time() if now is None else now
    if expires < now:
        raise IntegrityError(f"control message expired {now - expires:.0f} s ago: push again from the host")
    if newest_seq is not None and seq < newest_seq:
        raise IntegrityError(f"control message older (seq {seq}) than the newest this board acted on "
                             f"(seq {newest_seq}): a replay")
    return seq
