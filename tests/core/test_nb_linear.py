"""The bag's NB-weighted linear path: its features, its L-BFGS fit, the mix, and a run that ships it."""

import json

import pytest
import torch

from textpipe.core.collate import pad_collate
from textpipe.core.models import ModelConfig, build_model
from textpipe.core.nb_choice import ALPHAS
from textpipe.core.nb_linear import NBLinear, Presence, fit_members, fit_nb_linear, log_count_ratios
from textpipe.bundle.predict import Predictor
from textpipe.run.phases import train_files


def test_a_feature_counts_once_per_text():
    ids, counts = NBLinear.present(torch.tensor([4, 2, 4, 4, 9, 2]), torch.tensor([4, 0, 2]))
    assert ids.tolist() == [2, 4, 2, 9] and counts.tolist() == [2, 0, 2]


def separable_data(num_classes: int, rows: int = 300, seed: int = 0) -> Presence:
    """Rows holding one telling feature of their class (ids 100 + class) among random noise ids."""
    g = torch.Generator().manual_seed(seed)
    labels = torch.randint(0, num_classes, (rows,), generator=g)
    texts = [torch.cat([torch.tensor([100 + int(y)]), torch.randint(2, 60, (5,), generator=g)]) for y in labels]
    ids, counts = NBLinear.present(torch.cat(texts), torch.tensor([len(t) for t in texts]))
    return Presence(ids, counts, labels)


@pytest.mark.parametrize("num_classes", [2, 4])
def test_the_fit_is_the_minimum_of_the_regularized_log_loss(num_classes):
    data = separable_data(num_classes)
    C = 3.0
    weights, bias = fit_members(data, num_classes, C)
    targets = [1] if num_classes == 2 else list(range(num_classes))
    ratios = log_count_ratios(data, targets, num_classes).T  # (features, members)
    # The objective written out with autograd, at w = weights / r: its gradient must vanish there.
    w = torch.where(ratios != 0, weights / ratios, torch.zeros_like(weights)).requires_grad_()
    b = bias.clone().requires_grad_()
    X = data.matrix().to_dense()
    t = (data.labels.unsqueeze(1) == torch.tensor(targets)).double()
    s = X @ (ratios * w) + b
    n = data.shape[0]
    loss = (torch.nn.functional.softplus(s) - t * s).mean(0).sum() + (w * w).sum() / (2 * C * n)
    loss.backward()
    assert w.grad.abs().max() < 1e-3 and b.grad.abs().max() < 1e-3


def test_the_telling_features_get_the_largest_weights():
    data = separable_data(2, rows=400)
    weights, _ = fit_members(data, 2, 10.0)
    column = {int(c): i for i, c in enumerate(data.columns)}
    assert weights[column[101], 0] > 1 > -1 > weights[column[100], 0]  # class 1's feature for, class 0's against
    noise = weights[[column[i] for i in range(2, 60) if i in column], 0]
    assert noise.abs().max() < weights[column[101], 0] / 3


def toy_batches(rows: int, seed: int, num_classes: int = 2):
    """Batches of (ids, label) where word 10 + label tells the label, among noise words 20..79."""
    g = torch.Generator().manual_seed(seed)
    examples = []
    for _ in range(rows):
        label = int(torch.randint(0, num_classes, (1,), generator=g))
        examples.append((torch.cat([torch.tensor([10 + label]), torch.randint(20, 80, (6,), generator=g)]), label))
    return [pad_collate(examples[i : i + 32]) for i in range(0, rows, 32)]


@pytest.mark.parametrize("num_classes", [2, 3])
def test_fit_nb_linear_chooses_C_and_alpha_on_dev_and_the_model_mixes(num_classes):
    torch.manual_seed(0)
    model = build_model(ModelConfig(vocab_size=100, num_classes=num_classes, ngram_buckets=256))
    train, dev = toy_batches(400, seed=1, num_classes=num_classes), toy_batches(120, seed=2, num_classes=num_classes)
    batch = dev[0]
    model.eval()
    bag_logits = model(batch.ids, batch.mask)
    record = fit_nb_linear(model, train, dev)
    assert record["alpha"] in ALPHAS and record["C"] in (1.0, 3.0, 10.0) and record["rows"] == 400
    assert record["alpha"] < 1  # an untrained bag is noise: the linear path carries the signal
    assert max(record["dev"]["mixed_by_alpha"].values()) == record["dev"]["mixed_by_alpha"][str(record["alpha"])] == 1.0
    mixed = model(batch.ids, batch.mask)
    assert torch.allclose(mixed.exp().sum(1), torch.ones(len(batch)), atol=1e-5)  # log-probabilities
    assert (mixed.argmax(1) == batch.labels).all()
    model.train()
    torch.manual_seed(1)
    training = model(batch.ids, batch.mask)
    model.eval()
    model.nb.alpha.fill_(1.0)
    assert torch.equal(model(batch.ids, batch.mask), bag_logits)  # alpha 1: the bag alone, bit for bit
    assert not torch.equal(training, mixed)  # training reads the bag's logits, never the mix


