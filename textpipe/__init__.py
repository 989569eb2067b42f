"""textpipe: text classification on torchtext, one stage per module.

    sources -> tokenizer -> vocab -> dataset -> collate -> models -> train -> bundle -> predict

Every stage is importable from here, lazily: ``import textpipe.models`` does not
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
    "DataError": "sources", "Example": "sources", "SourceConfig": "sources", "read_examples": "sources", "read_texts": "sources",
    "Tokenizer": "tokenizer", "TokenizerConfig": "tokenizer",
    "build_vocab": "vocab", "save_vocab": "vocab", "load_vocab": "vocab", "PAD_ID": "vocab", "UNK_ID": "vocab",
    "rotten_tomatoes": "catalogue", "DATASETS": "catalogue",
    "TextClassificationDataset": "dataset", "TextListDataset": "dataset",
    "Batches": "batching", "LengthSortedSampler": "batching", "make_loader": "loader",
    "Batch": "collate", "pad_collate": "collate", "FlatRows": "collate",
    "ModelConfig": "models", "BagOfNgrams": "models", "TextCNN": "models", "BiGRU": "models",
    "TransformerClassifier": "models", "MODELS": "models", "build_model": "models", "capture_pooled": "models",
    "TrainConfig": "train", "fit": "train", "evaluate": "metrics", "set_seed": "runtime", "RunContext": "runtime", "run_scope": "runtime",
    "Bundle": "bundle", "save_bundle": "bundle", "load_bundle": "bundle",
    "Predictor": "predict",
    "Explanation": "explain", "explain": "explain", "strongest_features": "explain",
    "QuantizeConfig": "quantize", "quantize_bundle": "quantize",
    "ServeConfig": "serve", "make_server": "serve",
    "summarize": "report", "misclassified": "report", "write_report": "report",
    "PipelineConfig": "config", "DataConfig": "config", "ConfigError": "config", "train_files": "run", "resume_run": "run",
    "report_file": "pipeline",
    "TextClassifier": "estimator",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(import_module(f".{_EXPORTS[name]}", __name__), name)
    raise AttributeError(f"module 'textpipe' has no attribute {name!r}")
