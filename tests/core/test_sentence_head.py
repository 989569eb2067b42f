"""model.encoder: the sentence head (a logistic regression on sentence vectors) as a third member of the mix."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from conftest import cli_here, make_rows, write_csv
from textpipe.core.sentence_head import SentenceHead, fit_head

ENCODER = Path(__file__).resolve().parents[2] / "data" / "encoders" / "minilm-l6"


def toy_vectors(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Three classes, each around its own direction: separable."""
    g = torch.Generator().manual_seed(seed)
    y = torch.arange(n) % 3
    centres = torch.eye(3, 16) * 4
    return centres[y] + torch.randn(n, 16, generator=g), y


def test_the_head_separates_separable_vectors_and_chooses_C_and_beta_on_dev():
    x, y = toy_vectors(300, 0)
    dev_x, dev_y = toy_vectors(90, 1)
    useless = torch.full((90, 3), 1 / 3)  # a model that knows nothing: the head must take a share
    head, record = fit_head(x, y, 3, dev=(dev_x, dev_y, useless))
    assert (head.probabilities(dev_x).argmax(1) == dev_y).double().mean() > 0.95
    assert record["beta"] > 0 and record["dev"]["mixed"] > 0.95
    assert set(record["dev_by_C"]) and record["C"] in {float(c) for c in record["dev_by_C"]}
    again, _ = fit_head(x, y, 3, C=record["C"], beta=record["beta"])  # a refit with the choices: the same head
    assert torch.allclose(again.linear.weight, head.linear.weight) and float(again.beta) == record["beta"]


def test_beta_zero_leaves_the_models_probabilities_exactly_as_they_were():
    head = SentenceHead(16, 3)
    head.linear.weight.data.normal_()
    probs = torch.rand(5, 3).softmax(1)
    assert head.mix(probs, torch.randn(5, 16)) is probs
    x, y = toy_vectors(60, 2)
    perfect = torch.nn.functional.one_hot(y, 3).double()  # a perfect model: ties go to the smaller share, 0
    _, record = fit_head(x, y, 3, dev=(x, y, perfect))
    assert record["beta"] == 0.0


def test_the_default_configs_bundle_has_no_encoder_key(tmp_path):
    from conftest import train_tiny

    run, _ = train_tiny(tmp_path)
    meta = json.loads((run / "bundle.json").read_text())
    assert "encoder" not in meta and "encoder" not in meta["model"] and "sentence_head.safetensors" not in meta["files"]
    assert "encoder" not in json.loads((run / "config.json").read_text())["model"]
    assert "sentence_head" not in json.loads((run / "metrics.json").read_text())


def test_an_unknown_encoder_is_refused_with_exit_2(tmp_path):
    train = write_csv(tmp_path / "train.csv", make_rows(20))
    result = cli_here("train", "--train", train, "--out", tmp_path / "run", "--set", 'model.encoder="bert"')
    assert result.returncode == 2 and "model.encoder" in result.stderr


