"""What a channel connects to on the device: a TCP service or a file.

An endpoint is the device end of a channel. The multiplexer
(``tether.agent.channels``) reads from it only when the server has given
credit, and credits the server back only once a write here has returned, so
every endpoint's own buffering is the only buffering there is. The shell, the
one endpoint with a process behind it, lives in ``tether.agent.shell``.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import pwd
import sys
from typing import Any, Optional

from tether.protocol.messages import Open

HELPER_REAP_TIMEOUT = 5.0


# The folder holding the ``tether`` package the agent runs from.
_CODE_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


class EndpointError(Exception):
    """The channel cannot open or go on; the message is for the operator."""


class Endpoint:
    """Base: a byte stream each way. Subclasses override what they support."""

    size: Optional[int] = None  # told to the server in ``opened``
    mode: Optional[int] = None

    async def read(self, n: int) -> bytes:
        """Up to ``n`` bytes; ``b""`` at the end."""
        return b""

    async def write(self, data: bytes) -> None:
        raise EndpointError("this channel takes no data")

    async def write_eof(self, sha256: Optional[str]) -> None:
        """The server sent everything (a half-close)."""

    def resize(self, rows: int, cols: int) -> None:
        """Only a terminal has a size."""

    def eof_digest(self) -> Optional[str]:
        """Sent with our ``eof``: the digest of what was read, where it is checked."""
        return None

    async def finish(self) -> tuple[Optional[int], Optional[str]]:
        """Once our side reached its end: the exit code and error for ``close``."""
        return None, None

    async def hang_up(self) -> None:
        """The channel is over (either side closed it, or the link is gone)."""


class TcpEndpoint(Endpoint):
    """A connection from the device to HOST:PORT, as the device sees it."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer
        self._sent_all = asyncio.Event()  # the server half-closed

    @classmethod
    async def connect(cls, host: str, port: int, timeout: float = 10.0) -> TcpEndpoint:
        try:
            reader, writer = await asyncio.wait_for(asyncio.open_connection(host, port),
                                                    timeout)
        except (OSError, asyncio.TimeoutError) as exc:
            reason = "timed out" if isinstance(exc, asyncio.TimeoutError) else \
                exc.strerror or str(exc)
            raise EndpointError(f"cannot connect to {host}:{port} from the device: "
                                f"{reason}") from None
        return cls(reader, writer)

    async def read(self, n: int) -> bytes:
        try:
            return await self.reader.read(n)
        except OSError:
            return b""

    async def write(self, data: bytes) -> None:
        try:
            self.writer.write(data)
            await self.writer.drain()
        except OSError as exc:
            raise EndpointError(f"the service closed the connection: {exc}") from None

    async def write_eof(self, sha256: Optional[str]) -> None:
        self._sent_all.set()
        with contextlib.suppress(OSError):
            if self.writer.can_write_eof():
                self.writer.write_eof()

    async def finish(self) -> tuple[Optional[int], Optional[str]]:
        """Both halves closed: the connection is over."""
        await self._sent_all.wait()
        return None, None

    async def hang_up(self) -> None:
        self.writer.close()
        with contextlib.suppress(OSError, asyncio.CancelledError):
            await self.writer.wait_closed()


async def _helper(user: pwd.struct_passwd, *args: str) -> asyncio.subprocess.Process:
    """``tether.agent.filehelper`` as ``user``, with nothing of the agent's environment."""
    identity: dict[str, Any] = {}
    if user.pw_uid != os.getuid():
        identity = dict(user=user.pw_uid, group=user.pw_gid,
                        extra_groups=os.getgrouplist(user.pw_name, user.pw_gid))
    # The agent's own code first on the path, and nothing else of its environment.
    # (The helper runs as the user, so nothing the user could put on its path would
    # run with more rights than the user has.)
    env = {"PATH": "/usr/bin:/bin", "LANG": "C.UTF-8", "PYTHONPATH": _CODE_ROOT,
           "PYTHONNOUSERSITE": "1", "PYTHONDONTWRITEBYTECODE": "1"}
    try:
        return await asyncio.create_subprocess_exec(
            sys.executable, "-m", "tether.agent.filehelper", *args,
            stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE, env=env, cwd="/", start_new_session=True,
            **identity)
    except OSError as exc:
        raise EndpointError(f"cannot start the copy as {user.pw_name}: {exc}") from None


