"""The bulk predict path gives each text the probabilities it gets alone, in input order."""

import torch

from conftest import make_rows
from textpipe.bundle.store import Bundle, save_bundle
from textpipe.core.models import ModelConfig, build_model
from textpipe.bundle.predict import Predictor, top_labels
from textpipe.text.tokenizer import Tokenizer
from textpipe.text.vocab import build_vocab


def test_bulk_probabilities_match_one_text_at_a_time(tmp_path):
    texts = [text for _, text in make_rows(300, seed=6)] + ["", "zzz unseen words", "great"]
    tok = Tokenizer("spacy")
    vocab = build_vocab(tok(t) for t in texts[:200])
    for name in ("bag", "cnn"):
        config = ModelConfig(name=name, vocab_size=len(vocab), num_classes=2, ngram_buckets=64, kernel_sizes=(2, 3))
        torch.manual_seed(0)
        save_bundle(tmp_path / name, Bundle(build_model(config), vocab, tok, ["neg", "pos"], config))
        predictor = Predictor.load(tmp_path / name)
        bulk = predictor.probabilities(texts, batch_size=64)
        alone = torch.cat([predictor.probabilities([t]) for t in texts])
        assert torch.allclose(bulk, alone, atol=1e-5), name
        assert predictor.embed(texts, batch_size=7).shape[0] == len(texts)


def test_predictor_batches_through_a_dataloader_with_a_length_sorted_sampler(tmp_path):
    from textpipe.core.batching import LengthSortedSampler
    from textpipe.core.collate import pad_collate

    texts = ["a fine film", "bad", "a long and quite dull film indeed", "good fun"]
    tok = Tokenizer("whitespace")
    vocab = build_vocab(tok(t) for t in texts)
    config = ModelConfig(vocab_size=len(vocab), num_classes=2, ngram_buckets=16)
    save_bundle(tmp_path / "b", Bundle(build_model(config), vocab, tok, ["neg", "pos"], config))
    loader = Predictor.load(tmp_path / "b").batches(texts, batch_size=3)
    assert isinstance(loader.sampler, LengthSortedSampler) and loader.collate_fn is pad_collate
    assert [b.lengths.tolist() for b in loader] == [[7, 3, 2], [1]]  # longest first, little padding


def test_top_labels_of_a_batch_equal_those_of_each_row_alone():
    probs = torch.rand(300, 4).softmax(-1)
    probs[:50] = 0.25  # ties: every label equally likely
    labels, texts = ["a", "b", "c", "d"], [f"text {i}" for i in range(300)]
    for k in (None, 1, 2, 9):
        expected = []
        for text, row in zip(texts, probs):  # the loop top_labels replaced
            values, indices = row.topk(len(labels) if k is None else min(k, len(labels)))
            ranked = {labels[i]: round(v, 6) for v, i in zip(values.tolist(), indices.tolist())}
            expected.append({"text": text, "label": labels[int(indices[0])], "probs": ranked})
        got = top_labels(texts, probs, labels, k)
        assert got == expected and [list(r["probs"]) for r in got] == [list(r["probs"]) for r in expected]  # same order too


def test_text_lines_from_the_ranking_equal_those_from_result_dicts():
    from textpipe.cli.predict import text_block, text_lines, with_bad_rows
    from textpipe.bundle.predict import ranked
    from textpipe.text.sources import InputRow

    chunk = [InputRow(1, "a b", None, "f"), InputRow(2, "", ("empty text", "empty text"), "f"),
             InputRow(3, "", ("NUL byte", "NUL byte in the row"), "f"), InputRow(4, "c\td", None, "f")]
    texts, probs, labels = ["a b", "c\td"], torch.tensor([[0.1, 0.6, 0.3], [0.5, 0.25, 0.25]]), ["x", "y", "z"]
    for k in (1, 2, None):
        expected = text_lines(with_bad_rows(chunk, top_labels(texts, probs, labels, k)), labels)
        assert text_block(chunk, texts, *ranked(probs, labels, k)) == expected
    assert expected.splitlines() == ["y (0.600), z (0.300), x (0.100)\ta b", "\t", "\t", "x (0.500), y (0.250), z (0.250)\tc\td"]


def test_the_text_formats_best_label_line_is_text_blocks():
    """predict --format text, top 1: its own formatting gives what text_block over ranked gives, ties, rounding edges and bad rows included."""
    from textpipe.cli.predict import text_block, top_one_block
    from textpipe.bundle.predict import ranked
    from textpipe.text.sources import InputRow

    generator = torch.Generator().manual_seed(0)
    chunk = [InputRow(i, f"text {i}", None if i % 7 else ("empty text", "empty text"), "f") for i in range(300)]
    texts = [row.text for row in chunk if row.problem is None]
    for trial in range(3):
        probs = torch.rand(len(texts), 3, generator=generator)
        if trial == 1:
            probs[:, 1] = probs[:, 0]  # ties: topk's choice either way
        if trial == 2:
            probs = (probs * 1000).round() / 1000 + 0.0005  # on the edge of three decimals
        probs = probs / probs.sum(1, keepdim=True)
        labels = ["neg", "pos", "mixed"]
        assert top_one_block(chunk, texts, probs, labels) == text_block(chunk, texts, *ranked(probs, labels, 1))
