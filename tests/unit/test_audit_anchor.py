"""DATA/audit-anchor: two slots written in place; a torn write falls back one record,
an edited one is refused."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest

from tether.server.access.audit_chain import sign_checkpoint
from tether.server.store.audit_anchor import SLOT, AnchorError, AnchorFile, read_anchor

KEY = b"k" * 32


def anchored(path: Path, upto: int) -> None:
    f = AnchorFile(path, KEY)
    for seq in range(1, upto + 1):
        f.write(sign_checkpoint(KEY, seq, f"{seq:064x}", 1700000000.0 + seq))
    f.close()


def test_the_newest_of_the_two_slots_is_the_anchor(tmp_path: Path) -> None:
    path = tmp_path / "audit-anchor"
    assert read_anchor(path, KEY) is None
    anchored(path, 1)
    assert read_anchor(path, KEY).seq == 1  # type: ignore[union-attr]
    anchored(path, 7)
    anchor = read_anchor(path, KEY)
    assert anchor is not None and (anchor.seq, anchor.hash) == (7, f"{7:064x}")
    assert path.stat().st_size == 2 * SLOT
    assert path.stat().st_mode & 0o777 == 0o600


def test_a_torn_write_falls_back_to_the_record_before(tmp_path: Path) -> None:
    path = tmp_path / "audit-anchor"
    anchored(path, 8)  # 8 is in slot 0, 7 in slot 1
    data = bytearray(path.read_bytes())
    data[40:SLOT] = b"\x00" * (SLOT - 40)  # the power went out halfway through slot 0
    path.write_bytes(bytes(data))
    anchor = read_anchor(path, KEY)
    assert anchor is not None and anchor.seq == 7


@pytest.mark.parametrize("how", ["edited", "another key", "junk", "empty"])
def test_an_edited_or_foreign_anchor_is_refused(tmp_path: Path, how: str) -> None:
    path = tmp_path / "audit-anchor"
    anchored(path, 3)
    data = path.read_bytes()
    if how == "edited":
        body = json.loads(data[:SLOT])
        data = json.dumps({**body, "seq": 99}).encode().ljust(SLOT) + data[SLOT:]
    elif how == "another key":
        cp = sign_checkpoint(b"other", 4, "0" * 64, 0.0)
        data = json.dumps(dataclasses.asdict(cp)).encode().ljust(SLOT) + data[SLOT:]
    elif how == "junk":
        data = b"not an anchor at all\n"
    else:
        data = b""
    path.write_bytes(data)
    with pytest.raises(AnchorError):
        read_anchor(path, KEY)


def test_a_symlink_in_its_place_is_not_followed(tmp_path: Path) -> None:
    target = tmp_path / "elsewhere"
    target.write_text("precious\n")
    (tmp_path / "audit-anchor").symlink_to(target)
    with pytest.raises(OSError):
        AnchorFile(tmp_path / "audit-anchor", KEY).write(sign_checkpoint(KEY, 1, "0" * 64, 0.0))
    assert target.read_text() == "precious\n"


def test_a_later_record_in_a_slot_is_never_replaced_by_an_earlier_one(tmp_path: Path) -> None:
    """Two processes append to one log (the server and ``tether admin recover``); the
    one that committed first may write its anchor last. Its checkpoint must not take
    the place of the later one, and each writer sees what the other wrote."""
    path = tmp_path / "audit-anchor"
    server, recover = AnchorFile(path, KEY), AnchorFile(path, KEY)
    assert server.write(sign_checkpoint(KEY, 1, f"{1:064x}", 1.0))
    assert recover.write(sign_checkpoint(KEY, 3, f"{3:064x}", 3.0))  # slot 1, over 1
    assert server.read() == recover.read() == read_anchor(path, KEY)
    assert server.read().seq == 3  # type: ignore[union-attr]
    assert not server.write(sign_checkpoint(KEY, 1, f"{1:064x}", 4.0))  # late: left alone
    assert server.write(sign_checkpoint(KEY, 2, f"{2:064x}", 5.0))  # the other slot: fine
    assert read_anchor(path, KEY).seq == 3  # type: ignore[union-attr]
    # A slot signed with another key (junk) does not hold a write back.
    cp = sign_checkpoint(b"other", 99, "0" * 64, 0.0)
    data = path.read_bytes()
    path.write_bytes(data[:SLOT] + json.dumps(dataclasses.asdict(cp)).encode().ljust(SLOT))
    assert server.read().seq == 2  # type: ignore[union-attr]
    assert server.write(sign_checkpoint(KEY, 5, f"{5:064x}", 6.0))
    assert read_anchor(path, KEY).seq == 5  # type: ignore[union-attr]
