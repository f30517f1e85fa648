"""Small outputs: held in memory while small and contiguous, else in the blob store."""

from __future__ import annotations

from pathlib import Path

from tether.server.blobs import FolderBlobStore
from tether.server.dispatch.small_outputs import SmallOutputs

KEY = "outputs/c1/mi-0123456789abcdef0.stdout"


def make(tmp_path: Path, limit: int = 16, budget: int = 1000) -> tuple[SmallOutputs,
                                                                        FolderBlobStore]:
    blobs = FolderBlobStore(tmp_path / "blobs")
    return SmallOutputs(blobs, limit=limit, budget=budget), blobs


def test_small_output_is_held_not_written(tmp_path: Path) -> None:
    small, blobs = make(tmp_path)
    small.write_at(KEY, 0, b"hello ")
    small.write_at(KEY, 6, b"world")
    small.write_at(KEY, 0, b"hello ")  # re-sent after a reconnect: same bytes, same place
    assert small.size(KEY) == 11 and small.held_bytes == 11
    assert blobs.size(KEY) == 0 and small.peek(KEY) == b"hello world"
    assert small.take(KEY) == b"hello world"
    assert small.held_bytes == 0 and not small.holds(KEY) and small.take(KEY) is None


def test_growing_past_the_limit_moves_everything_to_the_blob(tmp_path: Path) -> None:
    small, blobs = make(tmp_path, limit=8)
    small.write_at(KEY, 0, b"12345")
    small.write_at(KEY, 5, b"67890")
    assert not small.holds(KEY) and small.held_bytes == 0
    assert blobs.read(KEY) == b"1234567890" and small.size(KEY) == 10


def test_large_first_slice_and_gaps_go_to_the_blob(tmp_path: Path) -> None:
    small, blobs = make(tmp_path, limit=8)
    small.write_at(KEY, 0, b"x" * 9)
    assert not small.holds(KEY) and blobs.size(KEY) == 9
    other = KEY.replace("stdout", "stderr")
    small.write_at(other, 0, b"ab")
    small.write_at(other, 4, b"ef")  # a gap: the blob store keeps positions
    assert not small.holds(other) and blobs.read(other) == b"ab\0\0ef"


def test_budget_bounds_what_is_held(tmp_path: Path) -> None:
    small, blobs = make(tmp_path, limit=8, budget=10)
    keys = [f"outputs/c1/mi-0123456789abcdef{i}.stdout" for i in range(3)]
    for key in keys:
        small.write_at(key, 0, b"12345")
    assert [small.holds(k) for k in keys] == [True, True, False]
    assert small.held_bytes == 10 and blobs.read(keys[2]) == b"12345"


def test_spill_keeps_the_bytes(tmp_path: Path) -> None:
    small, blobs = make(tmp_path)
    small.write_at(KEY, 0, b"partial")
    small.spill(KEY)
    assert not small.holds(KEY) and blobs.read(KEY) == b"partial"
