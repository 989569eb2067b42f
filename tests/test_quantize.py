"""Quantized bundles: compact on disk, loaded unchanged everywhere, predicting as the original does."""

import json

import pytest
import torch

from conftest import TEXTS, cli_here, run_cli as textpipe, train_tiny
from textpipe.bundle import META, WEIGHTS, BundleError, load_bundle, load_weights
from textpipe.pipeline import report_file
from textpipe.predict import Predictor
from textpipe.compact import dequantize_table, pack_mask, quantize_table, unpack_mask
from textpipe.quantize import QuantizeConfig, quantize_bundle, used_rows


@pytest.mark.parametrize("bits", [4, 8])
@pytest.mark.parametrize("width", [6, 7])
def test_table_round_trip(bits, width):
    g = torch.Generator().manual_seed(0)
    table = torch.randn(50, width, generator=g)
    table[3] = 0.0
    keep = torch.rand(50, generator=g) < 0.6
    parts = quantize_table(table, keep, bits)
    back = dequantize_table(parts)
    assert back.shape == table.shape and back.dtype == torch.float32
    step = table.abs().amax(1, keepdim=True) / (2 ** (bits - 1) - 1)
    assert ((back - table)[keep].abs() <= step[keep] / 2 + 1e-3 * step[keep]).all()  # half a step (float16 scale)
    shared = table[~keep].mean(0)
    assert torch.allclose(back[~keep], shared.expand_as(back[~keep]), atol=float(shared.abs().max()) / 2 ** (bits - 1))
    assert (back[3] == 0).all() or not keep[3]


def test_mask_packs_eight_rows_a_byte():
    mask = torch.rand(77, generator=torch.Generator().manual_seed(1)) < 0.5
    packed = pack_mask(mask)
    assert packed.dtype == torch.uint8 and packed.shape == (10,)
    assert torch.equal(unpack_mask(packed, 77), mask)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    return train_tiny(tmp_path_factory.mktemp("quantize"), embed_dim=32, ngram_buckets=4096)


def test_quantized_bundle_predicts_like_the_original_and_loads_everywhere(trained, tmp_path):
    model_dir, test = trained
    summary = quantize_bundle(model_dir, tmp_path / "q", QuantizeConfig(cutoff=None))
    assert summary["used_rows_from"].startswith("rows that differ") and summary["kept_rows"] == summary["used_rows"] < summary["rows"]
    original, quantized = Predictor.load(model_dir), Predictor.load(tmp_path / "q")
    clear = [t for t, p in zip(TEXTS, original.probabilities(TEXTS)) if p.max() > 0.6]  # near ties may flip
    assert len(clear) >= 3
    assert [r["label"] for r in quantized.predict(clear)] == [r["label"] for r in original.predict(clear)]
    torch.testing.assert_close(quantized.probabilities(TEXTS), original.probabilities(TEXTS), atol=0.05, rtol=0)
    accuracy = lambda model: report_file(model, test, tmp_path / f"eval-{model.name}")["overall"]["accuracy"]  # noqa: E731
    assert abs(accuracy(tmp_path / "q") - accuracy(model_dir)) <= 0.02
    assert not any(name.endswith("embedding.weight") for name in load_weights(tmp_path / "q"))  # stored compact
    weights = lambda d: (d / WEIGHTS).stat().st_size  # noqa: E731
    assert weights(tmp_path / "q") < weights(model_dir) / 5
    # The Python API's bundle is an ordinary float model again.
    assert load_bundle(tmp_path / "q").model.embedding.weight.dtype == torch.float32


