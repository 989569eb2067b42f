"""A multi-label bundle applied (issue 33, item 3): label sets from per-label sigmoids and thresholds, in
Predictor, explain (per label, exact for the bag), serve and its page, and evaluate's report."""

import json
import threading

import pytest
import torch

from browser import Chromium, find_chromium, label_on_page
from textpipe.bundle.explain import add_explanations
from textpipe.bundle.predict import Predictor, label_sets
from textpipe.bundle.serve import ServeConfig, make_server
from textpipe.bundle.serve_work import Batcher
from textpipe.core.metrics import predict_logits
from textpipe.run.pipeline import report_file

TEXTS = ["the goal of the match", "pasta and guitar song", "the movie was it", "soup bread drums and a team goal"]


@pytest.fixture(scope="module")
def predictor(tiny_multilabel):
    return Predictor.load(tiny_multilabel[0])


def test_probabilities_are_each_labels_calibrated_sigmoid(predictor):
    bundle = predictor.bundle
    assert predictor.multi_label and bundle.multi_label["label_sep"] == "|" and bundle.temperature != 1
    batches = predictor.batches(TEXTS, 8)
    logits = batches.sampler.restore(predict_logits(bundle.model, batches, torch.device("cpu"))[0])
    probs = predictor.probabilities(TEXTS)
    torch.testing.assert_close(probs, (logits / bundle.temperature).sigmoid())
    assert not torch.allclose(probs.sum(1), torch.ones(len(TEXTS)))  # not a softmax


def test_predict_gives_the_labels_at_or_above_their_thresholds_most_probable_first(predictor):
    thresholds = predictor.bundle.multi_label["thresholds"]
    for result in predictor.predict(TEXTS):
        assert set(result) == {"text", "labels", "probs"}
        probs = result["probs"]
        assert list(probs.values()) == sorted(probs.values(), reverse=True) and set(probs) == set(predictor.labels)
        expected = [label for label in probs if probs[label] >= round(thresholds[predictor.labels.index(label)], 6)]
        assert result["labels"] == expected
    assert predictor.predict(["pasta and guitar song"])[0]["labels"] == ["music", "food"]


def test_one_threshold_for_every_label_and_top_k(predictor):
    assert all(len(r["labels"]) == 3 for r in predictor.predict(TEXTS, threshold=0.0))
    everything = predictor.predict(TEXTS, threshold=0.0, top_k=2)
    assert [r["labels"] for r in everything] == [list(r["probs"])[:2] for r in everything]
    strict = predictor.predict(TEXTS, threshold=0.9)
    assert [r["labels"] for r in strict] == [[label for label, p in r["probs"].items() if p >= 0.9] for r in strict]
    assert any(r["labels"] == [] for r in strict)  # the empty set is an answer
    assert [len(r["labels"]) for r in predictor.predict(TEXTS, top_k=1)] == [min(1, len(r["labels"])) for r in predictor.predict(TEXTS)]


def test_label_sets_on_given_probabilities():
    probs = torch.tensor([[0.9, 0.2, 0.6], [0.1, 0.2, 0.3]])
    assert label_sets(["x", "y"], probs, ["a", "b", "c"], 0.5) == [
        {"text": "x", "labels": ["a", "c"], "probs": {"a": 0.9, "c": 0.6, "b": 0.2}},
        {"text": "y", "labels": [], "probs": {"c": 0.3, "b": 0.2, "a": 0.1}}]
    assert label_sets(["x"], probs[:1], ["a", "b", "c"], torch.tensor([0.95, 0.1, 0.5]), top_k=1)[0]["labels"] == ["c"]
    assert label_sets([], torch.empty(0, 3), ["a", "b", "c"], 0.5) == []


def test_explain_splits_each_labels_logit_exactly(predictor):
    probs = predictor.probabilities(TEXTS).double()
    for e, row in zip(predictor.explain(TEXTS), probs):
        assert e.method == "exact" and e.multi_label
        torch.testing.assert_close((e.contributions.sum(0) + e.bias).double(), e.logits.double(), atol=1e-4, rtol=1e-4)
        torch.testing.assert_close(e.logits.double().sigmoid(), row, atol=1e-5, rtol=1e-4)  # the logits predict's probabilities come from
        torch.testing.assert_close(e.weights(0), e.contributions[:, 0])  # a sigmoid's own logit: not relative to the other labels
    results = add_explanations(predictor.predict(TEXTS), predictor.explain(TEXTS), predictor.labels, top=3)
    for result in results:
        assert list(result["explanations"]) == result["labels"]
    music = results[1]["explanations"]["music"]
    assert music["top"][0]["feature"] in ("guitar", "song") and music["top"][0]["weight"] > 0
    assert results[1]["explanations"]["food"]["tokens"][0][0] == "pasta" and results[1]["explanations"]["food"]["tokens"][0][1] > 0


