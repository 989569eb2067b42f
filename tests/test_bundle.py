import hashlib
import json
import os
import subprocess
import sys

import pytest
import torch

from textpipe.bundle import BundleError, file_digest, load_bundle, save_bundle
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


def forge_manifest(path):
    """What an attacker who can edit files does: make bundle.json's checksums match again."""
    meta = json.loads((path / "bundle.json").read_text())
    meta["files"] = {name: file_digest(path / name) for name in meta["files"]}
    (path / "bundle.json").write_text(json.dumps(meta))


def test_bundle_json_lists_size_and_sha256_of_each_file(bundle_dir):
    path, _ = bundle_dir
    files = json.loads((path / "bundle.json").read_text())["files"]
    assert files["weights.pt"] == {"bytes": (path / "weights.pt").stat().st_size, "sha256": hashlib.sha256((path / "weights.pt").read_bytes()).hexdigest()}
    assert set(files) == {"weights.pt", "vocab.json"}


def test_a_truncated_weights_file_is_refused(bundle_dir):
    path, _ = bundle_dir
    data = (path / "weights.pt").read_bytes()
    (path / "weights.pt").write_bytes(data[: len(data) // 2])
    with pytest.raises(BundleError) as err:
        load_bundle(path)
    assert str(err.value) == f"{path}/weights.pt is {len(data) // 2} bytes but bundle.json says {len(data)}: the file is truncated or was replaced"


def test_an_altered_file_is_refused(bundle_dir):
    path, _ = bundle_dir
    tokens = json.loads((path / "vocab.json").read_text())
    tokens[2], tokens[3] = tokens[3], tokens[2]  # same bytes, different meaning
    (path / "vocab.json").write_text(json.dumps(tokens))
    with pytest.raises(BundleError) as err:
        load_bundle(path)
    assert str(err.value) == f"{path}/vocab.json does not match its sha256 in bundle.json: the file was altered after saving"


class Boom:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_a_weights_file_holding_code_is_refused_even_with_a_forged_manifest(bundle_dir, tmp_path):
    path, _ = bundle_dir
    marker = tmp_path / "pwned"
    torch.save({"embedding.weight": Boom(marker)}, path / "weights.pt")
    forge_manifest(path)
    with pytest.raises(BundleError) as err:
        load_bundle(path)
    assert str(err.value) == f"refusing to load {path}/weights.pt: it holds Python objects other than tensors, and unpickling them could run code"
    assert not marker.exists()


def test_a_vocab_that_does_not_fit_the_model_is_caught(bundle_dir):
    path, _ = bundle_dir
    tokens = json.loads((path / "vocab.json").read_text())
    (path / "vocab.json").write_text(json.dumps(tokens + ["extra"]))
    forge_manifest(path)
    with pytest.raises(BundleError) as err:
        load_bundle(path)
    n = len(tokens)
    assert str(err.value) == f"{path}: vocab.json has {n + 1} tokens and bundle.json 3 labels, but the model was built for {n} tokens and 3 labels"


def test_weights_of_another_embedding_size_are_caught(bundle_dir):
    path, _ = bundle_dir
    meta = json.loads((path / "bundle.json").read_text())
    other = build_model(ModelConfig(**{**meta["model"], "embed_dim": 32}))
    torch.save(other.state_dict(), path / "weights.pt")
    forge_manifest(path)
    with pytest.raises(BundleError) as err:
        load_bundle(path)
    assert str(err.value).startswith(f"{path}/weights.pt does not fit the model described in bundle.json: size mismatch for embedding")
    assert "torch.Size([" in str(err.value) and "\n" not in str(err.value)


def test_a_damaged_or_newer_bundle_json_is_refused(bundle_dir):
    path, _ = bundle_dir
    meta = (path / "bundle.json").read_text()
    (path / "bundle.json").write_text(meta[:-40])
    with pytest.raises(BundleError, match="bundle.json is damaged: not valid JSON"):
        load_bundle(path)
    (path / "bundle.json").write_text(meta.replace('"format_version": 1', '"format_version": 99'))
    with pytest.raises(BundleError, match="bundle format 99, this textpipe reads format 1"):
        load_bundle(path)


def test_the_cli_reports_a_tampered_bundle_in_one_line(bundle_dir):
    path, _ = bundle_dir
    data = (path / "weights.pt").read_bytes()
    (path / "weights.pt").write_bytes(data[:-10])
    result = subprocess.run([sys.executable, "-m", "textpipe", "predict", "--model", str(path), "great"], capture_output=True, text=True)
    assert result.returncode == 2
    assert result.stderr == f"textpipe predict: error: {path}/weights.pt is {len(data) - 10} bytes but bundle.json says {len(data)}: the file is truncated or was replaced\n"


def test_predict_top_k_and_order(bundle_dir):
    path, _ = bundle_dir
    results = Predictor.load(path).predict(TEXTS, top_k=2)
    assert [r["text"] for r in results] == TEXTS
    for r in results:
        assert len(r["probs"]) == 2 and r["label"] == next(iter(r["probs"]))
        assert list(r["probs"].values()) == sorted(r["probs"].values(), reverse=True)


def test_info_refuses_a_crafted_pickle_in_one_line(bundle_dir, tmp_path):
    path, _ = bundle_dir
    marker = tmp_path / "pwned"
    torch.save({"embedding.weight": Boom(marker)}, path / "weights.pt")
    forge_manifest(path)
    result = subprocess.run([sys.executable, "-m", "textpipe", "info", str(path), "--json"], capture_output=True, text=True)
    assert result.returncode == 2 and not marker.exists()
    assert result.stderr == f"textpipe info: error: refusing to load {path}/weights.pt: it holds Python objects other than tensors, and unpickling them could run code\n"
