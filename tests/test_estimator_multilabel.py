"""TextClassifier on label sets (issue 33, item 3): lists of labels in, a MultiLabelBinarizer-style 0/1 array
out, per-label probabilities, scikit-learn's subset accuracy as score, and a save/load round trip."""

import numpy as np
import pytest

from conftest import make_label_set_rows
from textpipe import TextClassifier

FAST = {"tokenizer": "whitespace", "epochs": 4, "embed_dim": 8, "ngram_buckets": 256, "lr": 0.05}


@pytest.fixture(scope="module", autouse=True)
def no_report():
    """fit trains in a temporary run folder: its report is never read."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr("textpipe.run.pipeline.write_report", lambda *args, **kwargs: [])
        yield


def texts_and_sets(n: int, seed: int) -> tuple[list[str], list[list[str]]]:
    rows = make_label_set_rows(n, seed=seed)
    return [text for _, text in rows], [labels.split("|") if labels else [] for labels, _ in rows]


@pytest.fixture(scope="module")
def fitted():
    texts, sets = texts_and_sets(240, seed=1)
    clf = TextClassifier(**FAST).fit(texts, [tuple(s) if i % 3 else set(s) for i, s in enumerate(sets)])  # lists, tuples, sets alike
    return clf, texts_and_sets(48, seed=3)


def test_label_sets_in_a_binarized_array_out(fitted):
    clf, (texts, sets) = fitted
    assert clf.multi_label_ and clf.classes_.tolist() == ["food", "music", "sport"]
    predicted, proba = clf.predict(texts), clf.predict_proba(texts)
    assert predicted.shape == proba.shape == (48, 3) and predicted.dtype == np.int64 and set(np.unique(predicted)) <= {0, 1}
    assert proba.dtype == np.float32 and not np.allclose(proba.sum(axis=1), 1)  # one sigmoid per label
    thresholds = np.asarray(clf.bundle_.multi_label["thresholds"])[clf._columns]
    assert (predicted == (proba >= thresholds)).all()


def test_score_is_scikit_learns_subset_accuracy(fitted):
    from sklearn.metrics import accuracy_score
    from sklearn.preprocessing import MultiLabelBinarizer

    clf, (texts, sets) = fitted
    indicator = MultiLabelBinarizer(classes=clf.classes_.tolist()).fit_transform(sets)
    expected = accuracy_score(indicator, clf.predict(texts))
    assert clf.score(texts, sets) == pytest.approx(expected) and clf.score(texts, indicator) == pytest.approx(expected)
    assert expected > 0.5
    with pytest.raises(ValueError, match="unknown label 'jazz'"):
        clf.score(texts[:1], [["jazz"]])


def test_save_and_load_give_the_same_predictions(fitted, tmp_path):
    clf, (texts, _) = fitted
    loaded = TextClassifier.load(clf.save(tmp_path / "tags"))
    assert loaded.multi_label_ and loaded.classes_.tolist() == clf.classes_.tolist()
    np.testing.assert_array_equal(loaded.predict_proba(texts), clf.predict_proba(texts))
    np.testing.assert_array_equal(loaded.predict(texts), clf.predict(texts))


def test_integer_labels_keep_their_kind_and_mixed_rows_are_refused(tmp_path):
    texts, sets = texts_and_sets(160, seed=2)
    numbers = {"food": 1, "music": 2, "sport": 3}
    clf = TextClassifier(**FAST).fit(texts, [[numbers[label] for label in s] for s in sets])
    assert clf.classes_.tolist() == [1, 2, 3] and TextClassifier.load(clf.save(tmp_path / "n")).classes_.tolist() == [1, 2, 3]
    with pytest.raises(TypeError, match=r"labels\[1\]: expected a list of labels"):
        TextClassifier(**FAST).fit(texts[:3], [["food"], "music", []])
    with pytest.raises(TypeError, match=r"labels\[1\]: expected one label"):
        TextClassifier(**FAST).fit(texts[:3], ["food", ["music"], "sport"])
