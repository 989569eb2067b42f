import atexit
import contextlib
import csv
import functools
import os
import random
import shutil
import sys
import subprocess
import tempfile
from pathlib import Path
from typing import Iterator

import pytest

from event_hooks import when

# The benchmark datasets (mr, subj, trec6): TEXTPIPE_DATASETS, or the project CI's folder beside
# the clone. A user's clone has neither, and the tests that need them skip (marker `shared`).
SHARED = Path(os.environ.get("TEXTPIPE_DATASETS", Path(__file__).resolve().parents[2] / "shared" / "datasets"))

# `make test` runs pytest under make, and textpipe's hints then name make's variables (ARGS="..."): the
# tests read the hints a shell user sees, and the one that checks make's form sets MAKELEVEL itself.
os.environ.pop("MAKELEVEL", None)

POSITIVE = "good great fine superb lovely witty gorgeous".split()
NEGATIVE = "bad awful dull boring tedious clumsy ugly".split()
FILLER = "the a movie film story plot actor scene it was and of with".split()


def make_rows(n: int, seed: int = 0) -> list[tuple[str, str]]:
    """Separable toy reviews: the label decides which sentiment words appear."""
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        label = "pos" if i % 2 == 0 else "neg"
        words = rng.choices(FILLER, k=rng.randint(2, 12)) + rng.choices(POSITIVE if label == "pos" else NEGATIVE, k=rng.randint(1, 3))
        rng.shuffle(words)
        rows.append((label, " ".join(words) + "."))
    return rows


TOPICS = {"sport": "goal match team score".split(), "food": "soup bread spicy dinner".split(), "music": "song guitar band melody".split()}


def make_multilabel_rows(n: int, seed: int = 0) -> list[tuple[str, str]]:
    """Toy multi-label rows (label cell "food|sport", or empty): each topic of a row's set puts its words in the text."""
    rng = random.Random(seed)
    rows = []
    for _ in range(n):
        labels = [topic for topic in TOPICS if rng.random() < 0.4]
        words = rng.choices(FILLER, k=rng.randint(2, 8)) + [w for topic in labels for w in rng.choices(TOPICS[topic], k=rng.randint(1, 2))]
        rng.shuffle(words)
        rows.append(("|".join(labels), " ".join(words) + "."))
    return rows


def write_csv(path: Path, rows) -> Path:
    with open(path, "w", encoding="utf-8", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["label", "text"])
        writer.writerows(rows)
    return path


# Token-id caches of test runs go to a temporary folder, not the user's cache folder. Set at
# import, before any test module copies os.environ into a subprocess's environment.
# Each process (the xdist controller and every worker) removes its own folder at the end of its
# session (pytest_unconfigure: xdist workers leave through os._exit, which skips atexit).
TOKEN_CACHE = tempfile.mkdtemp(prefix="textpipe-test-cache-")
os.environ["TEXTPIPE_CACHE"] = TOKEN_CACHE
atexit.register(shutil.rmtree, TOKEN_CACHE, ignore_errors=True)


def pytest_unconfigure(config):
    shutil.rmtree(TOKEN_CACHE, ignore_errors=True)


@functools.cache
def _blank_english():
    import spacy

    return spacy.blank("en")


def spacy_reference(tokenizer, text: str) -> list[str]:
    """spaCy's own tokens for ``text``, with no memo: what the memoized ``Tokenizer("spacy")`` must give."""
    return [t.lower_ if tokenizer.lower else t.text for t in _blank_english().tokenizer(text) if not t.is_space]


def png_size(path) -> tuple[int, int]:
    """Width and height from a PNG's IHDR chunk, which the format puts first."""
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and data[12:16] == b"IHDR", f"{path} is not a PNG"
    return int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")


