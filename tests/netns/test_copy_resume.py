"""``tether cp`` of 50 MiB each way across the cellular link, cut mid-copy, then resumed.

Why: a file copy to or from a device on LTE is the operation most likely to be
cut half way: it runs long, and the radio goes quiet without a FIN or an RST.
Unit tests cannot show that the real CLI, server and agent notice the silent
link, that the CLI keeps trying while the device is away, and that once the
device is back the copy continues from the bytes already held instead of
starting over, ending byte-exact. This runs them in ``pppnet.PppNetwork`` as
``test_cellular`` does (whose ``Cellular`` helper this reuses): the server and
the operator's CLI in the server namespace, the agent in the device namespace,
the link between them cut and restored by the relay. The device's files are on
the test's filesystem, so the test reads the device's partial file directly.

PRODUCT CONTRACT under test (``tether cp --help``; tether/cli/copy.py,
tether/agent/endpoints.py):

- ``tether cp LOCAL NODE:/PATH`` uploads into ``.NAME.<sha256[:16]>.tether-part``
  beside the target on the device; ``tether cp NODE:/PATH LOCAL`` downloads into
  ``LOCAL.tether-part``. Each is renamed to its final name once complete.
- When the link drops mid-copy the CLI prints ``tether: <reason>; resuming in N s``
  and tries again for up to ``--resume-for`` seconds. An upload resumes from what
  the device's partial file holds, a download from what the local one holds: a
  partial file never shrinks, and the bytes relayed over the session
  (``bytes_to_node`` / ``bytes_from_node``) come to about the file's size, not
  the size plus what had been copied before the cut.
- The receiving side checks the whole file's SHA-256; the CLI ends with
  ``copied, checksum verified`` and exit 0.

Measured times are collected in ``TIMINGS`` and printed after the module
(``pytest -s``).
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from pppnet import OutputWatcher, PppNetwork, clean_env
from test_cellular import DETECT_BOUND, NODE_ID, POLL, PORT, Cellular

pytestmark = pytest.mark.netns

SIZE = 50 * 1024 * 1024
CUT_AT = 10 * 1024 * 1024  # partial-file bytes before the link is cut
RECONNECT_CAP = 2.0  # the agent's; short, so the device is back soon after the restore
RESUME_FOR = 90.0  # the CLI's --resume-for: long enough for the outage, bounded for a failure
GROW_DEADLINE = 60.0  # until the partial file passes CUT_AT
FINISH_DEADLINE = 90.0  # from the restore until the CLI exits
RESUMING = "resuming in "
VERIFIED = "copied, checksum verified"

TIMINGS: dict[str, float] = {}  # what -> seconds, printed after the module
NOTES: list[str] = []  # other measured numbers, printed with the timings


@pytest.fixture(scope="module", autouse=True)
def report_timings() -> Iterator[None]:
    yield
    if TIMINGS or NOTES:
        print("\ncopy-resume timings:")
        for what, seconds in TIMINGS.items():
            print(f"  {seconds:6.2f} s  {what}")
        for note in NOTES:
            print(f"  {note}")


def sha256_of(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1024 * 1024), b""):
            h.update(block)
    return h.hexdigest()


def size_or_none(path: Path) -> int | None:
    try:
        return path.stat().st_size
    except FileNotFoundError:
        return None


class PartWatch:
    """Deadline-bound polls that sample a partial file's size on every round."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.samples: list[tuple[float, int | None]] = []  # (monotonic, size or gone)

    def sample(self) -> int | None:
        size = size_or_none(self.path)
        self.samples.append((time.monotonic(), size))
        return size

    def until(self, what: str, done: Callable[[], bool], timeout: float,
              logs: Callable[[], str]) -> None:
        deadline = time.monotonic() + timeout
        while True:
            self.sample()
            if done():
                return
            assert time.monotonic() < deadline, (
                f"not {what} within {timeout} s; {self.path} sizes "
                f"{self.sizes()[-10:]}{logs()}")
            time.sleep(POLL)

    def sizes(self, since: float = 0.0) -> list[int | None]:
        return [s for t, s in self.samples if t >= since]


