"""``tether-agent configure``: another server URL or CA for the same identity.

A device registered over ``http://`` that should now use ``https://`` (or a
server that moved, or a CA that changed) once had only ``register --force``:
a new node id, and the old one left ConnectionLost for ever. Configure keeps
the node id and credential and changes only how the server is reached.

Nothing is saved until the new settings are shown to work: the identity with
the new URL (and the CA) is written to a staging folder inside the state
directory and the doctor's own checks run against it, up to the probe hello
that the server authenticates with this node's credential and answers without
touching a running agent's link. Only then are the CA and the identity
replaced, each atomically; a failure names the check that failed and its hint,
and leaves the state directory as it was.
"""

from __future__ import annotations

import contextlib
import dataclasses
import shutil
import tempfile
from pathlib import Path
from typing import Optional

from tether.agent.doctor.probes import iter_checks
from tether.agent.doctor.results import CheckResult, Status
from tether.agent.state import (
    CA_FILE,
    Identity,
    ensure_private_dir,
    pinned_context,
    save_ca,
    save_identity,
)

# The clock is no property of the URL or the CA: a skewed clock is reported, not
# a reason to keep the old server.
NOT_BLOCKING = frozenset({"clock"})


def new_trust(state_dir: Path, server_url: str, ca: Optional[bytes],
              no_ca: bool) -> Optional[bytes]:
    """The CA to pin with ``server_url``: the one given, else the one pinned now
    (unless ``no_ca``: the system's trust store); none for plain HTTP."""
    if not server_url.startswith("https://"):
        if ca is not None:
            raise ValueError("--ca is for an https:// server")
        return None
    if ca is not None:
        pinned_context(ca)  # ValueError unless it is a CA
        return ca
    if no_ca:
        return None
    try:
        return (state_dir / CA_FILE).read_bytes()
    except FileNotFoundError:
        return None


def check(state_dir: Path, identity: Identity, ca: Optional[bytes],
          timeout: float) -> list[CheckResult]:
    """The doctor's checks for ``identity`` and ``ca``, from a staging folder."""
    ensure_private_dir(state_dir)
    staging = Path(tempfile.mkdtemp(prefix=".configure-", dir=state_dir))
    try:
        save_identity(staging, identity)
        if ca is not None:
            save_ca(staging, ca)
        return list(iter_checks(staging, timeout, pinned_context(ca) if ca else None))
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def blocking(results: list[CheckResult]) -> list[CheckResult]:
    return [r for r in results if r.status is Status.FAIL and r.check not in NOT_BLOCKING]


def apply(state_dir: Path, identity: Identity, server_url: str,
          ca: Optional[bytes]) -> Identity:
    """Save the checked settings: the CA first, then the identity that uses it."""
    moved = dataclasses.replace(identity, server_url=server_url)
    if ca is not None:
        save_ca(state_dir, ca)
    else:
        with contextlib.suppress(FileNotFoundError):
            (state_dir / CA_FILE).unlink()
    save_identity(state_dir, moved)
    return moved
