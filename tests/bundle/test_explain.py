"""Explanations: exact for the bag model (contributions + bias = logits), labelled approximate for the others."""

import json

import pytest
import torch

from conftest import NEGATIVE, POSITIVE, TEXTS, make_rows, run_cli as textpipe, train_tiny, write_csv
from textpipe.bundle.store import load_bundle
from textpipe.core.collate import pad_collate
from textpipe.bundle.explain import APPROXIMATE, EXACT, NB_TERM, explain, strongest_features
from textpipe.core.models import ModelConfig
from textpipe.run.config import DataConfig, PipelineConfig
from textpipe.run.phases import train_files
from textpipe.bundle.predict import Predictor
from textpipe.core.train import TrainConfig

@pytest.fixture(scope="module")
def bag(tmp_path_factory):
    return train_tiny(tmp_path_factory.mktemp("explain"), max_ngram=3)[0]


def bag_alone(folder):
    """A tiny bundle as its bag alone, uncalibrated (its NB path's share 1, temperature 1): the exact split these tests
    check, whichever mix and temperature its run chose (the temperature's own test: test_calibration.py)."""
    from dataclasses import replace

    bundle = load_bundle(folder)
    bundle.model.nb.alpha.fill_(1.0)
    return replace(bundle, temperature=1.0)


def model_logits(bundle, text: str, calibrated: bool = True) -> torch.Tensor:
    """The model's own forward pass on one text, as the predictor numericalizes it; divided by the bundle's
    temperature (what predict's softmax reads) unless not ``calibrated``."""
    ids = torch.tensor(bundle.vocab(bundle.tokenizer(text)) or [1])
    batch = pad_collate([ids])
    with torch.no_grad():
        return bundle.model(batch.ids, batch.mask)[0] / (bundle.temperature if calibrated else 1.0)


def test_bag_contributions_plus_bias_reproduce_every_logit(bag):
    bundle = bag_alone(bag)
    for e in explain(bundle, TEXTS):
        assert e.method == EXACT
        torch.testing.assert_close(e.contributions.sum(0) + e.bias, model_logits(bundle, e.text), atol=1e-4, rtol=0)
        torch.testing.assert_close(e.logits, model_logits(bundle, e.text), atol=1e-4, rtol=0)


def test_frozen_pretrained_vectors_are_part_of_the_exact_split(tmp_path):
    vectors = tmp_path / "vecs.txt"
    vectors.write_text("".join(f"{w} {i} 1 -1 0.5\n" for i, w in enumerate(POSITIVE + NEGATIVE)), encoding="utf-8")
    train = write_csv(tmp_path / "train.csv", make_rows(300, seed=1))
    config = PipelineConfig(data=DataConfig(cache_dir=None, vectors=str(vectors)), model=ModelConfig(embed_dim=16, ngram_buckets=512, frozen_dim=4),
                            train=TrainConfig(epochs=2, lr=0.02, refit=False, keep_checkpoints=0))
    train_files(train, train, tmp_path / "run", config=config, quiet=True)
    bundle = bag_alone(tmp_path / "run")
    assert bundle.model.frozen.abs().sum() > 0
    for e in explain(bundle, TEXTS):
        torch.testing.assert_close(e.contributions.sum(0) + e.bias, model_logits(bundle, e.text), atol=1e-4, rtol=0)


def test_bag_features_are_the_tokens_then_each_ngram(bag):
    e = explain(bag_alone(bag), ["dull , boring"])[0]
    assert e.tokens == ["dull", ",", "boring"]
    assert e.features == ["dull", ",", "boring", "dull ,", ", boring", "dull , boring"]
    assert e.kinds == ["token"] * 3 + ["ngram"] * 3
    label = int(e.logits.argmax())
    # Shading shares each n-gram out among its words: the token weights add up to the same total.
    torch.testing.assert_close(e.token_weights(label).sum(), e.weights(label).sum())
    shown = e.to_dict(label, top=4)
    assert len(shown["top"]) == 4 and [t for t, _ in shown["tokens"]] == e.tokens
    assert abs(shown["top"][0]["weight"]) == pytest.approx(float(e.weights(label).abs().max()), abs=1e-6)


def test_the_sentiment_words_carry_the_decision(bag):
    bundle = bag_alone(bag)
    pos = bundle.labels.index("pos")
    e = explain(bundle, ["the movie was gorgeous and the story"])[0]
    weights = dict(zip(e.tokens, e.token_weights(pos).tolist()))
    assert max(weights, key=weights.get) == "gorgeous"


def test_strongest_features_per_class_are_the_sentiment_words(bag):
    features = strongest_features(bag_alone(bag), top=5)
    assert {w for w, _ in features["pos"]} <= set(POSITIVE)
    assert {w for w, _ in features["neg"]} <= set(NEGATIVE)
    report = (bag / "report.md").read_text()
    assert "## Strongest features" in report and features["pos"][0][0] in report


