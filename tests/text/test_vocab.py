import json
import random
from collections import Counter

import pytest
import torch

from textpipe.text import _torchtext  # noqa: F401
from torchtext.vocab import build_vocab_from_iterator
from textpipe.core.collate import pad_collate
from textpipe.text.vocab import PAD_ID, UNK_ID, build_vocab, load_vocab, save_vocab, vocab_from_counts

DOCS = [["a", "good", "film"], ["a", "bad", "film"], ["a", "film"]]


def test_specials_come_first():
    vocab = build_vocab(DOCS)
    assert vocab.get_itos()[:2] == ["<pad>", "<unk>"]
    assert (vocab["<pad>"], vocab["<unk>"]) == (PAD_ID, UNK_ID) == (0, 1)
    assert pad_collate([torch.tensor([5]), torch.tensor([5, 6])]).ids[0, 1] == vocab["<pad>"]  # collate pads with the vocabulary's <pad>


def test_unknown_tokens_map_to_unk():
    vocab = build_vocab(DOCS)
    assert vocab(["a", "never-seen", "film", "zzz"]) == [vocab["a"], UNK_ID, vocab["film"], UNK_ID]
    assert vocab["never-seen"] == UNK_ID


def test_min_freq_and_max_size():
    assert build_vocab(DOCS, min_freq=2).get_itos() == ["<pad>", "<unk>", "a", "film"]
    assert build_vocab(DOCS, max_size=3).get_itos() == ["<pad>", "<unk>", "a"]
    with pytest.raises(ValueError, match="max_size"):
        build_vocab(DOCS, max_size=2)


def test_the_ids_depend_on_the_token_counts_alone():
    # What lets a refit's vocabulary be made of two parts' counts added up (textpipe.run.counts.TrainingCounts).
    rng = random.Random(0)
    docs = [[f"w{rng.randint(0, 60)}" for _ in range(rng.randint(1, 8))] for _ in range(200)]  # many ties in frequency
    whole = build_vocab(docs).get_itos()
    assert whole == build_vocab_from_iterator(docs, specials=["<pad>", "<unk>"]).get_itos()  # torchtext's own, list by list
    assert build_vocab(reversed(docs)).get_itos() == whole
    first, rest = Counter(t for d in docs[:150] for t in d), Counter(t for d in docs[150:] for t in d)
    assert vocab_from_counts(first + rest).get_itos() == whole
    for min_freq, max_size in [(2, None), (1, 10), (3, 7)]:
        assert vocab_from_counts(first + rest, min_freq, max_size).get_itos() == build_vocab(docs, min_freq, max_size).get_itos()


def test_bad_limits_fail_before_the_pass():
    def never():
        raise AssertionError("the token lists were read")
        yield

    with pytest.raises(ValueError, match="min_freq"):
        build_vocab(never(), min_freq=0)


def test_save_and_load_as_plain_json(tmp_path):
    vocab = build_vocab(DOCS)
    path = tmp_path / "vocab.json"
    save_vocab(vocab, path)
    assert json.loads(path.read_text()) == vocab.get_itos()
    loaded = load_vocab(path)
    assert loaded.get_itos() == vocab.get_itos()
    assert loaded(["bad", "unseen"]) == [vocab["bad"], UNK_ID]


def test_load_rejects_a_file_that_is_not_a_vocabulary(tmp_path):
    path = tmp_path / "vocab.json"
    path.write_text(json.dumps({"a": 1}))
    with pytest.raises(ValueError, match="JSON list of strings"):
        load_vocab(path)
    path.write_text(json.dumps(["a", "b"]))
    with pytest.raises(ValueError, match="starts with"):
        load_vocab(path)
