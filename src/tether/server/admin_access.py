"""The way in at start-up: the first admin token, and a truthful word about it.

A first start makes the admin operator and its first token and writes the token
to ``DATA/admin-token`` (0600). Later starts write nothing: the database already
has tokens, and the server never mints a secret on its own again. What the
banner says must then match what is there: the file may be gone, or hold a
token that was revoked or expired, or no admin may be left at all; each case
names the way back, ``tether admin recover`` on the server machine.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
from pathlib import Path

from tether.server.config import Settings
from tether.server.store import Store

__all__ = ["AdminAccess", "prepare_admin_access", "recover_command", "write_secret_file"]


def write_secret_file(path: os.PathLike[str] | str, secret: str) -> None:
    """Create a file only its owner can read, and never follow an existing one."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(secret + "\n")


def replace_secret_file(path: Path, secret: str) -> None:
    """Write ``secret`` owner-only in place of ``path``, atomically (a new file renamed
    over the old one, so a reader sees the old token or the new one, never half)."""
    part = path.with_name(f".{path.name}.{os.getpid()}.part")
    with contextlib.suppress(FileNotFoundError):
        os.unlink(part)
    try:
        write_secret_file(part, secret)
        os.replace(part, path)
    except OSError:
        with contextlib.suppress(OSError):
            os.unlink(part)  # no stray copy of the secret left behind
        raise


def recover_command(settings: Settings) -> str:
    """The break-glass command for this server, never with the database URL itself
    (it may hold a password)."""
    default = Settings.for_data_dir(settings.data_dir).database_url
    extra = "" if settings.database_url == default else " --database-url URL"
    return f"tether admin recover --data-dir {settings.data_dir}{extra}"


@dataclasses.dataclass(frozen=True)
class AdminAccess:
    """What is true about the way in, as found at start-up."""

    token_file: Path
    created: bool        # this start made the first admin token and wrote token_file
    file_works: bool     # token_file holds the token of an active admin
    active_admins: int   # enabled operators with operators:manage and a valid token
    recover: str         # the break-glass command for this server

    def messages(self) -> list[str]:
        """The lines to print at start-up: where the token is, or why there is none
        and what to do."""
        if self.created:
            return [f"tether: created the admin token; it is in {self.token_file} "
                    "(readable by you only)"]
        if self.file_works:
            return []
        if self.active_admins == 0:
            return ["tether: WARNING: no operator can manage operators now (no enabled admin "
                    "holds a valid token), and no token was written. Mint one on this "
                    f"machine: {self.recover}"]
        if self.token_file.exists():
            return [f"tether: {self.token_file} holds a token that no longer works (revoked, "
                    "expired, or its operator disabled or demoted), and no token was written. "
                    f"Use another admin's token, or mint one on this machine: {self.recover}"]
        return [f"tether: no admin token was written: this database has operators already "
                f"(the first token was written on the first start), and {self.token_file} "
                "is gone. Use an admin's token, or mint one on this machine: "
                f"{self.recover}"]

    def token_shell(self) -> str:
        """How the banner's ``export TETHER_TOKEN=`` gets a token that works."""
        return f"$(cat {self.token_file})" if self.file_works else "ADMIN_TOKEN"

    def sign_in(self) -> str:
        return (f"the token in {self.token_file}" if self.file_works
                else "an admin's token: there is no working one in "
                     f"{self.token_file}, see above")


def _read_token(path: Path) -> str | None:
    try:
        return path.read_text().strip() or None
    except (FileNotFoundError, IsADirectoryError, PermissionError, UnicodeDecodeError):
        return None


async def prepare_admin_access(settings: Settings, store: Store) -> AdminAccess:
    """On a fresh database make the first admin token and write it; in any case find
    out what the banner may say (see ``AdminAccess``)."""
    path = settings.admin_token_file
    token = await store.create_admin_token_if_none()
    if token is not None:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)  # a stale file from a wiped database
        write_secret_file(path, token)
    existing = token or _read_token(path)
    works = existing is not None and await store.operators.token_manages_operators(existing)
    admins = await store.operators.active_admins()
    return AdminAccess(path, token is not None, works, len(admins), recover_command(settings))
