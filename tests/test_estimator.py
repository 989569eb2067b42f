"""textpipe.TextClassifier: five lines from lists of strings to predictions, the same bundle as
the CLI, built on the pipeline's stages (issue 16, item 11); a scikit-learn classifier, and the
same class without scikit-learn installed (issue 28, item 2)."""

import json
import os
import pickle
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest

from conftest import make_rows
from textpipe import ConfigError, PipelineConfig, TextClassifier

FAST = {"tokenizer": "whitespace", "epochs": 4, "embed_dim": 8, "ngram_buckets": 256}  # a tiny model: a fit takes about a second
INTS = {"pos": 2, "neg": 10}


@pytest.fixture(scope="module", autouse=True)
def no_report():
    """fit trains in a temporary run folder: its report (two PNG plots, most of a tiny fit's time) is never read."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr("textpipe.run.pipeline.write_report", lambda *args, **kwargs: [])
        yield


def texts_and_labels(n: int, seed: int, kind=INTS.get) -> tuple[list[str], list]:
    rows = make_rows(n, seed=seed)
    return [text for _, text in rows], [kind(label) for label, _ in rows]


@pytest.fixture(scope="module")
def fitted():
    rows = make_rows(300, seed=1)
    texts = (text for _, text in rows)  # generators: fit streams any iterable
    labels = (INTS[label] for label, _ in rows)  # integer labels
    clf = TextClassifier(**FAST)
    assert clf.fit(texts, labels) is clf
    return clf, texts_and_labels(60, seed=9)


def test_five_lines_from_strings_to_predictions_integers_in_integers_out(fitted):
    clf, (texts, labels) = fitted
    assert clf.classes_.dtype.kind == "i" and clf.classes_.tolist() == [2, 10]
    assert clf.labels_ == ["2", "10"]  # as the bundle stores them, in classes_ order
    predicted = clf.predict(text for text in texts)
    assert isinstance(predicted, np.ndarray) and predicted.dtype.kind == "i" and set(predicted.tolist()) <= {2, 10}
    assert np.mean(predicted == labels) > 0.9 and clf.score(texts, labels) == np.mean(predicted == labels)
    assert clf.metrics_["scored_on"].startswith("dev rows held out of the training texts")


def test_predict_proba_is_an_array_in_classes_order(fitted):
    clf, (texts, _) = fitted
    proba = clf.predict_proba(texts)
    assert isinstance(proba, np.ndarray) and proba.shape == (60, 2) and proba.dtype == np.float32
    assert np.allclose(proba.sum(axis=1), 1, atol=1e-5)
    assert np.array_equal(clf.classes_[proba.argmax(axis=1)], clf.predict(texts))
    assert clf.predict_proba([]).shape == (0, 2) and clf.predict([]).shape == (0,)


def test_save_writes_the_cli_bundle_and_load_reads_it_back(fitted, tmp_path):
    clf, (texts, _) = fitted
    clf.save(tmp_path / "model")
    assert {"bundle.json", "weights.safetensors", "vocab.json", "config.json"} <= {p.name for p in (tmp_path / "model").iterdir()}
    again = TextClassifier.load(tmp_path / "model")
    assert np.array_equal(again.predict_proba(texts), clf.predict_proba(texts)) and again.labels_ == clf.labels_
    assert again.classes_.tolist() == [2, 10] and again.predict(texts[:3]).dtype.kind == "i"  # the labels' kind survives
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cli = subprocess.run([sys.executable, "-m", "textpipe", "predict", "--model", str(tmp_path / "model"), "--input", "-"],
                         input="\n".join(texts[:5]) + "\n", capture_output=True, text=True, env=env)
    assert cli.returncode == 0, cli.stderr
    assert [json.loads(line)["label"] for line in cli.stdout.splitlines()] == [str(p) for p in clf.predict(texts[:5])]


def test_a_cli_bundle_loads_into_the_estimator(tmp_path):
    from textpipe.run.phases import train_files
    from conftest import write_csv

    train = write_csv(tmp_path / "train.csv", make_rows(200, seed=3))
    config = PipelineConfig.from_dict({"tokenizer": {"name": "whitespace"}, "model": {"embed_dim": 8, "ngram_buckets": 256},
                                       "train": {"epochs": 3, "keep_checkpoints": 0}})
    train_files(train, None, tmp_path / "run", config=config)
    clf = TextClassifier.load(tmp_path / "run")
    assert clf.labels_ == ["neg", "pos"] and clf.classes_.tolist() == ["neg", "pos"] and clf.config_.tokenizer.name == "whitespace"
    from textpipe import Predictor

    texts = ["good great superb", "awful dull", "the plot"]
    assert clf.predict(texts).tolist() == [r["label"] for r in Predictor.load(tmp_path / "run").predict(texts)]


def test_dev_from_config_and_options(tmp_path):
    config_file = tmp_path / "c.toml"
    config_file.write_text('[model]\nname = "cnn"\nembed_dim = 16\n[train]\nepochs = 2\n', encoding="utf-8")
    clf = TextClassifier.from_config(config_file, lr=0.01, tokenizer="whitespace", token_dropout=0.1)
    assert (clf.lr, clf.tokenizer) == (0.01, "whitespace")  # parameters of the class stay parameters ...
    config = clf.pipeline_config()  # ... other fields go into config
    assert (config.model.name, config.model.embed_dim, config.model.token_dropout, config.train.epochs, config.train.lr) == ("cnn", 16, 0.1, 2, 0.01)
    assert TextClassifier(arch="gru").pipeline_config().model.name == "gru"
    assert TextClassifier.from_config({"train": {"patience": 5}}).pipeline_config().train.patience == 5
    assert TextClassifier(config={"train": {"patience": 5}}, patience=4).pipeline_config().train.patience == 4  # a parameter wins
    texts, labels = texts_and_labels(120, seed=4, kind=str)
    dev = texts_and_labels(40, seed=5, kind=str)
    clf.fit(texts, labels, dev=dev)
    assert clf.metrics_["scored_on"] == "the dev texts" and clf.metrics_["overall"]["n"] == 40
    assert clf.config_.model.name == "cnn" and clf.get_params()["config"].model.name == "cnn"


def test_mistakes_are_plain_errors_naming_the_item():
    with pytest.raises(ValueError, match=r"texts\[1\]: empty text"):
        TextClassifier(**FAST).fit(["good", " ", "bad"], ["pos", "neg", "neg"])
    with pytest.raises(ValueError, match="differ in length"):
        TextClassifier(**FAST).fit(["good", "bad"], ["pos"])
    with pytest.raises(TypeError, match="not one string"):
        TextClassifier(**FAST).fit("good movie", ["pos"])
    with pytest.raises(TypeError, match="unexpected keyword argument 'epoch'"):
        TextClassifier(epoch=3)
    with pytest.raises(TypeError, match="unknown option 'epoch'"):
        TextClassifier.from_config({}, epoch=3)
    with pytest.raises(ValueError, match="not fitted"):
        TextClassifier().predict(["good"])
    with pytest.raises(ValueError, match="at least 2 classes, got one class, 'pos'"):
        TextClassifier(**FAST).fit(["good", "fine"], ["pos", "pos"])
    with pytest.raises(ValueError, match="at least 2 classes, got no rows"):
        TextClassifier(**FAST).fit([], [])
    with pytest.raises(ValueError, match="labels of several kinds"):
        TextClassifier(**FAST).fit(["good", "bad"], ["pos", 0])
    with pytest.raises(ValueError, match=r"labels\[1\]: 0.5 is a continuous value"):
        TextClassifier(**FAST).fit(["good", "bad"], [1.0, 0.5])
    with pytest.raises(ValueError, match=r"labels\[1\]: missing label"):
        TextClassifier(**FAST).fit(["good", "bad"], [1.0, float("nan")])
    with pytest.raises(ValueError, match=r"labels\[1\]: 'pos ' and 'pos' are one label"):
        TextClassifier(**FAST).fit(["good", "bad"], ["pos", "pos "])
    with pytest.raises(TypeError, match=r"labels\[0\]: expected a str or a number, got dict"):  # a tuple is a label set (multi-label)
        TextClassifier(**FAST).fit(["good", "bad"], [{"pos": 1}, {"neg": 1}])
    with pytest.raises(ValueError, match="target y is None"):
        TextClassifier(**FAST).fit(["good", "bad"], None)


def test_the_estimator_is_built_on_the_pipeline_not_beside_it():
    source = (Path(__file__).resolve().parents[1] / "textpipe" / "estimator.py").read_text()
    assert "train_files(" in source and "nn.Module" not in source and "optim" not in source


# --- scikit-learn's contract ---------------------------------------------------------------------


def test_parameters_are_stored_as_given_and_checked_by_fit():
    clf = TextClassifier(epochs="many", config={"train": {"seed": 3}})
    assert clf.epochs == "many" and clf.config == {"train": {"seed": 3}}  # __init__ checks nothing
    with pytest.raises(ConfigError, match=r"TextClassifier: \[train\] epochs = 'many': expected int"):
        clf.fit(["good", "bad"], ["pos", "neg"])
    with pytest.raises(TypeError, match="config must be a PipelineConfig"):
        TextClassifier(config="configs/cnn.toml").fit(["good", "bad"], ["pos", "neg"])
    assert TextClassifier(epochs=np.int64(3)).pipeline_config().train.epochs == 3  # numpy numbers from a parameter grid


def test_clone_get_params_set_params_and_repr(fitted):
    from sklearn.base import clone

    original = TextClassifier(epochs=3)
    copy = clone(original)
    assert copy is not original and copy.get_params() == original.get_params() and copy.epochs == 3
    assert repr(copy) == "TextClassifier(epochs=3)"
    assert copy.set_params(arch="cnn", lr=0.01) is copy and (copy.arch, copy.lr, original.arch) == ("cnn", 0.01, None)
    with pytest.raises(ValueError, match="Invalid parameter 'epoch'"):
        copy.set_params(epoch=3)
    clf, _ = fitted
    unfitted = clone(clf)
    assert unfitted.get_params() == clf.get_params() and not hasattr(unfitted, "classes_")


def test_fit_keeps_the_parameters_and_adds_only_fitted_attributes(fitted):
    from sklearn.exceptions import NotFittedError
    from sklearn.utils.validation import check_is_fitted

    clf, _ = fitted
    assert clf.get_params() == {**TextClassifier().get_params(), **FAST}
    assert all(name.endswith("_") or name.startswith("_") for name in set(vars(clf)) - set(clf.get_params()))
    check_is_fitted(clf)
    with pytest.raises(NotFittedError):
        check_is_fitted(TextClassifier())
    assert not hasattr(TextClassifier(), "labels_")  # NotFittedError is an AttributeError


def test_predictions_do_not_depend_on_the_batch_or_its_order_and_change_nothing(fitted):
    clf, (texts, _) = fitted
    state = {name: id(value) for name, value in vars(clf).items()}
    proba = clf.predict_proba(texts)
    order = np.random.default_rng(0).permutation(len(texts))
    assert np.allclose(clf.predict_proba([texts[i] for i in order]), proba[order], atol=1e-6)
    assert np.allclose(clf.predict_proba(texts[:7]), proba[:7], atol=1e-6)
    assert {name: id(value) for name, value in vars(clf).items()} == state


def test_fit_is_idempotent_and_a_fitted_classifier_pickles(fitted):
    clf, (texts, _) = fitted
    again = pickle.loads(pickle.dumps(clf))
    assert np.array_equal(again.predict_proba(texts), clf.predict_proba(texts)) and again.classes_.tolist() == [2, 10]
    train_texts, train_labels = texts_and_labels(300, seed=1)
    assert np.allclose(clf.fit(train_texts, train_labels).predict_proba(texts), again.predict_proba(texts), atol=1e-6)


def test_cross_val_score():
    from sklearn.model_selection import cross_val_score

    texts, labels = texts_and_labels(180, seed=2)
    scores = cross_val_score(TextClassifier(**FAST), texts, labels, cv=3)
    assert scores.shape == (3,) and scores.min() > 0.8


def test_grid_search_over_two_parameters():
    from sklearn.model_selection import GridSearchCV

    texts, labels = texts_and_labels(160, seed=6)
    search = GridSearchCV(TextClassifier(**FAST), {"epochs": [1, 4], "max_ngram": [1, 2]}, cv=2).fit(texts, labels)
    assert len(search.cv_results_["params"]) == 4 and search.best_score_ > 0.8
    best = search.best_estimator_
    assert isinstance(best, TextClassifier) and {k: best.get_params()[k] for k in ("epochs", "max_ngram")} == search.best_params_
    test_texts, test_labels = texts_and_labels(40, seed=7)
    assert search.predict(test_texts).dtype.kind == "i" and search.score(test_texts, test_labels) > 0.8


def _clean(texts):
    return [text.replace("<br />", " ").lower() for text in texts]


def test_a_pipeline_with_a_text_cleaning_step():
    from sklearn.metrics import roc_auc_score
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import FunctionTransformer

    shout = lambda texts: np.array([text.upper().replace(" ", " <br /> ", 1) for text in texts])  # noqa: E731
    texts, labels = texts_and_labels(160, seed=8, kind={"pos": "2", "neg": "10"}.get)  # strings that look like numbers
    pipe = make_pipeline(FunctionTransformer(_clean), TextClassifier(**FAST)).fit(shout(texts), np.array(labels))
    clf = pipe[-1]
    assert "<br" not in clf.bundle_.vocab and "good" in clf.bundle_.vocab  # the classifier saw the cleaned texts
    assert clf.classes_.tolist() == ["10", "2"] and clf.labels_ == ["10", "2"]  # sorted as numpy sorts strings
    test_texts, test_labels = texts_and_labels(60, seed=9, kind={"pos": "2", "neg": "10"}.get)
    proba = pipe.predict_proba(shout(test_texts))
    assert roc_auc_score(np.array(test_labels) == "2", proba[:, 1]) > 0.95  # column 1 is "2": the columns follow classes_
    assert pipe.predict(shout(test_texts)).tolist() == clf.predict(_clean(shout(test_texts))).tolist()


# The checks of sklearn.utils.estimator_checks that apply to a classifier of texts: they need no data,
# or stop before reading it. Each runs on TextClassifier as it is.
APPLICABLE_CHECKS = [
    "check_estimator_cloneable", "check_estimator_tags_renamed", "check_valid_tag_types", "check_estimator_repr",
    "check_no_attributes_set_in_init", "check_estimators_unfitted", "check_do_not_raise_errors_in_init_or_set_params",
    "check_mixin_order", "check_parameters_default_constructible", "check_get_params_invariance", "check_set_params",
    "check_requires_y_none",
]
# The others (scikit-learn 1.9's list for a classifier) build X as a 2-d array of numbers; a text
# classifier refuses it (TypeError: texts[0]: expected a str). Where a check's point holds for
# texts, the test named beside it makes it with texts.
SKIPPED_CHECKS = {
    "check_fit_score_takes_y": "numeric X; fit(X, y) and score(X, y) are the signatures (test_cross_val_score uses both)",
    "check_estimators_overwrite_params": "numeric X; test_fit_keeps_the_parameters_and_adds_only_fitted_attributes",
    "check_dont_overwrite_parameters": "numeric X; test_fit_keeps_the_parameters_and_adds_only_fitted_attributes",
    "check_estimators_fit_returns_self": "numeric X; the fitted fixture asserts fit returns self",
    "check_readonly_memmap_input": "a memory-mapped numeric array is not texts",
    "check_n_features_in_after_fitting": "n_features_in_ counts the columns of a 2-d X; texts have none",
    "check_n_features_in": "as check_n_features_in_after_fitting",
    "check_positive_only_tag_during_fit": "numeric X",
    "check_estimators_dtypes": "numeric dtypes of X",
    "check_complex_data": "complex numbers in X",
    "check_dtype_object": "an object array of numbers as X",
    "check_estimators_empty_data_messages": "a 0-row 2-d array; test_mistakes_are_plain_errors_naming_the_item fits on no rows",
    "check_pipeline_consistency": "numeric X; test_a_pipeline_with_a_text_cleaning_step",
    "check_estimators_nan_inf": "NaN and inf in a numeric X",
    "check_estimator_sparse_tag": "sparse X", "check_estimator_sparse_array": "sparse X", "check_estimator_sparse_matrix": "sparse X",
    "check_estimators_pickle": "numeric X; test_fit_is_idempotent_and_a_fitted_classifier_pickles",
    "check_array_api_input": "array-API arrays of numbers", "check_f_contiguous_array_estimator": "a Fortran-ordered numeric array",
    "check_classifier_data_not_an_array": "numeric X; the fitted fixture fits on generators, the pipeline test on numpy arrays",
    "check_classifiers_one_label": "numeric X; test_mistakes_are_plain_errors_naming_the_item (one class: a ValueError)",
    "check_classifiers_one_label_sample_weights": "numeric X; fit takes no sample_weight",
    "check_classifiers_classes": "numeric X; the integer-label and string-label tests check classes_ and predict",
    "check_estimators_partial_fit_n_features": "no partial_fit",
    "check_classifiers_train": "numeric X; test_five_lines_from_strings_to_predictions_integers_in_integers_out",
    "check_classifiers_regression_target": "numeric X; test_mistakes_are_plain_errors_naming_the_item (a continuous label)",
    "check_supervised_y_no_nan": "numeric X; test_mistakes_are_plain_errors_naming_the_item (a NaN label)",
    "check_supervised_y_2d": "numeric X; y must be 1-d (one label per text)",
    "check_decision_proba_consistency": "no decision_function",
    "check_non_transformer_estimators_n_iter": "no max_iter parameter (epochs, with early stopping)",
    "check_methods_sample_order_invariance": "numeric X; test_predictions_do_not_depend_on_the_batch_or_its_order_and_change_nothing",
    "check_methods_subset_invariance": "numeric X; test_predictions_do_not_depend_on_the_batch_or_its_order_and_change_nothing",
    "check_dict_unchanged": "numeric X; test_predictions_do_not_depend_on_the_batch_or_its_order_and_change_nothing",
    "check_fit_idempotent": "numeric X; test_fit_is_idempotent_and_a_fitted_classifier_pickles",
    "check_fit_check_is_fitted": "numeric X; test_fit_keeps_the_parameters_and_adds_only_fitted_attributes",
    "check_fit2d_1sample": "a 1-row 2-d array", "check_fit2d_1feature": "a 1-column 2-d array",
    "check_fit1d": "a 1-d array of numbers (it must raise; a 1-d array of texts is this estimator's input)",
    "check_fit2d_predict1d": "numeric X",
}


@pytest.mark.parametrize("name", APPLICABLE_CHECKS)
def test_scikit_learn_checks_that_apply(name):
    estimator_checks = pytest.importorskip("sklearn.utils.estimator_checks")
    check = getattr(estimator_checks, name, None)
    if check is None:
        import sklearn

        pytest.skip(f"scikit-learn {sklearn.__version__} has no {name}")
    check("TextClassifier", TextClassifier(**FAST))


def test_check_estimator_takes_the_tags_and_leaves_the_numeric_checks_out():
    """check_estimator reads the tags (texts in, not a 2-d array), so it runs only the checks that need no data."""
    from sklearn.utils.estimator_checks import check_estimator

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # its SkipTestWarning: "Can't test estimator TextClassifier which requires input of type ..."
        check_estimator(TextClassifier(**FAST))
    assert not set(APPLICABLE_CHECKS) & set(SKIPPED_CHECKS)


def test_the_same_class_works_without_scikit_learn(tmp_path):
    script = f"""