@pytest.mark.parametrize("name", ["cnn", "gru", "transformer"])
def test_other_models_get_a_labelled_approximation(tmp_path, name):
    folder, _ = train_tiny(tmp_path, name, max_len=8)
    bundle = load_bundle(folder)
    explanations = explain(bundle, TEXTS)
    probs = Predictor(bundle).probabilities(TEXTS)
    for e, row in zip(explanations, probs):
        assert e.method == APPROXIMATE
        assert e.contributions.shape == (len(e.tokens), 2)
        torch.testing.assert_close(e.logits.softmax(-1), row, atol=1e-5, rtol=0)
        torch.testing.assert_close(e.contributions.sum(0) + e.bias, e.logits)  # the bias holds what is unexplained
        assert e.contributions.abs().sum() > 0
    long = explanations[-1]
    assert len(long.tokens) > 8 and (long.contributions[8:] == 0).all() == (name == "transformer")  # cut at max_len


def test_cli_predict_explain(bag):
    result = textpipe("predict", "--model", bag, "--explain", *TEXTS[:2])
    assert result.returncode == 0, result.stderr
    rows = [json.loads(line) for line in result.stdout.splitlines()]
    expected = Predictor.load(bag).predict(TEXTS[:2])
    assert [r["label"] for r in rows] == [r["label"] for r in expected]
    for row in rows:
        e = row["explanation"]
        assert e["method"] == EXACT and e["top"] and [t for t, _ in e["tokens"]][0] in row["text"].lower()
    text = textpipe("predict", "--model", bag, "--explain", "--format", "text", TEXTS[0])
    assert text.returncode == 0 and "why (exact, toward" in text.stdout
    csv_out = textpipe("predict", "--model", bag, "--explain", "--format", "csv", TEXTS[0])
    assert csv_out.returncode == 2 and "--explain works with --format json or text" in csv_out.stderr


# --- a bundle with a sentence encoder: its share of the mix as one more term ---------------------------

ENCODER_TERM = "[sentence encoder minilm-l6]"


def fake_vectors(texts: list[str]) -> torch.Tensor:
    """A stand-in for the encoder (the real one is tested in test_sentence_head.py): a fixed 16-d vector per text."""
    return torch.stack([torch.randn(16, generator=torch.Generator().manual_seed(sum(t.encode()))) for t in texts])


def with_head(bundle, beta: float = 0.4, nb_alpha: float | None = 0.5):
    """The bundle given a sentence head of chosen weights (and, with ``nb_alpha``, an NB path with that share)."""
    from dataclasses import replace

    from textpipe.core.sentence_head import SentenceHead

    head = SentenceHead(16, len(bundle.labels))
    with torch.no_grad():
        head.linear.weight.copy_(torch.randn(head.linear.weight.shape, generator=torch.Generator().manual_seed(7)) * 3)
        head.beta.fill_(beta)
    nb = getattr(bundle.model, "nb", None)
    if nb is not None and nb_alpha is not None:
        nb.table.normal_(generator=torch.Generator().manual_seed(8))
        nb.alpha.fill_(nb_alpha)
    config = replace(bundle.model_config, encoder="minilm-l6")
    return replace(bundle, head=head, encoder={"name": "minilm-l6", "sha256": "0" * 64, "max_wordpieces": 256}, model_config=config)


def shipped_probabilities(bundle, text: str) -> torch.Tensor:
    """What predict ships, worked out here on its own: the model's probabilities mixed with the head's, at the bundle's temperature."""
    mixed = bundle.head.mix(model_logits(bundle, text, calibrated=False).softmax(0)[None], fake_vectors([text]))[0]
    return (mixed.log() / bundle.temperature).softmax(0)


@pytest.mark.parametrize("nb_alpha", [0.5, None])
def test_the_encoders_share_is_one_term_and_the_terms_still_sum_to_the_mix(bag, nb_alpha):
    plain = explain(bag_alone(bag), TEXTS)
    bundle = with_head(bag_alone(bag), nb_alpha=nb_alpha)
    terms = [NB_TERM, ENCODER_TERM] if nb_alpha is not None else [ENCODER_TERM]
    for e, alone in zip(explain(bundle, TEXTS, fake_vectors), plain):
        assert e.method == EXACT and e.features[-len(terms):] == terms and e.spans[-1] == (0, 0)
        assert e.kinds[-len(terms):] == (["nb", "encoder"] if nb_alpha is not None else ["encoder"])
        torch.testing.assert_close(e.contributions[: -len(terms)], alone.contributions)  # the bag's own split is untouched
        torch.testing.assert_close(e.contributions.sum(0) + e.bias, e.logits, atol=1e-5, rtol=0)
        # The logits are the mix's logs plus one constant: softmax gives predict's probabilities, and weights are exact.
        torch.testing.assert_close(e.logits.softmax(0), shipped_probabilities(bundle, e.text), atol=1e-5, rtol=0)
        label = int(e.logits.argmax())
        log_mix = shipped_probabilities(bundle, e.text).log()
        torch.testing.assert_close(e.weights(label).sum() + e.bias[label] - e.bias.mean(), log_mix[label] - log_mix.mean(), atol=1e-5, rtol=0)
        # Shading leaves the whole-text terms out: the token weights add up to the word and n-gram features' total.
        torch.testing.assert_close(e.token_weights(label).sum(), e.weights(label)[: -len(terms)].sum())
        assert e.features[int(e.weights(label).abs().argmax())] in e.to_dict(label, top=1)["top"][0]["feature"]


