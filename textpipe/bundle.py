"""Stage 7: a trained model on disk, saved and loaded safely.

A bundle is a folder of three files:

- ``weights.pt``: the model's ``state_dict``, read back with ``torch.load(weights_only=True)``,
  which refuses anything but tensors and plain containers (no code is unpickled);
- ``vocab.json``: the vocabulary's tokens in id order;
- ``bundle.json``: format version, model config, tokenizer config, labels and the
  training config, as JSON.

Each file is written to a temporary name and renamed into place, so a crash
mid-save never leaves a half-written file under the real name.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from torch import nn

from .models import ModelConfig, build_model
from .tokenizer import Tokenizer, TokenizerConfig
from .vocab import Vocab, load_vocab, save_vocab

FORMAT_VERSION = 1
WEIGHTS, VOCAB, META = "weights.pt", "vocab.json", "bundle.json"


@dataclass
class Bundle:
    """A trained model with everything needed to turn text into its inputs.

    Example:
        >>> bundle = load_bundle("runs/default")
        >>> bundle.labels
        ['fresh', 'rotten']
    """

    model: nn.Module
    vocab: Vocab
    tokenizer: Tokenizer
    labels: list[str]
    model_config: ModelConfig
    train_config: dict


def save_bundle(
    out: str | Path,
    model: nn.Module,
    vocab: Vocab,
    tokenizer: Tokenizer,
    labels: list[str],
    model_config: ModelConfig,
    train_config: dict | None = None,
) -> Path:
    """Write a bundle into folder ``out`` (created if needed); returns the folder."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    tmp = out / (WEIGHTS + ".tmp")
    torch.save(state, tmp)
    os.replace(tmp, out / WEIGHTS)
    save_vocab(vocab, out / VOCAB)
    meta = {
        "format_version": FORMAT_VERSION,
        "model": model_config.to_dict(),
        "tokenizer": asdict(tokenizer.config),
        "labels": list(labels),
        "train": train_config or {},
    }
    write_json_atomic(out / META, meta)
    return out


def load_bundle(path: str | Path, device: str | torch.device = "cpu") -> Bundle:
    """Read a bundle written by :func:`save_bundle`; the model is in eval mode on ``device``."""
    path = Path(path)
    meta_path = path / META
    if not meta_path.is_file():
        raise FileNotFoundError(f"{path} is not a textpipe bundle (no {META})")
    meta = json.loads(meta_path.read_text(encoding="utf-8"))
    if meta.get("format_version") != FORMAT_VERSION:
        raise ValueError(f"{meta_path}: bundle format {meta.get('format_version')!r}, this textpipe reads {FORMAT_VERSION}")
    model_config = ModelConfig.from_dict(meta["model"])
    vocab = load_vocab(path / VOCAB)
    labels = meta["labels"]
    if len(vocab) != model_config.vocab_size or len(labels) != model_config.num_classes:
        raise ValueError(
            f"{path}: vocab has {len(vocab)} tokens and {len(labels)} labels, "
            f"but the model was built for {model_config.vocab_size} and {model_config.num_classes}"
        )
    model = build_model(model_config)
    state = torch.load(path / WEIGHTS, map_location="cpu", weights_only=True)
    model.load_state_dict(state)
    model.to(device).eval()
    tokenizer = Tokenizer.from_config(TokenizerConfig(**meta["tokenizer"]))
    return Bundle(model, vocab, tokenizer, labels, model_config, meta.get("train", {}))


def write_json_atomic(path: str | Path, obj) -> None:
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(obj, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    os.replace(tmp, path)
