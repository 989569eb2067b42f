"""Stage 7: a trained model on disk, saved and loaded safely.

A bundle is a folder of three files:

- ``weights.safetensors``: the model's ``state_dict`` in the safetensors format:
  tensors only, no pickle, so loading it can never run code (torch 2.3's
  ``torch.load``, even with ``weights_only=True``, still reaches legacy loaders);
- ``vocab.json``: the vocabulary's tokens in id order;
- ``bundle.json``: format version, model config, tokenizer config, labels, the
  training config, and a manifest: the size and sha256 of the two other files, and
  the sha256 of bundle.json's own fields that change a prediction (model,
  tokenizer, labels).

Loading checks the manifest before reading anything else, so a truncated or
altered file, or relabelled ``labels``, is refused with a message saying which.
Every field is type-checked, and the model config's tensor shapes are compared with
the shapes in the weights file's header before a single weight is allocated, so a
crafted size (``ngram_buckets = 2**40``) is refused, not attempted. Weights that are
not finite (a diverged run) are never saved nor loaded.
Each file is written to a temporary name, fsync-ed and renamed into place, so a
crash mid-save never leaves a half-written file under the real name.
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import asdict, dataclass, fields
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save as safetensors_bytes
from torch import nn

from .events import emit
from .files import atomic_write, file_sha256, write_json_atomic
from .models import MODELS, ModelConfig, model_skeleton
from .compact import dequantize_state, fold_quantized_shapes
from .sentence_head import SentenceHead
from .tokenizer import TOKENIZERS, Tokenizer, TokenizerConfig
from .vocab import Vocab, load_vocab, save_vocab

FORMAT_VERSION = 2
WEIGHTS, VOCAB, META = "weights.safetensors", "vocab.json", "bundle.json"
HEAD = "sentence_head.safetensors"  # with model.encoder: the sentence head's weights (sentence_head.py), a file of the manifest
PREDICTION_FIELDS = ("model", "tokenizer", "labels")  # the fields of bundle.json that change what a model predicts


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
    head: SentenceHead | None = None  # with model.encoder: the sentence encoder's member of the mix
    encoder: dict | None = None  # with model.encoder: {"name", "sha256", "max_wordpieces"}, what encodes the head's vectors


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
    head: SentenceHead | None = None,
) -> Path:
    """Write a bundle into folder ``out`` (created if needed); returns the folder.

    ``state`` replaces ``model.state_dict()`` (a quantized table, see :mod:`textpipe.quantize`);
    ``extra`` adds keys to ``bundle.json``; ``head`` (with ``extra["encoder"]``) is saved as a second weights file.
    """
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().cpu().contiguous() for k, v in (model.state_dict() if state is None else state).items()}
    for name, tensor in state.items():
        if not all_finite(tensor):
            raise BundleError(f"refusing to save {out / WEIGHTS}: tensor {name} holds NaN or infinite values (training diverged)")
    data = safetensors_bytes(state)
    atomic_write(out / WEIGHTS, lambda f: f.write(data))
    emit("bundle_weights_written")
    save_vocab(vocab, out / VOCAB)
    meta = {
        "format_version": FORMAT_VERSION,
        "model": model_config.to_dict(),
        "tokenizer": asdict(tokenizer.config),
        "labels": list(labels),
        "train": train_config or {},
        **(extra or {}),
    }
    if head is not None:
        head_data = safetensors_bytes({k: v.detach().cpu().contiguous() for k, v in head.state_dict().items()})
        atomic_write(out / HEAD, lambda f: f.write(head_data))
    meta["files"] = {name: file_digest(out / name) for name in (WEIGHTS, VOCAB) + ((HEAD,) if head is not None else ())}
    meta["files"][META] = {"fields": list(prediction_fields(meta)), "sha256": fields_digest(meta)}
    write_json_atomic(out / META, meta)
    return out


def file_digest(path: str | Path) -> dict:
    """``{"bytes": size, "sha256": hex digest}`` of a file."""
    return {"bytes": Path(path).stat().st_size, "sha256": file_sha256(path)}


def prediction_fields(meta: dict) -> tuple[str, ...]:
    """The fields that change a prediction: with a sentence encoder, its record too."""
    return PREDICTION_FIELDS + (("encoder",) if "encoder" in meta else ())


def fields_digest(meta: dict) -> str:
    """sha256 of the prediction fields of ``bundle.json``, as canonical JSON."""
    canonical = json.dumps({k: meta.get(k) for k in prediction_fields(meta)}, sort_keys=True, ensure_ascii=False, separators=(",", ":"))
    return hashlib.sha256(canonical.encode("utf-8")).hexdigest()


def load_bundle(path: str | Path, device: str | torch.device = "cpu") -> Bundle:
    """Read and check a bundle written by :func:`save_bundle`; the model is in eval mode on ``device``."""
    path = Path(path)
    meta = read_meta(path)
    for name in (WEIGHTS, VOCAB):
        check_file(path, name, meta["files"].get(name))
    model_config = ModelConfig.from_dict(meta["model"])
    try:
        vocab = load_vocab(path / VOCAB)
    except (ValueError, UnicodeDecodeError) as err:
        raise BundleError(str(err) if str(err).startswith(str(path / VOCAB)) else f"{path / VOCAB}: {err}") from None
    labels = meta["labels"]
    if len(vocab) != model_config.vocab_size or len(labels) != model_config.num_classes:
        raise BundleError(
            f"{path}: vocab.json has {len(vocab)} tokens and bundle.json {len(labels)} labels, "
            f"but the model was built for {model_config.vocab_size} tokens and {model_config.num_classes} labels"
        )
    model = model_skeleton(model_config)  # shapes only: a crafted size costs nothing here
    check_shapes(path, model)
    state = dequantize_state(load_weights(path))  # a quantized table becomes a float table again
    dtypes = {name: tensor.dtype for name, tensor in model.state_dict().items()}
    # assign: copies of the loaded tensors become the model's (no table filled at random first). Copies, as
    # safetensors maps the file: a file overwritten in place would crash the process reading a row of it.
    try:
        model.load_state_dict({k: v.to(dtypes.get(k, v.dtype), copy=True) for k, v in state.items()}, assign=True)
    except RuntimeError as err:
        detail = " ".join(str(err).split("\n\t")[1:2]) or str(err)
        raise BundleError(f"{path / WEIGHTS} does not fit the model described in bundle.json: {detail.strip()}") from None
    model.to(device).eval()
    tokenizer = Tokenizer.from_config(TokenizerConfig(**meta["tokenizer"]))
    head = load_head(path, meta, model_config) if model_config.encoder else None
    return Bundle(model, vocab, tokenizer, labels, model_config, meta.get("train", {}), head, meta.get("encoder"))


def load_head(path: Path, meta: dict, model_config: ModelConfig) -> SentenceHead:
    """The sentence head, its file checked against the manifest and its tensors' dtype and shape before loading."""
    from .sentence import NAMED_ENCODERS  # the pins a bundle's encoder record must name

    encoder, file = meta.get("encoder"), path / HEAD
    spec = NAMED_ENCODERS.get(model_config.encoder)
    if spec is None or not isinstance(encoder, dict) or encoder.get("name") != model_config.encoder or encoder.get("sha256") != spec.weights_sha256 \
            or not isinstance(encoder.get("max_wordpieces"), int) or not 3 <= encoder["max_wordpieces"] <= spec.config.max_positions:
        raise BundleError(f"{path / META}: field encoder must name model.encoder ({model_config.encoder!r}) with its pinned sha256 and max_wordpieces")
    check_file(path, HEAD, meta["files"].get(HEAD))
    head = SentenceHead(spec.dim, model_config.num_classes)
    expected = {k: [{torch.float32: "F32", torch.float64: "F64"}[v.dtype], list(v.shape)] for k, v in head.state_dict().items()}
    try:
        with safe_open(file, framework="pt") as f:
            found = {name: [f.get_slice(name).get_dtype(), list(f.get_slice(name).get_shape())] for name in f.keys()}
            if found != expected:
                raise BundleError(f"{file}: tensors {found} do not fit the sentence head, which needs {expected}")
            state = {name: f.get_tensor(name) for name in f.keys()}
    except (SafetensorError, OSError, RuntimeError) as err:
        raise BundleError(f"{file} is not a safetensors weights file ({err})") from None
    if not all(all_finite(t) for t in state.values()) or not 0 <= float(state["beta"]) < 1:
        raise BundleError(f"{file}: the sentence head holds non-finite values or a share (beta) outside [0, 1)")
    head.load_state_dict(state)
    return head.eval()


