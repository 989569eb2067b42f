"""A trained model on disk, saved and loaded safely.

A bundle is a folder of three files:

- ``weights.safetensors``: the model's ``state_dict`` in the safetensors format:
  tensors only, no pickle, so loading it can never run code (torch 2.3's
  ``torch.load``, even with ``weights_only=True``, still reaches legacy loaders);
- ``vocab.json``: the vocabulary's tokens in id order;
- ``bundle.json``: format version, model config, tokenizer config, labels, the
  training config, and a manifest: the size and sha256 of the two other files, and
  the sha256 of bundle.json's own fields that change a prediction (model,
  tokenizer, labels).

Loading checks the manifest before reading anything else, so a truncated or altered file,
or relabelled ``labels``, is refused with a message saying which. Every field is type-checked,
and each tensor's dtype and shape in the weights file's header are compared with the model
config's before a single weight is allocated: a crafted size (``ngram_buckets = 2**40``) or an
I32 table is refused, not attempted or converted. Weights that are not finite are never saved
nor loaded. Each file is written to a temporary name, fsync-ed and renamed into place.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save as safetensors_bytes
from torch import nn

from ..core.events import emit
from ..core.minilm import PRECISIONS
from ..core.files import HEAD, JSON_MAX_BYTES, META, VOCAB, WEIGHTS, InputFileError, atomic_write, file_sha256, open_regular, read_json_file, write_json_atomic
from ..core.models import MODELS, ModelConfig, model_skeleton
from ..core.calibration import temperature_problem
from ..core.multilabel import multi_label_problem
from ..core.compact import check_summary, dequantize_state, fold_quantized_shapes, part_dtype
from ..core.sentence_head import SentenceHead
from ..text.tokenizer import TOKENIZERS, Tokenizer, TokenizerConfig
from ..text.vocab import Vocab, load_vocab, save_vocab

FORMAT_VERSION = 2
ENCODER_KEYS = {"name", "sha256", "max_wordpieces", "precision"}  # bundle.json's encoder record; precision: after quantize
PREDICTION_FIELDS = ("model", "tokenizer", "labels")  # the fields of bundle.json that change what a model predicts
VOCAB_MAX_BYTES = 1 << 30  # a vocabulary of 20 million tokens
# torch's dtypes as the safetensors header names them
DTYPE_NAMES = {torch.float32: "F32", torch.float16: "F16", torch.bfloat16: "BF16", torch.float64: "F64", torch.int64: "I64",
               torch.int32: "I32", torch.int16: "I16", torch.int8: "I8", torch.uint8: "U8", torch.bool: "BOOL"}


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
    train_config: dict = field(default_factory=dict)  # the TrainConfig it was trained with, as a dict
    head: SentenceHead | None = None  # with model.encoder: the sentence encoder's member of the mix
    encoder: dict | None = None  # with model.encoder: {"name", "sha256", "max_wordpieces"}, what encodes the head's vectors
    temperature: float = 1.0  # the shipped scores are divided by it before the softmax (calibration.py); 1: a bundle from before
    multi_label: dict | None = None  # {"label_sep", "thresholds"}: one sigmoid per label, each predicted at its threshold; None: one label a text


def save_bundle(out: str | Path, bundle: Bundle, *, state: dict[str, torch.Tensor] | None = None, extra: dict | None = None) -> Path:
    """Write ``bundle`` into folder ``out`` (created if needed); returns the folder.

    ``state`` replaces ``bundle.model.state_dict()`` (a quantized table, see :mod:`textpipe.bundle.quantize`);
    ``extra`` adds keys to ``bundle.json``; a sentence ``head`` is saved as a second weights file, beside its
    ``encoder`` record in ``bundle.json``.

    Example:
        >>> save_bundle("runs/copy", load_bundle("runs/mine"))
    """
    model, head = bundle.model, bundle.head
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().cpu().contiguous() for k, v in (model.state_dict() if state is None else state).items()}
    for name, tensor in state.items():
        if not all_finite(tensor):
            raise BundleError(f"refusing to save {out / WEIGHTS}: tensor {name} holds NaN or infinite values (training diverged)")
    data = safetensors_bytes(state)
    atomic_write(out / WEIGHTS, lambda f: f.write(data))
    emit("bundle_weights_written")
    save_vocab(bundle.vocab, out / VOCAB)
    meta = {
        "format_version": FORMAT_VERSION,
        "model": bundle.model_config.to_dict(),
        "tokenizer": asdict(bundle.tokenizer.config),
        "labels": list(bundle.labels),
        "train": bundle.train_config or {},
        **(extra or {}),
        **({"encoder": bundle.encoder} if bundle.encoder is not None else {}),
        "temperature": bundle.temperature,
        **({"multi_label": bundle.multi_label} if bundle.multi_label is not None else {}),
    }
    if head is not None:
        head_data = safetensors_bytes({k: v.detach().cpu().contiguous() for k, v in head.state_dict().items()})
        atomic_write(out / HEAD, lambda f: f.write(head_data))
    meta["files"] = {name: file_digest(out / name) for name in (WEIGHTS, VOCAB) + ((HEAD,) if head is not None else ())}
    meta["files"][META] = {"fields": list(prediction_fields(meta)), "sha256": fields_digest(meta)}
    write_json_atomic(out / META, meta)
    return out


def file_digest(path: str | Path) -> dict:
    return {"bytes": Path(path).stat().st_size, "sha256": file_sha256(path)}  # the manifest entry of a file


def prediction_fields(meta: dict) -> tuple[str, ...]:
    """The fields that change a prediction: with a sentence encoder, its record too; the temperature, where recorded."""
    return PREDICTION_FIELDS + tuple(name for name in ("encoder", "temperature", "multi_label") if name in meta)


def fields_digest(meta: dict) -> str:
    """sha256 of the prediction fields of ``bundle.json``, as canonical JSON."""
    canonical = json.dumps({k: meta.get(k) for k in prediction_fields(meta)}, sort_keys=True, ensure_ascii=False, separators=(",", ":"))
    return hashlib.sha256(canonical.encode("utf-8")).hexdigest()


def load_bundle(path: str | Path, device: str | torch.device = "cpu") -> Bundle:
    """Read and check a bundle written by :func:`save_bundle`; the model is in eval mode on ``device``."""
    path = Path(path)
    meta = read_meta(path)
    model_config, vocab, model, state = read_parts(path, meta)
    labels = meta["labels"]
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
    return Bundle(model, vocab, tokenizer, labels, model_config, meta.get("train", {}), head, meta.get("encoder"), meta.get("temperature", 1.0),
                  meta.get("multi_label"))


def load_head(path: Path, meta: dict, model_config: ModelConfig) -> SentenceHead:
    """The sentence head, its file checked against the manifest and its tensors' dtype and shape before loading."""
    spec, file = check_encoder_record(path, meta, model_config), path / HEAD
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


