"""Pretrained vectors from a local GloVe / word2vec text file (no download)."""

import json

import pytest
import torch

from textpipe.core.models import ModelConfig, build_model
from textpipe.run.config import DataConfig, PipelineConfig
from textpipe.run.phases import train_files
from textpipe.text.tokenizer import TokenizerConfig
from textpipe.core.train import TrainConfig
from textpipe.text.vectors import load_into_embedding, load_vectors, vectors_for_vocab
from textpipe.text.vocab import vocab_from_tokens

WORDS = {"good": [1.0, 2.0, 3.0, 4.0], "bad": [-1.0, -2.0, -3.0, -4.0], "film": [0.5, 0.5, 0.5, 0.5]}


def write_vectors(path, words=WORDS, header=False):
    lines = [f"{len(words)} {len(next(iter(words.values())))}"] if header else []
    lines += [" ".join([w, *map(str, v)]) for w, v in words.items()]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


@pytest.mark.parametrize("header", [False, True], ids=["glove", "word2vec-header"])
def test_reads_a_local_file_and_caches_it_by_its_sha256(tmp_path, header, monkeypatch):
    monkeypatch.setenv("TEXTPIPE_CACHE", str(tmp_path / "cache"))
    path = write_vectors(tmp_path / "vecs.txt", header=header)
    vectors = load_vectors(path)
    assert vectors.dim == 4 and sorted(vectors.itos) == sorted(WORDS)
    assert sorted(p.suffix for p in (tmp_path / "cache" / "vectors").iterdir()) == [".json", ".npz"]
    assert not (tmp_path / "vecs.txt.pt").exists(), "no pickle is written"
    assert load_vectors(path).vectors.tolist() == vectors.vectors.tolist()


def test_a_changed_file_is_read_again_not_served_from_a_stale_cache(tmp_path):
    path = write_vectors(tmp_path / "vecs.txt")
    load_vectors(path)
    write_vectors(path, {"good": [9.0, 9.0, 9.0, 9.0], "new": [1.0, 1.0, 1.0, 1.0]})
    import os
    stat = path.stat()
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))
    assert sorted(load_vectors(path).itos) == ["good", "new"]


def test_word_rows_get_the_vectors_and_coverage_is_counted(tmp_path):
    path = write_vectors(tmp_path / "vecs.txt")
    vocab = vocab_from_tokens(["<pad>", "<unk>", "good", "Film", "plot", "bad"])
    torch.manual_seed(0)
    model = build_model(ModelConfig(vocab_size=len(vocab), num_classes=2, embed_dim=4, ngram_buckets=16))
    before = model.embedding.weight.detach().clone()
    coverage = load_into_embedding(model.embedding, vocab, path)
    assert (coverage.found, coverage.total, coverage.dim) == (3, 4, 4)  # "Film" found lower-cased, "plot" not
    assert "3 of 4 vocabulary tokens found (75.0 %)" in coverage.describe()
    w = model.embedding.weight.detach()
    assert w[vocab["good"]].tolist() == WORDS["good"]
    assert w[vocab["Film"]].tolist() == WORDS["film"]
    assert w[vocab["bad"]].tolist() == WORDS["bad"]
    for untouched in (0, 1, vocab["plot"]):  # <pad>, <unk>, a word the file lacks
        assert torch.equal(w[untouched], before[untouched])
    assert torch.equal(w[len(vocab):], before[len(vocab):]), "hashed n-gram rows keep their initialisation"
    table, found = vectors_for_vocab(vocab, load_vectors(path))
    assert found.tolist() == [False, False, True, True, False, True]


def test_a_dimension_mismatch_or_a_missing_file_is_a_clear_error(tmp_path):
    path = write_vectors(tmp_path / "vecs.txt")
    vocab = vocab_from_tokens(["<pad>", "<unk>", "good"])
    model = build_model(ModelConfig(vocab_size=len(vocab), num_classes=2, embed_dim=8))
    with pytest.raises(ValueError, match="4 dimensions but the model's embed_dim is 8"):
        load_into_embedding(model.embedding, vocab, path)
    with pytest.raises(FileNotFoundError, match="no such vectors file"):
        load_vectors(tmp_path / "missing.txt")
    (tmp_path / "ragged.txt").write_text("a 1 2 3\nb 1 2 3 4\n", encoding="utf-8")
    with pytest.raises(ValueError, match="ragged.txt"):
        load_vectors(tmp_path / "ragged.txt")


