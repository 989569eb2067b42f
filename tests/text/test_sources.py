import json

import pytest

from textpipe.run.config import load
from textpipe.text.sources import DataError, SourceConfig, read_examples, read_texts


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


def test_txt_is_texts_or_fasttext_lines(tmp_path):
    path = write(tmp_path / "a.txt", "first text\nsecond text\n")
    assert list(read_texts(path)) == ["first text", "second text"]
    with pytest.raises(DataError, match="a.txt:1: missing label: no __label__NAME"):
        list(read_examples(path))
    labelled = write(tmp_path / "b.txt", "__label__pos a fine __label__film\n__label__neg dull\n")
    assert [(e.text, e.label) for e in read_examples(labelled)] == [("a fine __label__film", "pos"), ("dull", "neg")]


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


# --- the sources of issue 4: columns by index or name, several text columns, a folder per class, torchtext


def test_headerless_csv_by_column_index_joins_text_columns(tmp_path):
    """AG News / DBpedia / Amazon layout: label index, title, description; no header."""
    path = write(tmp_path / "train.csv", '"3","Wall St. Bears Claw Back","Short-sellers are seeing green again."\n"4","New chip","Faster, cooler"\n')
    config = SourceConfig(text_columns=[1, 2], label_column=0, header=False)
    examples = list(read_examples(path, config=config))
    assert [(e.label, e.text, e.line) for e in examples] == [
        ("3", "Wall St. Bears Claw Back Short-sellers are seeing green again.", 1), ("4", "New chip Faster, cooler", 2)]


def test_headerless_first_row_sets_the_number_of_columns(tmp_path):
    path = write(tmp_path / "train.csv", "1,one,a\n2,two\n")
    with pytest.raises(DataError, match="train.csv:2: expected 3 columns, found 2"):
        list(read_examples(path, config=SourceConfig(text_columns=[1], label_column=0, header=False)))


def test_tsv_with_a_named_text_column(tmp_path):
    """SST-2 layout: `sentence<TAB>label` header."""
    path = write(tmp_path / "train.tsv", "sentence\tlabel\nhide new secretions from the parental units \t0\ngood fun \t1\n")
    examples = list(read_examples(path, config=SourceConfig(text_columns=["sentence"])))
    assert [(e.label, e.text.strip()) for e in examples] == [("0", "hide new secretions from the parental units"), ("1", "good fun")]


def test_jsonl_with_other_keys_and_two_text_fields(tmp_path):
    path = write(tmp_path / "a.jsonl", json.dumps({"title": "Great", "body": "loved it", "stars": 5}) + "\n")
    config = SourceConfig(text_columns=["title", "body"], label_column="stars")
    assert [(e.text, e.label) for e in read_examples(path, config=config)] == [("Great loved it", "5")]


def test_named_column_missing_from_the_header(tmp_path):
    path = write(tmp_path / "a.csv", "label,text\npos,ok\n")
    with pytest.raises(DataError, match="a.csv:1: header has no 'title' column"):
        list(read_examples(path, config=SourceConfig(text_columns=["title", "text"])))


def test_source_config_is_validated():
    with pytest.raises(ValueError, match="column indices"):
        SourceConfig(header=False)
    with pytest.raises(ValueError, match="on_bad_row"):
        SourceConfig(on_bad_row="ignore")
    with pytest.raises(ValueError, match="unknown keys in \\[data.source\\]: colums"):
        load(SourceConfig, {"colums": [1]}, section="data.source")  # the one config loader


def make_imdb_folder(root):
    """The aclImdb layout: train/pos/*.txt, train/neg/*.txt, and unlabelled train/unsup/ beside them."""
    for label, texts in {"pos": ["loved it", "a delight", "superb"], "neg": ["hated it"], "unsup": ["no label"]}.items():
        (root / label).mkdir(parents=True)
        for i, text in enumerate(texts):
            (root / label / f"{i}_7.txt").write_text(text + "\n", encoding="utf-8")
    (root / "urls_pos.txt").write_text("http://example.com\n")  # files beside the class folders are not examples
    return root


def test_folder_per_class(tmp_path):
    folder = make_imdb_folder(tmp_path / "aclImdb" / "train")
    examples = list(read_examples(folder))
    # The classes take turns, each in sorted file order; `unsup` is not a class.
    assert [(e.label, e.text) for e in examples] == [("neg", "hated it"), ("pos", "loved it"), ("pos", "a delight"), ("pos", "superb")]
    assert examples[1].file == str(folder / "pos" / "0_7.txt") and examples[1].line is None


def test_folder_per_class_bad_file_is_named(tmp_path):
    folder = make_imdb_folder(tmp_path / "train")
    (folder / "neg" / "9_1.txt").write_bytes(b"\xff\xfeb\x00a\x00d\x00")  # UTF-16
    with pytest.raises(DataError) as err:
        list(read_examples(folder))
    assert str(err.value) == f"{folder / 'neg' / '9_1.txt'}: bytes that are not valid UTF-8 (save the file as UTF-8)"
    skipped = {}
    assert len(list(read_examples(folder, config=SourceConfig(on_bad_row="skip"), skipped=skipped))) == 4
    assert skipped == {"undecodable bytes": 1}


def test_folder_without_class_folders(tmp_path):
    (tmp_path / "unsup").mkdir()
    with pytest.raises(DataError, match="no class folders"):
        list(read_examples(tmp_path))


@pytest.mark.slow
def test_real_data_from_a_folder_per_class_and_jsonl(shared_dataset, tmp_path):
    """mr's training rows as aclImdb-style files, its test rows as JSONL: the same task, the same accuracy level."""
    import csv

    from textpipe.run.config import PipelineConfig
    from textpipe.run.phases import train_files
    from textpipe.text.tokenizer import TokenizerConfig
    from textpipe.core.train import TrainConfig

    folder = shared_dataset("mr")
    with open(folder / "train.csv", encoding="utf-8", newline="") as f:
        for i, row in enumerate(csv.DictReader(f)):
            (tmp_path / "train" / row["label"]).mkdir(parents=True, exist_ok=True)
            (tmp_path / "train" / row["label"] / f"{i}.txt").write_text(row["text"], encoding="utf-8")
    with open(folder / "test.csv", encoding="utf-8", newline="") as f, open(tmp_path / "test.jsonl", "w", encoding="utf-8") as out:
        out.writelines(json.dumps(row) + "\n" for row in csv.DictReader(f))
    config = PipelineConfig(tokenizer=TokenizerConfig("basic_english"), train=TrainConfig(epochs=5, refit=False))
    metrics = train_files(tmp_path / "train", tmp_path / "test.jsonl", tmp_path / "run", config=config, quiet=True)
    assert metrics["test"]["n"] == 1066
    assert metrics["test"]["accuracy"] >= 0.72  # majority class: 0.5


def test_csv_field_limit_is_raised_only_while_a_row_is_parsed(tmp_path):
    """A text far over csv's default field limit (131,072 characters) reads, and the process's limit is untouched."""
    import csv

    before = csv.field_size_limit()
    assert before == 131_072  # importing textpipe.text.sources did not raise it
    long_text = "word " * 40_000  # 200,000 characters
    path = tmp_path / "long.csv"
    path.write_text(f'label,text\npos,"{long_text}"\nneg,short\n', encoding="utf-8")
    reading = read_examples(path, config=SourceConfig(max_chars=300_000))
    first = next(reading)
    assert csv.field_size_limit() == before  # not even while the reader is suspended between rows
    assert first.text == long_text and [ex.label for ex in reading] == ["neg"]
    assert csv.field_size_limit() == before
