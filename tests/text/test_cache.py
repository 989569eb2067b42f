"""The numericalized cache and length-bucketed batches: same rows as the text path, less padding."""

import collections

import pytest
import torch

from conftest import make_rows, write_csv
from textpipe.text.cache import NumericCache
from textpipe.core.collate import FlatRows, collate_flat, pad_collate, pad_fraction
from textpipe.text.dataset import TextClassificationDataset
from textpipe.text.loader import make_loader
from textpipe.run.counts import TrainingCounts
from textpipe.text.sources import SourceConfig
from textpipe.text.tokenizer import Tokenizer
from textpipe.text.vocab import UNK_ID, build_vocab


@pytest.fixture
def toy(tmp_path):
    rows = make_rows(300, seed=4)
    rows[7] = ("pos", "...")  # no word the vocabulary knows: [<unk>] on both paths
    path = write_csv(tmp_path / "train.csv", rows)
    tok = Tokenizer("spacy")
    vocab = build_vocab(tok(t) for _, t in rows[:200])  # rows 200+ have unseen words too
    return path, tok, vocab


def pairs(items):
    return [(ids.tolist(), label) for ids, label in items]


@pytest.mark.parametrize("part", ["train", "dev"])
def test_cache_gives_the_text_paths_rows(toy, tmp_path, part):
    path, tok, vocab = toy
    kwargs = dict(labels=["neg", "pos"], holdout_every=5, part=part)
    text = TextClassificationDataset(path, tok, vocab, **kwargs)
    cached = TextClassificationDataset(path, tok, vocab, cache_dir=tmp_path / "cache", **kwargs)
    assert cached.cache is not None and len(cached.cache) > 0
    assert pairs(cached) == pairs(text)


def test_cache_is_reused_and_keyed_by_file_and_vocab(toy, tmp_path):
    path, tok, vocab = toy
    first = TextClassificationDataset(path, tok, vocab, ["neg", "pos"], cache_dir=tmp_path / "c")
    again = TextClassificationDataset(path, tok, vocab, ["neg", "pos"], cache_dir=tmp_path / "c")
    assert again.cache.folder == first.cache.folder
    other_vocab = build_vocab(tok(t) for _, t in make_rows(50, seed=9))
    other = TextClassificationDataset(path, tok, other_vocab, ["neg", "pos"], cache_dir=tmp_path / "c")
    assert other.cache.folder != first.cache.folder
    write_csv(path, make_rows(300, seed=5))  # the file changed: a new cache with its rows
    changed = TextClassificationDataset(path, tok, vocab, ["neg", "pos"], cache_dir=tmp_path / "c")
    assert changed.cache.folder != first.cache.folder
    assert pairs(changed) == pairs(TextClassificationDataset(path, tok, vocab, ["neg", "pos"]))
    assert not [p for p in (tmp_path / "c").iterdir() if p.name.startswith(".")]  # no temporary folder left


def test_a_warm_cache_reads_no_text(toy, tmp_path, monkeypatch):
    path, tok, vocab = toy
    TextClassificationDataset(path, tok, vocab, ["neg", "pos"], cache_dir=tmp_path / "c")
    warm = make_loader(TextClassificationDataset(path, tok, vocab, ["neg", "pos"], cache_dir=tmp_path / "c"), 16, bucket=True, shuffle_buffer=64)

    def no_text(*args, **kwargs):
        raise AssertionError("a warm cache must not read or tokenize text")

    monkeypatch.setattr(TextClassificationDataset, "examples", no_text)
    monkeypatch.setattr(Tokenizer, "__call__", no_text)
    monkeypatch.setattr(Tokenizer, "pipe", no_text)
    assert sum(len(b) for b in warm) == 300


def test_cache_keeps_bad_row_skipping(tmp_path):
    path = tmp_path / "bad.csv"
    path.write_text("label,text\npos,good fun\nneg\nneg,a bore\nodd,what label\npos,great\n", encoding="utf-8")
    tok = Tokenizer("whitespace")
    vocab = build_vocab([["good", "fun", "a", "bore", "great"]])
    source = SourceConfig(on_bad_row="skip")
    text = TextClassificationDataset(path, tok, vocab, ["neg", "pos"], source=source)
    cached = TextClassificationDataset(path, tok, vocab, ["neg", "pos"], source=source, cache_dir=tmp_path / "c")
    assert pairs(cached) == pairs(text) and len(pairs(text)) == 3
    assert cached.count_skipped() == text.count_skipped() and sum(text.count_skipped().values()) == 2


