"""``textpipe predict`` and ``evaluate`` on a multi-label bundle (issue 33, item 3): label sets in json, csv and
text, ``-k`` and ``--threshold``, per-label explanations, evaluate's scores; a single-label bundle refuses the
multi-label flags; the training summary and epoch lines in micro-F1."""

import csv
import io
import json
import shutil
from contextlib import redirect_stdout

from conftest import cli_here
from textpipe.bundle.predict import Predictor
from textpipe.cli.train import report_training
from textpipe.core.train import epoch_line

TEXTS = ["pasta and guitar song", "", "the goal of the match"]


def predict(model, tmp_path, *flags):
    texts = tmp_path / "texts.txt"
    texts.write_text("\n".join(TEXTS) + "\n")
    result = cli_here("predict", "--model", model, "--input", texts, "--quiet", *flags)
    assert result.returncode == 0, result.stderr
    return result.stdout


def test_json_lines_hold_each_texts_label_set_and_every_labels_probability(tiny_multilabel, tmp_path):
    model = tiny_multilabel[0]
    lines = [json.loads(line) for line in predict(model, tmp_path).splitlines()]
    expected = Predictor.load(model).predict([TEXTS[0], TEXTS[2]])
    assert [lines[0], lines[2]] == [{**e} for e in expected]
    assert lines[0]["labels"] == ["music", "food"] and len(lines[0]["probs"]) == 3
    assert lines[1] == {"text": "", "labels": None, "probs": {}}  # a blank line: no text, no set (an empty set is an answer)


def test_text_and_csv_show_the_set(tiny_multilabel, tmp_path):
    model = tiny_multilabel[0]
    text = predict(model, tmp_path, "--format", "text").splitlines()
    assert text[0].startswith("music (1.000), food (") and text[0].endswith("\tpasta and guitar song") and text[1] == "\t"
    rows = list(csv.reader(io.StringIO(predict(model, tmp_path, "--format", "csv"))))
    assert rows[0] == ["text", "labels", "p_food", "p_music", "p_sport"]
    assert rows[1][:2] == ["pasta and guitar song", "music|food"] and float(rows[1][3]) > 0.9 and rows[2] == [""] * 5


def test_top_k_and_one_threshold_for_every_label(tiny_multilabel, tmp_path):
    model = tiny_multilabel[0]
    top_one = [json.loads(line) for line in predict(model, tmp_path, "-k", "1").splitlines()]
    assert top_one[0]["labels"] == ["music"] and len(top_one[0]["probs"]) == 3
    everything = [json.loads(line) for line in predict(model, tmp_path, "--threshold", "0").splitlines()]
    assert [r["labels"] and len(r["labels"]) for r in everything] == [3, None, 3]
    strict = [json.loads(line) for line in predict(model, tmp_path, "--threshold", "0.999999").splitlines()]
    assert [r["labels"] for r in strict] == [[label for label, p in r["probs"].items() if p >= 0.999999] if r["labels"] is not None else None
                                             for r in strict]
    shown = predict(model, tmp_path, "--threshold", "0.999999", "--format", "text").splitlines()
    assert [line.split("\t")[0] == "(none)" for line in shown] == [r["labels"] == [] for r in strict]  # the empty set, as text shows it


def test_explain_gives_one_explanation_per_label_of_the_set(tiny_multilabel, tmp_path):
    model = tiny_multilabel[0]
    first = json.loads(predict(model, tmp_path, "--explain").splitlines()[0])
    assert list(first["explanations"]) == first["labels"] == ["music", "food"]
    assert first["explanations"]["food"]["top"][0] == {"feature": "pasta", "kind": "token", "weight": first["explanations"]["food"]["top"][0]["weight"]}
    text = predict(model, tmp_path, "--explain", "--format", "text").splitlines()
    assert text[1].startswith("  why (exact, toward music): ") and text[2].startswith("  why (exact, toward food): pasta (+")