def check_encoder_record(path: Path, meta: dict, model_config: ModelConfig):
    """The pins (a NamedEncoder) of the encoder ``bundle.json``'s record names: ``{"name", "sha256", "max_wordpieces"}``,
    and ``"precision"`` (one of minilm.PRECISIONS) in a quantized bundle; nothing else. Else a BundleError naming the field."""
    from ..text.sentence import NAMED_ENCODERS  # the pins a bundle's encoder record must name

    encoder, spec = meta.get("encoder"), NAMED_ENCODERS.get(model_config.encoder)
    if spec is None or not isinstance(encoder, dict) or encoder.get("name") != model_config.encoder or encoder.get("sha256") != spec.weights_sha256 \
            or not isinstance(encoder.get("max_wordpieces"), int) or not 3 <= encoder["max_wordpieces"] <= spec.config.max_positions:
        raise BundleError(f"{path / META}: field encoder must name model.encoder ({model_config.encoder!r}) with its pinned sha256 and max_wordpieces")
    if "precision" in encoder and encoder["precision"] not in PRECISIONS:
        raise BundleError(f"{path / META}: field encoder.precision must be one of {', '.join(PRECISIONS)}, got {str(encoder['precision'])[:40]!r}")
    unknown = sorted(set(encoder) - ENCODER_KEYS)
    if unknown:  # a field this version would ignore could change the vectors: refused, not guessed at
        raise BundleError(f"{path / META}: field encoder has unknown keys: {', '.join(unknown)}")
    return spec


