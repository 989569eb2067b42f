"""Calibrated probabilities and the decision rule: the temperature, ECE and Brier, the mix chosen by log loss,
a model that did not learn, predict --threshold, evaluate's coverage, and a small file of a user's own."""

import csv
import json
import logging
import random

import pytest
import torch

from conftest import cli_here, write_csv
from textpipe.bundle.store import META, BundleError, fields_digest, load_bundle
from textpipe.core.calibration import (
    T_RANGE, at_threshold, brier_score, chance, coverage_curve, did_not_learn, expected_calibration_error, fit_temperature,
)
from textpipe.core.collate import pad_collate
from textpipe.run.config import PipelineConfig
from textpipe.core.metrics import predict_logits
from textpipe.core.models import ModelConfig, build_model
from textpipe.core.nb_linear import fit_nb_linear
from textpipe.bundle.predict import Predictor
from textpipe.run.phases import train_files

# A user's own small file: three invented classes, each told by a few made-up words among common ones.
CLASSES = {"zorbl": "glimmer quosh fennit brask", "plonk": "drovy mizzle tarvo skent", "quibber": "vantle hoskin prell dwimmer"}
COMMON = "the a it was and of to in on with we they some more".split()


def user_rows(n: int, seed: int) -> list[tuple[str, str]]:
    rng, names = random.Random(seed), sorted(CLASSES)
    rows = []
    for i in range(n):
        label = names[i % 3]
        words = rng.choices(CLASSES[label].split(), k=rng.randint(1, 3)) + rng.choices(COMMON, k=rng.randint(3, 9))
        rng.shuffle(words)
        rows.append((label, " ".join(words)))
    return rows


@pytest.fixture(scope="module")
def small_run(tmp_path_factory):
    """The 240-row, 3-class file trained at the default settings (held-out rows, then the refit), scored on 90 more."""
    folder = tmp_path_factory.mktemp("small-file")
    train, test = write_csv(folder / "train.csv", user_rows(240, 1)), write_csv(folder / "test.csv", user_rows(90, 2))
    metrics = train_files(train, test, folder / "run", config=PipelineConfig(), quiet=True)
    return {"out": folder / "run", "test": test, "metrics": metrics, "rows": user_rows(90, 2)}


def test_ece_is_the_hand_computation():
    probs = torch.tensor([[0.95, 0.05], [0.9, 0.1], [0.4, 0.6], [0.3, 0.7], [0.5, 0.5]])
    gold = torch.tensor([0, 1, 1, 0, 0])
    # Bins of width 1/15: 0.95 is in (0.9333, 1], 0.9 in (0.8667, 0.9333], 0.6 in (0.5333, 0.6], 0.7 in (0.6667, 0.7333],
    # 0.5 in (0.4667, 0.5333]: one row a bin, each weighing 1/5, its gap |confidence - accuracy|.
    expected = (abs(0.95 - 1) + abs(0.9 - 0) + abs(0.6 - 1) + abs(0.7 - 0) + abs(0.5 - 1)) / 5
    assert expected_calibration_error(probs, gold) == pytest.approx(expected)
    two_in_a_bin = torch.tensor([[0.9, 0.1], [0.92, 0.08]])  # one bin: |0.91 - 0.5| x 1
    assert expected_calibration_error(two_in_a_bin, torch.tensor([0, 1])) == pytest.approx(0.41)


def test_brier_is_scikit_learns_sum_over_classes():
    metrics = pytest.importorskip("sklearn.metrics")
    g = torch.Generator().manual_seed(0)
    for classes in (2, 3, 6):
        probs = torch.rand(50, classes, generator=g).double().softmax(1)
        gold = torch.randint(0, classes, (50,), generator=g)
        theirs = metrics.brier_score_loss(gold.numpy(), probs.numpy(), labels=list(range(classes)), scale_by_half=False)
        assert brier_score(probs, gold) == pytest.approx(theirs)


def test_the_temperature_that_made_the_labels_is_found_and_kept_in_range():
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(4000, 3, generator=g).double() * 3
    gold = torch.multinomial((logits / 2.0).softmax(1), 1, generator=g).flatten()  # labels drawn at temperature 2
    assert fit_temperature(logits, gold) == pytest.approx(2.0, rel=0.1)
    separable = torch.tensor([[5.0, -5.0], [-5.0, 5.0]])  # the loss falls as T shrinks: sharper, never out of range
    assert T_RANGE[0] <= fit_temperature(separable, torch.tensor([0, 1])) < 1
    noise = torch.randn(400, 2, generator=g) * 50  # labels that have nothing to do with the scores: as flat as allowed
    assert fit_temperature(noise, torch.randint(0, 2, (400,), generator=g)) == pytest.approx(T_RANGE[1])
    assert fit_temperature(torch.empty(0, 2), torch.empty(0, dtype=torch.long)) == 1.0


