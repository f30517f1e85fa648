"""``tether.partfile`` on real files: what it installs, and what it will not touch.

The refusals of planted symlinks, hard links, FIFOs and other owners' files are
shown through the copy helper (``test_filehelper.py``) and the CLI
(``tests/integration/test_hostile_copy.py``); here are the parts only this
module can show: a part swapped under its name, renames out of the folder, the
umask as the process has it.
"""

from __future__ import annotations

import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from tether.partfile import PartFile, PartRefused, current_umask


def test_a_new_part_is_ours_owner_only_and_installs_with_the_masked_mode(
        tmp_path: Path) -> None:
    with PartFile.open(str(tmp_path), "f.part") as part:
        assert part.held == 0
        assert stat.S_IMODE(os.fstat(part.file.fileno()).st_mode) == 0o600 & ~current_umask()
        part.file.write(b"hello")
        assert part.size() == 5
        part.install("f", 0o6777)
    assert (tmp_path / "f").read_bytes() == b"hello"
    assert stat.S_IMODE((tmp_path / "f").stat().st_mode) == 0o777 & ~current_umask()
    assert not (tmp_path / "f.part").exists()


def test_a_resumed_part_keeps_what_it_holds_unless_it_holds_too_much(tmp_path: Path) -> None:
    (tmp_path / "p").write_bytes(b"abcdef")
    with PartFile.open(str(tmp_path), "p") as part:
        assert part.held == 6 and part.resume(10) == 6 and part.file.tell() == 6
    with PartFile.open(str(tmp_path), "p") as part:
        assert part.resume(3) == 0 and part.size() == 0


def test_a_part_replaced_under_its_name_is_not_installed(tmp_path: Path) -> None:
    with PartFile.open(str(tmp_path), "p") as part:
        part.file.write(b"ours")
        os.rename(tmp_path / "p", tmp_path / "moved")
        (tmp_path / "p").write_bytes(b"theirs")
        with pytest.raises(PartRefused, match="replaced during the copy"):
            part.install("target", 0o644)
        part.discard()  # leaves their file alone: it is not ours
    assert not (tmp_path / "target").exists()
    assert (tmp_path / "p").read_bytes() == b"theirs"


@pytest.mark.parametrize("name", ["../x", "a/b", "", ".", ".."])
def test_renames_and_parts_stay_in_their_folder(tmp_path: Path, name: str) -> None:
    with pytest.raises(PartRefused, match="not a file name"):
        PartFile.open(str(tmp_path), name)
    with PartFile.open(str(tmp_path), "p") as part, \
            pytest.raises(PartRefused, match="not a file name"):
        part.install(name, 0o644)


def test_a_missing_folder_is_refused(tmp_path: Path) -> None:
    with pytest.raises(PartRefused, match="cannot write in"):
        PartFile.open(str(tmp_path / "absent"), "p")


@pytest.mark.parametrize("umask", [0o000, 0o022, 0o077, 0o277])
def test_the_umask_is_read_as_the_process_has_it(umask: int) -> None:
    probe = "from tether.partfile import current_umask; print(current_umask())"
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True,
                         check=True, umask=umask, timeout=30).stdout
    assert int(out) == umask