def bundle_model_config(model: dict) -> ModelConfig:
    """A bundle.json's model record as a config. One saved before the bag's NB path existed has no
    ``nb_linear`` key and no NB weights: it loads without the path (a new config has it on).

    Example:
        >>> bundle_model_config({"vocab_size": 10, "num_classes": 2}).nb_linear
        False
    """
    return ModelConfig.from_dict({"nb_linear": False, **model})


def read_parts(path: Path, meta: dict) -> tuple[ModelConfig, Vocab, nn.Module, dict[str, torch.Tensor]]:
    """A bundle's model config, vocabulary, model skeleton and tensors, each checked against the others."""
    for name in (WEIGHTS, VOCAB):
        check_file(path, name, meta["files"].get(name))
    model_config = bundle_model_config(meta["model"])
    try:
        vocab = load_vocab(path / VOCAB, VOCAB_MAX_BYTES)
    except (ValueError, UnicodeDecodeError) as err:
        raise BundleError(str(err) if str(err).startswith(str(path / VOCAB)) else f"{path / VOCAB}: {err}") from None
    if len(vocab) != model_config.vocab_size or len(meta["labels"]) != model_config.num_classes:
        raise BundleError(f"{path}: vocab.json has {len(vocab)} tokens and bundle.json {len(meta['labels'])} labels, "
                          f"but the model was built for {model_config.vocab_size} tokens and {model_config.num_classes} labels")
    try:
        model = model_skeleton(model_config)  # shapes only: a crafted size costs nothing here
    except ValueError as err:  # sizes that do not fit together (the model's own checks)
        raise BundleError(f"{path / META}: field model {err}") from None
    return model_config, vocab, model, checked_state(path, model)


def checked_state(path: Path, skeleton: nn.Module) -> dict[str, torch.Tensor]:
    """The weights file's tensors, once their names, dtypes and shapes fit ``skeleton`` (checked from the
    header, before any is read); a quantized table comes back as a float table."""
    check_shapes(path, skeleton)
    try:
        return dequantize_state(load_weights(path))
    except ValueError as err:  # a quantized table whose parts contradict each other
        raise BundleError(f"{path / WEIGHTS}: {err}") from None


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


def weight_header(path: Path) -> dict[str, tuple[list[int], str]]:
    """Tensor name -> (shape, dtype name such as ``F32``), from the weights file's header only (nothing is allocated)."""
    file = path / WEIGHTS
    try:
        with safe_open(file, framework="pt") as f:
            return {name: (list(f.get_slice(name).get_shape()), f.get_slice(name).get_dtype()) for name in f.keys()}
    except (SafetensorError, OSError, ValueError, RuntimeError) as err:
        raise BundleError(f"{file} is not a safetensors weights file ({err})") from None


