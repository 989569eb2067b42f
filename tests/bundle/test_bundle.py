import hashlib
import importlib
import json
import os
import subprocess
import sys

import pytest
import torch

from safetensors.torch import save_file

from conftest import cli_here
from textpipe.bundle.store import Bundle, BundleError, all_finite, fields_digest, file_digest, load_bundle, save_bundle
from textpipe.core.models import ModelConfig, build_model, model_skeleton
from textpipe.bundle.predict import Predictor
from textpipe.text.tokenizer import Tokenizer
from textpipe.text.vocab import build_vocab

TEXTS = ["a great and witty film", "dull, boring, awful", "never seen words here"]


@pytest.fixture
def bundle_dir(tmp_path):
    tok = Tokenizer("spacy")
    vocab = build_vocab(tok(t) for t in TEXTS[:2])
    config = ModelConfig(vocab_size=len(vocab), num_classes=3, ngram_buckets=64)
    torch.manual_seed(0)
    model = build_model(config)
    return save_bundle(tmp_path / "bundle", Bundle(model, vocab, tok, ["neg", "neutral", "pos"], config)), model


def test_bundle_files_are_json_and_tensors(bundle_dir):
    path, _ = bundle_dir
    assert sorted(p.name for p in path.iterdir()) == ["bundle.json", "vocab.json", "weights.safetensors"]
    meta = json.loads((path / "bundle.json").read_text())
    assert meta["labels"] == ["neg", "neutral", "pos"] and meta["tokenizer"] == {"name": "spacy", "lower": True, "lang": "en"}


def test_fresh_process_predicts_the_same_probabilities(bundle_dir):
    path, model = bundle_dir
    expected = Predictor.load(path).probabilities(TEXTS)
    code = (
        "import json, sys; from textpipe.bundle.predict import Predictor; "
        "print(json.dumps(Predictor.load(sys.argv[1]).probabilities(json.loads(sys.argv[2])).tolist()))"
    )
    out = subprocess.run([sys.executable, "-c", code, str(path), json.dumps(TEXTS)], capture_output=True, text=True, check=True)
    assert torch.equal(torch.tensor(json.loads(out.stdout)), expected)
    # ...and the loaded model is the saved one, weight for weight.
    loaded = load_bundle(path).model
    for (name, a), b in zip(model.state_dict().items(), loaded.state_dict().values()):
        assert torch.equal(a, b), name


@pytest.mark.parametrize("name", ["bag", "cnn", "gru", "transformer"])
def test_every_model_loads_weight_for_weight_into_its_skeleton(name, tmp_path):
    tok = Tokenizer("whitespace")
    vocab = build_vocab(tok(t) for t in TEXTS)
    config = ModelConfig(name=name, vocab_size=len(vocab), num_classes=2, embed_dim=8, hidden_dim=8, ngram_buckets=16, frozen_dim=3 * (name == "bag"))
    torch.manual_seed(0)
    model = build_model(config).eval()
    skeleton = model_skeleton(config)
    assert {k: (v.shape, v.dtype) for k, v in skeleton.state_dict().items()} == {k: (v.shape, v.dtype) for k, v in model.state_dict().items()}
    assert {v.device.type for v in skeleton.state_dict().values()} == {"meta"}
    loaded = load_bundle(save_bundle(tmp_path / name, Bundle(model, vocab, tok, ["neg", "pos"], config))).model
    for (key, a), (_, b) in zip(model.state_dict().items(), loaded.state_dict().items(), strict=True):
        assert torch.equal(a, b), key
    assert all(isinstance(p, torch.nn.Parameter) and p.requires_grad for p in loaded.parameters())  # a loaded model can train on
    ids = torch.tensor([[2, 3, 4], [5, 1, 0]])
    with torch.no_grad():
        assert torch.equal(loaded(ids, ids > 0), model(ids, ids > 0))


def forge_manifest(path):
    """What an attacker who can edit files does: make bundle.json's checksums match again."""
    meta = json.loads((path / "bundle.json").read_text())
    meta["files"] = {name: file_digest(path / name) for name in ("weights.safetensors", "vocab.json")}
    meta["files"]["bundle.json"] = {"fields": ["model", "tokenizer", "labels"], "sha256": fields_digest(meta)}
    (path / "bundle.json").write_text(json.dumps(meta))


def test_bundle_json_lists_size_and_sha256_of_each_file(bundle_dir):
    path, _ = bundle_dir
    files = json.loads((path / "bundle.json").read_text())["files"]
    assert files["weights.safetensors"] == {"bytes": (path / "weights.safetensors").stat().st_size, "sha256": hashlib.sha256((path / "weights.safetensors").read_bytes()).hexdigest()}
    assert set(files) == {"weights.safetensors", "vocab.json", "bundle.json"}