def test_without_an_encoder_the_nb_paths_share_is_a_term_and_the_explanation_predicts_as_predict_does(bag):
    bundle = bag_alone(bag)
    bundle.model.nb.table.normal_(generator=torch.Generator().manual_seed(8))
    bundle.model.nb.alpha.fill_(0.3)
    for e in explain(bundle, TEXTS):
        assert e.features[-1] == NB_TERM and e.kinds[-1] == "nb" and ENCODER_TERM not in e.features
        torch.testing.assert_close(e.contributions.sum(0) + e.bias, e.logits, atol=1e-5, rtol=0)
        torch.testing.assert_close(e.logits.softmax(0), model_logits(bundle, e.text).softmax(0), atol=1e-5, rtol=0)


def test_a_head_with_no_share_adds_a_zero_term(bag):
    e = explain(with_head(bag_alone(bag), beta=0.0, nb_alpha=None), TEXTS[:1], fake_vectors)[0]
    assert e.features[-1] == ENCODER_TERM and e.contributions[-1].abs().max() == 0


def test_a_gradient_explanation_takes_the_encoders_term_too(tmp_path):
    bundle = with_head(load_bundle(train_tiny(tmp_path, "cnn", max_len=8)[0]))
    for e in explain(bundle, TEXTS, fake_vectors):
        assert e.method == APPROXIMATE and e.features[-1] == ENCODER_TERM and NB_TERM not in e.features
        torch.testing.assert_close(e.logits.softmax(0), shipped_probabilities(bundle, e.text), atol=1e-5, rtol=0)


def test_predict_and_serve_explain_the_label_they_predict_encoding_once(bag, monkeypatch):
    from textpipe.bundle import predict
    from textpipe.bundle.serve_work import Batcher

    encoded = []

    def source(bundle, cache=None):
        encoded.append("loaded")
        return lambda texts: encoded.extend(texts) or fake_vectors(texts)

    monkeypatch.setattr(predict, "sentence_vector_source", source)
    predictor = Predictor(with_head(bag_alone(bag)))
    assert encoded == ["loaded"]  # one encoder, shared by scoring and explaining
    results = predictor.predict(TEXTS)
    for result, e, probs in zip(results, predictor.explain(TEXTS), predictor.probabilities(TEXTS)):
        assert result["label"] == predictor.labels[int(e.logits.argmax())]
        torch.testing.assert_close(e.logits.softmax(0), probs, atol=1e-5, rtol=0)
    batcher = Batcher(predictor)
    try:
        [served] = batcher.submit(["great"], explain=True, timeout=60)  # one word: every feature is in the top ten
    finally:
        batcher.close()
    assert served["label"] == predictor.predict(["great"])[0]["label"]
    assert [f["feature"] for f in served["explanation"]["top"]].count(ENCODER_TERM) == 1
    assert [t for t, _ in served["explanation"]["tokens"]] == ["great"]  # no token carries the whole-text terms


def test_serve_keeps_no_sentence_cache_while_predict_reads_through_one(bag, tmp_path, monkeypatch):
    """A server's texts are strangers': kept on disk they would grow the cache without end, and each batch read it all."""
    from textpipe.bundle import explain as explain_module
    from textpipe.bundle import serve
    from textpipe.text.sentence import SentenceEncoder

    calls = []

    class StandIn:
        def encode(self, texts):
            calls.append(("encode", None))
            return fake_vectors(texts)

        def encode_cached(self, texts, root, progress=False):
            calls.append(("encode_cached", root))
            return fake_vectors(texts)

    monkeypatch.setattr(SentenceEncoder, "from_record", classmethod(lambda cls, record: StandIn()))
    bundle = with_head(bag_alone(bag))
    Predictor(bundle).predict(TEXTS[:1])
    Predictor(bundle, sentence_cache=tmp_path).predict(TEXTS[:1])
    Predictor(bundle, sentence_cache=None).predict(TEXTS[:1])
    assert calls == [("encode_cached", explain_module.cache_home()), ("encode_cached", tmp_path), ("encode", None)]
    chosen = {}
    monkeypatch.setattr(serve.Predictor, "load", classmethod(lambda cls, path, **kwargs: chosen.update(kwargs) or (_ for _ in ()).throw(SystemExit)))
    with pytest.raises(SystemExit):
        serve.serve(bag)
    assert chosen == {"sentence_cache": None}
