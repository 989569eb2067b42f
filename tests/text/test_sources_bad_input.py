"""Every kind of bad input: the one-line message by default, and rows yielded / skipped with on_bad_row="skip".

Each case puts its bad row between good ones, so the skip counts also show that
reading goes on correctly after it.
"""

import pytest

from conftest import write_csv
from textpipe.text.dataset import TextClassificationDataset
from textpipe.text.sources import DataError, SourceConfig, read_examples, read_input_blocks
from textpipe.text.tokenizer import Tokenizer
from textpipe.text.vocab import build_vocab

HEAD, GOOD1, GOOD2 = b"label,text\n", b"pos,a good film\n", b"neg,a dull film\n"
TEN_MB = b"pos," + b"word " * (2 * 1024 * 1024) + b"\n"

# case -> (file name, bytes, message (None: no error), rows yielded, skipped by reason)
CASES = {
    "wrong number of columns": ("a.csv", HEAD + GOOD1 + b"neg\n" + GOOD2, "a.csv:3: expected 2 columns, found 1", 2, {"wrong number of columns": 1}),
    "unterminated quote": ("a.csv", HEAD + GOOD1 + b'neg,"never closed\n' + GOOD2 + GOOD1, "a.csv:3: a quote opened in this row is never closed", 3, {"unterminated quote": 1}),
    "invalid JSON": ("a.jsonl", b'{"text": "ok", "label": "pos"}\n{"text": "ok",\n{"text": "fine", "label": "neg"}\n', "a.jsonl:2: invalid JSON (Expecting property name enclosed in double quotes at column 15)", 2, {"invalid JSON": 1}),
    "missing label": ("a.csv", HEAD + GOOD1 + b",no label here\n" + GOOD2, "a.csv:3: missing label", 2, {"missing label": 1}),
    "missing label (JSONL)": ("a.jsonl", b'{"text": "ok", "label": "pos"}\n{"text": "no label"}\n', "a.jsonl:2: missing label", 1, {"missing label": 1}),
    "empty text": ("a.csv", HEAD + GOOD1 + b"neg,   \n" + GOOD2, "a.csv:3: empty text", 2, {"empty text": 1}),
    "undecodable bytes": ("a.csv", HEAD + GOOD1 + b"neg,caf\xe9 cr\xe8me\n" + GOOD2, "a.csv:3: bytes that are not valid UTF-8 (save the file as UTF-8)", 2, {"undecodable bytes": 1}),
    "NUL byte": ("a.csv", HEAD + GOOD1 + b"neg,nul\x00here\n" + GOOD2, "a.csv:3: NUL byte in the row (a binary or UTF-16 file?)", 2, {"NUL byte": 1}),
    "10 MB line": ("a.csv", HEAD + GOOD1 + TEN_MB + GOOD2, "a.csv:3: row over the 100,000-character limit (max_chars, --max-chars)", 2, {"text too long": 1}),
    "BOM": ("a.csv", b"\xef\xbb\xbf" + HEAD + GOOD1 + GOOD2, None, 2, {}),
    "CRLF line endings": ("a.csv", (HEAD + GOOD1 + b'neg,"two\nlines"\n' + GOOD2).replace(b"\n", b"\r\n"), None, 3, {}),
    "empty file": ("a.csv", b"", "a.csv:1: empty file", 0, {}),
    "5,000-digit label": ("a.jsonl", b'{"text": "ok", "label": "pos"}\n{"text": "x", "label": ' + b"9" * 5000 + b'}\n{"text": "fine", "label": "neg"}\n',
                          "a.jsonl:2: invalid JSON (a number of over 4,300 digits)", 2, {"invalid JSON": 1}),
    "label nested 100,000 deep": ("a.jsonl", b'{"text": "ok", "label": "pos"}\n{"text": "x", "label": ' + b"[" * 100_000 + b"]" * 100_000 + b'}\n{"text": "fine", "label": "neg"}\n',
                                  "a.jsonl:2: invalid JSON (nested too deeply)", 2, {"invalid JSON": 1}),
    "label nested 900 deep": ("a.jsonl", b'{"text": "ok", "label": "pos"}\n{"text": "x", "label": ' + b"[" * 900 + b"]" * 900 + b'}\n{"text": "fine", "label": "neg"}\n',
                              None, None, {"bad label": 1}),
}


