import json
import os
import pickle
import subprocess
import sys

import pytest
import torch

from textpipe.bundle import load_bundle, save_bundle
from textpipe.models import ModelConfig, build_model
from textpipe.predict import Predictor
from textpipe.tokenizer import Tokenizer
from textpipe.vocab import build_vocab

TEXTS = ["a great and witty film", "dull, boring, awful", "never seen words here"]


@pytest.fixture
def bundle_dir(tmp_path):
    tok = Tokenizer("spacy")
    vocab = build_vocab(tok(t) for t in TEXTS[:2])
    config = ModelConfig(vocab_size=len(vocab), num_classes=3, ngram_buckets=64)
    torch.manual_seed(0)
    model = build_model(config)
    return save_bundle(tmp_path / "bundle", model, vocab, tok, ["neg", "neutral", "pos"], config), model


def test_bundle_files_are_json_and_tensors(bundle_dir):
    path, _ = bundle_dir
    assert sorted(p.name for p in path.iterdir()) == ["bundle.json", "vocab.json", "weights.pt"]
    meta = json.loads((path / "bundle.json").read_text())
    assert meta["labels"] == ["neg", "neutral", "pos"] and meta["tokenizer"] == {"name": "spacy", "lower": True}


def test_fresh_process_predicts_the_same_probabilities(bundle_dir):
    path, model = bundle_dir
    expected = Predictor.load(path).probabilities(TEXTS)
    code = (
        "import json, sys; from textpipe.predict import Predictor; "
        "print(json.dumps(Predictor.load(sys.argv[1]).probabilities(json.loads(sys.argv[2])).tolist()))"
    )
    out = subprocess.run([sys.executable, "-c", code, str(path), json.dumps(TEXTS)], capture_output=True, text=True, check=True)
    assert torch.equal(torch.tensor(json.loads(out.stdout)), expected)
    # ...and the loaded model is the saved one, weight for weight.
    loaded = load_bundle(path).model
    for (name, a), b in zip(model.state_dict().items(), loaded.state_dict().values()):
        assert torch.equal(a, b), name


class Boom:
    def __reduce__(self):
        return (os.system, ("echo pwned",))


def test_a_weights_file_holding_code_is_refused(bundle_dir):
    path, _ = bundle_dir
    torch.save({"embedding.weight": Boom()}, path / "weights.pt")
    with pytest.raises(pickle.UnpicklingError, match="Weights only load failed"):
        load_bundle(path)


def test_a_vocab_that_does_not_fit_the_model_is_caught(bundle_dir):
    path, _ = bundle_dir
    tokens = json.loads((path / "vocab.json").read_text())
    (path / "vocab.json").write_text(json.dumps(tokens + ["extra"]))
    with pytest.raises(ValueError, match="vocab has .* tokens and 3 labels, but the model was built for"):
        load_bundle(path)


def test_predict_top_k_and_order(bundle_dir):
    path, _ = bundle_dir
    results = Predictor.load(path).predict(TEXTS, top_k=2)
    assert [r["text"] for r in results] == TEXTS
    for r in results:
        assert len(r["probs"]) == 2 and r["label"] == next(iter(r["probs"]))
        assert list(r["probs"].values()) == sorted(r["probs"].values(), reverse=True)
