import collections
import json
from pathlib import Path

import pytest
import torch
from torch.utils.data import DataLoader

from conftest import make_rows, write_csv
from textpipe.core.batching import Batches
from textpipe.core.collate import pad_collate
from textpipe.text.dataset import TextClassificationDataset, TextListDataset
from textpipe.text.encoder import TextEncoder
from textpipe.text.sources import DataError, SourceConfig, read_examples
from textpipe.text.tokenizer import Tokenizer
from textpipe.text.vocab import UNK_ID, build_vocab


@pytest.fixture
def numbered(tmp_path):
    """A CSV whose row i has the text 'row i' (token 'i' identifies it) and a vocab covering all rows."""
    rows = [("pos" if i % 3 else "neg", f"row {i}") for i in range(103)]
    path = write_csv(tmp_path / "rows.csv", rows)
    tok = Tokenizer("whitespace")
    vocab = build_vocab(tok(t) for _, t in rows)
    return path, tok, vocab


def row_numbers(ids_list, vocab):
    itos = vocab.get_itos()
    return [int(itos[int(ids[1])]) for ids in ids_list]


def test_two_workers_yield_every_row_exactly_once(numbered):
    path, tok, vocab = numbered
    ds = Batches(TextClassificationDataset(path, tok, vocab, labels=["neg", "pos"]), shuffle_buffer=16)
    loader = DataLoader(ds, batch_size=8, collate_fn=pad_collate, num_workers=2)
    seen = [int(vocab.get_itos()[int(row[1])]) for batch in loader for row in batch.ids]
    assert collections.Counter(seen) == collections.Counter(range(103))


def test_ranks_and_workers_partition_the_rows(numbered):
    path, tok, vocab = numbered
    seen = []
    for rank in range(2):
        ds = Batches(TextClassificationDataset(path, tok, vocab, labels=["neg", "pos"]), rank=rank, world_size=2)
        loader = DataLoader(ds, batch_size=5, collate_fn=pad_collate, num_workers=2)
        seen += [int(vocab.get_itos()[int(row[1])]) for batch in loader for row in batch.ids]
    assert sorted(seen) == list(range(103))


def test_prediction_dataset_yields_ids_without_labels(numbered):
    path, tok, vocab = numbered
    items = list(TextClassificationDataset(path, tok, vocab, labels=None))
    assert all(isinstance(x, torch.Tensor) and x.dtype == torch.long for x in items)
    assert len(items) == 103
    batch = next(iter(DataLoader(TextClassificationDataset(path, tok, vocab), batch_size=4, collate_fn=pad_collate)))
    assert batch.labels is None


def test_labelled_dataset_yields_label_indices(numbered):
    path, tok, vocab = numbered
    items = list(TextClassificationDataset(path, tok, vocab, labels=["neg", "pos"]))
    assert [label for _, label in items[:4]] == [0, 1, 1, 0]


def test_unknown_words_become_unk(tmp_path):
    path = write_csv(tmp_path / "a.csv", [("pos", "known zebra")])
    vocab = build_vocab([["known"]])
    (ids, _), = TextClassificationDataset(path, Tokenizer("whitespace"), vocab, labels=["pos"])
    assert ids.tolist() == [vocab["known"], UNK_ID]


def test_label_the_model_never_saw_names_the_line(tmp_path):
    path = write_csv(tmp_path / "a.csv", [("pos", "fine"), ("meh", "hm")])
    ds = TextClassificationDataset(path, Tokenizer("whitespace"), build_vocab([["fine"]]), labels=["neg", "pos"])
    with pytest.raises(DataError, match=r"a.csv:3: label 'meh' is not one of the model's labels"):
        list(ds)


def test_shuffle_is_seeded_and_changes_with_the_epoch(numbered):
    path, tok, vocab = numbered
    ds = Batches(TextClassificationDataset(path, tok, vocab, labels=["neg", "pos"]), shuffle_buffer=50, seed=7)
    order = lambda: row_numbers([ids for ids, _ in ds], vocab)  # noqa: E731
    first, again = order(), order()
    ds.set_epoch(1)
    second = order()
    assert first == again and first != second and first != list(range(103))
    assert sorted(first) == sorted(second) == list(range(103))


def test_holdout_parts_split_the_file(numbered):
    path, tok, vocab = numbered
    parts = {p: row_numbers([ids for ids, _ in TextClassificationDataset(path, tok, vocab, ["neg", "pos"], holdout_every=10, part=p)], vocab) for p in ("train", "dev")}
    assert 5 <= len(parts["dev"]) <= 20 and parts["dev"] != list(range(9, 103, 10))
    assert sorted(parts["train"] + parts["dev"]) == list(range(103))


def test_map_style_dataset():
    vocab = build_vocab([["great", "fun"]])
    ds = TextListDataset(["great fun", "a bore"], TextEncoder(Tokenizer("whitespace"), vocab))
    assert len(ds) == 2
    assert ds[0].tolist() == [vocab["great"], vocab["fun"]]
    assert ds[1].tolist() == [UNK_ID, UNK_ID]


