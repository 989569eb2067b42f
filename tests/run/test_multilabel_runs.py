"""--multi-label runs: every model trains end to end, the bag with its NB path one-vs-rest per label; what is refused."""

import json

import pytest
import torch

from conftest import TOPICS, cli_here, make_multilabel_rows, write_csv
from textpipe.bundle.store import load_bundle
from textpipe.run.phases import train_files


@pytest.fixture
def multilabel_files(tmp_path):
    return write_csv(tmp_path / "train.csv", make_multilabel_rows(400, seed=1)), write_csv(tmp_path / "test.csv", make_multilabel_rows(100, seed=3))


@pytest.mark.parametrize("model", ["bag", "cnn", "gru", "transformer"])
def test_every_model_trains_multi_label_and_writes_micro_f1(model, multilabel_files, tmp_path, tiny_config):
    train, test = multilabel_files
    config = tiny_config(model={"name": model}, data={"source": {"label_sep": "|"}}, train={"epochs": 3, "lr": 0.02})
    train_files(train, test, tmp_path / "run", config=config, quiet=True)
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert 0 < metrics["test"]["micro_f1"] <= 1 and "micro_f1" in metrics["dev"] and metrics["test"]["n"] == 100
    bundle = load_bundle(tmp_path / "run")
    assert bundle.model_config.multi_label is True and len(json.loads((tmp_path / "run" / "bundle.json").read_text())["multi_label"]["thresholds"]) == 3
    if model == "bag":  # the NB path, one member per label, chosen on dev by micro-F1 and log loss
        nb = metrics["nb_linear"]
        assert nb["dev"]["score"] == "micro_f1" and nb["rows"] == 400 and nb["alpha"] < 1
        assert bundle.model.nb.table.shape[1] == len(TOPICS) and float(bundle.model.nb.alpha) == pytest.approx(nb["alpha"])
        assert metrics["test"]["micro_f1"] > 0.9  # the topic words decide every label: the linear path finds them
        report = (tmp_path / "run" / "report.md").read_text()
        assert "one-vs-rest per label" in report and "dev micro-F1 at 0.5" in report
        assert "| epoch | train_loss | train_accuracy | dev_loss | dev_accuracy | dev_micro_f1 | dev_macro_f1 |" in report  # the metric that picks the epoch


def test_a_multi_label_bag_with_two_labels_has_a_member_for_each(tmp_path, tiny_config):
    rows = [(label.replace("music", "").strip("|").replace("||", "|"), text) for label, text in make_multilabel_rows(300, seed=2)]
    train = write_csv(tmp_path / "train.csv", rows)
    config = tiny_config(data={"source": {"label_sep": "|"}}, train={"epochs": 2, "lr": 0.02, "refit": False})
    train_files(train, None, tmp_path / "run", config=config, quiet=True)
    model = load_bundle(tmp_path / "run").model
    assert model.nb.table.shape[1] == 2 and model.nb.multi_label


def test_the_single_label_bundle_config_has_no_multi_label_key(toy_files, tmp_path, tiny_config):
    train, _, test = toy_files
    train_files(train, test, tmp_path / "run", config=tiny_config(train={"epochs": 1, "lr": 0.02}), quiet=True)
    assert "multi_label" not in json.loads((tmp_path / "run" / "bundle.json").read_text())["model"]
    assert load_bundle(tmp_path / "run").model.nb.table.shape[1] == 1


def test_the_sentence_encoder_with_multi_label_is_refused(multilabel_files, tmp_path):
    train, test = multilabel_files
    result = cli_here("train", "--train", train, "--test", test, "--multi-label", "--encoder", "minilm-l6", "--out", tmp_path / "run")
    assert result.returncode == 2 and "--encoder is not available with --multi-label yet" in result.stderr
    assert not (tmp_path / "run").exists()


def test_each_labels_sigmoid_starts_at_its_rate_in_the_training_file(multilabel_files, tmp_path, tiny_config):
    from textpipe.core.multilabel import prior_log_odds

    train, _ = multilabel_files
    config = tiny_config(model={"nb_linear": False}, data={"source": {"label_sep": "|"}}, train={"epochs": 1, "lr": 1e-9, "refit": False})
    train_files(train, None, tmp_path / "run", config=config, quiet=True)
    bundle, metrics = load_bundle(tmp_path / "run"), json.loads((tmp_path / "run" / "metrics.json").read_text())
    counts = [sum(label in row_label.split("|") for row_label, _ in make_multilabel_rows(400, seed=1)) for label in bundle.labels]
    # an lr of 1e-9 leaves the biases where training started them: each label's log-odds among the file's rows
    assert torch.allclose(bundle.model.head.bias, prior_log_odds(counts, 400), atol=1e-5), metrics.get("history")
