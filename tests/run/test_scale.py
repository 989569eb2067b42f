"""The batch size that follows the data (config.batch_choice), recorded in run.json, and --batch-size over it."""

import json

import pytest

from conftest import cli_here, make_rows, write_csv
from textpipe.run import config as config_module
from textpipe.run.config import BATCH_RANGE, REFIT_MAX_ROWS, STEPS_PER_EPOCH, DataConfig, PipelineConfig, batch_choice, refit_wanted
from textpipe.core.models import ModelConfig
from textpipe.run.phases import train_files
from textpipe.core.train import TrainConfig


@pytest.mark.parametrize("rows", [10, 5_452, 8_636, 9_596, 32 * STEPS_PER_EPOCH * 2 - 1])
def test_small_files_keep_batch_32_and_the_lr(rows):
    choice = batch_choice(TrainConfig(), rows)
    assert (choice["size"], choice["lr"]) == (32, TrainConfig().lr)


def test_large_files_get_larger_batches_up_to_the_cap():
    sizes = [batch_choice(TrainConfig(), rows)["size"] for rows in (64 * STEPS_PER_EPOCH, 256 * STEPS_PER_EPOCH, 10**9)]
    assert sizes == [64, 256, BATCH_RANGE[1]]


def test_a_set_batch_size_is_kept_whatever_the_rows():
    assert batch_choice(TrainConfig(batch_size=16, lr=0.02), 10**7) == {"size": 16, "lr": 0.02, "rows": 10**7, "rule": "train.batch_size"}


def tiny(tmp_path, rows: int = 300):
    return write_csv(tmp_path / "train.csv", make_rows(rows, seed=1)), write_csv(tmp_path / "test.csv", make_rows(60, seed=3))


def test_the_choice_is_recorded_in_run_json_and_config_json(tmp_path, monkeypatch):
    monkeypatch.setattr(config_module, "STEPS_PER_EPOCH", 4)  # 268 training rows / 4: batch 64
    train, test = tiny(tmp_path)
    config = PipelineConfig(data=DataConfig(cache_dir=None), model=ModelConfig(embed_dim=8, ngram_buckets=512), train=TrainConfig(epochs=2))
    train_files(train, test, tmp_path / "run", config=config, quiet=True)
    state = json.loads((tmp_path / "run" / "run.json").read_text())
    assert state["batch"]["size"] == 64 and state["batch"]["rows"] == 268 and state["batch"]["rule"].startswith("auto")
    assert state["config"]["train"]["batch_size"] == "auto", "run.json keeps the config as given"
    assert json.loads((tmp_path / "run" / "config.json").read_text())["train"]["batch_size"] == 64, "config.json: what it trained with"
    assert {"train.count", "train.epochs", "refit.count", "refit.epochs", "score", "save"} <= set(state["seconds"])


def test_the_batch_size_flag_overrides_the_rule(tmp_path, monkeypatch):
    monkeypatch.setattr(config_module, "STEPS_PER_EPOCH", 4)
    train, test = tiny(tmp_path)
    result = cli_here("train", "--train", train, "--test", test, "--out", tmp_path / "run", "--batch-size", "16", "--epochs", "1",
                      "--no-refit", "--set", "data.cache_dir=false", "--set", "model.embed_dim=8")
    assert result.returncode == 0, result.stderr
    assert json.loads((tmp_path / "run" / "run.json").read_text())["batch"] == {"size": 16, "lr": 0.001, "rows": 268, "rule": "train.batch_size"}
    assert "batch_size=16" in result.stderr and "chosen from the" not in result.stderr


def test_refit_auto_refits_small_files_only():
    assert refit_wanted(TrainConfig(), REFIT_MAX_ROWS - 1) and not refit_wanted(TrainConfig(), REFIT_MAX_ROWS)
    assert refit_wanted(TrainConfig(refit=True), 10**7) and not refit_wanted(TrainConfig(refit=False), 10)
    assert refit_wanted(TrainConfig(), None), "before the rows are counted (an autotune's first state): as for a small file"


def test_past_the_refit_threshold_the_early_stopped_model_ships(tmp_path, monkeypatch):
    monkeypatch.setattr(config_module, "REFIT_MAX_ROWS", 268)  # the train phase's rows: 300 less the 32 held out
    train, test = tiny(tmp_path)
    config = PipelineConfig(data=DataConfig(cache_dir=None), model=ModelConfig(embed_dim=8, ngram_buckets=512), train=TrainConfig(epochs=2))
    metrics = train_files(train, test, tmp_path / "run", config=config, quiet=True)
    assert "refit" not in metrics and not any(k.startswith("refit.") for k in json.loads((tmp_path / "run" / "run.json").read_text())["seconds"])
    monkeypatch.setattr(config_module, "REFIT_MAX_ROWS", 269)
    assert train_files(train, test, tmp_path / "run2", config=config, quiet=True)["refit"]["rows"] == 300


def test_optimizers_are_built_without_importing_torch_dynamo():
    import subprocess
    import sys

    code = ("import sys, torch; from torch import nn; from textpipe.core.models import ModelConfig, build_model;"
            "from textpipe.core.optim import make_optimizers; from textpipe.core.no_dynamo import LBFGS; from textpipe.core.train import TrainConfig;"
            "opts = make_optimizers(build_model(ModelConfig(vocab_size=50, num_classes=2, ngram_buckets=64)), TrainConfig());"
            "w = torch.zeros(2, requires_grad=True); o = LBFGS([w]); o.step(lambda: (w - 1).pow(2).sum().backward() or (w - 1).pow(2).sum());"
            "[x.zero_grad() for x in opts]; [x.load_state_dict(x.state_dict()) for x in opts];"
            "print('torch._dynamo' in sys.modules)")
    found = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert found.stdout.strip() == "False", found.stderr
