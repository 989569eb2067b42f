"""count_training_file keeps its counts in the cache folder: a second count of the same file tokenizes nothing."""

from textpipe.run.config import DataConfig
from textpipe.run.counts import count_training_file
from textpipe.text.tokenizer import Tokenizer

from conftest import write_csv

ROWS = [("pos", "a fine, warm film"), ("neg", "a dull film"), ("pos", "warm and witty"), ("neg", "dull, dull, dull")] * 5


class CountingTokenizer(Tokenizer):
    """A tokenizer that counts the texts it is given."""

    texts = 0

    def pipe(self, texts):
        for text in texts:
            CountingTokenizer.texts += 1
            yield text.split()


def test_a_second_count_of_the_same_file_reads_the_cache(tmp_path):
    path = write_csv(tmp_path / "train.csv", ROWS)
    data = DataConfig(cache_dir=str(tmp_path / "cache"))
    first = count_training_file(path, 10, CountingTokenizer("whitespace"), data, quiet=True)
    tokenized = CountingTokenizer.texts
    again = count_training_file(path, 10, CountingTokenizer("whitespace"), data, quiet=True)
    assert CountingTokenizer.texts == tokenized == len(ROWS)  # nothing tokenized the second time
    assert again == first and again.vocab(data).get_itos() == first.vocab(data).get_itos()
    assert again.all_rows().vocab(data).get_itos() == first.all_rows().vocab(data).get_itos()


def test_other_content_or_settings_count_again_and_no_cache_keeps_nothing(tmp_path):
    path = write_csv(tmp_path / "train.csv", ROWS)
    data = DataConfig(cache_dir=str(tmp_path / "cache"))
    first = count_training_file(path, 10, CountingTokenizer("whitespace"), data, quiet=True)
    assert count_training_file(path, 0, CountingTokenizer("whitespace"), data, quiet=True).held_out_tokens == {}  # another hold-out
    write_csv(path, ROWS + [("neg", "new words here")])
    changed = count_training_file(path, 10, CountingTokenizer("whitespace"), data, quiet=True)
    assert changed.tokens["new"] == 1 and first.tokens["new"] == 0
    uncached = DataConfig(cache_dir=False)
    before = CountingTokenizer.texts
    count_training_file(path, 10, CountingTokenizer("whitespace"), uncached, quiet=True)
    count_training_file(path, 10, CountingTokenizer("whitespace"), uncached, quiet=True)
    assert CountingTokenizer.texts == before + 2 * (len(ROWS) + 1)


def test_a_broken_cache_entry_is_counted_again(tmp_path):
    path = write_csv(tmp_path / "train.csv", ROWS)
    data = DataConfig(cache_dir=str(tmp_path / "cache"))
    first = count_training_file(path, 10, CountingTokenizer("whitespace"), data, quiet=True)
    (entry,) = [p for p in (tmp_path / "cache").iterdir() if (p / "counts.json").is_file()]
    (entry / "counts.json").write_text("{not json", encoding="utf-8")
    assert count_training_file(path, 10, CountingTokenizer("whitespace"), data, quiet=True) == first


def test_edited_counts_are_counted_again_with_a_notice_never_used(tmp_path, caplog):
    import json

    path = write_csv(tmp_path / "train.csv", ROWS)
    data = DataConfig(cache_dir=str(tmp_path / "cache"))
    first = count_training_file(path, 10, CountingTokenizer("whitespace"), data, quiet=True)
    (counts,) = (tmp_path / "cache").rglob("counts.json")
    saved = json.loads(counts.read_text())
    saved["tokens"]["evil"] = 10**6  # valid JSON, the wrong counts
    counts.write_text(json.dumps(saved))
    with caplog.at_level("WARNING", logger="textpipe"):
        again = count_training_file(path, 10, CountingTokenizer("whitespace"), data, quiet=True)
    assert again == first and "evil" not in again.tokens
    assert "counts cache" in caplog.text and "damaged" in caplog.text


def test_a_cold_run_tokenizes_each_training_row_once(tmp_path, monkeypatch, tiny_config):
    """The count pass keeps its tokens (a TokenStream): the train, dev and refit caches are written from them (issue 32)."""
    from conftest import make_rows
    from textpipe.run.phases import train_files

    train, test = write_csv(tmp_path / "train.csv", make_rows(200, seed=1)), write_csv(tmp_path / "test.csv", make_rows(40, seed=3))
    seen: list[str] = []
    pipe = Tokenizer.pipe

    def counted_pipe(self, texts):
        return pipe(self, (seen.append(text) or text for text in texts))  # the test file's rows too, once per vocabulary

    monkeypatch.setattr(Tokenizer, "pipe", counted_pipe)
    monkeypatch.setattr(Tokenizer, "__call__", lambda self, text: next(iter(counted_pipe(self, [text]))))
    config = tiny_config(data={"cache_dir": str(tmp_path / "cache")}, train={"epochs": 2, "keep_checkpoints": 0, "refit": True})
    train_files(train, test, tmp_path / "run", config=config, quiet=True)
    training = {text for _, text in make_rows(200, seed=1)}
    assert sum(text in training for text in seen) == 200  # each training row once: its count; the caches come from its tokens
    assert not [p for p in (tmp_path / "cache").iterdir() if p.name.startswith(".")]  # the stream's folder is gone
