"""textpipe.core.multilabel: packed label sets, per-label thresholds, decisions, the scores against scikit-learn's."""

import math
import random

import pytest
import torch

from textpipe.core.multilabel import (bce_log_loss, choose_thresholds, decide, fit_temperature_multilabel, multi_hot,
                                      multilabel_report, pack_label_set, unpack_label_set, words_per_row)


def test_words_per_row_is_63_labels_a_word():
    assert [words_per_row(n) for n in (1, 63, 64, 126, 127, 130)] == [1, 1, 2, 2, 3, 3]
    with pytest.raises(ValueError):
        words_per_row(0)


def test_pack_and_unpack_round_trip_across_word_boundaries():
    indices = [129, 0, 62, 63, 125, 126]
    words = pack_label_set(indices, 130)
    assert len(words) == 3 and all(0 <= w < 2**63 for w in words)
    assert words[0] == 1 | 1 << 62 and words[1] == 1 | 1 << 62 and words[2] == 1 | 1 << 3
    assert unpack_label_set(words, 130) == sorted(indices)
    assert unpack_label_set(torch.tensor(words), 130) == sorted(indices)
    assert unpack_label_set(pack_label_set([], 130), 130) == []


@pytest.mark.parametrize("bad", [-1, 130, 1.0, True])
def test_pack_refuses_an_index_out_of_range(bad):
    with pytest.raises(ValueError, match="label index"):
        pack_label_set([0, bad], 130)


def test_multi_hot_matches_a_python_reference_on_random_sets():
    rng = random.Random(0)
    for n_labels in (1, 5, 63, 64, 130, 200):
        sets = [rng.sample(range(n_labels), rng.randint(0, min(n_labels, 8))) for _ in range(40)]
        words = torch.tensor([pack_label_set(s, n_labels) for s in sets])
        expected = torch.zeros(len(sets), n_labels)
        for row, labels in enumerate(sets):
            expected[row, labels] = 1.0
        got = multi_hot(words, n_labels)
        assert got.dtype == torch.float32 and torch.equal(got, expected)
        assert [unpack_label_set(w, n_labels) for w in words] == [sorted(s) for s in sets]


def test_multi_hot_takes_a_flat_tensor_when_one_word_and_refuses_a_wrong_width():
    assert torch.equal(multi_hot(torch.tensor([5, 0]), 3), torch.tensor([[1.0, 0.0, 1.0], [0.0, 0.0, 0.0]]))
    with pytest.raises(ValueError, match="expected"):
        multi_hot(torch.zeros(2, 1, dtype=torch.long), 64)
    with pytest.raises(ValueError, match="expected"):
        multi_hot(torch.zeros(2, dtype=torch.long), 64)


def test_a_separable_label_gets_a_threshold_between_its_classes():
    negatives, positives = [0.05, 0.1, 0.2, 0.25, 0.3, 0.32], [0.7, 0.75, 0.8, 0.9, 0.95, 0.99]
    probs = torch.tensor(negatives + positives).unsqueeze(1)
    targets = torch.tensor([0] * 6 + [1] * 6).unsqueeze(1)
    assert 0.32 < float(choose_thresholds(probs, targets)[0]) < 0.7
    shifted = (probs - 0.25).clamp_min(0.001)  # the classes meet at 0.07..0.45: the best cut is no longer 0.5
    threshold = float(choose_thresholds(shifted, targets)[0])
    assert 0.07 < threshold < 0.45 and threshold != 0.5
    assert [len(row) for row in decide(shifted, threshold)] == targets.squeeze(1).tolist()


def test_a_rare_label_keeps_one_half_and_the_threshold_is_clamped():
    probs = torch.tensor([[0.9, 0.06]] * 3 + [[0.1, 0.01]] * 17)
    targets = torch.tensor([[1, 1]] * 3 + [[0, 0]] * 17)
    assert choose_thresholds(probs, targets).tolist() == [0.5, 0.5]  # 3 positives < 5
    chosen = choose_thresholds(probs, targets, min_positives=3)
    assert chosen[0] == 0.5 and chosen[1] == 0.05  # label 1's best cut (0.035) is below the range


def test_threshold_ties_go_to_the_candidate_closest_to_one_half():
    # positives at 0.2 and 0.8, negatives at 0.4 and 0.6, three times: row order must not matter
    probs = torch.tensor([0.2, 0.4, 0.6, 0.8] * 3).unsqueeze(1)
    targets = torch.tensor([1, 0, 0, 1] * 3).unsqueeze(1)
    first = choose_thresholds(probs, targets)
    assert all(torch.equal(first, choose_thresholds(probs[perm], targets[perm]))
               for perm in (torch.randperm(12, generator=torch.Generator().manual_seed(s)) for s in range(5)))
    # cuts 0.2 (all yes: F1 2*6/(12+6)=0.667) and 0.7 (0.8 only: F1 2*3/(3+6)=0.667) tie; 0.7 is the closer to 0.5
    assert float(first[0]) == pytest.approx(0.7)


def test_threshold_ties_equally_far_from_one_half_take_the_lower():
    # 4 positives at 0.625, 3 negatives at 0.5625, 2 positives at 0.4375, 1 negative at 0.375 (exact in binary):
    # the cuts 0.40625 (F1 12/15) and 0.59375 (F1 8/10) tie, equally far from 0.5 (whose F1 is 8/13)
    probs = torch.tensor([0.625] * 4 + [0.5625] * 3 + [0.4375] * 2 + [0.375], dtype=torch.float64).unsqueeze(1)
    targets = torch.tensor([1] * 4 + [0] * 3 + [1] * 2 + [0]).unsqueeze(1)
    assert float(choose_thresholds(probs, targets)[0]) == 0.40625