def test_evaluate_scores_label_sets(tiny_multilabel, tmp_path):
    model, test = tiny_multilabel
    result = cli_here("evaluate", "--model", model, "--data", test, "--out", tmp_path / "eval")
    assert result.returncode == 0, result.stderr
    scores = json.loads(result.stdout.splitlines()[0])
    assert {"micro_f1", "macro_f1", "subset_accuracy", "hamming_loss"} <= set(scores) and scores["n"] == 48
    assert f"micro-F1 {scores['micro_f1']:.4f}  macro-F1 {scores['macro_f1']:.4f}  subset accuracy" in result.stderr
    assert "each label at its own threshold" in result.stderr
    at_zero = cli_here("evaluate", "--model", model, "--data", test, "--out", tmp_path / "zero", "--threshold", "0", "--multi-label")
    assert at_zero.returncode == 0 and "every label at 0" in at_zero.stderr
    assert json.loads(at_zero.stdout)["micro_recall"] == 1.0  # every label predicted for every row
    summary = json.loads((tmp_path / "zero" / "metrics.json").read_text())
    assert set(summary["multi_label"]["thresholds"].values()) == {0.0}


def test_a_single_label_bundle_refuses_the_multi_label_flags(tiny_multilabel, tmp_path):
    single = shutil.copytree(tiny_multilabel[0], tmp_path / "single")
    config = json.loads((single / "config.json").read_text())
    config["data"]["source"]["label_sep"] = None  # how the bundle's files were read: one label a row
    (single / "config.json").write_text(json.dumps(config))
    for command in (["predict", "--model", single, "a text", "--multi-label"],
                    ["evaluate", "--model", single, "--data", tiny_multilabel[1], "--label-sep", ";", "--multi-label"]):
        result = cli_here(*command)
        assert result.returncode == 2 and "is a single-label model: --multi-label and --label-sep are for a model trained with --multi-label" in result.stderr
    assert cli_here("predict", "--model", single, "a text", "--label-sep", ";").returncode == 2  # --label-sep alone: refused too


def test_the_training_summary_and_epoch_lines_give_micro_f1(tmp_path):
    out = io.StringIO()
    overall = {"accuracy": 0.5, "micro_f1": 0.8123, "macro_f1": 0.7, "subset_accuracy": 0.5, "hamming_loss": 0.1, "n": 40}
    with redirect_stdout(out):
        report_training({"overall": overall, "best_epoch": 3, "test": True}, tmp_path)
    assert out.getvalue().splitlines()[0] == "test micro-F1 0.8123  macro-F1 0.7000  subset accuracy 0.5000  (n=40, best epoch 3)"
    record = {"epoch": 2, "train_loss": 0.3, "train_accuracy": 0.4, "dev_accuracy": 0.5, "dev_macro_f1": 0.6, "dev_loss": 0.2, "dev_micro_f1": 0.7}
    assert "dev acc 0.5000 micro-f1 0.7000 macro-f1 0.6000 loss 0.2000 *" in epoch_line(record, True)
    del record["dev_micro_f1"]
    assert "dev acc 0.5000 f1 0.6000 loss 0.2000" in epoch_line(record, False)  # one label a text: as before


def test_text_shows_the_empty_set_as_none():
    from textpipe.cli.predict import set_text_line

    assert set_text_line({"text": "a film", "labels": [], "probs": {"a": 0.2, "b": 0.1}}) == "(none)\ta film\n"
    assert set_text_line({"text": "a film", "labels": ["b", "a"], "probs": {"b": 0.9, "a": 0.6}}) == "b (0.900), a (0.600)\ta film\n"
    assert set_text_line({"text": "", "labels": None, "probs": {}}) == "\t\n"


def test_info_shows_the_thresholds_and_the_multi_label_scores(tiny_multilabel):
    model = tiny_multilabel[0]
    text = cli_here("info", model)
    assert text.returncode == 0, text.stderr
    thresholds = json.loads((model / "bundle.json").read_text())["multi_label"]["thresholds"]
    assert f"multi-label thresholds food {thresholds[0]:.3f}, music {thresholds[1]:.3f}, sport {thresholds[2]:.3f}" in text.stdout
    assert "test        micro-F1 " in text.stdout and "subset accuracy" in text.stdout
    info = json.loads(cli_here("info", model, "--json").stdout)
    assert info["multi_label"] == {"label_sep": "|", "thresholds": thresholds}
