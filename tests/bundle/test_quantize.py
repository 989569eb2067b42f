"""Quantized bundles: compact on disk, loaded unchanged everywhere, predicting as the original does."""

import json
from pathlib import Path

import pytest
import torch

from conftest import TEXTS, cli_here, run_cli as textpipe, train_tiny
from textpipe.bundle.store import META, WEIGHTS, BundleError, load_bundle, load_weights
from textpipe.run.pipeline import report_file
from textpipe.bundle.predict import Predictor
from textpipe.core.compact import dequantize_table, pack_mask, quantize_table, unpack_mask
from textpipe.bundle.quantize import QuantizeConfig, quantize_bundle, used_rows


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
    from textpipe.core.compact import fold_quantized_shapes

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


# --- a bundle with a sentence encoder: the precision its encoder computes at ---------------------------------------

ENCODER = Path(__file__).resolve().parents[2] / "data" / "encoders" / "minilm-l6"


def with_sentence_head(model_dir, out):
    """``model_dir``'s bundle saved again as if trained with ``--encoder minilm-l6`` (a head that takes a share of
    the mix), without needing the encoder's files: nothing here encodes a text."""
    from dataclasses import replace

    from textpipe.bundle.store import save_bundle
    from textpipe.core.sentence_head import SentenceHead
    from textpipe.run.sentence_mix import encoder_record

    b = load_bundle(model_dir)
    head = SentenceHead(384, len(b.labels))
    head.beta.fill_(0.5)
    save_bundle(out, replace(b, model_config=replace(b.model_config, encoder="minilm-l6"), head=head, encoder=encoder_record("minilm-l6")))
    return out


def test_quantize_records_the_encoders_precision_in_the_manifest_and_info_shows_it(trained, tmp_path):
    from textpipe.bundle.store import fields_digest
    from textpipe.bundle.quantize import DEFAULT_ENCODER_PRECISION

    source = with_sentence_head(trained[0], tmp_path / "enc")
    assert "precision" not in load_bundle(source).encoder  # a bundle from train: float32, as before quantize existed
    quantize_bundle(source, tmp_path / "default", QuantizeConfig(cutoff=None))
    assert load_bundle(tmp_path / "default").encoder["precision"] == DEFAULT_ENCODER_PRECISION
    for precision in ("int8", "float16", "float32"):
        summary = quantize_bundle(source, tmp_path / precision, QuantizeConfig(cutoff=None, encoder_precision=precision))
        meta = json.loads((tmp_path / precision / META).read_text())
        assert summary["encoder_precision"] == meta["encoder"]["precision"] == precision
        assert "encoder" in meta["files"][META]["fields"] and meta["files"][META]["sha256"] == fields_digest(meta)  # covered by the digest
        assert load_bundle(tmp_path / precision).encoder == {**load_bundle(source).encoder, "precision": precision}
        info = cli_here("info", tmp_path / precision)
        assert info.returncode == 0 and f"Linear layers {precision}" in info.stdout, info.stderr
    assert json.loads(cli_here("info", source, "--json").stdout)["encoder"]["precision"] == "float32"
    result = cli_here("quantize", "--model", source, "--out", tmp_path / "cli", "--encoder-precision", "float16", "--cutoff", "0")
    assert result.returncode == 0 and "compute in float16" in result.stdout, result.stderr
    assert load_bundle(tmp_path / "cli").encoder["precision"] == "float16"


def test_an_altered_or_unknown_precision_is_exit_2_naming_the_field(trained, tmp_path):
    from textpipe.bundle.store import fields_digest

    source = with_sentence_head(trained[0], tmp_path / "enc")
    quantize_bundle(source, tmp_path / "q", QuantizeConfig(cutoff=None, encoder_precision="int8"))
    meta = json.loads((tmp_path / "q" / META).read_text())
    meta["encoder"]["precision"] = "float32"  # edited by hand: the manifest's digest no longer matches
    (tmp_path / "q" / META).write_text(json.dumps(meta))
    with pytest.raises(BundleError, match="bundle.json"):
        load_bundle(tmp_path / "q")
    for bad, message in (("int4", "field encoder.precision must be one of float32, float16, int8, got 'int4'"),
                         (8, "field encoder.precision must be one of"), (None, "field encoder.precision")):
        meta["encoder"]["precision"] = bad
        meta["files"][META]["sha256"] = fields_digest(meta)  # the digest made to match: the field itself is refused
        (tmp_path / "q" / META).write_text(json.dumps(meta))
        with pytest.raises(BundleError, match=message):
            load_bundle(tmp_path / "q")
        for command in (["info", tmp_path / "q"], ["info", tmp_path / "q", "--verify"]):
            result = cli_here(*command)
            assert result.returncode == 2 and "encoder.precision" in result.stderr and "Traceback" not in result.stderr, result.stderr
    meta["encoder"] = {**meta["encoder"], "precision": "int8", "dtype": "int8"}
    meta["files"][META]["sha256"] = fields_digest(meta)
    (tmp_path / "q" / META).write_text(json.dumps(meta))
    with pytest.raises(BundleError, match="field encoder has unknown keys: dtype"):
        load_bundle(tmp_path / "q")


def test_an_encoder_precision_for_a_bundle_without_an_encoder_is_exit_2(trained, tmp_path):
    with pytest.raises(ValueError, match="encoder_precision must be one of"):
        QuantizeConfig(encoder_precision="int4")
    result = cli_here("quantize", "--model", trained[0], "--out", tmp_path / "q", "--encoder-precision", "int8")
    assert result.returncode == 2 and "no sentence encoder" in result.stderr and not (tmp_path / "q").exists(), result.stderr
    quantize_bundle(trained[0], tmp_path / "plain", QuantizeConfig(cutoff=None))  # no encoder: no encoder record, as before
    assert "encoder" not in json.loads((tmp_path / "plain" / META).read_text())


