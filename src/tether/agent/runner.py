"""Running one script: a child process group, a clean environment, a deadline.

The script runs as ``/bin/sh /proc/self/fd/N`` (the spooled file, passed as an
inherited descriptor so a ``--run-as`` user needs no access to the state
directory) in its own session, so a timeout or a
cancel kills every process it started, not just the shell. Both streams are
written to the spool as they arrive (never held in memory), each up to the
output cap; beyond the cap bytes are read and dropped so the child never
blocks on a full pipe, and the result says the stream was truncated.

An agent killed mid-run leaves its script's group running (it is in a session of
its own). The runner marks the group in the invocation's folder, so the next agent
can stop it (``stop_leftover``) while it reports the invocation Failed.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import pwd
import signal
import time
from collections.abc import Awaitable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable, Optional

from tether.protocol.messages import Command, Result

SAFE_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
READ_CHUNK = 64 * 1024
KILL_GRACE = 5.0

OnOutput = Callable[[str, str, int, bytes], Awaitable[None]]
PROCESS_FILE = "process.json"
BOOT_ID = Path("/proc/sys/kernel/random/boot_id")


@dataclass(frozen=True)
class ProcessMark:
    """A script's process group, told apart from any later process with the same pid.

    Pids are reused; a pid with its start time and the boot it started in is not.
    """

    pgid: int
    start_ticks: int
    boot_id: str

    def save(self, folder: Path) -> None:
        """Without fsync: after a power loss the group is gone and the mark moot."""
        fd = os.open(folder / PROCESS_FILE, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with open(fd, "w") as f:
            json.dump(asdict(self), f)

    @classmethod
    def load(cls, folder: Path) -> Optional[ProcessMark]:
        try:
            return cls(**json.loads((folder / PROCESS_FILE).read_text()))
        except (OSError, ValueError, TypeError):
            return None


def start_ticks_of(stat: str) -> int:
    """``starttime`` (field 22) of a ``/proc/PID/stat`` line.

    Counted from the last ``)``: the command name before it may hold spaces
    and parentheses of its own.
    """
    return int(stat[stat.rindex(")") + 2:].split()[19])


def mark_of(pid: int) -> Optional[ProcessMark]:
    """The mark of a running process; None for one that is gone, a zombie (it runs
    nothing any more), or where /proc cannot tell."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        if stat[stat.rindex(")") + 2] in "ZX":
            return None
        return ProcessMark(pid, start_ticks_of(stat), BOOT_ID.read_text().strip())
    except (OSError, ValueError, IndexError):
        return None


async def stop_leftover(mark: ProcessMark) -> bool:
    """Stop the group a killed agent's script left running, if it is still that group.

    Only while its leader is the very process marked: a group whose leader has
    gone cannot be told from a later one with the same number, so it is left alone.
    """
    if mark_of(mark.pgid) != mark:
        return False
    await stop_group(mark.pgid)
    deadline = time.monotonic() + 1.0  # a SIGKILL lands at once, but not synchronously
    while mark_of(mark.pgid) == mark:  # no event tells when a process has ended
        if time.monotonic() > deadline:
            return False  # not ours to signal (another user's, and we are not root)
        await asyncio.sleep(0.01)
    return True


async def stop_group(pgid: int) -> None:
    """SIGTERM the whole group, then SIGKILL whatever is left after a grace period.

    The group is watched, not its leader: a child that ignores SIGTERM and keeps
    the output pipes open must not hold a result back for the whole grace.
    """
    _signal_group(pgid, signal.SIGTERM)
    deadline = time.monotonic() + KILL_GRACE
    # No event tells when a process group is empty: poll it.
    while time.monotonic() < deadline and _group_alive(pgid):  # noqa: ASYNC110
        await asyncio.sleep(0.05)
    _signal_group(pgid, signal.SIGKILL)


def clean_environment(command: Command, node_id: str,
                      user: pwd.struct_passwd) -> dict[str, str]:
    """The whole environment a script sees; nothing leaks in from the agent's own."""
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
                 on_output: OnOutput, run_as: Optional[pwd.struct_passwd] = None) -> None:
        """``run_as``: the user scripts run as when the agent runs as root (else itself)."""
        self.command = command
        self.run_as = run_as
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
        user = self.run_as or pwd.getpwuid(os.getuid())
        identity: dict[str, Any] = {}
        if self.run_as is not None and self.run_as.pw_uid != os.getuid():
            # The user gets its own script (0400) through an inherited descriptor;
            # the state directory itself stays closed to it.
            os.chown(script, user.pw_uid, user.pw_gid)
            os.chmod(script, 0o400)
            identity = dict(user=user.pw_uid, group=user.pw_gid,
                            extra_groups=os.getgrouplist(user.pw_name, user.pw_gid))
        workdir = cmd.workdir or user.pw_dir
        if not cmd.workdir and not os.path.isdir(workdir):  # noqa: ASYNC240
            workdir = "/"  # service users often have a home that does not exist
        if not os.path.isdir(workdir):  # noqa: ASYNC240 - one stat, not worth a thread
            return Result(cmd.invocation_id, "Failed", 0, 0,
                          reason=f"working directory {workdir} does not exist")
        script_fd = os.open(script, os.O_RDONLY)
        try:
            self._proc = await asyncio.create_subprocess_exec(
                "/bin/sh", f"/proc/self/fd/{script_fd}", pass_fds=(script_fd,), cwd=workdir,
                env=clean_environment(cmd, self.node_id, user), **identity,
                stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.PIPE, start_new_session=True)
        except OSError as exc:
            return Result(cmd.invocation_id, "Failed", 0, 0, reason=f"could not start: {exc}")
        finally:
            os.close(script_fd)
        proc = self._proc
        mark = mark_of(proc.pid)
        if mark is not None:
            mark.save(self.folder)
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
            await stop_group(proc.pid)
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
        fd = os.open(self.folder / stream, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        with open(fd, "ab") as out:  # noqa: ASYNC230 - page-cache writes, cheaper than a thread hop
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


def _signal_group(pgid: int, sig: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, sig)


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
