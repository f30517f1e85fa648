"""Running one script: a child process group, a clean environment, a deadline.

The script runs as ``/bin/sh <file>`` in its own session, so a timeout or a
cancel kills every process it started, not just the shell. Both streams are
written to the spool as they arrive (never held in memory), each up to the
output cap; beyond the cap bytes are read and dropped so the child never
blocks on a full pipe, and the result says the stream was truncated.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import pwd
import signal
from collections.abc import Awaitable
from pathlib import Path
from typing import Any, Callable, Optional

from tether.protocol.messages import Command, Result

SAFE_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
READ_CHUNK = 64 * 1024
KILL_GRACE = 5.0

OnOutput = Callable[[str, str, int, bytes], Awaitable[None]]


def clean_environment(command: Command, node_id: str) -> dict[str, str]:
    """The whole environment a script sees; nothing leaks in from the agent's own."""
    user = pwd.getpwuid(os.getuid())
    return {
        "PATH": SAFE_PATH,
        "HOME": user.pw_dir,
        "USER": user.pw_name,
        "LOGNAME": user.pw_name,
        "SHELL": "/bin/sh",
        "LANG": "C.UTF-8",
        "TETHER_NODE_ID": node_id,
        "TETHER_COMMAND_ID": command.command_id,
        "TETHER_INVOCATION_ID": command.invocation_id,
    }


class Execution:
    """One running invocation; ``cancel()`` may be called from any task."""

    def __init__(self, command: Command, folder: Path, node_id: str,
                 on_output: OnOutput) -> None:
        self.command = command
        self.folder = folder
        self.node_id = node_id
        self.on_output = on_output
        self._cancelled = asyncio.Event()
        self._proc: Optional[asyncio.subprocess.Process] = None
        self._sizes: dict[str, tuple[int, bool]] = {"stdout": (0, False),
                                                    "stderr": (0, False)}

    def cancel(self) -> None:
        self._cancelled.set()

    async def run(self) -> Result:
        cmd = self.command
        script = self.folder / "script"
        script.write_text(cmd.script)
        workdir = cmd.workdir or pwd.getpwuid(os.getuid()).pw_dir
        if not os.path.isdir(workdir):  # noqa: ASYNC240 - one stat, not worth a thread
            return Result(cmd.invocation_id, "Failed", 0, 0,
                          reason=f"working directory {workdir} does not exist")
        try:
            self._proc = await asyncio.create_subprocess_exec(
                "/bin/sh", str(script), cwd=workdir, env=clean_environment(cmd, self.node_id),
                stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.PIPE, start_new_session=True)
        except OSError as exc:
            return Result(cmd.invocation_id, "Failed", 0, 0, reason=f"could not start: {exc}")
        proc = self._proc
        assert proc.stdout is not None and proc.stderr is not None
        pumps = asyncio.gather(self._pump("stdout", proc.stdout),
                               self._pump("stderr", proc.stderr), proc.wait())
        cancelled = asyncio.ensure_future(self._cancelled.wait())
        waiters: set[asyncio.Future[Any]] = {pumps, cancelled}
        done, _ = await asyncio.wait(waiters, timeout=cmd.timeout,
                                     return_when=asyncio.FIRST_COMPLETED)
        status, reason = "Success", None
        if pumps not in done:
            status = "Cancelled" if cancelled in done else "TimedOut"
            reason = ("cancelled by an operator" if status == "Cancelled"
                      else f"ran longer than the {cmd.timeout:g} s timeout")
            await self._kill_group(proc)
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(pumps, KILL_GRACE)
        cancelled.cancel()
        sizes = self._sizes
        exit_code = proc.returncode
        if status == "Success" and exit_code != 0:
            status = "Failed"
        return Result(cmd.invocation_id, status, sizes["stdout"][0], sizes["stderr"][0],
                      exit_code=exit_code, stdout_truncated=sizes["stdout"][1],
                      stderr_truncated=sizes["stderr"][1], reason=reason)

    async def _pump(self, stream: str, reader: asyncio.StreamReader) -> None:
        cap = self.command.output_cap
        kept = 0
        truncated = False
        with (self.folder / stream).open("ab") as out:
            while True:
                chunk = await reader.read(READ_CHUNK)
                if not chunk:
                    break
                room = cap - kept
                if len(chunk) > room:
                    truncated = True
                    chunk = chunk[:max(room, 0)]
                if chunk:
                    out.write(chunk)
                    out.flush()
                    await self.on_output(self.command.invocation_id, stream, kept, chunk)
                    kept += len(chunk)
                self._sizes[stream] = (kept, truncated)

    async def _kill_group(self, proc: asyncio.subprocess.Process) -> None:
        """SIGTERM the whole group, then SIGKILL what is left after a grace period."""
        for sig in (signal.SIGTERM, signal.SIGKILL):
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(proc.pid, sig)
            try:
                await asyncio.wait_for(proc.wait(), KILL_GRACE)
                if sig == signal.SIGTERM:
                    # The shell is gone; make sure nothing it left behind survives.
                    with contextlib.suppress(ProcessLookupError, PermissionError):
                        os.killpg(proc.pid, signal.SIGKILL)
                return
            except asyncio.TimeoutError:
                continue