def load_weights(path: Path) -> dict:
    """The tensors of the weights file, read by safetensors (no pickle); non-finite values are refused."""
    file = path / WEIGHTS
    try:
        with safe_open(file, framework="pt") as f:
            state = {name: f.get_tensor(name) for name in f.keys()}
    except (SafetensorError, OSError, ValueError, RuntimeError) as err:
        raise BundleError(f"{file} is not a safetensors weights file ({err})") from None
    for name, tensor in state.items():
        if not all_finite(tensor):
            raise BundleError(f"{file}: tensor {name} holds NaN or infinite values")
    return state


def all_finite(tensor: torch.Tensor) -> bool:
    """No NaN and no infinity in ``tensor`` (True for integers): its minimum and maximum, found in one pass,
    are finite (NaN propagates to both). ``isfinite(t).all()`` took 15 times longer on a 70 MB table."""
    if not tensor.is_floating_point() or tensor.numel() == 0:
        return True
    low, high = torch.aminmax(tensor)
    return bool(torch.isfinite(low) & torch.isfinite(high))


def weight_shapes(path: Path) -> dict[str, list[int]]:
    """Tensor name -> shape, from the weights file's header only (nothing is allocated)."""
    file = path / WEIGHTS
    try:
        with safe_open(file, framework="pt") as f:
            return {name: list(f.get_slice(name).get_shape()) for name in f.keys()}
    except (SafetensorError, OSError, ValueError, RuntimeError) as err:
        raise BundleError(f"{file} is not a safetensors weights file ({err})") from None


