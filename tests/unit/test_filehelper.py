"""The copy helper on its own: a real child process, real files, its pipe protocol.

The agent starts it as the session user; here it runs as whoever runs the tests,
which is enough to check what it refuses, how it resumes and what it reports.
"""

from __future__ import annotations

import hashlib
import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest

HELPER = [sys.executable, "-m", "tether.agent.filehelper"]


def helper(*args: str, data: bytes = b"", umask: int = 0o022
           ) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run([*HELPER, *args], input=data, capture_output=True, timeout=30,
                          check=False, umask=umask)


def test_read_sends_header_rest_of_file_and_whole_digest(tmp_path: Path) -> None:
    body = os.urandom(300_000)
    src = tmp_path / "f.bin"
    src.write_bytes(body)
    src.chmod(0o640)
    done = helper("read", str(src), "1000")
    assert done.returncode == 0, done.stderr
    header, _, rest = done.stdout.partition(b"\n")
    assert header == f"ok {len(body)} {0o640}".encode()
    assert rest == body[1000:]
    assert done.stderr.decode().strip() == hashlib.sha256(body).hexdigest()


def test_read_refusals(tmp_path: Path) -> None:
    small = tmp_path / "small"
    small.write_bytes(b"abc")
    for args, words in ((("read", str(tmp_path), "0"), "Is a directory"),
                        (("read", str(tmp_path / "missing"), "0"), "No such file"),
                        (("read", str(small), "4"), "shorter")):
        done = helper(*args)
        assert done.returncode == 1
        assert done.stdout.startswith(b"error ") and words.encode() in done.stdout, done.stdout


def _write(target: Path, body: bytes, *, force: bool = False, sent: bytes | None = None,
           mode: int = 0o600, umask: int = 0o022) -> subprocess.CompletedProcess[bytes]:
    digest = hashlib.sha256(body).hexdigest()
    return helper("write", str(target), str(len(body)), digest, str(mode),
                  "1" if force else "0", data=body if sent is None else sent, umask=umask)


def _part(target: Path, body: bytes) -> Path:
    """Where the helper keeps the partial file of ``body`` for ``target``."""
    return target.with_name(f".{target.name}.{hashlib.sha256(body).hexdigest()[:16]}"
                            ".tether-part")


def test_write_checks_renames_and_sets_the_mode(tmp_path: Path) -> None:
    body = os.urandom(200_000)
    target = tmp_path / "out.bin"
    done = _write(target, body, mode=0o751)
    assert done.stdout == b"ok 0\ndone\n", done
    assert target.read_bytes() == body
    assert target.stat().st_mode & 0o7777 == 0o751
    assert not list(tmp_path.glob(".*tether-part"))
    again = _write(target, body)
    assert again.returncode == 1 and b"exists on the device" in again.stdout
    forced = _write(target, body[:10], force=True)
    assert forced.stdout.endswith(b"done\n") and target.read_bytes() == body[:10]


def test_an_interrupted_write_resumes_and_a_wrong_one_is_removed(tmp_path: Path) -> None:
    body = os.urandom(500_000)
    target = tmp_path / "resumed.bin"
    first = _write(target, body, sent=body[:123_456])  # the link dropped here
    assert first.returncode == 1 and b"checksum mismatch" in first.stdout
    # A mismatch removes the part: the next attempt starts over, and completes.
    assert not list(tmp_path.glob(".*tether-part"))
    digest = hashlib.sha256(body).hexdigest()
    part = tmp_path / f".resumed.bin.{digest[:16]}.tether-part"
    part.write_bytes(body[:123_456])  # what a cut attempt leaves behind
    resumed = _write(target, body, sent=body[123_456:])
    assert resumed.stdout == b"ok 123456\ndone\n", resumed
    assert target.read_bytes() == body and not part.exists()


def test_write_refusals(tmp_path: Path) -> None:
    body = b"x"
    for target, words in ((tmp_path, "is a directory"),
                          (tmp_path / "nope" / "f", "does not exist"),
                          (Path("relative"), "not an absolute path")):
        done = _write(target, body)
        assert done.returncode == 1 and words.encode() in done.stdout, done.stdout


def test_write_never_sets_setuid_setgid_sticky_and_applies_the_umask(tmp_path: Path) -> None:
    """Issue 12 #1, device side: an upload's mode is its permission bits minus the umask."""
    body = b"#!/bin/sh\necho hi\n"
    for mode, umask, expected in ((0o6777, 0o022, 0o755), (0o4755, 0o077, 0o700),
                                  (0o1777, 0o002, 0o775), (0o640, 0o022, 0o640)):
        target = tmp_path / f"f{mode:o}-{umask:o}"
        done = _write(target, body, mode=mode, umask=umask)
        assert done.stdout == b"ok 0\ndone\n", done
        assert stat.S_IMODE(target.stat().st_mode) == expected, (oct(mode), oct(umask))


def _refused_and_untouched(target: Path, body: bytes, victim: Path, words: str) -> None:
    before = (victim.read_bytes(), victim.stat().st_mode, victim.stat().st_mtime_ns)
    done = _write(target, body, mode=0o6777)
    assert done.returncode == 1, done
    assert done.stdout.startswith(b"error ") and words.encode() in done.stdout, done.stdout
    assert b"remove" in done.stdout  # says what to do
    after = (victim.read_bytes(), victim.stat().st_mode, victim.stat().st_mtime_ns)
    assert after == before
    assert not target.exists()


def test_a_symlink_named_like_the_part_file_is_refused_not_followed(tmp_path: Path) -> None:
    """Issue 12 #8: a local user's symlink must not make the copy write or chmod its target."""
    victim = tmp_path / "victim.conf"
    victim.write_bytes(b"the owner's file\n")
    victim.chmod(0o600)
    body = os.urandom(10_000)
    target = tmp_path / "upload.bin"
    part = _part(target, body)
    part.symlink_to(victim)
    _refused_and_untouched(target, body, victim, "is a symbolic link")
    assert part.is_symlink()  # left for the operator to look at
    part.unlink()
    part.symlink_to(tmp_path / "nothing-here")  # dangling: O_EXCL does not create through it
    done = _write(target, body)
    assert done.returncode == 1 and b"is a symbolic link" in done.stdout, done.stdout
    assert not (tmp_path / "nothing-here").exists()


def test_a_hard_link_or_a_fifo_named_like_the_part_file_is_refused(tmp_path: Path) -> None:
    victim = tmp_path / "victim.conf"
    victim.write_bytes(b"the owner's file\n")
    body = os.urandom(1000)
    target = tmp_path / "upload.bin"
    part = _part(target, body)
    os.link(victim, part)
    _refused_and_untouched(target, body, victim, "has 2 links")
    part.unlink()
    os.mkfifo(part)  # would block an open for writing, and is not a file
    done = _write(target, body)
    assert done.returncode == 1 and b"is not a regular file" in done.stdout, done.stdout


@pytest.mark.skipif(os.geteuid() != 0, reason="making a file another user owns needs root")
def test_a_part_file_owned_by_someone_else_is_refused(tmp_path: Path) -> None:
    body = os.urandom(1000)
    target = tmp_path / "upload.bin"
    part = _part(target, body)
    part.write_bytes(body[:10])  # someone else's "partial file", for us to resume into
    os.chown(part, 65534, 65534)
    _refused_and_untouched(target, body, part, "is owned by uid 65534")
