"""An interactive login shell on a pseudo-terminal: the device end of ``tether shell``.

The shell is a session leader with the PTY as its controlling terminal, so the
line discipline turns the operator's Ctrl-C and Ctrl-Z into SIGINT and SIGTSTP
for whatever runs in the foreground, exactly as at a local console. When the
channel ends for any reason the session is hung up (SIGHUP, then SIGKILL after
a grace period), so nothing started from it keeps running by accident.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import fcntl
import os
import pwd
import signal
import struct
import termios
from typing import Optional

from tether.agent.endpoints import Endpoint, EndpointError
from tether.agent.runner import SAFE_PATH

HANGUP_GRACE = 3.0
DEFAULT_TERM = "xterm-256color"


def _take_terminal() -> None:  # pragma: no cover - runs in the child between fork and exec
    fcntl.ioctl(0, termios.TIOCSCTTY, 0)


def _set_size(fd: int, rows: int, cols: int) -> None:
    fcntl.ioctl(fd, termios.TIOCSWINSZ, struct.pack("HHHH", rows, cols, 0, 0))


def session_user(requested: Optional[str], default: pwd.struct_passwd) -> pwd.struct_passwd:
    """The account the shell runs as: the requested one, or the agent's default."""
    if requested is None or requested == default.pw_name:
        return default
    try:
        user = pwd.getpwnam(requested)
    except KeyError:
        raise EndpointError(f"no user {requested!r} on the device") from None
    if os.getuid() != 0 and user.pw_uid != os.getuid():
        raise EndpointError(f"the agent does not run as root, so it cannot start a shell "
                            f"as {requested}")
    return user


def _shell_and_home(user: pwd.struct_passwd) -> tuple[str, str]:
    """Service accounts often have no shell (or ``nologin``) and no home."""
    shell = user.pw_shell if user.pw_shell and os.path.exists(user.pw_shell) \
        and not user.pw_shell.endswith(("/nologin", "/false")) else "/bin/sh"
    return shell, user.pw_dir if os.path.isdir(user.pw_dir) else "/"


class Shell(Endpoint):
    def __init__(self, proc: asyncio.subprocess.Process, master: int) -> None:
        self.proc = proc
        self.master = master
        self._readable = asyncio.Event()
        self._writable = asyncio.Event()
        self._closed = False

    @classmethod
    async def start(cls, user: pwd.struct_passwd, rows: int, cols: int, term: str,
                    node_id: str) -> Shell:
        shell, home = _shell_and_home(user)
        master, slave = os.openpty()
        try:
            _set_size(slave, rows or 24, cols or 80)
            env = {"PATH": SAFE_PATH, "HOME": home, "USER": user.pw_name,
                   "LOGNAME": user.pw_name, "SHELL": shell, "TERM": term or DEFAULT_TERM,
                   "LANG": "C.UTF-8", "TETHER_NODE_ID": node_id}
            identity: dict[str, object] = {}
            if user.pw_uid != os.getuid():
                identity = dict(user=user.pw_uid, group=user.pw_gid,
                                extra_groups=os.getgrouplist(user.pw_name, user.pw_gid))
            # argv[0] "-sh" makes it a login shell, as login(1) starts it.
            proc = await asyncio.create_subprocess_exec(
                "-" + os.path.basename(shell), executable=shell, stdin=slave, stdout=slave,
                stderr=slave, cwd=home, env=env, start_new_session=True,
                preexec_fn=_take_terminal, **identity)  # type: ignore[arg-type]
        except OSError as exc:
            os.close(master)
            raise EndpointError(f"cannot start a shell as {user.pw_name}: {exc}") from None
        finally:
            os.close(slave)
        os.set_blocking(master, False)
        return cls(proc, master)

    # -- the terminal's bytes ------------------------------------------------

    async def read(self, n: int) -> bytes:
        loop = asyncio.get_running_loop()
        while not self._closed:
            try:
                return os.read(self.master, n)
            except BlockingIOError:
                pass
            except OSError as exc:  # EIO: every process let go of the terminal
                if exc.errno == errno.EIO:
                    return b""
                raise
            self._readable.clear()
            loop.add_reader(self.master, self._readable.set)
            try:
                if self.proc.returncode is not None:
                    # The shell is gone; a background job may still hold the
                    # terminal, so wait a moment for its last output, no longer.
                    with contextlib.suppress(asyncio.TimeoutError):
                        await asyncio.wait_for(self._readable.wait(), 0.2)
                    if not self._readable.is_set():
                        return b""
                else:
                    exited = asyncio.ensure_future(self.proc.wait())
                    readable = asyncio.ensure_future(self._readable.wait())
                    await asyncio.wait({exited, readable},
                                       return_when=asyncio.FIRST_COMPLETED)
                    exited.cancel()
                    readable.cancel()
            finally:
                if not self._closed:
                    loop.remove_reader(self.master)
        return b""

    async def write(self, data: bytes) -> None:
        loop = asyncio.get_running_loop()
        view = memoryview(data)
        while view and not self._closed:
            try:
                view = view[os.write(self.master, view):]
                continue
            except BlockingIOError:
                pass
            except OSError:
                return  # the terminal is gone; the close follows from the read side
            self._writable.clear()
            loop.add_writer(self.master, self._writable.set)
            try:
                await self._writable.wait()
            finally:
                if not self._closed:
                    loop.remove_writer(self.master)

    def resize(self, rows: int, cols: int) -> None:
        if not self._closed:
            _set_size(self.master, rows, cols)  # the kernel sends SIGWINCH

    async def finish(self) -> tuple[Optional[int], Optional[str]]:
        code = await self.proc.wait()
        return (128 - code if code < 0 else code), None

    async def hang_up(self) -> None:
        """SIGHUP to the whole session, SIGKILL to what ignores it, then close."""
        if self._closed:
            return
        pgid = self.proc.pid
        _signal(pgid, signal.SIGHUP)
        try:
            await asyncio.wait_for(self.proc.wait(), HANGUP_GRACE)
        except asyncio.TimeoutError:
            _signal(pgid, signal.SIGKILL)
            await self.proc.wait()
        self._closed = True
        loop = asyncio.get_running_loop()
        loop.remove_reader(self.master)
        loop.remove_writer(self.master)
        self._readable.set()
        self._writable.set()
        os.close(self.master)


def _signal(pgid: int, sig: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, sig)
