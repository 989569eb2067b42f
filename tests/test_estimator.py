"""textpipe.TextClassifier (issue 16, item 11): five lines from lists of strings to predictions,
the same bundle as the CLI, built on the pipeline's stages."""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from conftest import make_rows
from textpipe import PipelineConfig, TextClassifier

FAST = {"tokenizer": "whitespace", "epochs": 8}


@pytest.fixture(scope="module")
def fitted(tmp_path_factory):
    rows = make_rows(300, seed=1)
    texts = (text for _, text in rows)  # generators: fit streams any iterable
    labels = (2 if label == "pos" else 10 for label, _ in rows)  # integer labels
    clf = TextClassifier(**FAST).fit(texts, labels)
    return clf, make_rows(60, seed=9)


def test_five_lines_from_strings_to_predictions(fitted):
    clf, test = fitted
    assert clf.labels_ == ["2", "10"]  # str(label), ordered as numbers
    predicted = clf.predict(text for _, text in test)
    expected = ["2" if label == "pos" else "10" for label, _ in test]
    assert len(predicted) == 60 and np.mean([p == e for p, e in zip(predicted, expected)]) > 0.9
    assert clf.metrics_["scored_on"].startswith("dev rows held out of the training texts")


def test_predict_proba_is_an_array_in_label_order(fitted):
    clf, test = fitted
    texts = [text for _, text in test]
    proba = clf.predict_proba(texts)
    assert isinstance(proba, np.ndarray) and proba.shape == (60, 2) and proba.dtype == np.float32
    assert np.allclose(proba.sum(axis=1), 1, atol=1e-5)
    assert [clf.labels_[i] for i in proba.argmax(axis=1)] == clf.predict(texts)
    assert clf.predict_proba([]).shape == (0, 2)


def test_save_writes_the_cli_bundle_and_load_reads_it_back(fitted, tmp_path):
    clf, test = fitted
    texts = [text for _, text in test]
    clf.save(tmp_path / "model")
    assert {"bundle.json", "weights.safetensors", "vocab.json", "config.json"} <= {p.name for p in (tmp_path / "model").iterdir()}
    again = TextClassifier.load(tmp_path / "model")
    assert np.array_equal(again.predict_proba(texts), clf.predict_proba(texts)) and again.labels_ == clf.labels_
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cli = subprocess.run([sys.executable, "-m", "textpipe", "predict", "--model", str(tmp_path / "model"), "--input", "-"],
                         input="\n".join(texts[:5]) + "\n", capture_output=True, text=True, env=env)
    assert cli.returncode == 0, cli.stderr
    assert [json.loads(line)["label"] for line in cli.stdout.splitlines()] == clf.predict(texts[:5])


def test_a_cli_bundle_loads_into_the_estimator(tmp_path):
    from textpipe.run import train_files
    from conftest import write_csv

    train = write_csv(tmp_path / "train.csv", make_rows(200, seed=3))
    config = PipelineConfig.from_dict({"tokenizer": {"name": "whitespace"}, "train": {"epochs": 3, "keep_checkpoints": 0}})
    train_files(train, None, tmp_path / "run", config=config)
    clf = TextClassifier.load(tmp_path / "run")
    assert clf.labels_ == ["neg", "pos"] and clf.config.tokenizer.name == "whitespace"
    from textpipe import Predictor

    texts = ["good great superb", "awful dull", "the plot"]
    assert clf.predict(texts) == [r["label"] for r in Predictor.load(tmp_path / "run").predict(texts)]


def test_dev_from_config_and_options(tmp_path):
    config_file = tmp_path / "c.toml"
    config_file.write_text('[model]\nname = "cnn"\nembed_dim = 16\n[train]\nepochs = 2\n', encoding="utf-8")
    clf = TextClassifier.from_config(config_file, lr=0.01, tokenizer="whitespace")
    assert (clf.config.model.name, clf.config.model.embed_dim, clf.config.train.epochs, clf.config.train.lr) == ("cnn", 16, 2, 0.01)
    assert TextClassifier(arch="gru").config.model.name == "gru"
    assert TextClassifier.from_config({"train": {"patience": 5}}).config.train.patience == 5
    rows, dev = make_rows(120, seed=4), make_rows(40, seed=5)
    clf.fit([t for _, t in rows], [y for y, _ in rows], dev=([t for _, t in dev], [y for y, _ in dev]))
    assert clf.metrics_["scored_on"] == "the dev texts" and clf.metrics_["overall"]["n"] == 40


def test_mistakes_are_plain_errors_naming_the_item():
    with pytest.raises(ValueError, match=r"texts\[1\]: empty text"):
        TextClassifier(**FAST).fit(["good", " ", "bad"], ["pos", "neg", "neg"])
    with pytest.raises(ValueError, match="differ in length"):
        TextClassifier(**FAST).fit(["good", "bad"], ["pos"])
    with pytest.raises(TypeError, match="not one string"):
        TextClassifier(**FAST).fit("good movie", ["pos"])
    with pytest.raises(TypeError, match="unknown option 'epoch'"):
        TextClassifier(epoch=3)
    with pytest.raises(RuntimeError, match="not fitted"):
        TextClassifier().predict(["good"])
    with pytest.raises(ValueError, match="at least 2 labels"):
        TextClassifier(**FAST).fit(["good", "fine"], ["pos", "pos"])


def test_the_estimator_is_built_on_the_pipeline_not_beside_it():
    source = (Path(__file__).resolve().parents[1] / "textpipe" / "estimator.py").read_text()
    assert "train_files(" in source and "nn.Module" not in source and "optim" not in source
