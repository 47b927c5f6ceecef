"""The `X-Aftercalld-Signature` header: HMAC-SHA256 over "<unix time>.<body>", Stripe-style.

The timestamp is inside the signed text, so a receiver that refuses old timestamps refuses
a recorded request replayed later; the body is signed byte for byte as posted.
"""
from __future__ import annotations

import hashlib
import hmac

HEADER = "X-Aftercalld-Signature"
# What a receiver should accept between our clock and its own (README, "Webhooks").
DEFAULT_TOLERANCE_SECONDS = 300


def sign(secret: bytes, timestamp: int, body: bytes) -> str:
    return hmac.new(secret, str(timestamp).encode() + b"." + body, hashlib.sha256).hexdigest()


def header_value(secret: bytes, timestamp: int, body: bytes) -> str:
    return f"t={timestamp},v1={sign(secret, timestamp, body)}"


def verify(secret: bytes, header: str, body: bytes, now: float,
           tolerance: float = DEFAULT_TOLERANCE_SECONDS) -> bool:
    """What a receiver does (the README shows the same in a few lines of Python). Several
    v1= values are accepted, so that a secret can be changed without a gap."""
    timestamp = None
    candidates = []
    for item in header.split(","):
        key, _, value = item.strip().partition("=")
        if key == "t" and value.isdigit():
            timestamp = int(value)
        elif key == "v1":
            candidates.append(value)
    if timestamp is None or abs(now - timestamp) > tolerance:
        return False
    expected = sign(secret, timestamp, body)
    return any(hmac.compare_digest(expected, c) for c in candidates)
