"""Stage 7: a trained model on disk, saved and loaded safely.

A bundle is a folder of three files:

- ``weights.pt``: the model's ``state_dict``, read back with ``torch.load(weights_only=True)``,
  which refuses anything but tensors and plain containers (no code is unpickled);
- ``vocab.json``: the vocabulary's tokens in id order;
- ``bundle.json``: format version, model config, tokenizer config, labels, the
  training config, and a manifest: the size and sha256 of the two other files.

Loading checks the manifest before reading anything else, so a truncated or
altered file is refused with a message saying which; a ``weights.pt`` holding
anything but tensors is refused by ``weights_only=True`` even when its hash was
forged; a vocabulary or weights that do not fit the model config are refused.
Each file is written to a temporary name, fsync-ed and renamed into place, so a
crash mid-save never leaves a half-written file under the real name.
"""

from __future__ import annotations

import hashlib
import json
import pickle
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from torch import nn

from .checkpoint import atomic_write
from .models import ModelConfig, build_model
from .quantize import dequantize_state
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
    *,
    state: dict[str, torch.Tensor] | None = None,
    extra: dict | None = None,
) -> Path:
    """Write a bundle into folder ``out`` (created if needed); returns the folder.

    ``state`` replaces ``model.state_dict()`` (a quantized table, see :mod:`textpipe.quantize`);
    ``extra`` adds keys to ``bundle.json``.
    """
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().cpu() for k, v in (model.state_dict() if state is None else state).items()}
    atomic_write(out / WEIGHTS, lambda f: torch.save(state, f))
    save_vocab(vocab, out / VOCAB)
    meta = {
        "format_version": FORMAT_VERSION,
        "model": model_config.to_dict(),
        "tokenizer": asdict(tokenizer.config),
        "labels": list(labels),
        "train": train_config or {},
        "files": {name: file_digest(out / name) for name in (WEIGHTS, VOCAB)},
        **(extra or {}),
    }
    write_json_atomic(out / META, meta)
    return out


def file_digest(path: str | Path) -> dict:
    """``{"bytes": size, "sha256": hex digest}`` of a file."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return {"bytes": Path(path).stat().st_size, "sha256": digest.hexdigest()}


def load_bundle(path: str | Path, device: str | torch.device = "cpu") -> Bundle:
    """Read and check a bundle written by :func:`save_bundle`; the model is in eval mode on ``device``."""
    path = Path(path)
    meta = read_meta(path)
    for name in (WEIGHTS, VOCAB):
        check_file(path, name, meta["files"].get(name))
    model_config = ModelConfig.from_dict(meta["model"])
    try:
        vocab = load_vocab(path / VOCAB)
    except ValueError as err:
        raise BundleError(f"{path / VOCAB}: {err}") from None
    labels = meta["labels"]
    if len(vocab) != model_config.vocab_size or len(labels) != model_config.num_classes:
        raise BundleError(
            f"{path}: vocab.json has {len(vocab)} tokens and bundle.json {len(labels)} labels, "
            f"but the model was built for {model_config.vocab_size} tokens and {model_config.num_classes} labels"
        )
    model = build_model(model_config)
    state = dequantize_state(load_weights(path))  # a quantized table becomes a float table again
    try:
        model.load_state_dict(state)
    except RuntimeError as err:
        detail = " ".join(str(err).split("\n\t")[1:2]) or str(err)
        raise BundleError(f"{path / WEIGHTS} does not fit the model described in bundle.json: {detail.strip()}") from None
    model.to(device).eval()
    tokenizer = Tokenizer.from_config(TokenizerConfig(**meta["tokenizer"]))
    return Bundle(model, vocab, tokenizer, labels, model_config, meta.get("train", {}))


def load_weights(path: Path) -> dict:
    """The tensors of ``weights.pt``; a file holding anything else is refused, unread."""
    try:
        return torch.load(path / WEIGHTS, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:
        raise BundleError(f"refusing to load {path / WEIGHTS}: it holds Python objects other than tensors, and unpickling them could run code") from None


def read_meta(path: Path) -> dict:
    """``bundle.json`` of the bundle in folder ``path``, with its format version checked."""
    meta_path = path / META
    if not meta_path.is_file():
        raise FileNotFoundError(f"{path} is not a textpipe bundle (no {META})")
    try:
        meta = json.loads(meta_path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise BundleError(f"{meta_path} is damaged: not valid JSON ({err})") from None
    if not isinstance(meta, dict) or meta.get("format_version") != FORMAT_VERSION:
        version = meta.get("format_version") if isinstance(meta, dict) else None
        raise BundleError(f"{meta_path}: bundle format {version!r}, this textpipe reads format {FORMAT_VERSION}")
    if not isinstance(meta.get("files"), dict):
        raise BundleError(f"{meta_path} has no manifest of files")
    return meta


def check_file(path: Path, name: str, expected: dict | None) -> None:
    """Compare a bundle file with its manifest entry; a mismatch names the file and how it differs."""
    file = path / name
    if expected is None:
        raise BundleError(f"{path / META} lists no checksum for {name}")
    if not file.is_file():
        raise BundleError(f"{file} is missing")
    actual = file_digest(file)
    if actual["bytes"] != expected["bytes"]:
        raise BundleError(f"{file} is {actual['bytes']} bytes but bundle.json says {expected['bytes']}: the file is truncated or was replaced")
    if actual["sha256"] != expected["sha256"]:
        raise BundleError(f"{file} does not match its sha256 in bundle.json: the file was altered after saving")


class BundleError(ValueError):
    """A bundle that cannot be trusted or does not fit together; the message says which file and why."""


def write_json_atomic(path: str | Path, obj) -> None:
    data = (json.dumps(obj, indent=2, ensure_ascii=False) + "\n").encode("utf-8")
    atomic_write(path, lambda f: f.write(data))
