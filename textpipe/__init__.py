"""textpipe: text classification on torchtext, one stage per module (the stages, in the order
data flows: docs/architecture.md, "The stages").

Every stage is importable from here, lazily: ``import textpipe.core.models`` does not
pull in torchtext or spaCy, so the tensor core (``collate``, ``models``,
``train`` and the ``optim``, ``metrics``, ``runtime``, ``checkpoint`` it uses) runs wherever torch does.

Example:
    >>> from textpipe import TextClassifier
    >>> clf = TextClassifier().fit(texts, labels)       # lists (or any iterables) of str
    >>> clf.predict(["a gorgeous, witty, seductive movie."])
    >>> from textpipe import Tokenizer, build_vocab, TextClassificationDataset, pad_collate   # the stages
"""

from importlib import import_module

__version__ = "0.1.0"

_EXPORTS = {
    "DataError": "text.sources", "Example": "text.sources", "SourceConfig": "text.sources", "read_examples": "text.sources", "read_texts": "text.sources",
    "Tokenizer": "text.tokenizer", "TokenizerConfig": "text.tokenizer",
    "build_vocab": "text.vocab", "save_vocab": "text.vocab", "load_vocab": "text.vocab", "PAD_ID": "text.vocab", "UNK_ID": "text.vocab",
    "rotten_tomatoes": "text.catalogue", "DATASETS": "text.catalogue",
    "TextClassificationDataset": "text.dataset", "TextListDataset": "text.dataset",
    "Batches": "core.batching", "LengthSortedSampler": "core.batching", "make_loader": "text.loader",
    "Batch": "core.collate", "pad_collate": "core.collate", "FlatRows": "core.collate",
    "ModelConfig": "core.models", "BagOfNgrams": "core.models", "TextCNN": "core.models", "BiGRU": "core.models",
    "TransformerClassifier": "core.models", "MODELS": "core.models", "build_model": "core.models", "capture_pooled": "core.models",
    "TrainConfig": "core.train", "fit": "core.train", "evaluate": "core.metrics", "set_seed": "core.runtime", "RunContext": "core.runtime", "run_scope": "core.runtime",
    "Bundle": "bundle.store", "save_bundle": "bundle.store", "load_bundle": "bundle.store",
    "Predictor": "bundle.predict",
    "Explanation": "bundle.explain", "explain": "bundle.explain", "strongest_features": "bundle.explain",
    "QuantizeConfig": "bundle.quantize", "quantize_bundle": "bundle.quantize",
    "ServeConfig": "bundle.serve", "make_server": "bundle.serve",
    "summarize": "bundle.report", "misclassified": "bundle.report", "write_report": "bundle.report",
    "PipelineConfig": "run.config", "DataConfig": "run.config", "ConfigError": "run.config", "train_files": "run.phases", "resume_run": "run.phases",
    "report_file": "run.pipeline",
    "TextClassifier": "estimator",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(import_module(f".{_EXPORTS[name]}", __name__), name)
    raise AttributeError(f"module 'textpipe' has no attribute {name!r}")
