"""``tether admin``: break-glass steps on the server machine, outside the API.

The API refuses to remove the last admin (``access/admins.py``), but the last
admin token can still be lost, leaked and revoked by someone else's mistake, or
simply expire. ``tether admin recover`` is the way back that needs no token:
whoever can write the server's data directory (and its database) already holds
everything the server does, so that is the credential. It mints a new admin
token, written owner-only to ``DATA/admin-token`` as the first one was, makes
the operator it is for an enabled admin, and records that in the audit log
(before the token exists, so no token is ever without its record). It talks to
the database directly and works while the server runs: SQLite in WAL mode
takes the second writer, PostgreSQL locks the operators' tables.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import pwd
import re
import stat
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tether.cli.output import fail, out

if TYPE_CHECKING:
    from tether.server.config import Settings
    from tether.server.store import Store

ACTOR_PREFIX = "local:"


def add_parsers(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    ad = sub.add_parser("admin", help="break-glass steps on the server machine (no token)"
                        ).add_subparsers(dest="action", required=True, metavar="ACTION")
    rc = ad.add_parser(
        "recover", help="mint a new admin token when no admin can sign in",
        description="On the server machine, as a user who can write the data directory "
                    "(and the database): make an operator an enabled admin (created, "
                    "re-enabled or given the admin role as needed) and write a new token "
                    "for it to DATA/admin-token, readable by you only. Recorded in the audit "
                    "log. Works while the server runs.")
    rc.add_argument("--data-dir", type=Path, required=True, metavar="DIR",
                    help="the server's data directory (its --data-dir)")
    rc.add_argument("--database-url", metavar="URL",
                    help="the server's --database-url, if it keeps state in PostgreSQL")
    rc.add_argument("--operator", default="admin", metavar="NAME",
                    help="the operator to make an admin and mint the token for "
                         "(default admin, the first admin)")
    rc.set_defaults(admin=recover)


def main(args: argparse.Namespace) -> int:
    code: int = args.admin(args)
    return code


def _os_user() -> str:
    """Who ran it, from the effective uid (not $USER, which anyone can set)."""
    uid = os.geteuid()
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return f"uid {uid}"


def _refusal(settings: Settings, operator: str) -> str | None:
    """Why this user cannot recover this server from here, or None."""
    from tether.server.api.models import OPERATOR_NAME

    if re.fullmatch(OPERATOR_NAME, operator) is None:  # match's $ lets a final \n through
        return f"{operator!r} is not an operator name (letters, digits, . _ @ -)"
    data = settings.data_dir
    if not data.is_dir():
        return f"no data directory {data} (give the server's --data-dir)"
    if not os.access(data, os.W_OK | os.X_OK):
        return f"recover needs write access to {data}: run it as the server's user"
    if not settings.audit_key_file.is_file():
        return (f"{settings.audit_key_file} is missing: {data} is not the data directory of "
                "a server that has started")
    if not os.access(settings.audit_key_file, os.R_OK):
        return f"cannot read {settings.audit_key_file}: run it as the server's user"
    token_file = settings.admin_token_file
    with contextlib.suppress(FileNotFoundError):
        # Checked now, not found out after the record and the token are in the database.
        # (A symlink is fine: the new file replaces the link, not what it points to.)
        mode = token_file.lstat().st_mode
        if not (stat.S_ISREG(mode) or stat.S_ISLNK(mode)):
            return (f"{token_file} is not a file (a directory?): move it away and run "
                    "recover again; nothing was changed")
    if settings.database_url.startswith("sqlite"):
        db = Path(settings.database_url.split(":///", 1)[1])
        if not db.is_file():
            return (f"no database at {db}: give the server's --data-dir, or its "
                    "--database-url for PostgreSQL")
        if not os.access(db, os.R_OK | os.W_OK):
            return f"recover needs write access to {db}: run it as the server's user"
    return None


def recover(args: argparse.Namespace) -> int:
    import asyncio  # only here: the CLI's other commands must not pay for it

    from tether.server.config import Settings

    settings = Settings.for_data_dir(args.data_dir, args.database_url)
    refusal = _refusal(settings, args.operator)
    if refusal is not None:
        fail(refusal)
        return 2
    try:
        done = asyncio.run(_recover(settings, args.operator))
    except RecoverError as exc:
        fail(str(exc))
        return 1
    steps = [step for step, did in (("created", done["created"]),
                                    ("re-enabled", done["re_enabled"]),
                                    ("given the admin role", bool(done["roles_added"])))
             if did]
    out(f"tether: operator {args.operator} is an enabled admin"
        + (f" ({', '.join(steps)})" if steps else "") + f"; minted token {done['token_id']}")
    out(f"tether: it is in {settings.admin_token_file} (readable by you only); "
        f"export TETHER_TOKEN=$(cat {settings.admin_token_file})")
    return 0


class RecoverError(Exception):
    """Recovery refused or failed; the message says why."""


def _first_line(exc: BaseException) -> str:
    """A database error in one short line: the driver's own words (never the URL,
    which may hold a password), not SQLAlchemy's traceback-sized text."""
    cause = getattr(exc, "orig", None) or exc
    lines = str(cause).strip().splitlines()
    return (lines[0] if lines else type(cause).__name__)[:300]