def write(tmp_path, name, data):
    path = tmp_path / name
    path.write_bytes(data)
    return path


@pytest.mark.parametrize("case", CASES)
def test_default_stops_with_one_line_naming_file_and_line(tmp_path, case):
    name, data, message, rows, _ = CASES[case]
    path = write(tmp_path, name, data)
    if message is None and rows is None:  # refused, whatever its message says
        with pytest.raises(DataError):
            list(read_examples(path))
        return
    if message is None:
        assert len(list(read_examples(path))) == rows
        return
    with pytest.raises(DataError) as err:
        list(read_examples(path))
    assert str(err.value) == f"{tmp_path}/{message}"
    assert "\n" not in str(err.value)


@pytest.mark.parametrize("case", [c for c in CASES if c != "empty file"])
def test_skip_counts_every_bad_row_and_reads_on(tmp_path, case):
    name, data, _, rows, skipped_expected = CASES[case]
    path = write(tmp_path, name, data)
    skipped = {}
    examples = list(read_examples(path, config=SourceConfig(on_bad_row="skip"), skipped=skipped))
    assert len(examples) == (rows if rows is not None else 2)
    assert skipped == skipped_expected
    assert all(ex.text.strip() and ex.label for ex in examples)


def test_an_empty_file_is_an_error_even_when_skipping(tmp_path):
    path = write(tmp_path, "a.csv", b"")
    with pytest.raises(DataError, match="a.csv:1: empty file"):
        list(read_examples(path, config=SourceConfig(on_bad_row="skip"), skipped={}))


def test_crlf_keeps_text_clean_and_quoted_newlines_inside(tmp_path):
    name, data, *_ = CASES["CRLF line endings"]
    examples = list(read_examples(write(tmp_path, name, data)))
    assert [ex.text for ex in examples] == ["a good film", "two\r\nlines", "a dull film"]
    assert [ex.line for ex in examples] == [2, 3, 5]


def test_bom_and_crlf_in_jsonl_and_txt(tmp_path):
    jsonl = write(tmp_path, "a.jsonl", b'\xef\xbb\xbf{"text": "ok", "label": "pos"}\r\n{"text": "fine", "label": "neg"}\r\n')
    txt = write(tmp_path, "a.txt", b"\xef\xbb\xbffirst\r\nsecond\r\n")
    assert [(e.text, e.label) for e in read_examples(jsonl)] == [("ok", "pos"), ("fine", "neg")]
    assert [e.text for e in read_examples(txt, with_labels=False)] == ["first", "second"]


def test_a_10_mb_line_is_read_when_the_limit_allows_it(tmp_path):
    path = write(tmp_path, "a.csv", HEAD + GOOD1 + TEN_MB + GOOD2)
    examples = list(read_examples(path, config=SourceConfig(max_chars=20_000_000)))
    assert [len(e.text) for e in examples] == [11, len(TEN_MB) - 5, 11]


def test_a_runaway_quote_does_not_swallow_the_rows_after_it(tmp_path):
    """The open quote runs past max_chars before the end of the file: one bad row, the rest read again."""
    rows = [b"pos,row %d\n" % i for i in range(1000)]
    data = HEAD + b'neg,"opened\n' + b"".join(rows)
    skipped = {}
    examples = list(read_examples(write(tmp_path, "a.csv", data), config=SourceConfig(on_bad_row="skip", max_chars=500), skipped=skipped))
    assert skipped == {"unterminated quote": 1}
    assert [e.text for e in examples] == [f"row {i}" for i in range(1000)]
    assert examples[0].line == 3
    with pytest.raises(DataError, match="a.csv:2: a quote opened in this row is not closed within the 500-character limit"):
        list(read_examples(tmp_path / "a.csv", config=SourceConfig(max_chars=500)))


