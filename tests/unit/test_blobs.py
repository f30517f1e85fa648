"""The folder blob store: positional writes, and keys that cannot leave the folder."""

from __future__ import annotations

from pathlib import Path

import pytest

from tether.server.blobs import FolderBlobStore, output_key


def test_positional_writes_make_folders_and_rewrite_in_place(tmp_path: Path) -> None:
    store = FolderBlobStore(tmp_path / "outputs")
    key = output_key("c0ffee-1", "mi-0123456789abcdef0", "stdout")
    assert store.size(key) == 0 and store.read(key) == b""
    store.write_at(key, 0, b"hello ")
    store.write_at(key, 6, b"world")
    store.write_at(key, 0, b"hello ")  # a slice sent again after a reconnect
    assert store.read(key) == b"hello world" and store.size(key) == 11
    assert store.read(key, 6, 3) == b"wor"
    assert (tmp_path / "outputs" / "outputs" / "c0ffee-1").is_dir()


@pytest.mark.parametrize("key", [
    "../escape", "outputs/../../escape", "/etc/passwd", "outputs//x", "outputs/.hidden",
    "outputs/a b", "", "outputs/x\n"])
def test_keys_that_could_leave_the_folder_are_refused(tmp_path: Path, key: str) -> None:
    store = FolderBlobStore(tmp_path / "outputs")
    with pytest.raises(ValueError, match="not a blob key"):
        store.write_at(key, 0, b"x")
    with pytest.raises(ValueError, match="not a blob key"):
        store.read(key)
    assert list((tmp_path / "outputs").iterdir()) == []
