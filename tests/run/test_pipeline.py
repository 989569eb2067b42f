import json
import subprocess
import sys

import pytest

from conftest import cli_here, write_csv
from textpipe.core.models import ModelConfig
from textpipe.run.config import DataConfig, PipelineConfig
from textpipe.run.phases import train_files
from textpipe.run.counts import label_order
from textpipe.text.sources import DataError
from textpipe.text.tokenizer import TokenizerConfig
from textpipe.core.train import TrainConfig


def textpipe_cli(*args, input=None):
    return subprocess.run([sys.executable, "-m", "textpipe", *map(str, args)], capture_output=True, text=True, input=input)


def test_same_seed_same_metrics_file(toy_files, tmp_path, tiny_config):
    train, _, test = toy_files
    config = lambda: tiny_config(train={"epochs": 3, "seed": 5})  # noqa: E731
    train_files(train, test, tmp_path / "run1", config=config(), quiet=True)
    train_files(train, test, tmp_path / "run2", config=config(), quiet=True)
    first, second = (tmp_path / "run1" / "metrics.json").read_bytes(), (tmp_path / "run2" / "metrics.json").read_bytes()
    assert first == second
    assert (tmp_path / "run1" / "weights.safetensors").read_bytes() == (tmp_path / "run2" / "weights.safetensors").read_bytes()


def test_learns_the_toy_task_with_held_out_dev(toy_files, tmp_path):
    train, _, test = toy_files
    metrics = train_files(train, test, tmp_path / "run", config=PipelineConfig(train=TrainConfig(epochs=8, lr=0.02)), quiet=True)
    assert metrics["test"]["n"] == 100
    assert metrics["test"]["accuracy"] >= 0.95
    assert 25 <= metrics["dev"]["n"] <= 55  # about one in 10 of the 400 training rows


def test_refit_ships_a_model_trained_on_every_training_row_for_the_best_epoch_count(toy_files, tmp_path):
    train, _, test = toy_files
    # The bag alone: the NB linear path's mix is chosen on the held-out rows, which the run by hand has not.
    config = PipelineConfig(model=ModelConfig(nb_linear=False), train=TrainConfig(epochs=4, lr=0.02))
    metrics = train_files(train, test, tmp_path / "refit", config=config, quiet=True)
    epochs = metrics["best_epoch"]
    assert metrics["refit"]["rows"] == 400 and metrics["refit"]["epochs"] == epochs
    assert [h["epoch"] for h in metrics["refit"]["history"]] == list(range(1, epochs + 1))
    assert len(metrics["history"]) == 4 and metrics["dev"]["n"] < 400  # the first phase, scored on held-out rows

    # The same model, trained by hand: all 400 rows, `epochs` epochs, no refit. (Its "dev" is the
    # training file, so early stopping keeps the last epoch, whose training accuracy is 1.0.)
    by_hand = PipelineConfig(model=ModelConfig(nb_linear=False), train=TrainConfig(epochs=epochs, lr=0.02, refit=False))
    manual = train_files(train, test, tmp_path / "by-hand", dev=train, config=by_hand, quiet=True)
    assert manual["best_epoch"] == epochs and "refit" not in manual
    assert (tmp_path / "refit" / "weights.safetensors").read_bytes() == (tmp_path / "by-hand" / "weights.safetensors").read_bytes()


def test_no_refit_with_a_dev_file_or_when_turned_off(toy_files, tmp_path):
    train, dev, test = toy_files
    config = lambda refit: PipelineConfig(train=TrainConfig(epochs=2, lr=0.02, refit=refit))  # noqa: E731
    assert "refit" not in train_files(train, test, tmp_path / "dev-file", dev=dev, config=config(True), quiet=True)
    assert "refit" not in train_files(train, test, tmp_path / "off", config=config(False), quiet=True)


def test_cli_train_evaluate_predict(toy_files, tmp_path):
    train, dev, test = toy_files
    out = tmp_path / "run"
    result = textpipe_cli("train", "--train", train, "--dev", dev, "--test", test, "--out", out, "--epochs", "5", "--lr", "0.02", "--quiet")
    assert result.returncode == 0, result.stderr
    assert f"model bundle: {out}" in result.stdout
    saved = json.loads((out / "metrics.json").read_text())
    assert set(saved["test"]) >= {"accuracy", "macro_f1", "n"}

    result = textpipe_cli("evaluate", "--model", out, "--data", test)
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout) == saved["test"]

    texts = tmp_path / "texts.txt"
    texts.write_text("a superb lovely film\nawful boring plot\n")
    result = textpipe_cli("predict", "--model", out, "what a gorgeous movie", "--input", texts)
    assert result.returncode == 0, result.stderr
    lines = [json.loads(line) for line in result.stdout.splitlines()]
    assert [r["text"] for r in lines] == ["what a gorgeous movie", "a superb lovely film", "awful boring plot"]
    assert [r["label"] for r in lines] == ["pos", "pos", "neg"]
    assert all(abs(sum(r["probs"].values()) - 1) < 1e-4 for r in lines)