class Copy(Cellular):
    """``Cellular`` with an agent on a short reconnect cap and ``tether cp`` in the
    background."""

    def start_agent(self, *extra: str) -> str:
        activation = self.cli("activation", "create", "--json")
        state_dir = str(self.tmp / "agent")
        agent = [sys.executable, "-m", "tether.agent"]
        result = self.net.run(self.net.device_ns, [
            *agent, "register", "--insecure", "--server", f"http://{self.net.server_name}:{PORT}",
            "--activation-id", activation["activation_id"],
            "--activation-code", activation["activation_code"],
            "--state-dir", state_dir], env=clean_env())
        found = NODE_ID.search(result.stdout)
        assert result.returncode == 0 and found, (
            f"register: exit {result.returncode}\n{result.stdout}{result.stderr}{self.logs()}")
        self.node_id = found.group(0)
        proc, self.watchers["agent"] = self.net.spawn(self.net.device_ns, [
            *agent, "run", "--state-dir", state_dir,
            "--reconnect-cap", f"{RECONNECT_CAP:g}", *extra], env=clean_env())
        self.procs.append(proc)
        return self.node_id

    def wait_online(self) -> None:
        self.wait_node("Online", lambda n: n["ping_status"] == "Online", timeout=60)

    def cp(self, name: str, source: str, destination: str
           ) -> tuple[subprocess.Popen[str], OutputWatcher]:
        """``tether cp`` in the server namespace, beside the server; its output is ``name``."""
        proc, watcher = self.net.spawn(
            self.net.server_ns,
            [sys.executable, "-m", "tether.cli", "cp", "--resume-for", f"{RESUME_FOR:g}",
             source, destination],
            env=clean_env(TETHER_SERVER=self.server_url, TETHER_TOKEN=self.token))
        self.procs.append(proc)
        self.watchers[name] = watcher
        return proc, watcher

    def copy_session(self, direction: str) -> dict[str, Any]:
        """The one copy session in ``direction``; it must have ended as complete."""
        rows = [s for s in self.cli("sessions", "list", "--node", self.node_id, "--json")
                if s["kind"] == "copy" and s["target"]["direction"] == direction]
        assert len(rows) == 1, rows
        (row,) = rows
        assert row["ended_at"] is not None and row["end_reason"] == "copy complete", row
        result: dict[str, Any] = row
        return result

    def cut_resume(self, name: str, proc: subprocess.Popen[str], watcher: OutputWatcher,
                   part: PartWatch) -> int:
        """Cut once ``part`` passes CUT_AT; restore once the CLI says it resumes; wait
        for the CLI to exit. The part's size at the cut."""
        started = time.monotonic()
        part.until(f"past {CUT_AT} bytes",
                   lambda: (part.sizes()[-1] or 0) > CUT_AT or proc.poll() is not None,
                   GROW_DEADLINE, self.logs)
        assert proc.poll() is None, f"{name} ended before the cut{self.logs()}"
        self.net.cut()
        cut = time.monotonic()
        at_cut = part.sample()
        assert at_cut is not None and at_cut > CUT_AT
        TIMINGS[f"{name}: start -> {at_cut / 2**20:.1f} MiB held, link cut"] = cut - started
        NOTES.append(f"{name}: {at_cut / (cut - started) / 2**20:.2f} MiB/s before the cut "
                     "(including the CLI's start and its checksum of the file)")

        part.until("resuming", lambda: any(RESUMING in line for line in watcher.lines),
                   DETECT_BOUND + 10, self.logs)
        TIMINGS[f"{name}: cut -> CLI says it resumes"] = time.monotonic() - cut
        assert proc.poll() is None, f"{name} gave up{self.logs()}"
        self.net.restore()
        restored = time.monotonic()
        part.until("finished", lambda: proc.poll() is not None, FINISH_DEADLINE, self.logs)
        TIMINGS[f"{name}: restore -> CLI exits"] = time.monotonic() - restored
        TIMINGS[f"{name}: whole copy"] = time.monotonic() - started
        watcher.join(timeout=5)
        assert proc.returncode == 0, f"{name}: exit {proc.returncode}{self.logs()}"
        assert any(VERIFIED in line for line in watcher.lines), self.logs()

        # Resumed, not restarted: from the cut on the part never held less than at the
        # cut; then it was renamed away.
        after = part.sizes(since=cut)
        shrunk = [s for s in after if s is not None and s < at_cut]
        assert not shrunk, f"{name}: the partial file shrank after the cut: {shrunk[:5]}"
        held = [s for s in after if s is not None]
        assert held and max(held) <= SIZE, held[-5:]
        assert after[-1] is None, f"{name}: {part.path} is still there"
        return at_cut