async def _append(store: Store, **record: Any) -> None:
    """Append to the audit log, again if the running server appended the same record
    number at the same moment (on SQLite the two processes' appends can meet: one
    insert of that number fails and nothing is written, so trying again is safe)."""
    import asyncio

    from sqlalchemy.exc import IntegrityError, OperationalError

    for attempt in range(5):
        try:
            await store.audit.append(**record)
            return
        except (IntegrityError, OperationalError):
            if attempt == 4:
                raise
            await asyncio.sleep(0.05 * (attempt + 1))  # a retry's back-off, not a wait


async def _recover(settings: Settings, name: str) -> dict[str, Any]:
    from tether.server.admin_access import replace_secret_file
    from tether.server.store import open_store
    from tether.server.store.operators import OperatorError

    try:
        key = bytes.fromhex(settings.audit_key_file.read_text().strip())
    except ValueError:
        raise RecoverError(f"{settings.audit_key_file} does not hold an audit key") from None
    from sqlalchemy.exc import SQLAlchemyError

    try:
        store = await open_store(settings.database_url)
    except (SQLAlchemyError, OSError, ImportError) as exc:  # ImportError: mysql://, say
        raise RecoverError(f"cannot open the database: {_first_line(exc)}; check "
                           "--database-url (the server's own); nothing was changed") from None
    try:
        # With the anchor file: the record moves the anchor as the server's own do, so a
        # log cut back to before it no longer verifies (store/audit.py).
        await store.audit.open(key, settings.audit_anchor_file)
        actor = f"{ACTOR_PREFIX}{_os_user()}"
        try:
            done, token = await store.operators.recover(
                name, by=f"tether admin recover ({actor})",
                audit=lambda d: _append(
                    store, actor=actor, action="admin recover", outcome="ok", target=name,
                    source="local", detail={k: v for k, v in d.items() if k != "operator"}))
        except OperatorError as exc:
            await _append(store, actor=actor, action="admin recover", outcome="failed",
                          target=name, source="local",
                          detail={"error": exc.code, "message": str(exc)})
            raise RecoverError(str(exc)) from None
        try:
            replace_secret_file(settings.admin_token_file, token)
        except OSError as exc:
            raise RecoverError(await _unwritten(store, settings, done, actor, exc)) from None
        return done
    finally:
        await store.close()


async def _unwritten(store: Store, settings: Settings, done: dict[str, Any], actor: str,
                     exc: OSError) -> str:
    """The token was minted but its file could not be written (the checks before came
    true too late: the disk filled, the folder changed): revoke it, since no one will
    ever see it, unless it is the only admin token (then it is harmless, its secret
    lost), and record that. The message for the person running recover."""
    from tether.server.store.operators import OperatorError

    try:
        await store.operators.revoke_token(done["token_id"])
        revoked = True
    except OperatorError:
        revoked = False
    await _append(store, actor=actor, action="admin recover", outcome="failed",
                  target=done["operator"], source="local",
                  detail={"error": "token_file", "message": str(exc)[:300],
                          "token_id": done["token_id"], "revoked": revoked})
    return (f"could not write {settings.admin_token_file} ({exc.strerror or exc}); the token "
            f"{done['token_id']} was {'revoked' if revoked else 'never shown'}; fix that "
            "and run recover again")
