"""TextEncoder gives every text the ids the tokenizer and the vocabulary give it one at a time."""

import pytest
import torch

import textpipe.text.encoder
from textpipe.text.encoder import TextEncoder
from textpipe.core.kernels import ChunkTable
from textpipe.text.tokenizer import Tokenizer
from textpipe.text.vocab import UNK_ID, build_vocab

TEXTS = ["A gorgeous, witty movie.", "", "don't  stop\tnow!", "a dull, dull movie", "   ", "never-seen words here", "émigré café ."]


def one_at_a_time(tokenizer, vocab, texts):
    rows = [vocab(tokenizer(text)) or [UNK_ID] for text in texts]
    return torch.tensor([i for row in rows for i in row], dtype=torch.long), torch.tensor([len(row) for row in rows])


@pytest.mark.parametrize("name, table", [("spacy", False), ("spacy", True), ("basic_english", False), ("whitespace", False)])
def test_ids_equal_those_of_each_text_alone_call_after_call(name, table):
    tokenizer = Tokenizer(name)
    vocab = build_vocab(tokenizer(t) for t in TEXTS[:3])
    encoder = TextEncoder(tokenizer, vocab, chunk_table(table))
    for texts in (TEXTS, TEXTS[3:], TEXTS[::-1], [], ["movie."]):  # later calls read chunks remembered by earlier ones
        ids, lengths = encoder(texts)
        expected_ids, expected_lengths = one_at_a_time(tokenizer, vocab, texts)
        assert torch.equal(ids, expected_ids) and torch.equal(lengths, expected_lengths), texts


def chunk_table(wanted: bool):
    if not wanted:
        return None
    table = ChunkTable.create()
    if table is None:
        pytest.skip("no compiled kernels")
    return table


@pytest.mark.parametrize("table", [False, True])
def test_the_memo_starts_over_when_full(monkeypatch, table):
    monkeypatch.setattr(textpipe.text.encoder, "MEMO_SIZE", 5)
    tokenizer = Tokenizer("spacy")
    vocab = build_vocab(tokenizer(t) for t in TEXTS)
    encoder = TextEncoder(tokenizer, vocab, chunk_table(table))
    for texts in (TEXTS[:1], TEXTS[2:4], TEXTS):  # 4 chunks, then 5 more (over 5: start over), then 15 (all of one call)
        assert all(torch.equal(a, b) for a, b in zip(encoder(texts), one_at_a_time(tokenizer, vocab, texts)))
        assert len(encoder.codes) <= max(5, len({c for t in texts for c in t.split()}))


def test_the_compiled_chunk_table_splits_as_str_split_does():
    """Every character str.isspace() calls whitespace separates chunks, in any mix with others, and nothing else does."""
    import random

    spaces = [chr(c) for c in range(0x110000) if chr(c).isspace()]
    near = ["\u200b", "\u2030", "\u2060", "\u3001", "\u1681", "\x00", "\xa1", "\x84", "é", "😀"]  # not whitespace, some with the same lead byte
    rng = random.Random(0)
    texts = ["".join(rng.choice(spaces + near + list("ab.,'")) for _ in range(rng.randint(0, 25))) for _ in range(2000)]
    tokenizer = Tokenizer("spacy")
    vocab = build_vocab(tokenizer(t) for t in texts[:1000])
    plain, compiled = TextEncoder(tokenizer, vocab), TextEncoder(tokenizer, vocab, chunk_table(True))
    for start in range(0, len(texts), 500):  # later blocks read chunks remembered by earlier ones
        assert all(torch.equal(a, b) for a, b in zip(plain(texts[start : start + 500]), compiled(texts[start : start + 500])))
    assert len(plain.codes) == len(compiled.codes)


def test_one_encoder_shared_by_threads_gives_each_its_own_texts_ids():
    """ctypes lets go of the GIL in C: calls from several threads must not meet inside the compiled table."""
    import random
    import threading

    tokenizer = Tokenizer("spacy")
    vocab = build_vocab(tokenizer(t) for t in TEXTS)
    encoder = TextEncoder(tokenizer, vocab, chunk_table(True))
    rng = random.Random(0)
    blocks = [[" ".join(f"w{rng.randrange(10**6)}x" for _ in range(30)) for _ in range(200)] for _ in range(8)]
    expected = [one_at_a_time(tokenizer, vocab, block) for block in blocks]
    found: dict[int, tuple] = {}

    def encode(i: int) -> None:
        found[i] = encoder(blocks[i])

    threads = [threading.Thread(target=encode, args=(i,)) for i in range(len(blocks))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert all(torch.equal(a, b) for i in range(len(blocks)) for a, b in zip(found[i], expected[i]))


def test_an_encoder_with_a_compiled_table_pickles_and_its_copy_gives_the_same_ids():
    import pickle

    tokenizer = Tokenizer("spacy")
    vocab = build_vocab(tokenizer(t) for t in TEXTS[:3])
    encoder = TextEncoder(tokenizer, vocab, chunk_table(True))
    first = encoder(TEXTS[:3])
    copy = pickle.loads(pickle.dumps(encoder))
    assert all(torch.equal(a, b) for a, b in zip(copy(TEXTS), encoder(TEXTS)))
    assert all(torch.equal(a, b) for a, b in zip(copy(TEXTS[:3]), first))