def test_cli_bad_row_is_one_clear_line_and_exit_2(toy_files, tmp_path):
    train, _, test = toy_files
    bad = tmp_path / "bad.csv"
    bad.write_text(train.read_text() + "pos\n")
    lines = bad.read_text().count("\n")
    result = cli_here("train", "--train", bad, "--test", test, "--out", tmp_path / "run", "--quiet")
    assert result.returncode == 2
    assert result.stderr.strip() == f"textpipe train: error: {bad}:{lines}: expected 2 columns, found 1"


def test_cli_bad_row_read_in_a_worker_is_still_one_line(toy_files, tmp_path):
    train, _, test = toy_files
    bad_dev = write_csv(tmp_path / "bad_dev.csv", [("pos", "good film"), ("neg",)])
    result = textpipe_cli("train", "--train", train, "--dev", bad_dev, "--test", test, "--out", tmp_path / "run", "--num-workers", "2", "--quiet")
    assert result.returncode == 2
    assert result.stderr.strip() == f"textpipe train: error: {bad_dev}:3: expected 2 columns, found 1"


def test_cli_label_unseen_in_training_at_evaluate(toy_files, tmp_path):
    train, _, test = toy_files
    out = tmp_path / "run"
    assert textpipe_cli("train", "--train", train, "--test", test, "--out", out, "--epochs", "1", "--quiet").returncode == 0
    odd = write_csv(tmp_path / "odd.csv", [("pos", "good film"), ("meh", "so so")])
    result = cli_here("evaluate", "--model", out, "--data", odd)
    assert result.returncode == 2
    assert f"{odd}:3: label 'meh' is not one of the model's labels ('neg', 'pos')" in result.stderr


def test_cli_usage_errors_exit_2(tmp_path):
    assert cli_here("train", "--out", tmp_path).returncode == 2
    assert cli_here("predict", "--model", tmp_path).returncode == 2
    assert cli_here("frobnicate").returncode == 2
    result = cli_here("train", "--train", "a.csv", "--test", "b.csv", "--out", tmp_path, "--epochs", "0")
    assert result.returncode == 2 and "epochs, batch_size and patience must be >= 1" in result.stderr


def test_trains_with_two_dataloader_workers(toy_files, tmp_path):
    train, _, test = toy_files
    config = PipelineConfig(data=DataConfig(num_workers=2), train=TrainConfig(epochs=4, lr=0.02))
    metrics = train_files(train, test, tmp_path / "run", config=config, quiet=True)
    assert metrics["test"]["accuracy"] >= 0.9


@pytest.mark.slow
def test_accuracy_floor_on_real_data(shared_dataset, tmp_path):
    """TREC-6 question types, basic_english tokens: well above the 0.188 majority class."""
    folder = shared_dataset("trec6")
    config = PipelineConfig(tokenizer=TokenizerConfig("basic_english"), train=TrainConfig(epochs=20, refit=False))  # the refit has tests of its own
    metrics = train_files(folder / "train.csv", folder / "test.csv", tmp_path / "run", config=config, quiet=True)
    assert metrics["test"]["n"] == 500
    assert metrics["test"]["accuracy"] >= 0.80


def test_pipeline_config_round_trips_and_rejects_unknown_keys():
    config = PipelineConfig(train=TrainConfig(epochs=3, lr=0.02), model=ModelConfig(name="cnn"))
    assert PipelineConfig.from_dict(json.loads(json.dumps(config.to_dict()))).to_dict() == config.to_dict()
    assert PipelineConfig.from_dict({"train": {"epochs": 2}}).train.epochs == 2
    with pytest.raises(ValueError, match="unknown keys in \\[train\\]: epoch"):
        PipelineConfig.from_dict({"train": {"epoch": 2}})
    with pytest.raises(ValueError, match="unknown config sections: trian"):
        PipelineConfig.from_dict({"trian": {}})