async def _header(proc: asyncio.subprocess.Process) -> list[str]:
    """The helper's first line: ``ok ...`` fields, or its refusal as an EndpointError."""
    assert proc.stdout is not None
    line = (await proc.stdout.readline()).decode("utf-8", "replace").strip()
    if not line.startswith("ok"):
        await proc.wait()
        raise EndpointError(line[6:] if line.startswith("error ") else
                            f"the copy helper failed: {line or 'no answer'}")
    return line.split()[1:]


async def _stop(proc: asyncio.subprocess.Process) -> None:
    """Kill the helper and reap it.

    Reaping means reading its pipes to the end: asyncio's ``wait()`` returns only
    once they are closed, and a pipe left full (nobody read it since the channel
    ended) would never be, so a plain ``wait()`` here hung the agent's reconnect.
    """
    if proc.returncode is None:
        with contextlib.suppress(ProcessLookupError):
            proc.kill()
    with contextlib.suppress(asyncio.TimeoutError, OSError):
        await asyncio.wait_for(proc.communicate(), HELPER_REAP_TIMEOUT)


class FileReader(Endpoint):
    """A file sent from ``offset`` on, read by the helper as the session user.

    The digest with ``eof`` covers the whole file, not the part sent, so a
    resumed copy is checked end to end by the side that holds both halves.
    """

    def __init__(self, proc: asyncio.subprocess.Process, size: int, mode: int) -> None:
        self.proc, self.size, self.mode = proc, size, mode
        self._digest: Optional[str] = None

    @classmethod
    async def open(cls, user: pwd.struct_passwd, path: str, offset: int) -> FileReader:
        proc = await _helper(user, "read", path, str(offset))
        size, mode = (int(x) for x in await _header(proc))
        return cls(proc, size, mode)

    async def read(self, n: int) -> bytes:
        assert self.proc.stdout is not None and self.proc.stderr is not None
        data = await self.proc.stdout.read(n)
        if not data:
            trailer = (await self.proc.stderr.read()).decode("utf-8", "replace").strip()
            await self.proc.wait()
            if len(trailer) != 64:
                raise EndpointError(trailer[6:] if trailer.startswith("error ") else
                                    f"the copy helper failed: {trailer or 'no digest'}")
            self._digest = trailer
        return data

    def eof_digest(self) -> Optional[str]:
        return self._digest

    async def hang_up(self) -> None:
        await _stop(self.proc)


class FileWriter(Endpoint):
    """A file received by the helper as the session user, checked and renamed at the end.

    ``size`` (told to the server in ``opened``) is what an interrupted attempt
    at the same content left: the server resumes from there.
    """

    def __init__(self, proc: asyncio.subprocess.Process, held: int) -> None:
        self.proc, self.size = proc, held
        self._done: asyncio.Future[Optional[str]] = \
            asyncio.get_running_loop().create_future()

    @classmethod
    async def open(cls, user: pwd.struct_passwd, request: Open) -> FileWriter:
        if not request.path or request.sha256 is None or request.size is None:
            raise EndpointError("a file_write channel needs path, size and sha256")
        digest = request.sha256.lower()
        if len(digest) != 64 or any(c not in "0123456789abcdef" for c in digest):
            raise EndpointError("sha256 must be 64 hex digits")
        mode = request.mode if request.mode is not None else 0o644
        proc = await _helper(user, "write", request.path, str(request.size), digest,
                             str(mode), "1" if request.force else "0")
        (held,) = (int(x) for x in await _header(proc))
        return cls(proc, held)

    async def write(self, data: bytes) -> None:
        assert self.proc.stdin is not None
        try:
            self.proc.stdin.write(data)
            await self.proc.stdin.drain()
        except (BrokenPipeError, ConnectionResetError):
            raise EndpointError(await self._outcome() or "the copy helper stopped") from None

    async def write_eof(self, sha256: Optional[str]) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.close()
        outcome = await self._outcome()
        if not self._done.done():
            self._done.set_result(outcome)

    async def _outcome(self) -> Optional[str]:
        assert self.proc.stdout is not None
        line = (await self.proc.stdout.readline()).decode("utf-8", "replace").strip()
        await self.proc.wait()
        if line == "done":
            return None
        return line[6:] if line.startswith("error ") else \
            f"the copy helper failed: {line or 'no answer'}"

    async def finish(self) -> tuple[Optional[int], Optional[str]]:
        return None, await self._done

    async def hang_up(self) -> None:
        await _stop(self.proc)  # the partial file stays for a resumed attempt