def test_collate_flat_matches_pad_collate():
    seqs = [torch.tensor([5, 6, 7]), torch.tensor([8]), torch.tensor([9, 10])]
    flat, offsets = torch.cat(seqs).int(), torch.tensor([0, 3, 4, 6])
    labels = torch.tensor([1, 0, 1])
    fast = collate_flat(flat, offsets, torch.tensor([2, 0, 1]), labels)
    group = pad_collate(FlatRows(flat, offsets, torch.tensor([2, 0, 1]), labels))  # what a DataLoader's collate_fn gets from the cache
    slow = pad_collate([(seqs[2], 1), (seqs[0], 1), (seqs[1], 0)])
    for name in ("ids", "lengths", "mask", "labels"):
        assert torch.equal(getattr(fast, name), getattr(slow, name)) and torch.equal(getattr(group, name), getattr(slow, name)), name
    assert fast.ids.dtype == torch.long == group.ids.dtype


@pytest.mark.parametrize("cached", [False, True])
def test_bucketed_batches_every_row_once_across_workers_and_ranks(toy, tmp_path, cached):
    path, tok, vocab = toy
    seen = []
    for rank in range(2):
        ds = TextClassificationDataset(path, tok, vocab, ["neg", "pos"], cache_dir=tmp_path / "c" if cached else None)
        for batch in make_loader(ds, 16, shuffle_buffer=64, bucket=True, rank=rank, world_size=2, num_workers=2):
            seen += [tuple(row[:n].tolist()) for row, n in zip(batch.ids, batch.lengths)]
    everything = [tuple(ids.tolist()) for ids, _ in TextClassificationDataset(path, tok, vocab, ["neg", "pos"])]
    assert collections.Counter(seen) == collections.Counter(everything)


def test_bucketing_cuts_padding(toy, tmp_path):
    path, tok, vocab = toy
    ds = TextClassificationDataset(path, tok, vocab, ["neg", "pos"], cache_dir=tmp_path / "c")
    plain = pad_fraction(make_loader(ds, 16, shuffle_buffer=300))
    bucketed = pad_fraction(make_loader(ds, 16, shuffle_buffer=300, bucket=True))
    assert bucketed < plain / 3, (bucketed, plain)


def test_bucketed_stream_resumes_mid_epoch(toy, tmp_path):
    path, tok, vocab = toy
    def loader():
        ds = TextClassificationDataset(path, tok, vocab, ["neg", "pos"], cache_dir=tmp_path / "c")
        loader = make_loader(ds, 8, shuffle_buffer=64, bucket=True, seed=3, num_workers=2)
        loader.dataset.set_epoch(2)
        return loader
    full = [b.ids for b in loader()]
    first = loader()
    it = iter(first)
    head = [next(it).ids for _ in range(11)]
    state = first.state_dict()
    resumed = loader()
    resumed.load_state_dict(state)
    tail = [b.ids for b in resumed]
    assert len(head) + len(tail) == len(full)
    assert all(torch.equal(a, b) for a, b in zip(head + tail, full))


def test_cache_pickles_as_its_folder(toy, tmp_path):
    import pickle
    path, tok, vocab = toy
    cache = TextClassificationDataset(path, tok, vocab, ["neg", "pos"], cache_dir=tmp_path / "c").cache
    assert len(pickle.dumps(cache)) < 2000
    back = pickle.loads(pickle.dumps(cache))
    assert isinstance(back, NumericCache) and torch.equal(back.ids_of(3), cache.ids_of(3))


def test_pad_fraction_counts_pad_positions():
    batch = pad_collate([torch.tensor([5, 6, 7]), torch.tensor([8])])
    assert pad_fraction([batch]) == pytest.approx(2 / 6)