def test_given_C_and_alpha_the_fit_is_the_same_every_time():
    tables = []
    for _ in range(2):
        torch.manual_seed(0)
        model = build_model(ModelConfig(vocab_size=100, num_classes=2, ngram_buckets=256))
        fit_nb_linear(model, toy_batches(200, seed=3), C=3.0, alpha=0.4)
        tables.append(model.nb.table.clone())
        assert float(model.nb.alpha) == pytest.approx(0.4)
    assert torch.equal(*tables) and tables[0].abs().sum() > 0


def test_past_max_rows_the_bag_is_left_alone():
    model = build_model(ModelConfig(vocab_size=100, num_classes=2, ngram_buckets=256))
    assert fit_nb_linear(model, toy_batches(100, seed=4), toy_batches(64, seed=5), max_rows=50) is None
    assert float(model.nb.alpha) == 1.0 and model.nb.table.abs().sum() == 0


def test_a_bundle_saved_before_the_nb_path_loads_without_it():
    from textpipe.bundle.store import bundle_model_config

    assert bundle_model_config({"vocab_size": 10, "num_classes": 2}).nb_linear is False
    assert bundle_model_config({"vocab_size": 10, "num_classes": 2, "nb_linear": True}).nb_linear is True
    assert ModelConfig().nb_linear is True and ModelConfig.from_dict({}).nb_linear is True  # one default
    assert build_model(ModelConfig(vocab_size=10, num_classes=2, nb_linear=False)).nb is None


def test_a_run_ships_the_mix_chosen_on_held_out_rows_and_refits_with_it(toy_files, tmp_path, tiny_config):
    train, _, test = toy_files
    metrics = train_files(train, test, tmp_path / "run", config=tiny_config(train={"epochs": 3, "lr": 0.02}), quiet=True)
    nb = metrics["nb_linear"]
    assert nb["rows"] == 400 and "bag" in nb["dev"]  # refit on every row, with the train phase's dev scores
    assert json.loads((tmp_path / "run" / "run.json").read_text())["refit"]["nb_linear"]["alpha"] == nb["alpha"]
    predictor = Predictor.load(tmp_path / "run")
    assert float(predictor.bundle.model.nb.alpha) == pytest.approx(nb["alpha"])
    assert "NB-weighted linear path" in (tmp_path / "run" / "report.md").read_text()


def test_a_run_over_max_rows_ships_the_bag_alone(toy_files, tmp_path, monkeypatch, tiny_config):
    monkeypatch.setattr("textpipe.core.nb_linear.MAX_ROWS", 100)  # the toy file has 400 rows
    train, _, test = toy_files
    metrics = train_files(train, test, tmp_path / "run", config=tiny_config(train={"epochs": 2, "lr": 0.02}), quiet=True)
    assert "nb_linear" not in metrics
    assert float(Predictor.load(tmp_path / "run").bundle.model.nb.alpha) == 1.0


def multi_label_batches(rows: int, seed: int, num_labels: int = 3):
    """Batches of (ids, packed label set): word 10 + j is in the text for each label j of its set, among noise words 20..79."""
    from textpipe.core.multilabel import pack_label_set

    g = torch.Generator().manual_seed(seed)
    examples = []
    for _ in range(rows):
        labels = [j for j in range(num_labels) if float(torch.rand((), generator=g)) < 0.4]
        telling = torch.tensor([10 + j for j in labels], dtype=torch.long)
        examples.append((torch.cat([telling, torch.randint(20, 80, (6,), generator=g)]), pack_label_set(labels, num_labels)))
    return [pad_collate(examples[i : i + 32]) for i in range(0, rows, 32)]


def test_multi_label_ratios_count_rows_with_and_without_each_label():
    from textpipe.core.nb_linear import presence

    model = build_model(ModelConfig(vocab_size=100, num_classes=3, ngram_buckets=0, multi_label=True))
    data = presence(model, multi_label_batches(200, seed=1))
    X, Y = data.matrix().to_dense(), data.targets(3)
    ratios = log_count_ratios(data, [0, 1, 2], 3)
    for j in range(3):  # by hand: p, q the feature's row counts (+1) among the rows with label j and those without
        p, q = X[Y[:, j] == 1].sum(0) + 1, X[Y[:, j] == 0].sum(0) + 1
        assert torch.allclose(ratios[j], (p / p.sum()).log() - (q / q.sum()).log())
    column = {int(c): i for i, c in enumerate(data.columns)}
    assert all(ratios[j, column[10 + j]] > 1 and ratios[j, column[10 + j]] == ratios[:, column[10 + j]].max() for j in range(3))


