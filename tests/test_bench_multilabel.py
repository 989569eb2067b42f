"""bench/multilabel_data.py builds a deterministic multi-label dataset; bench/accuracy_multilabel.py scores
the baselines on it and reports a textpipe that cannot train multi-label as not available."""

import csv
import json
import sys
from pathlib import Path

import pytest

from conftest import write_csv

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # bench/ is no package of textpipe's: import it from the clone
from bench import accuracy_multilabel as bench  # noqa: E402
from bench import multilabel_data  # noqa: E402

QUESTION_TYPES = ("DESC", "HUM", "NUM")


def write_sources(root: Path, sizes: dict[str, int]) -> Path:
    """trec6/, mr/ and subj/ with train.csv and test.csv of ``sizes[split]`` questions (more of the others);
    every text is a word of its label and a token naming its source, split, label and row: 'DESC trec6:train:DESC:3'."""
    for split, n in sizes.items():
        for name, labels, rows in (("trec6", QUESTION_TYPES, n), ("mr", ("positive", "negative"), 2 * n), ("subj", ("objective", "subjective"), 2 * n)):
            (root / name).mkdir(parents=True, exist_ok=True)
            write_csv(root / name / f"{split}.csv", [(labels[i % len(labels)], f"{labels[i % len(labels)]} {name}:{split}:{labels[i % len(labels)]}:{i}") for i in range(rows)])
    return root


def read_back(path: Path) -> list[tuple[list[str], str]]:
    with open(path, encoding="utf-8", newline="") as f:
        rows = list(csv.reader(f))
    assert rows[0] == ["label", "text"]
    return [([label for label in cell.split("|") if label], text) for cell, text in rows[1:]]


def parts(text: str) -> list[str]:
    """The source rows a text was made of: 'trec6:train:DESC:3', ..."""
    return [token for token in text.split() if ":" in token]


def source_label(part: str) -> str:
    """The label a source row of write_sources carries: 'trec6:train:DESC:3' -> 'q:DESC'."""
    name, _, label, _ = part.split(":")
    return {"trec6": "q:", "mr": "m:"}[name] + label


def test_the_dataset_is_deterministic_and_its_rows_carry_their_parts_labels(tmp_path):
    sources = write_sources(tmp_path / "src", {"train": 70, "test": 14})
    first = multilabel_data.build(sources, tmp_path / "a", seed=3)
    again = multilabel_data.build(sources, tmp_path / "b", seed=3)
    other = multilabel_data.build(sources, tmp_path / "c", seed=4)
    assert all(first[s].read_bytes() == again[s].read_bytes() for s in ("train", "test"))
    assert first["train"].read_bytes() != other["train"].read_bytes()
    for split, questions in (("train", 70), ("test", 14)):
        rows = read_back(first[split])
        assert len(rows) == round(questions / 0.7)
        used = [part for _, text in rows for part in parts(text)]
        assert all(part.split(":")[1] == split for part in used)  # train rows from the train files only
        assert len(used) == len(set(used))  # every source row used at most once
        assert sum(part.startswith("trec6:") for part in used) == questions  # every question used
        assert {len(labels) for labels, _ in rows} == {0, 1, 2}
        if split == "train":  # a question and a sentence, in either order
            assert {parts(text)[0].split(":")[0] for labels, text in rows if len(labels) == 2} == {"trec6", "mr"}
        for labels, text in rows:
            if not labels:
                assert [p.rsplit(":", 1)[0] for p in parts(text)] == [f"subj:{split}:objective"]
            else:
                assert sorted(labels) == sorted(source_label(p) for p in parts(text))


def test_a_split_with_too_few_sentences_is_refused(tmp_path):
    sources = write_sources(tmp_path / "src", {"train": 70, "test": 14})
    write_csv(sources / "mr" / "test.csv", [("positive", "one review .")])
    with pytest.raises(ValueError, match="m rows needed"):
        multilabel_data.build(sources, tmp_path / "out")