def test_a_truncated_weights_file_is_refused(bundle_dir):
    path, _ = bundle_dir
    data = (path / "weights.safetensors").read_bytes()
    (path / "weights.safetensors").write_bytes(data[: len(data) // 2])
    with pytest.raises(BundleError) as err:
        load_bundle(path)
    assert str(err.value) == f"{path}/weights.safetensors is {len(data) // 2} bytes but bundle.json says {len(data)}: the file is truncated or was replaced"


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
    torch.save({"embedding.weight": Boom(marker)}, path / "weights.safetensors")
    forge_manifest(path)
    with pytest.raises(BundleError) as err:
        load_bundle(path)
    assert str(err.value).startswith(f"{path}/weights.safetensors is not a safetensors weights file (")
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
    save_file(other.state_dict(), path / "weights.safetensors")
    forge_manifest(path)
    with pytest.raises(BundleError) as err:
        load_bundle(path)
    rows = meta["model"]["vocab_size"] + 64
    assert str(err.value) == (f"{path}/bundle.json field model does not fit {path}/weights.safetensors: tensor embedding.weight is [{rows}, 32] "
                              f"in the weights file but the model config makes it [{rows}, 64]")


def test_a_damaged_or_newer_bundle_json_is_refused(bundle_dir):
    path, _ = bundle_dir
    meta = (path / "bundle.json").read_text()
    (path / "bundle.json").write_text(meta[:-40])
    with pytest.raises(BundleError, match="bundle.json is damaged: not valid JSON"):
        load_bundle(path)
    (path / "bundle.json").write_text(meta.replace('"format_version": 2', '"format_version": 99'))
    with pytest.raises(BundleError, match="bundle format 99, this textpipe reads format 2"):
        load_bundle(path)


def test_the_cli_reports_a_tampered_bundle_in_one_line(bundle_dir):
    path, _ = bundle_dir
    data = (path / "weights.safetensors").read_bytes()
    (path / "weights.safetensors").write_bytes(data[:-10])
    result = subprocess.run([sys.executable, "-m", "textpipe", "predict", "--model", str(path), "great"], capture_output=True, text=True)
    assert result.returncode == 2
    assert result.stderr == f"textpipe predict: error: {path}/weights.safetensors is {len(data) - 10} bytes but bundle.json says {len(data)}: the file is truncated or was replaced\n"


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
    torch.save({"embedding.weight": Boom(marker)}, path / "weights.safetensors")
    forge_manifest(path)
    result = subprocess.run([sys.executable, "-m", "textpipe", "info", str(path), "--json"], capture_output=True, text=True)
    assert result.returncode == 2 and not marker.exists()
    assert result.stderr.startswith(f"textpipe info: error: {path}/weights.safetensors is not a safetensors weights file (")
    assert result.stderr.count("\n") == 1


def edit_meta(path, forge=True, **changes):
    meta = json.loads((path / "bundle.json").read_text())
    for key, value in changes.items():
        section, _, field = key.partition("__")
        if field:
            meta[section][field] = value
        else:
            meta[section] = value
    (path / "bundle.json").write_text(json.dumps(meta))
    if forge:
        forge_manifest(path)


def test_relabelled_bundle_json_is_refused(bundle_dir):
    path, _ = bundle_dir
    edit_meta(path, forge=False, labels=["pos", "neutral", "neg"])  # every prediction would change its name
    with pytest.raises(BundleError) as err:
        load_bundle(path)
    assert str(err.value) == f"{path}/bundle.json: the fields model, tokenizer, labels do not match their sha256 in the manifest: the file was altered after saving"


@pytest.mark.parametrize("buckets", [2**24, 2**39])
def test_a_crafted_size_is_refused_before_anything_is_allocated(bundle_dir, buckets, monkeypatch):
    path, _ = bundle_dir
    edit_meta(path, model__ngram_buckets=buckets)
    monkeypatch.setattr("textpipe.core.models.build_model", _only_on_meta(importlib.import_module("textpipe.core.models").build_model))
    with pytest.raises(BundleError) as err:
        load_bundle(path)
    assert str(err.value).startswith(f"{path}/bundle.json field model does not fit {path}/weights.safetensors: tensor embedding.weight is [")


def _only_on_meta(build):
    def wrapper(config):
        assert torch.empty(0).device.type == "meta", "a model was built for real before its shapes were checked"
        return build(config)
    return wrapper


CRAFTED = {
    "labels are not strings": (dict(labels=[1, 2, 3]), "bundle.json: field labels must be a list of at least 2 distinct strings"),
    "embed_dim 0": (dict(model__embed_dim=0), "bundle.json: field model.embed_dim must be an integer from 1 to 2**40, got 0"),
    "a 2**64 size": (dict(model__ngram_buckets=2**64), "bundle.json: field model.ngram_buckets must be an integer from 0 to 2**40"),
    "a string size": (dict(model__vocab_size="12"), "bundle.json: field model.vocab_size must be an integer"),
    "an unknown tokenizer": (dict(tokenizer={"name": "x"}), "bundle.json: field tokenizer must be an object"),
    "dropout 5": (dict(model__dropout=5), "bundle.json: field model.dropout must be a number from 0 to 1"),
    "no manifest": (dict(files=None), "bundle.json has no complete manifest of files (field files)"),
}


@pytest.mark.parametrize("case", sorted(CRAFTED))
def test_crafted_fields_end_in_exit_2_naming_the_field(bundle_dir, case):
    path, _ = bundle_dir
    changes, message = CRAFTED[case]
    edit_meta(path, forge=case != "no manifest", **changes)
    for command in (["predict", "--model", str(path), "great"], ["info", str(path)]):
        result = cli_here(*command)
        assert result.returncode == 2, result.stderr
        assert f"{path}/{message}" in result.stderr and "internal error" not in result.stderr, result.stderr


def test_a_vocab_that_is_a_dict_is_refused(bundle_dir):
    path, _ = bundle_dir
    (path / "vocab.json").write_text(json.dumps({"<pad>": 0, "<unk>": 1}))
    forge_manifest(path)
    result = cli_here("predict", "--model", path, "great")
    assert result.returncode == 2
    assert result.stderr == f"textpipe predict: error: {path}/vocab.json: a vocabulary file holds a JSON list of strings\n"


def test_weights_that_are_a_symlink_to_a_text_file_are_refused(bundle_dir, tmp_path):
    path, _ = bundle_dir
    text = tmp_path / "notes.txt"
    text.write_text("not weights at all\n" * 10)
    (path / "weights.safetensors").unlink()
    (path / "weights.safetensors").symlink_to(text)
    forge_manifest(path)
    result = subprocess.run([sys.executable, "-m", "textpipe", "info", str(path)], capture_output=True, text=True)
    assert result.returncode == 2, result.stderr
    assert result.stderr.startswith(f"textpipe info: error: {path}/weights.safetensors is not a safetensors weights file (")


def test_weights_never_go_through_torch_load(bundle_dir, monkeypatch):
    path, _ = bundle_dir
    monkeypatch.setattr(torch, "load", lambda *a, **k: pytest.fail("torch.load was called on a bundle file"))
    assert load_bundle(path).labels == ["neg", "neutral", "pos"]
    torch.save({"embedding.weight": torch.ones(2)}, path / "weights.safetensors", _use_new_zipfile_serialization=False)  # the legacy format
    forge_manifest(path)
    with pytest.raises(BundleError, match="is not a safetensors weights file"):
        load_bundle(path)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.float64])