@pytest.mark.skipif(not (ENCODER / "model.safetensors").is_file(), reason="needs the minilm-l6 encoder in data/ (textpipe vectors fetch minilm-l6)")
def test_a_tiny_run_with_the_encoder_trains_saves_and_predicts_its_mix(tmp_path):
    from textpipe.bundle.store import load_bundle
    from textpipe.bundle.predict import Predictor

    train = write_csv(tmp_path / "train.csv", make_rows(60, seed=1))
    test = write_csv(tmp_path / "test.csv", make_rows(30, seed=3))
    out = tmp_path / "run"
    result = cli_here("train", "--train", train, "--test", test, "--out", out, "--encoder", "minilm-l6", "--epochs", "2", "--quiet",
                      "--set", "model.embed_dim=8", "--set", "model.ngram_buckets=64")
    assert result.returncode == 0, result.stderr
    meta = json.loads((out / "bundle.json").read_text())
    assert meta["encoder"]["name"] == "minilm-l6" and meta["model"]["encoder"] == "minilm-l6"
    assert "sentence_head.safetensors" in meta["files"] and "encoder" in meta["files"]["bundle.json"]["fields"]
    metrics = json.loads((out / "metrics.json").read_text())
    run = json.loads((out / "run.json").read_text())
    assert run["refit"]["sentence_head"]["C"] == metrics["sentence_head"]["C"]  # the refit reused the train phase's choices
    bundle = load_bundle(out)
    assert float(bundle.head.beta) == metrics["sentence_head"]["beta"]
    texts = [text for _, text in make_rows(30, seed=3)]
    gold = [label for label, _ in make_rows(30, seed=3)]
    probs = Predictor(bundle).probabilities(texts)
    accuracy = sum(bundle.labels[i] == g for i, g in zip(probs.argmax(1).tolist(), gold)) / len(gold)
    assert accuracy == pytest.approx(metrics["test"]["accuracy"])
    info = cli_here("info", out)
    assert info.returncode == 0 and "minilm-l6" in info.stdout and meta["encoder"]["sha256"] in info.stdout
    evaluated = cli_here("evaluate", "--model", out, "--data", test, "--out", tmp_path / "eval", "--quiet")
    assert evaluated.returncode == 0, evaluated.stderr
    assert json.loads((tmp_path / "eval" / "metrics.json").read_text())["overall"]["accuracy"] == pytest.approx(accuracy)
    check_the_explanation_is_the_mix(out, bundle, texts, probs)
    quantized = cli_here("quantize", "--model", out, "--out", tmp_path / "small")
    assert quantized.returncode == 0, quantized.stderr
    assert torch.allclose(Predictor.load(tmp_path / "small").probabilities(texts).argmax(1), probs.argmax(1))


@pytest.mark.skipif(not (ENCODER / "model.safetensors").is_file(), reason="needs the minilm-l6 encoder in data/ (textpipe vectors fetch minilm-l6)")
def test_text_classifier_takes_the_encoder_through_its_config(tmp_path):
    from textpipe import TextClassifier

    rows = make_rows(60, seed=4)
    clf = TextClassifier(config={"model": {"encoder": "minilm-l6", "embed_dim": 8, "ngram_buckets": 64}}, epochs=2)
    clf.fit([text for _, text in rows], [label for label, _ in rows])
    probs = clf.predict_proba(["a great and witty film", "a dull and awful film"])
    clf.save(tmp_path / "model")
    again = TextClassifier.load(tmp_path / "model")
    assert again._fitted().head is not None
    assert again.predict_proba(["a great and witty film", "a dull and awful film"]) == pytest.approx(probs, abs=1e-6)


def check_the_explanation_is_the_mix(out: Path, bundle, texts: list[str], probs: torch.Tensor) -> None:
    """predict --explain: the encoder's share is one named term, and the terms sum to what predict ships."""
    from textpipe.bundle.explain import explain

    explained = cli_here("predict", "--model", out, "--explain", "--format", "json", "a great film")
    assert explained.returncode == 0, explained.stderr
    [row] = [json.loads(line) for line in explained.stdout.splitlines()]
    predicted = cli_here("predict", "--model", out, "--format", "json", "a great film")
    assert row["label"] == json.loads(predicted.stdout)["label"] and row["probs"] == json.loads(predicted.stdout)["probs"]
    assert "[sentence encoder minilm-l6]" in [f["feature"] for f in row["explanation"]["top"]]  # three words: every term is in the top ten
    for e, shipped in zip(explain(bundle, texts), probs):
        assert e.features[-1] == "[sentence encoder minilm-l6]" and e.kinds[-1] == "encoder" and e.spans[-1] == (0, 0)
        torch.testing.assert_close(e.contributions.sum(0) + e.bias, e.logits, atol=1e-5, rtol=0)
        torch.testing.assert_close(e.logits.softmax(0), shipped, atol=1e-5, rtol=0)
