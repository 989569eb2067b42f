"""Explanations: exact for the bag model (contributions + bias = logits), labelled approximate for the others."""

import json

import pytest
import torch

from conftest import NEGATIVE, POSITIVE, TEXTS, make_rows, run_cli as textpipe, train_tiny, write_csv
from textpipe.bundle import load_bundle
from textpipe.collate import pad_collate
from textpipe.explain import APPROXIMATE, EXACT, explain, strongest_features
from textpipe.models import ModelConfig
from textpipe.config import DataConfig, PipelineConfig
from textpipe.run import train_files
from textpipe.predict import Predictor
from textpipe.train import TrainConfig

@pytest.fixture(scope="module")
def bag(tmp_path_factory):
    return train_tiny(tmp_path_factory.mktemp("explain"), max_ngram=3)[0]


def model_logits(bundle, text: str) -> torch.Tensor:
    """The model's own forward pass on one text, as the predictor numericalizes it."""
    ids = torch.tensor(bundle.vocab(bundle.tokenizer(text)) or [1])
    batch = pad_collate([ids])
    with torch.no_grad():
        return bundle.model(batch.ids, batch.mask)[0]


def test_bag_contributions_plus_bias_reproduce_every_logit(bag):
    bundle = load_bundle(bag)
    for e in explain(bundle, TEXTS):
        assert e.method == EXACT
        torch.testing.assert_close(e.contributions.sum(0) + e.bias, model_logits(bundle, e.text), atol=1e-4, rtol=0)
        torch.testing.assert_close(e.logits, model_logits(bundle, e.text), atol=1e-4, rtol=0)


def test_frozen_pretrained_vectors_are_part_of_the_exact_split(tmp_path):
    vectors = tmp_path / "vecs.txt"
    vectors.write_text("".join(f"{w} {i} 1 -1 0.5\n" for i, w in enumerate(POSITIVE + NEGATIVE)), encoding="utf-8")
    train = write_csv(tmp_path / "train.csv", make_rows(300, seed=1))
    config = PipelineConfig(data=DataConfig(cache_dir=None, vectors=str(vectors)), model=ModelConfig(embed_dim=16, ngram_buckets=512, frozen_dim=4),
                            train=TrainConfig(epochs=2, lr=0.02, refit=False, keep_checkpoints=0))
    train_files(train, train, tmp_path / "run", config=config, quiet=True)
    bundle = load_bundle(tmp_path / "run")
    assert bundle.model.frozen.abs().sum() > 0
    for e in explain(bundle, TEXTS):
        torch.testing.assert_close(e.contributions.sum(0) + e.bias, model_logits(bundle, e.text), atol=1e-4, rtol=0)


def test_bag_features_are_the_tokens_then_each_ngram(bag):
    e = explain(load_bundle(bag), ["dull , boring"])[0]
    assert e.tokens == ["dull", ",", "boring"]
    assert e.features == ["dull", ",", "boring", "dull ,", ", boring", "dull , boring"]
    assert e.kinds == ["token"] * 3 + ["ngram"] * 3
    label = int(e.logits.argmax())
    # Shading shares each n-gram out among its words: the token weights add up to the same total.
    torch.testing.assert_close(e.token_weights(label).sum(), e.weights(label).sum())
    shown = e.to_dict(label, top=4)
    assert len(shown["top"]) == 4 and [t for t, _ in shown["tokens"]] == e.tokens
    assert abs(shown["top"][0]["weight"]) == pytest.approx(float(e.weights(label).abs().max()), abs=1e-6)


def test_the_sentiment_words_carry_the_decision(bag):
    bundle = load_bundle(bag)
    pos = bundle.labels.index("pos")
    e = explain(bundle, ["the movie was gorgeous and the story"])[0]
    weights = dict(zip(e.tokens, e.token_weights(pos).tolist()))
    assert max(weights, key=weights.get) == "gorgeous"


def test_strongest_features_per_class_are_the_sentiment_words(bag):
    features = strongest_features(load_bundle(bag), top=5)
    assert {w for w, _ in features["pos"]} <= set(POSITIVE)
    assert {w for w, _ in features["neg"]} <= set(NEGATIVE)
    report = (bag / "report.md").read_text()
    assert "## Strongest features" in report and features["pos"][0][0] in report


@pytest.mark.parametrize("name", ["cnn", "gru", "transformer"])
def test_other_models_get_a_labelled_approximation(tmp_path, name):
    folder, _ = train_tiny(tmp_path, name, max_len=8)
    bundle = load_bundle(folder)
    explanations = explain(bundle, TEXTS)
    probs = Predictor(bundle).probabilities(TEXTS)
    for e, row in zip(explanations, probs):
        assert e.method == APPROXIMATE
        assert e.contributions.shape == (len(e.tokens), 2)
        torch.testing.assert_close(e.logits.softmax(-1), row, atol=1e-5, rtol=0)
        torch.testing.assert_close(e.contributions.sum(0) + e.bias, e.logits)  # the bias holds what is unexplained
        assert e.contributions.abs().sum() > 0
    long = explanations[-1]
    assert len(long.tokens) > 8 and (long.contributions[8:] == 0).all() == (name == "transformer")  # cut at max_len


def test_cli_predict_explain(bag):
    result = textpipe("predict", "--model", bag, "--explain", *TEXTS[:2])
    assert result.returncode == 0, result.stderr
    rows = [json.loads(line) for line in result.stdout.splitlines()]
    expected = Predictor.load(bag).predict(TEXTS[:2])
    assert [r["label"] for r in rows] == [r["label"] for r in expected]
    for row in rows:
        e = row["explanation"]
        assert e["method"] == EXACT and e["top"] and [t for t, _ in e["tokens"]][0] in row["text"].lower()
    text = textpipe("predict", "--model", bag, "--explain", "--format", "text", TEXTS[0])
    assert text.returncode == 0 and "why (exact, toward" in text.stdout
    csv_out = textpipe("predict", "--model", bag, "--explain", "--format", "csv", TEXTS[0])
    assert csv_out.returncode == 2 and "--explain works with --format json or text" in csv_out.stderr
