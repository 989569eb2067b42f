import pickle

import pytest

from textpipe.tokenizer import Tokenizer


def test_spacy_splits_punctuation_and_lowercases():
    assert Tokenizer("spacy")("A gorgeous, witty movie.") == ["a", "gorgeous", ",", "witty", "movie", "."]
    assert Tokenizer("spacy", lower=False)("A Movie") == ["A", "Movie"]


def test_spacy_drops_whitespace_tokens():
    assert Tokenizer("spacy")("two  spaces \n and a newline ") == ["two", "spaces", "and", "a", "newline"]


def test_batched_pipe_matches_single_calls():
    texts = ["Don't stop!", "U.S. films aren't bad.", "émigré café"]
    for name in ("spacy", "basic_english", "whitespace"):
        tok = Tokenizer(name)
        assert list(tok.pipe(texts, batch_size=2)) == [tok(t) for t in texts]


def test_basic_english_and_whitespace():
    assert Tokenizer("basic_english")("Hello, World!") == ["hello", ",", "world", "!"]
    assert Tokenizer("whitespace", lower=False)("Hello, World!") == ["Hello,", "World!"]


def test_pickles_without_the_spacy_object():
    tok = Tokenizer("spacy")
    tok("warm it up")  # builds the spaCy pipeline
    clone = pickle.loads(pickle.dumps(tok))
    assert len(pickle.dumps(tok)) < 200
    assert clone("Warm it up!") == ["warm", "it", "up", "!"]


def test_unknown_tokenizer_is_rejected():
    with pytest.raises(ValueError, match="unknown tokenizer 'bert'"):
        Tokenizer("bert")