def test_a_second_run_reads_its_epochs_from_the_cache(toy_files, tmp_path, monkeypatch, tiny_config):
    from textpipe.run.phases import train_files
    from textpipe.core.runtime import resolve_device

    train, test, _ = toy_files
    config = lambda cache: tiny_config(data={"cache_dir": cache}, train={"epochs": 2, "device": "auto", "keep_checkpoints": 0})  # noqa: E731
    first = train_files(train, test, tmp_path / "run1", config=config(str(tmp_path / "c")), quiet=True)
    caches = sorted(p.name for p in (tmp_path / "c").iterdir())
    # train part, held-out dev part and test; then, with the refit's vocabulary (all rows), the whole train file and test;
    # and the training file's token counts, both vocabularies' source
    assert len(caches) == 6

    def no_tokenizing(*args, **kwargs):
        raise AssertionError("a warm cache must not be rebuilt")

    monkeypatch.setattr(TextClassificationDataset, "_encoded_rows", no_tokenizing)
    monkeypatch.setattr(TrainingCounts, "add", no_tokenizing)
    second = train_files(train, test, tmp_path / "run2", config=config(str(tmp_path / "c")), quiet=True)
    assert sorted(p.name for p in (tmp_path / "c").iterdir()) == caches
    assert second["test"] == first["test"]
    monkeypatch.undo()
    uncached = train_files(train, test, tmp_path / "run3", config=config(False), quiet=True)
    assert uncached["test"] == first["test"]  # the cache changes where ids come from, not what they are
    assert resolve_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")


def test_the_cache_folder_keeps_only_the_most_recently_used_entries(tmp_path):
    import os
    import time

    from textpipe.text import cache

    for i in range(6):
        cache.write_cache(tmp_path, f"{i:032d}", [([1, 2, 3], 0)], {})
        old = time.time() - 3600 * (10 - i)  # used i hours ago, oldest first
        os.utime(tmp_path / f"{i:032d}" / "meta.json", (old, old))
    assert cache.NumericCache.load(tmp_path, f"{0:032d}") is not None  # a use makes the oldest the newest
    removed = cache.prune(tmp_path, max_entries=3)
    assert sorted(p.name for p in removed) == [f"{i:032d}" for i in (1, 2, 3)]
    cache.write_cache(tmp_path, "f" * 32, [([4], 1)], {})  # a new entry, and the default bounds
    assert (tmp_path / ("f" * 32)).is_dir() and len(list(tmp_path.iterdir())) == 4


def test_temporary_folders_a_killed_run_left_are_deleted_once_stale(tmp_path):
    import os
    import time

    from textpipe.text import cache

    left, live = tmp_path / ".stream.old", tmp_path / ".stream.new"
    for folder in (left, live):
        folder.mkdir()
        (folder / "ids.i32").write_bytes(b"1234")
    old = time.time() - cache.STALE_S - 60
    os.utime(left, (old, old))
    cache.write_cache(tmp_path, "e" * 32, [([1], 0)], {})  # prunes
    assert not left.exists() and live.is_dir() and (tmp_path / ("e" * 32)).is_dir()


# --- a cache is checked before it is read (issue 30) ------------------------------------------------