@contextlib.contextmanager
def crash_after_step(step: int, error: BaseException, after_checkpoint: int | None = None) -> Iterator[None]:
    """Inside the block, the training loop raises ``error`` once step ``step`` is done (see :func:`when`)."""

    def crash() -> None:
        raise error

    stop = when("step_done", crash, after_checkpoint, step=step)
    try:
        yield
    finally:
        stop()


@pytest.fixture(scope="session", autouse=True)
def token_cache():
    yield TOKEN_CACHE
    shutil.rmtree(TOKEN_CACHE, ignore_errors=True)


@pytest.fixture
def toy_files(tmp_path):
    """train.csv (400 rows), dev.csv and test.csv (100 rows each) of separable toy reviews."""
    return (
        write_csv(tmp_path / "train.csv", make_rows(400, seed=1)),
        write_csv(tmp_path / "dev.csv", make_rows(100, seed=2)),
        write_csv(tmp_path / "test.csv", make_rows(100, seed=3)),
    )


@pytest.fixture
def shared_dataset():
    def get(name: str) -> Path:
        folder = SHARED / name
        if not (folder / "train.csv").is_file():
            pytest.skip(f"needs the benchmark dataset {name} in {SHARED} (set TEXTPIPE_DATASETS; present in the project's CI, not in a user's clone)")
        return folder

    return get


# Texts and a tiny trained bundle shared by the explain, quantize and serve tests.
TEXTS = [
    "a great and witty film.",
    "dull , boring and awful",
    "never seen words zzz qqq",
    "great",
    "the plot was superb but the actor was clumsy and the scene ugly , a tedious and lovely story of the film",
]


# A tiny model for toy data: 512 hashed n-gram rows of dim 16 instead of the default 2^18 x 64
# table (a 67 MB bundle), and the whitespace tokenizer. Tests of the defaults, of real accuracy
# and the golden runs do not use it.
TINY_MODEL = {"embed_dim": 16, "hidden_dim": 16, "ngram_buckets": 512}
TINY_FLAGS = ("--tokenizer", "whitespace", *(a for k, v in TINY_MODEL.items() for a in ("--set", f"model.{k}={v}")))


def tiny(**sections: dict):
    """A PipelineConfig with the tiny model; ``sections`` override it key by key, e.g.
    ``tiny(model={"name": "cnn"}, train={"epochs": 2})``."""
    from textpipe.run.config import PipelineConfig

    base = {"tokenizer": {"name": "whitespace"}, "model": dict(TINY_MODEL)}
    for section, values in sections.items():
        base[section] = {**base.get(section, {}), **values}
    return PipelineConfig.from_dict(base)


@pytest.fixture
def tiny_config():
    """``tiny``: unit tests that train build their config with it, so they train tiny tables."""
    return tiny


def train_tiny(folder, model: str = "bag", **model_overrides):
    """A small bundle trained on the toy reviews in a few seconds; returns its folder and the test file."""
    from textpipe.run.phases import train_files

    train = write_csv(folder / "train.csv", make_rows(300, seed=1))
    test = write_csv(folder / "test.csv", make_rows(60, seed=3))
    config = tiny(tokenizer={"name": "spacy"}, data={"cache_dir": None}, model={"name": model, **model_overrides},
                  train={"epochs": 3, "lr": 0.02, "refit": False, "keep_checkpoints": 1, "checkpoint_seconds": 1e-9, "keep_checkpoints_after": True})
    train_files(train, test, folder / "run", config=config, quiet=True)
    return folder / "run", test


