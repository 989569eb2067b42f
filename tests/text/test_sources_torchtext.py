"""``torchtext:NAME/SPLIT`` sources read through ``torchtext.datasets`` itself, offline.

torchtext checks each downloaded file against a fixed MD5 before it trusts it, and
no test can ship the real archives. So each test writes a tiny archive in exactly
the layout torchtext expects under ``ROOT/datasets/NAME/``, points the dataset
module's MD5 at that archive, and blocks the network: what is tested is that
torchtext's own code reads files already in place without connecting anywhere,
and that textpipe turns its tuples into labelled examples.
"""

import hashlib
import importlib
import io
import socket
import tarfile
import zipfile

import pytest

from textpipe.text.sources import DataError, SourceConfig, read_examples


@pytest.fixture
def offline(monkeypatch):
    connect = socket.socket.connect

    def refuse_network(sock, *args, **kwargs):
        if sock.family in (socket.AF_INET, socket.AF_INET6):
            raise OSError("network blocked by the test")
        return connect(sock, *args, **kwargs)  # DataLoader workers hand tensors over Unix sockets

    monkeypatch.setattr(socket.socket, "connect", refuse_network)


def md5(path):
    return hashlib.md5(path.read_bytes()).hexdigest()


def torchtext_module(name):
    import textpipe.text._torchtext  # noqa: F401

    return importlib.import_module(f"torchtext.datasets.{name}")


def write_tar(path, members):
    path.parent.mkdir(parents=True, exist_ok=True)
    with tarfile.open(path, "w:gz") as tar:
        for name, text in members.items():
            data = text.encode("utf-8")
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return path


def install(monkeypatch, root, name):
    """Write a tiny copy of dataset ``name`` where torchtext looks, with its MD5 patched in."""
    folder = root / "datasets" / name
    if name == "AG_NEWS":
        folder.mkdir(parents=True)
        train = folder / "train.csv"
        train.write_text('"3","Wall St. Bears Claw Back","Short-sellers see green."\n"4","New chip","Runs cooler"\n', encoding="utf-8")
        monkeypatch.setitem(torchtext_module("ag_news").MD5, "train", md5(train))
        return
    if name == "SST2":
        folder.mkdir(parents=True)
        with zipfile.ZipFile(folder / "SST-2.zip", "w") as z:
            z.writestr("SST-2/train.tsv", "sentence\tlabel\nhide new secretions \t0\ngood fun \t1\n")
        monkeypatch.setattr(torchtext_module("sst2"), "MD5", md5(folder / "SST-2.zip"))
        return
    archives = {
        "IMDB": ("imdb", "aclImdb_v1.tar.gz", {"aclImdb/train/pos/0_9.txt": "loved it", "aclImdb/train/neg/1_2.txt": "hated it",
                                               "aclImdb/train/unsup/2_0.txt": "no label", "aclImdb/test/pos/3_8.txt": "test row"}),
        "YelpReviewPolarity": ("yelpreviewpolarity", "yelp_review_polarity_csv.tar.gz",
                               {"yelp_review_polarity_csv/train.csv": '"1","Cold food, rude staff."\n"2","Best tacos in town."\n'}),
        "DBpedia": ("dbpedia", "dbpedia_csv.tar.gz",
                    {"dbpedia_csv/train.csv": '1,"E. D. Abbott Ltd"," Abbott of Farnham was a coachbuilder."\n9,"Zeitz","A town in Saxony-Anhalt."\n'}),
        "AmazonReviewPolarity": ("amazonreviewpolarity", "amazon_review_polarity_csv.tar.gz",
                                 {"amazon_review_polarity_csv/train.csv": '"2","Great CD","Lovely pat metheny."\n"1","Broke","After a week."\n'}),
    }
    module, archive, members = archives[name]
    write_tar(folder / archive, members)
    monkeypatch.setattr(torchtext_module(module), "MD5", md5(folder / archive))


EXPECTED = {
    "AG_NEWS": [("3", "Wall St. Bears Claw Back Short-sellers see green."), ("4", "New chip Runs cooler")],
    "SST2": [("0", "hide new secretions"), ("1", "good fun")],
    "IMDB": [("1", "hated it"), ("2", "loved it")],
    "YelpReviewPolarity": [("1", "Cold food, rude staff."), ("2", "Best tacos in town.")],
    "DBpedia": [("1", "E. D. Abbott Ltd  Abbott of Farnham was a coachbuilder."), ("9", "Zeitz A town in Saxony-Anhalt.")],
    "AmazonReviewPolarity": [("2", "Great CD Lovely pat metheny."), ("1", "Broke After a week.")],
}


@pytest.mark.parametrize("name", EXPECTED)
def test_torchtext_dataset_read_offline_from_a_local_root(tmp_path, monkeypatch, offline, name):
    install(monkeypatch, tmp_path, name)
    config = SourceConfig(root=str(tmp_path))
    examples = list(read_examples(f"torchtext:{name}/train", config=config))
    assert sorted((e.label, e.text) for e in examples) == sorted(EXPECTED[name])
    assert sorted(e.line for e in examples) == [1, 2]
    # A second read uses what torchtext cached (IMDB and the archives are extracted once).
    assert len(list(read_examples(f"torchtext:{name}/train", config=config))) == 2


def test_missing_torchtext_files_offline_is_one_clear_line(tmp_path, offline):
    with pytest.raises(DataError) as err:
        list(read_examples("torchtext:DBpedia/train", config=SourceConfig(root=str(tmp_path))))
    message = str(err.value)
    assert message.startswith("torchtext:DBpedia/train: torchtext could not read DBpedia 'train' (")
    assert message.endswith(f"offline, its downloaded files belong in {tmp_path}/datasets/DBpedia/") and "\n" not in message


def test_unknown_torchtext_name_or_split(tmp_path):
    with pytest.raises(DataError, match="use torchtext:NAME/SPLIT with NAME one of AG_NEWS, IMDB"):
        list(read_examples("torchtext:MNIST/train"))
    with pytest.raises(DataError, match="Given selection \\('dev',\\) of splits is not supported"):
        list(read_examples("torchtext:AG_NEWS/dev", config=SourceConfig(root=str(tmp_path))))


def test_train_on_a_torchtext_dataset(tmp_path, monkeypatch, offline, tiny_config):
    """The whole pipeline on torchtext:AG_NEWS, read in two DataLoader workers: train split to train, the same rows as test."""
    from textpipe.run.phases import train_files

    install(monkeypatch, tmp_path, "AG_NEWS")
    config = tiny_config(data={"num_workers": 2, "source": {"root": str(tmp_path)}}, train={"epochs": 1})
    spec = "torchtext:AG_NEWS/train"
    metrics = train_files(spec, spec, tmp_path / "run", dev=spec, config=config, quiet=True)
    assert metrics["test"]["n"] == 2
