"""Secrets: how they are made and the only form in which the server keeps them.

Every secret tether issues (operator tokens, activation codes, node
credentials) is at least 128 random bits, so a plain SHA-256 is the right
hash: there is nothing to brute-force that a slow hash would protect, and a
fast hash lets the server look a token up by its hash in one indexed query.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets


def new_secret(prefix: str, nbytes: int = 32) -> str:
    """A random secret whose prefix tells a human (and a secret scanner) what it is."""
    return f"{prefix}_{secrets.token_urlsafe(nbytes)}"


def hash_secret(secret: str) -> str:
    return hashlib.sha256(secret.encode("utf-8")).hexdigest()


def matches(secret: str, stored_hash: str) -> bool:
    return hmac.compare_digest(hash_secret(secret), stored_hash)