def run_cli(*args) -> subprocess.CompletedProcess:
    """``python -m textpipe ARGS`` in a fresh process, output captured."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, "-m", "textpipe", *map(str, args)], capture_output=True, text=True, env=env)


def pytest_addoption(parser):
    parser.addoption("--golden", action="store_true", help="also run the six golden runs (tests/golden.py): make golden")


def pytest_collection_modifyitems(config, items):
    # Tests that read the benchmark datasets are marked `shared`, so CI can run them apart (`-m shared`).
    for item in items:
        if "shared_dataset" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.shared)
        # Tests of the real sentence encoder skip until it is fetched (`textpipe vectors fetch minilm-l6`): marked
        # `encoder` so CI can fetch it and run them apart (`-m encoder`).
        if any("minilm-l6" in str(mark.kwargs.get("reason", "")) for mark in item.iter_markers("skipif")):
            item.add_marker(pytest.mark.encoder)
    # The golden runs train six real models (about 4 minutes of CPU): `make golden` and CI run them,
    # `make test` stays fast.
    if config.getoption("--golden"):
        return
    skip = pytest.mark.skip(reason="a golden run: `make golden` (or pytest --golden) runs the six")
    for item in items:
        if "golden" in item.keywords:
            item.add_marker(skip)


def cli_here(*args) -> subprocess.CompletedProcess:
    """``textpipe ARGS`` run in this process (``textpipe.cli.main``), output captured: for tests of
    error paths, which need the exit status and the message but not the cost of starting Python
    and torch again. Commands that train or must be killed still run in a subprocess (run_cli)."""
    import io

    from textpipe.cli import main

    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            status = main([str(a) for a in args])
        except SystemExit as exit:  # argparse's usage errors
            status = exit.code if isinstance(exit.code, int) else 2
    return subprocess.CompletedProcess(["textpipe", *map(str, args)], status, out.getvalue(), err.getvalue())


# Multi-label toy data: each label has its own words, and a row's text holds the words of its labels (maybe none).
TAG_WORDS = {"sport": "match goal team referee".split(), "food": "pasta cheese bread soup".split(), "music": "guitar song drums band".split()}


def make_label_set_rows(n: int, seed: int = 0, sep: str = "|") -> list[tuple[str, str]]:
    """``(labels, text)`` rows of label sets joined by ``sep`` (an empty cell: none of the labels), cycling through every subset."""
    rng = random.Random(seed)
    names = sorted(TAG_WORDS)
    rows = []
    for i in range(n):
        chosen = [name for bit, name in enumerate(names) if (i >> bit) & 1]  # i % 8 runs through all 8 subsets
        words = rng.choices(FILLER, k=rng.randint(2, 8)) + [w for name in chosen for w in rng.choices(TAG_WORDS[name], k=2)]
        rng.shuffle(words)
        rows.append((sep.join(chosen), " ".join(words) + "."))
    return rows


def train_tiny_multilabel(folder, model: str = "bag", **model_overrides):
    """A small multi-label bundle (labels food, music, sport) trained in a few seconds; returns its folder and the test file.
    The bag alone (no NB linear path) unless ``nb_linear=True``: the tests of predict, explain and serve read its own scores."""
    from dataclasses import replace

    from textpipe.run.phases import train_files

    train = write_csv(folder / "train.csv", make_label_set_rows(240, seed=1))
    test = write_csv(folder / "test.csv", make_label_set_rows(48, seed=3))
    config = tiny(data={"cache_dir": None}, model={"name": model, "nb_linear": False, **model_overrides},
                  train={"epochs": 4, "lr": 0.05, "refit": False, "keep_checkpoints": 0})
    config = replace(config, data=replace(config.data, source=replace(config.data.source, label_sep="|")))
    train_files(train, test, folder / "run", config=config, quiet=True)
    return folder / "run", test


@pytest.fixture(scope="session")
def tiny_multilabel(tmp_path_factory):
    """``(bundle folder, test file)`` of :func:`train_tiny_multilabel`, trained once for the session's tests."""
    return train_tiny_multilabel(tmp_path_factory.mktemp("multilabel"))


@pytest.fixture(autouse=True)
def refit_in_the_parent(monkeypatch):
    """In-process runs train their refit in the parent, whatever the machine's load, so what a test observes (events,
    timings) does not depend on it; tests/run/test_refit_ahead.py turns the refit ahead on where it tests it."""
    from textpipe.run import refit_ahead

    monkeypatch.setattr(refit_ahead, "other_core_free", lambda: False)