@pytest.fixture
def copy(ppp_network: PppNetwork, tmp_path: Path) -> Iterator[Copy]:
    """The server (short keepalive, as in ``test_cellular``), started."""
    field = Copy(ppp_network, tmp_path)
    try:
        field.start_server()
        yield field
    finally:
        field.stop()  # the network's teardown kills whatever is left in its namespaces


def random_file(path: Path) -> str:
    """SIZE random bytes at ``path``; their SHA-256."""
    with open(path, "wb") as f:
        for _ in range(SIZE // 2**20):
            f.write(os.urandom(2**20))
    return sha256_of(path)




def test_upload_of_50_mib_without_a_cut_verifies(copy: Copy, tmp_path: Path) -> None:
    """The baseline of the cut test below: the same upload with the link left alone."""
    copy.start_agent()
    copy.wait_online()
    source = tmp_path / "source.bin"
    digest = random_file(source)
    target = copy.device_tmp / "upload.bin"
    proc, watcher = copy.cp("upload", str(source), f"{copy.node_id}:{target}")
    started = time.monotonic()
    try:
        proc.wait(timeout=FINISH_DEADLINE)
    except subprocess.TimeoutExpired:
        pytest.fail(f"upload not done within {FINISH_DEADLINE} s{copy.logs()}")
    TIMINGS["upload without a cut: whole copy"] = time.monotonic() - started
    watcher.join(timeout=5)
    assert proc.returncode == 0, f"upload: exit {proc.returncode}{copy.logs()}"
    assert any(VERIFIED in line for line in watcher.lines), copy.logs()
    assert sha256_of(target) == digest, "the device's file differs from the source"


def test_upload_of_50_mib_cut_mid_copy_resumes_and_verifies(copy: Copy,
                                                            tmp_path: Path) -> None:
    copy.start_agent()
    copy.wait_online()
    source = tmp_path / "source.bin"
    digest = random_file(source)
    target = copy.device_tmp / "upload.bin"
    part = PartWatch(copy.device_tmp / f".{target.name}.{digest[:16]}.tether-part")
    proc, watcher = copy.cp("upload", str(source), f"{copy.node_id}:{target}")
    copy.cut_resume("upload", proc, watcher, part)
    assert sha256_of(target) == digest, "the device's file differs from the source"
    assert list(copy.device_tmp.glob("*.tether-part")) == []
    session = copy.copy_session("to_node")
    NOTES.append(f"upload session: {session['bytes_to_node']} bytes to the node "
                 f"({session['bytes_to_node'] / SIZE:.3f} x the file)")
    # Restarted from 0, the relayed bytes would be the file plus what was held at the cut.
    assert SIZE <= session["bytes_to_node"] < SIZE + CUT_AT, session


def test_download_of_50_mib_cut_mid_copy_resumes_and_verifies(copy: Copy,
                                                              tmp_path: Path) -> None:
    copy.start_agent()
    copy.wait_online()
    remote = copy.device_tmp / "remote.bin"  # the device's file, written through the fs
    digest = random_file(remote)
    local = tmp_path / "download.bin"
    part = PartWatch(local.with_name(local.name + ".tether-part"))
    proc, watcher = copy.cp("download", f"{copy.node_id}:{remote}", str(local))
    copy.cut_resume("download", proc, watcher, part)
    assert sha256_of(local) == digest, "the downloaded file differs from the device's"
    assert not part.path.exists()
    session = copy.copy_session("from_node")
    NOTES.append(f"download session: {session['bytes_from_node']} bytes from the node "
                 f"({session['bytes_from_node'] / SIZE:.3f} x the file)")
    # Restarted from 0, the relayed bytes would be the file plus what was held at the cut.
    assert SIZE <= session["bytes_from_node"] < SIZE + CUT_AT, session
