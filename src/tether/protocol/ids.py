"""Identifier formats, chosen to read like the ones Systems Manager users know."""

from __future__ import annotations

import re
import secrets
import uuid

NODE_ID_RE = re.compile(r"mi-[0-9a-f]{17}")


def new_node_id() -> str:
    """A managed-node id: ``mi-`` and 17 lowercase hex digits (68 random bits)."""
    return "mi-" + secrets.token_hex(9)[:17]


def is_node_id(value: str) -> bool:
    return NODE_ID_RE.fullmatch(value) is not None


def new_uuid() -> str:
    """Command, invocation and activation ids: random UUIDs, as SSM uses."""
    return str(uuid.uuid4())
