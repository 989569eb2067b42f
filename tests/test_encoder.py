"""TextEncoder gives every text the ids the tokenizer and the vocabulary give it one at a time."""

import pytest
import torch

import textpipe.encoder
from textpipe.encoder import TextEncoder
from textpipe.tokenizer import Tokenizer
from textpipe.vocab import UNK_ID, build_vocab

TEXTS = ["A gorgeous, witty movie.", "", "don't  stop\tnow!", "a dull, dull movie", "   ", "never-seen words here", "émigré café ."]


def one_at_a_time(tokenizer, vocab, texts):
    rows = [vocab(tokenizer(text)) or [UNK_ID] for text in texts]
    return torch.tensor([i for row in rows for i in row], dtype=torch.long), torch.tensor([len(row) for row in rows])


@pytest.mark.parametrize("name", ["spacy", "basic_english", "whitespace"])
def test_ids_equal_those_of_each_text_alone_call_after_call(name):
    tokenizer = Tokenizer(name)
    vocab = build_vocab(tokenizer(t) for t in TEXTS[:3])
    encoder = TextEncoder(tokenizer, vocab)
    for texts in (TEXTS, TEXTS[3:], TEXTS[::-1], [], ["movie."]):  # later calls read chunks remembered by earlier ones
        ids, lengths = encoder(texts)
        expected_ids, expected_lengths = one_at_a_time(tokenizer, vocab, texts)
        assert torch.equal(ids, expected_ids) and torch.equal(lengths, expected_lengths), texts


def test_the_memo_starts_over_when_full(monkeypatch):
    monkeypatch.setattr(textpipe.encoder, "MEMO_SIZE", 5)
    tokenizer = Tokenizer("spacy")
    vocab = build_vocab(tokenizer(t) for t in TEXTS)
    encoder = TextEncoder(tokenizer, vocab)
    for texts in (TEXTS[:1], TEXTS[2:4], TEXTS):  # 4 chunks, then 5 more (over 5: start over), then 15 (all of one call)
        assert all(torch.equal(a, b) for a, b in zip(encoder(texts), one_at_a_time(tokenizer, vocab, texts)))
        assert len(encoder.codes) <= max(5, len({c for t in texts for c in t.split()}))