def test_all_finite_finds_one_nan_or_infinity_anywhere(dtype):
    table = torch.randn(1000, 33).to(dtype)
    assert all_finite(table) and all_finite(torch.empty(0, 4, dtype=dtype)) and all_finite(torch.tensor([2**40]))
    for bad in (float("nan"), float("inf"), -float("inf")):
        for where in (0, 12345, table.numel() - 1):
            spoiled = table.clone()
            spoiled.view(-1)[where] = bad
            assert not all_finite(spoiled), (bad, where)


def test_non_finite_weights_are_never_saved_nor_loaded(bundle_dir, tmp_path):
    path, model = bundle_dir
    with torch.no_grad():
        model.head.weight[0, 0] = float("nan")
    meta = json.loads((path / "bundle.json").read_text())
    with pytest.raises(BundleError, match="tensor head.weight holds NaN or infinite values"):
        save_bundle(tmp_path / "nan", Bundle(model, load_bundle(path).vocab, Tokenizer("spacy"), meta["labels"], ModelConfig(**meta["model"])))
    state = load_bundle(path).model.state_dict()
    state["head.weight"][0, 0] = float("inf")
    save_file(state, path / "weights.safetensors")
    forge_manifest(path)
    with pytest.raises(BundleError, match="tensor head.weight holds NaN or infinite values"):
        load_bundle(path)


# --- integrity stated plainly, and nothing read that cannot be trusted (issue 30) -------------------

def test_a_tensor_of_another_dtype_is_refused_not_converted(bundle_dir):
    path, model = bundle_dir
    state = {k: v.clone() for k, v in model.state_dict().items()}
    state["embedding.weight"] = state["embedding.weight"].to(torch.int32)  # the right shape, an I32 table
    save_file(state, path / "weights.safetensors")
    forge_manifest(path)
    with pytest.raises(BundleError, match="tensor embedding.weight is stored as I32, but the model's is F32"):
        load_bundle(path)
    assert cli_here("info", path).returncode == 2


