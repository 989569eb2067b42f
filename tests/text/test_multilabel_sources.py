"""Multi-label rows in every labelled format: a CSV/TSV cell split on label_sep, a JSONL list, fastText's
__label__ words; their bad rows (an empty label in a cell, a list of lists, an unknown label) and the packed
label sets the dataset and its cache carry."""

import json

import pytest
import torch

from textpipe.core.multilabel import multi_hot
from textpipe.text.dataset import TextClassificationDataset
from textpipe.text.sources import DataError, SourceConfig, read_examples, row_label
from textpipe.text.tokenizer import Tokenizer
from textpipe.text.vocab import build_vocab

ML = SourceConfig(label_sep="|")


def write(path, text):
    path.write_text(text, encoding="utf-8")
    return path


def labels_of(path, config=ML, skipped=None):
    return [(e.text, e.label) for e in read_examples(path, config=config, skipped=skipped)]


def test_csv_and_tsv_cells_split_on_the_separator_an_empty_cell_is_the_empty_set(tmp_path):
    csv = write(tmp_path / "a.csv", 'label,text\n"sports| news ",game today\n,nothing\nnews|news,again\n')
    assert labels_of(csv) == [("game today", ("news", "sports")), ("nothing", ()), ("again", ("news",))]
    tsv = write(tmp_path / "a.tsv", "label\ttext\na;b\tx y\n")
    assert labels_of(tsv, SourceConfig(label_sep=";")) == [("x y", ("a", "b"))]


def test_jsonl_lists_strings_and_numbers(tmp_path):
    rows = [{"text": "x", "label": ["b", "a"]}, {"text": "y", "label": []}, {"text": "z", "label": "a|c"}, {"text": "w", "label": [1, 2]}]
    path = write(tmp_path / "a.jsonl", "".join(json.dumps(r) + "\n" for r in rows))
    assert labels_of(path) == [("x", ("a", "b")), ("y", ()), ("z", ("a", "c")), ("w", ("1", "2"))]


def test_fasttext_lines_in_both_modes(tmp_path):
    path = write(tmp_path / "a.txt", "__label__a __label__b hello world\nno labels here\n__label__c one\n")
    assert labels_of(path) == [("hello world", ("a", "b")), ("no labels here", ()), ("one", ("c",))]
    skipped = {}
    assert labels_of(path, SourceConfig(on_bad_row="skip"), skipped) == [("one", "c")]
    assert skipped == {"several labels": 1, "missing label": 1}


@pytest.mark.parametrize("name, content, message", [
    ("a.csv", 'label,text\n"a||b",text\n', r"a.csv:2: an empty label in 'a\|\|b'"),
    ("a.jsonl", json.dumps({"text": "t", "label": [["a"]]}) + "\n", "a.jsonl:1: the label 'label' must be a string, an integer or a list of them"),
    ("a.jsonl", json.dumps({"text": "t", "label": ["a", None]}) + "\n", "a.jsonl:1: the label 'label' must be"),
    ("a.jsonl", json.dumps({"text": "t"}) + "\n", "a.jsonl:1: missing label"),
    ("a.txt", "__label__a\n", "a.txt:1: empty text"),
])
def test_bad_multi_label_rows_name_file_and_line(tmp_path, name, content, message):
    with pytest.raises(DataError, match=message):
        list(read_examples(write(tmp_path / name, content), config=ML))


def test_a_list_of_labels_without_multi_label_is_refused():
    assert row_label(("a", "b"), None) == (None, ("several labels", "2 labels in one row; train with --multi-label"))
    assert row_label(("a",), None) == ("a", None)
    assert row_label(" a ", None) == ("a", None)


def test_a_blank_separator_is_refused():
    with pytest.raises(ValueError, match="label_sep"):
        SourceConfig(label_sep=" ")


def test_the_dataset_packs_label_sets_and_refuses_an_unknown_label(tmp_path):
    path = write(tmp_path / "a.csv", "label,text\na|c,one two\n,three\nb,four\n")
    tokenizer = Tokenizer()
    vocab = build_vocab([["one", "two", "three", "four"]])
    labels = ["a", "b", "c"]
    for cache in (None, tmp_path / "cache"):
        ds = TextClassificationDataset(path, tokenizer, vocab, labels, source=ML, cache_dir=cache)
        got = [ds.example(item) for item in ds.prepare([row for _, row in ds.rows()])]
        sets = multi_hot(torch.tensor([label for _, label in got]), 3)
        assert sets.tolist() == [[1, 0, 1], [0, 0, 0], [0, 1, 0]]
    unknown = write(tmp_path / "b.csv", "label,text\na|z,one\n")
    with pytest.raises(DataError, match="b.csv:2: label 'z' is not one of the model's labels"):
        list(TextClassificationDataset(unknown, tokenizer, vocab, labels, source=ML).examples())