def check_shapes(path: Path, skeleton: nn.Module) -> None:
    """Refuse a model (a :func:`~textpipe.core.models.model_skeleton`) whose tensors differ from the weights file's
    in name, dtype or shape, before allocating any. (An I32 table would be cast silently, an I8 part misread.)"""
    expected = {k: list(v.shape) for k, v in skeleton.state_dict().items()}
    dtypes = {k: DTYPE_NAMES.get(v.dtype, str(v.dtype)) for k, v in skeleton.state_dict().items()}
    header = weight_header(path)
    for name, (_, dtype) in sorted(header.items()):
        wanted = part_dtype(name) or dtypes.get(name)
        if wanted is not None and dtype != wanted:
            raise BundleError(f"{path / WEIGHTS}: tensor {name} is stored as {dtype}, but the model's is {wanted}: refused, not converted")
    found = {name: shape for name, (shape, _) in header.items()}
    try:  # a quantized table is stored as parts (textpipe.bundle.quantize): their shapes must fit the table's
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
    if not meta_path.exists():
        raise FileNotFoundError(f"{path} is not a textpipe bundle (no {META})")
    meta = read_bundle_json(meta_path, "bundle file")
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
    bad = lambda field, why: BundleError(f"{meta_path}: field {field} {why}")  # noqa: E731

    labels = meta.get("labels")
    if not isinstance(labels, list) or len(labels) < 2 or not all(isinstance(x, str) for x in labels) or len(set(labels)) != len(labels):
        raise bad("labels", "must be a list of at least 2 distinct strings")
    tokenizer = meta.get("tokenizer")
    known = {f.name for f in fields(TokenizerConfig)}
    if not isinstance(tokenizer, dict) or set(tokenizer) - known or tokenizer.get("name") not in TOKENIZERS or not isinstance(tokenizer.get("lower", True), bool) \
            or not isinstance(tokenizer.get("lang", "en"), str):
        raise bad("tokenizer", f"must be an object with name (one of {', '.join(TOKENIZERS)}), lower (true or false) and lang (a string)")
    if not isinstance(meta.get("train", {}), dict):
        raise bad("train", "must be an object")
    if "temperature" in meta and (problem := temperature_problem(meta["temperature"])):
        raise bad("temperature", problem)
    if "multi_label" in meta and (problem := multi_label_problem(meta["multi_label"], len(labels))):
        raise bad("multi_label", problem)
    if "quantized" in meta and (problem := check_summary(meta["quantized"])):
        raise bad(f"quantized{problem[0]}", problem[1])
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
    """Raise ValueError naming the first field of a model config with a wrong type or range
    (``{"embed_dim": 0}``: "model.embed_dim must be an integer from 1 to 2**40, got 0")."""
    for f in fields(ModelConfig):
        if f.name in model and not (f.name in ("vocab_size", "num_classes") and model[f.name] == 0):  # 0: set from the data
            problem = _model_field_problem(f.name, model[f.name], f.default)
            if problem:
                raise ValueError(f"{where}.{f.name} {problem}")


def _model_field_problem(name: str, value, default) -> str | None:
    if name == "name":
        return None if value in [*MODELS] else f"must be one of {', '.join(MODELS)}, got {value!r}"
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
    file, expected = path / name, expected if isinstance(expected, dict) else {}
    size, digest = expected.get("bytes"), expected.get("sha256")
    if not isinstance(size, int) or isinstance(size, bool) or size < 0 or not isinstance(digest, str):
        raise BundleError(f"{path / META} lists no size and checksum for {name} (field files.{name})")
    if not file.exists():
        raise BundleError(f"{file} is missing")
    try:  # its type and size are checked on the open file before a byte is read
        with open_regular(file, None, "bundle file") as f:
            actual = os.fstat(f.fileno()).st_size
            if actual != size:
                raise BundleError(f"{file} is {actual} bytes but bundle.json says {size}: the file is truncated or was replaced")
            sha = hashlib.file_digest(f, "sha256").hexdigest()
    except (InputFileError, OSError) as err:
        raise BundleError(str(err) if str(file) in str(err) else f"{file}: {err}") from None
    if sha != digest:
        raise BundleError(f"{file} does not match its sha256 in bundle.json: the file was altered after saving")


def read_bundle_json(file: Path, what: str):
    """A JSON file of a bundle through :func:`~textpipe.core.files.read_json_file`; a refusal is a BundleError."""
    try:
        return read_json_file(file, JSON_MAX_BYTES, what)
    except (InputFileError, OSError) as err:
        raise BundleError(str(err)) from None


class BundleError(ValueError):
    """A bundle that cannot be trusted or does not fit together; the message says which file and why."""