def test_predict_loads_the_encoder_at_the_bundles_precision(trained, tmp_path, monkeypatch):
    import textpipe.text.sentence

    made = []

    class FakeEncoder:  # what Predictor asks of the encoder, recorded; its vectors all zero
        from_record = classmethod(textpipe.text.sentence.SentenceEncoder.from_record.__func__)

        def __init__(self, name, root, *, max_tokens, precision):  # precision required: a caller that leaves it out fails here
            made.append(precision)

        def encode_cached(self, texts, cache, progress=False):
            return torch.zeros(len(texts), 384)

    monkeypatch.setattr(textpipe.text.sentence, "SentenceEncoder", FakeEncoder)
    source = with_sentence_head(trained[0], tmp_path / "enc")
    quantize_bundle(source, tmp_path / "q", QuantizeConfig(cutoff=None, encoder_precision="int8"))
    Predictor.load(source).predict(TEXTS[:2])
    Predictor.load(tmp_path / "q").predict(TEXTS[:2])
    assert made == ["float32", "int8"]


@pytest.mark.parametrize("precision", ["int8", "float16"])
def test_quantize_linear_keeps_the_vectors_close_and_stores_the_weights_small(precision):
    from textpipe.core.minilm import Float16Linear, MiniLM, MiniLMConfig, quantize_linear

    torch.manual_seed(0)
    model = MiniLM(MiniLMConfig(layers=2, vocab_size=200)).eval()
    ids = torch.randint(103, 200, (4, 9))
    ids[:, 0], ids[2:, 6:] = 101, 0
    before = model(ids, ids != 0)
    fast = quantize_linear(model, precision)  # float16: in place; int8: a quantized copy
    after = fast(ids, ids != 0)
    assert after.dtype == torch.float32 and torch.nn.functional.cosine_similarity(before, after).min() > 0.99
    still_float = sorted(name for name, m in fast.named_modules() if isinstance(m, torch.nn.Linear))
    assert still_float == ([] if precision == "float16" else ["blocks.0.ffn_out", "blocks.1.ffn_out"])  # the rest replaced
    if precision == "float16":
        assert all(m.weight.dtype == torch.float16 for m in fast.modules() if isinstance(m, Float16Linear))
    with pytest.raises(ValueError, match="one of float32, float16, int8"):
        quantize_linear(model, "int4")


def test_the_sentence_cache_keeps_each_precisions_vectors_apart():
    from textpipe.text.sentence import sentence_cache_key

    keys = {p: sentence_cache_key("minilm-l6", "ab" * 32, 256, p) for p in ("float32", "float16", "int8")}
    assert keys["float32"] == f"minilm-l6-{'ab' * 8}-256"  # float32: the folder the vectors always had
    assert len(set(keys.values())) == 3


@pytest.mark.skipif(not (ENCODER / "model.safetensors").is_file(), reason="needs the minilm-l6 encoder in data/ (textpipe vectors fetch minilm-l6)")
def test_an_int8_bundle_predicts_from_int8_vectors_as_accurately(tmp_path, monkeypatch):
    from conftest import make_rows, write_csv
    from textpipe.text.sentence import SentenceEncoder

    monkeypatch.setenv("TEXTPIPE_CACHE", str(tmp_path / "cache"))  # a cache of this test's own, to look into
    train = write_csv(tmp_path / "train.csv", make_rows(60, seed=1))
    test = write_csv(tmp_path / "test.csv", make_rows(30, seed=3))
    out = tmp_path / "run"
    result = cli_here("train", "--train", train, "--test", test, "--out", out, "--encoder", "minilm-l6", "--epochs", "2", "--quiet",
                      "--set", "model.embed_dim=8", "--set", "model.ngram_buckets=64")
    assert result.returncode == 0, result.stderr
    quantized = cli_here("quantize", "--model", out, "--out", tmp_path / "int8", "--encoder-precision", "int8")
    assert quantized.returncode == 0 and "compute in int8" in quantized.stdout, quantized.stderr
    accuracy = lambda model: report_file(model, test, tmp_path / f"eval-{model.name}")["overall"]["accuracy"]  # noqa: E731
    assert accuracy(tmp_path / "int8") == accuracy(out) >= 0.9  # separable toy reviews: nothing to lose
    texts = [text for _, text in make_rows(30, seed=3)]
    Predictor.load(tmp_path / "int8").probabilities(texts)
    folders = {f.name for f in (tmp_path / "cache" / "sentences").iterdir()}
    int8, plain = SentenceEncoder("minilm-l6", precision="int8"), SentenceEncoder("minilm-l6")
    assert folders == {int8.cache_key, plain.cache_key} and int8.cache_key.endswith("-int8")  # never in one folder
    from textpipe.text.sentence_cache import SentenceCache

    stored = SentenceCache(tmp_path / "cache", int8.cache_key, 384).vectors(texts, lambda fresh: pytest.fail("not cached"))
    torch.testing.assert_close(stored, int8.encode(texts))  # what the int8 bundle predicted from: int8 vectors
    assert not torch.allclose(stored, plain.encode(texts), atol=1e-4)
    cosine = torch.nn.functional.cosine_similarity(stored, plain.encode(texts))
    assert cosine.min() > 0.9 and cosine.mean() > 0.97  # near, not equal (mr's test texts: 0.94 and 0.98)
