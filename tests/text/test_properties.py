"""Property tests (hypothesis) with arbitrary unicode: the readers, the tokenizers and the collate_fn.

(More examples: HYPOTHESIS_EXAMPLES=500 pytest tests/test_properties.py.)

Readers: any rows written with the csv / json writers are read back equal, or are
skipped and counted; rows yielded + rows skipped = rows written; the only
exception ever raised is DataError. Tokenizers: any string gives a list of strings.
pad_collate: any id lists give a batch whose shapes, lengths and mask agree.
"""

import csv
import os
import json

import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from conftest import spacy_reference
from textpipe.core.collate import PAD_ID, pad_collate
from textpipe.text.sources import DataError, SourceConfig, read_examples
from textpipe.text.tokenizer import TOKENIZERS, Tokenizer

SETTINGS = settings(max_examples=int(os.environ.get("HYPOTHESIS_EXAMPLES", 60)), deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
rows_strategy = st.lists(st.tuples(st.text(max_size=8), st.text(max_size=40)), max_size=20)


def usable(label: str, text: str) -> bool:
    """What the readers promise to yield: a non-blank label and text, without NUL."""
    return bool(label.strip() and text.strip()) and "\x00" not in label + text


def read_skipping(path, **config):
    skipped = {}
    examples = list(read_examples(path, config=SourceConfig(on_bad_row="skip", **config), skipped=skipped))
    return examples, sum(skipped.values())


@SETTINGS
@given(rows=rows_strategy, delimiter=st.sampled_from([",", "\t"]))
def test_delimited_rows_come_back_or_are_counted(tmp_path, rows, delimiter):
    path = tmp_path / ("a.csv" if delimiter == "," else "a.tsv")
    with open(path, "w", encoding="utf-8", newline="") as f:
        writer = csv.writer(f, delimiter=delimiter)
        writer.writerow(["label", "text"])
        writer.writerows(rows)
    examples, skipped = read_skipping(path)
    assert [(e.label, e.text) for e in examples] == [(label.strip(), text) for label, text in rows if usable(label, text)]  # labels are stripped
    assert len(examples) + skipped == len(rows)
    try:
        assert len(list(read_examples(path))) == len(rows)
    except DataError:
        assert skipped > 0


@SETTINGS
@given(rows=rows_strategy)
def test_headerless_rows_come_back_or_are_counted(tmp_path, rows):
    path = tmp_path / "a.csv"
    with open(path, "w", encoding="utf-8", newline="") as f:
        csv.writer(f).writerows((label, text, "more") for label, text in rows)
    if not rows:
        return
    examples, skipped = read_skipping(path, header=False, label_column=0, text_columns=[1, 2])
    assert [(e.label, e.text) for e in examples] == [(label.strip(), f"{text} more") for label, text in rows if usable(label, f"{text} more")]
    assert len(examples) + skipped == len(rows)


line_strategy = st.one_of(
    st.tuples(st.text(max_size=8), st.text(max_size=40)).map(lambda r: json.dumps({"label": r[0], "text": r[1]}, ensure_ascii=False)),
    st.text(min_size=1, max_size=40).filter(lambda s: s.strip() and not any(c in s for c in "\n\r")),
)


@SETTINGS
@given(lines=st.lists(line_strategy, max_size=20))
def test_jsonl_lines_come_back_or_are_counted(tmp_path, lines):
    path = tmp_path / "a.jsonl"
    path.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
    if not lines:
        return
    examples, skipped = read_skipping(path)
    assert len(examples) + skipped == len(lines)
    labelled = [(obj["label"].strip(), obj["text"]) for obj in map(_json_or_none, lines) if isinstance(obj, dict)]
    for example in examples:
        assert (example.label, example.text) in labelled


def _json_or_none(line: str):
    try:
        return json.loads(line)
    except ValueError:
        return None


@SETTINGS
@given(data=st.binary(max_size=300), suffix=st.sampled_from([".csv", ".tsv", ".jsonl", ".txt"]))
def test_any_bytes_raise_nothing_but_data_error(tmp_path, data, suffix):
    path = tmp_path / f"a{suffix}"
    path.write_bytes(data)
    labelled = suffix != ".txt"
    for config, skipped in ((SourceConfig(), None), (SourceConfig(on_bad_row="skip"), {})):
        try:
            examples = list(read_examples(path, with_labels=labelled, config=config, skipped=skipped))
        except DataError:
            continue
        assert all(isinstance(e.text, str) and e.text.strip() for e in examples)
        assert len(examples) + sum((skipped or {}).values()) <= data.count(b"\n") + 1


@SETTINGS
@given(text=st.text(max_size=200), name=st.sampled_from(TOKENIZERS), lower=st.booleans())
def test_tokenizers_take_any_string(text, name, lower):
    tokenizer = Tokenizer(name, lower=lower)
    tokens = tokenizer(text)
    assert isinstance(tokens, list) and all(isinstance(t, str) and t for t in tokens)
    if name == "spacy":  # a text's tokens are its whitespace chunks' spaCy tokens, memo warm or cold
        by_chunk = [t for chunk in text.split() for t in spacy_reference(tokenizer, chunk)]
        assert tokens == tokenizer(text) == by_chunk


id_lists = st.lists(st.lists(st.integers(min_value=1, max_value=10_000), min_size=1, max_size=30), min_size=1, max_size=16)


@SETTINGS
@given(seqs=id_lists, labelled=st.booleans())
def test_collate_shapes_lengths_and_mask_agree(seqs, labelled):
    tensors = [torch.tensor(s, dtype=torch.long) for s in seqs]
    batch = pad_collate([(t, i % 3) for i, t in enumerate(tensors)] if labelled else tensors)
    longest = max(len(s) for s in seqs)
    assert batch.ids.shape == batch.mask.shape == (len(seqs), longest)
    assert batch.lengths.tolist() == [len(s) for s in seqs]
    assert batch.mask.sum(1).tolist() == batch.lengths.tolist()
    assert [row[:n].tolist() for row, n in zip(batch.ids, batch.lengths)] == seqs
    assert (batch.ids[~batch.mask] == PAD_ID).all()
    assert (batch.labels.tolist() == [i % 3 for i in range(len(seqs))]) if labelled else batch.labels is None
