"""The agent's state directory: its identity and nothing a stranger may read.

The credential is the node's only proof of who it is, so the directory is
0700 and the identity file 0600, written atomically (a crash mid-write must
not leave a device with half an identity).
"""

from __future__ import annotations

import dataclasses
import json
import os
import ssl
from pathlib import Path
from typing import Optional

from tether.protocol.trust import pinned_context as pinned_context  # re-exported

DEFAULT_STATE_DIR = Path("/var/lib/tether-agent")
IDENTITY_FILE = "identity.json"
# The CA the server's certificate must chain to, pinned at registration (--ca).
CA_FILE = "ca.pem"


@dataclasses.dataclass(frozen=True)
class Identity:
    node_id: str
    credential: str
    server_url: str


def ensure_private_dir(path: Path) -> None:
    path.mkdir(parents=True, exist_ok=True)
    os.chmod(path, 0o700)


def write_private(path: Path, data: bytes) -> None:
    """Write a 0600 file atomically and durably (temp file, fsync, rename)."""
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def load_identity(state_dir: Path) -> Optional[Identity]:
    try:
        raw = (state_dir / IDENTITY_FILE).read_text()
    except FileNotFoundError:
        return None
    body = json.loads(raw)
    return Identity(body["node_id"], body["credential"], body["server_url"])


def save_identity(state_dir: Path, identity: Identity) -> None:
    ensure_private_dir(state_dir)
    write_private(state_dir / IDENTITY_FILE,
                  json.dumps(dataclasses.asdict(identity), indent=2).encode())


def tls_context(state_dir: Path, server_url: str) -> Optional[ssl.SSLContext]:
    """For an https server: the pinned CA if one was given, else the system's trust."""
    if not server_url.startswith("https://"):
        return None
    try:
        return pinned_context((state_dir / CA_FILE).read_bytes())
    except FileNotFoundError:
        return ssl.create_default_context()


def save_ca(state_dir: Path, pem: bytes) -> None:
    ensure_private_dir(state_dir)
    write_private(state_dir / CA_FILE, pem)