def test_batcher_answers_label_sets_with_explanations(predictor):
    batcher = Batcher(predictor)
    try:
        plain, explained = batcher.submit(TEXTS[:2], top_k=1), batcher.submit(TEXTS[1:2], explain=True)
    finally:
        batcher.close()
    assert [r["labels"] for r in plain] == [r["labels"][:1] for r in predictor.predict(TEXTS[:2])]
    assert list(explained[0]["explanations"]) == ["music", "food"]


def test_the_page_shows_the_label_set(tiny_multilabel):
    binary = find_chromium()
    if binary is None:
        pytest.skip("chromium is not installed (apt-get install chromium)")
    predictor = Predictor.load(tiny_multilabel[0], sentence_cache=None)
    candidates = ["the", "a", "it was", "the film and the story", "the actor of the scene", "a plot with a movie", "of", "and", "with"]
    empty = next((r["text"] for r in predictor.predict(candidates) if not r["labels"]), None)
    server = make_server(predictor, ServeConfig(port=0), quiet=True, model="tags")
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}/"
        with Chromium(binary) as page:
            both = label_on_page(page, url, "pasta and guitar song")
        with Chromium(binary) as page:  # a fresh page: goto of the URL shown would return before the new load
            none = label_on_page(page, url, empty) if empty else None
    finally:
        server.shutdown()
        server.server_close()
        thread.join()
    assert both["label"] == "music, food"
    assert [name for name, _ in both["bars"]][:2] == ["✓ music", "✓ food"] and not both["bars"][2][0].startswith("✓")
    assert [token for token, _, _ in both["tokens"]] == ["pasta", "and", "guitar", "song"]
    assert empty is None or (none["label"] == "(none of the labels)" and none["tokens"] == [])


def test_report_file_scores_label_sets_at_the_bundles_thresholds(tiny_multilabel, tmp_path):
    from sklearn.metrics import accuracy_score, f1_score, hamming_loss
    from sklearn.preprocessing import MultiLabelBinarizer

    model, test = tiny_multilabel
    summary = report_file(model, test, tmp_path / "eval")  # no source: the file is read as the bundle's training file was
    predictor = Predictor.load(model)
    rows = [line.rsplit(",", 1) for line in test.read_text().splitlines()[1:]]
    gold = [[label for label in labels.split("|") if label] for labels, _ in (line.split(",", 1) for line in test.read_text().splitlines()[1:])]
    predicted = [r["labels"] for r in predictor.predict([text for _, text in (line.split(",", 1) for line in test.read_text().splitlines()[1:])])]
    binarize = MultiLabelBinarizer(classes=predictor.labels).fit([])
    y, p = binarize.transform(gold), binarize.transform(predicted)
    overall = summary["overall"]
    assert len(rows) == overall["n"] == 48
    assert overall["micro_f1"] == pytest.approx(f1_score(y, p, average="micro"), abs=1e-6)
    assert overall["macro_f1"] == pytest.approx(f1_score(y, p, average="macro", zero_division=0), abs=1e-6)
    assert overall["subset_accuracy"] == pytest.approx(accuracy_score(y, p), abs=1e-6)
    assert overall["hamming_loss"] == pytest.approx(hamming_loss(y, p), abs=1e-6)
    assert set(summary["per_class"]) == set(predictor.labels)
    assert json.loads((tmp_path / "eval" / "metrics.json").read_text())["overall"] == overall
    assert "## Per label" in (tmp_path / "eval" / "report.md").read_text()
    at_half = report_file(model, test, tmp_path / "half", threshold=0.5)
    assert at_half["multi_label"]["thresholds"] == {label: 0.5 for label in predictor.labels}


def test_a_multi_label_explanations_weights_are_its_labels_own_contributions():
    from textpipe.bundle.explain import Explanation

    contributions, bias = torch.tensor([[2.0, -1.0], [0.5, 3.0]]), torch.tensor([0.25, -0.75])
    make = lambda multi: Explanation("a b", ["a", "b"], ["a", "b"], ["token", "token"], [(0, 1), (1, 2)], contributions, bias,  # noqa: E731
                                     contributions.sum(0) + bias, "exact", multi)
    own, relative = make(True).to_dict(1), make(False).to_dict(1)
    assert own["bias"] == -0.75 and own["tokens"] == [["a", -1.0], ["b", 3.0]]  # a sigmoid's logit as it is
    assert relative["bias"] == -0.5 and relative["tokens"] == [["a", -1.5], ["b", 1.25]]  # a softmax's: less the mean over labels
