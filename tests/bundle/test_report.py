"""The report's numbers, tables, plots and mistakes, on logits made by hand."""

import csv

import pytest
import torch

from conftest import png_size
from textpipe.core.metrics import confusion_matrix, evaluate, per_class_metrics
from textpipe.bundle.report import (
    CONFUSION_PNG, COVERAGE_PNG, CURVES_PNG, MISCLASSIFIED, PNG_SIZE, RELIABILITY_PNG, REPORT, misclassified, summarize, write_report,
)

LABELS = ["neg", "neutral", "pos"]
GOLD = torch.tensor([0, 0, 0, 1, 1, 2])
PREDICTED = torch.tensor([0, 0, 1, 1, 2, 2])
HISTORY = [
    {"epoch": e, "train_loss": 1 / e, "train_accuracy": 1 - 0.5 / e, "dev_loss": 1.2 / e, "dev_accuracy": 1 - 0.6 / e, "dev_macro_f1": 1 - 0.7 / e}
    for e in (1, 2, 3)
]


def logits_for(predicted: torch.Tensor, confidence: list[float]) -> torch.Tensor:
    """Logits whose softmax puts ``confidence`` on the predicted class and splits the rest evenly."""
    probs = torch.tensor([[(1 - c) / 2] * 3 for c in confidence])
    probs[torch.arange(len(predicted)), predicted] = torch.tensor(confidence)
    return probs.log()


def test_confusion_and_per_class_numbers_by_hand():
    confusion = confusion_matrix(PREDICTED, GOLD, 3)
    assert confusion.tolist() == [[2, 1, 0], [0, 1, 1], [0, 0, 1]]
    per_class = per_class_metrics(confusion, LABELS)
    assert per_class["neg"] == {"precision": 1.0, "recall": round(2 / 3, 6), "f1": 0.8, "support": 3}
    assert per_class["neutral"] == {"precision": 0.5, "recall": 0.5, "f1": 0.5, "support": 2}
    assert per_class["pos"] == {"precision": 0.5, "recall": 1.0, "f1": round(2 / 3, 6), "support": 1}


def test_a_class_never_predicted_gets_zeros_not_nan():
    per_class = per_class_metrics(confusion_matrix(torch.tensor([0, 0]), torch.tensor([0, 1]), 2), ["a", "b"])
    assert per_class["b"] == {"precision": 0.0, "recall": 0.0, "f1": 0.0, "support": 1}


def test_summary_overall_is_what_train_evaluate_reports():
    from textpipe.core.collate import Batch

    logits = logits_for(PREDICTED, [0.9, 0.6, 0.8, 0.7, 0.95, 0.5])

    class Fixed(torch.nn.Module):  # a "model" that returns the logits above, one batch of six
        def forward(self, ids, mask):
            return logits

    batch = Batch(torch.ones(6, 1, dtype=torch.long), torch.ones(6, dtype=torch.long), torch.ones(6, 1, dtype=torch.bool), GOLD)
    summary = summarize(logits, GOLD, LABELS)
    calibration = {"ece": summary["calibration"]["ece"], "brier": summary["calibration"]["brier"]}  # beside evaluate's numbers
    assert summary["overall"] == {**evaluate(Fixed(), [batch], 3), **calibration}
    assert summary["confusion"] == {"labels": LABELS, "matrix": [[2, 1, 0], [0, 1, 1], [0, 0, 1]]}


def test_mistakes_are_the_wrong_rows_most_confident_first():
    logits = logits_for(PREDICTED, [0.9, 0.6, 0.8, 0.7, 0.95, 0.5])
    texts = [f"text {i}" for i in range(6)]
    mistakes = misclassified(iter(texts), logits, GOLD, LABELS)
    assert [(m.text, m.gold, m.predicted) for m in mistakes] == [("text 4", "neutral", "pos"), ("text 2", "neg", "neutral")]
    assert [m.confidence for m in mistakes] == pytest.approx([0.95, 0.8], abs=1e-6)
    with pytest.raises(ValueError, match="do not line up"):
        misclassified(texts[:5], logits, GOLD, LABELS)


def test_write_report_files(tmp_path):
    labels = ["neg", "a|b", "pos"]  # a pipe in a label must not break the Markdown tables
    logits = logits_for(PREDICTED, [0.9, 0.6, 0.8, 0.7, 0.95, 0.5])
    summary = summarize(logits, GOLD, labels)
    mistakes = misclassified(["one", "two", "three, with a comma", 'four "quoted"', "five\nlines", "six"], logits, GOLD, labels)
    written = write_report(tmp_path, summary, mistakes, HISTORY, title="toy")
    assert sorted(p.name for p in written) == sorted([REPORT, MISCLASSIFIED, CONFUSION_PNG, CURVES_PNG, RELIABILITY_PNG, COVERAGE_PNG])
    for png in (CONFUSION_PNG, CURVES_PNG, RELIABILITY_PNG, COVERAGE_PNG):
        assert png_size(tmp_path / png) == PNG_SIZE
    with open(tmp_path / MISCLASSIFIED, encoding="utf-8", newline="") as f:
        rows = list(csv.DictReader(f))
    assert [r["text"] for r in rows] == ["five\nlines", "three, with a comma"]  # csv quoting keeps them whole
    assert [(r["gold"], r["predicted"]) for r in rows] == [("a|b", "pos"), ("neg", "a|b")]
    report = (tmp_path / REPORT).read_text()
    assert "| a\\|b | 0.5000 | 0.5000 | 0.5000 | 2 |" in report
    assert "| neg | 2 | 1 | 0 |" in report  # the confusion matrix's first row
    assert "2 of 6 rows are misclassified" in report and f"![learning curves]({CURVES_PNG})" in report
    assert not list(tmp_path.glob("*.tmp"))


def test_no_history_no_learning_curves(tmp_path):
    logits = logits_for(PREDICTED, [0.9] * 6)
    write_report(tmp_path, summarize(logits, GOLD, LABELS), misclassified(map(str, range(6)), logits, GOLD, LABELS))
    assert (tmp_path / CONFUSION_PNG).is_file() and not (tmp_path / CURVES_PNG).exists()
    assert "learning curves" not in (tmp_path / REPORT).read_text()


def test_import_textpipe_does_not_import_matplotlib():
    import subprocess
    import sys

    code = "import sys, textpipe.bundle.report, textpipe.run.pipeline, textpipe.cli; print('matplotlib' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_the_reports_name_data_files_relative_to_their_folder(tmp_path):
    from conftest import train_tiny
    from textpipe.run.pipeline import report_file

    run, test = train_tiny(tmp_path)
    report = (run / REPORT).read_text()
    assert "trained on `../train.csv`" in report and "test file ../test.csv" in report
    report_file(run, test, tmp_path / "eval")
    evaluated = (tmp_path / "eval" / REPORT).read_text()
    assert "The model in `../run` scored on `../test.csv`." in evaluated
    for text in (report, evaluated, (run / MISCLASSIFIED).read_text()):
        assert str(tmp_path) not in text  # no absolute path: the folder reads the same wherever it is copied