def test_scores_match_a_hand_count():
    got = bench.scores(["a", "b"], [["a"], []], [["a", "b"], []])
    # one true positive, one false positive: micro F1 2/3; b never true: its F1 0, macro 1/2
    assert got == {"micro_f1": 0.6667, "macro_f1": 0.5, "subset_accuracy": 0.5, "hamming_loss": 0.25}


def test_the_baselines_run_on_a_built_dataset(tmp_path):
    pytest.importorskip("sklearn", reason="the baselines need scikit-learn (pip install -e '.[bench]')")
    pytest.importorskip("fasttext", reason="the fastText baseline needs fasttext (pip install -e '.[bench]')")
    files = multilabel_data.build(write_sources(tmp_path / "src", {"train": 70, "test": 14}), tmp_path / "ml")
    data = bench.load(files)
    assert set(data["labels"]) == {"q:DESC", "q:HUM", "q:NUM", "m:positive", "m:negative"}
    rows = {**bench.run_tfidf_ovr(data), bench.FASTTEXT.format(epoch=5): bench.run_fasttext_ova(data, 5, tmp_path)}
    assert set(rows) == {bench.TFIDF, bench.TFIDF_TUNED, bench.FASTTEXT.format(epoch=5)}
    for row in rows.values():
        assert all(0 <= row[key] <= 1 for key in bench.METRICS)
    assert set(rows[bench.TFIDF_TUNED]["thresholds"]) == set(data["labels"])


def test_fasttext_gets_a_stand_in_label_for_an_empty_set():
    lines = bench.fasttext_lines([["q:HUM", "m:positive"], []], ["Who is it ?", "A plot."]).splitlines()
    assert lines == ["__label__q:HUM __label__m:positive who is it ?", f"__label__{bench.NONE_LABEL} a plot ."]


@pytest.mark.parametrize("metrics", [
    {"micro_f1": 0.7, "macro_f1": 0.6, "subset_accuracy": 0.5, "hamming_loss": 0.1},
    {"test": {"micro_f1": 0.7, "macro_f1": 0.6, "subset_accuracy": 0.5, "hamming_loss": 0.1}, "dev": {}},
])
def test_textpipe_scores_are_found_at_the_top_or_under_test(metrics):
    assert bench.textpipe_metrics(metrics) == {"micro_f1": 0.7, "macro_f1": 0.6, "subset_accuracy": 0.5, "hamming_loss": 0.1}


def test_textpipe_metrics_without_the_scores_is_none():
    assert bench.textpipe_metrics({"test": {"accuracy": 0.9}}) is None


def test_a_textpipe_that_cannot_train_multi_label_is_reported_not_available(tmp_path):
    refuse = [sys.executable, "-c", "import sys; sys.stderr.write('textpipe train: error: unrecognized arguments: --multi-label\\n'); sys.exit(2)"]
    row = bench.run_textpipe(refuse, tmp_path / "out")
    assert row == {"available": False, "reason": "textpipe train exited 2: textpipe train: error: unrecognized arguments: --multi-label"}
    assert "not available" in bench.markdown({"dataset": bench.dataset_summary(bench.load(multilabel_data.build(
        write_sources(tmp_path / "src", {"train": 7, "test": 7}), tmp_path / "ml"))), "results": {bench.TEXTPIPE: row}, "acceptance": {}})


def test_a_textpipe_run_is_read_from_its_metrics_json(tmp_path):
    out = tmp_path / "out"
    scores = {"micro_f1": 0.8, "macro_f1": 0.7, "subset_accuracy": 0.6, "hamming_loss": 0.05}
    write = f"import json, pathlib; p = pathlib.Path({str(out)!r}); p.mkdir(); (p / 'metrics.json').write_text(json.dumps({{'test': {scores!r}}}))"
    row = bench.run_textpipe([sys.executable, "-c", write], out)
    assert {key: row[key] for key in bench.METRICS} == scores and row["train_seconds"] >= 0
    assert bench.acceptance({bench.TFIDF: {"micro_f1": 0.75}, bench.TEXTPIPE: row}) == {
        "best_baseline_micro_f1": 0.75, "textpipe micro_f1 >= best baseline": True}
    json.dumps(row)