def test_coverage_and_accuracy_at_a_threshold():
    probs = torch.tensor([[0.9, 0.1], [0.2, 0.8], [0.55, 0.45], [0.4, 0.6]])
    gold = torch.tensor([0, 0, 0, 1])
    assert at_threshold(probs, gold, 0.7) == {"threshold": 0.7, "coverage": 0.5, "accuracy": 0.5, "n": 2}
    assert at_threshold(probs, gold, 0.0)["accuracy"] == 0.75
    assert at_threshold(probs, gold, 0.95) == {"threshold": 0.95, "coverage": 0.0, "accuracy": None, "n": 0}
    curve = coverage_curve(probs, gold)
    assert [p["coverage"] for p in curve] == sorted((p["coverage"] for p in curve), reverse=True) and curve[0]["coverage"] == 1.0


def test_no_better_than_the_most_common_label_did_not_learn():
    gold = torch.tensor([0, 0, 0, 1])
    assert chance(gold, 2) == 0.75
    assert did_not_learn(torch.tensor([[0.6, 0.4]] * 4), gold)  # always the most common label: not learned
    assert not did_not_learn(torch.tensor([[0.6, 0.4]] * 3 + [[0.1, 0.9]]), gold)


def toy_batches(rows: int, seed: int):
    g = torch.Generator().manual_seed(seed)
    examples = []
    for _ in range(rows):
        label = int(torch.randint(0, 3, (1,), generator=g))
        examples.append((torch.cat([torch.tensor([10 + label]), torch.randint(20, 80, (6,), generator=g)]), label))
    return [pad_collate(examples[i : i + 32]) for i in range(0, rows, 32)]


def test_the_mix_is_chosen_by_calibrated_dev_log_loss_and_a_bag_at_chance_is_left_out(caplog):
    torch.manual_seed(0)
    model = build_model(ModelConfig(vocab_size=100, num_classes=3, ngram_buckets=256))
    record = fit_nb_linear(model, toy_batches(400, 1), toy_batches(120, 2))
    losses = {float(a): v for a, v in record["dev"]["log_loss_by_alpha"].items()}
    assert losses[record["alpha"]] == min(losses.values())
    with torch.no_grad():  # a bag that learned nothing: every text gets the same probabilities
        model.head.weight.zero_()
        model.head.bias.zero_()
    record = fit_nb_linear(model, toy_batches(400, 1), toy_batches(120, 2))
    assert record["dev"]["bag_learned"] is False and record["alpha"] == 0.0
    assert record["dev"]["bag"] <= record["dev"]["chance"]


def test_a_small_file_of_a_users_own_trains_to_confident_correct_predictions(small_run):
    predictor = Predictor.load(small_run["out"], sentence_cache=None)
    probs = predictor.probabilities([text for _, text in small_run["rows"]])
    gold = torch.tensor([predictor.labels.index(label) for label, _ in small_run["rows"]])
    confidence, predicted = probs.max(1)
    correct = predicted == gold
    assert correct.double().mean() >= 0.95
    assert confidence[correct].mean() >= 0.8  # was 0.40: a bag left at chance, mixed in at 0.9
    test = small_run["metrics"]["test"]
    assert 0 <= test["ece"] <= 1 and 0 <= test["brier"] <= 2


def test_the_temperature_is_recorded_in_the_bundle_and_applied_everywhere(small_run):
    from textpipe.estimator import TextClassifier

    out, metrics = small_run["out"], small_run["metrics"]
    bundle = load_bundle(out)
    meta = json.loads((out / META).read_text())
    assert meta["temperature"] == metrics["calibration"]["temperature"] == bundle.temperature != 1.0
    assert "temperature" in meta["files"][META]["fields"]
    texts = [text for _, text in small_run["rows"][:10]]
    predictor = Predictor(bundle, sentence_cache=None)
    raw, _ = predict_logits(bundle.model, predictor.batches(texts, 4), torch.device("cpu"))
    expected = (predictor.batches(texts, 4).sampler.restore(raw) / bundle.temperature).softmax(1)
    assert torch.allclose(predictor.probabilities(texts), expected, atol=1e-6)
    proba = TextClassifier.load(out).predict_proba(texts)
    assert torch.allclose(torch.from_numpy(proba).double(), expected.double(), atol=1e-5)
    [explanation] = predictor.explain(texts[:1])
    assert torch.allclose(explanation.logits.softmax(0), expected[0], atol=1e-5)


