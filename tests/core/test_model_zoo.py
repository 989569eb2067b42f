"""Every registered model keeps the same contract: fits, ignores padding, exposes ``pool``, rebuilds from JSON."""

import json

import pytest
import torch
from torch import nn

from textpipe.core.collate import pad_collate
from textpipe.core.models import MODELS, ModelConfig, build_model, capture_pooled
from textpipe.core.optim import make_optimizers
from textpipe.core.train import TrainConfig

NAMES = ["bag", "cnn", "gru", "transformer"]
VOCAB, CLASSES = 40, 3
FILLER = range(2 + 2 * CLASSES, VOCAB)  # ids 8..39; ids 2..7 are the class markers


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    # These models are tiny: a second intra-op thread saves nothing, and on a loaded 2-core
    # machine OpenMP threads waiting on each other made one training step up to 100x slower.
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def small_config(name: str, **overrides) -> ModelConfig:
    # Small widths keep the whole file fast; dropout stays at its default.
    sizes = dict(embed_dim=32, hidden_dim=32, ngram_buckets=256, max_len=64)
    return ModelConfig(name=name, vocab_size=VOCAB, num_classes=CLASSES, **{**sizes, **overrides})


def marker_task(n: int, seed: int = 0):
    """Random filler ids with one or two markers of the label's class (class c owns ids 2+2c and 3+2c) anywhere."""
    g = torch.Generator().manual_seed(seed)
    seqs, labels = [], []
    for i in range(n):
        label = i % CLASSES
        filler = torch.tensor(FILLER)[torch.randint(len(FILLER), (int(torch.randint(2, 12, (1,), generator=g)),), generator=g)]
        markers = 2 + 2 * label + torch.randint(2, (int(torch.randint(1, 3, (1,), generator=g)),), generator=g)
        seq = torch.cat([filler, markers])
        seqs.append(seq[torch.randperm(len(seq), generator=g)])
        labels.append(label)
    batch = pad_collate(seqs)
    return batch.ids, batch.mask, torch.tensor(labels)


def with_padding(ids: torch.Tensor, mask: torch.Tensor, extra: int):
    return (
        torch.cat([ids, ids.new_zeros(ids.shape[0], extra)], 1),
        torch.cat([mask, mask.new_zeros(mask.shape[0], extra)], 1),
    )


def test_registry_names():
    assert sorted(MODELS) == sorted(NAMES)


@pytest.mark.parametrize("name", NAMES)
def test_fits_separable_task(name):
    torch.manual_seed(0)
    ids, mask, labels = marker_task(96)
    model = build_model(small_config(name))
    optimizers = make_optimizers(model, TrainConfig(lr=1e-2))
    loss_fn = nn.CrossEntropyLoss()
    accuracy = 0.0
    for step in range(300):
        model.train()
        for opt in optimizers:
            opt.zero_grad()
        loss_fn(model(ids, mask), labels).backward()
        for opt in optimizers:
            opt.step()
        if step % 10 == 9:
            model.eval()
            with torch.no_grad():
                accuracy = (model(ids, mask).argmax(1) == labels).float().mean().item()
            if accuracy == 1.0:
                break
    assert accuracy == 1.0, f"{name} reached only {accuracy:.3f} training accuracy"


@pytest.mark.parametrize("name", NAMES)
def test_padding_never_changes_outputs(name):
    torch.manual_seed(0)
    model = build_model(small_config(name)).eval()
    # An empty row and a row of length 1 are the edge cases for packing, attention and max-pooling.
    batch = pad_collate([torch.tensor([5, 9, 12, 3, 30, 8, 7]), torch.tensor([4]), torch.randint(2, VOCAB, (12,)), torch.tensor([], dtype=torch.long)])
    with torch.no_grad():
        base = model(batch.ids, batch.mask)
        for extra in (1, 5, 40):
            padded = model(*with_padding(batch.ids, batch.mask, extra))
            torch.testing.assert_close(padded, base, atol=1e-5, rtol=0)
    assert torch.isfinite(base).all()


@pytest.mark.parametrize("name", NAMES)
def test_capture_pooled_is_what_the_head_sees(name):
    torch.manual_seed(0)
    model = build_model(small_config(name)).eval()
    ids, mask, _ = marker_task(6)
    with torch.no_grad(), capture_pooled(model) as vectors:
        logits = model(ids, mask)
    assert len(vectors) == 1
    assert vectors[0].shape == (6, model.head.in_features)
    torch.testing.assert_close(model.head(vectors[0]), logits)  # eval mode: dropout is the identity


@pytest.mark.parametrize("name", NAMES)
def test_rebuilds_from_json_config(name):
    torch.manual_seed(0)
    config = small_config(name)
    model = build_model(config).eval()
    restored = ModelConfig.from_dict(json.loads(json.dumps(config.to_dict())))
    assert restored == config
    rebuilt = build_model(restored).eval()
    rebuilt.load_state_dict(model.state_dict())
    ids, mask, _ = marker_task(8, seed=1)
    with torch.no_grad():
        torch.testing.assert_close(rebuilt(ids, mask), model(ids, mask), atol=0, rtol=0)


def test_transformer_cuts_long_inputs_to_max_len():
    torch.manual_seed(0)
    model = build_model(small_config("transformer", max_len=8)).eval()
    ids = torch.randint(2, VOCAB, (2, 20))
    mask = torch.ones_like(ids, dtype=torch.bool)
    with torch.no_grad():
        torch.testing.assert_close(model(ids, mask), model(ids[:, :8], mask[:, :8]))


def test_config_rejects_bad_shapes():
    with pytest.raises(ValueError, match="num_heads"):
        build_model(small_config("transformer", num_heads=5))
    with pytest.raises(ValueError, match="kernel_sizes"):
        build_model(small_config("cnn", kernel_sizes=()))


def test_bag_trigrams_keep_padding_out_and_add_one_row_per_real_trigram():
    torch.manual_seed(0)
    model = build_model(small_config("bag", max_ngram=3)).eval()
    batch = pad_collate([torch.tensor([5, 9, 12, 3]), torch.tensor([4, 6]), torch.tensor([7])])
    ids, mask = model.add_ngrams(batch.ids, batch.mask)
    assert mask.sum(1).tolist() == [4 + 3 + 2, 2 + 1 + 0, 1]  # words + bigrams + trigrams
    assert (ids[mask] >= 0).all() and (ids[mask] < VOCAB + 256).all()
    bigrams_only = build_model(small_config("bag", max_ngram=2)).add_ngrams(batch.ids, batch.mask)
    assert torch.equal(ids[:, : bigrams_only[0].shape[1]], bigrams_only[0]), "the bigram rows do not move"
    with torch.no_grad():
        base = model(batch.ids, batch.mask)
        for extra in (1, 3, 20):
            torch.testing.assert_close(model(*with_padding(batch.ids, batch.mask, extra)), base, atol=1e-5, rtol=0)
