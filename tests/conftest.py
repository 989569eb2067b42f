import csv
import functools
import os
import random
import shutil
import tempfile
from pathlib import Path

import pytest

SHARED = Path(__file__).resolve().parents[2] / "shared" / "datasets"

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


def write_csv(path: Path, rows) -> Path:
    with open(path, "w", encoding="utf-8", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["label", "text"])
        writer.writerows(rows)
    return path


# Token-id caches of test runs go to a temporary folder, not the user's cache folder. Set at
# import, before any test module copies os.environ into a subprocess's environment.
TOKEN_CACHE = tempfile.mkdtemp(prefix="textpipe-test-cache-")
os.environ["TEXTPIPE_CACHE"] = TOKEN_CACHE


@functools.cache
def _blank_english():
    import spacy

    return spacy.blank("en")


def spacy_reference(tokenizer, text: str) -> list[str]:
    """spaCy's own tokens for ``text``, with no memo: what the memoized ``Tokenizer("spacy")`` must give."""
    return [t.lower_ if tokenizer.lower else t.text for t in _blank_english().tokenizer(text) if not t.is_space]


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
            pytest.skip(f"needs ../shared/datasets/{name} (present in the project's CI, not in a user's clone)")
        return folder

    return get