def test_metrics_and_the_report_give_ece_brier_and_the_curves(small_run):
    out, metrics = small_run["out"], small_run["metrics"]
    saved = json.loads((out / "metrics.json").read_text())
    assert saved["test"]["ece"] == saved["calibration"]["ece"] and "brier" in saved["test"]
    assert saved["calibration"]["dev"]["learned"] is True and saved["calibration"]["bins"] == 15
    report = (out / "report.md").read_text()
    assert "## Calibration" in report and "reliability.png" in report and "coverage.png" in report
    assert (out / "reliability.png").stat().st_size > 0 and (out / "coverage.png").stat().st_size > 0
    assert "temperature" in report


def test_a_temperature_out_of_range_is_refused_naming_the_field(small_run, tmp_path):
    import shutil

    copy = tmp_path / "bundle"
    shutil.copytree(small_run["out"], copy)
    meta = json.loads((copy / META).read_text())
    meta["temperature"] = 2.5
    (copy / META).write_text(json.dumps(meta))
    with pytest.raises(BundleError, match="altered"):  # the temperature changes predictions: it is in the manifest's digest
        load_bundle(copy)
    for bad in (0.0, -1.0, "1", True, 1e9):
        meta["temperature"] = bad
        meta["files"][META]["sha256"] = fields_digest(meta)
        (copy / META).write_text(json.dumps(meta))
        with pytest.raises(BundleError, match="field temperature"):
            load_bundle(copy)
    del meta["temperature"]  # a bundle from before: uncalibrated, temperature 1
    meta["files"][META] = {"fields": ["model", "tokenizer", "labels"], "sha256": fields_digest(meta)}
    (copy / META).write_text(json.dumps(meta))
    assert load_bundle(copy).temperature == 1.0


def test_predict_threshold_abstains_below_it(small_run):
    out = small_run["out"]
    texts = ["glimmer quosh the a", "the a it was and"]  # a telling text, and one of common words only
    plain = [json.loads(line) for line in cli_here("predict", "--model", out, *texts).stdout.splitlines()]
    tops = [max(row["probs"].values()) for row in plain]
    threshold = (tops[0] + tops[1]) / 2 if tops[0] != tops[1] else tops[0]
    low, high = sorted(range(2), key=lambda i: tops[i])
    rows = [json.loads(line) for line in cli_here("predict", "--model", out, *texts, "--threshold", threshold).stdout.splitlines()]
    assert rows[low]["label"] is None and rows[low]["abstained"] is True and rows[low]["probs"] == plain[low]["probs"]
    assert rows[high]["label"] == plain[high]["label"] and rows[high]["abstained"] is False
    text = cli_here("predict", "--model", out, *texts, "--threshold", threshold, "--format", "text").stdout.splitlines()
    assert text[low].startswith("null (best: ") and text[high].startswith(plain[high]["label"])
    table = list(csv.reader(cli_here("predict", "--model", out, *texts, "--threshold", threshold, "--format", "csv").stdout.splitlines()))
    assert table[1 + low][1] == "" and table[1 + high][1] == plain[high]["label"]
    bad = cli_here("predict", "--model", out, "x", "--threshold", "1.5")
    assert bad.returncode == 2 and "--threshold" in bad.stderr


def test_evaluate_reports_coverage_and_accuracy_at_the_threshold(small_run, tmp_path):
    out = small_run["out"]
    everything = cli_here("evaluate", "--model", out, "--data", small_run["test"], "--out", tmp_path / "a", "--threshold", "0", "--quiet")
    result = json.loads(everything.stdout)
    assert result["at_threshold"]["coverage"] == 1.0 and result["at_threshold"]["accuracy"] == result["accuracy"]
    assert result["ece"] == json.loads((tmp_path / "a" / "metrics.json").read_text())["overall"]["ece"]
    nothing = json.loads(cli_here("evaluate", "--model", out, "--data", small_run["test"], "--out", tmp_path / "b", "--threshold", "1",
                                  "--quiet").stdout)
    assert nothing["at_threshold"]["coverage"] <= 1.0
    assert "| 1.00 |" in (tmp_path / "b" / "report.md").read_text()  # the threshold asked for joins the report's table


def test_a_model_that_did_not_learn_says_so_in_the_output_and_the_report(tmp_path, caplog):
    rows = [(("ham", "eggs", "spam")[i % 3], "the very same words") for i in range(90)]  # nothing tells the labels apart
    train, test = write_csv(tmp_path / "train.csv", rows), write_csv(tmp_path / "test.csv", rows[:30])
    with caplog.at_level(logging.WARNING, logger="textpipe"):
        metrics = train_files(train, test, tmp_path / "run", config=PipelineConfig(), quiet=True)
    assert metrics["calibration"]["dev"]["learned"] is False and metrics["nb_linear"]["dev"]["bag_learned"] is False
    assert any("did not learn" in record.getMessage() for record in caplog.records)
    assert "did not learn" in (tmp_path / "run" / "report.md").read_text()
