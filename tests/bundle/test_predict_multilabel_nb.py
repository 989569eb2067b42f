"""A multi-label bundle with the bag's NB linear path (one-vs-rest per label) predicts, explains and scores
what its run scored: the mix reaches every consumer of the logits."""

import json

from textpipe.bundle.predict import Predictor
from textpipe.bundle.store import load_bundle
from tests.conftest import train_tiny_multilabel


def test_an_nb_path_bundle_predicts_and_explains_its_label_sets(tmp_path):
    folder, test = train_tiny_multilabel(tmp_path, nb_linear=True)
    bundle = load_bundle(folder)
    assert bundle.model_config.multi_label and bundle.multi_label is not None
    metrics = json.loads((folder / "metrics.json").read_text())
    assert "alpha" in metrics["nb_linear"] and metrics["test"]["micro_f1"] > 0.5
    predictor = Predictor(bundle)
    texts = ["pasta and guitar song", "a plate of noodles"]
    results = predictor.predict(texts)
    assert len(results) == 2
    for result in results:
        assert set(result["probs"]) == {"food", "music", "sport"}
        assert all(label in result["probs"] for label in result["labels"])
    explanations = predictor.explain(texts)
    assert len(explanations) == 2