def test_decide_applies_thresholds_orders_by_probability_and_keeps_top_k():
    probs = torch.tensor([[0.2, 0.9, 0.6, 0.7], [0.1, 0.2, 0.3, 0.4], [0.5, 0.5, 0.5, 0.99]])
    assert decide(probs, 0.5) == [[1, 3, 2], [], [3, 0, 1, 2]]
    assert decide(probs, 0.5, top_k=2) == [[1, 3], [], [3, 0]]
    assert decide(probs, torch.tensor([0.1, 0.95, 0.5, 0.5]), top_k=None) == [[3, 2, 0], [0], [3, 0, 2]]
    assert decide(probs, 0.0, top_k=1) == [[1], [3], [3]]
    with pytest.raises(ValueError):
        decide(probs, 0.5, top_k=0)
    with pytest.raises(ValueError):
        decide(probs, torch.tensor([0.5, 0.5]))


def random_predictions(seed: int, rows: int = 60, labels: int = 7):
    generator = torch.Generator().manual_seed(seed)
    targets = torch.rand(rows, labels, generator=generator) < 0.3
    predicted = torch.rand(rows, labels, generator=generator) < 0.3
    predicted[:, 0] = False  # a label never predicted: precision 0/0
    targets[:, 1] = False  # a label never true: recall 0/0
    predicted[:, 2] = targets[:, 2] = False  # a label never seen at all: F1 0/0
    predicted[: rows // 2, 3:] = targets[: rows // 2, 3:]  # some rows right in full: a non-zero subset accuracy
    return predicted, targets


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_report_equals_scikit_learns_scores(seed):
    metrics = pytest.importorskip("sklearn.metrics")
    predicted, targets = random_predictions(seed)
    names = [f"l{j}" for j in range(predicted.shape[1])]
    report = multilabel_report(predicted, targets, names)
    y_true, y_pred = targets.int().numpy(), predicted.int().numpy()
    for average in ("micro", "macro"):
        for key, score in (("precision", metrics.precision_score), ("recall", metrics.recall_score), ("f1", metrics.f1_score)):
            assert report[average][key] == pytest.approx(score(y_true, y_pred, average=average, zero_division=0), abs=1e-6)
    for key, score in (("precision", metrics.precision_score), ("recall", metrics.recall_score), ("f1", metrics.f1_score)):
        per_label = score(y_true, y_pred, average=None, zero_division=0)
        assert [report["per_label"][n][key] for n in names] == pytest.approx(list(per_label), abs=1e-6)
    assert [report["per_label"][n]["support"] for n in names] == y_true.sum(0).tolist()
    assert report["subset_accuracy"] == pytest.approx(metrics.accuracy_score(y_true, y_pred), abs=1e-6)
    assert report["hamming_loss"] == pytest.approx(metrics.hamming_loss(y_true, y_pred), abs=1e-6)
    assert report["rows"] == 60 and 0 < report["subset_accuracy"] < 1


def test_report_is_plain_json_and_handles_no_rows():
    import json

    predicted, targets = random_predictions(0)
    report = multilabel_report(predicted, targets, [f"l{j}" for j in range(7)])
    assert json.loads(json.dumps(report)) == report
    empty = multilabel_report(torch.zeros(0, 2, dtype=torch.bool), torch.zeros(0, 2, dtype=torch.bool), ["a", "b"])
    assert empty["rows"] == 0 and empty["micro"]["f1"] == 0.0 and empty["hamming_loss"] == 0.0
    with pytest.raises(ValueError):
        multilabel_report(predicted, targets, ["too", "few"])


def test_bce_log_loss_is_the_mean_over_cells():
    logits, targets = torch.tensor([[2.0, -1.0], [0.0, 3.0]]), torch.tensor([[1.0, 0.0], [1.0, 0.0]])
    expected = -sum(math.log(1 / (1 + math.exp(-z))) for z in (2.0, 1.0, 0.0, -3.0)) / 4  # log sigmoid of the gold side
    assert bce_log_loss(logits, targets) == pytest.approx(expected, abs=1e-9)
    assert bce_log_loss(torch.zeros(0, 3), torch.zeros(0, 3)) == 0.0


def test_temperature_cools_overconfident_sigmoids():
    generator = torch.Generator().manual_seed(0)
    targets = (torch.rand(400, 4, generator=generator) < 0.4).double()
    honest = (targets * 2 - 1) * 1.0 + torch.randn(400, 4, generator=generator, dtype=torch.float64)
    overconfident = honest * 6
    temperature = fit_temperature_multilabel(overconfident, targets)
    assert temperature > 2
    assert bce_log_loss(overconfident / temperature, targets) < bce_log_loss(overconfident, targets) - 0.1
    assert fit_temperature_multilabel(torch.zeros(0, 4), torch.zeros(0, 4)) == 1.0


def test_temperature_works_on_inference_tensors():
    with torch.inference_mode():
        logits, targets = torch.randn(50, 3) * 5, (torch.rand(50, 3) < 0.5).float()
    assert 0.05 <= fit_temperature_multilabel(logits, targets) <= 20.0


def test_each_sigmoid_starts_at_its_labels_rate():
    from textpipe.core.multilabel import prior_log_odds, start_at_label_rates

    head = torch.nn.Linear(4, 3)
    start_at_label_rates(head, [10, 50, 0], 100)
    rates = torch.sigmoid(head.bias.detach().double())
    assert torch.allclose(rates, torch.tensor([10.5, 50.5, 0.5], dtype=torch.float64) / 101, atol=1e-6)  # a label no row holds: just above 0, finite
    assert torch.equal(prior_log_odds([10, 50, 0], 100), head.bias.detach())
