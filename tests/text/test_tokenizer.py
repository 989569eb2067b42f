import pickle

import pytest

from conftest import spacy_reference
from textpipe.text.tokenizer import Tokenizer


def test_spacy_splits_punctuation_and_lowercases():
    assert Tokenizer("spacy")("A gorgeous, witty movie.") == ["a", "gorgeous", ",", "witty", "movie", "."]
    assert Tokenizer("spacy", lower=False)("A Movie") == ["A", "Movie"]


def test_spacy_drops_whitespace_tokens():
    assert Tokenizer("spacy")("two  spaces \n and a newline ") == ["two", "spaces", "and", "a", "newline"]


def test_batched_pipe_matches_single_calls():
    texts = ["Don't stop!", "U.S. films aren't bad.", "émigré café"]
    for name in ("spacy", "basic_english", "whitespace"):
        tok = Tokenizer(name)
        assert list(tok.pipe(texts)) == [tok(t) for t in texts]


def test_pipe_chunks_equals_pipe_on_whitespace_chunks():
    chunks = ["Don't", "stop!", "U.S.", "films", "aren't", "bad.", "stop!", ":)"]
    for name in ("spacy", "basic_english", "whitespace"):
        tok = Tokenizer(name)
        assert tok.pipe_chunks(chunks) == list(tok.pipe(chunks)) == [tok(c) for c in chunks]


@pytest.mark.parametrize("lower", [True, False])
def test_memoized_spacy_equals_spacy_on_every_benchmark_row(shared_dataset, lower):
    import csv

    tok = Tokenizer("spacy", lower=lower)
    for name in ("mr", "subj", "trec6"):
        for split in ("train", "test"):
            with open(shared_dataset(name) / f"{split}.csv", newline="", encoding="utf-8") as f:
                texts = [row["text"] for row in csv.DictReader(f)]
            # Twice: the first pass fills the memo, the second reads from it.
            for _ in range(2):
                for text, tokens in zip(texts, tok.pipe(texts)):
                    assert tokens == spacy_reference(tok, text), text


def test_memoized_spacy_equals_spacy_on_tricky_text():
    tok = Tokenizer("spacy", lower=False)
    texts = ["(can't) won't.", "U.S.A. e-mail: a@b.com http://x.org/?q=1", ":) <3 :-(", "\u00a0no\u00a0break\ttab\n",
             "Mr. Smith's 1,000.50$ co-op", "'quoted' \"double\" …ellipsis…", "émigré café naïve", ""]
    for text in texts * 2:
        assert tok(text) == spacy_reference(tok, text), text


def test_memo_starts_over_when_full(monkeypatch):
    import textpipe.text.tokenizer as tokenizer_module

    monkeypatch.setattr(tokenizer_module, "CHUNK_CACHE_SIZE", 3)
    tok = Tokenizer("spacy")
    texts = ["one two three", "one four five six seven, eight.", "two eight. nine", "one two three"] * 2
    assert list(tok.pipe(texts)) == [tok(t) for t in texts] == [spacy_reference(tok, t) for t in texts]
    assert tok("brand new words") == ["brand", "new", "words"]
    assert sorted(tok._fn.memo) == ["brand", "new", "words"]  # it was full: only the new text's chunks remain


def test_a_full_memo_does_not_break_a_pipe_being_read(monkeypatch):
    import textpipe.text.tokenizer as tokenizer_module

    monkeypatch.setattr(tokenizer_module, "CHUNK_CACHE_SIZE", 4)
    tok = Tokenizer("spacy")
    texts = ["a b c", "a b d"]
    stream = tok.pipe(texts)
    assert next(stream) == ["a", "b", "c"]
    assert tok("x y z w") == ["x", "y", "z", "w"]  # fills the memo in between
    assert next(stream) == ["a", "b", "d"]


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


def test_lang_selects_spacys_blank_tokenizer_for_that_language():
    import pickle

    from textpipe.text.tokenizer import check_lang

    german = Tokenizer("spacy", lang="de")
    assert german("Das ist's schön.") == ["das", "ist's", "schön", "."]  # German keeps "ist's"; English splits it
    assert Tokenizer("spacy")("Das ist's schön.") == ["das", "ist", "'s", "schön", "."]
    assert pickle.loads(pickle.dumps(german)).config.lang == "de"  # a DataLoader worker tokenizes alike
    assert Tokenizer.from_config(german.config).lang == "de"
    assert Tokenizer("spacy", lang="xx")("Grüße aus Köln!") == ["grüße", "aus", "köln", "!"]
    chinese = Tokenizer("spacy", lang="zh")  # a segmenter, not whitespace chunks: not memoized chunk by chunk
    assert not chinese.chunkwise and list(chinese.pipe(["我爱你 ok"])) == [["我", "爱", "你", "o", "k"]]
    with pytest.raises(ValueError, match="tokenizer.lang 'qq'"):
        check_lang("qq")
    with pytest.raises(ValueError, match="needs the spacy tokenizer"):
        Tokenizer("whitespace", lang="de")