@pytest.mark.parametrize("damage", ["truncate ids", "edit ids", "edit labels", "edit meta rows", "drop a digest", "meta not JSON", "no meta"])
def test_a_damaged_cache_is_rebuilt_with_a_notice_never_read(toy, tmp_path, damage, caplog):
    import json

    path, tok, vocab = toy
    kwargs = dict(labels=["neg", "pos"], cache_dir=tmp_path / "cache")
    first = TextClassificationDataset(path, tok, vocab, **kwargs)
    expected = pairs(first)
    folder = first.cache.folder
    meta = json.loads((folder / "meta.json").read_text())
    assert set(meta["sha256"]) == {"ids.i32", "offsets.i64", "labels.i64", "meta.json"}
    ids = (folder / "ids.i32").read_bytes()
    if damage == "truncate ids":
        (folder / "ids.i32").write_bytes(ids[: len(ids) // 2])
    elif damage == "edit ids":
        (folder / "ids.i32").write_bytes(ids[:-4] + (7).to_bytes(4, "little"))
    elif damage == "edit labels":
        labels = bytearray((folder / "labels.i64").read_bytes())
        labels[0] ^= 1
        (folder / "labels.i64").write_bytes(bytes(labels))
    elif damage == "edit meta rows":
        (folder / "meta.json").write_text(json.dumps({**meta, "rows": meta["rows"] - 1}))
    elif damage == "drop a digest":
        (folder / "meta.json").write_text(json.dumps({**meta, "sha256": {}}))
    elif damage == "meta not JSON":
        (folder / "meta.json").write_text("{")
    else:
        (folder / "meta.json").unlink()
    with caplog.at_level("WARNING", logger="textpipe"):
        again = TextClassificationDataset(path, tok, vocab, **kwargs)
    assert pairs(again) == expected
    notices = [r.getMessage() for r in caplog.records if "damaged" in r.getMessage()]
    assert len(notices) == 1 and "\n" not in notices[0] and str(folder) in notices[0]
    caplog.clear()
    with caplog.at_level("WARNING", logger="textpipe"):
        TextClassificationDataset(path, tok, vocab, **kwargs)  # rebuilt whole: no notice the next time
    assert "damaged" not in caplog.text


def test_every_cache_file_is_fsynced_before_the_rename(tmp_path, monkeypatch):
    import os

    from textpipe.text import cache

    synced, events = set(), []
    real_fsync, real_rename = os.fsync, os.rename
    monkeypatch.setattr(cache.os, "fsync", lambda fd: (synced.add(os.readlink(f"/proc/self/fd/{fd}")), real_fsync(fd))[1])
    monkeypatch.setattr(cache.os, "rename", lambda a, b: (events.append(set(synced)), real_rename(a, b))[1])
    written = cache.write_cache(tmp_path, "a" * 32, [([1, 2, 3], 0), ([4], 1)], {})
    (before,) = events
    assert {os.path.basename(p) for p in before} >= {"ids.i32", "offsets.i64", "labels.i64", "meta.json"}
    assert written.ids.tolist() == [1, 2, 3, 4]


# --- the one-pass cache: written from the count pass's token stream (issue 32) ------------------------------------

def one_pass_rows():
    rows = make_rows(300, seed=6)
    rows[11] = ("pos", "zyzzyva quux")  # words seen once: <unk> with min_freq 2
    return rows


def counted(path, tmp_path, source=None):
    from textpipe.run.config import DataConfig
    from textpipe.run.counts import count_training_file, label_order

    data = DataConfig(cache_dir=str(tmp_path / "counts"), min_freq=2, **({"source": source} if source else {}))
    counts = count_training_file(path, 5, Tokenizer("spacy"), data, quiet=True)
    return counts, counts.vocab(data), label_order(counts.label_counts)


def cache_files(folder):
    return {name: (folder / name).read_bytes() for name in ("ids.i32", "offsets.i64", "labels.i64", "meta.json")}


@pytest.mark.parametrize("part", ["train", "dev", "all"])
def test_the_one_pass_cache_equals_the_tokenized_one_byte_for_byte(tmp_path, monkeypatch, part):
    from textpipe.text import token_stream

    monkeypatch.setattr(token_stream, "BLOCK_ROWS", 7)  # many blocks, some with no row of the part
    path = tmp_path / "train.csv"
    text = "label,text\n" + "".join(f"{label},{text}\n" for label, text in one_pass_rows()[:150]) + "pos\n" + "".join(
        f"{label},{text}\n" for label, text in one_pass_rows()[150:])  # a bad row, skipped and counted in meta.json
    path.write_text(text, encoding="utf-8")
    source = SourceConfig(on_bad_row="skip")
    counts, vocab, labels = counted(path, tmp_path, source)
    assert counts.stream is not None and counts.skipped
    kwargs = dict(labels=labels, holdout_every=5 if part != "all" else 0, part=part, source=source)
    one_pass = TextClassificationDataset(path, Tokenizer("spacy"), vocab, cache_dir=tmp_path / "a", stream=counts.stream, **kwargs)
    monkeypatch.setattr(TextClassificationDataset, "_encoded_rows", lambda *a: pytest.fail("the stream's rows must not be tokenized again"))
    monkeypatch.undo()
    two_pass = TextClassificationDataset(path, Tokenizer("spacy"), vocab, cache_dir=tmp_path / "b", **kwargs)
    assert one_pass.cache.folder.name == two_pass.cache.folder.name
    assert cache_files(one_pass.cache.folder) == cache_files(two_pass.cache.folder)
    assert len(one_pass.cache) > 0


def test_a_row_without_tokens_is_one_unk_in_the_stream_cache(tmp_path):
    import numpy as np

    from textpipe.text.token_stream import TokenStream

    path = write_csv(tmp_path / "train.csv", [])
    stream = TokenStream(tmp_path / "s", holdout=0, file=path)
    for tokens, label in ((["a", "b"], "x"), ([], "y"), (["b"], "x")):
        stream.add(tokens, label, held=False)
    stream.finish({})
    remap = np.asarray([UNK_ID, 5, 6])  # the empty row's id, then a and b
    cache = stream.write_part(tmp_path / "c", "a" * 32, remap, np.asarray([1, 0]), {})
    assert cache.ids.tolist() == [5, 6, UNK_ID, 6] and cache.offsets.tolist() == [0, 2, 3, 4] and cache.labels.tolist() == [1, 0, 1]


def test_the_stream_writes_the_cache_without_tokenizing(tmp_path, monkeypatch):
    path = write_csv(tmp_path / "train.csv", one_pass_rows())
    counts, vocab, labels = counted(path, tmp_path)
    monkeypatch.setattr(Tokenizer, "pipe", lambda *a: pytest.fail("tokenized again"))
    monkeypatch.setattr(Tokenizer, "__call__", lambda *a: pytest.fail("tokenized again"))
    for part in ("train", "dev"):
        TextClassificationDataset(path, Tokenizer("spacy"), vocab, labels, holdout_every=5, part=part, cache_dir=tmp_path / "c", stream=counts.stream)


def test_a_stream_of_another_file_or_split_is_not_used(tmp_path):
    path = write_csv(tmp_path / "train.csv", one_pass_rows())
    counts, vocab, labels = counted(path, tmp_path)
    assert counts.stream.usable_for(path, "train", 5) and not counts.stream.usable_for(path, "train", 10)
    write_csv(path, one_pass_rows()[:-1])  # edited since it was counted
    assert not counts.stream.usable_for(path, "all", 0)
    rebuilt = TextClassificationDataset(path, Tokenizer("spacy"), vocab, labels, cache_dir=tmp_path / "c", stream=counts.stream)
    assert len(rebuilt.cache) == len(one_pass_rows()) - 1
    folder = counts.stream.folder
    del counts
    assert not folder.exists()  # the stream's folder goes with it


KILLED = """
import os, sys
sys.path[:0] = [{tests!r}, {tests!r} + "/.."]
from test_cache import counted
from textpipe.text import token_stream
from textpipe.text.dataset import TextClassificationDataset
from textpipe.text.tokenizer import Tokenizer
from pathlib import Path
counts, vocab, labels = counted(Path({path!r}), Path({tmp!r}))
blocks = token_stream.TokenStream._blocks
def killed(*args):
    for i, block in enumerate(blocks(*args)):
        if i == 2:
            os._exit(9)  # as kill -9: no cleanup runs
        yield block
token_stream.BLOCK_ROWS = 16
token_stream.TokenStream._blocks = killed
TextClassificationDataset(Path({path!r}), Tokenizer("spacy"), vocab, labels, holdout_every=5, part="train", cache_dir=Path({tmp!r}) / "c",
                          stream=counts.stream)
"""


def test_a_run_killed_while_writing_the_one_pass_cache_leaves_none_that_is_trusted(tmp_path):
    import subprocess
    import sys
    from pathlib import Path

    path = write_csv(tmp_path / "train.csv", one_pass_rows())
    script = KILLED.format(tests=str(Path(__file__).parent), path=str(path), tmp=str(tmp_path))
    assert subprocess.run([sys.executable, "-c", script], cwd=Path(__file__).parents[2], timeout=120).returncode == 9
    left = list((tmp_path / "c").iterdir())
    assert left and all(p.name.startswith(".") for p in left)  # a temporary folder: never a cache key
    counts, vocab, labels = counted(path, tmp_path)
    built = TextClassificationDataset(path, Tokenizer("spacy"), vocab, labels, holdout_every=5, part="train", cache_dir=tmp_path / "c")
    again = TextClassificationDataset(path, Tokenizer("spacy"), vocab, labels, holdout_every=5, part="train", cache_dir=tmp_path / "c2",
                                      stream=counts.stream)
    assert cache_files(built.cache.folder) == cache_files(again.cache.folder)
