"""The run folder's checks before training: free space for the worst case of checkpoints and bundle."""

from collections import namedtuple

import torch

from textpipe.core.checkpoint import OutputError
from textpipe.run import folder as runfolder


def test_free_space_below_the_worst_case_only_warns(tmp_path, monkeypatch, caplog):
    model = torch.nn.Linear(250, 1000)  # about 1 MB of weights
    weights = sum(p.numel() * 4 for p in model.parameters())
    usage = namedtuple("usage", "total used free")
    for free, outcome in [(weights * 3, "error"), (weights * 5, "warning"), (weights * 20, "")]:
        monkeypatch.setattr(runfolder.shutil, "disk_usage", lambda path, free=free: usage(10**12, 10**12 - free, free))
        caplog.clear()
        try:
            with caplog.at_level("WARNING", logger="textpipe"):
                runfolder.check_free_space(tmp_path, model, keep=2, quiet=False)
        except OutputError as err:
            assert outcome == "error", err
        else:
            assert outcome != "error"
        assert ("MB free" in caplog.text) == (outcome == "warning"), free