def test_unused_rows_are_the_rows_still_at_their_seeded_start(trained):
    model_dir, _ = trained
    bundle = load_bundle(model_dir)
    used, how = used_rows(bundle.model, seed=0)
    assert how.startswith("rows that differ") and 0 < int(used.sum()) < len(used)
    # RowAdam's own record of the rows it stepped (the run kept its checkpoint) says the same.
    saved = [torch.load(path, weights_only=True) for path in sorted((model_dir / "checkpoints").glob("step-*.pt"))]  # the test run's own files
    checkpoint = next(c for c in saved if torch.equal(c["model"]["embedding.weight"], bundle.model.embedding.weight))
    stepped = torch.zeros(len(used), dtype=torch.bool)
    stepped[next(s["rows"] for opt in checkpoint["optimizers"] for s in opt["state"].values() if "rows" in s)] = True
    stepped[0] = True  # <pad>: never stepped, all zeros, kept
    assert torch.equal(used, stepped)
    _, unknown = used_rows(bundle.model, seed=12345)  # another seed's initial table: nothing matches, all kept
    assert unknown.startswith("none found")


def test_cutoff_keeps_the_words_first(trained, tmp_path):
    model_dir, _ = trained
    vocab_size = load_bundle(model_dir).model_config.vocab_size
    summary = quantize_bundle(model_dir, tmp_path / "q", QuantizeConfig(cutoff=vocab_size + 10, bits=8))
    assert summary["kept_rows"] == vocab_size + 10 and summary["method"].startswith("int8")
    table = load_bundle(tmp_path / "q").model.embedding.weight
    shared = table[-1]  # the last bucket row: dropped, like most of them
    kept = ~(table == shared).all(1)
    # Every word is kept; <unk> never occurs in training (the vocabulary comes from it), so a bucket gets its place.
    assert kept[2:vocab_size].all() and 1 <= int(kept[vocab_size:].sum()) <= 11


def test_cli_quantize_info_predict_evaluate(trained, tmp_path):
    model_dir, test = trained
    out = tmp_path / "q"
    result = textpipe("quantize", "--model", model_dir, "--out", out)
    assert result.returncode == 0, result.stderr
    assert "% of" in result.stdout and "as int4" in result.stdout
    info = textpipe("info", out)
    assert info.returncode == 0 and "quantized   int4 rows, one float16 scale per row" in info.stdout and "nb.table: its " in info.stdout
    meta = json.loads(textpipe("info", out, "--json").stdout)
    assert meta["quantized"]["cutoff"] == 80000 and meta["parameters"] == json.loads(textpipe("info", model_dir, "--json").stdout)["parameters"]
    predicted = textpipe("predict", "--model", out, TEXTS[0])
    assert predicted.returncode == 0 and json.loads(predicted.stdout)["label"] == Predictor.load(model_dir).predict(TEXTS[:1])[0]["label"]
    assert textpipe("evaluate", "--model", out, "--data", test, "--quiet").returncode == 0
    same = textpipe("quantize", "--model", model_dir, "--out", model_dir)
    assert same.returncode == 2 and "new folder" in same.stderr


def test_cnn_bundle_quantizes_too(tmp_path):
    model_dir, _ = train_tiny(tmp_path, "cnn")
    quantize_bundle(model_dir, tmp_path / "q", QuantizeConfig(bits=8))
    original, quantized = Predictor.load(model_dir), Predictor.load(tmp_path / "q")
    torch.testing.assert_close(quantized.probabilities(TEXTS), original.probabilities(TEXTS), atol=0.02, rtol=0)


def test_quantized_parts_must_fit_the_models_table_before_anything_is_allocated():
    from textpipe.compact import fold_quantized_shapes

    expected = {"embedding.weight": [1000, 16], "head.weight": [2, 16]}
    parts = {"embedding.weight.q_values": [101, 8], "embedding.weight.q_scale": [101], "embedding.weight.q_kept": [125], "embedding.weight.q_shape": [3]}
    assert fold_quantized_shapes({**parts, "head.weight": [2, 16]}, expected) == expected
    for name, crafted in [("q_values", [2**40, 8]), ("q_kept", [2**37]), ("q_scale", [7]), ("q_values", [101, 64])]:
        with pytest.raises(ValueError, match="do not fit the model's 1000 x 16 table"):
            fold_quantized_shapes({**parts, f"embedding.weight.{name}": crafted}, expected)
    with pytest.raises(ValueError, match="does not fit its parts"):
        dequantize_table({"q_values": torch.zeros(2, 8, dtype=torch.uint8), "q_scale": torch.ones(2, dtype=torch.float16),
                          "q_kept": torch.zeros(2, dtype=torch.uint8), "q_shape": torch.tensor([2**40, 16, 4])})