def test_info_verify_prints_the_digest_to_pin_and_refuses_another(bundle_dir, tmp_path):
    path, _ = bundle_dir
    result = cli_here("info", path, "--verify")
    digest = hashlib.sha256((path / "bundle.json").read_bytes()).hexdigest()
    assert result.returncode == 0 and result.stdout == f"{digest}  {path}/bundle.json\n"
    assert cli_here("info", path, "--verify", "--expect", digest).returncode == 0
    wrong = cli_here("info", path, "--verify", "--expect", "0" * 64)
    assert wrong.returncode == 2 and "not the pinned" in wrong.stderr
    (path / "vocab.json").write_text((path / "vocab.json").read_text().replace("great", "grate"))
    broken = cli_here("info", path, "--verify")
    assert broken.returncode == 2 and "vocab.json" in broken.stderr and broken.stdout == ""


def test_a_huge_sparse_bundle_json_is_refused_at_once(bundle_dir):
    import time

    path, _ = bundle_dir
    with open(path / "bundle.json", "r+b") as f:
        f.truncate(2 << 30)  # 2 GB of holes: reading it would take 4 GB of memory
    start = time.perf_counter()
    result = cli_here("info", path)
    assert result.returncode == 2 and "bundle.json" in result.stderr and "bytes" in result.stderr
    assert time.perf_counter() - start < 1.0


@pytest.mark.parametrize("name", ["weights.safetensors", "vocab.json", "bundle.json", "config.json", "run.json"])
def test_a_fifo_in_a_bundle_is_refused_never_waited_on(bundle_dir, name):
    path, _ = bundle_dir
    (path / name).unlink(missing_ok=True)
    os.mkfifo(path / name)  # reading it would wait forever for a writer
    result = cli_here("info", path)
    assert result.returncode == 2, result.stderr
    assert name in result.stderr or "bundle.json" in result.stderr


@pytest.mark.parametrize("change, field", [
    (lambda m: m.update(train=["a list"]), "field train"),
    (lambda m: m.update(quantized="garbage"), "field quantized"),
    (lambda m: m.update(quantized={"method": 3}), "field quantized.method"),
    (lambda m: m["files"].update({"vocab.json": {"bytes": [1], "sha256": "x"}}), "files.vocab.json"),
    (lambda m: m.update(files=[[[]]]), "field files"),
])
def test_bundle_json_of_the_wrong_shape_is_exit_2_naming_the_field(bundle_dir, change, field):
    path, _ = bundle_dir
    meta = json.loads((path / "bundle.json").read_text())
    change(meta)
    (path / "bundle.json").write_text(json.dumps(meta))
    for command in (["info", path], ["predict", "--model", path, "a film"]):
        result = cli_here(*command)
        assert result.returncode == 2 and field in result.stderr, result.stderr


@pytest.mark.parametrize("name, content, message", [
    ("bundle.json", "[" * 100_000 + "]" * 100_000, "nested too deeply"),
    ("bundle.json", '{"format_version": ' + "9" * 5000 + "}", "number too long"),
    ("bundle.json", b"{\"a\": \"\xff\"}", "not UTF-8"),
    ("vocab.json", "[" * 50 + "]" * 50, "vocab"),
    ("config.json", '["a list"]', "config.json: the file must be a JSON object"),
    ("config.json", '{"data": {"source": {"text_columns": [["x"]]}}}', "config.json"),
    ("run.json", '{"created": ["2026"]}', "run.json: field created"),
    ("metrics.json", '{"test": {"accuracy": "high"}}', "metrics.json: field test.accuracy"),
])
def test_side_files_nested_or_of_the_wrong_type_are_exit_2(bundle_dir, name, content, message):
    path, _ = bundle_dir
    (path / name).write_bytes(content if isinstance(content, bytes) else content.encode("utf-8"))
    if name == "vocab.json":
        forge_manifest(path)
    commands = ([["info", path]] if "source" not in str(content) else []) + ([["predict", "--model", path, "a film"]] if name in ("bundle.json", "config.json", "vocab.json") else [])
    for command in commands:
        result = cli_here(*command)
        assert result.returncode == 2 and message in result.stderr, result.stderr
        assert len(result.stderr.strip().splitlines()) <= 2  # the message and perhaps a hint: no traceback


def test_evaluate_reads_run_json_safely(bundle_dir):
    path, _ = bundle_dir
    (path / "run.json").write_text('{"data": {"test": ["not", "a", "path"]}}')
    result = cli_here("evaluate", "--model", path)
    assert result.returncode == 2 and "records no test file" in result.stderr
