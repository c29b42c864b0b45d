"""The one atomic writer (dpcache.atomic_io): temp file in the same folder, optional fsync, os.replace."""

from __future__ import annotations

import os
import stat

import pytest

from dpcache import atomic_io
from dpcache.atomic_io import write_atomic, write_text_atomic


def test_writes_creates_folder_and_leaves_no_temp_file(tmp_path):
    target = tmp_path / "sub" / "a.json"
    assert write_text_atomic(target, "one\n") == target
    write_text_atomic(target, "two\n")
    assert target.read_text() == "two\n"
    assert os.listdir(target.parent) == ["a.json"]


def test_failed_write_keeps_the_old_file_and_removes_the_temp(tmp_path):
    target = tmp_path / "a.bin"
    target.write_bytes(b"old")
    seen = []

    def partial(tmp: str) -> None:
        seen.append(tmp)
        with open(tmp, "wb") as f:
            f.write(b"part")
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        write_atomic(target, partial)
    assert target.read_bytes() == b"old" and os.listdir(tmp_path) == ["a.bin"]
    assert os.path.dirname(seen[0]) == str(tmp_path)  # the temp file is in the target's folder


def test_failed_rename_keeps_the_old_file(tmp_path, monkeypatch):
    target = tmp_path / "a.txt"
    target.write_text("old")

    def boom(*_args):
        raise OSError("rename failed")

    monkeypatch.setattr(atomic_io.os, "replace", boom)
    with pytest.raises(OSError, match="rename failed"):
        write_text_atomic(target, "new")
    assert target.read_text() == "old" and os.listdir(tmp_path) == ["a.txt"]


def test_fsync_only_when_asked(tmp_path, monkeypatch):
    synced = []
    real = os.fsync
    monkeypatch.setattr(atomic_io.os, "fsync", lambda fd: (synced.append(fd), real(fd)))
    write_text_atomic(tmp_path / "a", "x")
    assert synced == []
    write_text_atomic(tmp_path / "b", "x", fsync=True)
    assert len(synced) == 1


def test_mode_default_follows_umask_and_can_be_set(tmp_path):
    old = os.umask(0o022)
    try:
        write_text_atomic(tmp_path / "a", "x")
        write_text_atomic(tmp_path / "b", "x", mode=0o600)
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "a").stat().st_mode) == 0o644
    assert stat.S_IMODE((tmp_path / "b").stat().st_mode) == 0o600
