"""``tether cp LOCAL NODE:PATH`` and ``tether cp NODE:PATH LOCAL``: checked, resumable copies.

Each copy is one session; each attempt one stream. A dropped link does not
start the copy over: an upload resumes from what the device already holds
(its partial file is named after the content's SHA-256), a download from what
the local partial file (``LOCAL.tether-part``) holds. Whole-file SHA-256 is
checked at the end on the receiving side. The mode is kept as far as it is
safe: its permission bits minus the receiver's umask, never setuid, setgid or
sticky (``tether.protocol.filemode``); a partial file is never written through
a symlink (``tether.partfile``).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import hashlib
import os
import re
import stat
import time
from pathlib import Path
from typing import Any, Optional

from websockets.exceptions import ConnectionClosed

from tether.cli.client import ApiFailure, Client
from tether.cli.node_arg import node_id_of
from tether.cli.output import json_line, out
from tether.cli.stream import CHUNK, StreamClosed, control_of, open_stream, start_session
from tether.partfile import PartFile, PartRefused

# NODE:PATH, NODE a node id or name (no colon, no slash: ./a:b is a local file, as for
# scp); the path as typed, a final newline included (match with $ dropped it: another file).
REMOTE = re.compile(r"([^:/]+):(.+)", re.DOTALL)
# Errors after which trying again cannot help: the device said no.
RETRYABLE = ("link was lost", "is not connected", "could not reach", "connection to the tether",
             "did not open the channel in time")


class CopyFailed(Exception):
    pass


def _digest(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1024 * 1024), b""):
            h.update(block)
    return h.hexdigest()


def run(client: Client, args: argparse.Namespace) -> int:
    src, dst = REMOTE.fullmatch(args.source), REMOTE.fullmatch(args.destination)
    if bool(src) == bool(dst):
        raise ValueError("one of SOURCE and DESTINATION is NODE:PATH (a node id or name, "
                         "mi-...:/path or web-1:/path), the other a local path (./a:b for a "
                         "local name with a colon)")
    remote = (dst or src)
    assert remote is not None
    if not remote.group(2).startswith("/"):
        raise ValueError(f"{remote.group(0)}: the path on the node must be absolute "
                         f"({remote.group(1)}:/{remote.group(2)}?)")
    node = node_id_of(client, remote.group(1))
    if dst:
        return _upload(client, args, Path(args.source), node, dst.group(2))
    assert src is not None
    return _download(client, args, node, src.group(2), Path(args.destination))


def _upload(client: Client, args: argparse.Namespace, local: Path, node: str,
            remote: str) -> int:
    if not local.is_file():
        raise ValueError(f"{local} is not a file")
    if remote.endswith("/"):
        remote += local.name
    size, mode = local.stat().st_size, stat.S_IMODE(local.stat().st_mode)
    digest = _digest(local)
    session = start_session(client, {"node_id": node, "kind": "copy", "direction": "to_node",
                                     "path": remote, "size": size, "sha256": digest,
                                     "mode": mode, "force": args.force})

    async def attempt() -> None:
        ws, opened = await open_stream(client, session["session_id"])
        held = int(opened.get("size") or 0)
        try:
            try:
                with open(local, "rb") as f:  # noqa: ASYNC230 - the CLI does nothing else
                    f.seek(held)
                    for block in iter(lambda: f.read(CHUNK), b""):
                        await ws.send(block)
                await ws.send('{"t":"eof"}')
            except ConnectionClosed:  # mid-send: the reason is in a frame we did not read
                raise StreamClosed("the connection to the tether server was lost; the "
                                   "node's link was lost or the server went away") from None
            async for frame in ws:
                if isinstance(frame, str) and control_of(frame).get("t") == "closed":
                    error = control_of(frame).get("error")
                    if error:
                        raise StreamClosed(str(error))
                    return
            raise StreamClosed("the connection to the tether server was lost")
        finally:
            await ws.close()

    return _with_retries(client, args, session, attempt,
                         f"{local} -> {node}:{remote} ({size} bytes, sha256 {digest[:16]}...)")


def _download(client: Client, args: argparse.Namespace, node: str, remote: str,
              local: Path) -> int:
    if local.is_dir():
        local = local / os.path.basename(remote.rstrip("/"))
    if local.exists() and not args.force:
        raise ValueError(f"{local} exists; --force replaces it")
    # Opened (or made) before the session starts, never through a symlink; the
    # device's mode is masked when it is installed (tether.partfile).
    try:
        part = PartFile.open(str(local.parent), local.name + ".tether-part")
    except PartRefused as exc:
        raise ValueError(str(exc)) from None
    with part:
        return _download_into(client, args, node, remote, local, part)


def _download_into(client: Client, args: argparse.Namespace, node: str, remote: str,
                   local: Path, part: PartFile) -> int:
    session = start_session(client, {"node_id": node, "kind": "copy",
                                     "direction": "from_node", "path": remote})
    done: dict[str, Any] = {}

    async def attempt() -> None:
        offset = part.size()
        ws, opened = await open_stream(client, session["session_id"], offset)
        done.update(size=opened.get("size"), mode=opened.get("mode"))
        part.file.seek(offset)
        try:
            async for frame in ws:
                if isinstance(frame, bytes):
                    part.file.write(frame)
                    continue
                control = control_of(frame)
                if control.get("t") == "eof":
                    done["sha256"] = control.get("sha256")
                elif control.get("t") == "closed":
                    if control.get("error"):
                        raise StreamClosed(str(control["error"]))
                    return
            raise StreamClosed("the connection to the tether server was lost")
        finally:
            part.file.flush()
            await ws.close()

    code = _with_retries(client, args, session, attempt, f"{node}:{remote} -> {local}")
    if code != 0:
        if part.size() == 0:
            part.discard()  # nothing to resume from
        return code
    got = part.digest()
    if got != done.get("sha256"):
        part.discard()
        out(f"tether: checksum mismatch (got {got[:16]}..., the device had "
            f"{str(done.get('sha256'))[:16]}...): the file changed during the copy; "
            "copy again", err=True)
        return 1
    try:
        part.install(local.name, done.get("mode"))
    except PartRefused as exc:
        out(f"tether: {exc}", err=True)
        return 1
    if args.json:
        json_line({"path": str(local), "size": done.get("size"), "sha256": got})
    return 0


def _with_retries(client: Client, args: argparse.Namespace, session: dict[str, Any],
                  attempt: Any, what: str) -> int:
    """Run attempts until one completes, resuming after link drops for ``--resume-for``."""
    session_id = session["session_id"]
    started = time.monotonic()
    out(f"tether: copying {what} (session {session_id})", err=True, flush=True)
    delay = 0.5
    error: Optional[str] = None
    while True:
        try:
            asyncio.run(attempt())
            out(f"tether: copied, checksum verified ({time.monotonic() - started:.1f} s)",
                err=True)
            return 0
        except (StreamClosed, ConnectionClosed, OSError) as exc:
            error = str(exc) or type(exc).__name__
        if not any(r in error for r in RETRYABLE) or \
                time.monotonic() - started > args.resume_for:
            break
        out(f"tether: {error}; resuming in {delay:.1f} s", err=True, flush=True)
        time.sleep(delay)
        delay = min(delay * 2, 5.0)
    with contextlib.suppress(ApiFailure):
        client.post(f"/sessions/{session_id}/terminate",
                    {"reason": f"copy failed: {error}"[:500], "failed": True})
    out(f"tether: copy failed: {error}", err=True)
    return 1