import sys
sys.modules["sklearn"] = None  # as if scikit-learn were not installed: importing it raises ImportError
sys.path.insert(0, {str(Path(__file__).parent)!r})
import numpy as np
import textpipe.run.pipeline
from conftest import make_rows
from textpipe import TextClassifier

textpipe.run.pipeline.write_report = lambda *args, **kwargs: []  # as the no_report fixture does

assert not any(c.__module__.startswith("sklearn") for c in TextClassifier.__mro__)
rows = make_rows(120, seed=1)
texts, labels = [t for _, t in rows], [{{"pos": 2, "neg": 10}}[l] for l, _ in rows]
clf = TextClassifier(**{FAST!r})
assert repr(clf.set_params(epochs=3)) == "TextClassifier(embed_dim=8, epochs=3, ngram_buckets=256, tokenizer='whitespace')"
try:
    clf.predict(texts)
except ValueError as err:
    assert "not fitted" in str(err) and isinstance(err, AttributeError)
assert clf.fit(texts, labels) is clf and clf.get_params()["epochs"] == 3
assert clf.classes_.tolist() == [2, 10] and clf.predict(texts[:4]).dtype.kind == "i" and clf.score(texts, labels) > 0.9
print("ok")
"""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, cwd=tmp_path, timeout=300)
    assert result.returncode == 0 and result.stdout.strip() == "ok", result.stderr[-3000:]