def test_workers_started_with_spawn(numbered):
    """macOS and Windows start workers with spawn: dataset, tokenizer, vocab and collate_fn must pickle."""
    path, _, vocab = numbered
    ds = TextClassificationDataset(path, Tokenizer("spacy"), vocab, labels=["neg", "pos"])
    loader = DataLoader(ds, batch_size=16, collate_fn=pad_collate, num_workers=2, multiprocessing_context="spawn")
    seen = [int(vocab.get_itos()[int(row[1])]) for batch in loader for row in batch.ids]
    assert sorted(seen) == list(range(103))


def test_every_epoch_each_row_once_across_two_ranks_and_two_workers_in_a_new_order(numbered):
    """World size 2 without a process group: each rank's dataset is told its rank; the epochs' orders differ."""
    path, tok, vocab = numbered
    epochs = []
    for epoch in (1, 2):
        seen = []
        for rank in range(2):
            ds = Batches(TextClassificationDataset(path, tok, vocab, labels=["neg", "pos"]), shuffle_buffer=16, seed=3, rank=rank, world_size=2)
            ds.set_epoch(epoch)
            loader = DataLoader(ds, batch_size=7, collate_fn=pad_collate, num_workers=2)
            seen += [int(vocab.get_itos()[int(row[1])]) for batch in loader for row in batch.ids]
        assert collections.Counter(seen) == collections.Counter(range(103))
        epochs.append(seen)
    assert epochs[0] != epochs[1]


def test_skipped_rows_do_not_break_exactly_once(tmp_path):
    from textpipe.text.sources import SourceConfig

    rows = [("pos" if i % 3 else "neg", f"row {i}" if i % 10 else " ") for i in range(60)]  # every 10th text is empty
    path = write_csv(tmp_path / "rows.csv", rows)
    tok = Tokenizer("whitespace")
    vocab = build_vocab(tok(t) for _, t in rows)
    seen = []
    for rank in range(2):  # every rank runs the same number of workers, as under DDP
        ds = Batches(TextClassificationDataset(path, tok, vocab, labels=["neg", "pos"], source=SourceConfig(on_bad_row="skip")), world_size=2, rank=rank)
        seen += [int(vocab.get_itos()[int(row[1])]) for batch in DataLoader(ds, batch_size=4, collate_fn=pad_collate, num_workers=2) for row in batch.ids]
    assert sorted(seen) == [i for i in range(60) if i % 10]
    assert ds.count_skipped() == {"empty text": 6}


def test_an_epoch_streams_rows_through_a_bounded_buffer(numbered, monkeypatch):
    """The first example comes out after at most shuffle_buffer + 1 rows are read, not after the whole file."""
    import textpipe.text.dataset

    path, tok, vocab = numbered
    read = {"rows": 0}

    def counting(*args, **kwargs):
        for example in read_examples(*args, **kwargs):
            read["rows"] += 1
            yield example

    monkeypatch.setattr(textpipe.text.dataset, "read_examples", counting)
    stream = iter(Batches(TextClassificationDataset(path, tok, vocab, labels=["neg", "pos"]), shuffle_buffer=10))
    next(stream)
    assert read["rows"] <= 11
    assert 1 + sum(1 for _ in stream) == 103


def test_make_loader_pads_with_its_collate_fn_and_the_cache_changes_nothing(numbered, tmp_path):
    """Training batches from the file and from the token-id cache are the same tensors, padded by pad_collate."""
    from textpipe.text.loader import make_loader

    path, tok, vocab = numbered
    loaders = [make_loader(TextClassificationDataset(path, tok, vocab, ["neg", "pos"], cache_dir=cache), 8, shuffle_buffer=40, bucket=True, seed=5)
               for cache in (None, tmp_path / "c")]
    assert all(loader.collate_fn is pad_collate for loader in loaders)
    text, cached = ([(b.ids, b.labels, b.mask) for b in loader] for loader in loaders)
    assert len(text) == len(cached) == 13  # blocks of 40 + 40 + 23 rows: 5 + 5 + 3 groups of up to 8
    assert all(torch.equal(a, b) for one, other in zip(text, cached) for a, b in zip(one, other))


@pytest.mark.parametrize("batch_size, shuffle_buffer, bucket, world_size", [(8, 40, True, 2), (8, 40, False, 1), (8, 0, False, 3), (0, 30, False, 2), (0, 0, False, 1), (5, 1, True, 1)])
def test_cache_rows_batched_as_tensors_match_the_text_path(numbered, tmp_path, batch_size, shuffle_buffer, bucket, world_size):
    """The cache's rows are ordered and grouped with tensor ops, the file's as lists: the same units either way, and a resumed stream too."""
    path, tok, vocab = numbered
    for rank in range(world_size):
        text, cached = ([unit if batch_size else [unit] for unit in Batches(TextClassificationDataset(path, tok, vocab, ["neg", "pos"], cache_dir=cache),
                         batch_size=batch_size, shuffle_buffer=shuffle_buffer, bucket=bucket, seed=3, rank=rank, world_size=world_size)]
                        for cache in (None, tmp_path / "c"))
        same = lambda one, other: all(torch.equal(a, b) for a, b in zip(*(pad_collate(u).__dict__.values() for u in (one, other))) if a is not None)  # noqa: E731
        assert len(text) == len(cached) > 0 and all(same(a, b) for a, b in zip(text, cached))
    stream = iter(Batches(TextClassificationDataset(path, tok, vocab, ["neg", "pos"], cache_dir=tmp_path / "c"), batch_size=4, shuffle_buffer=20, bucket=True, seed=1))
    for _ in range(7):
        next(stream)
    again = iter(stream.batches)
    again.load_state_dict(stream.state_dict())
    assert all(torch.equal(pad_collate(a).ids, pad_collate(b).ids) for a, b in zip(stream, again))


