"""Checkpoint storage that cannot be written: a :class:`StateError` naming the file, which
no restart retries (a full disk does not empty itself by trying again)."""

from __future__ import annotations

import os

import pytest

from aioflow._core.checkpoint.storage import SectionWriter, storage_at
from aioflow._core.errors import StateError


def test_a_full_disk_while_writing_a_section_is_a_state_error_naming_the_file(tmp_path):
    writer = SectionWriter(tmp_path / "sections.delta", full=False, tables=(1,))
    full = os.open("/dev/full", os.O_WRONLY)  # every write: ENOSPC, as on a full disk
    try:
        os.dup2(full, writer._fd)
    finally:
        os.close(full)
    changes = [(0, b"key %d" % i, b"v" * 1000) for i in range(2000)]  # over the 1 MiB it buffers
    with pytest.raises(StateError, match="the disk is full") as info:
        writer.write(changes, "sections.delta")
    assert str(tmp_path / "sections.delta") in str(info.value)


def test_a_storage_folder_that_cannot_be_made_is_a_state_error(tmp_path):
    storage = storage_at(tmp_path / "checkpoints")
    storage.start_job({"app": "a", "job_id": "j"})
    shared = tmp_path / "checkpoints" / "j" / "shared"
    shared.rmdir()
    shared.write_bytes(b"a file where the folder of sections goes")
    with pytest.raises(StateError, match="checkpoint storage: writing") as info:
        storage.write(iter([(0, b"k", b"v")]), full=False, tables=(1,))
    assert str(shared) in str(info.value)