def test_training_with_vectors_reports_coverage_and_starts_from_them(toy_files, tmp_path):
    train, dev, test = toy_files
    words = {w: [float(i), 1.0, -1.0, 0.5] for i, w in enumerate(["good", "great", "bad", "awful", "movie"])}
    path = write_vectors(tmp_path / "vecs.txt", words)
    config = PipelineConfig(
        tokenizer=TokenizerConfig("whitespace"),
        data=DataConfig(vectors=str(path)),
        model=ModelConfig(name="cnn", embed_dim=4, hidden_dim=8),
        train=TrainConfig(epochs=1, keep_checkpoints=0),
    )
    metrics = train_files(train, test, tmp_path / "run", dev=dev, config=config, quiet=True)
    run = json.loads((tmp_path / "run" / "run.json").read_text())
    assert run["vectors"]["found"] == 5 and run["vectors"]["dim"] == 4
    assert run["vectors"]["total"] > 5
    assert metrics["test"]["n"] == 100


def test_frozen_vectors_sit_beside_the_learned_rows_and_never_train(toy_files, tmp_path):
    train, dev, test = toy_files
    words = {w: [float(i), 1.0, -1.0, 0.5] for i, w in enumerate(["good", "great", "bad", "awful", "movie"])}
    path = write_vectors(tmp_path / "vecs.txt", words)
    config = PipelineConfig(
        tokenizer=TokenizerConfig("whitespace"), data=DataConfig(vectors=str(path)),
        model=ModelConfig(frozen_dim=4, ngram_buckets=64), train=TrainConfig(epochs=2, keep_checkpoints=0),
    )
    train_files(train, test, tmp_path / "run", dev=dev, config=config, quiet=True)
    from textpipe.bundle.store import load_bundle

    bundle = load_bundle(tmp_path / "run")
    frozen, vocab = bundle.model.frozen, bundle.vocab
    assert frozen[vocab["awful"]].tolist() == words["awful"], "trained, and still exactly the vectors"
    assert frozen[vocab["plot"]].tolist() == [0.0] * 4 and frozen[0].tolist() == [0.0] * 4
    assert bundle.model.head.in_features == 64 + 4 and "frozen" not in dict(bundle.model.named_parameters())


def test_frozen_dim_without_vectors_is_refused_before_training(toy_files, tmp_path):
    train, _, test = toy_files
    with pytest.raises(ValueError, match="frozen_dim needs pretrained vectors"):
        train_files(train, test, tmp_path / "run", config=PipelineConfig(model=ModelConfig(frozen_dim=50)), quiet=True)
    assert not (tmp_path / "run").exists()


def test_padding_never_changes_the_frozen_mean():
    from textpipe.core.collate import pad_collate

    torch.manual_seed(0)
    model = build_model(ModelConfig(vocab_size=50, num_classes=3, frozen_dim=5, ngram_buckets=32)).eval()
    model.frozen.normal_()
    short, padded = pad_collate([torch.tensor([4, 9, 7])]), pad_collate([torch.tensor([4, 9, 7]), torch.tensor(list(range(2, 20)))])
    assert torch.allclose(model(short.ids, short.mask)[0], model(padded.ids, padded.mask)[0], atol=1e-6)


class Payload:
    """Unpickling this runs code: what a planted torchtext cache could do."""

    def __reduce__(self):
        import os

        return (os.mkdir, (os.environ["PLANTED_MARKER"],))


def test_a_planted_torchtext_cache_beside_the_file_is_never_unpickled(tmp_path, monkeypatch):
    marker = tmp_path / "code-ran"
    monkeypatch.setenv("PLANTED_MARKER", str(marker))
    path = write_vectors(tmp_path / "vecs.txt")
    torch.save(Payload(), tmp_path / "vecs.txt.pt")  # torchtext 0.18 would torch.load this (full pickle)
    vectors = load_vectors(path)
    assert not marker.exists(), "the .pt beside the vectors file was unpickled"
    assert sorted(vectors.itos) == sorted(WORDS)


def test_an_edited_or_truncated_parsed_cache_is_parsed_again_with_a_notice(tmp_path, monkeypatch, caplog):
    monkeypatch.setenv("TEXTPIPE_CACHE", str(tmp_path / "cache"))
    path = write_vectors(tmp_path / "vecs.txt")
    first = load_vectors(path)
    (npz,) = (tmp_path / "cache" / "vectors").glob("*.npz")
    npz.write_bytes(npz.read_bytes()[:-10])
    with caplog.at_level("WARNING", logger="textpipe"):
        again = load_vectors(path)
    assert again.vectors.tolist() == first.vectors.tolist() and "damaged" in caplog.text


@pytest.mark.parametrize("content, message", [
    ("a 1 nan 3\n", "not finite"), ("a 1 x 3\n", "vecs.txt:1: a value after the word 'a' is not a number"), ("a 1 2\nb\n", "vecs.txt:2"),
])
def test_bad_numbers_are_a_clear_error(tmp_path, content, message):
    (tmp_path / "vecs.txt").write_text(content, encoding="utf-8")
    with pytest.raises(ValueError, match=message):
        load_vectors(tmp_path / "vecs.txt")