def check_shapes(path: Path, skeleton: nn.Module) -> None:
    """Refuse a model (a :func:`~textpipe.models.model_skeleton`) whose tensors differ from the weights file's, before allocating any."""
    expected = {k: list(v.shape) for k, v in skeleton.state_dict().items()}
    found = weight_shapes(path)
    try:  # a quantized table is stored as parts (textpipe.quantize): their shapes must fit the table's
        found = fold_quantized_shapes(found, expected)
    except ValueError as err:
        raise BundleError(f"{path / WEIGHTS}: {err}") from None
    for name in sorted(set(expected) | set(found)):
        if expected.get(name) != found.get(name):
            raise BundleError(
                f"{path / META} field model does not fit {path / WEIGHTS}: tensor {name} is {found.get(name)} in the weights file "
                f"but the model config makes it {expected.get(name)}"
            )


def read_meta(path: Path) -> dict:
    """``bundle.json`` of the bundle in folder ``path``, with its format, field types and manifest checked."""
    meta_path = path / META
    if not meta_path.is_file():
        raise FileNotFoundError(f"{path} is not a textpipe bundle (no {META})")
    try:
        meta = json.loads(meta_path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise BundleError(f"{meta_path} is damaged: not valid JSON ({err})") from None
    if not isinstance(meta, dict) or meta.get("format_version") != FORMAT_VERSION:
        version = meta.get("format_version") if isinstance(meta, dict) else None
        hint = " (weights.pt, read with torch.load: retrain the model with this textpipe)" if version == 1 else ""
        raise BundleError(f"{meta_path}: bundle format {version!r}{hint}, this textpipe reads format {FORMAT_VERSION}")
    files = meta.get("files")
    if not isinstance(files, dict) or not all(isinstance(files.get(name), dict) for name in (WEIGHTS, VOCAB, META)):
        raise BundleError(f"{meta_path} has no complete manifest of files (field files)")
    if files[META].get("sha256") != fields_digest(meta):
        raise BundleError(f"{meta_path}: the fields {', '.join(PREDICTION_FIELDS)} do not match their sha256 in the manifest: the file was altered after saving")
    check_fields(meta, meta_path)
    return meta


def check_fields(meta: dict, meta_path: Path) -> None:
    """Every field a load reads has the type and range it must have; the message names the field."""
    def bad(field: str, why: str) -> BundleError:
        return BundleError(f"{meta_path}: field {field} {why}")

    labels = meta.get("labels")
    if not isinstance(labels, list) or len(labels) < 2 or not all(isinstance(x, str) for x in labels) or len(set(labels)) != len(labels):
        raise bad("labels", "must be a list of at least 2 distinct strings")
    tokenizer = meta.get("tokenizer")
    known = {f.name for f in fields(TokenizerConfig)}
    if not isinstance(tokenizer, dict) or set(tokenizer) - known or tokenizer.get("name") not in TOKENIZERS or not isinstance(tokenizer.get("lower", True), bool):
        raise bad("tokenizer", f"must be an object with name (one of {', '.join(TOKENIZERS)}) and lower (true or false)")
    model = meta.get("model")
    if not isinstance(model, dict):
        raise bad("model", "must be an object")
    for f in fields(ModelConfig):
        if f.name in model:
            problem = _model_field_problem(f.name, model[f.name], f.default)
            if problem:
                raise bad(f"model.{f.name}", problem)
    unknown = set(model) - {f.name for f in fields(ModelConfig)}
    if unknown:
        raise bad("model", f"has unknown keys: {', '.join(sorted(unknown))}")


def check_model_config(model: dict, where: str = "model") -> None:
    """Raise ValueError naming the first field of a model config with a wrong type or range.

    Example:
        >>> check_model_config({"embed_dim": 0})
        Traceback (most recent call last):
        ValueError: model.embed_dim must be an integer from 1 to 2**40, got 0
    """
    for f in fields(ModelConfig):
        if f.name in model and not (f.name in ("vocab_size", "num_classes") and model[f.name] == 0):  # 0: set from the data
            problem = _model_field_problem(f.name, model[f.name], f.default)
            if problem:
                raise ValueError(f"{where}.{f.name} {problem}")


def _model_field_problem(name: str, value, default) -> str | None:
    if name == "name":
        return None if value in MODELS else f"must be one of {', '.join(MODELS)}, got {value!r}"
    if name == "encoder":
        return None if value in (None, "minilm-l6") else f"must be minilm-l6 or unset, got {value!r}"
    if name == "kernel_sizes":
        ok = isinstance(value, (list, tuple)) and value and all(isinstance(k, int) and not isinstance(k, bool) and 1 <= k <= 1000 for k in value)
        return None if ok else "must be a non-empty list of integers from 1 to 1000"
    if isinstance(default, bool):
        return None if isinstance(value, bool) else f"must be true or false, got {value!r}"
    if isinstance(default, float):
        ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value) and 0 <= value < 1
        return None if ok else f"must be a number from 0 to 1 (1 excluded), got {value!r}"
    least = 0 if name in ("ngram_buckets", "frozen_dim") else 1
    if not isinstance(value, int) or isinstance(value, bool) or not least <= value < 2**40:
        return f"must be an integer from {least} to 2**40, got {value!r}"
    return None