def test_a_file_too_small_to_hold_rows_out_is_one_clear_error(tmp_path):
    rows = [("pos", "good movie"), ("neg", "bad movie"), ("pos", "great fun"), ("neg", "awful mess"), ("pos", "lovely")]
    train = write_csv(tmp_path / "train.csv", rows)  # none of rows 0-4 is among textpipe's held-out rows
    with pytest.raises(DataError, match="too few rows to hold any out for early stopping.*--dev"):
        train_files(train, train, tmp_path / "run", config=PipelineConfig(train=TrainConfig(epochs=1)), quiet=True)
    assert train_files(train, train, tmp_path / "with-dev", dev=train, config=PipelineConfig(train=TrainConfig(epochs=1)), quiet=True)["test"]["n"] == 5


def test_a_small_file_gets_a_small_n_gram_table_and_the_run_records_it(tmp_path):
    from textpipe.run.counts import ngram_table

    rows = [("pos", "a good film , truly good"), ("neg", "a bad film , truly bad")] * 3 + [("pos", "great fun"), ("neg", "dull")]
    train = write_csv(tmp_path / "train.csv", rows)  # 44 tokens, 9 different bigrams
    config = PipelineConfig(train=TrainConfig(epochs=1, keep_checkpoints=0, refit=False))  # the default's cap, 2**18 rows
    train_files(train, None, tmp_path / "run", dev=train, config=config, quiet=True)
    table = json.loads((tmp_path / "run" / "run.json").read_text())["ngram_table"]
    assert table == ngram_table(config.model, 9) and table["rows"] == 128 and table["cap"] == 2**18
    assert json.loads((tmp_path / "run" / "bundle.json").read_text())["model"]["ngram_buckets"] == 128
    assert json.loads((tmp_path / "run" / "config.json").read_text())["model"]["ngram_buckets"] == 2**18  # the config keeps the cap
    assert (tmp_path / "run" / "weights.safetensors").stat().st_size < 200_000  # 68 MB before
    predicted = textpipe_cli("predict", "--model", tmp_path / "run", "a good film")
    assert predicted.returncode == 0, predicted.stderr


def test_the_n_gram_table_rule():
    from textpipe.run.counts import ngram_count_limit, ngram_table

    assert [ngram_table(ModelConfig(), n)["rows"] for n in (0, 1, 13, 16, 17, 32_768, 32_769, 10**6)] == [8, 8, 128, 128, 256, 2**18, 2**18, 2**18]
    assert ngram_table(ModelConfig(ngram_buckets=1000), 10**6)["rows"] == 1000 and ngram_table(ModelConfig(ngram_buckets=0), 50)["rows"] == 0
    assert ngram_count_limit(ModelConfig()) == (2, 2**15 + 1) and ngram_count_limit(ModelConfig(name="cnn")) == (1, 0)  # cnn: no table


@pytest.mark.parametrize("dataset, config", [("mr", "default"), ("mr", "best.toml"), ("trec6", "default")])
def test_the_golden_datasets_keep_todays_n_gram_table(shared_dataset, dataset, config):
    """The golden runs' weights stay bit for bit: their files have enough n-grams for the cap (rotten_tomatoes: 109,217)."""
    import tomllib
    from pathlib import Path

    from textpipe.run.counts import count_training_file, ngram_count_limit, ngram_table
    from textpipe.text.tokenizer import Tokenizer

    model = ModelConfig() if config == "default" else ModelConfig(**tomllib.loads((Path(__file__).parents[2] / "configs" / config).read_text())["model"])
    counts = count_training_file(shared_dataset(dataset) / "train.csv", 10, Tokenizer(), DataConfig(cache_dir=None), quiet=True, ngrams=ngram_count_limit(model))
    assert ngram_table(model, counts.ngrams)["rows"] == model.ngram_buckets


def test_label_order_sorts_integer_labels_as_numbers_and_the_rest_as_text():
    assert label_order(["10", "2", "1"]) == ["1", "2", "10"]
    assert label_order(["b", "10", "a"]) == ["10", "a", "b"]


def test_labels_that_look_like_sets_hint_at_multi_label(tmp_path, caplog):
    from textpipe.run.config import DataConfig
    from textpipe.run.counts import count_training_file
    from textpipe.text.tokenizer import Tokenizer

    path = tmp_path / "t.csv"
    path.write_text("label,text\n" + "".join(f"{lab},text {i}\n" for i, lab in enumerate(["a|b", "a", "b", "a|b"] * 5)), encoding="utf-8")
    with caplog.at_level("WARNING", logger="textpipe"):
        count_training_file(path, 0, Tokenizer(), DataConfig(cache_dir=None))
    assert "look like sets of labels ('a|b')" in caplog.text and "--multi-label" in caplog.text
    caplog.clear()
    with caplog.at_level("WARNING", logger="textpipe"):
        count_training_file(path, 0, Tokenizer(), DataConfig(cache_dir=None, source={"label_sep": "|"}))
    assert "look like sets" not in caplog.text