def test_make_loader_batches_texts_in_memory_longest_first():
    from textpipe.core.batching import LengthSortedSampler
    from textpipe.text.loader import make_loader

    texts = ["a", "a b c", "a b", "a b c d", "b"]
    ds = TextListDataset(texts, TextEncoder(Tokenizer("whitespace"), build_vocab([["a", "b", "c", "d"]])))
    loader = make_loader(ds, 2)
    assert isinstance(loader.sampler, LengthSortedSampler) and loader.collate_fn is pad_collate
    batches = list(loader)
    assert [b.ids.shape[1] for b in batches] == [4, 2, 1]  # the last, smaller batch included
    assert loader.sampler.restore(torch.cat([b.lengths for b in batches])).tolist() == [1, 3, 2, 4, 1]
    with pytest.raises(ValueError, match="longest first"):
        make_loader(ds, 2, shuffle_buffer=10)


def test_stream_state_resumes_mid_block(tmp_path):
    path = write_csv(tmp_path / "rows.csv", make_rows(50, seed=4))
    tok = Tokenizer("whitespace")
    vocab = build_vocab(tok(t) for _, t in make_rows(50, seed=4))
    ds = Batches(TextClassificationDataset(path, tok, vocab, ["neg", "pos"]), shuffle_buffer=8, seed=3)
    ds.set_epoch(2)
    whole = [ids.tolist() for ids, _ in ds]
    for cut in (0, 5, 8, 13, 49, 50):
        stream = iter(ds)
        head = [next(stream)[0].tolist() for _ in range(cut)]
        again = iter(ds)
        again.load_state_dict(stream.state_dict())
        assert head + [ids.tolist() for ids, _ in again] == whole, cut



def test_a_resumed_stream_seeks_instead_of_rereading(tmp_path):
    path = write_csv(tmp_path / "rows.csv", make_rows(60, seed=5))
    tok = Tokenizer("whitespace")
    vocab = build_vocab(tok(t) for _, t in make_rows(60, seed=5))
    ds = Batches(TextClassificationDataset(path, tok, vocab, ["neg", "pos"], holdout_every=10, part="train"), shuffle_buffer=8, seed=1)
    whole = [ids.tolist() for ids, _ in ds]
    stream = iter(ds)
    head = [next(stream)[0].tolist() for _ in range(21)]  # into the third block
    state = stream.state_dict()
    assert state["reader_at"] is not None and state["block"] == 2
    # Blank out every row before the block: a resume that re-read them would go wrong.
    data = path.read_bytes()
    header_end = data.index(b"\n") + 1
    offset = state["reader_at"][0]
    path.write_bytes(data[:header_end] + b"\n" * (offset - header_end) + data[offset:])
    again = iter(ds)
    again.load_state_dict(state)
    assert head + [ids.tolist() for ids, _ in again] == whole



def write_source(tmp_path, kind: str, rows) -> Path:
    if kind == "csv":
        return write_csv(tmp_path / "rows.csv", rows)
    if kind == "jsonl":
        path = tmp_path / "rows.jsonl"
        lines = [json.dumps({"label": label, "text": text}) for label, text in rows]
        lines.insert(7, "{not json")  # a bad row, skipped (and skipped again after a resume)
        path.write_text("\n".join(lines) + "\n")
        return path
    folder = tmp_path / "rows"
    for i, (label, text) in enumerate(rows):
        (folder / label).mkdir(parents=True, exist_ok=True)
        (folder / label / f"{i:03d}.txt").write_text(text)
    return folder



@pytest.mark.parametrize("kind", ["csv", "jsonl", "folder"])
def test_every_source_resumes_exactly_mid_block(kind, tmp_path):
    rows = make_rows(40, seed=6)
    path = write_source(tmp_path, kind, rows)
    tok = Tokenizer("whitespace")
    vocab = build_vocab(tok(t) for _, t in rows)
    source = SourceConfig(on_bad_row="skip")
    ds = Batches(TextClassificationDataset(path, tok, vocab, ["neg", "pos"], source=source), shuffle_buffer=6, seed=2)
    whole = [ids.tolist() for ids, _ in ds]
    assert len(whole) == 40
    for cut in (3, 6, 17, 39):
        stream = iter(ds)
        head = [next(stream)[0].tolist() for _ in range(cut)]
        again = iter(ds)
        again.load_state_dict(stream.state_dict())
        assert head + [ids.tolist() for ids, _ in again] == whole, cut
