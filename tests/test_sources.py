import json

import pytest

from textpipe.sources import DataError, read_examples, read_texts


def write(path, text, encoding="utf-8"):
    path.write_bytes(text.encode(encoding))
    return path


def test_csv_with_quotes_newlines_bom_and_crlf(tmp_path):
    path = write(tmp_path / "a.csv", '\ufefflabel,text\r\npos,"a ""great"", film"\r\nneg,"two\nlines"\r\n')
    examples = list(read_examples(path))
    assert [(e.label, e.text, e.line) for e in examples] == [("pos", 'a "great", film', 2), ("neg", "two\nlines", 3)]


def test_csv_column_order_and_extra_columns(tmp_path):
    path = write(tmp_path / "a.csv", "id,text,label\n7,nice,pos\n")
    assert [(e.text, e.label) for e in read_examples(path)] == [("nice", "pos")]


def test_tsv_and_jsonl(tmp_path):
    tsv = write(tmp_path / "a.tsv", "label\ttext\npos\tnice one\n")
    jsonl = write(tmp_path / "a.jsonl", json.dumps({"text": "nice", "label": 1}) + "\n\n" + json.dumps({"text": "bad", "label": 0}) + "\n")
    assert [(e.text, e.label) for e in read_examples(tsv)] == [("nice one", "pos")]
    assert [(e.text, e.label, e.line) for e in read_examples(jsonl)] == [("nice", "1", 1), ("bad", "0", 3)]


def test_txt_is_texts_only(tmp_path):
    path = write(tmp_path / "a.txt", "first text\nsecond text\n")
    assert list(read_texts(path)) == ["first text", "second text"]
    with pytest.raises(DataError, match="texts only"):
        list(read_examples(path))


@pytest.mark.parametrize(
    "name, content, message",
    [
        ("a.csv", "label,text\npos,ok\nneg\n", "a.csv:3: expected 2 columns, found 1"),
        ("a.csv", "label,text\npos,ok\n,no label\n", "a.csv:3: missing label"),
        ("a.csv", "label,text\npos,ok\nneg,   \n", "a.csv:3: empty text"),
        ("a.csv", "label,words\npos,ok\n", "a.csv:1: header has no 'text' column"),
        ("a.csv", "", "a.csv:1: empty file"),
        ("a.jsonl", '{"text": "ok", "label": "pos"}\n{"text": "ok",\n', "a.jsonl:2: invalid JSON"),
        ("a.jsonl", '{"label": "pos"}\n', "a.jsonl:1: expected a JSON object with a string 'text'"),
        ("a.parquet", "x", "unknown file type '.parquet'"),
    ],
)
def test_bad_rows_name_file_and_line(tmp_path, name, content, message):
    path = write(tmp_path / name, content)
    with pytest.raises(DataError) as err:
        list(read_examples(path))
    assert message in str(err.value)


def test_undecodable_bytes_are_a_data_error(tmp_path):
    path = tmp_path / "a.csv"
    path.write_bytes(b"label,text\npos,caf\xe9\n")
    with pytest.raises(DataError, match="not valid UTF-8"):
        list(read_examples(path))


def test_missing_file(tmp_path):
    with pytest.raises(DataError, match="no such file"):
        list(read_examples(tmp_path / "nope.csv"))
