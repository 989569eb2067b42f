"""Every row is used or counted, and labels mean one thing each (issue 15, items 2 and 11)."""

import pytest

from conftest import write_csv
from textpipe.text.sources import SourceConfig, read_examples

STRAY_QUOTES = {
    # line 7 opens a quote; where the next quote lands decides what csv says
    "text after the closing quote": 'ENTY,"Who is it ?"',
    "never closed": "ENTY,Who is it ?",
    "closed, then an extra column": 'ENTY,Who is it ?",third',
}


@pytest.mark.parametrize("kind", sorted(STRAY_QUOTES))
def test_a_stray_quote_skips_its_row_and_keeps_the_rows_it_swallowed(kind, tmp_path):
    lines = ["label,text"] + [f"NUM,question {i} ?" for i in range(300)]
    lines[7] = 'DESC,"What is love ?'
    if kind != "never closed":
        lines[81] = STRAY_QUOTES[kind]
    path = tmp_path / "q.csv"
    path.write_text("\n".join(lines) + "\n")
    skipped: dict = {}
    used = list(read_examples(path, config=SourceConfig(on_bad_row="skip"), skipped=skipped))
    assert len(used) + sum(skipped.values()) == 300, skipped
    assert 8 not in [ex.line for ex in used] and 9 in [ex.line for ex in used]  # lines[7] is line 8 of the file


@pytest.mark.parametrize("sep, newline", [(",", "\n"), ("\t", "\n"), (",", "\r\n")])
def test_a_quote_that_closes_rows_later_merges_no_rows(sep, newline, tmp_path):
    """Issue 30, item 3: `DESC,"What is love ?` closed three rows later at the end of a good row."""
    from textpipe.run.config import DataConfig
    from textpipe.run.counts import count_training_file
    from textpipe.text.sources import DataError
    from textpipe.text.tokenizer import Tokenizer

    lines = [f"label{sep}text"] + [f"{'NUM' if i % 3 else 'LOC'}{sep}question {i} ?" for i in range(300)]
    lines[7] = f'DESC{sep}"What is love ?'
    lines[10] = f'NUM{sep}question 9 ?"'
    path = tmp_path / ("q.csv" if sep == "," else "q.tsv")
    path.write_bytes((newline.join(lines) + newline).encode())
    skipped: dict = {}
    used = list(read_examples(path, config=SourceConfig(on_bad_row="skip"), skipped=skipped))
    assert skipped == {"stray quote": 1}
    assert [ex.line for ex in used] == [line for line in range(2, 302) if line != 8]  # every other line a row of its own
    counts = count_training_file(path, 0, Tokenizer("whitespace"), DataConfig(source=SourceConfig(on_bad_row="skip"), cache_dir=None), quiet=True)
    assert sum(counts.label_counts.values()) + sum(counts.skipped.values()) == len(lines) - 1  # what run.json records
    with pytest.raises(DataError, match=f"{path.name}:8: a quote opened in this row closes only on line 11, taking 3 lines that read as rows"):
        list(read_examples(path))


def test_a_text_over_several_lines_is_still_one_row(tmp_path):
    path = tmp_path / "multi.csv"
    path.write_text('label,text\npos,"a first line\nand a second, with a comma\nthe end"\nneg,"plain"\n"pos","two\nlines"\n')
    rows = list(read_examples(path))
    assert [(ex.line, ex.label, ex.text) for ex in rows] == [
        (2, "pos", "a first line\nand a second, with a comma\nthe end"), (5, "neg", "plain"), (6, "pos", "two\nlines")]
    texts = ["first\nNUM,second", "one\nLOC,two\nDESC,three"]  # csv.writer's rows end in "\r\n": a text's "\n" is the text's
    write_csv(path, [("pos", text) for text in texts])
    assert [ex.text for ex in read_examples(path)] == texts


@pytest.fixture(scope="module")
def bundle(tmp_path_factory):
    from textpipe.bundle.store import Bundle, save_bundle
    from textpipe.core.models import ModelConfig, build_model
    from textpipe.text.tokenizer import Tokenizer
    from textpipe.text.vocab import build_vocab

    tok = Tokenizer("whitespace")
    vocab = build_vocab([["great", "fun"], ["awful"]])
    config = ModelConfig(vocab_size=len(vocab), num_classes=2, ngram_buckets=16)
    return save_bundle(tmp_path_factory.mktemp("b") / "bundle", Bundle(build_model(config), vocab, tok, ["neg", "pos"], config))


def predict(bundle, *args, stdin=None):
    import os
    import subprocess
    import sys
    from pathlib import Path

    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])}
    return subprocess.run([sys.executable, "-m", "textpipe", "predict", "--model", str(bundle), *map(str, args)],
                          input=stdin, capture_output=True, text=True, env=env)


