"""The checkpoint store: atomic writes, sha256-checked loads with a fallback, background writes, the newest k kept."""

import errno
import os

import pytest
import torch

from textpipe.core.checkpoint import CheckpointError, CheckpointStore


def test_a_failed_checkpoint_write_leaves_the_previous_one_intact(tmp_path, monkeypatch):
    store = CheckpointStore(tmp_path, keep=2)
    store.save({"weights": torch.ones(3)}, step=1)

    def disk_full(fd):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "fsync", disk_full)
    with pytest.raises(CheckpointError) as err:
        store.save({"weights": torch.zeros(3)}, step=2)
    assert str(err.value) == f"could not write checkpoint {tmp_path}/step-000000002.pt: No space left on device; the previous checkpoint is intact"
    monkeypatch.undo()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["digests.json", "step-000000001.pt"]  # no temporary file left behind
    assert torch.equal(store.load_latest()["weights"], torch.ones(3))



def test_a_damaged_newest_checkpoint_falls_back_to_the_one_before(tmp_path, caplog):
    store = CheckpointStore(tmp_path, keep=2)
    store.save({"weights": torch.ones(3)}, step=1)
    newest = store.save({"weights": torch.zeros(3)}, step=2)
    newest.write_bytes(newest.read_bytes()[:100])
    with caplog.at_level("WARNING", logger="textpipe"):
        assert store.load_latest()["path"].endswith("step-000000001.pt")
    assert "its sha256 is not the one recorded when it was written" in caplog.text



def test_a_background_write_keeps_the_values_of_when_it_was_asked_for(tmp_path):
    store = CheckpointStore(tmp_path, keep=2)
    weights = torch.ones(1000)
    store.save_async({"weights": weights}, step=1)
    weights.zero_()  # training goes on while the file is written
    store.wait()
    assert torch.equal(store.load_latest()["weights"], torch.ones(1000))



def test_a_failed_background_write_is_raised_by_wait(tmp_path, monkeypatch):
    store = CheckpointStore(tmp_path, keep=2)
    monkeypatch.setattr(os, "fsync", lambda fd: (_ for _ in ()).throw(OSError(errno.ENOSPC, "No space left on device")))
    store.save_async({"weights": torch.ones(3)}, step=1)
    with pytest.raises(CheckpointError, match="No space left on device; the previous checkpoint is intact"):
        store.wait()
    store.wait()  # the error is reported once



def test_only_the_newest_k_checkpoints_are_kept(tmp_path):
    store = CheckpointStore(tmp_path, keep=2)
    for step in (5, 10, 15):
        store.save({"step": step}, step=step)
    assert [p.name for p in store.paths()] == ["step-000000010.pt", "step-000000015.pt"]