def test_the_multi_label_fit_is_the_minimum_of_each_labels_regularized_log_loss():
    from textpipe.core.nb_linear import presence

    model = build_model(ModelConfig(vocab_size=100, num_classes=2, ngram_buckets=0, multi_label=True))
    data = presence(model, multi_label_batches(300, seed=2, num_labels=2))
    C = 3.0
    weights, bias = fit_members(data, 2, C)
    assert weights.shape == (data.shape[1], 2)  # one member per label, even for two labels
    ratios = log_count_ratios(data, [0, 1], 2).T
    w = torch.where(ratios != 0, weights / ratios, torch.zeros_like(weights)).requires_grad_()
    b = bias.clone().requires_grad_()
    s = data.matrix().to_dense() @ (ratios * w) + b
    t = data.targets(2)
    loss = (torch.nn.functional.softplus(s) - t * s).mean(0).sum() + (w * w).sum() / (2 * C * data.shape[0])
    loss.backward()
    assert w.grad.abs().max() < 1e-3 and b.grad.abs().max() < 1e-3


@pytest.mark.parametrize("num_labels", [2, 3])
def test_multi_label_fit_chooses_on_dev_and_the_bag_ships_the_mix_of_sigmoids(num_labels):
    from textpipe.core.multilabel import multi_hot

    torch.manual_seed(0)
    model = build_model(ModelConfig(vocab_size=100, num_classes=num_labels, ngram_buckets=256, multi_label=True))
    assert model.nb.table.shape[1] == num_labels and model.nb.multi_label
    train, dev = multi_label_batches(400, seed=1, num_labels=num_labels), multi_label_batches(160, seed=2, num_labels=num_labels)
    batch = dev[0]
    model.eval()
    bag_logits = model(batch.ids, batch.mask)
    record = fit_nb_linear(model, train, dev)
    assert record["dev"]["score"] == "micro_f1" and record["C"] in (1.0, 3.0, 10.0) and record["alpha"] < 1
    losses = record["dev"]["log_loss_by_alpha"]
    assert losses[str(record["alpha"])] == min(losses.values())
    assert record["dev"]["linear_by_C"][str(record["C"])] == max(record["dev"]["linear_by_C"].values()) > 0.95
    flat, lengths = model.flat_features(batch.ids, batch.mask)
    alpha = float(model.nb.alpha)
    expected = alpha * bag_logits.sigmoid() + (1 - alpha) * model.nb.scores(flat, lengths).sigmoid()  # the sigmoids, not normalized
    mixed = model(batch.ids, batch.mask)
    assert torch.allclose(mixed.sigmoid(), expected, atol=1e-5)
    assert torch.equal(mixed > 0, multi_hot(batch.labels, num_labels).bool())  # the telling words decide every label
    record_again = fit_nb_linear(model, train, C=record["C"], alpha=record["alpha"])  # a refit with the chosen C and alpha
    assert "dev" not in record_again and torch.allclose(model(batch.ids, batch.mask), mixed)


def test_a_multi_label_bag_that_did_not_learn_is_left_out():
    model = build_model(ModelConfig(vocab_size=100, num_classes=3, ngram_buckets=256, multi_label=True))
    with torch.no_grad():
        model.head.bias.fill_(3.0)  # every label's sigmoid near 0.95, whatever the text: worse than each label's frequency
    record = fit_nb_linear(model, multi_label_batches(300, seed=3), multi_label_batches(100, seed=4))
    assert record["dev"]["bag_learned"] is False and record["alpha"] == 0.0
    assert record["dev"]["bag_loss"] > record["dev"]["prior_loss"]


def test_model_config_records_multi_label_only_when_set():
    assert "multi_label" not in ModelConfig().to_dict()  # single-label configs and bundles keep their keys
    assert ModelConfig(multi_label=True).to_dict()["multi_label"] is True
    assert ModelConfig.from_dict(ModelConfig(multi_label=True).to_dict()).multi_label is True


def test_past_fit_rows_the_nb_path_is_fit_on_a_subsample_and_below_it_on_every_row(monkeypatch):
    from textpipe.core import nb_linear

    monkeypatch.setattr(nb_linear, "FIT_ROWS", 64)
    records = {}
    for rows in (64, 256):
        model = build_model(ModelConfig(vocab_size=100, num_classes=2, ngram_buckets=256))
        batches = toy_batches(rows, seed=3)  # batches of 32 rows
        records[rows] = nb_linear.fit_nb_for_phase(model, batches, toy_batches(64, seed=5), None, rows, quiet=True)
    assert records[64]["rows"] == 64 and "every" not in records[64], "a small file: every row, the record as before"
    assert (records[256]["every"], records[256]["rows"]) == (4, 64), "every 4th batch: the fit's cost stops growing"
