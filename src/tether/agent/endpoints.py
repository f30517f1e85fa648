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
import hashlib
import os
import stat
from pathlib import Path
from typing import Optional

from tether.protocol.messages import Open

READ_CHUNK = 32 * 1024


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


class FileReader(Endpoint):
    """A file sent from ``offset`` on; its digest (of the whole file) goes with ``eof``.

    The digest covers the whole file, not the part sent, so a resumed copy is
    checked end to end by the side that holds both halves.
    """

    def __init__(self, path: Path, offset: int) -> None:
        try:
            self.file = open(path, "rb")  # noqa: SIM115 - closed in hang_up
        except OSError as exc:
            raise EndpointError(f"cannot read {path}: {exc.strerror}") from None
        info = os.fstat(self.file.fileno())
        if not stat.S_ISREG(info.st_mode):
            self.file.close()
            raise EndpointError(f"{path} is not a regular file")
        if offset > info.st_size:
            self.file.close()
            raise EndpointError(f"{path} is shorter ({info.st_size} bytes) than the part "
                                "already copied; it changed: copy again without resuming")
        self.size, self.mode = info.st_size, stat.S_IMODE(info.st_mode)
        self.digest = hashlib.sha256()
        self._hash_prefix(offset)
        self.file.seek(offset)

    def _hash_prefix(self, offset: int) -> None:
        left = offset
        while left:
            block = self.file.read(min(1024 * 1024, left))
            if not block:
                break
            self.digest.update(block)
            left -= len(block)

    async def read(self, n: int) -> bytes:
        data = await asyncio.get_running_loop().run_in_executor(None, self.file.read, n)
        self.digest.update(data)
        return data

    def eof_digest(self) -> Optional[str]:
        return self.digest.hexdigest()

    async def hang_up(self) -> None:
        self.file.close()


class FileWriter(Endpoint):
    """A file received into a partial file beside its target, renamed when complete.

    The partial file is named after the content's digest, so an interrupted
    copy of the same content resumes where it stopped (``size`` in
    ``opened``), and a different file never continues someone else's part.
    """

    def __init__(self, request: Open) -> None:
        if not request.path or request.sha256 is None or request.size is None:
            raise EndpointError("a file_write channel needs path, size and sha256")
        digest = request.sha256.lower()
        if len(digest) != 64 or any(c not in "0123456789abcdef" for c in digest):
            raise EndpointError("sha256 must be 64 hex digits")
        self.target = Path(request.path)
        if not self.target.is_absolute():
            raise EndpointError(f"{request.path} is not an absolute path")
        if self.target.is_dir():
            raise EndpointError(f"{request.path} is a directory; name the file")
        if self.target.exists() and not request.force:
            raise EndpointError(f"{request.path} exists on the device; --force replaces it")
        if not self.target.parent.is_dir():
            raise EndpointError(f"{self.target.parent} does not exist on the device")
        self.expected, self.total = digest, request.size
        self.file_mode = request.mode if request.mode is not None else 0o644
        self.part = self.target.parent / f".{self.target.name}.{digest[:16]}.tether-part"
        try:
            fd = os.open(self.part, os.O_WRONLY | os.O_CREAT, 0o600)
        except OSError as exc:
            raise EndpointError(f"cannot write in {self.target.parent}: {exc.strerror}") \
                from None
        self.file = os.fdopen(fd, "wb")
        held = os.fstat(fd).st_size
        if held > self.total:
            held = 0
            self.file.truncate(0)
        self.file.seek(held)
        self.size = held  # where the server resumes
        self._error: Optional[str] = None
        self._done = asyncio.get_running_loop().create_future()

    async def write(self, data: bytes) -> None:
        await asyncio.get_running_loop().run_in_executor(None, self.file.write, data)

    async def write_eof(self, sha256: Optional[str]) -> None:
        loop = asyncio.get_running_loop()
        error = await loop.run_in_executor(None, self._complete)
        if not self._done.done():
            self._done.set_result(error)

    def _complete(self) -> Optional[str]:
        self.file.flush()
        os.fsync(self.file.fileno())
        self.file.close()
        digest = hashlib.sha256()
        with open(self.part, "rb") as f:
            for block in iter(lambda: f.read(1024 * 1024), b""):
                digest.update(block)
        if digest.hexdigest() != self.expected:
            self.part.unlink()
            return (f"checksum mismatch on the device (got {digest.hexdigest()[:16]}..., "
                    f"expected {self.expected[:16]}...); the partial file was removed")
        os.chmod(self.part, self.file_mode)
        os.replace(self.part, self.target)
        return None

    async def finish(self) -> tuple[Optional[int], Optional[str]]:
        return None, await self._done

    async def hang_up(self) -> None:
        if not self.file.closed:
            self.file.close()  # the part stays for a resumed attempt