def forged(model_dir, tmp_path, change):
    """A quantized copy whose weights file was altered by ``change(state)`` and its manifest made to match again."""
    from safetensors.torch import save_file
    from test_bundle import forge_manifest

    quantize_bundle(model_dir, tmp_path / "q", QuantizeConfig(cutoff=None))
    state = load_weights(tmp_path / "q")
    change(state)
    save_file(state, tmp_path / "q" / WEIGHTS)
    forge_manifest(tmp_path / "q")
    return tmp_path / "q"


@pytest.mark.parametrize("change, message", [
    (lambda s: s.update({"embedding.weight.q_values": s["embedding.weight.q_values"].to(torch.int8)}), "q_values is stored as I8, but the model's is U8"),
    (lambda s: s.update({"embedding.weight.q_shape": s["embedding.weight.q_shape"].float()}), "q_shape is stored as F32"),
    (lambda s: s["embedding.weight.q_shape"].__setitem__(2, 5), "does not fit its parts"),
    (lambda s: s["embedding.weight.q_kept"].fill_(255), "q_kept marks"),
    (lambda s: s["embedding.weight.q_kept"].zero_(), "q_kept marks 0 rows kept"),
    (lambda s: s["embedding.weight.q_shape"].__setitem__(0, -7), "does not fit its parts"),
])
def test_forged_quantized_parts_are_exit_2_naming_the_file(trained, tmp_path, change, message):
    model_dir, _ = trained
    path = forged(model_dir, tmp_path, change)
    with pytest.raises(BundleError, match=message):
        load_bundle(path)
    for command in (["info", path], ["predict", "--model", path, "a film"]):
        result = cli_here(*command)
        assert result.returncode == 2 and "weights.safetensors" in result.stderr, result.stderr


@pytest.mark.parametrize("garbage", ["x", [1, 2], {"method": "int4"}, {"method": "m", "table": "t", "rows": "9", "used_rows": 1, "kept_rows": 1},
                                     {"method": "m", "table": "t", "rows": 9, "used_rows": 1, "kept_rows": 1, "cutoff": "big"}])
def test_a_garbage_quantized_field_is_exit_2_in_info_too(trained, tmp_path, garbage):
    model_dir, _ = trained
    quantize_bundle(model_dir, tmp_path / "q", QuantizeConfig(cutoff=None))
    meta = json.loads((tmp_path / "q" / META).read_text())
    meta["quantized"] = garbage  # not one of the fields the manifest's digest covers
    (tmp_path / "q" / META).write_text(json.dumps(meta))
    for command in (["info", tmp_path / "q"], ["info", tmp_path / "q", "--json"], ["predict", "--model", tmp_path / "q", "a film"]):
        result = cli_here(*command)
        assert result.returncode == 2 and "field quantized" in result.stderr, result.stderr


def test_the_nb_paths_table_is_stored_compact_too(trained, tmp_path):
    model_dir, _ = trained
    summary = quantize_bundle(model_dir, tmp_path / "q", QuantizeConfig(cutoff=None))
    original = load_bundle(model_dir).model.nb.table
    nonzero = int(original.ne(0).any(1).sum())
    assert 0 < nonzero < len(original) and summary["nb_table"] == f"nb.table: its {nonzero:,} non-zero rows as int8, one float16 scale per row"
    stored = load_weights(tmp_path / "q")
    assert "nb.table" not in stored and stored["nb.table.q_values"].shape == (nonzero + 1, original.shape[1])  # +1: the shared zero row
    back = load_bundle(tmp_path / "q").model.nb.table
    assert back.dtype == torch.float32 and not (back.ne(0) & original.eq(0)).any()  # (a value under float16's range may become 0)
    torch.testing.assert_close(back, original, atol=original.abs().max().item() / 100, rtol=0)