def test_a_blank_line_gets_an_output_line_of_its_own(bundle, tmp_path):
    import json

    texts = ["great fun"] * 1500 + [""] + ["awful"] * 600
    path = tmp_path / "texts.txt"
    path.write_text("\n".join(texts) + "\n")
    for source in (["--input", path], ["--input", "-"]):
        result = predict(bundle, *source, stdin=path.read_text())
        assert result.returncode == 0, result.stderr
        rows = [json.loads(line) for line in result.stdout.splitlines()]
        assert len(rows) == len(texts)
        assert rows[1500] == {"text": "", "label": None, "probs": {}}
        assert rows[1501]["text"] == "awful" and rows[1501]["label"] in ("neg", "pos")
    csv_rows = predict(bundle, "--input", path, "--format", "csv").stdout.splitlines()
    assert csv_rows[1501] == ",,,," and len(csv_rows) == len(texts) + 1


def test_stdin_has_the_same_line_limit_as_a_file_and_on_bad_row_skip_works(bundle):
    stdin = "great fun\n" + "x" * 2000 + "\nawful\n"
    stopped = predict(bundle, "--input", "-", "--max-chars", "1000", stdin=stdin)
    assert stopped.returncode == 2
    assert stopped.stderr == "textpipe predict: error: <stdin>:2: text of 2,000 characters is over the 1,000-character limit (max_chars, --max-chars)\n"
    skipped = predict(bundle, "--input", "-", "--max-chars", "1000", "--on-bad-row", "skip", stdin=stdin)
    assert skipped.returncode == 0, skipped.stderr
    lines = skipped.stdout.splitlines()
    assert len(lines) == 3 and lines[1] == '{"text": "", "label": null, "probs": {}, "skipped": "text too long"}'
    assert skipped.stderr == "skipped 1 predicted rows: text too long 1\n"


def test_labels_are_stripped_and_json_labels_are_strings_or_integers(tmp_path):
    import json

    csv_path = tmp_path / "spaced.csv"
    csv_path.write_text("label,text\nDESC,what is it\n DESC ,what is that\nNUM,how many\n")
    assert [ex.label for ex in read_examples(csv_path)] == ["DESC", "DESC", "NUM"]
    lines = [{"label": 1, "text": "a"}, {"label": 1.0, "text": "b"}, {"label": " 1", "text": "c"}, {"label": {"a": 1}, "text": "d"},
             {"label": True, "text": "e"}, {"label": 1.5, "text": "f"}]
    jsonl = tmp_path / "labels.jsonl"
    jsonl.write_text("".join(json.dumps(obj) + "\n" for obj in lines))
    skipped: dict = {}
    assert [ex.label for ex in read_examples(jsonl, config=SourceConfig(on_bad_row="skip"), skipped=skipped)] == ["1", "1", "1"]
    assert skipped == {"bad label": 3}
    with pytest.raises(ValueError, match=r"labels.jsonl:4: the label 'label' must be a string, an integer or a list of them, got \{\"a\": 1\}"):
        list(read_examples(jsonl))


def test_swapped_columns_stop_with_a_hint(tmp_path):
    from textpipe.run.config import DataConfig
    from textpipe.run.counts import count_training_file
    from textpipe.text.sources import DataError
    from textpipe.text.tokenizer import Tokenizer

    path = tmp_path / "swapped.csv"
    path.write_text("text,label\n" + "".join(f"pos,this is review number {i} and it is a long one\n" for i in range(50)))
    with pytest.raises(DataError, match="50 different labels, .*the label column looks like text; are the label and text columns swapped"):
        count_training_file(path, 0, Tokenizer("whitespace"), DataConfig(max_labels=40), quiet=True)


def test_spacys_vocabulary_stays_bounded_on_a_stream_of_unique_tokens(monkeypatch):
    import textpipe.text.tokenizer
    from textpipe.text.tokenizer import Tokenizer

    monkeypatch.setattr(textpipe.text.tokenizer, "CHUNK_CACHE_SIZE", 1000)
    tok = Tokenizer("spacy")
    texts = [f"word{i} other{i}" for i in range(20_000)]
    tokens = list(tok.pipe(texts))
    assert tokens[-1] == ["word19999", "other19999"]
    assert len(tok._nlp.vocab) < 5_000  # not one lexeme per token ever seen (40,000)


def test_a_fifo_in_a_class_folder_is_a_bad_row_not_a_hang(tmp_path):
    import os

    for label, text in [("pos", "good"), ("neg", "bad")]:
        (tmp_path / label).mkdir()
        (tmp_path / label / "a.txt").write_text(text)
    os.mkfifo(tmp_path / "pos" / "b.txt")
    skipped: dict = {}
    rows = list(read_examples(tmp_path, config=SourceConfig(on_bad_row="skip"), skipped=skipped))
    assert [ex.label for ex in rows] == ["neg", "pos"] and skipped == {"not a regular file": 1}
    with pytest.raises(ValueError, match="b.txt: not a regular file"):
        list(read_examples(tmp_path))