def check_file(path: Path, name: str, expected: dict | None) -> None:
    """Compare a bundle file with its manifest entry; a mismatch names the file and how it differs."""
    file = path / name
    if not isinstance(expected, dict) or not isinstance(expected.get("bytes"), int) or not isinstance(expected.get("sha256"), str):
        raise BundleError(f"{path / META} lists no size and checksum for {name} (field files.{name})")
    if not file.is_file():
        raise BundleError(f"{file} is missing")
    actual = file_digest(file)
    if actual["bytes"] != expected["bytes"]:
        raise BundleError(f"{file} is {actual['bytes']} bytes but bundle.json says {expected['bytes']}: the file is truncated or was replaced")
    if actual["sha256"] != expected["sha256"]:
        raise BundleError(f"{file} does not match its sha256 in bundle.json: the file was altered after saving")


def saved_config(path: str | Path) -> dict:
    """The training config a bundle folder carries (``config.json``, as plain data); ``{}`` without one."""
    file = Path(path) / "config.json"
    return json.loads(file.read_text(encoding="utf-8")) if file.is_file() else {}


def bundle_info(path: str | Path) -> dict:
    """Everything ``textpipe info`` shows about a bundle, read once its files match the manifest
    (the weights are loaded as tensors only).

    Example:
        >>> bundle_info("runs/mine")["weights_sha256"]
    """
    path = Path(path)
    meta = read_meta(path)
    for name in (WEIGHTS, VOCAB):
        check_file(path, name, meta["files"].get(name))
    run, metrics = _read_json(path / "run.json") or {}, _read_json(path / "metrics.json")
    state = dequantize_state(load_weights(path))  # parameters of the model, not of its compact storage
    if metrics:  # the summary, not the per-epoch history or the confusion matrix
        metrics = {k: metrics[k] for k in ("test", "dev", "best_epoch", "per_class") if k in metrics}
    return {
        "path": str(path),
        "format_version": meta["format_version"],
        "model": meta["model"],
        "tokenizer": meta["tokenizer"],
        "labels": meta["labels"],
        "vocab_size": len(_read_json(path / VOCAB)),
        "parameters": sum(t.numel() for t in state.values()),
        "train": meta.get("train", {}),
        "config": _read_json(path / "config.json"),
        "metrics": metrics,
        "created": run.get("created"),
        "versions": run.get("versions"),
        "data": run.get("data"),
        "weights_sha256": meta["files"][WEIGHTS]["sha256"],
        "weights_bytes": meta["files"][WEIGHTS]["bytes"],
        "quantized": meta.get("quantized"),
        **({"encoder": meta["encoder"]} if "encoder" in meta else {}),
    }


def _read_json(file: Path):
    return json.loads(file.read_text(encoding="utf-8")) if file.is_file() else None


class BundleError(ValueError):
    """A bundle that cannot be trusted or does not fit together; the message says which file and why."""