def test_skipping_needs_a_counter(tmp_path):
    path = write(tmp_path, "a.csv", HEAD + GOOD1)
    with pytest.raises(ValueError, match="needs a `skipped` dict"):
        list(read_examples(path, config=SourceConfig(on_bad_row="skip")))


def test_label_the_model_never_saw_at_evaluate(tmp_path):
    path = write_csv(tmp_path / "a.csv", [("pos", "fine"), ("meh", "so so"), ("neg", "bad")])
    vocab = build_vocab([["fine"]])
    strict = TextClassificationDataset(path, Tokenizer("whitespace"), vocab, labels=["neg", "pos"])
    with pytest.raises(DataError) as err:
        list(strict)
    assert str(err.value) == f"{path}:3: label 'meh' is not one of the model's labels ('neg', 'pos')"
    lenient = TextClassificationDataset(path, Tokenizer("whitespace"), vocab, labels=["neg", "pos"], source=SourceConfig(on_bad_row="skip"))
    assert [label for _, label in lenient] == [1, 0]
    assert lenient.count_skipped() == {"label not seen in training": 1}


def test_a_text_over_max_chars_but_within_the_read_bound(tmp_path):
    path = write(tmp_path, "a.jsonl", b'{"text": "0123456789 0123456789", "label": "pos"}\n{"text": "short", "label": "neg"}\n')
    with pytest.raises(DataError, match="a.jsonl:1: text of 21 characters is over the 10-character limit"):
        list(read_examples(path, config=SourceConfig(max_chars=10)))
    skipped = {}
    assert [e.text for e in read_examples(path, config=SourceConfig(max_chars=10, on_bad_row="skip"), skipped=skipped)] == ["short"]
    assert skipped == {"text too long": 1}


def test_text_after_a_closing_quote_is_a_malformed_row(tmp_path):
    path = write(tmp_path, "a.csv", HEAD + GOOD1 + b'neg,"quoted"junk\n' + GOOD2)
    with pytest.raises(DataError, match="a.csv:3: malformed CSV \\(',' expected after '\"'\\)"):
        list(read_examples(path))
    skipped = {}
    assert len(list(read_examples(path, config=SourceConfig(on_bad_row="skip"), skipped=skipped))) == 2
    assert skipped == {"malformed row": 1}


def test_input_blocks_give_every_line_its_number_and_problem(tmp_path):
    path = tmp_path / "in.txt"
    path.write_bytes(b"\xef\xbb\xbfone\r\n\n" + b"x" * 9000 + b"\nfour\x00\n" + b"y" * 30 + b"\nsix")  # max_chars 20: 4 * 20 + 4096 bytes
    blocks = list(read_input_blocks(path, SourceConfig(max_chars=20), size=2))
    assert [len(b) for b in blocks] == [2, 2, 2]
    rows = [row for block in blocks for row in block]
    assert [(row.line, row.text, row.problem and row.problem[0]) for row in rows] == [
        (1, "one", None), (2, "", "empty text"), (3, "", "text too long"), (4, "", "NUL byte"), (5, "", "text too long"), (6, "six", None)]
    assert {row.file for row in rows} == {str(path)}


@pytest.mark.parametrize("label", [b"9" * 5000, b"[" * 100_000 + b"]" * 100_000, b"-" + b"1" * 4301])
def test_a_monstrous_jsonl_label_is_exit_2_from_train_and_counted_under_skip(tmp_path, label):
    from conftest import cli_here

    rows = [b'{"text": "a good film", "label": "pos"}', b'{"text": "a dull film", "label": "neg"}'] * 6
    path = write(tmp_path, "t.jsonl", b"\n".join(rows[:3] + [b'{"text": "x", "label": ' + label + b"}"] + rows[3:]) + b"\n")
    result = cli_here("train", "--train", path, "--out", tmp_path / "run", "--epochs", "1", "--quiet")
    assert result.returncode == 2 and f"{path}:4: invalid JSON" in result.stderr, result.stderr
    skipped = {}
    assert len(list(read_examples(path, config=SourceConfig(on_bad_row="skip"), skipped=skipped))) == 12
    assert skipped == {"invalid JSON": 1}
